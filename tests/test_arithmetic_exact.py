"""Exact arithmetic (issue 20): the text rules (apr.arithmetic), their tokens under several
tokenizers (apr.engine.exact), the local engine with a model steered toward illegal
operations, and the replay reference: solver traces whose results were corrupted, followed
decision by decision, come out token for token as the solver wrote them."""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
import string

import pytest

torch = pytest.importorskip("torch")

from support.models import make_char_tokenizer, save_apr_model_dir  # noqa: E402
from support.traces import script_of, solver_traces  # noqa: E402

from apr import protocol as P  # noqa: E402
from apr.arithmetic import SEPARATE, TRIGGER, Choose, Force, OperationTracker, heads  # noqa: E402
from apr.checker import apply_op  # noqa: E402
from apr.competence import measure, operation_errors, verdict_errors  # noqa: E402
from apr.countdown import read_problems  # noqa: E402
from apr.datasets import packaged_validation_set  # noqa: E402
from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.exact import ExactRow, TokenTable  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.scripted import ScriptedEngine  # noqa: E402
from apr.errors import UserError  # noqa: E402
from apr.runtime import Runtime, RuntimeConfig  # noqa: E402
from apr.tokenizer import build_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROBS = read_problems(packaged_validation_set())
DEVICE = os.environ.get("APR_TEST_DEVICE", "cpu")  # cuda: the engine tests on a GPU (CUDA graphs on)
OP_LINE = re.compile(r"Exploring Operation: (\d+)([+\-*/])(\d+)=(\d+)")
# a goal line after an operation line with one resulting number: group 1 the goal line (no newline)
GOAL_LINE = re.compile(r"^Exploring Operation: [^\n]*, Resulting Numbers: \[\d+\]\n(\d+,\d+ (?:un)?equal: [^\n]*)$",
                       re.M)


def forced_texts(text: str, start: int = 0) -> list[str]:
    """What exact arithmetic writes in `text` from `start` on (a thread's own text), in order:
    operation results and goal lines."""
    found = [(m.start(4), m.group(4)) for m in OP_LINE.finditer(text)]
    found += [(m.start(1), m.group(1)) for m in GOAL_LINE.finditer(text)]
    return [t for at, t in sorted(found) if at >= start]


def state(nums: list[int], target: int = 24) -> str:
    return P.state_line(target, nums, [])


def tracker_at(nums: list[int], written: str = "") -> OperationTracker:
    t = OperationTracker("Moving to Node #0\n" + state(nums) + TRIGGER)
    t.feed(written)
    return t


# ---------------------------------------------------------------------------- text rules

def test_operations_are_exact_nonnegative_and_larger_first():
    rng = random.Random(0)
    for _ in range(200):
        nums = sorted(rng.randint(0, 30) for _ in range(rng.randint(2, 4)))
        ops = heads(tuple(nums))
        for head, c in ops.items():
            m = re.fullmatch(r" (\d+)([+\-*/])(\d+)=", head)
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert sorted([a, b]) in [sorted(p) for p in itertools.permutations(nums, 2)]
            assert apply_op(a, op, b) == c and (op in "+*" or a >= b)
        for i, j in itertools.permutations(range(len(nums)), 2):
            a, b = nums[i], nums[j]
            assert {f" {a}+{b}=", f" {a}*{b}="} <= ops.keys()
            assert (f" {a}/{b}=" in ops) == (a >= b > 0 and a % b == 0)


def test_operands_come_from_the_state_as_a_multiset():
    assert "5=" in tracker_at([5, 5, 3], " 5+").need.suffixes
    assert "5=" not in tracker_at([5, 8, 3], " 5+").need.suffixes
    first = {s[:3] for s in tracker_at([4, 9, 3]).need.suffixes}
    assert first == {" 4+", " 4*", " 4-", " 9+", " 9*", " 9-", " 9/", " 3+", " 3*"}
    # a number that begins another: both may still be meant
    after_1 = tracker_at([1, 12, 5], " 1").need.suffixes
    assert "+5=" in after_1 and "2+5=" in after_1 and "+12=" in after_1


