"""The recipes end to end (`apr pipeline --preset cpu|gpu`): problems -> demonstrations -> an APR and an SoS+ model
-> evaluations -> report, one resumable stage at a time.

Both models have the same size and are trained on the same problems with the same token
budget (steps x batch x context); only the demonstrations differ (spawn/join vs serial).
A stage whose outputs exist is skipped; `--stages` picks stages, `--force` is not offered
on purpose: delete a stage's folder to redo it.

Layout under --out: data/ (train.jsonl, val.jsonl, apr.jsonl, sos.jsonl), train/apr/final,
train/sos/final (HF folders; a copy of the validation problems as val_problems.jsonl sits in
each, so `apr eval --model DIR` finds the right set), eval/<run>/ (apr eval folders),
report/ (plots and report.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from apr.countdown import TaskConfig, problem_keys
from apr.datasets import packaged_validation_set, write_problems, write_traces
from apr.engine.spec import EngineSpec
from apr.errors import UserError
from apr.device import resolve_device
from apr.eval import EvalSpec, evaluate
from apr.io import atomic_write, check_output_dir
from apr.report import write_report
from apr.runtime_config import RuntimeConfig
from apr.search import AprConfig, SosConfig

STAGES = ("data", "train", "eval", "report", "export")
log = logging.getLogger(__name__)

@dataclass
class Preset:
    num_count: int
    train_problems: int
    model: str
    steps: int
    batch_size: int
    context: int  # training row length = evaluation context window
    lr: float
    warmup: int
    eval_limit: int  # validation problems for the greedy runs
    cons_n: int  # SoS+ samples per problem for cons@n / pass@n
    cons_limit: int  # validation problems for the sampled run
    budgets: list[int] = field(default_factory=list)  # APR child budgets to sweep
    val_problems: int = 0  # 0: the packaged Countdown-4 set; else drawn for this task
    eval_context: int = 0  # evaluation context window per thread; 0: the training context
    workers: int = 2
    max_in_flight: int = 32
    dtype: str = "auto"
    # > 0: the APR model trains for this many seconds (max `steps`; `time_budget_s`), and the
    # SoS+ model then for the same number of steps, so both still see the same token budget.
    train_seconds: float = 0.0
    attn: str = "sdpa"  # training attention for packed rows (SFTConfig.attn_implementation)
    compile: bool = False  # torch.compile the training model


PRESETS = {
    # Countdown-3 (numbers 1..99, targets 10..100): traces are ~10x shorter than Countdown-4,
    # so a tiny model sees many complete searches in a CPU budget; the solvers still differ
    # (on 200 problems the APR solver solves 86%, SoS+ 78%).
    "cpu": Preset(num_count=3, train_problems=4000, model="cpu-mini", steps=1500, batch_size=8, context=1024, lr=2e-3,
                  warmup=30, eval_limit=200, cons_n=4, cons_limit=100, budgets=[2, 4, 8], val_problems=500),
    # Countdown-4 as published, on one H100/H200. 12,000 problems are ~105M APR demonstration
    # tokens (8.8k per problem) and ~16M SoS+ tokens. The APR model trains for 220 s (on an
    # H200 with flex attention, ~1.15M tokens/s: ~250M tokens, ~2.4 epochs), the SoS+ model
    # for as many steps. Fewer tokens do not teach the task: 44M tokens (334 steps) gave models
    # that solved nothing (docs/reports/gpu).
    "gpu": Preset(num_count=4, train_problems=12000, model="gpu-10m", steps=5000, batch_size=32, context=4096, lr=1e-3,
                  warmup=30, eval_limit=1000, cons_n=4, cons_limit=300, budgets=[2, 6], workers=16,
                  max_in_flight=256, dtype="bfloat16", train_seconds=220, attn="flex_attention"),
}


def val_file(out: Path, p: Preset) -> Path:
    return out / "data" / "val.jsonl" if p.val_problems else packaged_validation_set()


# ---------------------------------------------------------------------------- stages

def _read_done(path: Path, yaml_file: bool = False) -> dict:
    """A finished stage's record (data/done.json, train/*/config.yaml), or a one-line error."""
    import yaml

    try:
        d = yaml.safe_load(path.read_text()) if yaml_file else json.loads(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"unreadable ({type(e).__name__}); delete the stage's folder or use another `out`", str(path),
                        fields=("out",)) from None
    if not isinstance(d, dict) or (not yaml_file and not isinstance(d.get("preset"), dict)):
        raise UserError("not what a finished stage writes; delete the stage's folder or use another `out`", str(path),
                        fields=("out",))
    return d


def _trained_with(out: Path, method: str) -> dict:
    return _read_done(out / "train" / method / "config.yaml", yaml_file=True)


