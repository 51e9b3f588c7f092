"""`apr eval`: accuracy and cost of a model (or of the symbolic solvers) on a problem set.

Methods: `apr`/`sos` (one sample per problem, greedy by default), `cons@N` and `pass@N`
(N samples per problem at temperature 1.0 by default, seeds distinct per sample), and the
reference rows `solver-apr`/`solver-sos` (the symbolic solvers themselves, checked).

Output folder: `run.json` (what was run: refused if a later run differs), `records.jsonl`
(the runtime's records, one per problem and sample, appended as they finish, so a rerun
resumes) and `summary.json` (accuracy with a Wilson 95% interval, cost percentiles, and the
sweeps the report plots, all derived from these records: accuracy within context windows
from each record's `longest_thread`, and cons@n / pass@n for n < N from the first n samples).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from apr.rng import derive_seed
from apr.checker import check, final_path
from apr.countdown import Problem
from apr.errors import UserError
from apr.io import atomic_write, read_appended

METHOD_RE = re.compile(r"^(apr|sos|solver-apr|solver-sos|(cons|pass)@([1-9]\d*))$")
# Settings that must match for records to be appended to an existing run folder.
IDENTITY = ("model", "method", "runtime_method", "samples", "temperature", "top_k", "top_p", "seed",
            "context", "sub_call_budget", "token_budget", "max_children", "max_depth", "max_total_tokens", "problems_sha")
METRICS = ("total_tokens", "sequential_tokens", "longest_thread", "children", "latency_s")
# Record reasons set by the runtime when it stopped a sample (not the checker's verdicts).
RUNTIME_FAILURES = ("context window reached", "total token limit reached", "malformed spawn block",
                    "too many children", "spawn names unknown node")
WINDOWS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


# ---------------------------------------------------------------------------- statistics

def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # Clamp so rounding never puts p outside its own interval (k = 0 or k = n).
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def claimed_path(rec: dict) -> tuple[str, ...] | None:
    """The operations of the final path a sample claims, right or wrong; None when it claims
    none (no goal line with a clean path: `No solution found.`, cut off, ...)."""
    if rec.get("answer"):
        return tuple(rec["answer"])
    lines = final_path(rec.get("text", ""))
    if lines is None:
        return None
    ops = tuple(l[len("Exploring Operation: "):].split(",")[0] for l in lines if l.startswith("Exploring Operation: "))
    return ops or None


def consensus(samples: list[dict]) -> bool:
    """cons@n as published: drop samples with no solution, majority-vote the final paths.

    A sample votes with the path it claims (`claimed_path`) when the runtime did not stop it
    (a sample cut at the context window has no solution). The path with most votes wins,
    ties going to the path claimed first (lowest sample number); the problem counts as
    solved when the winning path is correct. Wrong claimed paths vote too, so cons@n can be
    below pass@n; no votes at all is a failure."""
    votes: Counter = Counter()
    first: dict[tuple, int] = {}
    right: dict[tuple, bool] = {}
    for s, rec in enumerate(samples):
        path = claimed_path(rec)
        if path is None or rec.get("reason", "").startswith(RUNTIME_FAILURES):
            continue
        votes[path] += 1
        first.setdefault(path, s)
        right[path] = right.get(path, False) or bool(rec["correct"])
    if not votes:
        return False
    winner = max(votes, key=lambda p: (votes[p], -first[p]))
    return right[winner]


def solved(method: str, samples: list[dict]) -> bool:
    if method.startswith("cons@"):
        return consensus(samples)
    return any(r["correct"] for r in samples)  # pass@n, and the one-sample methods


def within(rec: dict, window: int) -> dict:
    """A record as it would be under a smaller context window: a thread longer than
    `window` tokens would have been cut, so the sample fails and claims nothing."""
    if rec["longest_thread"] <= window:
        return rec
    return {**rec, "correct": False, "answer": [], "text": "", "reason": "context window reached"}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}}


def per_problem_cost(samples: list[dict]) -> dict:
    """Cost of answering one problem with these samples. Samples are independent, so they
    can run side by side: tokens and children add up; sequential tokens, the longest thread
    and latency are those of the slowest sample."""
    return {
        "total_tokens": sum(r["total_tokens"] for r in samples),
        "sequential_tokens": max(r["sequential_tokens"] for r in samples),
        "longest_thread": max(r["longest_thread"] for r in samples),
        "children": sum(r["children"] for r in samples),
        "latency_s": max(r["latency_s"] for r in samples),
    }


def point(method: str, groups: list[list[dict]]) -> dict:
    """Accuracy (with its interval) and mean costs for problems given as sample lists."""
    k = sum(solved(method, g) for g in groups)
    n = len(groups)
    costs = [per_problem_cost(g) for g in groups]
    out = {"accuracy": k / n if n else 0.0, "ci95": list(wilson(k, n)), "correct": k, "problems": n}
    for m in METRICS:
        out[m] = float(np.mean([c[m] for c in costs])) if costs else 0.0
    return out


def summarize(records: list[dict], meta: dict) -> dict:
    """summary.json from the records of one run folder (complete problems only)."""
    method, n = meta["method"], meta["samples"]
    by_problem: dict[int, list[dict]] = {}
    for r in records:
        by_problem.setdefault(r["index"], []).append(r)
    groups = [sorted(g, key=lambda r: r.get("sample", 0)) for _, g in sorted(by_problem.items())]
    groups = [g for g in groups if len(g) >= n]
    base = point(method, groups)
    costs = [per_problem_cost(g) for g in groups]
    top = meta["context"] if meta["context"] else max((r["longest_thread"] for r in records), default=0)
    windows = sorted({w for w in WINDOWS if w < top} | {top})
    out = {
        **{k: meta.get(k) for k in ("model", "label", "family", "method", "runtime_method", "samples", "temperature",
                                    "top_k", "top_p", "seed", "context", "sub_call_budget", "token_budget", "problems_file")},
        "accuracy": base["accuracy"],
        "ci95": base["ci95"],
        "correct": base["correct"],
        "problems": base["problems"],
        "metrics": {m: percentiles([c[m] for c in costs]) for m in METRICS},
        "accuracy_within_context": {str(w): point(method, [[within(r, w) for r in g] for g in groups]) for w in windows},
        "machine": machine(meta.get("device")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if method[:5] in ("cons@", "pass@"):
        kind = method[:5]
        out["by_samples"] = {kind: {str(k): point(kind + str(k), [g[:k] for g in groups]) for k in range(1, n + 1)}}
        other = "pass@" if kind == "cons@" else "cons@"
        out["by_samples"][other] = {str(k): point(other + str(k), [g[:k] for g in groups]) for k in range(1, n + 1)}
    return out


def machine(device: str | None = None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "device": device or "cpu"}
    if device and device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


# ---------------------------------------------------------------------------- running

def parse_method(method: str) -> tuple[str, int]:
    """(`cons@`/`pass@`/plain method name, samples per problem)."""
    m = METHOD_RE.match(method or "")
    if not m:
        raise UserError(f"--method must be apr, sos, cons@N, pass@N, solver-apr or solver-sos; got {method!r}")
    return (method, int(m.group(3))) if m.group(2) else (method, 1)


def default_problems(model_dir: str | None, task: dict | None) -> Path:
    """A model's validation set: `val_problems.jsonl` in its folder (written by `apr pipeline`
    for tasks other than the published one), else the packaged Countdown-4 set."""
    from apr.model import DEFAULT_TASK

    if model_dir and (Path(model_dir) / "val_problems.jsonl").is_file():
        return Path(model_dir) / "val_problems.jsonl"
    if task is None or task == DEFAULT_TASK:
        return Path(str(resources.files("apr") / "data" / "countdown4_val1000.jsonl"))
    raise UserError(f"the model's task {task} has no packaged validation set; give --problems FILE", model_dir)


def file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def open_run(out: Path, meta: dict) -> dict[tuple[int, int], dict]:
    """Check (or create) run.json in `out`; return the finished records by (problem, sample).
    A folder of another run (another model, method or setting) is refused untouched."""
    run_json, records = out / "run.json", out / "records.jsonl"
    if out.exists() and not out.is_dir():
        raise UserError("--out must be a folder", str(out))
    if run_json.exists():
        try:
            old = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            raise UserError("unreadable run.json; not an `apr eval` folder?", str(run_json)) from None
        for key in IDENTITY:
            if old.get(key) != meta.get(key):
                raise UserError(f"holds a run of another {key} ({old.get(key)!r}, not {meta.get(key)!r}); use another --out", str(out))
    elif records.exists() or (out / "summary.json").exists():
        raise UserError("holds results without run.json; use another --out", str(out))
    done = {(rec["index"], rec.get("sample", 0)): rec for _, rec in read_appended(records)}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_json) as f:
        json.dump(meta, f, indent=2)
    return done


def _append(f, rec: dict, done: dict, bar) -> None:
    f.write(json.dumps(rec) + "\n")
    f.flush()
    done[(rec["index"], rec.get("sample", 0))] = rec
    bar.update()


def run_model(engine, cfg, problems: list[tuple[int, Problem]], out: Path, meta: dict, progress: bool = True) -> list[dict]:
    """Sample every (problem, sample) not yet in out/records.jsonl through the runtime.

    Samples of one problem run under distinct runtime indices (problem * N + sample), so
    their per-thread seeds differ; the record keeps the problem's `index` and a `sample`."""
    from tqdm import tqdm

    from apr.engine.base import EngineError
    from apr.runtime import Runtime

    n = meta["samples"]
    done = open_run(out, meta)
    todo = [(i * n + s, p) for i, p in problems for s in range(n) if (i, s) not in done]
    bar = tqdm(total=len(problems) * n, initial=len(problems) * n - len(todo), desc=meta["method"], unit="sample",
               file=sys.stderr, disable=not progress)
    with open(out / "records.jsonl", "a") as f:
        try:
            for rec in Runtime(engine, cfg).iter_run(todo):
                rec["index"], rec["sample"] = divmod(rec["index"], n)
                rec.update(model=meta["model"], method=meta["method"], runtime_method=meta["runtime_method"])
                _append(f, rec, done, bar)
        except EngineError as e:
            raise UserError(f"engine failed ({e}); finished records kept in {out}: rerun to resume") from None
    bar.close()
    return list(done.values())


