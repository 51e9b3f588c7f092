"""How problems are run: `RuntimeConfig`, the one set of runtime settings that `apr solve`,
`apr run`, `apr eval`, the RL trainer's `rollout:` section and Python callers share.

A setting left None is not set: `resolve(info)` takes it from the model's apr.json (the
method, the window per thread it is evaluated at, the child or token budget it was trained to
read) or from how many samples are drawn
(the temperature), here and nowhere else. Each field's metadata (help, bounds, choices, the
method it applies to) is what the command line builds its options from
(`apr.commands.options.add_config_options`) and what `check` refuses values by, so a bad
value reads the same from a flag, a YAML key or Python. Errors name the field in backticks
(`child_budget`); a command names its option instead (`apr.errors.UserError.fields`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from apr.errors import UserError
from apr.model_folder import ModelInfo
# What a child passes on at a join, by the names users type (apr.runtime; docs/evaluation.md).
from apr.protocol.joins import JOIN_RULES
from apr.arithmetic import MODES as ARITHMETIC_MODES

METHODS = ("apr", "sos")
CONTEXT_MIN, CONTEXT_MAX = 16, 1_048_576
DEFAULT_CHILD_BUDGET = 10  # the published evaluation's budget, for models that do not say theirs
TOKEN_BUDGET_STEP, TOKEN_BUDGET_MAX = 512, 4096  # budgets: multiples of 512 (docs/FORMATS.md), training caps at 4096
DEFAULT_TOKEN_BUDGET = TOKEN_BUDGET_MAX  # the most a prefix-trained SoS+ model is asked for by default


def window_token_budget(context: int) -> int:
    """The token budget asked of a prefix-trained SoS+ model by default: the largest budget a
    trace may have and still fit the window (`context` rounded down to a multiple of 512, at
    least 512, at most DEFAULT_TOKEN_BUDGET). A model asked for more than its window would
    imitate searches that the window then cuts off."""
    return min(DEFAULT_TOKEN_BUDGET, max(TOKEN_BUDGET_STEP, context // TOKEN_BUDGET_STEP * TOKEN_BUDGET_STEP))


def setting(default, help: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            choices: tuple[str, ...] | None = None, method: str | None = None, metavar: str | None = None):
    """A field with what the command line and `check` need: `help`, bounds lo..hi (`lo_open`:
    above lo), `choices`, the `method` it applies to (None: both) and the option's `metavar`."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open,
                                            "choices": choices, "method": method, "metavar": metavar})


