import random

import pytest
from hypothesis import given, settings, strategies as st

from apr import protocol as P
from apr.checker import check
from apr.countdown import read_problems, solve
from apr.datasets import packaged_validation_set
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos

PROBS = read_problems(packaged_validation_set())[:80]
PATH = P.sos_prompt(24, [4, 9, 3]) + "Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\n" + P.goal_line(24, 24) + P.solution_path(24, [4, 9, 3], ["9-3=6", "4*6=24"])


def test_accepts_every_solver_solution():
    accepted = 0
    for i, p in enumerate(PROBS):
        thread, solved = solve_apr(p.nums, p.target, AprConfig(), random.Random(i))
        v = check(p.nums, p.target, thread.text())
        assert v.correct == solved, v.reason
        sos = solve_sos(p.nums, p.target, SosConfig(), random.Random(i))
        assert check(p.nums, p.target, sos.text()).correct == sos.text().rstrip().endswith("Goal Reached")
        accepted += v.correct
    assert accepted > len(PROBS) // 2


def test_accepts_every_exhaustive_solution():
    for p in PROBS[:20]:
        for ops in solve(p.nums, p.target, first=False)[:30]:
            text = P.goal_line(p.target, p.target) + P.solution_path(p.target, p.nums, ops)
            assert check(p.nums, p.target, text).correct
        text = P.goal_line(p.target, p.target) + P.solution_path(p.target, p.nums, p.solution)
        assert check(p.nums, p.target, text), "the file's own solution"


def test_base_case():
    v = check([4, 9, 3], 24, PATH)
    assert v.correct and v.path == ("9-3=6", "4*6=24")


@pytest.mark.parametrize(
    "old,new,reason",
    [
        ("Exploring Operation: 4*6=24", "Exploring Operation: 5*6=24", "operand"),  # changed operand
        ("Exploring Operation: 4*6=24", "Exploring Operation: 4*6=25", "arithmetic"),  # changed result
        ("9-3=6, Resulting Numbers: [4, 6]\nGenerated", "9-3=6, Resulting Numbers: [4, 7]\nGenerated", "resulting"),
        ("Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated", "Exploring Operation: 9-2=7, Resulting Numbers: [4, 7]\nGenerated", "operand"),  # not in state
        ("Exploring Operation: 4*6=24", "Exploring Operation: 4+6=10", "resulting"),
    ],
)
def test_rejects_mutations(old, new, reason):
    text = PATH[: PATH.rfind("Moving to Node #0\n")] + PATH[PATH.rfind("Moving to Node #0\n"):].replace(old, new)
    v = check([4, 9, 3], 24, text)
    assert not v.correct and reason in v.reason


def test_rejects_missing_goal_line_and_wrong_target():
    assert not check([4, 9, 3], 24, PATH[: PATH.rfind("24,24 equal")])
    assert not check([4, 9, 3], 25, PATH)
    assert not check([4, 9, 3], 24, "")
    assert not check([4, 9, 3], 24, "No solution found.\n")


def test_rejects_illegal_subtraction_and_division():
    text = P.goal_line(2, 2) + "Moving to Node #0\nExploring Operation: 3-5=2, Resulting Numbers: [2]\n2,2 equal: Goal Reached\n"
    assert "arithmetic" in check([3, 5], 2, text).reason
    text = P.goal_line(2, 2) + "Moving to Node #0\nExploring Operation: 5/2=2, Resulting Numbers: [2]\n2,2 equal: Goal Reached\n"
    assert not check([5, 2], 2, text)


def test_over_long_numbers_are_incorrect_with_a_reason():
    big = "9" * 5000
    text = f"1,1 equal: Goal Reached\nMoving to Node #0\nExploring Operation: {big}*{big}=1, Resulting Numbers: [1]\n1,1 equal: Goal Reached\n"
    v = check([1, 2], 1, text)
    assert not v.correct and v.reason.startswith("operand not among the numbers: an over-long operation")
    v = check([1, 2], 1, f"{big},{big} equal: Goal Reached\n")
    assert not v.correct and v.reason.startswith("no final path")


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.integers(0, 200), min_size=2, max_size=6), st.integers(0, 200))
def test_never_raises_on_any_string(s, nums, target):
    v = check(nums, target, s)
    assert isinstance(v.correct, bool) and isinstance(v.reason, str)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(PATH) - 1), st.integers(0, len(PATH)), st.text(max_size=5))