def solver_record(kind: str, index: int, p: Problem, seed: int, tok) -> dict:
    """A solver's trace as a runtime-style record, costed with the same definitions."""
    from apr.search import AprConfig, SosConfig, solve_apr, solve_sos

    rng = random.Random(derive_seed(seed, index))
    t0 = time.perf_counter()
    if kind == "solver-apr":
        thread, _ = solve_apr(p.nums, p.target, AprConfig(), rng)
    else:
        thread = solve_sos(p.nums, p.target, SosConfig(), rng)
    latency = time.perf_counter() - t0
    n = lambda s: len(tok.encode(s, add_special_tokens=False))

    def seq(t) -> int:  # a thread's generated tokens plus, at each join, its longest child chain
        return sum(n(s) for s in t.segments) + sum(max((seq(c) for c in g), default=0) for g in t.children)

    threads = list(thread.walk())
    text = thread.text()
    v = check(p.nums, p.target, text)
    return {
        "index": index, "sample": 0, "nums": p.nums, "target": p.target, "text": text,
        "correct": v.correct, "reason": v.reason, "answer": list(v.path),
        "total_tokens": sum(n(s) for t in threads for s in t.segments),
        "sequential_tokens": seq(thread),
        "longest_thread": max(n(t.text()) for t in threads),
        "children": len(threads) - 1, "latency_s": latency, "method": kind,
    }