@dataclass
class RuntimeConfig:
    """The runtime settings: limits, budgets, sampling. None: not set (see `resolve`)."""

    method: str | None = setting(None, "apr (spawn/join) or sos (serial); default: what the model was trained for",
                                 choices=METHODS)
    context: int | None = setting(
        None, f"tokens per thread, {CONTEXT_MIN}..{CONTEXT_MAX}; a thread reaching it fails its problem (default: "
        "the model's apr.json eval_context, else the context it was trained with)", lo=CONTEXT_MIN, hi=CONTEXT_MAX,
        metavar="TOKENS")
    max_children: int = setting(16, "APR: children one spawn block may start; more fails the problem", lo=1,
                                method="apr", metavar="N")
    max_depth: int = setting(1, "APR: spawn levels (0: no spawning; children spawn again when > 1)", lo=0,
                             method="apr", metavar="N")
    max_total_tokens: int = setting(200_000, "tokens generated over all threads of a problem; more fails it", lo=1,
                                    metavar="TOKENS")
    child_budget: int | None = setting(
        None, "APR: children to ask for, `Sub Call Budget: N` (default: for a model trained with the prefix, its "
        "apr.json child_budget, else 10 capped at 3 per pair of numbers; none for a model trained without)",
        lo=1, method="apr", metavar="N")
    token_budget: int | None = setting(
        None, "SoS+: tokens to ask for, `Token Budget: N` (default, for a model trained with the prefix: the "
        "window rounded down to a multiple of 512, at least 512, at most 4096)",
        lo=1, method="sos", metavar="TOKENS")
    temperature: float | None = setting(
        None, "sampling temperature, >= 0 (default: 0, greedy, for one sample per problem; 1.0 when sampling "
        "several: cons@N, pass@N, RL rollouts)", lo=0.0, metavar="T")
    top_k: int = setting(0, "sample from the k likeliest tokens (0: all)", lo=0, metavar="K")
    top_p: float = setting(1.0, "nucleus sampling mass, in (0, 1] (1: all)", lo=0.0, hi=1.0, lo_open=True, metavar="P")
    seed: int = setting(0, "sampling seed (each problem and thread derives its own)", lo=0, metavar="SEED")
    max_in_flight: int = setting(32, "problems decoding at once", lo=1, metavar="N")
    join_rule: str = setting(
        "official", "APR: what a child passes on at a join: official (the published evaluation: the text after "
        "its second-to-last 'Goal Reached'), goal-line (only a clean path ending in a well-formed 'X,X equal' goal "
        "line) or verified (official, but a path that does not replay from the child's state is joined as a "
        "failed sub search)", choices=JOIN_RULES, method="apr")
    arithmetic: str = setting(
        "model", "model (every token is the model's) or exact: an ablation in which the engine limits an "
        "'Exploring Operation' line's operands to the thread's current numbers and writes its result, so "
        "accuracy measures search alone; every output of it says so (docs/evaluation.md)",
        choices=ARITHMETIC_MODES)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every set field within its bounds and choices; a UserError naming the field."""
        for f in dataclasses.fields(self):
            value, m = getattr(self, f.name), f.metadata
            if value is None:
                continue
            bad = ""
            if m["choices"] is not None:
                if value not in m["choices"]:
                    bad = f"one of {', '.join(m['choices'])}"
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                bad = "a number"
            elif not within(value, m):
                bad = bounds(m)
            if bad:
                raise UserError(f"`{f.name}` must be {bad}, got {value!r}", fields=(f.name,))

    def changed(self) -> list[str]:
        """The fields set to something other than their default, in field order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]

    def resolve(self, info: ModelInfo, sampled: bool = False) -> "RuntimeConfig":
        """These settings completed for a model (`info`: its apr.json), every field set but
        the budget the method does not read.

        The method defaults to the model's, the window (`context`) to the one it is evaluated at
        (`default_context`). A budget prefix goes to a model trained with one:
        the budget asked for, else the model's own (`default_child_budget`; for SoS+
        `window_token_budget` of the window). The temperature defaults to 0 (greedy), or 1.0 when `sampled` (several samples
        per problem, RL). A setting of the other method is refused, not ignored."""
        method = self.method or info.method
        refuse_settings_of_other_method(self, method)
        child, tokens = self.child_budget, self.token_budget
        if method == "apr" and child is None and info.budget_prefix:
            child = default_child_budget(info)
        temperature = self.temperature if self.temperature is not None else (1.0 if sampled else 0.0)
        context = self.context if self.context is not None else default_context(info)
        if method == "sos" and tokens is None and info.budget_prefix:
            tokens = window_token_budget(context)
        return dataclasses.replace(self, method=method, context=context, child_budget=child, token_budget=tokens,
                                   temperature=temperature)

    def require_resolved(self) -> None:
        """The runtime runs resolved settings only: an unset method would prompt as SoS+."""
        unset = [name for name in ("method", "context", "temperature") if getattr(self, name) is None]
        if unset:
            raise ValueError(f"RuntimeConfig: {', '.join(unset)} not set; resolve it for a model first "
                             "(RuntimeConfig.resolve)")


def within(value: float, m) -> bool:
    """`value` within the bounds of a field's metadata `m`."""
    lo, hi = m["lo"], m["hi"]
    return (lo is None or (value > lo if m["lo_open"] else value >= lo)) and (hi is None or value <= hi)


def bounds(m) -> str:
    """A field's bounds as its errors say them: `>= 1`, `in 16..1048576`, `in (0, 1]`."""
    lo, hi = (None if x is None else f"{x:g}" if x != int(x) else str(int(x)) for x in (m["lo"], m["hi"]))
    if hi is None:
        return f"{'>' if m['lo_open'] else '>='} {lo}"
    return f"in ({lo}, {hi}]" if m["lo_open"] else f"in {lo}..{hi}"


def refuse_settings_of_other_method(cfg: RuntimeConfig, method: str) -> None:
    """A changed setting that `method` cannot apply (`child_budget` for SoS+) is an error,
    never silently ignored."""
    changed = cfg.changed()
    for f in dataclasses.fields(cfg):
        owner = f.metadata["method"]
        if owner is not None and owner != method and f.name in changed:
            name = "APR" if owner == "apr" else "SoS+"
            raise UserError(f"`{f.name}` applies to {name} only; this run's method is {method}", fields=(f.name,))


def default_context(info: ModelInfo) -> int:
    """The window per thread a model runs at when none is asked for: its apr.json
    `eval_context`, else the context it was trained with (a folder without apr.json: 4096)."""
    return info.eval_context or info.context


def default_child_budget(info: ModelInfo) -> int:
    """The `Sub Call Budget` asked of an APR model trained with the prefix: the model's own
    (apr.json `child_budget`), else the published 10 capped by the task. Asking for more
    children than a problem has distinct first moves makes a model invent moves (a 3-number
    problem has 3 pairs; +, * and - are always legal on a pair, / rarely), so the cap is
    3 per pair of numbers: 9 for Countdown-3, 18 for Countdown-4."""
    if info.child_budget:
        return info.child_budget
    n = int(info.task.get("num_count", 4)) if isinstance(info.task, dict) else 4
    return min(DEFAULT_CHILD_BUDGET, 3 * n * (n - 1) // 2)