def test_minus_and_division_only_where_the_solvers_write_them():
    assert {s[0] for s in tracker_at([3, 9, 4], " 3").need.suffixes} == {"+", "*"}
    assert tracker_at([3, 9, 4], " 9/").need.suffixes == ("3=",)
    assert tracker_at([3, 9, 4], " 4-").need.suffixes == ("3=",)
    assert tracker_at([0, 5], " 0").need.suffixes == ("*5=", "+5=")  # no 0/5, no 0-5


def test_result_is_forced_then_must_end():
    t = tracker_at([4, 9, 3], " 9-3=")
    assert t.need == Force("6")
    t.feed("6")
    assert t.need is SEPARATE
    t.feed(", Resulting Numbers: [4, 6]")
    assert t.need is None
    t = tracker_at([40, 2], " 40*2=")
    assert t.need == Force("80")
    t.feed("8")
    assert t.need == Force("0")


def test_lines_that_are_not_operations_are_free():
    t = OperationTracker("Moving to Node #0\n" + state([4, 9, 3]))
    for piece in ["Generated Node #0,1: 24:[4, 6] Operation: 9-3=", "6\n", "Current State: 24:[4, 6], Operations: ['9-3=",
                  "6']\n", "Moving to Node #0,1\n", "24,24 equal: Goal Reached\n"]:
        t.feed(piece)
        assert t.need is None


def test_no_state_or_no_pair_leaves_the_line_to_the_model():
    for prompt in ["Moving to Node #0\n", state([7]), "Current State: 24:[4, x], Operations: []\n"]:
        t = OperationTracker(prompt + "\n" + TRIGGER)
        assert t.need is None
    broken = OperationTracker("\n" + state([4, 9, 3]) + TRIGGER + " 9-3=7")  # a prompt with a wrong result
    assert broken.need is None
    broken.feed(", Resulting Numbers: [4, 7]\n" + TRIGGER)
    assert isinstance(broken.need, Choose)  # the next operation line is constrained again


def test_state_in_inserted_join_text_does_not_count_but_generated_does():
    join = P.join_text([P.ChildResult(0, 1, "0,0", P.solution_path(24, [4, 6], ["4*6=24"], "0,0"))])
    t = OperationTracker("Moving to Node #0\n" + state([4, 9, 3]) + join + TRIGGER)
    assert " 9-3=" in t.need.suffixes  # the parent's own state, not the child's [4, 6]
    t = OperationTracker("Moving to Node #0\n" + state([4, 9, 3]))
    t.feed("\n" + join + TRIGGER)  # the model wrote it: its own text
    assert " 4*6=" in t.need.suffixes and " 9-3=" not in t.need.suffixes


def at_goal(nums: list[int], target: int, written: str) -> OperationTracker:
    """A tracker after the state line (target `target`) and the operation line `written`."""
    t = OperationTracker("Moving to Node #0\n" + state(nums, target))
    t.feed(written + "\n")
    return t


def test_goal_line_after_one_resulting_number_is_forced():
    # a near miss (1 off the target): unequal, the whole line up to its newline
    t = at_goal([6, 73], 80, "Exploring Operation: 73+6=79, Resulting Numbers: [79]")
    assert t.need == Force("79,80 unequal: No Solution")
    t = at_goal([6, 73], 79, "Exploring Operation: 73-6=67, Resulting Numbers: [67]")
    assert t.need == Force("67,79 unequal: No Solution")
    t = at_goal([6, 73], 79, "Exploring Operation: 73+6=79, Resulting Numbers: [79]")
    assert t.need == Force("79,79 equal: Goal Reached") and t.need.text + "\n" == P.goal_line(79, 79)
    t.feed("79,79 equal")
    assert t.need == Force(": Goal Reached")
    t.feed(": Goal Reached")
    assert t.need is SEPARATE  # the line is written; a digit may not follow (as after a result)
    t.feed("\n")
    assert t.need is None
    # N as the model wrote it in the list (the result may be right, the copy not)
    t = at_goal([6, 73], 79, "Exploring Operation: 73+6=79, Resulting Numbers: [78]")
    assert t.need == Force("78,79 unequal: No Solution")
    # a prompt that ends right after the operation line: the completion starts with it
    t = OperationTracker(state([6, 73], 79) + "Exploring Operation: 73+6=79, Resulting Numbers: [79]\n")
    assert t.need == Force("79,79 equal: Goal Reached")


