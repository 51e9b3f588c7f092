"""The plots of the evaluation report (`apr report`): context.png (accuracy vs context window),
tokens.png (accuracy vs total tokens) and latency.png (accuracy vs latency, beside accuracy vs
sequential tokens), with Wilson 95% error bars. Apart from report.md's tables (`apr.report`):
drawing is its own concern, and the only one that needs matplotlib (imported when drawing)."""

from __future__ import annotations

from pathlib import Path

from apr import arithmetic_labels as exact
from apr.io import atomic_write
from apr.report_runs import FAMILIES, primary, single

COLORS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:gray")))
NAMES = {"apr": "APR", "sos": "SoS+", "solver": "solver"}


def _pt(p: dict, xkey: str) -> tuple[float, float, float, float]:
    return (p[xkey], 100 * p["accuracy"], 100 * p["ci95"][0], 100 * p["ci95"][1])


def _run_point(r: dict, xkey: str) -> tuple[float, float, float, float]:
    m = r["metrics"][xkey]["mean"]
    return (m, 100 * r["accuracy"], 100 * r["ci95"][0], 100 * r["ci95"][1])


def cost_series(runs: list[dict], xkey: str) -> list[tuple[str, str, str, list]]:
    """(label, colour, line style, points) for accuracy against a mean cost."""
    out = []
    for fam in ("apr", "sos"):
        for ex in (False, True):  # exact arithmetic: a line of its own, dash-dotted, named so
            pts = sorted(_run_point(r, xkey) for r in single(runs, fam, ex))
            if pts:
                out.append((f"{NAMES[fam]}{', ' + exact.LABEL if ex else ''} (one sample"
                            + (", budgets" if len(pts) > 1 else "") + ")", COLORS[fam], "-.o" if ex else "-o", pts))
        for r in runs:
            if r["family"] != fam or "by_samples" not in r:
                continue
            mode = f", {exact.LABEL}" if exact.is_exact(r) else ""
            for kind, style in (("cons@", "--s"), ("pass@", ":^")):
                pts = [_pt(p, xkey) for _, p in sorted(r["by_samples"][kind].items(), key=lambda kv: int(kv[0]))]
                out.append((f"{NAMES[fam]} {kind}n (n=1..{r['samples']}, T={r['temperature']:g}{mode})", COLORS[fam],
                            "-." + style[-1] if mode else style, pts))
    for r in runs:
        if r["family"] == "solver":
            out.append((r["label"], COLORS["apr" if "apr" in r["method"] else "sos"], "D", [_run_point(r, xkey)]))
    return out


def _draw(ax, series, xlabel: str, title: str, logx: bool = False) -> None:
    for label, color, style, pts in series:
        xs, ys, lo, hi = zip(*pts)
        yerr = [[max(0.0, y - l) for y, l in zip(ys, lo)], [max(0.0, h - y) for y, h in zip(ys, hi)]]
        ls = "none" if len(pts) == 1 else style.rstrip("os^D")
        solver = style.endswith("D")  # reference rows: faint diamonds in the family's colour
        ax.errorbar(xs, ys, yerr=yerr, fmt=style[-1], linestyle=ls, color=color, label=label, capsize=3,
                    alpha=0.45 if solver else 1.0, markersize=6 if solver else 5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    if logx:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ... labelled
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_all(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # (a) accuracy vs context window
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series = []
    for fam in ("apr", "sos", "solver"):
        runs_f = ([primary(runs, fam), primary(runs, fam, True)] if fam != "solver"
                  else [r for r in runs if r["family"] == "solver"])
        for r in filter(None, runs_f):
            pts = [(int(w), 100 * p["accuracy"], 100 * p["ci95"][0], 100 * p["ci95"][1])
                   for w, p in sorted(r["accuracy_within_context"].items(), key=lambda kv: int(kv[0]))]
            color = COLORS[fam] if fam != "solver" else COLORS["apr" if "apr" in r["method"] else "sos"]
            series.append((r["label"], color, ":D" if fam == "solver" else "-.o" if exact.is_exact(r) else "-o", pts))
    _draw(ax, series, "context window (tokens per thread)", "(a) accuracy vs context window")
    paths.append(_save(fig, out / "context.png"))
    # (b) accuracy vs total tokens
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _draw(ax, cost_series(runs, "total_tokens"), "total tokens per problem (mean, all threads)", "(b) accuracy vs total tokens", logx=True)
    paths.append(_save(fig, out / "tokens.png"))
    # (c) accuracy vs latency, and vs sequential tokens
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    dev = sorted({r.get("machine", {}).get("gpu") or r.get("machine", {}).get("device", "?") for r in runs if r["family"] != "solver"})
    _draw(a1, [s for s in cost_series(runs, "latency_s") if not s[2].endswith("D")],
          f"latency per problem (s, mean; {', '.join(dev)})", "(c) accuracy vs latency", logx=True)
    _draw(a2, cost_series(runs, "sequential_tokens"), "sequential tokens per problem (mean)", "(c') accuracy vs sequential tokens", logx=True)
    paths.append(_save(fig, out / "latency.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
