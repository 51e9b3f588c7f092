import random

import pytest
from hypothesis import given, settings, strategies as st

from apr import protocol as P
from apr.checker import check
from apr.countdown import read_problems, solve
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos

PROBS = read_problems("src/apr/data/countdown4_val1000.jsonl")[:80]
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
    text = f"Moving to Node #0\nExploring Operation: {big}*{big}=1, Resulting Numbers: [1]\n1,1 equal: Goal Reached\n"
    v = check([1, 2], 1, text)
    assert not v.correct and v.reason
    v = check([1, 2], 1, f"{big},{big} equal: Goal Reached\n")
    assert not v.correct and "too long" in v.reason


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.integers(0, 200), min_size=2, max_size=6), st.integers(0, 200))
def test_never_raises_on_any_string(s, nums, target):
    v = check(nums, target, s)
    assert isinstance(v.correct, bool) and isinstance(v.reason, str)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(PATH) - 1), st.integers(0, len(PATH)), st.text(max_size=5))
def test_never_raises_on_spliced_traces(i, j, s):
    check([4, 9, 3], 24, PATH[:i] + s + PATH[j:])
