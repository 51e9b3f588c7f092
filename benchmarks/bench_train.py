"""Training throughput: the SFT trainer against a plain hand-written loop, and GPU MFU.

    .venv/bin/python benchmarks/bench_train.py            # CPU: tiny and small presets
    .venv/bin/python benchmarks/bench_train.py --gpu      # also the paper preset on one GPU

CPU: tokens/s of `SFTTrainer.train_step` next to a plain loop (forward, mean cross-entropy,
backward, clip, AdamW step) over a copy of the same LlamaForCausalLM on the same packed
batches, timed in interleaved repeats; reported as the median ratio (target >= 0.95). It
also times the plain loop without per-document position_ids (plain concatenation, which
lets attention leak across documents) to show what leak-free packing costs.

GPU: the paper preset (228M non-embedding params) in bf16 autocast, context 4096.
MFU = achieved FLOP/s / peak bf16 dense FLOP/s (H100/H200 SXM: 989e12), where FLOPs per
token = 6 * N + 12 * L * d * S (N: parameters in matmuls, i.e. all but the input
embedding; L layers, d hidden, S context: the nanoGPT/PaLM attention term, counting the
full S x S score matrix). The 6N-only figure is printed too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.search import AprConfig
from apr.train.config import load_config
from apr.train.sft import SFTTrainer

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def write_demos(d: Path, n: int, task: TaskConfig) -> Path:
    path = d / "demos.jsonl"
    with open(path, "w") as f:
        for i, p in enumerate(generate(n, seed=11, task=task)):
            f.write(json.dumps(demonstration(p, i, 0, AprConfig())) + "\n")
    (d / "val.jsonl").write_text(json.dumps({"nums": [1, 1, 1, 1, 1, 1], "target": 1}) + "\n")
    return path


def trainer_for(data: Path, out: Path, preset: str, context: int, batch: int, *extra: str) -> SFTTrainer:
    cfg = load_config(
        None,
        [f"data={data}", f"eval_problems={data.parent / 'val.jsonl'}", f"out_dir={out}", f"model={preset}",
         f"context={context}", f"batch_size={batch}", "max_steps=100000", "val_fraction=0", *extra],
    )  # fmt: skip
    return SFTTrainer(cfg)


def plain_loop(model, batches, lr: float, steps: int) -> float:
    """The hand-written baseline; returns seconds for `steps` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=next(model.parameters()).is_cuda)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        x, y, pos = batches[i % len(batches)]
        logits = model(input_ids=x, position_ids=pos, use_cache=False).logits
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def trainer_steps(trainer: SFTTrainer, steps: int) -> float:
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    return time.perf_counter() - t


def bench_cpu(preset: str, context: int, batch: int, steps: int, repeats: int, data: Path, out: Path) -> dict:
    trainer = trainer_for(data, out, preset, context, batch, "device=cpu")
    model = copy.deepcopy(trainer.raw_model)
    batches = [trainer._batch(trainer.train_data, trainer.sampler.indices(i)) for i in range(steps)]
    unpacked = [(x, y, None) for x, y, _ in batches]
    trainer_steps(trainer, 1), plain_loop(model, batches, 1e-4, 1)  # warm up
    tokens = steps * batch * context
    ratios, t_rates, p_rates, leak = [], [], [], []
    for _ in range(repeats):
        tt = trainer_steps(trainer, steps)
        tp = plain_loop(model, batches, 1e-4, steps)
        tc = plain_loop(model, unpacked, 1e-4, steps)
        ratios.append(tp / tt)
        t_rates.append(tokens / tt)
        p_rates.append(tokens / tp)
        leak.append(tc / tp)
    return {
        "preset": preset,
        "context": context,
        "batch": batch,
        "trainer_tok_s": statistics.median(t_rates),
        "plain_tok_s": statistics.median(p_rates),
        "ratio_median": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "packed_mask_vs_concat_speed": statistics.median(leak),
    }


def bench_gpu(data: Path, out: Path, micro: int, steps: int, compile_: bool) -> dict:
    trainer = trainer_for(data, out, "paper", 4096, micro, "device=cuda", f"compile={str(compile_).lower()}")
    model = trainer.raw_model
    n_matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    c = model.config
    flops_tok = 6 * n_matmul + 12 * c.num_hidden_layers * c.hidden_size * 4096
    trainer_steps(trainer, 3)  # warm up (and compile)
    dt = trainer_steps(trainer, steps)
    tok_s = steps * micro * 4096 / dt
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    return {
        "preset": "paper",
        "compile": compile_,
        "micro_batch": micro,
        "tok_s": tok_s,
        "mfu": tok_s * flops_tok / peak,
        "mfu_6N_only": tok_s * 6 * n_matmul / peak,
        "peak_flops": peak,
        "max_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="store_true", help="also the paper preset on one GPU")
    ap.add_argument("--no-cpu", dest="cpu", action="store_false")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu-micro", type=int, default=8, help="rows of 4096 tokens per GPU step")
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="both")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.cpu:
            data = write_demos(tmp, 60, TaskConfig(num_count=3, num_max=20, target_min=10, target_max=30))
            for preset, context, batch, steps in (("tiny", 512, 8, 3), ("small", 512, 2, 2)):
                r = bench_cpu(preset, context, batch, steps, args.repeats, data, tmp / preset)
                print(json.dumps(r), flush=True)
        if args.gpu and torch.cuda.is_available():
            data = write_demos(tmp, 400, TaskConfig())
            for compile_ in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
                r = bench_gpu(data, tmp / f"paper{compile_}", args.gpu_micro, 10, compile_)
                print(json.dumps(r), flush=True)
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    sys.exit(main())