def run_solver(kind: str, problems: list[tuple[int, Problem]], out: Path, meta: dict, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    done = open_run(out, meta)
    todo = [(i, p) for i, p in problems if (i, 0) not in done]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=kind, unit="prob", file=sys.stderr, disable=not progress)
    with open(out / "records.jsonl", "a") as f:
        for i, p in todo:
            _append(f, {**solver_record(kind, i, p, meta["seed"], tok), "model": meta["model"]}, done, bar)
    bar.close()
    return list(done.values())


def write_summary(out: Path, records: list[dict], meta: dict) -> dict:
    summary = summarize(records, meta)
    with atomic_write(out / "summary.json") as f:
        json.dump(summary, f, indent=2)
    return summary


# ---------------------------------------------------------------------------- command

def load_problem_list(args, model_task: dict | None) -> tuple[Path, list[tuple[int, Problem]]]:
    from apr.solve import load_problems

    path = Path(args.problems) if args.problems else default_problems(args.model, model_task)
    problems = load_problems(str(path))  # validates every line before any work
    if args.limit is not None:
        if args.limit < 1:
            raise UserError(f"--limit must be >= 1, got {args.limit}")
        problems = problems[: args.limit]
    return path, problems


def evaluate(args, engine=None) -> dict:
    """Run (or resume) one evaluation as the options say; returns the summary. `engine`
    replaces the one the options name (tests replay solver traces through it)."""
    from apr.solve import make_engine, model_info, runtime_config

    method, n = parse_method(args.method)
    out = Path(args.out)
    sampling = n > 1 or method.startswith(("cons@", "pass@"))
    temperature = args.temperature if args.temperature is not None else (1.0 if sampling else 0.0)
    if method.startswith("solver-"):
        path, problems = load_problem_list(args, None)
        meta = {"model": method, "label": args.label or ("solver APR" if method == "solver-apr" else "solver SoS+"), "family": "solver", "method": method,
                "runtime_method": method, "samples": 1, "temperature": 0.0, "seed": args.seed, "context": None,
                "problems_file": str(path), "problems_sha": file_sha(path)}
        records = run_solver(method, problems, out, meta, progress=not args.quiet)
        return write_summary(out, records, meta)

    if args.model and not args.server and not (Path(args.model) / "config.json").is_file():
        raise UserError("not a model folder (no config.json)" if Path(args.model).is_dir() else "model folder not found", args.model)
    info = model_info(args)
    if method in ("apr", "sos") and args.model and method != info.method:
        raise UserError(f"model was trained for {info.method}, not {method}; use --method {info.method}, cons@N or pass@N", args.model)
    runtime_method = method if method in ("apr", "sos") else info.method
    path, problems = load_problem_list(args, info.task)
    ns = SimpleNamespace(**{**vars(args), "method": runtime_method, "temperature": temperature})
    cfg = runtime_config(ns, info)
    model = str(Path(args.model).resolve()) if args.model and not args.server else str(args.server)
    family = "APR" if runtime_method == "apr" else "SoS+"
    budget = cfg.sub_call_budget if runtime_method == "apr" else cfg.token_budget
    kind = method if n > 1 else ("greedy" if temperature == 0 else f"T={temperature:g}")
    label = args.label or f"{family} {kind}" + (f", budget {budget}" if budget else "")
    meta = {"model": model, "label": label, "family": runtime_method, "method": method, "runtime_method": runtime_method,
            "samples": n, "temperature": temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": cfg.seed,
            "context": cfg.context, "sub_call_budget": cfg.sub_call_budget, "token_budget": cfg.token_budget,
            "max_children": cfg.max_children, "max_depth": cfg.max_depth, "max_total_tokens": cfg.max_total_tokens,
            "problems_file": str(path), "problems_sha": file_sha(path)}
    open_run(out, meta)  # refuse a foreign folder before loading a model
    if engine is None:
        with make_engine(args) as eng:
            meta["device"] = str(getattr(eng, "device", "server"))
            records = run_model(eng, cfg, problems, out, meta, progress=not args.quiet)
    else:
        records = run_model(engine, cfg, problems, out, meta, progress=not args.quiet)
    return write_summary(out, records, meta)


