"""Generated tokens/s of the local engine vs Hugging Face `model.generate` (not a test).

Workload: `--prompts` Countdown-style prompts of varying length, `--new-tokens` greedy
tokens each (EOS ignored on both sides so every sequence runs the full length), all in one
batch (`--slots` >= `--prompts`). Engine and HF runs alternate (both see the same machine
load). Reports the median over `--repeats` runs, the machine,
and on CUDA the median decode-step time and a memory-bandwidth floor for it
(bytes of weights + KV read per step / bandwidth).

    .venv/bin/python benchmarks/bench_engine.py                      # random small Llama, CPU
    .venv/bin/python benchmarks/bench_engine.py --preset paper --device cuda --new-tokens 512
    .venv/bin/python benchmarks/bench_engine.py --model runs/sft/final
    .venv/bin/python benchmarks/bench_engine.py --fork 16 --new-tokens 128   # children sharing a parent's cache
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from apr.engine.base import Request  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.device import resolve_device  # noqa: E402
from apr.engine.model_runner import resolve_dtype  # noqa: E402

PRESETS = {  # random Llama shapes; "paper" is the published APR model (228M non-embedding)
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "paper": dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=16),
}
BANDWIDTH_GBS = {"H200": 4800, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "A100": 2000, "A6000": 768, "L40": 864}


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def random_model(preset: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                      pad_token_id=3, initializer_range=0.1, **PRESETS[preset])
    return LlamaForCausalLM(cfg).eval()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        nums = [rng.randint(1, 99) for _ in range(4)]
        p = f"Moving to Node #0\nCurrent State: {rng.randint(10, 100)}:{nums}, Operations: []"
        out.append(p + "\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]" * rng.randint(0, 3))
    return out


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_engine(eng: LocalEngine, ps: list[str], n: int) -> tuple[float, int, list[float]]:
    sync(eng.device)
    t0 = time.perf_counter()
    for i, p in enumerate(ps):
        eng.submit(Request(str(i), p, n, []))
    steps, total = [], 0
    while eng.pending():
        s = time.perf_counter()
        out = eng.poll()  # ends with a host sync (sampled tokens), so wall time is device time
        steps.append(time.perf_counter() - s)
        total += sum(c.n_tokens for c in out)
    return time.perf_counter() - t0, total, steps


def run_hf(model, tok, ps: list[str], n: int, device) -> tuple[float, int]:
    tok.padding_side = "left"
    enc = tok(ps, return_tensors="pt", padding=True).to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    sync(device)
    return time.perf_counter() - t0, (out.shape[1] - enc["input_ids"].shape[1]) * len(ps)


def run_fork(hf, tok, args, device, dtype) -> dict:
    """A parent of ~fork_prefix tokens (kept), then K children whose prompts extend its context:
    without prefix_key (prefilled), with it copied (share_prefix=False), with it shared."""
    parent = "".join(prompts(64, seed=1))[: args.fork_prefix - 1]
    out = {"machine": machine(device), "children": args.fork, "new_tokens": args.new_tokens}
    ref = None
    for mode in ("prefill", "copy", "share"):
        eng = LocalEngine(hf, tok, max_slots=args.fork + 1, max_len=args.fork_prefix + args.new_tokens + 64,
                          device=device, dtype=dtype, share_prefix=mode == "share")
        eng.eos_ids = set()
        a = eng.model.args
        cell = 2 * a.n_layers * a.n_kv_heads * a.head_dim * torch.finfo(dtype).bits // 8  # K and V, every layer
        (p,) = eng.run([Request("p", parent, 8, [], cache_key="p")])
        ctx = parent + p.text
        kids = [Request(f"c{i}", ctx + f"\nMoving to Node #0,{i}\n", args.new_tokens, [],
                        prefix_key=None if mode == "prefill" else "p") for i in range(args.fork)]
        before = dict(eng.stats)
        res = []
        for _ in range(args.repeats):
            res.append(_run_reqs(eng, kids))
        st = {k: (eng.stats[k] - before[k]) // args.repeats for k in eng.stats}
        outs = eng.run(kids)
        toks = [c.token_ids for c in outs]
        ref = ref or toks
        prompt = outs[0].prompt_tokens
        own = prompt - (st["prefix_shared"] // args.fork if mode == "share" else 0) + args.new_tokens
        out[mode] = {
            "prefill_tokens_per_child": st["prefill_tokens"] / args.fork,
            "prefix_tokens_shared_per_child": st["prefix_shared"] / args.fork,
            "prefix_tokens_copied_per_child": st["prefix_copied"] / args.fork,
            "kv_cells_per_child": own, "kv_MB_per_child": round(own * cell / 1e6, 3),
            "slot_MB_allocated_per_child": round((eng.max_len + 1) * cell / 1e6, 3),
            "children_tok_s": round(statistics.median(n / t for t, n, _ in res), 1),
            "decode_step_ms_median": round(statistics.median(x for _, _, st_ in res for x in st_[2:]) * 1e3, 3),
            "tokens_identical_to_prefill": toks == ref,
        }
        out["prompt_tokens_per_child"] = prompt
    return out


def _run_reqs(eng: LocalEngine, reqs: list) -> tuple[float, int, list[float]]:
    t0 = time.perf_counter()
    for r in reqs:
        eng.submit(r)
    steps, total = [], 0
    while eng.pending():
        s = time.perf_counter()
        total += sum(c.n_tokens for c in eng.poll())
        steps.append(time.perf_counter() - s)
    return time.perf_counter() - t0, total, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF Llama folder (default: a random model of --preset)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: small on CPU, paper on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="also compare greedy tokens with HF generate on N prompts")
    ap.add_argument("--bandwidth", type=float, default=0, help="GB/s for the floor estimate (default: by GPU name)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--fork", type=int, default=0, metavar="K",
                    help="instead: a parent of --fork-prefix tokens and K children forked from it (prefix_key), "
                         "children's prefix prefilled vs copied vs shared")
    ap.add_argument("--fork-prefix", type=int, default=1024)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    preset = args.preset or ("paper" if device.type == "cuda" else "small")

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        what = args.model
    else:
        tok = char_tokenizer()
        hf = random_model(preset, len(tok)).to(dtype)
        what = f"random Llama '{preset}' ({sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params)"
    ps = prompts(args.prompts)
    lens = [len(tok(p)["input_ids"]) for p in ps]
    max_len = max(lens) + args.new_tokens + 8
    eng = LocalEngine(hf, tok, max_slots=args.slots, max_len=max_len, device=device, dtype=dtype,
                      cuda_graphs=False if args.no_cuda_graphs else None)
    eos_ids, eng.eos_ids = eng.eos_ids, set()  # run every sequence to --new-tokens, like min_new_tokens on the HF side
    hf = hf.to(device)

    if args.fork:
        print(json.dumps(run_fork(hf, tok, args, device, dtype), indent=1))
        return 0
    run_engine(eng, ps[: min(4, len(ps))], 8)  # warm-up
    res_e, res_h = [], []
    if not args.skip_hf:
        run_hf(hf, tok, ps[:4], 4, device)  # warm-up
    for _ in range(args.repeats):  # engine and HF alternate: both see the same machine load
        res_e.append(run_engine(eng, ps, args.new_tokens))
        if not args.skip_hf:
            res_h.append(run_hf(hf, tok, ps, args.new_tokens, device))
    tps_e = statistics.median(t / s for s, t, _ in res_e)
    result = {
        "date": datetime.date.today().isoformat(), "machine": machine(device), "model": what,
        "dtype": str(dtype).removeprefix("torch."), "prompts": len(ps), "prompt_tokens_mean": statistics.mean(lens),
        "new_tokens": args.new_tokens, "slots": args.slots, "engine_tok_s": round(tps_e, 1),
        "engine_runs_s": [round(s, 3) for s, _, _ in res_e],
    }
    steps = sorted(x for _, _, st in res_e for x in st[2:])  # skip the prefill steps
    step = statistics.median(steps)
    result["engine_step_ms_median"] = round(step * 1e3, 3)
    if device.type == "cuda":
        a = eng.model.args
        kv_per_tok = a.n_layers * 2 * a.n_kv_heads * a.head_dim * torch.finfo(dtype).bits // 8
        avg_len = statistics.mean(lens) + args.new_tokens / 2
        step_bytes = eng.model.weight_bytes() + min(args.slots, len(ps)) * avg_len * kv_per_tok
        name = torch.cuda.get_device_name()
        bw = args.bandwidth or next((v for k, v in BANDWIDTH_GBS.items() if k in name), 0)
        result["bytes_per_step_MB"] = round(step_bytes / 1e6, 1)
        if bw:
            result["bandwidth_GBs"] = bw
            result["floor_step_ms"] = round(step_bytes / (bw * 1e9) * 1e3, 3)
        result["peak_mem_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if args.check:
        # Same prompts through both, one HF call per prompt (no padding), both stopping at EOS:
        # identical sequences, and the mean length of the common prefix (bf16 kernels may
        # break near-ties differently).
        k = min(args.check, len(ps))
        eng.eos_ids = eos_ids
        outs = eng.run([Request(f"c{i}", p, args.new_tokens, []) for i, p in enumerate(ps[:k])])
        eng.eos_ids = set()
        same, prefix = 0, []
        for p, c in zip(ps[:k], outs):
            ids = tok(p, return_tensors="pt")["input_ids"].to(device)
            with torch.inference_mode():
                ref = hf.generate(ids, max_new_tokens=args.new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
            same += ref == c.token_ids
            prefix.append(next((j for j, (a, b) in enumerate(zip(ref, c.token_ids)) if a != b),
                               min(len(ref), len(c.token_ids))))
        result["check_identical"] = f"{same}/{k}"
        result["check_common_prefix_mean"] = round(statistics.mean(prefix), 1)
        result["check_len_mean"] = round(statistics.mean(len(c.token_ids) for c in outs), 1)
    if not args.skip_hf:
        tps_h = statistics.median(t / s for s, t in res_h)
        result["hf_generate_tok_s"] = round(tps_h, 1)
        result["hf_runs_s"] = [round(s, 3) for s, _ in res_h]
        result["speedup"] = round(tps_e / tps_h, 2)
        result["speedup_per_repeat"] = [round(h / e, 2) for (e, _, _), (h, _) in zip(res_e, res_h)]
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
