"""Drill documents: short extra documents mixed into the demonstrations, each aimed at one
skill a small model fails to learn from whole traces (issue 17).

- **Arithmetic facts**: `Exploring Operation: 87*72=6264` lines in the trace's own syntax.
- **Node drills**: a trace cut at a `Moving to Node #X` line, with X replaced by another node
  the trace has generated, followed by that node's `Current State` line. In a demonstration
  the node a search moves to is the one its heuristic ranks best, so a model can predict the
  state line from the heuristic alone and never read the node id it has just written; the
  CPU line's SoS+ models do exactly that (asked for another id, they copy the best node's
  state: `docs/reports/cpu_runs.md`, session 4), and in free runs nearly half of their moves
  copy a state that is not the named node's. A drill's prefix and id carry no loss (the
  search order stays the demonstrations'); only the state line does, and the drill ends
  without a trained EOS, so the only thing it teaches is to copy the state of the node named.
- **Goal drills**: `Exploring Operation: 38-17=21, Resulting Numbers: [21]` and its goal line,
  `21,23 unequal: No Solution`, for a target beside the result (a near miss) or equal to it.
  The CPU line's APR children write `equal: Goal Reached` for about half the results within
  9 of their target (149 of 281 near misses in the session-5 anatomy, `docs/reports/cpu_runs.md`),
  and the first such false claim wins the join. In demonstrations near misses are rare (about
  one comparison in twenty), so a small model learns "the leading digits match" for "equal".
  Only the verdict (`equal: Goal Reached` / `unequal: No Solution`) and its newline carry loss.
- **Product drills**: `Exploring Operation: 87*72=6264` lines for the products of 3+ digits the
  demonstrations write, only the result's digits trained. Products are where the CPU line's
  arithmetic errors are (about 42% of product lines wrong, 73-82% of those with 4-digit results,
  every other operation at 1-3%; `docs/reports/cpu_runs.md`, session 7), and a trace writes a
  few products in hundreds of tokens. Unlike arithmetic facts, the operands carry no loss: in a
  trace they are read from the state, and a drill must not teach that they are drawn at random.
"""

from __future__ import annotations

import random
import re

from apr import protocol
from apr.competence import near_miss
from apr.train.packing import Demonstration

FACT_LINES_PER_DOC = 16
FACT_MIN_RESULT = 100  # 3+ digit results: where small models' arithmetic fails (issue 17)
_OP_LINE = re.compile(r"Exploring Operation: (\d+[-+*/]\d+=(\d+))")
PRODUCT_LINES_PER_DOC = 16
_PRODUCT_LINE = re.compile(r"Exploring Operation: (\d+\*\d+=)(\d+)(, Resulting Numbers: \[[^\]\n]*\])")
GOAL_LINES_PER_DOC = 16
GOAL_EQUAL_SHARE = 0.4  # of a drill's lines, those whose target is the result
_TERMINAL = re.compile(r"Exploring Operation: (\d+[-+*/]\d+=(\d+)), Resulting Numbers: \[\d+\]\n")
_GOAL = re.compile(r"^\d+,(\d+) (?:un)?equal: ", re.M)


def arithmetic_facts(demos: list[Demonstration], share: float, seed: int,
                     min_result: int = FACT_MIN_RESULT) -> list[Demonstration]:
    """Documents of arithmetic facts in the trace's own syntax, `Exploring Operation: 87*72=6264`
    one per line, `FACT_LINES_PER_DOC` to a document, worth `share` of the demonstrations'
    characters. Lines are drawn (with replacement, so frequent operations stay frequent) from
    the operations the demonstrations themselves write with a result of at least
    `min_result` (by default 3+ digits: the large results small models get wrong)."""
    pool, chars = [], 0
    for d in demos:
        for ts in d.strings:
            chars += len(ts.text) - ts.new_from
            pool.extend(m.group(1) for m in _OP_LINE.finditer(ts.text, ts.new_from) if int(m.group(2)) >= min_result)
    if share <= 0 or not pool:
        return []
    rng, out, made = random.Random(seed), [], 0
    while made < share * chars:
        text = "".join(f"Exploring Operation: {rng.choice(pool)}\n" for _ in range(FACT_LINES_PER_DOC))
        out.append(Demonstration("<arithmetic facts>", len(out) + 1, demos[0].method,
                                 [protocol.TrainingString(text, 0, [], 0)]))
        made += len(text)
    return out


def move_points(text: str) -> list[protocol.Move]:
    """The moves of `text` to a node another generated node could stand for."""
    return [mv for mv in protocol.node_moves(text) if any(n != mv.node for n in mv.generated)]


