"""The local engine: continuous batching over a fixed number of KV-cache slots.

Each `poll()` is one scheduling step:
  1. admit queued requests into slots (reusing a kept cache when the request's `cache_key`
     has one: roll back to the longest common token prefix and prefill only the rest);
  2. prefill the admitted requests in padded groups (at most `prefill_budget` tokens per
     forward, prompts longer than `prefill_chunk` in several chunks) and sample their
     first token;
  3. one batched decode forward for every live sequence, sample, check EOS / stop strings /
     length, and return the requests that finished.

Attention reads each layer's cache only up to the batch's longest live length (see
llama.py): no padded full-capacity masks. Decode rows are slots `0..hi` as a *view* of the
cache when most of those slots are live (new requests take the lowest free slot, so live
slots stay packed), else the live slots are gathered. On CUDA, decode steps replay CUDA
graphs bucketed by row count (powers of two) and attended length (multiples of 256): a step
of a model this size is launch-bound, and graphs cut it about 4x on an H200 (BENCHMARKS.md);
the buckets keep the number of graphs small (<= 4 x max_len/256) at the cost of reading
at most 255 masked positions more per row. Prefill stays eager (few calls, large shapes).

A kept cache (`cache_key`) keeps its slot; kept slots count as free and are evicted, least
recently kept first, when a new request needs a slot. The engine is not thread-safe: one
thread drives it (`apr serve` has a dedicated engine thread).

Sampling is Gumbel-max with counter-based noise hashed from (seed, position, token id) on
device, so a request's sample depends only on its own seed and logits, never on the batch
it shared a step with or on its slot.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from apr.engine.base import Completion, Engine, Request, stop_match
from apr.engine.llama import Transformer
from apr.errors import UserError

# ---- sampling -----------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(seed: Tensor, pos: Tensor, vocab_hash: Tensor) -> Tensor:
    """Gumbel(0, 1) noise [B, V] that depends only on (seed[b], pos[b], token id)."""
    h = _mix32(_mix32(seed ^ 0x9E3779B9) ^ pos)  # [B]
    x = _mix32(h[:, None] ^ vocab_hash[None, :])  # [B, V]
    u = ((x >> 8).float() + 0.5) * (1.0 / (1 << 24))  # uniform in (0, 1)
    return -torch.log(-torch.log(u))


def vocab_hash(vocab_size: int, device) -> Tensor:
    return _mix32(torch.arange(vocab_size, device=device, dtype=torch.int64) + 0x632BE5AB)


def sample(
    logits: Tensor,  # [B, V] fp32
    temperature: Tensor,  # [B] fp32, 0 = greedy
    top_k: Tensor,  # [B] int64, 0 = off
    top_p: Tensor,  # [B] fp32
    seed: Tensor,  # [B] int64 in [0, 2^32)
    pos: Tensor,  # [B] int64, position of the token being sampled
    vhash: Tensor,  # [V] from vocab_hash
    filtered: bool = True,  # False when no row uses top-k / top-p (skips the sort)
) -> Tensor:
    greedy = logits.argmax(-1)
    l = logits / temperature.clamp(min=1e-5)[:, None]
    if filtered:
        V = l.shape[-1]
        sl, idx = l.sort(dim=-1, descending=True)
        k = torch.where(top_k > 0, top_k, V)
        keep = torch.arange(V, device=l.device)[None, :] < k[:, None]
        sl = sl.masked_fill(~keep, float("-inf"))
        p = torch.softmax(sl, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        keep &= (p.cumsum(-1) - p) < top_p[:, None]
        sl = sl.masked_fill(~keep, float("-inf"))
        l = torch.empty_like(l).scatter_(-1, idx, sl)
    drawn = (l + gumbel_noise(seed, pos, vhash)).argmax(-1)
    return torch.where(temperature > 0, drawn, greedy)


# ---- CUDA graphs for decode ----------------------------------------------------------


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


# ---- engine -------------------------------------------------------------------------


@dataclass
class _Seq:
    req: Request
    ids: list[int]  # prompt token ids
    slot: int = -1
    cached: int = 0  # prompt tokens reused from a kept cache
    pos: int = 0  # next prompt position to prefill
    gen: list[int] = field(default_factory=list)
    budget: int = 0  # max new tokens (max_tokens clipped to the cache length)
    first_time: float = 0.0
    stop_last: frozenset = frozenset()  # last characters of the stop strings
    stop_window: int = 0  # tokens decoded to look for a stop string

    @property
    def cache_len(self) -> int:
        # KV is in the cache for the prompt and every generated token but the newest.
        return len(self.ids) + max(len(self.gen) - 1, 0)


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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


class LocalEngine(Engine):
    def __init__(
        self,
        model,  # a model folder, or a loaded HF LlamaForCausalLM
        tokenizer=None,
        max_slots: int = 64,
        max_len: int = 4096,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        prefill_chunk: int = 512,
        prefill_budget: int | None = None,  # padded tokens per prefill forward
        record_logits: bool = False,  # keep each request's first-token logits (tests)
        cuda_graphs: bool | None = None,  # default: on for CUDA
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(model, (str, Path)):
            hf, tok = load_hf_causal_lm(model, self.dtype)
            tokenizer = tokenizer or tok
            self.model_path: str | None = str(model)
        else:
            hf, self.model_path = model, getattr(model, "name_or_path", None)
            if tokenizer is None:
                raise UserError("LocalEngine needs a tokenizer with a loaded model")
        self.tokenizer = tokenizer
        self.model = Transformer.from_hf(hf, device=self.device, dtype=self.dtype)
        self._cfg = hf.config
        del hf
        self.max_slots, self.max_len = max_slots, max_len
        self.model.setup_cache(max_slots, max_len)
        self.prefill_chunk = prefill_chunk
        self.prefill_budget = prefill_budget or (8192 if self.device.type == "cuda" else 2048)
        self.vhash = vocab_hash(self.model.args.vocab_size, self.device)
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        self.graphs = DecodeGraphs(self.model, max_slots) if cuda_graphs else None

        eos = set()
        for e in (getattr(self.model_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(e, int):
                eos.add(e)
            elif isinstance(e, (list, tuple)):
                eos.update(e)
        self.eos_ids = eos
        self._tok_text: dict[int, str] = {}

        self.queue: deque[_Seq] = deque()
        self.live: list[_Seq | None] = [None] * max_slots
        self.kept: OrderedDict[str, int] = OrderedDict()  # cache_key -> slot, LRU order
        self.slot_tokens: list[list[int]] = [[] for _ in range(max_slots)]  # tokens in a kept cache
        self.done: list[Completion] = []
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "decode_steps": 0, "generated": 0}
        self.first_logits: dict[str, Tensor] | None = {} if record_logits else None

    @property
    def model_config(self):
        return getattr(self, "_cfg", None)

    # ---- interface ---------------------------------------------------------------
    def submit(self, req: Request) -> None:
        ids = self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
        seq = _Seq(req=req, ids=list(ids))
        seq.budget = min(req.max_tokens, self.max_len - len(ids))
        stops = [st for st in req.stop if st]
        seq.stop_last = frozenset(st[-1] for st in stops)
        seq.stop_window = max((len(st) for st in stops), default=0) + 8  # a token is >= 1 char, mostly
        if len(ids) == 0 or len(ids) >= self.max_len:
            now = time.perf_counter()
            self.done.append(Completion(req.id, "", [], 0, "error", len(ids), 0, now, now,
                                        error=f"prompt of {len(ids)} tokens does not fit max_len {self.max_len}"))
        elif seq.budget <= 0:
            now = time.perf_counter()
            self.done.append(Completion(req.id, "", [], 0, "length", len(ids), 0, now, now))
        else:
            self.queue.append(seq)

    def poll(self) -> list[Completion]:
        with torch.inference_mode():
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            if any(s is not None and s.gen for s in self.live):
                self._decode()
        out, self.done = self.done, []
        return out

    def release(self, cache_key: str) -> None:
        slot = self.kept.pop(cache_key, None)
        if slot is not None:
            self.slot_tokens[slot] = []

    def free_slots(self) -> int:
        # Kept caches count as free: they are evicted (LRU) when a slot is needed.
        n_live = sum(s is not None for s in self.live)
        return max(self.max_slots - n_live - len(self.queue), 0)

    def pending(self) -> int:
        return len(self.queue) + sum(s is not None for s in self.live) + len(self.done)

    def cancel(self, request_id: str) -> bool:
        for s in self.queue:
            if s.req.id == request_id:
                self.queue.remove(s)
                return True
        for i, s in enumerate(self.live):
            if s is not None and s.req.id == request_id:
                self.live[i] = None  # its slot's cache is garbage now: nothing keeps it
                self.slot_tokens[i] = []
                return True
        return False

    def abort_all(self) -> None:
        """Drop every queued and running request (after a failed step); kept caches stay."""
        self.queue.clear()
        self.live = [None] * self.max_slots
        self.done = []

    def close(self) -> None:
        self.model.k_cache, self.model.v_cache = [], []
        self.queue.clear()
        self.live = [None] * self.max_slots
        self.kept.clear()

    def reload_weights(self, path: str | Path) -> None:
        """Load new weights (same architecture) from an HF folder; drops kept caches."""
        from transformers import AutoModelForCausalLM

        if any(s is not None for s in self.live) or self.queue:
            raise RuntimeError("cannot reload weights while requests are running")
        try:
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model ({str(e).splitlines()[0]})", str(path)) from None
        self.model.load_hf_state_dict(hf.state_dict())  # in place: captured graphs stay valid
        for k in list(self.kept):
            self.release(k)
        self.model_path = str(path)

    # ---- scheduling --------------------------------------------------------------
    def _take_slot(self, key: str | None) -> tuple[int, list[int]] | None:
        if key is not None and key in self.kept:
            slot = self.kept.pop(key)
            toks, self.slot_tokens[slot] = self.slot_tokens[slot], []
            return slot, toks
        kept_slots = set(self.kept.values())
        for slot in range(self.max_slots):  # lowest free slot keeps decode rows packed
            if self.live[slot] is None and slot not in kept_slots:
                return slot, []
        if self.kept:  # evict the least recently kept cache
            _, slot = self.kept.popitem(last=False)
            self.slot_tokens[slot] = []
            return slot, []
        return None

    def _admit(self) -> list[_Seq]:
        admitted = []
        while self.queue:
            got = self._take_slot(self.queue[0].req.cache_key)
            if got is None:
                break
            seq = self.queue.popleft()
            seq.slot, toks = got
            # Roll back to the longest common prefix; always prefill >= 1 token for logits.
            seq.cached = min(_lcp(toks, seq.ids), len(seq.ids) - 1)
            seq.pos = seq.cached
            self.live[seq.slot] = seq
            admitted.append(seq)
        return admitted

    def _prefill(self, seqs: list[_Seq]) -> None:
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
            self.stats["prefill_tokens"] += sum(n for _, _, n in meta)
            ready = []
            for i, (s, (_, p, n)) in enumerate(zip(group, meta)):
                s.pos = p + n
                if s.pos == len(s.ids):
                    ready.append((i, s))
                else:
                    todo.append(s)  # a long prompt: next chunk in a later forward
            if ready:
                idx = torch.tensor([i for i, _ in ready], device=dev)
                self._sample_and_advance([s for _, s in ready], logits[idx])

    def _decode(self) -> None:
        dev = self.device
        live = [(i, s) for i, s in enumerate(self.live) if s is not None and s.gen]
        hi = live[-1][0] + 1
        t_max = max(s.cache_len + 1 for _, s in live)
        if self.graphs is not None:
            hi = self.graphs.rows_bucket(hi)  # graphs run a fixed row count: pad with idle rows
        if self.graphs is not None or 2 * len(live) >= hi:
            # Rows are slots 0..hi-1 (cache views); idle rows feed token 0 at the scratch cell.
            rows: slice | Tensor = slice(0, hi)
            seqs: list[_Seq | None] = [None] * hi
            for i, s in live:
                seqs[i] = s
        else:
            seqs = [s for _, s in live]
            rows = torch.tensor([i for i, _ in live], device=dev)
        data = [[s.gen[-1], s.cache_len] if s is not None else [0, self.max_len] for s in seqs]
        d = torch.tensor(data, dtype=torch.int64).to(dev)
        if self.graphs is not None:
            logits = self.graphs.run(d, t_max)
        else:
            ones = torch.ones(len(seqs), dtype=torch.int64, device=dev)
            logits = self.model(d[:, :1], rows, d[:, 1], ones, t_max)
        self.stats["decode_steps"] += 1
        if isinstance(rows, slice) and len(live) < hi:
            logits = logits[torch.tensor([i for i, _ in live], device=dev)]
        self._sample_and_advance([s for _, s in live], logits)

    def _sample_and_advance(self, seqs: list[_Seq], logits: Tensor) -> None:
        """Sample one token per sequence (one host sync), then check whether each finished."""
        if self.first_logits is not None:
            for s, l in zip(seqs, logits):
                if not s.gen:
                    self.first_logits[s.req.id] = l.detach().cpu()
        sp = [s.req.sampling for s in seqs]
        if all(p.temperature <= 0 for p in sp):
            toks = logits.argmax(-1).tolist()
        else:
            dev = self.device
            f = torch.tensor([[p.temperature, p.top_p] for p in sp], dtype=torch.float32).to(dev)
            i = torch.tensor([[p.top_k, (p.seed ^ (p.seed >> 32)) & _M32, len(s.ids) + len(s.gen)]
                              for p, s in zip(sp, seqs)], dtype=torch.int64).to(dev)
            filtered = any(p.top_k > 0 or p.top_p < 1.0 for p in sp if p.temperature > 0)
            toks = sample(logits, f[:, 0], i[:, 0], f[:, 1], i[:, 1], i[:, 2], self.vhash, filtered).tolist()
        now = time.perf_counter()
        self.stats["generated"] += len(seqs)
        for s, t in zip(seqs, toks):
            if not s.gen:
                s.first_time = now
            s.gen.append(t)
            reason, text = self._finished(s, t)
            if reason:
                self._finish(s, reason, text, now)

    # ---- finishing ---------------------------------------------------------------
    def _text(self, tok: int) -> str:
        t = self._tok_text.get(tok)
        if t is None:
            t = self._tok_text[tok] = self.tokenizer.decode([tok], skip_special_tokens=True)
        return t

    def _detok(self, prefix: list[int], ids: list[int]) -> str:
        # Decode with a few tokens of left context, so leading spaces (SentencePiece) survive.
        head = self.tokenizer.decode(prefix, skip_special_tokens=True)
        return self.tokenizer.decode(prefix + ids, skip_special_tokens=True)[len(head):]

    def _finished(self, s: _Seq, tok: int) -> tuple[str | None, str | None]:
        if tok in self.eos_ids:
            return "eos", None
        if s.stop_last:
            stops = s.req.stop
            t = self._text(tok)
            # Only decode the tail when the newest token could end a stop string.
            if not t or "\ufffd" in t or not s.stop_last.isdisjoint(t):
                tail = s.gen[-s.stop_window:]
                cut = len(s.ids) + len(s.gen) - len(tail)
                ctx = (s.ids + s.gen)[max(cut - 4, 0):cut]
                if stop_match(self._detok(ctx, tail), stops):
                    full = self._detok(s.ids[-4:], s.gen)
                    m = stop_match(full, stops)
                    if m:
                        return "stop", full[:m[0]]
        if len(s.gen) >= s.budget:
            return "length", None
        return None, None

    def _finish(self, s: _Seq, reason: str, text: str | None, now: float) -> None:
        gen_text = [t for t in s.gen if t not in self.eos_ids] if reason == "eos" else s.gen
        if text is None:
            text = self._detok(s.ids[-4:], gen_text)
        self.done.append(Completion(
            id=s.req.id, text=text, token_ids=list(s.gen), n_tokens=len(s.gen), finish_reason=reason,
            prompt_tokens=len(s.ids), cached_tokens=s.cached, first_token_time=s.first_time, end_time=now))
        self.stats["cached_tokens"] += s.cached
        self.live[s.slot] = None
        key = s.req.cache_key
        if key is not None:
            old = self.kept.pop(key, None)
            if old is not None:
                self.slot_tokens[old] = []
            self.kept[key] = s.slot
            self.slot_tokens[s.slot] = (s.ids + s.gen)[:s.cache_len]