def check_done(out: Path, p: Preset) -> None:
    """The stages already finished under `out` were made with these settings, or a one-line
    error; checked before a run writes anything, so a mismatch leaves the folder untouched."""
    done = out / "data" / "done.json"
    if done.exists():
        old = _read_done(done)["preset"]
        now = dataclasses.asdict(p)
        for key in ("num_count", "train_problems", "val_problems"):
            if old.get(key) != now[key]:
                raise UserError(f"data/ was made with {key} {old.get(key)}, not {now[key]}; "
                                "delete it or use another `out`", str(out), fields=("out",))
    steps = p.steps
    for method in ("apr", "sos"):  # APR first: with train_seconds it fixes the step count
        if not (out / "train" / method / "final" / "config.json").exists():
            continue
        trained = _trained_with(out, method)
        for key, want in (("batch_size", p.batch_size), ("context", p.context), ("model", p.model)):
            if trained.get(key) != want:
                raise UserError(f"train/{method} was trained with {key} {trained.get(key)}, not {want}; "
                                "delete it or use another `out`", str(out), fields=("out",))
        budget = p.train_seconds if method == "apr" else 0.0
        if trained.get("max_steps") != steps and not budget:
            raise UserError(f"train/{method} was trained for {trained.get('max_steps')} steps, not {steps}; "
                            "delete it or use another `out`", str(out), fields=("out",))
        if method == "apr":
            steps = trained.get("max_steps")


def stage_data(out: Path, p: Preset, seed: int, progress: bool = False) -> None:
    d = out / "data"
    if (d / "done.json").exists():
        check_done(out, p)
        log.info(f"data: exists ({d})")
        return
    task = TaskConfig(num_count=p.num_count)
    shared_val = val_file(out, dataclasses.replace(p, val_problems=0))
    if p.val_problems:  # a validation set of this task, disjoint from the shared one too
        write_problems([(d / "val.jsonl", p.val_problems)], seed + 1, task, problem_keys([shared_val]), p.workers,
                       progress)
    write_problems([(d / "train.jsonl", p.train_problems)], seed, task, problem_keys([shared_val, val_file(out, p)]),
                   p.workers, progress)
    solvers = {"apr": AprConfig(budget_prefix=bool(p.budgets)), "sos": SosConfig()}
    for solver, solver_cfg in solvers.items():
        raw = d / f"{solver}.raw.jsonl"
        write_traces(d / "train.jsonl", raw, solver_cfg, seed, p.workers, progress)
        # Tag every demonstration with its task, so the trained model's apr.json records it.
        with atomic_write(d / f"{solver}.jsonl") as f, open(raw) as src:
            for line in src:
                f.write(json.dumps({**json.loads(line), "task": task.as_dict()}) + "\n")
        raw.unlink()
    with atomic_write(d / "done.json") as f:
        json.dump({"preset": dataclasses.asdict(p), "task": task.as_dict(), "seed": seed}, f, indent=2)


def stage_train(out: Path, p: Preset, seed: int, device: str, progress: bool = True) -> dict[str, Path]:
    from apr.train.config import load_config
    from apr.train.sft import train_sft

    finals, steps = {}, p.steps
    for method in ("apr", "sos"):  # APR first: with train_seconds it fixes the step count
        run = out / "train" / method
        final = run / "final"
        budget = p.train_seconds if method == "apr" else 0.0
        if (final / "config.json").exists():
            check_done(out, p)
        else:
            sets = [f"data={out / 'data' / (method + '.jsonl')}", f"model={p.model}", f"out_dir={run}",
                    f"max_steps={steps}", f"batch_size={p.batch_size}", f"context={p.context}", f"seed={seed}",
                    f"device={device}", f"dtype={p.dtype}", f"optim.lr={p.lr}", f"optim.min_lr={p.lr / 10}",
                    f"optim.warmup_steps={p.warmup}", f"eval_problems={val_file(out, p)}", "eval_every=0",
                    f"save_every={max(50, p.steps // 4)}", f"log_every={max(1, min(50, p.steps // 20))}",
                    f"budget_prefix={str(method == 'apr' and bool(p.budgets)).lower()}",
                    f"time_budget_s={budget}", f"attn_implementation={p.attn}", f"compile={str(p.compile).lower()}"]
            cfg = load_config(None, sets)
            t0 = time.perf_counter()
            resume = (run / "checkpoints" / "latest").exists()
            log.info(f"train {method}: {p.model}, {steps} steps x {p.batch_size} x {p.context} tokens"
                     + (f", at most {budget:.0f} s" if budget else ""))
            train_sft(cfg, resume=resume, progress=progress)
            with atomic_write(run / "time.json") as f:
                json.dump({"train_seconds": time.perf_counter() - t0, "resumed": resume}, f)
        if method == "apr":
            steps = _trained_with(out, method)["max_steps"]  # as resolved by the budget
        if p.val_problems:
            shutil.copyfile(val_file(out, p), final / "val_problems.jsonl")
        finals[method] = final
    return finals