def test_goal_line_char_by_char_and_in_one_piece():
    t = at_goal([6, 73], 79, "Exploring Operation: 73-6=67, Resulting Numbers: [67]")
    for k, ch in enumerate("67,79 unequal: No Solution"):
        assert t.need == Force("67,79 unequal: No Solution"[k:])
        t.feed(ch)
    assert t.need is SEPARATE
    t = at_goal([6, 73], 79, "Exploring Operation: 73-6=67, Resulting Numbers: [67]")
    t.feed("67,79 unequal: No Solution\nExploring Operation: 73")  # the next line is read as before
    assert isinstance(t.need, Choose) and t.need.suffixes == ("*6=", "+6=", "-6=")


def test_no_goal_line_forced_where_it_does_not_follow():
    for written in ("Exploring Operation: 73-6=67, Resulting Numbers: [67, 5]",  # more than one number
                    "Exploring Operation: 73-6=67, Resulting Numbers: []",
                    "Exploring Operation: 73-6=67, Resulting Numbers: [6x]",  # does not parse
                    "Exploring Operation: 73-6=67, Resulting Numbers: [67] ",  # not the end of the line
                    "Generated Node #0,0: 79:[67] Operation: 73-6=67",  # not an operation line
                    "Current State: 79:[67], Operations: ['73-6=67']"):
        assert at_goal([6, 73], 79, written).need is None
    # no state line: the target is unknown
    t = OperationTracker("Moving to Node #0\n")
    t.feed("Exploring Operation: 73-6=67, Resulting Numbers: [67]\n")
    assert t.need is None
    t = OperationTracker("Current State: 9" + "9" * 40 + ":[6, 73], Operations: []\n")  # a target past 40 digits
    t.feed("Exploring Operation: 73-6=67, Resulting Numbers: [67]\n")
    assert t.need is None


def test_goal_line_target_from_own_state_not_inserted_join_text():
    """Join text in the prompt: neither its state lines (the target) nor its operation lines
    count; the thread's own state line does."""
    path = P.solution_path(25, [4, 6], ["4*6=24"], "0,0")  # a child's path, another target
    join = P.join_text([P.ChildResult(0, 1, "0,0", path)])
    t = OperationTracker("Moving to Node #0\n" + state([4, 9, 3], 30) + join)
    assert t.need is None and t.target == 30
    t.feed("Exploring Operation: 4*6=24, Resulting Numbers: [24]\n")
    assert t.need == Force("24,30 unequal: No Solution")
    # the prompt ends inside join text, right after one of its operation lines: not forced
    inside = P.JOIN_START + path[: path.index("\n24,25") + 1]
    assert OperationTracker("Moving to Node #0\n" + state([4, 9, 3], 30) + inside).need is None
    # join text the model wrote is its own: its state line counts
    t = OperationTracker("Moving to Node #0\n" + state([4, 9, 3], 30))
    t.feed("\n" + join + "Exploring Operation: 4*6=24, Resulting Numbers: [24]\n")
    assert t.need == Force("24,25 unequal: No Solution")


def test_model_writing_something_else_abandons_the_goal_line():
    line = "Exploring Operation: 73-6=67, Resulting Numbers: [67]"
    t = at_goal([6, 73], 79, line)
    t.feed("67,78")  # leaves it at `8`
    assert t.need is None
    t.feed(" unequal: No Solution")
    assert t.need is None
    t.feed("\n")
    assert t.need is None
    # a trigger later on the line is still read: in the same piece, in a later one, after the goal line
    for pieces in (["Exploring Operation: 73"], ["Moving", " Exploring Operation:"],
                   ["67,79 unequal: No SolutionExploring Operation:"], ["6", "x", "Exploring Operation: 7"]):
        t = at_goal([6, 73], 79, line)
        for piece in pieces:
            t.feed(piece)
        assert isinstance(t.need, Choose), pieces
    # and a result after it is forced as before
    t = at_goal([6, 73], 79, line)
    t.feed("Exploring Operation: 73-6=")
    assert t.need == Force("67")


