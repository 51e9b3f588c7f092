"""The model on its device: loading, the slotted KV cache, prefill and decode forwards.

Prefill runs the admitted sequences in padded groups: at most `prefill_budget` tokens per
forward, prompts longer than `prefill_chunk` in several chunks. Decode is one batched
forward for every sequence past prefill. Both return logits; sampling is the caller's.

Attention reads each layer's cache only up to the batch's longest live length (see
llama.py): no padded full-capacity masks. Decode rows are slots `0..hi` as a *view* of the
cache when most of those slots are live (the scheduler gives new requests the lowest free
slot, so live slots stay packed), else the live slots are gathered. On CUDA, decode steps
replay CUDA graphs bucketed by row count (powers of two) and attended length (multiples of
256): a step of a model this size is launch-bound, and graphs cut it about 4x on an H200
(BENCHMARKS.md); the buckets keep the number of graphs small (<= 4 x max_len/256) at the
cost of reading at most 255 masked positions more per row. Prefill stays eager (few calls,
large shapes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from apr.engine.llama import Transformer
from apr.engine.scheduler import Seq
from apr.errors import UserError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]


def load_hf_causal_lm(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """Load a Llama-architecture HF causal LM and its tokenizer, or raise UserError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise UserError("model folder not found", str(path))
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"not a Hugging Face model folder ({str(e).splitlines()[0]})", str(path)) from None
    if getattr(cfg, "model_type", None) != "llama":
        raise UserError(f"not a Llama causal LM (model_type {getattr(cfg, 'model_type', None)!r})", str(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model ({str(e).splitlines()[0]})", str(path)) from None
    return model, tok


class DecodeGraphs:
    """Decode steps replayed from CUDA graphs, one per (row bucket, length bucket).

    A decode step of a small model is launch-bound (hundreds of small kernels, plus Python
    per layer), so we capture it. Shapes vary every step, so we bucket them: the batch is
    slots 0..R-1 with R a power of two (idle rows write the scratch cell), the attended
    length is rounded up to a multiple of `t_bucket` (positions past a row's length are
    masked). Capturing re-runs the step on the real inputs, which is harmless: it writes
    the same K/V into the same cells.
    """

    def __init__(self, model: Transformer, slots: int, t_bucket: int = 256):
        self.model, self.slots, self.t_bucket = model, slots, t_bucket
        dev = model.embed.weight.device
        self.inp = torch.zeros(slots, 2, dtype=torch.int64, device=dev)  # token, start
        self.ones = torch.ones(slots, dtype=torch.int64, device=dev)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.pool = None

    def rows_bucket(self, hi: int) -> int:
        r = 8
        while r < hi:
            r *= 2
        return min(r, self.slots)

    def run(self, d: Tensor, t_max: int) -> Tensor:
        R = d.shape[0]
        T = min(-(-t_max // self.t_bucket) * self.t_bucket, self.model.max_len + 1)
        self.inp[:R].copy_(d)
        key = (R, T)
        if key not in self.graphs:
            self.graphs[key] = self._capture(R, T)
        g, out = self.graphs[key]
        g.replay()
        return out

    def _capture(self, R: int, T: int):
        m, inp, ones = self.model, self.inp[:R], self.ones[:R]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                m(inp[:, :1], slice(0, R), inp[:, 1], ones, T)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = m(inp[:, :1], slice(0, R), inp[:, 1], ones, T)
        self.pool = g.pool()
        return g, out


@dataclass
class PrefillGroup:
    """One prefill forward: the sequences whose prompt it completed and their logits."""

    ready: list[Seq]
    logits: Tensor  # [len(ready), V] fp32, at each sequence's last prompt token
    n_tokens: int  # prompt tokens this forward computed (padding excluded)


class ModelRunner:
    def __init__(
        self,
        hf_model,  # a loaded HF LlamaForCausalLM
        device: torch.device,
        dtype: torch.dtype,
        max_slots: int,
        max_len: int,
        prefill_chunk: int = 512,
        prefill_budget: int | None = None,  # padded tokens per prefill forward
        cuda_graphs: bool | None = None,  # default: on for CUDA
    ):
        self.device, self.max_len = device, max_len
        self.model = Transformer.from_hf(hf_model, device=device, dtype=dtype)
        self.model.setup_cache(max_slots, max_len)
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget or (8192 if device.type == "cuda" else 2048)
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        self.graphs = DecodeGraphs(self.model, max_slots) if cuda_graphs else None

    def load_hf_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        self.model.load_hf_state_dict(state_dict)  # in place: captured graphs stay valid

    def free(self) -> None:
        self.model.k_cache, self.model.v_cache = [], []

    def prefill(self, seqs: list[Seq]) -> Iterator[PrefillGroup]:
        """Prefill each sequence from `pos` to the end of its prompt, advancing `pos`; yield
        after every forward."""
        dev = self.device
        todo = list(seqs)
        while todo:
            todo.sort(key=lambda s: len(s.ids) - s.pos, reverse=True)
            S = min(self.prefill_chunk, len(todo[0].ids) - todo[0].pos)
            nb = max(1, min(len(todo), self.prefill_budget // S))
            group, todo = todo[:nb], todo[nb:]
            tokens = torch.zeros(len(group), S, dtype=torch.int64)
            meta = []
            for i, s in enumerate(group):
                n = min(S, len(s.ids) - s.pos)
                tokens[i, :n] = torch.tensor(s.ids[s.pos:s.pos + n])
                meta.append((s.slot, s.pos, n))
            m = torch.tensor(meta, dtype=torch.int64).to(dev)
            t_max = max(p + n for _, p, n in meta)
            logits = self.model(tokens.to(dev), m[:, 0], m[:, 1], m[:, 2], t_max)
            idx = []
            for i, (s, (_, p, n)) in enumerate(zip(group, meta)):
                s.pos = p + n
                if s.pos == len(s.ids):
                    idx.append(i)
                else:
                    todo.append(s)  # a long prompt: next chunk in a later forward
            if idx:
                logits = logits[torch.tensor(idx, device=dev)]
            yield PrefillGroup([group[i] for i in idx], logits if idx else logits[:0], sum(n for _, _, n in meta))

    def decode(self, live: list[Seq]) -> Tensor:
        """One decode forward feeding each sequence's newest token (`live` in slot order);
        logits [len(live), V] fp32."""
        dev = self.device
        hi = live[-1].slot + 1
        t_max = max(s.cache_len + 1 for s in live)
        if self.graphs is not None:
            hi = self.graphs.rows_bucket(hi)  # graphs run a fixed row count: pad with idle rows
        if self.graphs is not None or 2 * len(live) >= hi:
            # Rows are slots 0..hi-1 (cache views); idle rows feed token 0 at the scratch cell.
            rows: slice | Tensor = slice(0, hi)
            seqs: list[Seq | None] = [None] * hi
            for s in live:
                seqs[s.slot] = s
        else:
            seqs = list(live)
            rows = torch.tensor([s.slot for s in live], device=dev)
        data = [[s.gen[-1], s.cache_len] if s is not None else [0, self.max_len] for s in seqs]
        d = torch.tensor(data, dtype=torch.int64).to(dev)
        if self.graphs is not None:
            logits = self.graphs.run(d, t_max)
        else:
            ones = torch.ones(len(seqs), dtype=torch.int64, device=dev)
            logits = self.model(d[:, :1], rows, d[:, 1], ones, t_max)
        if isinstance(rows, slice) and len(live) < hi:
            logits = logits[torch.tensor([s.slot for s in live], device=dev)]
        return logits
