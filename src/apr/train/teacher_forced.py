"""Teacher-forced measures of a model on held-out traces: loss per character (comparable
across tokenizers) and how often it would get an operation's result wrong.

A result counts as right only if the model's greedy prediction is right at every token of
it, given the true text before each token (teacher forcing). Results are broken down by
their length in digits (1, 2, 3, 4+), by operation, and by whether the same operation text
(`87*72=6264`) already appears earlier in the trace (`copied`: the model can copy it) or
not (`first`: it must compute it). This isolates arithmetic from search: a free-running
model's errors also depend on where its search went.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from apr.train.packing import trained_mask

_RESULT = re.compile(r"Exploring Operation: (\d+)([-+*/])(\d+)=(\d+)")


def digits_class(n_digits: int) -> str:
    return f"{n_digits}" if n_digits < 4 else "4+"


class _Tally:
    def __init__(self):
        self.n: dict[str, int] = defaultdict(int)
        self.wrong: dict[str, int] = defaultdict(int)

    def add(self, keys: list[str], wrong: bool) -> None:
        for k in keys:
            self.n[k] += 1
            self.wrong[k] += wrong

    def rates(self) -> dict:
        return {k: {"n": self.n[k], "wrong": self.wrong[k], "error": self.wrong[k] / self.n[k]} for k in sorted(self.n)}


@torch.no_grad()
def measure(model, tokenizer, texts: list[str], skip: list[list[tuple[int, int]]] | None = None) -> dict:
    """Loss per character and result error rates of `model` over `texts` (each a whole
    training string: a thread's text as trained, BOS before and EOS after). `skip[i]`: char
    spans of texts[i] read as context but neither scored nor counted (for a training string:
    the text an earlier segment's string already scored, and the join text the runtime
    inserted, which training does not train)."""
    model.eval()
    device = next(model.parameters()).device
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tally, loss_sum, chars, tokens = _Tally(), 0.0, 0, 0
    for i, text in enumerate(texts):
        spans = skip[i] if skip else []
        skipped = np.zeros(len(text), dtype=bool)
        for a, b in spans:  # spans may overlap (join text inside an earlier segment's text)
            skipped[a:b] = True
        enc = backend.encode(text, add_special_tokens=False)
        ids = torch.tensor([[bos, *enc.ids, eos]], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        target = ids[0, 1:]
        starts = [a for a, _ in enc.offsets]
        ends = [b for _, b in enc.offsets]
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        scored = torch.from_numpy(np.append(trained_mask(offsets, spans), True)).to(device)  # + EOS
        loss_sum += F.cross_entropy(logits, target, reduction="none")[scored].sum().item()
        chars += len(text) + 1 - int(skipped.sum())  # +1: EOS stands for the end
        tokens += int(scored.sum())
        right = (logits.argmax(-1) == target).tolist()  # right[j]: token j of the text (j = ids index - 1)
        for m in _RESULT.finditer(text):
            s, e = m.span(4)
            if skipped[s:e].any():
                continue
            toks = [j for j in range(len(starts)) if starts[j] < e and ends[j] > s]
            wrong = not all(right[j] for j in toks)
            first = text.find(m.group(0)[len("Exploring Operation: "):]) >= m.start(1)
            tally.add(["all", f"digits:{digits_class(e - s)}", f"op:{m.group(2)}", "first" if first else "copied"],
                      wrong)
    model.train()
    rates = tally.rates()
    return {
        "loss_per_char": loss_sum / max(1, chars),
        "loss_per_token": loss_sum / max(1, tokens),
        "chars_per_token": chars / max(1, tokens),
        "results": rates,
        "result_error": rates.get("all", {}).get("error", math.nan),
    }
