"""The evaluation report (`apr report`): the paper's three comparisons as plots and a table.

Reads the `summary.json` of each `apr eval` run folder and writes
- context.png: accuracy vs context window (per-thread token limit),
- tokens.png: accuracy vs total tokens (APR over child budgets; SoS+ cons@n / pass@n over n),
- latency.png: accuracy vs latency, beside accuracy vs sequential tokens (machine independent),
  (the three plots: `apr.report_plots`),
- report.md: our figures next to the published ones, every run's numbers, where the
  arithmetic errors are (`apr.report_errors`), why samples failed, and notes.
Error bars are Wilson 95% intervals.

Runs with exact arithmetic (an ablation: apr.arithmetic_labels) are labelled so in every row
and legend, drawn apart from the unassisted runs, left out of the comparisons with the
published figures, and set beside their unassisted twins in a table of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from apr import arithmetic_labels as exact
from apr.io import atomic_write
from apr.report_errors import NOTE as ERRORS_NOTE
from apr.report_errors import errors_table
from apr.report_plots import plot_all
from apr.report_runs import load_runs, primary, single

PUBLISHED = [  # (comparison, published APR, published SoS+) from docs/FORMATS.md
    ("greedy, no RL (T=0)", "75.5", "57.3"),
    ("at 4k context (APR+RL vs SoS+ +RL)", "83.4", "60.0"),
    ("at ~20k total tokens (APR+RL vs SoS+ cons@7)", "80.1", "66.6"),
    ("at ~5 s latency, 8 GPUs (APR+RL vs SoS+)", "75.2", "57.3"),
]


def shown(path: str | Path) -> str:
    """A folder as a report names it: relative to the current directory (the repository,
    when run there) if inside it, else its name; so a committed report names no folder of
    the machine that wrote it. A path given relative, or no path (a server URL), is kept."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    for base in (Path.cwd(), Path.cwd().resolve()):
        for q in (p, p.resolve()):
            if q.is_relative_to(base):
                return q.relative_to(base).as_posix() or "."
    return p.name


# ---------------------------------------------------------------------------- markdown