def test_never_raises_on_spliced_traces(i, j, s):
    check([4, 9, 3], 24, PATH[:i] + s + PATH[j:])


# ---------------------------------------------------------------------------- the published rules
# Each case: a hand-built text on which the goal-line checker (before) and the published
# evaluation disagree, judged as the published evaluation does; and the case that keeps it honest.

def summary(*ops_lines, goal="24,24 equal: Goal Reached\n", state="Current State: 24:[4, 9, 3], Operations: []\n"):
    """A search that reached the goal, then its final path (`Moving to Node #0`, a state, the ops, the goal)."""
    return "24,24 equal: Goal Reached\nMoving to Node #0\n" + state + "".join(ops_lines) + goal


OPS = ("Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n"
       "Moving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['9-3=6']\n",
       "Exploring Operation: 4*6=24, Resulting Numbers: [24]\n")


def test_a_miscopied_state_line_is_not_read():
    text = summary(*OPS, state="Current State: 24:[4, 9, 8], Operations: ['1+1=2']\n")
    assert check([4, 9, 3], 24, text).correct  # before: "state [4, 9, 8] does not match"
    wrong_op = summary(OPS[0], "Exploring Operation: 4*8=32, Resulting Numbers: [32]\n")
    assert "operand not among the numbers" in check([4, 9, 3], 24, wrong_op).reason


@pytest.mark.parametrize("goal", ["71,70 equal: Goal Reached\n", "25,25 equal: Goal Reached\n", "24,24 equal:Goal Reached\n",
                                  "Goal Reached\n", "24,24 unequal: Goal Reached\n"])
def test_the_goal_line_numbers_are_not_read(goal):
    v = check([4, 9, 3], 24, summary(*OPS, goal=goal))
    assert v.correct and v.path == ("9-3=6", "4*6=24")  # before: "goal line malformed" or "goal 25 is not the target"
    off = summary(OPS[0], "Exploring Operation: 4+6=10, Resulting Numbers: [10]\n", goal=goal)
    v = check([4, 9, 3], 24, off)
    assert not v.correct and v.reason == "final path ends off target: [10] after 2 operations, not [24]"


def test_a_lost_final_goal_line_is_not_correct():
    """The APR root that joined a child's path, wrote its goal line, then lost the last line of
    its summary: before, the path from the prompt's `Moving to Node #0` to the parent's goal
    line replayed (through the child's path in the join) and was accepted."""
    join = ("<Sub Searches>\n<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\nMoving to Node #0,0\n"
            "Current State: 24:[4, 6], Operations: ['9-3=6']\n" + OPS[1] + "24,24 equal: Goal Reached\n<End Sub Searches>\n")
    head = P.apr_prompt(24, [4, 9, 3]) + OPS[0].split("Moving")[0] + join
    full = head + "24,24 equal: Goal Reached\nMoving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n" + "".join(OPS)
    assert check([4, 9, 3], 24, full + "24,24 equal: Goal Reached\n").correct
    v = check([4, 9, 3], 24, full)
    assert not v.correct and v.reason == "final path ends off target: [4, 9, 3] after 0 operations, not [24]"


def test_a_final_path_needs_two_goal_reached():
    once = P.sos_prompt(24, [4, 9, 3]) + "".join(OPS) + "24,24 equal: Goal Reached\n"
    v = check([4, 9, 3], 24, once)
    assert not v.correct and v.reason.startswith("no final path")  # the search reached it, but no final path follows
    assert check([4, 9, 3], 24, once + "Moving to Node #0\n" + "".join(OPS) + "24,24 equal: Goal Reached\n").correct


