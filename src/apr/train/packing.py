"""Demonstrations -> token sequences with loss masks -> packed rows.

Each record (written by `apr data traces`, or a published SFT record) becomes one training
string per thread segment (`apr.protocol.Thread.training_strings`). A string is tokenized
with BOS before and EOS after; its tokens are trained on except those overlapping text the
runtime inserted (join results), unless `train_on_inserted` (what the published work did).

Packing: documents are packed best-fit-decreasing into rows of exactly `context` tokens.
Each row carries `position_ids` that restart at 0 for every document. With no attention
mask and no KV cache (`use_cache=False`), Hugging Face Llama reads those restarts as document boundaries: flash-attention-2
runs varlen kernels, and sdpa/eager get a block-diagonal causal mask, so neither attention
nor positions leak across documents. Targets are pre-shifted (`targets[i]` is the token at
i+1, or -100), and a document's BOS is never a target, so no loss crosses a boundary
either. The row tail is padding: its own "document" of pad tokens with no targets.
Documents longer than `context` are dropped (counted in `DataStats.dropped_long`): a
truncated trace would teach the model to stop mid-search.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apr import protocol
from apr.checker import apply_op
from apr.countdown import TaskConfig, problem_from_record, record_key
from apr.errors import UserError
from apr.io import read_records
from apr.runtime_config import TOKEN_BUDGET_MAX, TOKEN_BUDGET_STEP

IGNORE = -100


@dataclass
class Demonstration:
    """One record's training strings, with where it came from."""

    path: str
    line: int
    method: str  # "apr" | "sos"
    strings: list[protocol.TrainingString]
    children: int = 0  # child threads in the trace (what `Sub Call Budget: N` says for it)
    # False for a drill (apr.train.drills) cut off mid-trace: its EOS is not a target, so the
    # model does not learn to stop where the drill ends.
    stops: bool = True


@dataclass
class DataStats:
    records: int = 0
    documents: int = 0
    tokens: int = 0  # tokens of kept documents
    trained_tokens: int = 0  # of which carry loss
    dropped_long: int = 0  # documents longer than the context, dropped
    rows: int = 0
    methods: dict = field(default_factory=dict)


@dataclass
class Packed:
    """Rows of exactly `context` tokens (int32 arrays of shape [rows, context])."""

    input_ids: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def check_no_overlap(records: list[tuple[str, int, dict]], eval_problems: str | Path) -> None:
    """Refuse training data sharing a (sorted nums, target) with the evaluation problems."""
    held_out = set()
    for lineno, r in read_records(eval_problems):
        try:
            held_out.add(record_key(r))
        except (KeyError, TypeError, ValueError):
            raise UserError("problem needs `nums` and `target`", str(eval_problems), lineno) from None
    hits = [(p, ln) for p, ln, r in records if record_key(r) in held_out]
    if hits:
        path, line = hits[0]
        raise UserError(
            f"{len(hits)} training problem(s) are also evaluation problems in {eval_problems} "
            "(same sorted nums and target); remove them or set `eval_problems`",
            path,
            line,
        )


def read_demonstrations(path: str | Path) -> list[tuple[str, int, dict]]:
    """(path, line, record) for every record, checking the fields training needs and the
    task they are trained for (`check_task`); errors name the file and line."""
    out = []
    for lineno, r in read_records(path):  # an empty file is refused there
        problem_from_record(r, str(path), lineno)  # integers, not negative, 2..6 numbers
        if "trace_dict" not in r and "search_path" not in r:
            raise UserError("record has neither `trace_dict` nor `search_path`", str(path), lineno)
        out.append((str(path), lineno, r))
    check_task(out)
    return out


def check_task(records: list[tuple[str, int, dict]]) -> TaskConfig | None:
    """The task the records are demonstrations of, and every record inside it: the `task`
    they carry (`apr pipeline` tags them; all tags alike), each record's numbers and target
    within its ranges. Untagged records must at least agree on how many numbers a problem
    has. Returns the tagged task (None: untagged); the first record outside is a UserError."""
    task, tagged_at = None, None
    for path, line, r in records:
        if r.get("task") is None:
            continue
        this = TaskConfig.from_dict(r["task"], path, line)
        if task is None:
            task, tagged_at = this, line
        elif this != task:
            raise UserError(f"`task` differs from line {tagged_at}'s: one task per training run", path, line)
    first = len(records[0][2]["nums"]) if records else 0
    for path, line, r in records:
        why = task.outside(r["nums"], r["target"]) if task else (
            None if len(r["nums"]) == first else f"{len(r['nums'])} numbers; line {records[0][1]} has {first}")
        if why:
            raise UserError(f"record outside the task it is trained for: {why}", path, line)
    return task