def _acc(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{100 * p['accuracy']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"


def _apr_json(r: dict) -> dict | None:
    try:
        info = json.loads((Path(r["model"]) / "apr.json").read_text())
        return info if isinstance(info, dict) else None
    except (OSError, json.JSONDecodeError, TypeError, KeyError):
        return None


def _rl_steps(r: dict | None) -> int | None:
    """GRPO steps of a run's model (0: supervised only); None when its apr.json does not say
    (folders written before `rl_steps`) or is not at hand."""
    info = _apr_json(r) if r else None
    steps = info.get("rl_steps") if info else None
    return steps if isinstance(steps, int) else None


def _rl_tag(r: dict | None, published_rl: bool) -> str:
    """What a cell must say when our model's training differs from the published row's: the
    rows compare supervised models with supervised ones and RL models with RL ones."""
    steps = _rl_steps(r)
    if r is None or r.get("family") == "solver":
        return ""
    if steps is None:
        return " (RL not recorded)"
    if published_rl != (steps > 0):
        return f" (after {steps} RL steps)" if steps else " (no RL)"
    return ""


def _model_note(r: dict) -> str:
    """The model's preset, task and RL from its folder's apr.json, when it is at hand."""
    info = _apr_json(r)
    if info is None:
        return "?"
    steps = _rl_steps(r)
    rl = ("RL not recorded in apr.json" if steps is None else
          f"supervised, then {steps} GRPO steps" if steps else "supervised only")
    return f"preset {info.get('preset')}, task {info.get('task')}, {rl}"


def matched_cons(runs: list[dict], tokens: float) -> tuple[str, dict] | None:
    """SoS+ cons@n whose mean total tokens is closest to `tokens`."""
    best = None
    for r in runs:
        if r["family"] == "sos" and "by_samples" in r and not exact.is_exact(r):
            for n, p in r["by_samples"]["cons@"].items():
                if best is None or abs(p["total_tokens"] - tokens) < abs(best[1]["total_tokens"] - tokens):
                    best = (f"cons@{n}", p)
    return best


def headline(runs: list[dict]) -> list[str]:
    apr, sos = primary(runs, "apr"), primary(runs, "sos")
    rows = ["| comparison | published APR | published SoS+ | our APR | our SoS+ |", "|---|---|---|---|---|"]

    def top_window(r):
        if not r:
            return None, None
        w = max(r["accuracy_within_context"], key=int)
        return w, r["accuracy_within_context"][w]

    rows.append(f"| {PUBLISHED[0][0]} | {PUBLISHED[0][1]} | {PUBLISHED[0][2]} | {_acc(apr and {'accuracy': apr['accuracy'], 'ci95': apr['ci95']})}{_rl_tag(apr, False)} | {_acc(sos and {'accuracy': sos['accuracy'], 'ci95': sos['ci95']})}{_rl_tag(sos, False)} |")
    wa, pa = top_window(apr)
    ws, ps = top_window(sos)
    rows.append(f"| {PUBLISHED[1][0]} | {PUBLISHED[1][1]} | {PUBLISHED[1][2]} | {_acc(pa)} at {wa}{_rl_tag(apr, True)} | {_acc(ps)} at {ws}{_rl_tag(sos, True)} |")
    aprs = single(runs, "apr")  # published comparisons: unassisted runs only
    if aprs:
        big = max(aprs, key=lambda r: r["metrics"]["total_tokens"]["mean"])
        t = big["metrics"]["total_tokens"]["mean"]
        m = matched_cons(runs, t)
        ours_sos = f"{_acc(m[1])} ({m[0]}, {m[1]['total_tokens']:.0f} tokens)" if m else "– (no cons@N run)"
        rows.append(f"| {PUBLISHED[2][0]} | {PUBLISHED[2][1]} | {PUBLISHED[2][2]} | {_acc(big)} ({big['label']}, {t:.0f} tokens){_rl_tag(big, True)} | {ours_sos} |")
    if apr and sos:
        la, ls = apr["metrics"]["latency_s"]["mean"], sos["metrics"]["latency_s"]["mean"]
        rows.append(f"| {PUBLISHED[3][0]} | {PUBLISHED[3][1]} | {PUBLISHED[3][2]} | {_acc(apr)} at {la:.2f} s{_rl_tag(apr, True)} | {_acc(sos)} at {ls:.2f} s{_rl_tag(sos, False)} |")
    for r in runs:
        if r["family"] == "solver":
            rows.append(f"| reference: {r['label']} (symbolic, checked) | – | – | {_acc(r)} | |")
    return rows


def _competence_cells(r: dict) -> str:
    """Arithmetic error rate, false-claim join rate, near misses called equal and state copy
    error rate of a run ("–" for summaries written before they were measured)."""
    c = r.get("competence")
    if not c:
        return "– | – | – | –"
    arith = f"{100 * c['arithmetic_error_rate']:.1f} ({c['operations']})"
    claims = f"{100 * c['false_claim_join_rate']:.1f} ({c['joins']})" if c["joins"] else "– (0)"
    if c.get("rejected_claims"):
        claims += f", {c['rejected_claims']} rejected"
    if exact.is_exact(r):  # errors are near 0 by construction: say how many results the engine wrote
        arith += f", {c.get('forced_results', '?')} results forced"
    copies = f"{100 * c['state_copy_error_rate']:.1f} ({c['moves']})" if c.get("moves") else "–"
    near = f"{100 * c['near_miss_verdict_error_rate']:.1f} ({c['near_miss_verdicts']})" if c.get("near_miss_verdicts") else "–"
    return f"{arith} | {claims} | {near} | {copies}"


def runs_table(runs: list[dict]) -> list[str]:
    rows = ["| run | method | joins | T | problems | accuracy % [95% CI] | total tokens | sequential tokens | longest thread "
            "| children | latency s | arithmetic errors % (operations) | false-claim joins % (joins) "
            "| near misses called equal % (near-miss goal lines) | states copied wrong % (moves) | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["metrics"]
        mach = r.get("machine", {})
        forced = f"; {m['forced_tokens']['mean']:.0f} forced" if exact.is_exact(r) and "forced_tokens" in m else ""
        rows.append(
            f"| {r['label']} | {r['method']} | {r.get('join_rule') or '–'} | {r.get('temperature', 0):g} | {r['problems']} | {_acc(r)} | "
            f"{m['total_tokens']['mean']:.0f} (p90 {m['total_tokens']['p90']:.0f}{forced}) | {m['sequential_tokens']['mean']:.0f} | "
            f"{m['longest_thread']['mean']:.0f} (p99 {m['longest_thread']['p99']:.0f}) | {m['children']['mean']:.1f} | "
            f"{m['latency_s']['mean']:.3f} | {_competence_cells(r)} | {mach.get('gpu') or mach.get('cpu', '?')} |")
    return rows


# What an exact-arithmetic run and its unassisted twin share.
TWIN_KEYS = ("model", "method", "temperature", "top_k", "top_p", "seed", "context", "child_budget", "token_budget",
             "join_rule", "problems_file", "problems")


def exact_table(runs: list[dict]) -> list[str]:
    """Each exact-arithmetic run beside its unassisted twin (same model, method, settings and
    problems), when one was given: the ablation's effect. [] without exact runs."""
    ablations = [r for r in runs if exact.is_exact(r)]
    if not ablations:
        return []
    rows = ["| run | unassisted % [95% CI] | exact arithmetic % [95% CI] | change (points) | forced tokens per problem "
            "| results forced / operations |", "|---|---|---|---|---|---|"]
    for r in ablations:
        twin = next((u for u in runs if not exact.is_exact(u) and all(u.get(k) == r.get(k) for k in TWIN_KEYS)), None)
        change = f"{100 * (r['accuracy'] - twin['accuracy']):+.1f}" if twin else "–"
        c, m = r.get("competence") or {}, r["metrics"]
        forced = f"{m['forced_tokens']['mean']:.0f}" if "forced_tokens" in m else "–"
        rows.append(f"| {r['label']} | {_acc(twin) if twin else '– (no unassisted run given)'} | {_acc(r)} | {change} | "
                    f"{forced} | {c.get('forced_results', '–')} / {c.get('operations', '–')} |")
    return rows


def failures_table(runs: list[dict]) -> list[str]:
    """Why samples failed, per run: the runtime's stops and the checker's verdict classes."""
    rows = ["| run | failed samples | runtime stops | checker verdicts |", "|---|---|---|---|"]
    for r in runs:
        reasons = (r.get("competence") or {}).get("failure_reasons")
        if reasons is None:
            rows.append(f"| {r['label']} | – | – | – |")
            continue
        cell = lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "–"
        failed = sum(reasons["runtime"].values()) + sum(reasons["checker"].values())
        rows.append(f"| {r['label']} | {failed} | {cell(reasons['runtime'])} | {cell(reasons['checker'])} |")
    return rows


def notes(runs: list[dict]) -> list[str]:
    apr, sos = primary(runs, "apr"), primary(runs, "sos")
    out = []
    models = {r["model"]: _model_note(r) for r in runs if r["family"] != "solver"}
    for path, note in models.items():
        out.append(f"- model `{shown(path)}`: {note}.")
    if any(exact.is_exact(r) for r in runs):
        out.append(f"- Runs labelled *{exact.LABEL}* are an ablation, not results about the models: the engine kept "
                   "each operation's operands among the current numbers and wrote its result (and, in runs whose "
                   "summary says `exact_goal_tests`, the goal test after a single-number result), so their accuracy "
                   "measures the search with arithmetic errors taken out. The comparisons with the published "
                   "figures use unassisted runs only. Forced tokens are counted in every token figure and shown apart.")
    if apr and sos:
        overlap = apr["ci95"][0] <= sos["ci95"][1] and sos["ci95"][0] <= apr["ci95"][1]
        diff = 100 * (apr["accuracy"] - sos["accuracy"])
        out.append(f"- Greedy APR minus SoS+: {diff:+.1f} points on {apr['problems']} vs {sos['problems']} problems; "
                   + ("the 95% intervals overlap, so this sample does not separate the two." if overlap
                      else "the 95% intervals do not overlap."))
    models = [r for r in runs if r["family"] != "solver"]
    if models and max(r["accuracy"] for r in models) == 0:
        out.append("- **No trained model solved a single problem**, so these runs cannot rank APR against SoS+; "
                   "their tokens, children and latency still describe what each model generates (see the thread "
                   "trees in records.jsonl), and the solver rows show what the demonstrations would score.")
    out += [
        "- The published models are 228M-parameter Llamas trained on 500k problems for 19k steps, then (for the "
        "headline numbers) with GRPO; ours are far smaller and trained on far less (RL as each model's note says). Compare shapes "
        "(which method wins, how accuracy moves with budget), not levels.",
        "- Accuracy within a context window W is derived from one run at the largest window: a problem counts only "
        "if it is correct and no thread exceeded W tokens (a thread cut earlier could not have gone on differently).",
        "- cons@n and pass@n for n < N are the first n samples of one N-sample run; total tokens add over samples, "
        "sequential tokens and latency are the slowest sample's (samples run side by side).",
        "- Latency is wall-clock time from a problem's first to last generated token on the machine named in the "
        "table, with every problem of a run decoded in one shared batch; it is not comparable with the published "
        "8-GPU figures. Sequential tokens are the machine-independent measure.",
        "- Solver rows: the symbolic solvers that wrote the training demonstrations, checked by the same checker; "
        "their tokens are their traces' tokens under our tokenizer, their latency is CPU time of the Python solver.",
    ]
    return out


def write_report(dirs: list[str], out: Path) -> Path:
    runs = load_runs(dirs)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(runs, out)
    lines = ["# APR vs SoS+ on Countdown: evaluation report", "",
             f"Runs: {', '.join('`' + shown(r['dir']) + '`' for r in runs)}.", "",
             "## Against the published results", "",
             "Accuracy in %, with Wilson 95% intervals. Published figures are from Pan et al. 2025 (docs/FORMATS.md).", "",
             *headline(runs), "", "## Every run", "", *runs_table(runs), "",
             "Arithmetic errors: the share of `Exploring Operation` lines, over every thread, whose operands are not "
             "among the current numbers or whose result is wrong. False-claim joins: the share of joins at which a "
             "child's path was passed on as a success but does not replay from the child's start state. "
             "States copied wrong: the share of moves to a generated node (`Moving to Node #X`) whose `Current "
             "State` line is not that node's (`apr.competence`).", "",
             "## Where the arithmetic errors are", "", *errors_table(runs), "", ERRORS_NOTE, "",
             "## Why samples failed", "", *failures_table(runs), ""]
    ablation = exact_table(runs)
    if ablation:
        lines += [f"## {exact.LABEL.capitalize()} (an ablation)", "", *ablation, "",
                  "The engine wrote the results of the model's operation lines (docs/evaluation.md); operations are "
                  "still the model's choices of pair and operator.", ""]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Notes", "", *notes(runs), ""]
    with atomic_write(out / "report.md") as f:
        f.write("\n".join(lines))
    return out / "report.md"