def test_operation_lines_match_anywhere_and_other_lines_are_ignored():
    text = summary("noise Exploring Operation: 9-3=6, Resulting Numbers: [6, 4] trailing\n", "Moving nowhere\n",
                   "Exploring Operation: 4*6=24, Resulting Numbers: [24]\n")
    assert check([4, 9, 3], 24, text).correct  # before: "malformed or over-long operation line"; lists compared sorted
    no_moving = "24,24 equal: Goal Reached\n" + "".join(OPS) + "24,24 equal: Goal Reached\n"
    assert check([4, 9, 3], 24, no_moving).correct  # before: the final path had to start at `Moving to Node #0`
    garbled = summary("Exploring Operation: 9 - 3=6, Resulting Numbers: [4, 6]\n", OPS[1])
    assert "operand not among the numbers" in check([4, 9, 3], 24, garbled).reason  # the unmatched line is skipped


def test_the_replay_ends_at_the_first_goal_line_and_text_after_it_is_ignored():
    text = summary(*OPS) + "Exploring Operation: 1+1=3, Resulting Numbers: [3]\nanything\n"
    assert check([4, 9, 3], 24, text).correct


def test_division_must_be_exact_and_zero_divided_is_zero():
    ok = "0,0 equal: Goal Reached\nExploring Operation: 0/5=0, Resulting Numbers: [0]\n0,0 equal: Goal Reached\n"
    assert check([0, 5], 0, ok).correct  # before: larger / smaller only
    assert "wrong arithmetic" in check([5, 0], 0, ok.replace("0/5=0", "5/0=0")).reason
    assert "wrong arithmetic" in check([7, 2], 3, ok.replace("0/5=0", "7/2=3").replace("[0]", "[3]")).reason


def test_the_second_to_last_goal_reached_may_be_a_join_tag():
    """A root that stopped right after a join holding a child's success: the two `Goal Reached`
    are the tag and the child's goal line, so the final path starts inside the tag."""
    text = ("<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\nMoving to Node #0,0\n"
            "Current State: 24:[4, 6], Operations: ['9-3=6']\n" + OPS[1] + "24,24 equal: Goal Reached\n")
    assert P.official_result(text).startswith("in Sub Search 0")
    assert "operand not among the numbers: 4*6=24 with [4, 9, 3]" == check([4, 9, 3], 24, text).reason
    assert check([4, 6], 24, text).correct


def test_claimed_ops_are_the_final_path_right_or_wrong():
    from apr.checker import claimed_ops

    assert claimed_ops(summary(*OPS)) == ("9-3=6", "4*6=24")
    assert claimed_ops(summary(OPS[0], "Exploring Operation: 4+6=10, Resulting Numbers: [10]\n")) == ("9-3=6", "4+6=10")
    assert claimed_ops("No solution found.\n") is None


def test_reason_classes():
    from apr.checker import reason_class

    cases = {"correct": "correct", "no solution found": "no solution found", "wrong arithmetic: 4*6=25": "wrong arithmetic",
             "final path ends off target: [10] after 2 operations, not [24]": "final path ends off target",
             "no final path: `Goal Reached` occurs once, a final path follows a second": "no final path",
             "operand of 5*6 not among the numbers": "operand not among the numbers",  # an older record's reason
             "context window reached": None}
    for reason, kind in cases.items():
        assert reason_class(reason) == kind, reason


def test_verify_record_reads_published_records():
    from apr.checker import verify_record
    from apr.errors import UserError

    text = summary(*OPS)
    assert verify_record({"nums": [4, 9, 3], "target": 24, "search_path": text})["correct"]
    out = verify_record({"nums": [4, 9, 3], "target": 24, "text": "No solution found.\n", "search_path": text, "x": 1})
    assert out == {"nums": [4, 9, 3], "target": 24, "text": "No solution found.\n", "search_path": text, "x": 1,
                   "correct": False, "reason": "no solution found"}  # `text` first
    for bad, field in (({"nums": [4, True], "target": 24, "text": ""}, "nums"), ({"nums": [4], "target": "24", "text": ""}, "target"),
                       ({"nums": [4], "target": 24}, "text")):
        with pytest.raises(UserError, match=f"f.jsonl:3: `{field}`"):
            verify_record(bad, "f.jsonl", 3)
