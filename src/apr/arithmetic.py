"""Exact arithmetic, an opt-in decoding mode (`--arithmetic exact`; the default, `model`,
leaves every token to the model): the runtime writes the parts of an `Exploring Operation:`
line that have one correct answer, and the goal line that follows a single-number result; the
model makes every decision.

While a thread writes `Exploring Operation: A op B=C`, the text from the trigger
`Exploring Operation:` up to `=` may only spell an operation on the thread's current numbers
(` A op B=`: operands A and B drawn from the state as a multiset), and C, the result, is
written for the model. After a finished line `Exploring Operation: ..., Resulting Numbers: [N]`
(one number N, read from the line as the model wrote it), the next line up to its newline,
the goal test, is written for the model too: `N,T equal: Goal Reached` when N is the target T
of the thread's current state line, else `N,T unequal: No Solution` (protocol.goal_line, the
published text byte for byte). Everything else is the model's: whether to write an operation
line at all, which pair and operator, the `Resulting Numbers` list, the newlines, every other
line. This module decides on text; apr.engine.exact maps it onto the tokens of a tokenizer.

Legal operations are the solvers' (countdown.successors): `+` and `*` on any pair, in either
order; `-` and `/` larger operand first, `/` only when exact with a nonzero divisor. The rule
when a model heads for an illegal one: it may write only what some legal operation begins
with, so after `A` it is offered only the operators some remaining number makes legal, and
after `A op` only such numbers B (after `9/` only the divisors of 9 among the others).

The current numbers and the target are those of the latest `Current State: T:[...]` line of
the thread's own text, as the competence measures read them (competence.operation_errors): a
state line inside join text in the prompt (`<Sub Searches>` ... `<End Sub Searches>`,
children's paths the runtime inserted) does not count, nor does an `Exploring Operation` line
there.

Where no operation can be written (no state line yet, a list that does not parse, fewer than
two numbers or more than MAX_NUMBERS) or the text already left the grammar (a prompt that ends
inside a wrong operation; a token that crosses the trigger), the rest of the line is left to
the model: the competence measures then count what it wrote. So is the goal line where the
target is unknown (no state line), the `Resulting Numbers` list does not parse or holds other
than one number, or the text written differs from the goal line (a later trigger on that
line is still read).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

from apr import protocol as P
from apr.countdown import successors

MODES = ("model", "exact")  # `--arithmetic`: the model writes everything / exact arithmetic
TRIGGER = "Exploring Operation:"
MAX_NUMBERS = 16  # a state line listing more is no Countdown state: its operations are not enumerated
# A state line anywhere in a line, as competence reads it (the list may not parse): target, numbers.
STATE_RE = re.compile(r"Current State: (\d+):\[([^\]]*)\]")
RESULTS = ", Resulting Numbers: ["  # an operation line ends with its list: a goal line follows one number
MAX_DIGITS = 40  # competence reads numbers of up to 40 digits (a longer target is unknown)
_JOIN_START, _JOIN_END = P.JOIN_START.rstrip("\n"), P.JOIN_END.rstrip("\n")


def heads(nums: tuple[int, ...]) -> dict[str, int]:
    """Every legal operation on the multiset `nums` as written from the trigger up to `=`
    (` 9-3=`), with its result: the solvers' operations on each pair, taken in both orders
    (`+` and `*` may be written either way; `-` and `/` come out larger first either way)."""
    out: dict[str, int] = {}
    for a, b in permutations(nums, 2):
        for text, value in successors(a, b):
            out[" " + text[: text.index("=") + 1]] = value
    return out


class Choose:
    """A point inside ` A op B=` where the model writes the next characters: a node of the
    (lazily built) tree of a state's legal operations. `next()` maps each character that may
    follow to the next node; the node reached by `=` has the operation's `result`."""

    __slots__ = ("live", "pos", "results", "result", "_next")

    def __init__(self, live: list[str], pos: int, results: dict[str, int], result: int | None = None):
        self.live, self.pos, self.results, self.result = live, pos, results, result  # live: operations through here
        self._next: dict[str, Choose] | None = None

    def next(self) -> dict[str, "Choose"]:
        if self._next is None:
            groups: dict[str, list[str]] = {}
            for s in self.live:
                groups.setdefault(s[self.pos], []).append(s)
            self._next = {ch: Choose(g, self.pos + 1, self.results, self.results[g[0]] if ch == "=" else None)
                          for ch, g in groups.items()}
        return self._next

    @property
    def suffixes(self) -> tuple[str, ...]:
        """What may still be written up to and including `=` (sorted)."""
        return tuple(sorted(s[self.pos:] for s in self.live))


@lru_cache(maxsize=4096)
def operations(nums: tuple[int, ...]) -> Choose:
    """The tree of the legal operations on the multiset `nums` (a sorted tuple), at its root
    (right after the trigger). Kept per state: a thread writes several operations of one."""
    results = heads(nums)
    return Choose(list(results), 0, results)