def record_task(records: list[tuple[str, int, dict]]) -> dict:
    """The task a model trained on `records` is for, as apr.json records it: their `task` tag,
    else (`apr data traces` writes none) the published ranges with the records' count of
    numbers, widened to hold every number and target they have (check_task has checked that
    they agree on the count). Without this, a model trained on 3-number traces said it was
    for 4 numbers, and `apr eval`/`apr demo` without a problem file drew the wrong task.
    The records come from `read_demonstrations`, which has checked them against their tags."""
    tag = next((r["task"] for _, _, r in records if r.get("task") is not None), None)
    if tag is not None:
        return TaskConfig.from_dict(tag).as_dict()
    nums = [n for _, _, r in records for n in r["nums"]]
    targets = [r["target"] for _, _, r in records]
    d = TaskConfig()
    return TaskConfig(num_count=len(records[0][2]["nums"]), num_min=min(d.num_min, *nums), num_max=max(d.num_max, *nums),
                      target_min=min(d.target_min, *targets), target_max=max(d.target_max, *targets)).as_dict()


_EXPLORE = "Exploring Operation: "
_OPERATION = re.compile(r"(\d+)([+\-*/])(\d+)=(\d+)")
_MAX_CHARS = 80  # keeps int() cheap; no Countdown operation is near it


def check_trace(thread: protocol.Thread, record: dict, path: str, line: int) -> None:
    """A demonstration's trace is of its own problem and does the task's arithmetic: the root
    thread starts from the record's numbers and target, and every `Exploring Operation` of
    every thread is one of + - * / with its right result (`checker.apply_op`). Fast on purpose:
    this runs over every demonstration before training."""
    start = protocol.start_state(thread.prompt)
    if start is None or sorted(start.nums) != sorted(record["nums"]) or start.target != record["target"]:
        got = "no `Current State` line" if start is None else f"{start.nums} -> {start.target}"
        raise UserError(f"bad trace: its root starts from {got}, the record's problem is "
                        f"{record['nums']} -> {record['target']}", path, line)
    seen: set[str] = set()
    for t in thread.walk():
        # A search repeats its operations: each distinct one is checked once.
        for head in {part.split(",", 1)[0] for part in t.own_text().split(_EXPLORE)[1:]} - seen:
            seen.add(head)
            m = _OPERATION.fullmatch(head)
            if not m or len(head) > _MAX_CHARS or apply_op(int(m[1]), m[2], int(m[3])) != int(m[4]):
                raise UserError(f"bad trace: thread {t.node} explores {head[:60]!r}, which is not the task's "
                                "arithmetic (a+b, a*b, a-b or a/b with its result)", path, line)


def record_method(record: dict, thread: protocol.Thread) -> str:
    method = record.get("method")
    if method in ("apr", "sos"):
        return method
    # Published records carry no method: an APR root starts at `Moving to Node #0`.
    return "apr" if "Moving to Node #0\n" in thread.prompt else "sos"


def token_budget(n_tokens: int) -> int:
    """A trace's token count rounded up to a multiple of 512, capped at 4096."""
    return min(TOKEN_BUDGET_MAX, max(1, math.ceil(n_tokens / TOKEN_BUDGET_STEP)) * TOKEN_BUDGET_STEP)


def _prefixed(ts: protocol.TrainingString, prefix: str) -> protocol.TrainingString:
    n = len(prefix)
    return protocol.TrainingString(
        prefix + ts.text, ts.prompt_end + n, [(a + n, b + n) for a, b in ts.inserted], ts.new_from + n
    )


def demonstrations(
    records: list[tuple[str, int, dict]], tokenizer, *, budget_prefix: bool
) -> list[Demonstration]:
    """Training strings per record; `budget_prefix`: each with its budget as a prefix
    (`Token Budget: N ` for SoS+, `Sub Call Budget: N ` with its child count for APR)."""
    out = []
    for path, line, r in records:
        try:
            thread = protocol.thread_from_record(r)
        except ValueError as e:
            raise UserError(f"bad trace: {e}", path, line) from None
        check_trace(thread, r, path, line)
        method = record_method(r, thread)
        strings = thread.training_strings()
        if method == "sos" and budget_prefix and not strings[0].text.startswith("Token Budget:"):
            n = len(tokenizer(strings[0].text, add_special_tokens=False)["input_ids"])
            strings = [_prefixed(s, f"Token Budget: {token_budget(n)} ") for s in strings]
        if method == "apr" and budget_prefix:
            root = thread.prompt
            prefix = f"Sub Call Budget: {thread.count_descendants()} "
            if not root.startswith("Sub Call Budget:"):
                strings = [_prefixed(s, prefix) if s.text.startswith(root) else s for s in strings]
        out.append(Demonstration(path, line, method, strings, thread.count_descendants()))
    return out


