"""The run folders `apr report` reads: each `apr eval` run's `summary.json`, checked for the
numbers the report draws (a hand-edited or truncated one is a one-line error, not a crash),
or an interrupted run summarized in memory from its first finished problems; and which of
them stands for a family (`primary`), which the plots (`apr.report_plots`) and tables share."""

from __future__ import annotations

import math

from apr import arithmetic_labels as exact
from apr.errors import UserError
from apr.runfolder import RunFolder

FAMILIES = ("apr", "sos", "solver")  # what a run's `family` may be; the report draws each in its colour


def load_runs(dirs: list[str]) -> list[dict]:
    """The summaries of `apr eval` run folders; an interrupted run (no summary.json yet) is
    summarized in memory from what it finished. Nothing is written into the folders."""
    runs = []
    for d in dirs:
        folder = RunFolder(d)
        if folder.summary_json.is_file():
            s = folder.summary()
        elif folder.run_json.is_file() and folder.records_file.is_file():
            s = partial_summary(folder)
        else:
            raise UserError("no summary.json; not an `apr eval` run folder", str(d))
        check_summary(s, str(folder.summary_json))
        s["dir"] = str(d)
        s["label"] = exact.labelled(str(s.get("label", "?")), s.get("arithmetic"))  # whatever label it was given
        runs.append(s)
    if not runs:
        raise UserError("give at least one run folder")
    return runs


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _point(p: object, costs: tuple[str, ...] = ()) -> bool:
    """An accuracy point: accuracy and a two-number ci95 (shares, 0..1) and, where asked, mean costs."""
    share = lambda x: _number(x) and 0 <= x <= 1  # noqa: E731
    return (isinstance(p, dict) and share(p.get("accuracy")) and isinstance(p.get("ci95"), list)
            and len(p["ci95"]) == 2 and all(map(share, p["ci95"])) and all(_number(p.get(c)) for c in costs))


def check_summary(s: object, path: str) -> None:
    """A summary holds what the report reads, each of the right kind: one written by hand,
    cut short or by another tool is one line naming what is missing, not a traceback."""
    from apr.eval_summary import METRICS

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"summary.json: {what}; rerun `apr eval` on the folder", path)

    need(isinstance(s, dict), "not a JSON object")
    need(isinstance(s.get("family"), str) and s["family"] in FAMILIES, f"`family` must be one of {', '.join(FAMILIES)}, got {s.get('family')!r}")
    need(_point(s), "`accuracy` and `ci95` (two numbers, 0..1) are required")
    for key in ("label", "method"):
        need(isinstance(s.get(key), str), f"`{key}` must be text")
    need(s["family"] == "solver" or isinstance(s.get("model"), str), "`model` must be text")
    for key in ("problems", "samples"):
        need(isinstance(s.get(key), int) and not isinstance(s.get(key), bool) and s[key] >= 0,
             f"`{key}` must be a count")
    need(s.get("temperature") is None or _number(s["temperature"]), "`temperature` must be a number")
    m = s.get("metrics")
    need(isinstance(m, dict) and all(isinstance(m.get(k), dict) and all(_number(m[k].get(q)) for q in ("mean", "p90", "p99"))
                                     for k in METRICS), f"`metrics` needs mean, p90 and p99 of {', '.join(METRICS)}")
    w = s.get("accuracy_within_context")
    need(isinstance(w, dict) and w and all(k.isdigit() and _point(v) for k, v in w.items()),
         "`accuracy_within_context` must map windows (digits) to accuracy points")
    by = s.get("by_samples")
    need(by is None or (isinstance(by, dict) and all(
        isinstance(by.get(kind), dict) and all(k.isdigit() and _point(v, METRICS) for k, v in by[kind].items())
        for kind in ("cons@", "pass@"))), "`by_samples` must map cons@ and pass@ to accuracy points with costs")
    need(isinstance(s.get("machine", {}), dict), "`machine` must be an object")
    c = s.get("competence")
    need(not c or (isinstance(c, dict) and all(_number(c.get(k)) for k in COMPETENCE_NUMBERS)),
         f"`competence` needs the numbers {', '.join(COMPETENCE_NUMBERS)}")
    reasons = (c or {}).get("failure_reasons")
    need(reasons is None or (isinstance(reasons, dict) and all(
        isinstance(reasons.get(g), dict) and all(map(_number, reasons[g].values())) for g in ("runtime", "checker"))),
         "`competence.failure_reasons` must map runtime and checker to counts")


# What the tables read from a summary's `competence` (apr.competence.measure).
COMPETENCE_NUMBERS = ("arithmetic_error_rate", "operations", "false_claim_join_rate", "joins")


def partial_summary(folder: RunFolder) -> dict:
    """The summary of an interrupted run, from its first K problems only: those in file
    order before the first unfinished one. Problems finish in order of their cost, so
    summarizing every finished one would favour short (mostly solved) searches."""
    from apr.eval_summary import summarize

    meta = folder.meta()
    records = list(folder.finished().values())
    count: dict[int, int] = {}
    for r in records:
        count[r.index] = count.get(r.index, 0) + 1
    first_missing = 0
    while count.get(first_missing, 0) >= meta.get("samples", 1):
        first_missing += 1
    records = [r for r in records if r.index < first_missing]
    if not records:
        raise UserError("no finished records yet (the first problem is not finished)", str(folder.path))
    return summarize(records, {**meta, "label": meta.get("label", "?") + f" (partial: first {first_missing})"})


def single(runs: list[dict], family: str, exact_runs: bool = False) -> list[dict]:
    """A family's one-sample runs under the published join rule: the unassisted ones, or
    (`exact_runs`) those with exact arithmetic. Runs under another join rule (`verified`) are
    in the table of every run only: they are not the published evaluation."""
    return [r for r in runs if r["family"] == family and r["samples"] == 1 and exact.is_exact(r) == exact_runs
            and r.get("join_rule") in (None, "official")]


def primary(runs: list[dict], family: str, exact_runs: bool = False) -> dict | None:
    """The run that stands for a family in the context plot and the headline table: its
    greedy single-sample run on the most problems (the first given on a tie); unassisted
    unless `exact_runs`."""
    cands = [r for r in single(runs, family, exact_runs) if r.get("temperature", 0) == 0]
    return max(cands, key=lambda r: r["problems"], default=None)
