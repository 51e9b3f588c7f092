"""Exact arithmetic (apr.arithmetic) on the tokens of any Hugging Face tokenizer: which token
ids a request's next step may take, and the decode-loop hooks of the local engine.

`TokenTable` (one per engine, built at the first exact request) holds every token's text *in
context* (decoded after `Exploring Operation:`, so SentencePiece's leading spaces survive),
the tokens that can appear in an operation (those whose text is made of digits, operators,
`=` and spaces) and, for forcing, every token with a text. `ExactRow` (one per request)
follows the request's text token by token and keeps what its next token must be:
- `allow`: ids the model may choose among (operands, operator, `=`): every token whose text
  keeps the line a prefix of some legal ` A op B=`, merged tokens (` 12`, `3=`) included;
- `force`: the id written for the model (a result, or the goal line `N,T equal: Goal
  Reached` / `N,T unequal: No Solution` after a single-number `Resulting Numbers` list), the
  longest token whose text begins what is left of it, so decode(text + forced) is the text
  followed by the forced text, whatever the tokenizer merges (`,` and words too: with our
  tokenizer `unequal: No Solution` is one token, a BPE one takes its own pieces); where one
  text has several ids (byte fallback), the one the tokenizer itself produces;
- `forbid`: after a result, tokens that begin with a digit (they would change it); after a
  goal line too.
Forced tokens are generated one per decode step like any other (the other rows of the batch
are decoding anyway: a result is 1-3 tokens, a goal line a few more, not worth a prefill of
its own); they are counted (`forced`) with their positions, turned into character spans of
the completion text (`spans`), which training uses to keep them out of the loss.

Cost: outside an operation a row only holds a token unless its text may complete the
trigger or a state line's key, or ends a line that holds one (TokenTable.code); the text is
read then, once. An operation line holds the trigger, so it is read, and its newline makes
the row active when a goal line follows. Inside an operation the work is a walk down the
state's operation tree; a forced text is looked up once per rest (cached).
"""

from __future__ import annotations

import torch
from torch import Tensor

from apr.arithmetic import TRIGGER, Choose, Force, OperationTracker

ALPHABET = frozenset("0123456789+-*/= ")  # every character of ` A op B=C`
STATE_KEY = "Current State:"


def _may_finish(text: str, key: str) -> bool:
    """Could `text` write the final `:` of `key`, the rest of it written before or in `text`?"""
    k = text.find(":")
    while k >= 0:
        before = text[:k]
        if key[:-1].endswith(before) or before.endswith(key[:-1]):
            return True
        k = text.find(":", k + 1)
    return False


class TokenTable:
    def __init__(self, tokenizer, vocab_size: int):
        ctx = tokenizer.encode(TRIGGER, add_special_tokens=False)
        base = tokenizer.decode(ctx, skip_special_tokens=True)
        n = min(vocab_size, len(tokenizer))
        full = tokenizer.batch_decode([ctx + [i] for i in range(n)], skip_special_tokens=True)
        self.texts = [f[len(base):] if f.startswith(base) else "" for f in full] + [""] * (vocab_size - n)
        self.lens = [len(t) for t in self.texts]
        # What a row outside an operation does with a token: 0 hold it (its text can matter only
        # with what follows), 1 read the line now (it may complete the trigger or a state line's
        # key), 2 it ends a line (read that line if anything in it may matter, else drop it).
        self.code = [1 if _may_finish(t, TRIGGER) or _may_finish(t, STATE_KEY) else 2 if "\n" in t else 0
                     for t in self.texts]
        self.by_first: dict[str, list[tuple[str, int]]] = {}  # operation tokens by first character
        ids_of: dict[str, list[int]] = {}
        for i, t in enumerate(self.texts):
            if t:
                ids_of.setdefault(t, []).append(i)
                if ALPHABET.issuperset(t):
                    self.by_first.setdefault(t[0], []).append((t, i))
        # What to force (results, goal lines): one id per text, every token with a text; where
        # several ids have one text (byte fallback), the tokenizer's own choice.
        self.force_ids: dict[str, int] = {}
        for t, ids in ids_of.items():
            pick = ids[0]
            if len(ids) > 1:
                own = tokenizer.encode(TRIGGER + t, add_special_tokens=False)
                pick = own[-1] if len(own) == len(ctx) + 1 and own[:-1] == ctx and own[-1] in ids else min(ids)
            self.force_ids[t] = pick
        self.force_len = max(map(len, self.force_ids), default=0)  # the longest text
        # every token whose text starts with a digit, operation token or not (`6,` too)
        self.digit_initial = [i for i, t in enumerate(self.texts) if t[:1] and t[0] in "0123456789"]
        self._digit_t: dict[str, Tensor] = {}
        self._allowed: dict[Choose, list[int]] = {}  # by node (identity): states repeat within a thread
        self._force: dict[str, int | None] = {}

    def allowed(self, node: Choose) -> list[int]:
        """Token ids whose text continues a legal operation from `node`, up to `=` at most."""
        got = self._allowed.get(node)
        if got is None:
            got = [i for ch in node.next() for t, i in self.by_first.get(ch, ()) if len(t) == 1 or _spells(node, t)]
            if len(self._allowed) > 100_000:
                self._allowed.clear()
            self._allowed[node] = got
        return got

    def force(self, rest: str) -> int | None:
        """The id of the longest token whose text begins `rest` (None: the tokenizer has none)."""
        got = self._force.get(rest, -1)
        if got == -1:
            if len(self._force) > 100_000:
                self._force.clear()
            ids = self.force_ids
            got = self._force[rest] = next((ids[rest[:n]] for n in range(min(len(rest), self.force_len), 0, -1)
                                            if rest[:n] in ids), None)
        return got

    def digit_ids(self, device) -> Tensor:
        t = self._digit_t.get(str(device))
        if t is None:
            t = self._digit_t[str(device)] = torch.tensor(self.digit_initial, dtype=torch.int64, device=device)
        return t