NO_OPERATIONS = Choose([], 0, {})


@dataclass(slots=True)
class Force:
    """A result, or a goal line: `text` is still to be written for the model."""

    text: str


class Separate:
    """The result (or goal line) is written: the next character may be anything but a digit
    (which would change a result)."""

    def __repr__(self) -> str:
        return "Separate()"


SEPARATE = Separate()


class OperationTracker:
    """Follows a thread's text (prompt, then what is generated, in any pieces) and says what
    the next characters must be: `need` is None (free), a Choose, a Force (a result, or at a
    line's start a goal line) or SEPARATE. Work per piece is proportional to the piece, not to
    the text so far (and to the line it ends, at a newline)."""

    def __init__(self, prompt: str = ""):
        self.line = ""  # the line being written
        self.scan = 0  # the trigger is looked for from here in `line`
        self.start = -1  # where the operation being written starts in `line` (-1: none)
        self.nums: tuple[int, ...] | None = None  # the current numbers (sorted), None if unknown
        self.target: int | None = None  # the current state's target, None if unknown
        self.need: Choose | Force | Separate | None = None
        self._in_prompt, self._in_join = True, False
        self.feed(prompt)
        self._in_prompt = False

    def feed(self, text: str) -> None:
        i = 0
        while True:
            j = text.find("\n", i)
            if j < 0:
                break
            self.line += text[i:j]  # a finished line only matters for its state and the goal line it may call for
            self._end_line()
            i = j + 1
        if i < len(text):
            self._extend(text[i:])

    def abandon(self) -> None:
        """Leave the rest of this line to the model (the tokenizer cannot spell what is needed)."""
        self.need, self.start = None, -1
        self.scan = max(self.scan, len(self.line) - len(TRIGGER) + 1)

    # ---- internals ------------------------------------------------------------------
    def _extend(self, piece: str) -> None:
        old = len(self.line)
        self.line += piece
        k = 0  # characters of piece read
        while k < len(piece):
            if self.need is None:
                p = self.line.find(TRIGGER, max(self.scan, old - len(TRIGGER) + 1))
                if p < 0:
                    return
                self.start = p + len(TRIGGER)  # > old: the trigger ends in this piece
                nums = self._state(self.line[:p])
                self.need = operations(nums) if nums is not None and 2 <= len(nums) <= MAX_NUMBERS else NO_OPERATIONS
                if self.need is NO_OPERATIONS:
                    self.abandon()
                k = self.start - old
            else:
                k = self._walk(piece, k, old)

    def _walk(self, piece: str, k: int, old: int) -> int:
        """Read piece[k:] inside the operation (piece starts at `old` in the line); return
        where the operation ended in it, len(piece) when it did not."""
        need = self.need
        for k in range(k, len(piece)):
            ch = piece[k]
            if type(need) is Choose:
                need = need.next().get(ch)
                if need is None:
                    break
                if need.result is not None:  # `=`: the result follows
                    need = Force(str(need.result))
            elif type(need) is Force:
                if ch != need.text[0]:
                    need = None
                    break
                need = Force(need.text[1:]) if len(need.text) > 1 else SEPARATE
            elif ch.isdigit():  # the result is complete: a digit would change it
                need = None
                break
            else:  # complete; what follows is free (and may hold another trigger)
                self.need, self.start, self.scan = None, -1, old + k
                return k
        if need is None:  # left the grammar at piece[k]: the rest of the line is the model's,
            self.need, self.start = None, -1  # but a trigger from there on is still read
            self.scan = max(self.scan, old + k)
            return k
        self.need = need
        return len(piece)

    def _state(self, before: str) -> tuple[int, ...] | None:
        """The numbers an operation starting after `before` (its line so far) works on."""
        m = STATE_RE.search(before) if "Current State:" in before and not self._in_join else None
        return self.nums if m is None else _parse(m.group(2))

    def _end_line(self) -> None:
        line = self.line
        if self._in_prompt and line == _JOIN_START:
            self._in_join = True
        elif self._in_prompt and line == _JOIN_END:
            self._in_join = False
        elif not self._in_join and "Current State:" in line:
            m = STATE_RE.search(line)
            if m:
                t = m.group(1)
                self.target, self.nums = int(t) if len(t) <= MAX_DIGITS else None, _parse(m.group(2))
        self.line, self.scan, self.start, self.need = "", 0, -1, None
        if self.target is not None and not self._in_join and line.startswith(TRIGGER) and line.endswith("]"):
            i = line.rfind(RESULTS)  # `Exploring Operation: ..., Resulting Numbers: [N]`
            n = _parse(line[i + len(RESULTS):-1]) if i >= 0 else None
            if n is not None and len(n) == 1:  # the goal test follows: the next line is written
                self.need = Force(P.goal_line(n[0], self.target).rstrip("\n"))


def _parse(text: str) -> tuple[int, ...] | None:
    nums = P.parse_list(text, MAX_DIGITS)
    return tuple(sorted(nums)) if nums is not None else None