@pytest.mark.parametrize("sos", [False, True])
def test_solver_traces_are_legal_and_constrained_exactly_in_their_operations(sos):
    """Char by char through every segment of solver traces: `need` is set exactly inside
    ` A op B=C` of an operation line and on the goal line after a single-number result, the
    trace's next character is one that is allowed, and inside the result or goal line it is
    the forced one."""
    checked, goals = 0, 0
    for tree in solver_traces(6, "sos" if sos else "apr"):
        for th in tree.walk():
            for call, seg in zip(th.calls(), th.segments):
                context = call[: len(call) - len(seg)]
                inside = {}  # index in seg -> ("op", None), ("result", rest) or ("end", None)
                for m in OP_LINE.finditer(seg):
                    for k in range(m.start() + len(TRIGGER), m.start(4)):
                        inside[k] = ("op", None)
                    for k in range(m.start(4), m.end(4)):
                        inside[k] = ("result", seg[k:m.end(4)])
                    inside[m.end(4)] = ("end", None)
                for m in GOAL_LINE.finditer(call):  # the goal line written after an operation line
                    if m.start(1) >= len(context):
                        a, b = m.start(1) - len(context), m.end(1) - len(context)
                        for k in range(a, b):
                            inside[k] = ("result", seg[k:b])
                        inside[b] = ("end", None)
                        goals += 1
                t = OperationTracker(context)
                for k, ch in enumerate(seg):
                    kind, rest = inside.get(k, (None, None))
                    if kind is None:
                        assert t.need is None
                    elif kind == "op":
                        assert any(s.startswith(ch) for s in t.need.suffixes)
                    elif kind == "result":
                        assert t.need == Force(rest)
                    else:
                        assert t.need is SEPARATE and not ch.isdigit()
                    t.feed(ch)
                    checked += kind is not None
    assert checked > 500 and goals > 20


# ---------------------------------------------------------------------------- tokens

def merged_tokenizer():
    """Characters plus merged tokens that cross operand, operator and `=` boundaries."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.add_tokens([AddedToken(t, normalized=False) for t in (TRIGGER, " 12", "12", "24", "3=", " 9", "6,", "=1", "-3")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


@functools.lru_cache(maxsize=1)
def bpe_tokenizer():
    """A byte-level BPE (GPT-2's pre-tokenizer and decoder) trained on solver traces: it merges
    digits (`79`), words with their leading space (` unequal`) and punctuation its own way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t.text() for t in solver_traces(12) + solver_traces(12, "sos")], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


TOKENIZERS = {"apr": build_tokenizer, "chars": make_char_tokenizer, "merged": merged_tokenizer, "bpe": bpe_tokenizer}


