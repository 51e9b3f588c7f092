"""Evaluation (`apr eval`): accuracy and cost of a model (or of the symbolic solvers) on a problem set.

Methods: `apr`/`sos` (one sample per problem, greedy by default), `cons@N` and `pass@N`
(N samples per problem at temperature 1.0 by default, seeds distinct per sample), and the
reference rows `solver-apr`/`solver-sos` (the symbolic solvers themselves, checked).

Output folder: `run.json` (what was run: refused if a later run differs), `records.jsonl`
(the runtime's records, one per problem and sample, appended as they finish, so a rerun
resumes) and `summary.json` (accuracy with a Wilson 95% interval, cost percentiles, and the
sweeps the report plots, all derived from these records by `apr.eval_summary`: accuracy
within context windows from each record's `longest_thread`, and cons@n / pass@n for n < N
from the first n samples).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from apr import arithmetic_labels as exact
from apr.checker import check
from apr.countdown import Problem
from apr.datasets import check_target_reachable, default_problems, load_problems, packaged_validation_set
from apr.engine.spec import EngineSpec, make_engine
from apr.errors import UserError
from apr.eval_summary import summarize
from apr.model_folder import check_window, model_info
from apr.records import Record
from apr.rng import derive_seed
from apr.runfolder import RunFolder, append_records
from apr.runtime import Runtime
from apr.runtime_config import RuntimeConfig

METHOD_RE = re.compile(r"^(apr|sos|solver-apr|solver-sos|(cons|pass)@([1-9]\d*))$")
# Settings that must match for records to be appended to an existing run folder.
IDENTITY = ("model", "method", "runtime_method", "samples", "temperature", "top_k", "top_p", "seed",
            "context", "child_budget", "token_budget", "max_children", "max_depth", "max_total_tokens", "join_rule",
            "problems_sha", "arithmetic", "exact_goal_tests", "max_result")
# run.json keys of earlier versions: old -> new (a folder they wrote is resumed as before).
OLD_META_KEYS = {"sub_call_budget": "child_budget"}
# The settings a solver row applies; any other one changed is refused (no model runs).
SOLVER_SETTINGS = {"solver-apr": ("seed", "child_budget"), "solver-sos": ("seed",)}


@dataclass
class EvalSpec:
    """One evaluation: what to run, on which problems, into which run folder."""

    method: str  # apr | sos | cons@N | pass@N | solver-apr | solver-sos
    out: Path  # the run folder (created, or resumed when its run.json matches)
    engine: EngineSpec = field(default_factory=EngineSpec)
    # Unset settings (None) come from the model (RuntimeConfig.resolve: its method, budget and
    # window, which run.json and the summary record as resolved); the temperature is 0
    # (greedy) for one sample per problem, 1.0 for cons@N and pass@N. Its method is unset:
    # `method` above decides. Solver rows take only SOLVER_SETTINGS.
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    problems: str | None = None  # problem file; None: the model's validation set
    limit: int | None = None  # first N problems only
    label: str | None = None  # name in reports; None: family, method and budget
    progress: bool = True
    # Solver rows only: leave out operations whose result is above this (None: none), as the
    # demonstrations of a model trained on `apr data traces --max-result` did, so that the
    # model is compared with the solver it learned from.
    max_result: int | None = None


def parse_method(method: str) -> tuple[str, int]:
    """(method, samples per problem)."""
    m = METHOD_RE.match(method or "")
    if not m:
        raise UserError(f"`method` must be apr, sos, cons@N, pass@N, solver-apr or solver-sos; got {method!r}",
                        fields=("method",))
    return (method, int(m.group(3))) if m.group(2) else (method, 1)


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def evaluate(spec: EvalSpec, engine=None) -> dict:
    """Run (or resume) one evaluation; returns the summary (also written to the folder).
    `engine` replaces the one the spec names (tests replay solver traces through it)."""
    method, n = parse_method(spec.method)
    folder = RunFolder(spec.out)
    if method.startswith("solver-"):
        unused = [n for n in spec.runtime.changed() if n not in SOLVER_SETTINGS[method]]
        unused += [n for n, v in (("model", spec.engine.model), ("server", spec.engine.server)) if v]
        given, defaults = dataclasses.asdict(spec.engine), dataclasses.asdict(EngineSpec())
        unused += [n for n in ("served_model", "device", "dtype", "max_slots") if given[n] != defaults[n]]
        if unused:
            raise UserError(f"`{unused[0]}` does not apply to {method}: a symbolic solver runs, no model",
                            fields=(unused[0],))
        path = Path(spec.problems) if spec.problems else packaged_validation_set()
        problems = load_problems(path, spec.limit)
        budget, cap = spec.runtime.child_budget, spec.max_result
        for i, p in problems:
            check_target_reachable(p, cap, path, i + 1)
        name = "solver APR" if method == "solver-apr" else "solver SoS+"
        label = name + (f", budget {budget}" if budget else "") + (f", results <= {cap}" if cap is not None else "")
        meta = {"model": method, "label": spec.label or label,
                "family": "solver", "method": method, "runtime_method": method, "samples": 1, "temperature": 0.0,
                "seed": spec.runtime.seed, "context": None, "child_budget": budget, "problems_file": str(path),
                "problems_sha": file_sha(path), **({"max_result": cap} if cap is not None else {})}
        records = run_solver(method, problems, folder, meta, spec.progress)
        return write_summary(folder, records, meta)

    if spec.max_result is not None:
        raise UserError("`max_result` applies to solver-apr and solver-sos only: a model writes what it learned",
                        fields=("max_result",))
    model = spec.engine.model
    if model and not spec.engine.server and not (Path(model) / "config.json").is_file():
        raise UserError("not a model folder (no config.json)" if Path(model).is_dir() else "model folder not found", model)
    info = model_info(spec.engine.model)
    if method in ("apr", "sos") and model and method != info.method:
        raise UserError(f"model was trained for {info.method}, not {method}; use `method` {info.method}, cons@N or "
                        "pass@N", model, fields=("method",))
    runtime_method = method if method in ("apr", "sos") else info.method
    path = Path(spec.problems) if spec.problems else default_problems(model, info.task)
    problems = load_problems(path, spec.limit)
    if spec.runtime.method not in (None, runtime_method):
        raise UserError(f"runtime method {spec.runtime.method} differs from the evaluation's {runtime_method}; "
                        "leave the runtime's unset")
    sampled = n > 1 or method.startswith(("cons@", "pass@"))
    cfg = dataclasses.replace(spec.runtime, method=runtime_method).resolve(info, sampled=sampled)
    temperature = cfg.temperature
    family = "APR" if runtime_method == "apr" else "SoS+"
    budget = cfg.child_budget if runtime_method == "apr" else cfg.token_budget
    kind = method if n > 1 else ("greedy" if temperature == 0 else f"T={temperature:g}")
    meta = {"model": str(Path(model).resolve()) if model and not spec.engine.server else str(spec.engine.server),
            "label": exact.labelled(spec.label or f"{family} {kind}" + (f", budget {budget}" if budget else ""),
                                    cfg.arithmetic),
            "family": runtime_method, "method": method, "runtime_method": runtime_method,
            "samples": n, "temperature": temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": cfg.seed,
            "context": cfg.context, "child_budget": cfg.child_budget, "token_budget": cfg.token_budget,
            "max_children": cfg.max_children, "max_depth": cfg.max_depth, "max_total_tokens": cfg.max_total_tokens,
            "join_rule": cfg.join_rule if runtime_method == "apr" else None, "problems_file": str(path), "problems_sha": file_sha(path),
            **exact.identity(cfg.arithmetic)}
    if engine is None:  # the device and the window checked before run.json is written
        from apr.device import resolve_device

        meta["device"] = "server" if spec.engine.server else str(resolve_device(spec.engine.device))
        if spec.engine.model and not spec.engine.server:
            check_window(spec.engine.model, cfg.context)
    folder.open(meta, IDENTITY, OLD_META_KEYS)  # refuse a foreign folder before loading a model
    if engine is None:
        with make_engine(spec.engine.for_window(cfg.context)) as eng:
            records = run_model(eng, cfg, problems, folder, meta, spec.progress)
    else:
        records = run_model(engine, cfg, problems, folder, meta, spec.progress)
    return write_summary(folder, records, meta)


def run_model(engine, cfg, problems: list[tuple[int, Problem]], folder: RunFolder, meta: dict,
              progress: bool = True) -> list[Record]:
    """Sample every (problem, sample) not yet in the folder through the runtime.

    Samples of one problem run under distinct runtime indices (problem * N + sample), so
    their per-thread seeds differ; the record keeps the problem's `index` and a `sample`."""
    n = meta["samples"]
    done = folder.open(meta, IDENTITY, OLD_META_KEYS)
    todo = [(i * n + s, p) for i, p in problems for s in range(n) if (i, s) not in done]

    def labelled():
        for rec in Runtime(engine, cfg).iter_run(todo):
            rec.index, rec.sample = divmod(rec.index, n)
            rec.model, rec.method, rec.runtime_method = meta["model"], meta["method"], meta["runtime_method"]
            yield rec

    for rec in append_records(folder.records_file, labelled(), len(problems) * n, len(problems) * n - len(todo),
                              meta["method"], progress):
        done[(rec.index, rec.sample)] = rec
    return list(done.values())