def eval_runs(out: Path, p: Preset, device: str = "auto", progress: bool = False) -> list[tuple[str, EvalSpec]]:
    """(run folder name, evaluation) of the evaluation stage, most important first: a stage
    cut short by a time limit loses the least."""
    apr_m, sos_m, val = out / "train" / "apr" / "final", out / "train" / "sos" / "final", val_file(out, p)
    runtime = RuntimeConfig(context=p.eval_context or p.context, max_in_flight=p.max_in_flight)

    def spec(name: str, method: str, model: Path | None, limit: int, **changes) -> tuple[str, EvalSpec]:
        if model:
            engine = EngineSpec(model=str(model), device=device, max_slots=p.max_in_flight, context=runtime.context)
            settings = dataclasses.replace(runtime, **changes)
        else:  # a solver row: no model, no window, no engine
            engine, settings = EngineSpec(context=runtime.context), RuntimeConfig(**changes)
        return name, EvalSpec(method=method, out=out / "eval" / name, engine=engine, runtime=settings,
                              problems=str(val), limit=limit, progress=progress)

    runs = [spec("apr", "apr", apr_m, p.eval_limit), spec("sos", "sos", sos_m, p.eval_limit),
            spec("solver_apr", "solver-apr", None, p.eval_limit), spec("solver_sos", "solver-sos", None, p.eval_limit)]
    if p.cons_n > 1:
        runs.append(spec(f"sos_cons{p.cons_n}", f"cons@{p.cons_n}", sos_m, p.cons_limit))
    for b in p.budgets:
        runs.append(spec(f"apr_budget{b}", "apr", apr_m, p.eval_limit, child_budget=b))
    return runs


def stage_eval(out: Path, p: Preset, device: str, progress: bool = False) -> list[Path]:
    dirs = []
    for name, spec in eval_runs(out, p, device, progress):
        t0 = time.perf_counter()
        evaluate(spec)  # resumes by itself: finished records are kept
        log.info(f"eval {name}: {time.perf_counter() - t0:.0f} s")
        dirs.append(spec.out)
    return dirs


def stage_export(out: Path, export: Path, command: str) -> None:
    """bf16 copies of both models as HF folders: EXPORT (APR) and EXPORT-sos (SoS+)."""
    import torch

    from apr.model_folder import load_model, save_model

    for method, dest in (("apr", export), ("sos", export.with_name(export.name + "-sos"))):
        model, tok, info = load_model(out / "train" / method / "final")
        shutil.rmtree(dest, ignore_errors=True)
        save_model(model.to(torch.bfloat16), tok, info, dest)
        src_val = out / "train" / method / "final" / "val_problems.jsonl"
        if src_val.exists():
            shutil.copyfile(src_val, dest / "val_problems.jsonl")
        size = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
        log.info(f"export {method}: {dest} ({size:.1f} MB)")
    readme = export.parent / "README.md"
    with atomic_write(readme) as f:
        f.write(f"# Default models\n\n`{export.name}/` (APR) and `{export.name}-sos/` (SoS+) were made by:\n\n"
                f"```bash\n{command}\n```\n\nTraining config: `{out}/train/*/config.yaml`; "
                f"evaluation: `{out}/report/report.md`.\n")


# ---------------------------------------------------------------------------- the run

def run_pipeline(preset: str, p: Preset, out: Path, stages: list[str], seed: int = 0, device: str = "auto",
                 export: Path | None = None, command: str = "apr pipeline (from Python)",
                 progress: bool = False) -> dict[str, float]:
    """Run the named stages in pipeline order; returns seconds per stage (also timings.json).
    `progress`: progress bars (on a terminal) for demonstrations, training and evaluation."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UserError(f"unknown stage {bad[0]!r} (stages: {', '.join(STAGES)})")
    if "export" in stages and export is None:
        raise UserError("the export stage needs `export` (a folder, e.g. models/default)", fields=("export",))
    # Everything checked before the first write: the folders, the device, finished stages.
    check_output_dir(out)
    if export is not None:
        for folder in (export, export.with_name(export.name + "-sos")):
            check_output_dir(folder, {"out": out}, field="export")
    if {"train", "eval", "export"} & set(stages):
        resolve_device(device)
    check_done(out, p)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "pipeline.json") as f:
        json.dump({"preset": preset, "settings": dataclasses.asdict(p), "stages": stages, "command": command}, f, indent=2)
    timings = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.perf_counter()
        if stage == "data":
            stage_data(out, p, seed, progress)
        elif stage == "train":
            stage_train(out, p, seed, device, progress)
        elif stage == "eval":
            stage_eval(out, p, device, progress)
        elif stage == "report":
            dirs = [str(s.out) for _, s in eval_runs(out, p) if (s.out / "run.json").exists()]
            log.info(f"report: {write_report(dirs, out / 'report')}")
        elif stage == "export":
            stage_export(out, export, command)
        timings[stage] = round(time.perf_counter() - t0, 1)
        log.info(f"stage {stage}: {timings[stage]} s")
    with atomic_write(out / "timings.json") as f:
        json.dump(timings, f, indent=2)
    return timings