def write(row: ExactRow, tok, text: str) -> list[int]:
    """Feed `text` to `row` token by token as a model that means to write it would: a forced
    token where the row forces one (it must be the text's next piece), else the tokenizer's
    first token of what is left. The ids fed, in order."""
    fed, at = [], 0
    while at < len(text):
        i = row.force if row.force is not None else tok.encode(text[at:], add_special_tokens=False)[0]
        piece = row.table.texts[i]
        assert piece and text.startswith(piece, at), (text[at:], piece)
        assert row.allow is None or i in row.allow
        row.feed(i)
        fed.append(i)
        at += len(piece)
    return fed


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_tokens_spell_operations_and_results(name):
    """Writing each legal operation of random states token by token: every token is allowed,
    then the forced tokens decode to exactly the result, and a digit after it is forbidden."""
    tok = TOKENIZERS[name]()
    table = TokenTable(tok, len(tok))
    rng = random.Random(1)
    for _ in range(40):
        nums = [rng.choice([2, 3, 9, 12, 24, 40]) for _ in range(rng.randint(2, 4))]
        prompt = "Moving to Node #0\n" + state(nums) + TRIGGER
        ops = sorted(heads(tuple(sorted(nums))).items())
        for head, result in rng.sample(ops, min(5, len(ops))):
            row = ExactRow(table, prompt)
            ids = tok.encode(TRIGGER + head, add_special_tokens=False)[len(tok.encode(TRIGGER, add_special_tokens=False)):]
            for i in ids:
                assert row.allow is not None and i in row.allow and row.force is None
                row.feed(i)
            forced = []
            while row.force is not None:
                forced.append(row.force)
                row.feed(row.force)
            ctx = tok.encode(TRIGGER, add_special_tokens=False)
            assert tok.decode(ctx + ids + forced) == TRIGGER + head + str(result)
            text = head + str(result)
            assert row.forced == len(forced) and row.spans(ids + forced, text) == [(len(head), len(text))]
            assert row.forbid and set(table.digit_initial) >= {i for i in range(len(tok)) if table.texts[i][:1].isdigit()}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_tokens_write_the_goal_line(name):
    """After an operation line with one resulting number, the row is active at the line's
    start and forces the goal line (words and `,` included) whatever the tokenizer, counted
    and spanned like results; then a digit is forbidden and the row is free again."""
    tok = TOKENIZERS[name]()
    table = TokenTable(tok, len(tok))
    prompt = "Moving to Node #0\n" + state([6, 73], 79)
    for op, goal in (("73-6=67", "67,79 unequal: No Solution"), ("73+6=79", "79,79 equal: Goal Reached")):
        value = op.split("=")[1]
        row = ExactRow(table, prompt)
        line = f"Exploring Operation: {op}, Resulting Numbers: [{value}]"
        ids = write(row, tok, line)
        at = line.index("=") + 1
        assert row.spans(ids, line) == [(at, at + len(value))]  # the result, forced
        assert not row.active and row._held  # after the result: tokens held, read at the newline
        ids += write(row, tok, "\n")
        assert row.active and row.force is not None  # the goal line's first token, at the line's start
        before, forced = row.forced, []
        while row.force is not None:
            forced.append(row.force)
            row.feed(row.force)
        assert "".join(table.texts[i] for i in forced) == goal
        if name in ("apr", "bpe"):  # as the tokenizer itself spells it (ours: the verdict is one token)
            assert forced == tok.encode(goal, add_special_tokens=False)
        assert row.forced == before + len(forced) and row.forbid
        ids += forced
        text = line + "\n" + goal
        assert row.spans(ids, text) == [(at, at + len(value)), (len(line) + 1, len(text))]
        ids += write(row, tok, "\n")
        assert not row.active
        assert tok.decode(tok.encode(prompt, add_special_tokens=False) + ids) == prompt + text + "\n"
        row = ExactRow(table, prompt + line + "\n")  # a prompt that ends where the goal line starts
        assert row.active and row.force == forced[0]
    if name == "apr":
        assert [table.texts[i] for i in forced] == ["7", "9", ",", "7", "9", " ", "equal: Goal Reached"]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_tokens_leave_other_lines_free(name):
    """Held tokens: lines that are no operation line with one resulting number end without
    forcing anything (a `Generated Node` line holds the same list; a multi-number list)."""
    tok = TOKENIZERS[name]()
    table = TokenTable(tok, len(tok))
    row = ExactRow(table, "Moving to Node #0\n" + state([6, 73], 79))
    write(row, tok, "Exploring Operation: 73-6=67, Resulting Numbers: [6, 67]\n")
    assert not row.active
    write(row, tok, "Generated Node #0,0: 79:[67] Operation: 73-6=67\n")
    assert not row.active
    write(row, tok, "Moving to Node #0,0\nCurrent State: 79:[67], Operations: ['73-6=67']\n")
    assert not row.active and row.ops.target == 79 and row.ops.nums == (67,)
    row = ExactRow(table, "Moving to Node #0\n")  # no state line: target unknown
    write(row, tok, "Exploring Operation: 73-6=67, Resulting Numbers: [67]\n")
    assert not row.active and row.force is None


def test_merged_tokens_allowed_only_where_legal():
    tok = merged_tokenizer()
    table = TokenTable(tok, len(tok))
    tid = tok.convert_tokens_to_ids
    row = ExactRow(table, state([12, 2, 9, 3]) + TRIGGER)
    assert {tid(" 12"), tid(" 9"), tid(" ")} <= set(row.allow) and tid("=1") not in row.allow
    for piece in (" 12", "*", "2", "="):
        row.feed(tid(piece))
    assert row.force == tid("24")  # the longest token that begins the result
    row = ExactRow(table, state([12, 2, 9, 3]) + TRIGGER)
    for piece in (" 12", "+"):
        row.feed(tid(piece))
    assert tid("12") not in row.allow and tid("3=") in row.allow  # one 12 only; `3=` ends the operand
    row = ExactRow(table, state([12, 2, 9, 3]) + TRIGGER)
    row.feed(tid(" 9"))
    assert tid("-3") in row.allow  # 9-3 is legal
    row = ExactRow(table, state([12, 2, 9, 3]) + TRIGGER + " 3")
    assert tid("-3") not in row.allow  # 3-3 needs two 3s


