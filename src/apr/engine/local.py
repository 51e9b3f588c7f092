"""The local engine: continuous batching over a fixed number of KV-cache slots.

Each `poll()` is one scheduling step:
  1. the scheduler admits queued requests into slots (reusing a kept cache when the
     request's `cache_key` has one: only the part past the common prefix is prefilled);
  2. the model runner prefills the admitted requests and we sample their first token;
  3. one batched decode forward for every live sequence, sample, check EOS / stop strings /
     length, and return the requests that finished.

The pieces: scheduler.py (queue, slots, kept caches), model_runner.py (weights, KV cache,
forwards), sampler.py (seeded sampling). The engine is not thread-safe: one thread drives
it (`apr serve` has a dedicated engine thread).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from safetensors import SafetensorError

from apr.engine.base import Completion, Engine, Request, stop_match
from apr.engine.model_runner import ModelRunner, load_hf_causal_lm, resolve_device, resolve_dtype
from apr.engine.sampler import next_tokens, vocab_hash
from apr.engine.scheduler import Scheduler, Seq
from apr.errors import UserError


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
        self.model_config = hf.config
        self.max_slots, self.max_len = max_slots, max_len
        self.runner = ModelRunner(hf, self.device, self.dtype, max_slots, max_len,
                                  prefill_chunk=prefill_chunk, prefill_budget=prefill_budget, cuda_graphs=cuda_graphs)
        del hf
        self.scheduler = Scheduler(max_slots)
        self.vhash = vocab_hash(self.model.args.vocab_size, self.device)

        eos = set()
        for e in (getattr(self.model_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(e, int):
                eos.add(e)
            elif isinstance(e, (list, tuple)):
                eos.update(e)
        self.eos_ids = eos
        self._tok_text: dict[int, str] = {}

        self.done: list[Completion] = []
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "decode_steps": 0, "generated": 0}
        self.first_logits: dict[str, Tensor] | None = {} if record_logits else None

    @property
    def model(self):
        """Our Llama forward (llama.Transformer) holding the weights and the KV cache."""
        return self.runner.model

    @property
    def kept(self):
        """cache_key -> slot of every kept cache, least recently kept first."""
        return self.scheduler.kept

    # ---- interface ---------------------------------------------------------------
    def submit(self, req: Request) -> None:
        ids = self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
        seq = Seq(req=req, ids=list(ids))
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
            self.scheduler.add(seq)

    def poll(self) -> list[Completion]:
        with torch.inference_mode():
            admitted = self.scheduler.admit()
            if admitted:
                for group in self.runner.prefill(admitted):
                    self.stats["prefill_tokens"] += group.n_tokens
                    if group.ready:
                        self._sample_and_advance(group.ready, group.logits)
            live = self.scheduler.decoding()
            if live:
                logits = self.runner.decode(live)
                self.stats["decode_steps"] += 1
                self._sample_and_advance(live, logits)
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

    def close(self) -> None:
        self.runner.free()
        self.scheduler.clear()

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load an HF-Llama-style state dict (same architecture) in place; every kept cache
        is released (its K/V came from the old weights)."""
        self._check_idle()
        self.runner.load_hf_state_dict(state_dict)
        self.scheduler.release_all()

    def reload_weights(self, path: str | Path) -> None:
        """Load new weights (same architecture) from an HF folder; drops kept caches."""
        from transformers import AutoModelForCausalLM

        self._check_idle()
        try:
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype)
        except (OSError, ValueError, SafetensorError) as e:
            raise UserError(f"cannot load model ({str(e).splitlines()[0]})", str(path)) from None
        self.load_weights(hf.state_dict())
        self.model_path = str(path)

    def _check_idle(self) -> None:
        if self.scheduler.busy():
            raise RuntimeError("cannot reload weights while requests are running")

    # ---- sampling and finishing ----------------------------------------------------
    def _sample_and_advance(self, seqs: list[Seq], logits: Tensor) -> None:
        """Sample one token per sequence (one host sync), then check whether each finished."""
        if self.first_logits is not None:
            for s, l in zip(seqs, logits):
                if not s.gen:
                    self.first_logits[s.req.id] = l.detach().cpu()
        positions = [len(s.ids) + len(s.gen) for s in seqs]
        toks = next_tokens(logits, [s.req.sampling for s in seqs], positions, self.vhash)
        now = time.perf_counter()
        self.stats["generated"] += len(seqs)
        ended = []
        for s, t in zip(seqs, toks):
            if not s.gen:
                s.first_time = now
            s.gen.append(t)
            reason, text = self._finished(s, t)
            if reason:
                ended.append((s.order, s, reason, text))
        for _, s, reason, text in sorted(ended, key=lambda e: e[0]):  # submission order, not slot order
            self._finish(s, reason, text, now)

    def _text(self, tok: int) -> str:
        t = self._tok_text.get(tok)
        if t is None:
            t = self._tok_text[tok] = self.tokenizer.decode([tok], skip_special_tokens=True)
        return t

    def _detok(self, prefix: list[int], ids: list[int]) -> str:
        # Decode with a few tokens of left context, so leading spaces (SentencePiece) survive.
        head = self.tokenizer.decode(prefix, skip_special_tokens=True)
        return self.tokenizer.decode(prefix + ids, skip_special_tokens=True)[len(head):]

    def _finished(self, s: Seq, tok: int) -> tuple[str | None, str | None]:
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

    def _finish(self, s: Seq, reason: str, text: str | None, now: float) -> None:
        gen_text = [t for t in s.gen if t not in self.eos_ids] if reason == "eos" else s.gen
        if text is None:
            text = self._detok(s.ids[-4:], gen_text)
        self.done.append(Completion(
            id=s.req.id, text=text, token_ids=list(s.gen), n_tokens=len(s.gen), finish_reason=reason,
            prompt_tokens=len(s.ids), cached_tokens=s.cached, first_token_time=s.first_time, end_time=now))
        self.stats["cached_tokens"] += s.cached
        self.scheduler.finish(s)
