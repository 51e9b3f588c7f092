"""The model runner (nano-vllm's name): the model on its device, its slotted KV cache, and
the prefill and decode steps that call the forward (llama.py) and return logits. Model
folders (presets, saving, apr.json) are apr.model_folder; this module only loads one.

Prefill runs the admitted sequences in padded groups: at most `prefill_budget` tokens per
forward, prompts longer than `prefill_chunk` in several chunks. Decode is one batched
forward for every sequence past prefill. Both return logits; sampling is the caller's.

Prefill attention reads each layer's cache only up to the group's longest live length (see
llama.py): no padded full-capacity masks. On the CPU a decode step runs the live rows only
and cuts them into spans of consecutive slots (attention.plan_spans), each reading the cache only up
to its own longest row; admission puts longer prompts in lower slots (scheduler.py), so
neighbours have similar lengths. On CUDA decode rows are slots `0..hi` as a *view* of the
cache when most of those slots are live, else the live slots are gathered, and every row
reads up to the batch's longest row: one shape per step, which CUDA graphs need (a
length-aware GPU kernel, e.g. FlexAttention over the same spans, is left for a machine where
it can be tested). On CUDA, decode steps
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

from safetensors import SafetensorError

from apr.engine.batch import DecodeBatch, SlotState
from apr.engine.cuda_graphs import DecodeGraphs
from apr.engine.llama import Transformer
from apr.engine.scheduler import Seq
from apr.device import check_memory
from apr.errors import UserError


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
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"cannot load model ({str(e).splitlines()[0]})", str(path)) from None
    # The runtime tokenizes whole texts (a thread with its join text, a record) that may run past
    # the trained length; the engine itself stops every thread at its window, so the tokenizer's
    # "longer than the specified maximum ... indexing errors" warning would only mislead.
    getattr(tok, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    return model, tok


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
        spans: bool | None = None,  # decode attention by spans (default: on for the CPU)
    ):
        self.device, self.max_len = device, max_len
        self.model = Transformer.from_hf(hf_model, device=device, dtype=dtype)
        a = self.model.args
        # Checked before allocating: a window or slot count past the machine is one line, not
        # an allocator error (or, on a host that overcommits, a process killed later).
        kv = 2 * a.n_layers * max_slots * a.n_kv_heads * (max_len + 1) * a.head_dim * self.model.embed.weight.element_size()
        check_memory(kv, f"a KV cache of {max_slots} slots x {max_len} tokens (lower `max_slots` or `context`)", device,
                     fields=("max_slots", "context"))
        self.model.setup_cache(max_slots, max_len)
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget or (8192 if device.type == "cuda" else 2048)
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        self.graphs = DecodeGraphs(self.model, max_slots) if cuda_graphs else None
        self.state = SlotState(max_slots, device)
        self._ones = torch.ones(max_slots, dtype=torch.int64, device=device)
        self._idle = torch.tensor([[0, max_len]], dtype=torch.int64, device=device).repeat(max_slots, 1)
        self.spans = (device.type == "cpu") if spans is None else spans
        a = self.model.args
        # One more span costs about a call's overhead (~20 us): ~128 kB of K/V reads.
        self._span_cost = max(8, 2 ** 17 // (2 * a.n_kv_heads * a.head_dim * self.model.k_cache[0].element_size()))

    def load_hf_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        self.model.load_hf_state_dict(state_dict)  # in place: captured graphs stay valid

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first n cache positions of slot src into slot dst (every layer)."""
        if src != dst:
            for kc, vc in zip(self.model.k_cache, self.model.v_cache):
                kc[dst, :, :n] = kc[src, :, :n]
                vc[dst, :, :n] = vc[src, :, :n]

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
                meta.append((s.slot, s.pos, n, s.p_slot if s.p_slot >= 0 else s.slot, s.p_len))
            m = torch.tensor(meta, dtype=torch.int64).to(dev)
            t_max = max(p + n for _, p, n, _, _ in meta)
            prefix = m[:, 3:] if any(s.p_slot >= 0 for s in group) else None
            logits = self.model(tokens.to(dev), m[:, 0], m[:, 1], m[:, 2], t_max, prefix=prefix)
            idx = []
            for i, (s, (_, p, n, _, _)) in enumerate(zip(group, meta)):
                s.pos = p + n
                if s.pos == len(s.ids):
                    idx.append(i)
                else:
                    todo.append(s)  # a long prompt: next chunk in a later forward
            if idx:
                logits = logits[torch.tensor(idx, device=dev)]
            yield PrefillGroup([group[i] for i in idx], logits if idx else logits[:0], sum(m[2] for m in meta))

    @property
    def span_cost(self) -> int | None:
        """Decode by spans (attention.plan_spans) at this cost, or None: every row reads up to
        the longest row (CUDA: graphs need one shape per step)."""
        return self._span_cost if self.spans and self.graphs is None else None

    def decode(self, b: DecodeBatch) -> tuple[Tensor, Tensor]:
        """One decode forward feeding each row's newest token: logits [B, V] fp32 and the rows'
        state (SlotState.ints rows, gathered before the step)."""
        x = self.state.ints[b.idx]
        n = len(b.slots)
        if b.spans is not None:
            return self.model(x[:, :1], b.idx, x[:, 1], self._ones[:n], b.t_max, spans=b.spans), x
        if b.prefix is not None:  # shared prefixes without spans: gather every row's cells
            return self.model(x[:, :1], b.idx, x[:, 1], self._ones[:n], b.t_max, prefix=b.prefix), x
        hi = b.slots[-1] + 1
        if self.graphs is not None:
            hi = self.graphs.rows_bucket(hi)  # graphs run a fixed row count: pad with idle rows
        if self.graphs is None and 2 * n < hi:  # few live rows: gather their slots
            return self.model(x[:, :1], b.idx, x[:, 1], self._ones[:n], b.t_max), x
        # Rows are slots 0..hi-1 (cache views); idle rows feed token 0 at the scratch cell.
        d = self._idle[:hi].clone()
        d[b.idx] = x[:, :2]
        if self.graphs is not None:
            logits = self.graphs.run(d, b.t_max)
        else:
            logits = self.model(d[:, :1], slice(0, hi), d[:, 1], self._ones[:hi], b.t_max)
        return (logits[b.idx] if n < hi else logits), x