# ---------------------------------------------------------------------------- engine

def steer(engine: LocalEngine, want, bonus: float = 100.0) -> None:
    """A model made to take decisions: `want(seq)` (a token id) gets `bonus` added to its
    logit at every step; the engine's own sampling, masking and forcing do the rest."""
    prefill, decode = engine.runner.prefill, engine.runner.decode

    def prefill_(seqs):
        for g in prefill(seqs):
            for i, s in enumerate(g.ready):
                g.logits[i, want(s)] += bonus
            yield g

    def decode_(b):
        logits, x = decode(b)
        for i, s in enumerate(b.seqs):
            logits[i, want(s)] += bonus
        return logits, x

    engine.runner.prefill, engine.runner.decode = prefill_, decode_


WRONG = "Exploring Operation: 77+88=5, Resulting Numbers: [1]"


def wants_wrong_operations(tok):
    """Write `WRONG` line after line; once the line left it (the mask chose otherwise), finish
    it as an operation line (`, Resulting Numbers: [1]`); end a goal line (the engine's)."""
    def want(s) -> int:
        line = tok.decode(s.gen).rsplit("\n", 1)[-1]
        if WRONG.startswith(line):
            nxt = WRONG[len(line)] if len(line) < len(WRONG) else "\n"
        elif line.endswith((" equal: Goal Reached", " unequal: No Solution")):
            nxt = "\n"
        else:
            m = OP_LINE.match(line)
            tail = ", Resulting Numbers: [1]\n"
            rest = line[m.end():] if m else None
            nxt = tail[len(rest)] if rest is not None and tail.startswith(rest) else "7"
        return tok.convert_tokens_to_ids(nxt)
    return want


def test_engine_writes_only_legal_operations_when_the_model_wants_wrong_ones(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=4, max_len=512, device=DEVICE, dtype="float32")
    steer(eng, wants_wrong_operations(eng.tokenizer))
    prompts = ["Moving to Node #0\n" + state(n) for n in ([4, 9, 3, 7], [5, 5, 2, 40], [12, 3, 3], [8, 1])]
    reqs = [Request(f"{mode}{i}/{k}", p + "\n", 300, [], SamplingParams(temperature=1.0, seed=k), arithmetic=mode)
            for mode in ("exact", "model") for i, p in enumerate(prompts) for k in range(2)]
    outs = eng.run(reqs)
    exact = [(r, c) for r, c in zip(reqs, outs) if r.arithmetic == "exact"]
    total = forced = goals = 0
    for r, c in exact:
        assert c.finish_reason == "length"  # the last line is cut: competence would count it as malformed
        cut = c.text[: c.text.rfind("\n") + 1]
        ops, wrong = operation_errors(r.prompt + cut)
        assert wrong == 0 and ops >= 3
        v = verdict_errors(r.prompt + cut)  # `1,24 unequal: No Solution` after each `[1]`, forced
        assert ops - 1 <= v["verdicts"] <= ops and v["verdict_errors"] == 0  # the last one may be cut
        total += ops
        goals += v["verdicts"]
        assert c.forced_tokens == sum(b - a for a, b in c.forced_spans)  # one char token per character
        assert [c.text[a:b] for a, b in c.forced_spans if b <= len(cut)] == forced_texts(cut)
        forced += c.forced_tokens
    assert total >= 30 and forced > 0 and goals >= total - len(exact)
    assert sum(operation_errors(r.prompt + c.text)[1] for r, c in zip(reqs, outs) if r.arithmetic == "model") > 10
    assert all(c.forced_tokens == 0 and c.forced_spans == [] for r, c in zip(reqs, outs) if r.arithmetic == "model")


def test_engine_prompt_that_ends_inside_an_operation(tiny_model_dir):
    """The first token (sampled after prefill) is constrained too."""
    eng = LocalEngine(tiny_model_dir, max_slots=4, max_len=256, device=DEVICE, dtype="float32")
    nums = [4, 9, 3, 7]
    for written in ("", " 9", " 9/", " 9-3="):
        prompt = "Moving to Node #0\n" + state(nums) + TRIGGER + written
        reqs = [Request(f"{written}{k}", prompt, 8, [], SamplingParams(temperature=1.0, seed=k), arithmetic="exact")
                for k in range(4)]
        for c in eng.run(reqs):
            m = OP_LINE.match(TRIGGER + written + c.text)
            a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            assert sorted([a, b]) in [sorted(p) for p in itertools.permutations(nums, 2)]
            assert apply_op(a, op, b) == r and not c.text[m.end(4) - len(TRIGGER + written):][:1].isdigit()