def solver_record(kind: str, index: int, p: Problem, seed: int, tok, child_budget: int | None = None,
                  max_result: int | None = None) -> Record:
    """A solver's trace as a runtime-style record, costed with the same definitions; the APR
    solver starts at most `child_budget` child threads (None: as many as it likes), and both
    leave out operations whose result is above `max_result` (None: none)."""
    from apr.search import AprConfig, SosConfig, solve_apr, solve_sos

    rng = random.Random(derive_seed(seed, index))
    t0 = time.perf_counter()
    if kind == "solver-apr":
        thread, _ = solve_apr(p.nums, p.target, AprConfig(child_budget=child_budget, max_result=max_result), rng)
    else:
        thread = solve_sos(p.nums, p.target, SosConfig(max_result=max_result), rng)
    latency = time.perf_counter() - t0
    n = lambda s: len(tok.encode(s, add_special_tokens=False))
    threads = list(thread.walk())
    for t in threads:  # the counts the runtime keeps of a thread, as if it had generated it
        t.tokens, t.context_tokens = sum(n(s) for s in t.segments), n(t.text())
    text = thread.text()
    v = check(p.nums, p.target, text)
    return Record(index=index, sample=0, nums=p.nums, target=p.target, text=text, correct=v.correct, reason=v.reason,
                  answer=list(v.path), total_tokens=sum(t.tokens for t in threads),
                  sequential_tokens=thread.sequential_tokens(), longest_thread=max(t.context_tokens for t in threads),
                  children=len(threads) - 1, latency_s=latency, method=kind)


def run_solver(kind: str, problems: list[tuple[int, Problem]], folder: RunFolder, meta: dict,
               progress: bool = True) -> list[Record]:
    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    done = folder.open(meta, IDENTITY, OLD_META_KEYS)
    todo = [(i, p) for i, p in problems if (i, 0) not in done]
    records = (dataclasses.replace(solver_record(kind, i, p, meta["seed"], tok, meta.get("child_budget"),
                                                 meta.get("max_result")),
                                   model=meta["model"]) for i, p in todo)
    for rec in append_records(folder.records_file, records, len(problems), len(problems) - len(todo), kind, progress):
        done[(rec.index, 0)] = rec
    return list(done.values())


def write_summary(folder: RunFolder, records: list[Record], meta: dict) -> dict:
    summary = summarize(records, meta)
    folder.write_summary(summary)
    return summary