def node_drills(demos: list[Demonstration], per_demo: float, seed: int) -> list[Demonstration]:
    """`per_demo` node drills per demonstration (0.5: one for every two), each from a random
    training string of a random demonstration, cut at a random move: the text before it (no
    loss), `Moving to Node #Y` for another generated node Y (no loss), and Y's state line
    (trained). Seeded: the same demonstrations and seed give the same drills."""
    if per_demo <= 0 or not demos:
        return []
    rng, out = random.Random(seed), []
    want = round(per_demo * len(demos))
    tries = 0
    while len(out) < want and tries < 20 * want:
        tries += 1
        d = rng.choice(demos)
        ts = rng.choice(d.strings)
        points = move_points(ts.text)
        if not points:
            continue
        mv = rng.choice(points)
        node = rng.choice([n for n in mv.generated if n != mv.node])
        state, at = mv.generated[node], mv.at
        head = ts.text[:at] + protocol.moving_line(node)
        text = head + protocol.state_line(state.target, state.nums, state.ops)
        # everything the trace and the drill chose is context; only the copy is trained
        inserted = [(0, len(head))]
        out.append(Demonstration("<node drills>", len(out) + 1, d.method,
                                 [protocol.TrainingString(text, min(ts.prompt_end, at), inserted, len(head))],
                                 stops=False))
    return out


def near_targets(x: int, targets: set[int]) -> list[int]:
    """The targets (of `targets`) a result `x` is easily mistaken for (`competence.near_miss`)."""
    return sorted(t for t in targets if near_miss(x, t))


def goal_drills(demos: list[Demonstration], per_demo: float, seed: int) -> list[Demonstration]:
    """`per_demo` goal drills per demonstration, each `GOAL_LINES_PER_DOC` pairs of lines: a
    last operation the demonstrations write (`Exploring Operation: a-b=x, Resulting Numbers:
    [x]`) and its goal line for a target t the demonstrations have: t = x for a share
    GOAL_EQUAL_SHARE of the pairs, else a near miss (`competence.near_miss`). The operation and `x,t `
    are context; the verdict and its newline are trained; no EOS. Seeded: same demonstrations, same drills."""
    if per_demo <= 0 or not demos:
        return []
    by_result: dict[int, list[str]] = {}
    targets: set[int] = set()
    for d in demos:
        for ts in d.strings:
            for m in _TERMINAL.finditer(ts.text):
                by_result.setdefault(int(m.group(2)), []).append(m.group(1))
            targets.update(int(m.group(1)) for m in _GOAL.finditer(ts.text))
    equal = sorted(t for t in targets if t in by_result)
    near_of = {x: ts for x in by_result if (ts := near_targets(x, targets))}
    near = sorted(near_of)
    if not equal or not near:
        return []
    rng, out = random.Random(seed), []
    for k in range(round(per_demo * len(demos))):
        text, context = "", []
        for _ in range(GOAL_LINES_PER_DOC):
            if rng.random() < GOAL_EQUAL_SHARE:
                x = t = rng.choice(equal)
            else:
                x = rng.choice(near)
                t = rng.choice(near_of[x])
            head = f"Exploring Operation: {rng.choice(by_result[x])}, Resulting Numbers: [{x}]\n{x},{t} "
            context.append((len(text), len(text) + len(head)))
            text += head + protocol.goal_line(x, t)[len(f"{x},{t} "):]
        out.append(Demonstration("<goal drills>", k + 1, demos[0].method,
                                 [protocol.TrainingString(text, 0, context, 0)], stops=False))
    return out


def product_drills(demos: list[Demonstration], per_demo: float, seed: int,
                   min_result: int = FACT_MIN_RESULT, in_state: bool = False) -> list[Demonstration]:
    """`per_demo` product drills per demonstration, each `PRODUCT_LINES_PER_DOC` lines
    `Exploring Operation: a*b=c` drawn (with replacement: frequent products stay frequent) from
    the products of at least `min_result` the demonstrations write. Everything but c is context;
    the digits of c are trained; no EOS. `in_state`: each line as the trace has it, after the
    `Current State` line it was explored from and with its `Resulting Numbers` (both context),
    so a drill reads like the trace it is meant to help. Seeded: same demonstrations, same drills."""
    if per_demo <= 0 or not demos:
        return []
    pool = []  # (context before c, c, context after c)
    for d in demos:
        for ts in d.strings:
            for m in _PRODUCT_LINE.finditer(ts.text, ts.new_from):
                if int(m.group(2)) < min_result:
                    continue
                head, tail = "Exploring Operation: " + m.group(1), "\n"
                if in_state:
                    state = ts.text.rfind("Current State: ", 0, m.start())
                    if state < 0:
                        continue
                    head = ts.text[state:ts.text.index("\n", state) + 1] + head
                    tail = m.group(3) + "\n"
                pool.append((head, m.group(2), tail))
    if not pool:
        return []
    rng, out = random.Random(seed), []
    for k in range(round(per_demo * len(demos))):
        text, context = "", []
        for _ in range(PRODUCT_LINES_PER_DOC):
            head, result, tail = rng.choice(pool)
            context.append((len(text), len(text) + len(head)))
            text += head + result
            # what follows the result is context (in a trace, a comma: not this drill's to teach)
            context.append((len(text), len(text) + len(tail)))
            text += tail
        out.append(Demonstration("<product drills>", k + 1, demos[0].method,
                                 [protocol.TrainingString(text, 0, context, 0)], stops=False))
    return out