def _spells(node: Choose, text: str) -> bool:
    for ch in text:
        if node.result is not None:  # past `=`: the result is not the model's to write
            return False
        node = node.next().get(ch)
        if node is None:
            return False
    return True


class ExactRow:
    """One request under exact arithmetic: feed it every token the request gets (prompt text
    at construction); `allow`, `force` and `forbid` say what the next one may be (`active`:
    one of them is set)."""

    def __init__(self, table: TokenTable, prompt: str):
        self.table = table
        self.ops = OperationTracker(prompt)
        self.forced = 0  # tokens written for the model
        self.forced_at: list[int] = []  # their positions among the generated tokens
        self.n = 0  # generated tokens accounted for (fed, or dropped with their line)
        self.allow: list[int] | None = None
        self.force: int | None = None
        self.forbid = False
        self.active = False
        self._code = table.code
        self._held: list[int] = []  # tokens of the current line not fed to `ops` yet
        self._update()

    def feed(self, tok: int) -> None:
        if not self.active:
            code = self._code[tok]
            if code == 0:  # most tokens: fed later with the rest of their line, if ever
                self._held.append(tok)
                return
            if code == 2 and not self.ops.line:  # a line with nothing that matters ends
                self.n += len(self._held) + 1
                self._held.clear()
                self.ops.feed(self.table.texts[tok])
                self._update()
                return
        texts = self.table.texts
        if self._held:
            self.n += len(self._held)
            self.ops.feed("".join([texts[i] for i in self._held]))
            self._held.clear()
        if tok == self.force:
            self.forced += 1
            self.forced_at.append(self.n)
        self.n += 1
        self.ops.feed(texts[tok])
        self._update()

    def _update(self) -> None:
        need = self.ops.need
        self.allow, self.force, self.forbid = None, None, False
        if need is None:
            self.active = False
            return
        self.active = True
        if type(need) is Choose:
            self.allow = self.table.allowed(need) or None
        elif type(need) is Force:
            self.force = self.table.force(need.text)
        else:  # SEPARATE
            self.forbid = True
            return
        if self.allow is None and self.force is None:  # the tokenizer cannot spell it: leave it
            self.ops.abandon()
            self.active = False

    def spans(self, gen: list[int], text: str) -> list[tuple[int, int]]:
        """The character spans of the forced tokens in the completion `text` of the generated
        ids `gen` (cut at a stop string), adjacent ones merged."""
        out: list[tuple[int, int]] = []
        at, j, lens, where = 0, 0, self.table.lens, self.forced_at
        for k, t in enumerate(gen):
            if j == len(where):
                break
            if k == where[j]:
                j += 1
                if out and out[-1][1] == at:
                    out[-1] = (out[-1][0], at + lens[t])
                else:
                    out.append((at, at + lens[t]))
            at += lens[t]
        return [(a, min(b, len(text))) for a, b in out if a < len(text)]


def constrain(logits: Tensor, rows: list[tuple[int, ExactRow]]) -> tuple[Tensor, Tensor] | None:
    """Mask `logits` [B, V] in place for the rows (index, ExactRow) that choose among allowed
    tokens or must not start a digit; return (row indices, token ids) of the rows whose next
    token is forced (the caller writes them over the sampled tokens), or None."""
    allow_rows, allow_ids, forbid_rows, force_rows, force_ids = [], [], [], [], []
    for i, ex in rows:
        if not ex.active:
            continue
        if ex.force is not None:
            force_rows.append(i)
            force_ids.append(ex.force)
        elif ex.allow is not None:
            allow_rows.append(i)
            allow_ids.append(ex.allow)
        elif ex.forbid:
            forbid_rows.append(i)
    dev = logits.device
    if allow_rows:
        r = torch.tensor([i for i, ids in zip(allow_rows, allow_ids) for _ in ids], device=dev)
        c = torch.tensor([t for ids in allow_ids for t in ids], device=dev)
        keep = logits[r, c]
        logits[torch.tensor(allow_rows, device=dev)] = float("-inf")
        logits[r, c] = keep
    if forbid_rows and rows[0][1].table.digit_initial:
        d = rows[0][1].table.digit_ids(dev)
        logits[torch.tensor(forbid_rows, device=dev)[:, None], d[None, :]] = float("-inf")
    if not force_rows:
        return None
    return torch.tensor(force_rows, device=dev), torch.tensor(force_ids, device=dev)
