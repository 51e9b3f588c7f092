"""The local engine: continuous batching over a fixed number of KV-cache slots.

Each `poll()` is one scheduling step:
  1. the scheduler admits queued requests into slots (reusing a kept cache when the
     request's `cache_key` has one: only the part past the common prefix is prefilled);
  2. the model runner prefills the admitted requests and we sample their first token;
  3. one batched decode forward for every live sequence, sample, check EOS / stop strings /
     length, and return the requests that finished. The per-row work of this step is tensor
     work (batch.py): inputs and sampling parameters come from per-slot state, and only rows
     whose new token may have ended them are checked in Python.

The pieces: scheduler.py (queue, slots, kept caches), model_runner.py (weights, KV cache,
forwards), batch.py (per-row decode state), finish.py (EOS, length and stop-string checks),
sampler.py (seeded sampling). The engine is not thread-safe: one thread drives
it (`apr serve` has a dedicated engine thread).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

import apr.engine.weights as weights
from apr.engine.base import Completion, Engine, Request, StagedWeights, SwapFailed
from apr.device import resolve_device
from apr.engine.model_runner import ModelRunner, load_hf_causal_lm, resolve_dtype
from apr.engine.batch import DecodeBatch
from apr.engine.exact import ExactRow, TokenTable, constrain
from apr.engine.finish import FinishTable
from apr.engine.sampler import next_tokens, sample, vocab_hash
from apr.engine.scheduler import Scheduler, Seq
from apr.errors import UserError, first_line


class LocalEngine(Engine):
    arithmetic_modes = ("model", "exact")

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
        share_prefix: bool | None = None,  # prefix_key: read the parent's cache (default), or copy it
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
        self.model_config = hf.config
        self.max_slots, self.max_len = max_slots, max_len
        self.runner = ModelRunner(hf, self.device, self.dtype, max_slots, max_len,
                                  prefill_chunk=prefill_chunk, prefill_budget=prefill_budget, cuda_graphs=cuda_graphs)
        del hf
        # prefix_shared / prefix_copied: prompt tokens read in place from / copied from another
        # request's kept cache (prefix_key); cow_copied: copied because readers pinned a cache
        # its own key wanted to overwrite. All are in cached_tokens, none in prefill_tokens.
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "decode_steps": 0, "generated": 0,
                      "prefix_shared": 0, "prefix_copied": 0, "cow_copied": 0}
        # Children read a shared prefix in place where decode runs by spans (the CPU); CUDA graphs
        # decode every row from its own slot, so there children copy it (prefill still saved).
        share = (self.runner.span_cost is not None) if share_prefix is None else share_prefix and self.runner.graphs is None
        self.scheduler = Scheduler(max_slots, share=share, stats=self.stats)
        self.vhash = vocab_hash(self.model.args.vocab_size, self.device)

        eos = weights.eos_ids(self.model_config, tokenizer)
        self.finish = FinishTable(tokenizer, self.model.args.vocab_size, eos, self.device)
        self._batch: DecodeBatch | None = None  # the decode rows of the last step
        self._exact_table: TokenTable | None = None  # built at the first exact-arithmetic request

        self.done: list[Completion] = []
        self.first_logits: dict[str, Tensor] | None = {} if record_logits else None

    @property
    def model(self):
        """Our Llama forward (llama.Transformer) holding the weights and the KV cache."""
        return self.runner.model

    @property
    def vocab_size(self) -> int:
        return self.model.args.vocab_size

    @property
    def eos_ids(self) -> set[int]:
        return self.finish.eos_ids

    @eos_ids.setter
    def eos_ids(self, ids: set[int]) -> None:
        self.finish.set_eos(ids)

    @property
    def kept(self):
        """cache_key -> slot of every kept cache, least recently kept first."""
        return self.scheduler.kept

    # ---- interface ---------------------------------------------------------------
    def submit(self, req: Request) -> None:
        ids = self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
        seq = Seq(req=req, ids=list(ids))
        seq.budget = min(req.max_tokens, self.max_len - len(ids))
        seq.end_pos = len(ids) + seq.budget - 1
        seq.stop_group = self.finish.group(req.stop)
        sp = req.sampling
        seq.sampling = 0 if sp.temperature <= 0 else 2 if sp.top_k > 0 or sp.top_p < 1.0 else 1
        stops = [st for st in req.stop if st]
        seq.stop_last = frozenset(st[-1] for st in stops)
        seq.stop_window = max((len(st) for st in stops), default=0) + 8  # a token is >= 1 char, mostly
        error = None
        if req.arithmetic not in self.arithmetic_modes:
            error = f"unknown arithmetic mode {req.arithmetic!r} (one of {', '.join(self.arithmetic_modes)})"
        elif len(ids) == 0 or len(ids) >= self.max_len:
            error = f"prompt of {len(ids)} tokens does not fit max_len {self.max_len}"
        elif req.arithmetic == "exact":
            if self._exact_table is None:
                self._exact_table = TokenTable(self.tokenizer, self.model.args.vocab_size)
            seq.exact = ExactRow(self._exact_table, req.prompt)
        if error is not None:
            now = time.perf_counter()
            self.done.append(Completion(req.id, "", [], 0, "error", len(ids), 0, now, now, error=error))
        elif seq.budget <= 0:
            now = time.perf_counter()
            self.done.append(Completion(req.id, "", [], 0, "length", len(ids), 0, now, now))
        else:
            self.scheduler.add(seq)

    def poll(self) -> list[Completion]:
        with torch.inference_mode():
            admitted = self.scheduler.admit()
            for s in admitted:  # every copy before any forward writes a slot
                if s.copy_from is not None:
                    src, n = s.copy_from
                    self.runner.copy_prefix(src, s.slot, n)
                    s.copy_from = None
            if admitted:
                for group in self.runner.prefill(admitted):
                    self.stats["prefill_tokens"] += group.n_tokens
                    if group.ready:
                        self._sample_and_advance(group.ready, group.logits)
            live = self.scheduler.decoding()
            if live:
                b = self._batch
                if b is None or not b.same_rows(live):  # rows came or went: new row tensors
                    b = self._batch = DecodeBatch(live, self.device, self.runner.span_cost)
                logits, x = self.runner.decode(b)
                self.stats["decode_steps"] += 1
                self._decode_advance(b, logits, x)
        out, self.done = self.done, []
        return out

    def release(self, cache_key: str) -> None:
        self.scheduler.release(cache_key)

    def free_slots(self) -> int:
        return self.scheduler.free_slots()

    def pending(self) -> int:
        return len(self.scheduler.queue) + self.scheduler.n_live() + len(self.done)

    def cancel(self, request_id: str) -> bool:
        return self.scheduler.cancel(request_id)

    def abort(self) -> None:
        self.scheduler.abort()
        self.done = []
        self._batch = None

    def close(self) -> None:
        self.runner.free()
        self.scheduler.clear()

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Copy an HF-Llama-style state dict (same architecture) in place, unchecked: for
        weights this process made (GRPO's policy); folders go through `reload_weights`.
        Every kept cache is released (its K/V came from the old weights)."""
        self._check_idle()
        self.runner.load_hf_state_dict(state_dict)
        self.scheduler.release_all()

    def stage_weights(self, folder: str | Path) -> StagedWeights:
        folder = Path(folder)
        sd = weights.stage(folder, self.model, self.model_config, self.tokenizer, self.eos_ids, self.dtype)
        return StagedWeights(folder, sd)

    def swap_weights(self, staged: StagedWeights) -> None:
        if staged.state_dict is None:  # staged by another engine: read and check it here
            staged = self.stage_weights(staged.folder)
        self._check_idle()
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        try:
            self.load_weights(staged.state_dict)
        except Exception as e:  # noqa: BLE001 - a copy that fails half way must not leave two models mixed
            self.model.load_state_dict(snapshot)
            raise SwapFailed(f"swap failed, the old weights keep serving ({first_line(e)})") from None
        self.model_path = str(staged.folder)

    def _check_idle(self) -> None:
        if self.scheduler.busy():
            raise RuntimeError("cannot reload weights while requests are running")

    # ---- sampling and finishing ----------------------------------------------------
    def _sample_and_advance(self, seqs: list[Seq], logits: Tensor) -> None:
        """First tokens after prefill: sample one per sequence (one host sync), check each."""
        if self.first_logits is not None:
            for s, l in zip(seqs, logits):
                self.first_logits[s.req.id] = l.detach().cpu()
        exact = [(i, s.exact) for i, s in enumerate(seqs) if s.exact is not None]
        forced = constrain(logits, exact) if exact else None
        toks = next_tokens(logits, [s.req.sampling for s in seqs], [len(s.ids) for s in seqs], self.vhash)
        if forced is not None:
            toks[forced[0]] = forced[1]
        self.runner.state.begin(seqs, toks)
        toks_l = toks.tolist()
        now = time.perf_counter()
        self.stats["generated"] += len(seqs)
        for s, t in zip(seqs, toks_l):
            s.first_time = now
            s.gen.append(t)
        for i, ex in exact:
            ex.feed(toks_l[i])
        self._end(list(zip(seqs, toks_l)), now)

    def _decode_advance(self, b: DecodeBatch, logits: Tensor, x: Tensor) -> None:
        """A decode step's tokens, sampled and screened for finishing on the device (x: the
        rows' SlotState before the step); one host sync; only rows whose token may have ended
        them (FinishTable) are checked in Python."""
        pos = x[:, 1] + 1  # the sampled tokens' position
        forced = constrain(logits, b.exact) if b.exact else None
        if b.sampled:
            f = self.runner.state.floats[b.idx]
            toks = sample(logits, f[:, 0], x[:, 4], f[:, 1], x[:, 5], pos, self.vhash, b.filtered)
        else:
            toks = logits.argmax(-1)
        if forced is not None:
            toks[forced[0]] = forced[1]
        maybe = self.finish.may_end(toks, pos, x)
        self.runner.state.ints[b.idx, :2] = torch.stack([toks, pos], dim=1)
        b.advance()
        toks_l, maybe_l = torch.stack([toks, maybe.long()]).tolist()
        now = time.perf_counter()
        self.stats["generated"] += len(toks_l)
        for s, t in zip(b.seqs, toks_l):
            s.gen.append(t)
        for i, ex in b.exact:
            ex.feed(toks_l[i])
        self._end([(b.seqs[i], toks_l[i]) for i, m in enumerate(maybe_l) if m], now)

    def _end(self, cands: list[tuple[Seq, int]], now: float) -> None:
        ended = []
        for s, t in cands:
            reason, text = self.finish.check(s, t)
            if reason:
                ended.append((s.order, s, reason, text))
        for _, s, reason, text in sorted(ended, key=lambda e: e[0]):  # submission order, not slot order
            self._finish(s, reason, text, now)

    def _finish(self, s: Seq, reason: str, text: str | None, now: float) -> None:
        if text is None:
            text = self.finish.completion_text(s, reason)
        self.done.append(Completion(
            id=s.req.id, text=text, token_ids=list(s.gen), n_tokens=len(s.gen), finish_reason=reason,
            prompt_tokens=len(s.ids), cached_tokens=s.cached, first_token_time=s.first_time, end_time=now,
            forced_tokens=s.exact.forced if s.exact else 0, forced_spans=s.exact.spans(s.gen, text) if s.exact else []))
        self.stats["cached_tokens"] += s.cached
        self.scheduler.finish(s)
