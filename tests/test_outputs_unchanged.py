"""Outputs of the commands against a committed reference, so a restructuring that changes
behaviour fails here.

The reference (`tests/golden/outputs.json`) was produced by the code before the library /
commands split. It holds, for a fixed problem set and seed: the files `apr data problems`
and `apr data traces` write; the records of `apr run` and `apr eval` (greedy APR and SoS+,
cons@2 sampling, a solver row) and their summaries; the metrics of a short SFT run and of a
short GRPO run. Wall-clock fields (latency, tokens/s, dates, the machine) are dropped and
floats are kept at 6 significant digits. The floats that training kernels compute (losses,
KL, entropy: KERNEL_FLOATS) are compared with the kernel tolerance of tests/tolerance.py,
since their last bits depend on the processor's vector width and the thread count;
everything else (files, records, texts, token counts, rewards, accuracies, means of counts)
must be equal.

Discrete outputs from a model can in principle flip with those last bits too: a greedy or
Gumbel-max token whose two best scores tie within the rounding. Measured on these commands:
the closest decision over every decoded token (greedy, sampled, and after the RL updates)
is 3.7e-3 logits apart, while the logits differ by at most 1.6e-5 between kernel widths;
the closest PPO ratio to a clip edge is 0.09 away. So they stay exact.

Regenerate only for an intended change of behaviour: APR_REGEN_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apr.commands import main
from tolerance import kernel_close

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
# Training metrics that are float32 reductions over tokens (not counts or ratios of counts).
KERNEL_FLOATS = {"loss", "val_loss", "pg_loss", "kl", "entropy"}
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

    # apr run with the 2026-11-28 APR model after RL (greedy, child budget 4): models/rl/default,
    # which was models/default when the reference was made (the name in the records stays).
    run = tmp / "run.jsonl"
    cli("run", "--model", ROOT / "models/rl/default", "--problems", probs, "--out", run, "--limit", 4,
        "--child-budget", 4, "--context", 768, "--quiet")
    out["run_records"] = [{**r, "model": "models/default"} for r in jsonl(run)]

    # apr eval: greedy SoS+, APR cons@2 (sampled), and the solver row.
    evals = [("sos", ROOT / "models/rl/default-sos", ["--limit", 4]),
             ("cons@2", ROOT / "models/rl/default", ["--limit", 3, "--child-budget", 3, "--seed", 5]),
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
        diffs = differences(got[key], want[key], key)
        assert not diffs, f"{key} differs from the reference: " + "; ".join(diffs[:5])


def differences(got, want, where: str, kernel: bool = False) -> list[str]:
    """Where `got` differs from `want`: exactly, except floats under a KERNEL_FLOATS key."""
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(got) != sorted(want):
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want for d in differences(got[k], want[k], f"{where}.{k}", k in KERNEL_FLOATS)]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]", kernel)]
    if kernel and isinstance(want, float) and isinstance(got, float):
        return [] if kernel_close(got, want) else [f"{where}: {got!r} != {want!r} (kernel tolerance)"]
    return [] if got == want else [f"{where}: {str(got)[:80]!r} != {str(want)[:80]!r}"]


def test_the_comparison_is_exact_except_for_kernel_floats():
    want = {"rl_metrics": [{"kl": 2.58108e-05, "loss": -0.000128948, "reward": 0.583333, "total_tokens": 567.0}],
            "run_records": [{"text": "9+3=12", "tokens": 31}]}
    # what an AVX2 processor computed for the same run: kl and loss in their last digits
    avx2 = {"rl_metrics": [{"kl": 2.58133e-05, "loss": -0.000128947, "reward": 0.583333, "total_tokens": 567.0}],
            "run_records": [{"text": "9+3=12", "tokens": 31}]}
    assert differences(avx2, want, "") == []
    for path, value in ((("rl_metrics", 0, "kl"), 2.7e-05), (("rl_metrics", 0, "total_tokens"), 567.000001),
                        (("rl_metrics", 0, "reward"), 0.583334), (("run_records", 0, "tokens"), 32),
                        (("run_records", 0, "text"), "9+3=13")):
        got = json.loads(json.dumps(want))
        got[path[0]][path[1]][path[2]] = value
        assert len(differences(got, want, "")) == 1, path
