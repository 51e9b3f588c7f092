"""The RL report (`apr report --rl RL_DIR...`): the curve and the before/after table of `apr train rl` runs.

Reads each run's `metrics.jsonl` and `config.yaml`; writes `rl_curve.png` (training reward,
smoothed, and greedy validation accuracy with Wilson 95% intervals, per step) and `rl.md`
(one row per run: accuracy before and after with intervals, the change, children and total
tokens per rollout over the first and last steps, KL, zero-advantage groups), beside the
published figures. A run whose rollouts had exact arithmetic (config `rollout.arithmetic: exact`)
is labelled so in its row and legend (apr.arithmetic_labels).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from apr import arithmetic_labels as exact
from apr.errors import UserError
from apr.io import atomic_write, parse_json
from apr.model_folder import load_model_info
from apr.report import shown
from apr.runfolder import RunFolder
from apr.stats import paired_bootstrap, wilson

PUBLISHED = "| published APR (Countdown-4, 228M model) | 75.5 | 83.4 | +7.9 | 6.1 → 8.2 | 10,964 → 16,720 | | |"
PUBLISHED_SOS = "| published SoS+ | 57.3 | 60.0 | +2.7 | | | | |"


def load_rl_run(d: Path) -> dict:
    path = d / "metrics.jsonl"
    if not path.is_file():
        raise UserError("no metrics.jsonl; not an `apr train rl` folder", str(d))
    rows = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, str(path), n)
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError("not a metrics line (an object with an integer `step`)", str(path), n)
        bad = [k for k in METRIC_KEYS if k in row and not _number(row[k])]
        if bad:
            raise UserError(f"`{bad[0]}` is not a number", str(path), n)
        rows.append(row)
    cfg = _read_config(d / "config.yaml")
    method = _method(cfg)
    steps = [r for r in rows if "reward" in r]
    val = {r["step"]: r["val_accuracy"] for r in rows if "val_accuracy" in r}  # the last line of a step wins
    if not steps or not val:
        raise UserError("no training steps or no validation accuracy yet", str(d))
    n_val = cfg.get("val_limit", 200)
    if not _number(n_val) or n_val < 1:
        raise UserError(f"`val_limit` must be a positive integer, got {n_val!r}", str(d / "config.yaml"))
    rollout = cfg.get("rollout") if isinstance(cfg.get("rollout"), dict) else {}
    name = exact.labelled(str(method), rollout.get("arithmetic"))  # e.g. `apr, exact arithmetic`
    return {"dir": str(d), "method": method, "name": name, "steps": steps, "val": sorted(val.items()), "n_val": int(n_val),
            "config": cfg}


# Numbers the report reads from metrics lines.
METRIC_KEYS = ("reward", "val_accuracy", "children", "total_tokens", "kl", "zero_adv_groups")


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_config(path: Path) -> dict:
    """The run's config.yaml ({} when there is none), or a one-line error."""
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"unreadable config.yaml: {str(e).splitlines()[0]}", str(path)) from None
    if not isinstance(cfg, (dict, type(None))):
        raise UserError("config.yaml is not a mapping of keys to values", str(path))
    return cfg or {}


def _method(cfg: dict) -> str:
    """The method the run trained: its config's, else its initial model's apr.json; `?` when unknown."""
    if cfg.get("method"):
        return str(cfg["method"])
    try:
        return str(load_model_info(str(cfg.get("init", ""))).method) if cfg.get("init") else "?"
    except UserError:
        return "?"


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def table(runs: list[dict], k: int = 5) -> list[str]:
    lines = ["| run | val accuracy before % | after % | change (points) | children per rollout (first / last "
             f"{k} steps) | total tokens per rollout (first / last {k}) | mean KL | zero-advantage groups |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        n = r["n_val"]
        (s0, a0), (s1, a1) = r["val"][0], r["val"][-1]
        lo0, hi0 = wilson(round(a0 * n), n)
        lo1, hi1 = wilson(round(a1 * n), n)
        first, last = r["steps"][:k], r["steps"][-k:]
        zero = _mean(r["steps"], "zero_adv_groups")  # each step logs its share of all-equal groups
        lines.append(
            f"| {r['name']} `{shown(r['dir'])}` | {100 * a0:.1f} [{100 * lo0:.1f}, {100 * hi0:.1f}] (step {s0}) | "
            f"{100 * a1:.1f} [{100 * lo1:.1f}, {100 * hi1:.1f}] (step {s1}) | {100 * (a1 - a0):+.1f} | "
            f"{_mean(first, 'children'):.1f} / {_mean(last, 'children'):.1f} | "
            f"{_mean(first, 'total_tokens'):,.0f} / {_mean(last, 'total_tokens'):,.0f} | {_mean(r['steps'], 'kl'):.4f} | "
            f"{100 * zero:.0f}% |")
    return lines + [PUBLISHED, PUBLISHED_SOS]


def plot(runs: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        label = f"{r['name']} ({Path(r['dir']).name})"
        xs = [s["step"] for s in r["steps"]]
        ys = [s["reward"] for s in r["steps"]]
        w = 5  # trailing mean: a step's reward is a mean over few groups
        smooth = [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1]) for i in range(len(ys))]
        line, = ax_r.plot(xs, smooth, label=label)
        ax_r.plot(xs, ys, color=line.get_color(), alpha=0.25, linewidth=0.8)
        n = r["n_val"]
        vx = [s for s, _ in r["val"]]
        va = [100 * a for _, a in r["val"]]
        ci = [wilson(round(a / 100 * n), n) for a in va]
        ax_v.errorbar(vx, va, yerr=[[a - 100 * lo for a, (lo, _) in zip(va, ci)], [100 * hi - a for a, (_, hi) in zip(va, ci)]],
                      marker="o", capsize=3, label=f"{label}, {n} problems", color=line.get_color())
    ax_r.set(xlabel="RL step", ylabel="training reward (mean of the batch)", title="reward (line: 5-step mean)")
    ax_v.set(xlabel="RL step", ylabel="greedy validation accuracy %", title="validation accuracy (95% CI)")
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "rl_curve.png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def _solved(d: Path, window: int | None = None) -> dict[int, bool]:
    """Problem index -> solved, from an `apr eval` folder with one sample per problem; with a
    `window`, solved with its longest thread inside it (as `accuracy_within_context`)."""
    folder = RunFolder(d)
    if folder.meta().get("samples", 1) != 1:
        raise UserError("paired comparison needs one sample per problem", str(d))
    return {i: r.correct and (window is None or r.longest_thread <= window) for (i, _), r in folder.finished().items()}


