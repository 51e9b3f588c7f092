"""When a sequence ends: EOS, its length limit, or a stop string in its decoded text.

Checking a stop string means decoding text, so the decode step first screens rows on their
new token (`FinishTable.may_end`, tensors over the batch): EOS, the length limit, or a token
whose text could complete one of the row's stop strings. Only those rows get the string
check (`FinishTable.check`), which decides exactly as checking every row would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apr.engine.base import stop_match
from apr.engine.scheduler import Seq


class FinishTable:
    """Token-level finish flags: `eos[tok]`, and `stop[group, tok]` for each distinct stop list
    (group 0: no stop strings) - True when the token's text is empty, undecodable alone, or
    contains the last character of one of the stop strings (`check`'s trigger), special
    tokens excepted (texts are decoded without them)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int], device):
        self.tok, self.V, self.device = tokenizer, vocab_size, device
        self.groups: dict[tuple[str, ...], int] = {(): 0}
        self.stop = torch.zeros(1, vocab_size, dtype=torch.bool, device=device)
        self.texts: list[str] | None = None
        self._tok_text: dict[int, str] = {}
        self.set_eos(eos_ids)
        # Detokenize with the Rust backend directly when that is all `decode` would do (it
        # otherwise converts every id in Python first): stop checks and completions decode a lot.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
            self.decode = lambda ids: backend.decode(ids, skip_special_tokens=True)
        else:
            self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    def set_eos(self, eos_ids: set[int]) -> None:
        self.eos_ids = set(eos_ids)
        eos = torch.zeros(self.V, dtype=torch.bool)
        eos[[e for e in eos_ids if 0 <= e < self.V]] = True
        self.eos = eos.to(self.device)

    def group(self, stops: list[str]) -> int:
        """The row of `stop` for this list of stop strings (added on first sight)."""
        key = tuple(st for st in stops if st)
        g = self.groups.get(key)
        if g is None:
            if self.texts is None:  # every token's text, once (ids the tokenizer lacks: "")
                n = min(self.V, len(self.tok))
                self.texts = self.tok.batch_decode([[i] for i in range(n)], skip_special_tokens=True)
                self.texts += [""] * (self.V - n)
            last = {st[-1] for st in key}
            row = [not t or "\ufffd" in t or not last.isdisjoint(t) for t in self.texts]
            for i in self.tok.all_special_ids:  # decoded texts skip them: they never end a stop
                if 0 <= i < self.V:
                    row[i] = False
            self.stop = torch.cat([self.stop, torch.tensor([row], device=self.device)])
            g = self.groups[key] = len(self.groups)
        return g

    def may_end(self, toks: Tensor, pos: Tensor, rows: Tensor) -> Tensor:
        """Rows (SlotState.ints rows) whose new token `toks`, sampled at `pos`, may end them."""
        return self.eos[toks] | self.stop[rows[:, 3], toks] | (pos >= rows[:, 2])

    # ---- the exact check, on text ------------------------------------------------------
    def text(self, tok: int) -> str:
        t = self._tok_text.get(tok)
        if t is None:
            t = self._tok_text[tok] = self.decode([tok])
        return t

    def detok(self, prefix: list[int], ids: list[int]) -> str:
        # Decode with a few tokens of left context, so leading spaces (SentencePiece) survive.
        return self.decode(prefix + ids)[len(self.decode(prefix)):]

    def check(self, s: Seq, tok: int) -> tuple[str | None, str | None]:
        """Did `s` end with its newest token `tok`: (reason, text up to the stop) or (None, None)."""
        if tok in self.eos_ids:
            return "eos", None
        if s.stop_last:
            stops = s.req.stop
            t = self.text(tok)
            # Only decode the tail when the newest token could end a stop string.
            if not t or "\ufffd" in t or not s.stop_last.isdisjoint(t):
                tail = s.gen[-s.stop_window:]
                cut = len(s.ids) + len(s.gen) - len(tail)
                ctx = (s.ids + s.gen)[max(cut - 4, 0):cut]
                if stop_match(self.detok(ctx, tail), stops):
                    full = self.detok(s.ids[-4:], s.gen)
                    m = stop_match(full, stops)
                    if m:
                        return "stop", full[:m[0]]
        if len(s.gen) >= s.budget:
            return "length", None
        return None, None

    def completion_text(self, s: Seq, reason: str) -> str:
        """The generated text (EOS tokens left out)."""
        gen = [t for t in s.gen if t not in self.eos_ids] if reason == "eos" else s.gen
        return self.detok(s.ids[-4:], gen)
