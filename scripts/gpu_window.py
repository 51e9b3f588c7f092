"""One GPU window turned into better models: data, four trainings at once, their evaluation,
and results packed for the trip back, all inside one deadline.

    PYTHONPATH=src python3 scripts/gpu_window.py --out "$OUT"            # on the GPU machine
    PYTHONPATH=src python3 scripts/gpu_window.py --out /tmp/w --toy      # the CPU dry run (tests)

Jobs (each a `Job` below): the Countdown-4 APR and SoS+ pair and a Countdown-3 pair. Each job
starts from the weights of the previous window when `--models DIR/<job>` holds a model (the
committed `models/<job>`), so compute accumulates window after window: a fresh cosine
schedule each time, the same tokenizer, and new training problems (the problem stream's seed
is 1000 + the window number, so no window reuses another's draws; the validation problems
are always excluded).

Phases, each bounded by what is left of `--deadline` seconds:
  data    problems and solver demonstrations on the machine's cores (both tasks at once);
  train   the four `apr train sft` processes side by side on the one GPU, each with a time
          budget that ends training before the evaluation's share of the window;
  export  bf16 copies, sharded below 15 MB, with validation problems, a model card and the
          training history (window, tokens, steps, held-out loss);
  eval    greedy `apr eval` of each model on `--eval-limit` validation problems, side by side,
          each under a timeout (an unfinished evaluation keeps its records);
  pack    `results.json` (one row per job), `log.txt`, and one tar of everything else split
          into parts of at most 15 MB: at most 8 files in all, packed even after a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PART_BYTES = 15 * 1024 * 1024
MAX_FILES = 8


@dataclass
class Job:
    name: str  # also the model folder under --models
    method: str  # apr | sos
    num_count: int  # the task: Countdown-N
    preset: str  # model size (apr.model_folder.PRESETS)
    context: int  # training row length = evaluation window
    batch_size: int
    lr: float
    problems: int  # training problems drawn this window
    eval_context: int = 0  # 0: context
    # Numbers as whole tokens 0..99, larger ones in right-aligned 2-digit chunks: at equal CPU
    # time it learned the traces with ~27% lower loss per character than a token per digit
    # (benchmarks/probe_recipe.py, BENCHMARKS.md "Recipe probe"). A job continues only a model
    # of the same tokenizer (`init_of`), so the committed digit-token Countdown-4 models
    # (44M tokens, 0% solved) are left behind and the next window starts these afresh.
    tokenizer: str = "apr-num99"


# Demonstrations leave out operations whose result is above the task's cap (`apr data traces
# --max-result`; one per task, both methods). Countdown-3: 100, the CPU line's recipe since
# session 9 (its models went under 2% of lines wrong with it). Countdown-4: 200, which cost
# the APR solver nothing on 300 shared validation problems and a third of its tokens, where
# 100 cost it 3 points (docs/gpu.md has the figures and the commands).
TASK_MAX_RESULT = {3: 100, 4: 200}

GPU_JOBS = [
    Job("cd4-apr", "apr", 4, "gpu-10m", 4096, 32, 1e-3, 20_000),
    Job("cd4-sos", "sos", 4, "gpu-10m", 4096, 32, 1e-3, 20_000),
    Job("cd3-apr", "apr", 3, "tiny", 1024, 64, 2e-3, 40_000),
    Job("cd3-sos", "sos", 3, "tiny", 1024, 64, 2e-3, 40_000),
]
# Untrained toy models write until the window is full: a short evaluation window keeps the
# dry run's evaluation to seconds.
TOY_JOBS = [dataclasses.replace(j, preset="cpu-mini", context=512, batch_size=4, problems=24, lr=3e-3, eval_context=160)
            for j in GPU_JOBS]


class Window:
    def __init__(self, args: argparse.Namespace):
        self.args, self.t0 = args, time.monotonic()
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.models = Path(args.models)
        self.jobs = TOY_JOBS if args.toy else GPU_JOBS
        self.results: dict[str, dict] = {j.name: {"job": dataclasses.asdict(j)} for j in self.jobs}
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)

    # ------------------------------------------------------------------ helpers

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.t0)

    def log(self, msg: str) -> None:
        line = f"[{datetime.now(timezone.utc):%H:%M:%S} +{time.monotonic() - self.t0:5.0f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def apr(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start `python -m apr ARGV` with its output in logs/NAME.log."""
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        log = open(self.work / "logs" / f"{name}.log", "w")
        return subprocess.Popen([sys.executable, "-m", "apr", *map(str, argv)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)

    def wait_all(self, procs: dict[str, subprocess.Popen], until: float) -> dict[str, int]:
        """Wait for the processes until `until` seconds are left; stop the rest (SIGTERM,
        then SIGKILL). Returns exit codes (negative when stopped)."""
        codes = {}
        for name, p in procs.items():
            try:
                codes[name] = p.wait(timeout=max(1.0, self.left() - until))
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    codes[name] = p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    codes[name] = p.wait()
                self.log(f"{name}: stopped at the deadline")
        return codes

    def init_of(self, job: Job) -> Path | None:
        """The model this job continues: `--models DIR/<job>` when it has this job's tokenizer."""
        from apr.tokenizer import build_tokenizer, tokenizer_fingerprint

        d = self.models / job.name
        if not (d / "config.json").is_file() or not (d / "apr.json").is_file():
            return None
        info = json.loads((d / "apr.json").read_text())
        return d if info.get("tokenizer") == tokenizer_fingerprint(build_tokenizer(job.tokenizer)) else None

    def history_of(self, job: Job) -> list[dict]:
        init = self.init_of(job)
        path = init / "training_history.json" if init else None
        return json.loads(path.read_text()) if path and path.is_file() else []

    # ------------------------------------------------------------------ phases

    def data(self) -> None:
        """Problems and demonstrations of both tasks, in parallel processes (cores, not GPU)."""
        from apr.countdown import TaskConfig, problem_keys
        from apr.datasets import packaged_validation_set, write_problems, write_traces
        from apr.search import AprConfig, SosConfig

        workers = max(1, (os.cpu_count() or 2) // 2)
        tasks = sorted({j.num_count for j in self.jobs})
        shared_val = packaged_validation_set()
        for n in tasks:
            d = self.work / f"cd{n}"
            d.mkdir(exist_ok=True)
            job = next(j for j in self.jobs if j.num_count == n)
            window = len(self.history_of(job))
            val = self.val_file(n)
            if n != 4 and not val.is_file():  # the packaged set is Countdown-4; others get their own
                write_problems([(val, 500)], 1, TaskConfig(num_count=n), problem_keys([shared_val]), workers)
            if not (d / "train.jsonl").is_file():
                write_problems([(d / "train.jsonl", job.problems)], 1000 + window, TaskConfig(num_count=n),
                               problem_keys([shared_val, val]), workers)
            # The CPU line's demonstrations (scripts/cpu_session.py `Recipe`): SoS+ prints kept
            # nodes best first, which its models learned 8 points better from; APR ranks generated
            # nodes and shuffles a node's last operations (`hybrid`); no result above the task's cap.
            cap = TASK_MAX_RESULT.get(n)
            for method, cfg in (("apr", AprConfig(budget_prefix=True, order="hybrid", max_result=cap)),
                                ("sos", SosConfig(order="ranked", max_result=cap))):
                if not (d / f"{method}.jsonl").is_file():
                    tmp = d / f"{method}.raw.jsonl"
                    write_traces(d / "train.jsonl", tmp, cfg, seed=window, workers=workers)
                    task = TaskConfig(num_count=n).as_dict()
                    with open(tmp) as src, open(d / f"{method}.jsonl", "w") as dst:
                        for line in src:  # tag the task, so the model's apr.json records it
                            dst.write(json.dumps({**json.loads(line), "task": task}) + "\n")
                    tmp.unlink()
            self.log(f"data cd{n}: window {window}, {job.problems} problems (seed {1000 + window})")

    def val_file(self, num_count: int) -> Path:
        from apr.datasets import packaged_validation_set

        if num_count == 4:
            return packaged_validation_set()
        init = next((self.init_of(j) for j in self.jobs if j.num_count == num_count and self.init_of(j)), None)
        if init is not None and (init / "val_problems.jsonl").is_file():
            return init / "val_problems.jsonl"  # the previous window's validation set
        committed = ROOT / "models" / "default" / "val_problems.jsonl"  # the Countdown-3 defaults' set
        if num_count == 3 and committed.is_file():
            return committed
        return self.work / f"cd{num_count}" / "val.jsonl"

    def train(self) -> None:
        budget = self.left() - self.args.eval_seconds - self.args.pack_seconds - self.args.startup_seconds
        budget = max(5.0, budget)
        procs = {}
        for j in self.jobs:
            run = self.work / "train" / j.name
            sets = [f"data={self.work / f'cd{j.num_count}' / f'{j.method}.jsonl'}", f"model={j.preset}",
                    f"tokenizer={j.tokenizer}", f"out_dir={run}", f"max_steps={self.args.max_steps}", f"time_budget_s={budget:.0f}", f"batch_size={j.batch_size}",
                    f"context={j.context}", f"device={self.args.device}", f"optim.lr={j.lr}", f"optim.min_lr={j.lr / 10}",
                    "optim.warmup_steps=30" if self.init_of(j) is None else "optim.warmup_steps=10",
                    f"eval_problems={self.val_file(j.num_count)}", "eval_every=0", "save_every=0", f"log_every={1 if self.args.toy else 20}",
                    # the CPU line's recipe (scripts/cpu_session.py `Recipe`: sos_budget_prefix, goal_drills
                    # for APR): both with budget prefixes, APR with goal drills
                    "val_fraction=0.01", "budget_prefix=true", f"goal_drills={1.5 if j.method == 'apr' else 0}",
                    f"attn_implementation={self.args.attn}"]
            if self.init_of(j) is not None:
                sets.append(f"init={self.init_of(j)}")
            shutil.rmtree(run, ignore_errors=True)
            procs[j.name] = self.apr(f"train_{j.name}", ["train", "sft", "--config", ROOT / "configs" / "sft_apr_tiny.yaml",
                                                         *[a for s in sets for a in ("--set", s)]])
            self.results[j.name]["init"] = str(self.init_of(j)) if self.init_of(j) else None
        self.log(f"train: {len(procs)} jobs, {budget:.0f} s of training each")
        codes = self.wait_all(procs, until=self.args.eval_seconds + self.args.pack_seconds)
        for j in self.jobs:
            self.results[j.name].update(self.train_result(j, codes[j.name]))
            self.log(f"train {j.name}: exit {codes[j.name]}, {self.results[j.name].get('steps')} steps, "
                     f"{self.results[j.name].get('tokens', 0) / 1e6:.1f}M tokens, "
                     f"val loss {self.results[j.name].get('val_loss')}")

    def train_result(self, job: Job, code: int) -> dict:
        run = self.work / "train" / job.name
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
        steps = max((r.get("step", 0) for r in rows), default=0)
        val = [r["val_loss"] for r in rows if "val_loss" in r]
        return {"train_exit": code, "steps": steps, "tokens": steps * job.batch_size * job.context,
                "loss": rows[-1].get("loss") if rows else None, "val_loss": val[-1] if val else None,
                "trained": (run / "final" / "config.json").is_file()}

    def export(self) -> None:
        """bf16, sharded below 15 MB, with validation problems, history and a model card."""
        import torch

        from apr.model_folder import load_model, save_model

        for j in self.jobs:
            final = self.work / "train" / j.name / "final"
            if not self.results[j.name].get("trained"):
                continue
            dest = self.work / "models" / j.name
            model, tok, info = load_model(final)
            shutil.rmtree(dest, ignore_errors=True)
            save_model(model.to(torch.bfloat16), tok, info, dest, max_shard_size="14MB")
            shutil.copyfile(self.val_file(j.num_count), dest / "val_problems.jsonl")
            r = self.results[j.name]
            before = self.history_of(j)
            row = {"window": len(before), "date": datetime.now(timezone.utc).date().isoformat(), "card": self.card(),
                   "steps": r["steps"], "tokens": r["tokens"], "val_loss": r["val_loss"],
                   "tokens_cumulative": r["tokens"] + (before[-1]["tokens_cumulative"] if before else 0)}
            (dest / "training_history.json").write_text(json.dumps(before + [row], indent=1))
            (dest / "README.md").write_text(model_card(j, before + [row]))
            r["tokens_cumulative"] = row["tokens_cumulative"]
        self.log("export: " + ", ".join(j.name for j in self.jobs if (self.work / "models" / j.name).is_dir()))

    def evaluate(self) -> None:
        procs = {}
        for j in self.jobs:
            model = self.work / "models" / j.name
            if not (model / "config.json").is_file():
                continue
            argv = ["eval", "--model", model, "--method", j.method, "--out", self.work / "eval" / j.name,
                    "--problems", model / "val_problems.jsonl", "--limit", self.args.eval_limit,
                    "--context", j.eval_context or j.context, "--device", self.args.device, "--quiet",
                    "--max-slots", self.args.eval_slots, "--max-in-flight", self.args.eval_slots // 2]
            if j.method == "apr":  # APR settings (an SoS+ run refuses them)
                argv += ["--child-budget", self.args.child_budget, "--max-children", 4 if self.args.toy else 16]
            procs[j.name] = self.apr(f"eval_{j.name}", argv)
        self.log(f"eval: {len(procs)} models, {self.left() - self.args.pack_seconds:.0f} s")
        self.wait_all(procs, until=self.args.pack_seconds)
        for j in self.jobs:
            self.results[j.name]["eval"] = eval_result(self.work / "eval" / j.name)

    def pack(self) -> None:
        """results.json, log.txt and results.tgz.part-* under --out: at most 8 files."""
        (self.out / "results.json").write_text(json.dumps({"card": self.card(), "jobs": self.results}, indent=1))
        for records in (True, False):  # drop per-problem records only if the rest would not fit
            data = self._tar(records)
            parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)]
            if len(parts) <= MAX_FILES - 2:
                break
            self.log(f"pack: {len(parts)} parts are too many; leaving out the evaluation records")
        for k, part in enumerate(parts[: MAX_FILES - 2]):
            (self.out / f"results.tgz.part-{k:02d}").write_bytes(part)
        self.log(f"pack: {len(parts)} part(s), {len(data) / 1e6:.1f} MB; unpack with "
                 "`cat results.tgz.part-* | tar xzf -`")

    def _tar(self, records: bool) -> bytes:
        tgz = self.work / "results.tgz"
        skip = (lambda info: None if info.name.endswith("records.jsonl") else info) if not records else None
        with tarfile.open(tgz, "w:gz") as tar:
            for sub in ("models", "eval", "logs"):
                if (self.work / sub).exists():
                    tar.add(self.work / sub, arcname=sub, filter=skip)
            for j in self.jobs:
                m = self.work / "train" / j.name / "metrics.jsonl"
                if m.is_file():
                    tar.add(m, arcname=f"train/{j.name}/metrics.jsonl")
        return tgz.read_bytes()

    def card(self) -> str:
        try:
            import torch

            return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001 - a description only
            return "unknown"

    def plan(self) -> dict:
        """What each job would start from: the previous weights, the window number, the seed
        of its new training problems."""
        return {j.name: {"init": str(self.init_of(j)) if self.init_of(j) else None,
                         "window": len(self.history_of(j)), "problem_seed": 1000 + len(self.history_of(j))}
                for j in self.jobs}

    def run(self) -> int:
        self.log(f"window: {len(self.jobs)} jobs, deadline {self.args.deadline} s, device {self.args.device}")
        ok = True
        try:
            for phase in (self.data, self.train, self.export, self.evaluate):
                if self.left() < self.args.pack_seconds:
                    self.log(f"skipping {phase.__name__}: deadline")
                    continue
                phase()
        except Exception as e:  # noqa: BLE001 - whatever failed, pack what there is
            ok = False
            self.log(f"failed: {type(e).__name__}: {e}")
        finally:
            self.pack()
        return 0 if ok else 1


def apply_results(results_dir: Path, models: Path, ledger: Path) -> list[str]:
    """After a window: put its models in place of the previous ones (each swapped in whole,
    so a failure leaves the old folder) and append its rows to the ledger."""
    import io

    data = b"".join(p.read_bytes() for p in sorted(results_dir.glob("results.tgz.part-*")))
    if not data:
        raise SystemExit(f"{results_dir}: no results.tgz.part-* files")
    results = json.loads((results_dir / "results.json").read_text())
    staging = models / ".incoming"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(staging, filter="data")
    replaced = []
    for model in sorted((staging / "models").iterdir()) if (staging / "models").is_dir() else []:
        dest, old = models / model.name, models / f".{model.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        model.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        replaced.append(model.name)
    rows = []
    for name, r in results["jobs"].items():
        e, job = r.get("eval", {}), r["job"]
        acc = f"{100 * e['accuracy']:.1f} [{100 * e['ci95'][0]:.1f}, {100 * e['ci95'][1]:.1f}]" if "accuracy" in e else "–"
        comp = e.get("competence") or {}
        err = f"{100 * comp['arithmetic_error_rate']:.1f}%" if comp.get("arithmetic_error_rate") is not None else "–"
        num = lambda v, f: f.format(v) if v is not None else "–"
        rows.append(f"| {datetime.now(timezone.utc).date()} | {results['card']} | Countdown-{job['num_count']} "
                    f"{'APR' if job['method'] == 'apr' else 'SoS+'}, {job['preset']} (`models/{name}`) | "
                    f"{r.get('tokens', 0) / 1e6:.0f}M | {r.get('tokens_cumulative', 0) / 1e6:.0f}M | "
                    f"{num(r.get('val_loss'), '{:.3f}')} | {acc} | {e.get('problems', '–')} | {err} | "
                    f"{num(e.get('children'), '{:.1f}')} | {num(e.get('total_tokens'), '{:,.0f}')} |")
    with open(ledger, "a") as f:
        f.write("\n".join(rows) + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    return replaced


def eval_result(d: Path) -> dict:
    """Accuracy and competence of an evaluation folder (complete or cut by the deadline)."""
    from apr.report import load_runs

    if not (d / "run.json").is_file():
        return {"done": False}
    try:
        s = load_runs([str(d)])[0]
    except Exception as e:  # noqa: BLE001 - an unfinished run may have nothing to summarize
        return {"done": False, "error": str(e)}
    m = s.get("metrics", {})
    return {"done": (d / "summary.json").is_file(), "accuracy": s["accuracy"], "ci95": s["ci95"],
            "problems": s["problems"], "children": m.get("children", {}).get("mean"),
            "total_tokens": m.get("total_tokens", {}).get("mean"), "competence": s.get("competence")}


def model_card(job: Job, history: list[dict]) -> str:
    rows = "\n".join(f"| {h['window']} | {h['date']} | {h['card']} | {h['steps']} | {h['tokens'] / 1e6:.0f}M | "
                     f"{h['tokens_cumulative'] / 1e6:.0f}M | {h['val_loss']} |" for h in history)
    return (f"# {job.name}\n\n{'APR (spawn/join)' if job.method == 'apr' else 'SoS+ (serial)'} model for Countdown-"
            f"{job.num_count}, preset `{job.preset}`, trained on solver demonstrations by `scripts/gpu_window.py`, "
            f"one GPU window at a time, each window starting from the previous one's weights. Evaluate with "
            f"`apr eval --model models/{job.name} --method {job.method} --out DIR` (validation problems: "
            f"`val_problems.jsonl`).\n\n| window | date | card | steps | tokens | cumulative | held-out loss |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="where the (at most 8) result files go ($OUT on the GPU machine)")
    p.add_argument("--work", default=None, help="working folder (default: OUT/../window_work)")
    p.add_argument("--models", default=str(ROOT / "models"), help="folder of the previous window's models (default: models/)")
    p.add_argument("--deadline", type=float, default=530, help="seconds from start by which results are packed")
    p.add_argument("--eval-seconds", type=float, default=150, help="share of the window for evaluation")
    p.add_argument("--pack-seconds", type=float, default=25, help="share of the window for packing")
    p.add_argument("--startup-seconds", type=float, default=60, help="process start and tokenization before training")
    p.add_argument("--eval-limit", type=int, default=400, help="validation problems per model")
    p.add_argument("--eval-slots", type=int, default=512, help="sequences each evaluation decodes together")
    p.add_argument("--child-budget", "--sub-call-budget", type=int, default=4, help="children asked of the APR models")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    p.add_argument("--attn", default="sdpa", help="training attention (sdpa needs no compile)")
    p.add_argument("--max-steps", type=int, default=100_000, help="cap on optimizer steps (the time budget ends training first)")
    p.add_argument("--toy", action="store_true", help="CPU dry run: tiny models, a few problems, seconds of training")
    p.add_argument("--plan", action="store_true", help="print what each job would start from, and stop")
    p.add_argument("--apply", metavar="RESULTS_DIR",
                   help="after a window: replace the models under --models with its models, add its ledger rows")
    p.add_argument("--ledger", default=str(ROOT / "docs" / "reports" / "gpu_runs.md"), help="the ledger --apply appends to")
    args = p.parse_args(argv)
    if args.apply:
        replaced = apply_results(Path(args.apply), Path(args.models), Path(args.ledger))
        print(f"replaced {', '.join(replaced) or 'no models'}; ledger rows added to {args.ledger}")
        return 0
    if not args.out:
        p.error("--out is required")
    if args.toy:
        args.device, args.eval_limit, args.eval_slots, args.max_steps = "cpu", 2, 16, 2
    args.work = args.work or str(Path(args.out).resolve().parent / "window_work")
    if args.plan:
        print(json.dumps(Window(args).plan(), indent=1))
        return 0
    return Window(args).run()


if __name__ == "__main__":
    sys.exit(main())
