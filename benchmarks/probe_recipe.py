"""Which recipe learns Countdown-3 arithmetic fastest per CPU-second (issue 17): train arms
for the same CPU time on the same SoS+ demonstrations, then measure each.

    .venv/bin/python benchmarks/probe_recipe.py --out runs/probe --minutes 20 --parallel 2
    .venv/bin/python benchmarks/probe_recipe.py --out runs/probe --table   # the table so far

Arms (`ARMS`) change one thing from `digits` (cpu-mini, a token per digit, from scratch):
the number tokenizer (`num99`, `num999`), arithmetic-fact documents mixed in (`facts`), a
deeper model (`deep`), and starting from the committed supervised SoS+ weights (`init`).
Each arm trains in its own process with one torch thread, for `--minutes` of that process's
CPU time (`time_budget_clock: cpu`, so arms sharing the machine get the same compute), then:
- held-out traces (problems never trained on), teacher forced: loss per character and the
  share of operation results wrong, by result length and first-time vs copied
  (`apr.train.teacher_forced`);
- fresh problems, free running (`apr eval`, greedy, SoS+, 1,024-token window): accuracy with
  a Wilson interval and the arithmetic error rate of every operation line it wrote.
An arm with a result.json is done and skipped: the probe resumes.

Seeds: training problems 17001, held-out 17002, fresh 17003 (used for nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = dict(num_count=3, num_min=1, num_max=99, target_min=10, target_max=100)
SEEDS = {"train": 17001, "heldout": 17002, "fresh": 17003}
COMMON = dict(model="cpu-mini", tokenizer="apr", context=1024, batch_size=8, max_steps=1_000_000, val_fraction=0,
              eval_every=0, save_every=0, log_every=50, **{"optim.lr": 2e-3, "optim.min_lr": 2e-4,
                                                          "optim.warmup_steps": 30})
ARMS = {
    "digits": {},
    "num99": {"tokenizer": "apr-num99"},
    "facts": {"arithmetic_facts": 0.25},
    "num999": {"tokenizer": "apr-num999"},
    "deep": {"model": "cpu-deep"},
    # The committed supervised SoS+ model (97M tokens on an H200), continued at a lower rate.
    "init": {"init": str(ROOT / "models/sft/default-sos"), "optim.lr": 5e-4, "optim.min_lr": 5e-5},
}


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores"


def make_data(out: Path, n_train: int, n_heldout: int, n_fresh: int) -> None:
    from apr.countdown import TaskConfig, problem_keys
    from apr.datasets import write_problems, write_traces
    from apr.io import atomic_write
    from apr.search import SosConfig

    d = out / "data"
    if (d / "done.json").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    task = TaskConfig(**TASK)
    write_problems([(d / "fresh.jsonl", n_fresh)], SEEDS["fresh"], task, set(), 2)
    write_problems([(d / "heldout.jsonl", n_heldout)], SEEDS["heldout"], task, problem_keys([d / "fresh.jsonl"]), 2)
    write_problems([(d / "train_problems.jsonl", n_train)], SEEDS["train"], task,
                   problem_keys([d / "fresh.jsonl", d / "heldout.jsonl"]), 2)
    for name in ("train", "heldout"):
        src = d / ("train_problems.jsonl" if name == "train" else "heldout.jsonl")
        raw = d / f"{name}.raw.jsonl"
        write_traces(src, raw, SosConfig(), 0, 2)
        with atomic_write(d / f"{name}_sos.jsonl") as f, open(raw) as lines:
            for line in lines:
                f.write(json.dumps({**json.loads(line), "task": task.as_dict()}) + "\n")
        raw.unlink()
    (d / "done.json").write_text(json.dumps({"task": TASK, "seeds": SEEDS, "n": [n_train, n_heldout, n_fresh]}))


def run_arm(out: Path, name: str, minutes: float, n_fresh: int) -> None:
    """Train, then measure, one arm (in this process)."""
    import torch

    from apr.model_folder import load_model
    from apr.train.config import load_config
    from apr.train.sft import SFTTrainer
    from apr.train.teacher_forced import measure

    torch.set_num_threads(1)
    d, arm = out / "data", out / "arms" / name
    sets = {**COMMON, **ARMS[name], "data": d / "train_sos.jsonl", "out_dir": arm / "train",
            "eval_problems": d / "fresh.jsonl", "time_budget_s": minutes * 60, "time_budget_clock": "cpu"}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    trainer = SFTTrainer(cfg, resume=(arm / "train" / "checkpoints").exists(), progress=False)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    final = trainer.train()
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    trained = int(trainer.row_tokens.sum()) * trainer.step * cfg.batch_size / max(1, len(trainer.train_data))
    real = trainer.stats.tokens * trainer.step * cfg.batch_size / max(1, trainer.stats.rows)

    model, tok, _ = load_model(final)
    heldout = [json.loads(line)["search_path"] for line in open(d / "heldout_sos.jsonl")]
    tf = measure(model, tok, heldout)

    ev = arm / "eval"
    subprocess.run([sys.executable, "-m", "apr", "eval", "--model", str(final), "--method", "sos", "--problems",
                    str(d / "fresh.jsonl"), "--limit", str(n_fresh), "--context", "1024", "--out", str(ev), "--quiet"],
                   check=True)
    summary = json.loads((ev / "summary.json").read_text())
    result = {
        "arm": name, "settings": {k: str(v) for k, v in ARMS[name].items()}, "steps": trainer.step,
        "cpu_s": cpu_s, "wall_s": wall_s, "tokens": real, "tokens_per_cpu_s": real / cpu_s,
        "trained_tokens": trained, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
        "teacher_forced": tf, "fresh": summary, "machine": machine(),
    }
    (arm / "result.json").write_text(json.dumps(result, indent=1))


def pct(x) -> str:
    return f"{100 * x:.1f}"


def table(out: Path) -> str:
    rows = ["| arm | change | steps | tokens | tokens/CPU-s | held-out loss/char | results wrong (TF) | 1 | 2 | 3 | "
            "4+ | first-time | copied | fresh accuracy % [95% CI] | arithmetic errors (free) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ARMS:
        f = out / "arms" / name / "result.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        tf, res = r["teacher_forced"], r["teacher_forced"]["results"]
        get = lambda k: pct(res[k]["error"]) if k in res else "–"  # noqa: E731
        fr = r["fresh"]
        acc = fr.get("accuracy", 0)
        ci = fr.get("ci95") or ["?", "?"]
        comp = fr.get("competence", {})
        change = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "baseline"
        rows.append(f"| {name} | {change} | {r['steps']} | {r['tokens'] / 1e6:.1f}M | {r['tokens_per_cpu_s']:.0f} | "
                    f"{tf['loss_per_char']:.4f} | {get('all')} | {get('digits:1')} | {get('digits:2')} | "
                    f"{get('digits:3')} | {get('digits:4+')} | {get('first')} | {get('copied')} | "
                    f"{fmt_acc(acc, ci)} ({fr.get('problems', '?')}) | "
                    f"{pct(comp.get('arithmetic_error_rate', float('nan')))} |")
    return "\n".join(rows)


def fmt_acc(acc, ci) -> str:
    try:
        return f"{100 * acc:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    except (TypeError, IndexError):
        return f"{100 * acc:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    ap.add_argument("--minutes", type=float, default=20.0, help="CPU minutes of training per arm")
    ap.add_argument("--parallel", type=int, default=2, help="arms trained at once (one core each)")
    ap.add_argument("--train-problems", type=int, default=60000)
    ap.add_argument("--heldout", type=int, default=200, help="held-out traces (teacher forced)")
    ap.add_argument("--fresh", type=int, default=200, help="fresh problems (free running)")
    ap.add_argument("--table", action="store_true", help="print the table of finished arms and stop")
    ap.add_argument("--run-arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return 0
    if args.run_arm:
        run_arm(args.out, args.run_arm, args.minutes, args.fresh)
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"probe_recipe: unknown arm(s) {', '.join(unknown)} (known: {', '.join(ARMS)})", file=sys.stderr)
        return 2
    print(f"machine: {machine()}; {args.minutes:g} CPU-minutes per arm, {args.parallel} at once", flush=True)
    make_data(args.out, args.train_problems, args.heldout, args.fresh)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo = [a for a in arms if not (args.out / "arms" / a / "result.json").exists()]
    running: list[tuple[str, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < args.parallel:
            name = todo.pop(0)
            (args.out / "arms" / name).mkdir(parents=True, exist_ok=True)
            log = open(args.out / "arms" / name / "log.txt", "a")
            cmd = [sys.executable, __file__, "--out", str(args.out), "--run-arm", name, "--minutes", str(args.minutes),
                   "--fresh", str(args.fresh)]
            running.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
            print(f"{time.strftime('%H:%M:%S')} started {name}", flush=True)
        time.sleep(5)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                print(f"{time.strftime('%H:%M:%S')} {name} exited {proc.returncode}; load {os.getloadavg()[0]:.1f}",
                      flush=True)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