def test_engine_prompt_that_ends_before_a_goal_line(tiny_model_dir):
    """The first token after prefill starts the forced goal line; the model goes on after it."""
    eng = LocalEngine(tiny_model_dir, max_slots=4, max_len=256, device=DEVICE, dtype="float32")
    prompt = "Moving to Node #0\n" + state([6, 73], 79)
    for line, goal in (("73-6=67, Resulting Numbers: [67]", "67,79 unequal: No Solution"),
                       ("73+6=79, Resulting Numbers: [79]", "79,79 equal: Goal Reached")):
        reqs = [Request(f"{goal}{k}", prompt + TRIGGER + " " + line + "\n", 40, [], SamplingParams(temperature=1.0, seed=k),
                        arithmetic="exact") for k in range(3)]
        for c in eng.run(reqs):
            assert c.text.startswith(goal) and not c.text[len(goal):][:1].isdigit()
            assert c.forced_spans == [(0, len(goal))] and c.forced_tokens == len(goal)  # one char token each


def test_engine_text_without_operations_is_untouched(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=4, max_len=256, device=DEVICE, dtype="float32")
    prompts = ["Moving to Node #0\n" + state([4, 9, 3]), "hi", state([5, 5]) + "Generated Node #0,1: 24:[4, 6]"]
    for sp in (SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9, seed=3)):
        runs = [eng.run([Request(f"{m}{i}", p, 40, [], sp, arithmetic=m) for i, p in enumerate(prompts)]) for m in ("model", "exact")]
        for a, b in zip(*runs):
            assert TRIGGER not in a.text
            assert a.token_ids == b.token_ids and a.text == b.text and b.forced_tokens == 0


def test_unknown_mode_is_an_error_completion(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=2, max_len=64, device=DEVICE, dtype="float32")
    (c,) = eng.run([Request("x", "hi", 4, [], arithmetic="rounded")])
    assert c.finish_reason == "error" and "arithmetic" in c.error


# ---------------------------------------------------------------------------- replay reference

def corrupt(text: str) -> str:
    """Every operation line's result wrong (same number of digits: the last one changed)."""
    return OP_LINE.sub(lambda m: m.group(0)[:-1] + str((int(m.group(0)[-1]) + 1) % 10), text)


def corrupt_verdicts(text: str) -> str:
    """Every goal line after an operation line says the wrong verdict (our tokenizer spells
    either in one token, so the text keeps its token count)."""
    def flip(m: re.Match) -> str:
        head, _, verdict = m.group(1).partition(" ")
        wrong = "unequal: No Solution" if verdict.startswith("equal") else "equal: Goal Reached"
        return m.group(0)[: m.start(1) - m.start(0)] + head + " " + wrong
    return GOAL_LINE.sub(flip, text)


def follow(tok, script: dict[str, str]):
    """The decisions of a script: the token its continuation has at this position, then EOS."""
    cache: dict[str, list[int]] = {}

    def want(s) -> int:
        ids = cache.get(s.req.prompt)
        if ids is None:
            ids = cache[s.req.prompt] = tok.encode(script[s.req.prompt], add_special_tokens=False) + [tok.eos_token_id]
        return ids[min(len(s.gen), len(ids) - 1)]
    return want


@pytest.fixture(scope="module")
def apr_model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("apr_tiny"))