def paired_change(before: Path, after: Path, resamples: int = 10_000, seed: int = 0, window: int | None = None) -> dict:
    """Accuracy change from `before` to `after` on the problems both runs finished (within
    `window` tokens, when given), with a paired bootstrap 95% interval and the discordant counts."""
    a, b = _solved(before, window), _solved(after, window)
    common = sorted(a.keys() & b.keys())
    if not common:
        raise UserError(f"no problems in common between {before} and {after}")
    return paired_bootstrap([a[i] for i in common], [b[i] for i in common], resamples, seed)


def _eval_costs(d: Path) -> tuple[float | None, float | None]:
    """(arithmetic errors in % of operation lines, mean total tokens per problem) of an `apr eval`
    folder's summary.json; None where the summary lacks them (an older run)."""
    folder = RunFolder(d)
    if not folder.summary_json.exists():
        return None, None
    s = folder.summary()
    get = lambda d, key: d.get(key) if isinstance(d, dict) else None
    rate, tokens = get(get(s, "competence"), "arithmetic_error_rate"), get(get(get(s, "metrics"), "total_tokens"), "mean")
    number = lambda x: x if isinstance(x, (int, float)) else None
    return (None if number(rate) is None else 100 * rate), number(tokens)


def _before_after(b: float | None, a: float | None, fmt: str) -> str:
    return "–" if b is None or a is None else f"{fmt.format(b)} → {fmt.format(a)}"


def paired_lines(pairs: list[tuple[str, str]]) -> list[str]:
    """The before/after table. RL is judged on the problems solved, but what it does to the
    lines a model writes (arithmetic errors anywhere in the search) and to its length is
    part of the result: the published reward sees neither."""
    lines = ["| before | after | problems | before % | after % | change (points) [paired 95% CI] | newly solved | newly failed "
             "| arithmetic errors % | tokens per problem |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b, a in pairs:
        c = paired_change(Path(b), Path(a))
        (rate_b, tok_b), (rate_a, tok_a) = _eval_costs(Path(b)), _eval_costs(Path(a))
        lines.append(f"| `{shown(b)}` | `{shown(a)}` | {c['problems']} | {100 * c['before']:.1f} | {100 * c['after']:.1f} | "
                     f"{100 * c['change']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] | {c['gained']} | {c['lost']} "
                     f"| {_before_after(rate_b, rate_a, '{:.1f}')} | {_before_after(tok_b, tok_a, '{:,.0f}')} |")
    return lines


def write_rl_report(dirs: list[str], out: Path, pairs: list[tuple[str, str]] = ()) -> Path:
    runs = [load_rl_run(Path(d)) for d in dirs]
    paired = paired_lines(list(pairs)) if pairs else []  # every input read before the first file is written
    png = plot(runs, out)
    lines = ["# GRPO runs", "", f"![reward and validation accuracy]({png.name})", "", *table(runs), "",
             "Accuracy: greedy, on the run's first `val_limit` validation problems, Wilson 95% intervals. Children and "
             "tokens: means per rollout (temperature 1.0) over the first and last steps. Published figures: Pan et al. "
             "2025, Countdown-4 (docs/FORMATS.md).", ""]
    if pairs:
        lines += ["## Before and after on the same problems (`apr eval` runs)", "", *paired, "",
                  "Paired bootstrap: 10,000 resamples of the common problems, both runs' outcomes kept together. "
                  "Arithmetic errors: the share of `Exploring Operation` lines written wrong, in every thread "
                  "(`apr.competence`); tokens: mean over problems, all threads; both of each whole run (its summary.json), "
                  "not only of the problems in common.", ""]
    with atomic_write(out / "rl.md") as f:
        f.write("\n".join(lines))
    return out / "rl.md"