def cmd_eval(args) -> int:
    s = evaluate(args)
    lo, hi = s["ci95"]
    m = s["metrics"]
    print(f"{s['label']}: accuracy {s['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {s['problems']} problems; "
          f"total tokens {m['total_tokens']['mean']:.0f}, sequential {m['sequential_tokens']['mean']:.0f}, "
          f"latency {m['latency_s']['mean']:.2f} s; {args.out}/summary.json", file=sys.stderr)
    return 0


def add_eval_options(p: argparse.ArgumentParser) -> None:
    from apr.solve import add_engine_options, add_runtime_options

    p.add_argument("--method", required=True, help="apr | sos | cons@N | pass@N | solver-apr | solver-sos")
    p.add_argument("--out", required=True, help="run folder: run.json, records.jsonl, summary.json")
    p.add_argument("--problems", help="problem file (default: the model's validation set)")
    p.add_argument("--limit", type=int, help="first N problems only")
    p.add_argument("--label", help="name in reports (default: family, method and budget)")
    p.add_argument("--quiet", action="store_true")
    add_engine_options(p)
    add_runtime_options(p, method=False, temperature_help="default 0 (greedy); 1.0 for cons@N and pass@N")


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy, tokens and latency of a model on a problem set (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_options(p)
    p.set_defaults(func=cmd_eval)