def test_replay_engine_fixes_corrupted_results_token_for_token(apr_model_dir):
    """SoS traces: requests following the corrupted traces (results and goal verdicts), exact
    and unassisted side by side in one batch: exact gives the solver's tokens, unassisted the
    corrupted text as it is."""
    script = script_of(solver_traces(8, "sos")[2:5])
    eng = LocalEngine(apr_model_dir, max_slots=8, max_len=3072, device=DEVICE, dtype="float32")
    tok = eng.tokenizer
    bad = {ctx: corrupt_verdicts(corrupt(seg)) for ctx, seg in script.items()}
    assert all(bad[c] != script[c] for c in script)
    assert all(verdict_errors(bad[c])["verdict_errors"] == len(GOAL_LINE.findall(bad[c])) > 0 for c in script)
    steer(eng, follow(tok, bad))
    reqs = [Request(f"{m}{i}", ctx, 3000, [], arithmetic=m) for i, ctx in enumerate(script) for m in ("exact", "model")]
    for r, c in zip(reqs, eng.run(reqs)):
        want = script[r.prompt] if r.arithmetic == "exact" else bad[r.prompt]
        assert c.text == want and c.finish_reason == "eos"
        assert c.token_ids[:-1] == tok.encode(want, add_special_tokens=False)
        # results and goal lines, as our tokenizer spells them (`7` `9` `,` `9` `1` ` ` `unequal: No Solution`)
        texts = forced_texts(r.prompt + want, len(r.prompt))
        written = sum(len(tok.encode(x, add_special_tokens=False)) for x in texts)
        assert c.forced_tokens == (written if r.arithmetic == "exact" else 0)
        if r.arithmetic == "exact":
            assert [c.text[a:b] for a, b in c.forced_spans] == texts
            assert verdict_errors(c.text)["verdict_errors"] == 0


def test_replay_runtime_apr_records_match_the_solver(apr_model_dir):
    """APR traces through the runtime (spawns, joins, resumes) with exact arithmetic: every
    record is the solver's text, says it is exact, and counts the forced result digits and
    goal lines; no goal line has a wrong verdict."""
    trees = solver_traces(5)
    script = script_of(trees)
    eng = LocalEngine(apr_model_dir, max_slots=48, max_len=2048, device=DEVICE, dtype="float32")
    bad = {ctx: corrupt_verdicts(corrupt(seg)) for ctx, seg in script.items()}  # the model wants wrong verdicts too
    assert sum(verdict_errors(seg)["verdict_errors"] for seg in bad.values()) > 20
    steer(eng, follow(eng.tokenizer, bad))
    cfg = RuntimeConfig(method="apr", context=2048, arithmetic="exact", temperature=0.0)
    recs = sorted(Runtime(eng, cfg).run(enumerate(PROBS[:5])), key=lambda r: r.index)
    spawned = 0
    for rec, tree in zip(recs, trees):
        assert rec.text == tree.text() and rec.arithmetic == "exact"
        own = [seg for th in tree.walk() for seg in th.segments]
        written = [x for seg in own for x in forced_texts(seg)]
        assert rec.forced_tokens == sum(len(eng.tokenizer.encode(x, add_special_tokens=False)) for x in written) > 0
        assert any(GOAL_LINE.search(seg) for seg in own)
        d = rec.to_json()
        assert d["arithmetic"] == "exact" and d["threads"]["forced_tokens"] <= d["forced_tokens"]
        stack = [rec.threads]
        while stack:
            th = stack.pop()
            for seg, spans in zip(th["segments"], th["forced_spans"]):
                assert [seg[a:b] for a, b in spans] == forced_texts(seg)
                assert verdict_errors(seg)["verdict_errors"] == 0
            stack.extend(c for g in th["children"] for c in g)
        spawned += rec.children
    assert spawned > 5
    m = measure(recs)  # competence over every thread of the records: no goal line has a wrong verdict
    assert m["verdicts"] > 20 and m["verdict_errors"] == 0 and m["near_miss_verdicts"] > 0


def test_runtime_default_records_say_nothing_and_scripted_engine_refuses_exact():
    tok = build_tokenizer()
    script = script_of(solver_traces(2))
    recs = Runtime(ScriptedEngine(tok, script), RuntimeConfig(method="apr", context=100_000, temperature=0.0)).run(enumerate(PROBS[:2]))
    for r in recs:
        d = r.to_json()
        assert "arithmetic" not in d and "forced_tokens" not in d and "forced_tokens" not in d["threads"]
    with pytest.raises(UserError, match="arithmetic"):
        Runtime(ScriptedEngine(tok, script), RuntimeConfig(method="apr", context=4096, temperature=0.0, arithmetic="exact"))
    with pytest.raises(UserError, match="arithmetic"):
        RuntimeConfig(arithmetic="rounded")
