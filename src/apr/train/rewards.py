"""Rewards of `apr train rl`: a function of a rollout's record (its JSON form, a dict) and
the problem. `reward: NAME` in the config picks a built-in one; `path/to/file.py:function`
or `module:function` runs code, which the config must allow (`trust_reward_code: true`,
checked by `RLConfig.validate`) and, for a module, APR_REWARD_MODULES must list
(`apr.train.config.reward_source`). Trust model: docs/serving.md."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from apr import protocol as P
from apr.competence import operation_errors, own_texts
from apr.countdown import Problem
from apr.errors import UserError
from apr.train.config import reward_source

RewardFn = Callable[[dict, Problem], float]


def reward_binary(record: dict, problem: Problem) -> float:
    """The published reward: 1 when the checker accepts the final path."""
    return 1.0 if record.get("correct") else 0.0


def reward_format(record: dict, problem: Problem) -> float:
    """1 if correct; 0.1 for a well-formed search that failed (no cut, no failed spawn)."""
    if record.get("correct"):
        return 1.0
    tree = record.get("threads")
    ok = not isinstance(tree, dict) or all(t.status == "done" for t in P.Thread.from_json(tree).walk())
    return 0.1 if ok and P.NO_SOLUTION.strip() in record.get("text", "") else 0.0


def reward_partial(record: dict, problem: Problem) -> float:
    """1 if correct; else up to 0.5 by how close the best reached number came to the target."""
    if record.get("correct"):
        return 1.0
    best = None
    for line in record.get("text", "").split("\n"):
        m = P.EXPLORE_RE.match(line)
        if m:
            nums = P.parse_list(m.group(5)) or []
            if len(nums) == 1:
                d = abs(nums[0] - problem.target)
                best = d if best is None else min(best, d)
    if best is None:
        return 0.0
    return 0.5 * max(0.0, 1.0 - best / max(1, problem.target))


LINE_PENALTY, MAX_PENALTY = 0.1, 0.5


def reward_checked(record: dict, problem: Problem) -> float:
    """The published reward less 0.1 for each wrong `Exploring Operation` line in any thread
    (at most 0.5 in all), as `apr.competence` judges them. The published reward is blind to
    the arithmetic of dead branches: a search that writes wrong lines and stumbles on the
    target scores as well as a careful one, and under it RL about doubled the wrong lines of the
    CPU line's models while this one took them under 2% (docs/rl.md)."""
    wrong = sum(operation_errors(own)[1] for own in own_texts(record.get("threads"), record.get("text", "")))
    return reward_binary(record, problem) - min(MAX_PENALTY, LINE_PENALTY * wrong)


# The names are apr.train.config.REWARDS (checked there, before torch loads).
REWARD_FNS: dict[str, RewardFn] = {"binary": reward_binary, "format": reward_format, "partial": reward_partial,
                                   "checked": reward_checked}


def resolve_reward(name: str, trusted: bool = True) -> RewardFn:
    """A built-in reward by name, or the function a file (`path/to/file.py:function`) or an
    allowed module (`module:function`, APR_REWARD_MODULES) defines. `trusted` says the config
    allows code (`trust_reward_code`); RLConfig.validate has already refused it otherwise."""
    if name in REWARD_FNS:
        return REWARD_FNS[name]
    kind, target, fn = reward_source(name, trusted)
    try:
        if kind == "file":
            path = Path(target)
            if not path.is_file():
                raise UserError(f"config: reward {name!r}: no such file {target}")
            mod_name = "apr_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        f = getattr(module, fn)
    except (ImportError, AttributeError, SyntaxError, OSError) as e:
        raise UserError(f"config: cannot import reward {name!r} ({type(e).__name__}: {e})") from None
    if not callable(f):
        raise UserError(f"config: reward {name!r} is not callable")
    return f