def child_budget(demos: list[Demonstration]) -> int | None:
    """The child budget a model trained on these APR demonstrations is asked for by default:
    the median child count of the traces that spawned (None when none did)."""
    counts = sorted(d.children for d in demos if d.method == "apr" and d.children > 0)
    return counts[len(counts) // 2] if counts else None


def trained_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Per token: True unless its character span overlaps one of `spans`."""
    if not spans or len(offsets) == 0:
        return np.ones(len(offsets), dtype=bool)
    starts = offsets[:, 0]
    ends = np.maximum(offsets[:, 1], starts + 1)  # zero-width tokens still sit somewhere
    masked = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        masked |= (starts < b) & (ends > a)
    return ~masked


def encode_many(
    strings: list[protocol.TrainingString], tokenizer, train_on_inserted: bool = False, batched: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids with BOS and EOS, per-token "is a target") for each training string.

    A token is masked when its character span overlaps an inserted span; BOS never is a
    target (it starts every document), EOS always is (the model must learn to stop).
    Fast tokenizers encode the whole list in one call to the Rust backend (threaded);
    `batched=False` (or a tokenizer without a backend) calls the tokenizer once per string.
    """
    texts = [ts.text for ts in strings]
    backend = getattr(tokenizer, "backend_tokenizer", None) if batched else None
    if backend is not None:
        encs = backend.encode_batch(texts, add_special_tokens=False)
        get = lambda i, spans: (encs[i].ids, encs[i].offsets if spans else ())  # noqa: E731
    else:  # a slow tokenizer: one string at a time

        def get(i, spans):
            enc = tokenizer(texts[i], add_special_tokens=False, return_offsets_mapping=True)
            return enc["input_ids"], enc["offset_mapping"]

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for i, ts in enumerate(strings):
        spans = [] if train_on_inserted else ts.inserted
        ids, offsets = get(i, spans)  # offsets only where a mask needs them: they are slow to convert
        n = len(ids)
        tok = np.empty(n + 2, dtype=np.int32)
        tok[0], tok[1:-1], tok[-1] = bos, ids, eos
        trained = np.ones(n + 2, dtype=bool)
        trained[0] = False
        if spans:
            trained[1:-1] = trained_mask(np.asarray(offsets, dtype=np.int64).reshape(n, 2), spans)
        out.append((tok, trained))
    return out


def encode(ts: protocol.TrainingString, tokenizer, train_on_inserted: bool = False) -> tuple[list[int], list[bool]]:
    """`encode_many` for one string, as plain lists."""
    tok, trained = encode_many([ts], tokenizer, train_on_inserted)[0]
    return tok.tolist(), trained.tolist()


def pack(docs: list[tuple], context: int, pad_id: int) -> Packed:
    """Best-fit-decreasing packing of documents (each <= context tokens) into rows.

    A document is (token ids, per-token "is a target"), as lists or numpy arrays.
    """
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0]))
    rows: list[list[int]] = []  # document indices per row
    free: list[tuple[int, int]] = []  # sorted (free tokens, row)
    for i in order:
        n = len(docs[i][0])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            room, row = context, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    ids = np.full((len(rows), context), pad_id, dtype=np.int32)
    targets = np.full((len(rows), context), IGNORE, dtype=np.int32)
    pos = np.zeros((len(rows), context), dtype=np.int32)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            tok, trained = docs[i]
            n = len(tok)
            ids[r, at : at + n] = tok
            pos[r, at : at + n] = np.arange(n)
            # targets[j] = tok[j+1] where that token carries loss; never across documents
            targets[r, at : at + n - 1] = np.where(np.asarray(trained[1:], dtype=bool), np.asarray(tok[1:]), IGNORE)
            at += n
        pos[r, at:] = np.arange(context - at)  # padding: its own document
    return Packed(ids, targets, pos)


def build_packed(
    demos: list[Demonstration], tokenizer, context: int, train_on_inserted: bool, stats: DataStats, chunk: int = 4096
) -> Packed:
    """Tokenize and pack demonstrations, updating `stats`."""
    docs = []
    strings, stops = [], []
    for d in demos:
        stats.records += 1
        stats.methods[d.method] = stats.methods.get(d.method, 0) + 1
        strings.extend(d.strings)
        stops.extend([d.stops] * len(d.strings))
    for i in range(0, len(strings), chunk):  # chunks bound the backend's transient memory
        encoded = encode_many(strings[i : i + chunk], tokenizer, train_on_inserted)
        for (tok, trained), stop in zip(encoded, stops[i : i + chunk]):
            if not stop:
                trained[-1] = False
            if len(tok) > context:
                stats.dropped_long += 1
                continue
            docs.append((tok, trained))
            stats.documents += 1
            stats.tokens += len(tok)
            stats.trained_tokens += int(trained.sum())
    if not docs:
        raise UserError(f"no training document fits the context of {context} tokens")
    packed = pack(docs, context, tokenizer.pad_token_id)
    stats.rows += len(packed)
    return packed
