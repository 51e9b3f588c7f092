"""Outputs of the commands against a committed reference, so a restructuring that changes
behaviour fails here.

The reference (`tests/golden/outputs.json`) was produced by the code before the library /
commands split. It holds, for a fixed problem set and seed: the files `apr data problems`
and `apr data traces` write; the records of `apr run` and `apr eval` (greedy APR and SoS+,
cons@2 sampling, a solver row) and their summaries; the metrics of a short SFT run and of a
short GRPO run. Wall-clock fields (latency, tokens/s, dates, the machine) are dropped, and
floats are compared at 6 significant digits (CPU kernels may round the last bits
differently on another processor); everything else must be equal.

Regenerate only for an intended change of behaviour: APR_REGEN_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apr.commands import main

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
WALL_CLOCK = {"latency_s", "date", "machine", "tokens_per_s", "rollout_s", "learn_s", "rollout_tok_s", "train_tok_s"}


def normalize(x):
    """The comparable part of an output: wall-clock keys dropped, floats at 6 digits."""
    if isinstance(x, dict):
        return {k: normalize(v) for k, v in x.items() if k not in WALL_CLOCK}
    if isinstance(x, list):
        return [normalize(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}")
    return x


def jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cli(*argv: str) -> None:
    rc = main([str(a) for a in argv])
    assert rc == 0, argv


def produce(tmp: Path) -> dict:
    out: dict = {}
    # apr data: problems (Countdown-3, the default models' task) and both solvers' traces.
    probs = tmp / "problems.jsonl"
    cli("data", "problems", "--n", 6, "--seed", 7, "--num-count", 3, "--num-max", 50, "--target-min", 10,
        "--target-max", 100, "--out", probs)
    out["data_problems"] = probs.read_text()
    for solver in ("apr", "sos"):
        traces = tmp / f"traces_{solver}.jsonl"
        cli("data", "traces", "--solver", solver, "--problems", probs, "--out", traces, "--seed", 1)
        out[f"data_traces_{solver}"] = traces.read_text()

    # apr run with the committed APR model (greedy, child budget 4).
    run = tmp / "run.jsonl"
    cli("run", "--model", ROOT / "models/default", "--problems", probs, "--out", run, "--limit", 4,
        "--child-budget", 4, "--context", 768, "--quiet")
    out["run_records"] = [{**r, "model": "models/default"} for r in jsonl(run)]

    # apr eval: greedy SoS+, APR cons@2 (sampled), and the solver row.
    evals = [("sos", ROOT / "models/default-sos", ["--limit", 4]),
             ("cons@2", ROOT / "models/default", ["--limit", 3, "--child-budget", 3, "--seed", 5]),
             ("solver-apr", None, ["--limit", 6])]
    for method, model, extra in evals:
        d = tmp / f"eval_{method}"
        model_opts = ["--model", model, "--context", 768] if model else []  # a solver row takes no window
        cli("eval", "--method", method, *model_opts, "--problems", probs, "--out", d, "--quiet", *extra)
        recs = sorted(jsonl(d / "records.jsonl"), key=lambda r: (r["index"], r.get("sample", 0)))
        summary = json.loads((d / "summary.json").read_text())
        for key in ("model", "problems_file"):
            summary.pop(key, None)
        for r in recs:
            r.pop("model", None)
        out[f"eval_{method}"] = {"records": recs, "summary": summary}

    # A short SFT run on the APR traces above.
    val = tmp / "val.jsonl"
    val.write_text(json.dumps({"nums": [3, 5, 7], "target": 22}) + "\n")
    sft = tmp / "sft"
    cli("train", "sft", "--config", ROOT / "configs/sft_apr_tiny.yaml", "--set", f"data={tmp / 'traces_apr.jsonl'}",
        "--set", f"eval_problems={val}", "--set", f"out_dir={sft}", "--set", "max_steps=4", "--set", "batch_size=4",
        "--set", "context=512", "--set", "log_every=1", "--set", "eval_every=2", "--set", "val_fraction=0.2",
        "--set", "eval_batches=1", "--set", "device=cpu", "--set", "optim.warmup_steps=2")
    out["sft_metrics"] = jsonl(sft / "metrics.jsonl")

    # A short GRPO run from the committed supervised APR model.
    rl = tmp / "rl"
    cli("train", "rl", "--config", ROOT / "configs/rl_apr_cpu.yaml", "--set", f"init={ROOT / 'models/sft/default'}",
        "--set", f"problems={probs}", "--set", f"val_problems={val}", "--set", f"out_dir={rl}",
        "--set", "max_steps=2", "--set", "batch_size=2", "--set", "group_size=3", "--set", "rollout.context=512", "--set", "reward=partial",
        "--set", "rollout.child_budget=3", "--set", "eval_every=1", "--set", "val_limit=1", "--set", "save_every=0",
        "--set", "micro_tokens=2048", "--set", "skip_zero_advantage=false")
    out["rl_metrics"] = jsonl(rl / "metrics.jsonl")
    return normalize(out)


def test_command_outputs_equal_the_reference(tmp_path):
    got = produce(tmp_path)
    if os.environ.get("APR_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("reference regenerated")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], f"{key} differs from the reference"
