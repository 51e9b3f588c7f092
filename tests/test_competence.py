"""Competence measures (apr.competence) on hand-built records: arithmetic errors over every
thread, joins handed a false success claim, failure reasons; and their place in the eval
summary, the line `apr eval` prints and the report."""

import pytest

from apr import competence as C
from apr import protocol as P
from apr.checker import check
from apr.eval_summary import describe, summarize
from apr.records import Record

ROOT_PROMPT = "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []"
SEG0 = ("\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n"
        "Exploring Operation: 9+3=13, Resulting Numbers: [4, 13]\nGenerated Node #0,1: 24:[4, 13] Operation: 9+3=13\n"  # 9+3 is 12
        "Exploring Operation: 5*4=20, Resulting Numbers: [9, 3, 20]\n"  # 5 is not among [4, 9, 3]
        "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n"
        "<Start Sub Search 1 at level 1> Moving to Node #0,1\n<End Calling Sub Searches>")
PATH0 = "Moving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['9-3=6']\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
PATH1 = "Moving to Node #0,1\nCurrent State: 24:[4, 13], Operations: ['9+3=13']\nExploring Operation: 13+4=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
SEG1 = ("24,24 equal: Goal Reached\nMoving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n"
        "Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n" + PATH0)


def child(node: str, state: str, path: str | None) -> dict:
    prompt = f"Moving to Node #{node}\nCurrent State: {state}"
    seg = ("\n" + path.split("\n", 2)[2] + path) if path else "\nExploring Operation: 4+13=17, Resulting Numbers: [17]\n17,24 unequal: No Solution\nNo solution found.\n"
    return {"node": node, "prompt": prompt, "segments": [seg], "joins": [], "children": [], "text": prompt + seg}


def tree(second_claims: bool) -> dict:
    kids = [child("0,0", "24:[4, 6], Operations: ['9-3=6']", PATH0),
            child("0,1", "24:[4, 13], Operations: ['9+3=13']", PATH1 if second_claims else None)]
    join = P.join_text([P.ChildResult(0, 1, "0,0", PATH0), P.ChildResult(1, 1, "0,1", PATH1 if second_claims else None)])
    return {"node": "0", "prompt": ROOT_PROMPT, "segments": [SEG0, SEG1], "joins": [join], "children": [kids],
            "text": ROOT_PROMPT + SEG0[: P.spawn_start(SEG0)] + join + SEG1}


def record(correct=True, reason="correct", threads=None, text="", **kw) -> Record:
    base = dict(index=0, nums=[4, 9, 3], target=24, text=text, correct=correct, reason=reason, answer=[], total_tokens=10,
                sequential_tokens=5, longest_thread=5, children=0, latency_s=0.0, method="apr", threads=threads)
    return Record(**{**base, **kw})


def test_operation_errors_of_one_thread():
    assert C.operation_errors(ROOT_PROMPT + SEG0) == (3, 2)  # 9+3=13 wrong, 5 not among the numbers
    assert C.operation_errors("Exploring Operation: 1+1=2, Resulting Numbers: [2]\n") == (1, 1)  # no state before it
    assert C.operation_errors("Current State: 2:[1, 1], Operations: []\nExploring Operation: 1+1=2, Resulting Numbers: [2]\n") == (1, 0)
    assert C.operation_errors("Current State: 2:[1, 3], Operations: []\nExploring Operation: 1+1=2, Resulting Numbers: [2]\n") == (1, 1)
    assert C.operation_errors("Current State: 2:[1, 3], Operations: []\nExploring Operation: garbled\n") == (1, 1)
    # the latest state counts, not the first
    two = "Current State: 9:[4, 5], Operations: []\nCurrent State: 9:[3, 6], Operations: []\nExploring Operation: 3+6=9, Resulting Numbers: [9]\n"
    assert C.operation_errors(two) == (1, 0)


def test_a_line_cut_before_its_result_is_unfinished_not_wrong():
    state = "Current State: 24:[4, 9, 3], Operations: []\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\n"
    for cut in ("Exploring Operation: 9*3", "Exploring Operation: 9*3=2", "Exploring Op"):
        assert C.operation_errors(state + cut) == (1, 0)
        assert C.operation_errors(state + cut + "\n")[0] == 1 + ("Operation:" in cut)  # finished: judged (unreadable)
    # a result written out (the comma after it) is judged, in a cut line too
    assert C.operation_errors(state + "Exploring Operation: 9*3=26, Resulting") == (2, 1)
    assert C.operation_errors(state + "Exploring Operation: 9*3=27, Res") == (2, 0)
    c = C.measure([record(threads=None, text=state + "Exploring Operation: 9*3=2", correct=False,
                          reason="context window reached")])
    assert (c["operations"], c["arithmetic_errors"], c["unfinished_operations"]) == (1, 0, 1)
    assert "arithmetic errors 0.0% of 1 operations, 1 cut unfinished;" in C.describe(c)
    assert C.measure([record(threads=None, text=state + "9,24 unequal")])["unfinished_operations"] == 0
    # a move whose state line was cut is not judged either
    moved = ("Current State: 24:[4, 9, 3], Operations: []\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\n"
             "Generated Node #0,0: 24:[4, 6] Operation: 9-3=6\nMoving to Node #0,0\n")
    whole = moved + "Current State: 24:[4, 6], Operations: ['9-3=6']\n"
    assert C.state_copy_errors(whole) == (1, 0)
    assert C.state_copy_errors(moved + "Current State: 24:[4, 6") == (0, 0)
    assert C.state_copy_errors(moved) == (0, 0) and C.state_copy_errors(moved + "Current State: 24:[9]\n") == (1, 1)


def test_join_text_is_not_counted_for_the_parent():
    t = P.Thread.from_json(tree(True))
    assert t.text() == tree(True)["text"]
    assert "13+4=24" in t.text() and "13+4=24" not in t.own_text()
    assert C.operation_errors(t.own_text()) == (5, 2)


def test_false_claims_per_join():
    assert C.false_claims(P.Thread.from_json(tree(True))) == [1]  # 13+4=24 does not replay from [4, 13]
    assert C.false_claims(P.Thread.from_json(tree(False))) == [0]
    assert C.false_claims(P.Thread.from_json(child("0,0", "24:[4, 6], Operations: []", PATH0))) == []  # no joins


def test_measure_over_records():
    recs = [record(threads=tree(True), correct=False, reason="wrong arithmetic: 13+4=24", rejected_claims=None),
            record(threads=tree(False)),
            record(threads=None, method="solver-apr", reason="context window reached", correct=False,
                   text="Current State: 24:[4, 9, 3], Operations: []\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\n"
                        "Exploring Operation: 9*3=28, Resulting Numbers: [4, 28]\n"),
            record(reason="too many children (17 > 16)", correct=False, rejected_claims=3),
            record(reason="no solution found", correct=False),
            record(reason="operand of 5*6 not among the numbers", correct=False)]
    c = C.measure(recs)
    # tree(True): root 5 ops (2 wrong), children 2 + 2 ops (13+4=24 twice wrong); tree(False): 5 (2) + 2 + 1 (4+13=17 right);
    # the solver text: 2 ops (9*3=28 wrong)
    assert (c["operations"], c["arithmetic_errors"]) == (9 + 8 + 2, 4 + 2 + 1)
    assert c["arithmetic_error_rate"] == pytest.approx(7 / 19)
    assert (c["joins"], c["false_claim_joins"], c["false_claims"]) == (2, 1, 1)
    assert c["false_claim_join_rate"] == 0.5 and c["rejected_claims"] == 3 and c["unfinished_operations"] == 0
    assert c["failure_reasons"] == {
        "runtime": {"context window reached": 1, "too many children": 1},
        "checker": {"no solution found": 1, "operand not among the numbers": 1, "wrong arithmetic": 1},
    }


def test_empty_and_malformed_trees_do_not_raise():
    c = C.measure([])
    assert c["operations"] == 0 and c["arithmetic_error_rate"] == 0.0 and c["false_claim_join_rate"] == 0.0
    odd = {"prompt": None, "segments": ["x"], "joins": ["<Sub Searches>\n<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\nzz"],
           "children": [[{"node": "0,0", "prompt": "garbled"}]]}
    c = C.measure([record(threads=odd)])
    assert c["false_claim_joins"] == 1  # a claim whose child has no readable start state is false


def test_summary_line_and_report_carry_competence(tmp_path):
    recs = [record(threads=tree(True), correct=False, reason="wrong arithmetic: 13+4=24", sample=0),
            record(index=1, threads=tree(False), sample=0)]
    meta = {"method": "apr", "samples": 1, "context": 1024, "model": "m", "label": "APR greedy", "family": "apr",
            "join_rule": "official", "temperature": 0.0}
    s = summarize(recs, meta)
    assert s["join_rule"] == "official" and s["competence"]["joins"] == 2
    line = describe(s, "RUN")
    assert line.startswith("APR greedy: accuracy 0.500 [")
    assert "arithmetic errors 35.3% of 17 operations; false claims at 1/2 joins (50.0%); near misses called equal at 0/1 goal lines (0.0%); states copied wrong at 0/2 moves (0.0%) (official joins); RUN/summary.json" in line

    from apr.report import failures_table, runs_table

    row = runs_table([s])[2]
    assert "| official |" in row and "| 35.3 (17) | 50.0 (2) |" in row
    assert "wrong arithmetic 1" in failures_table([s])[2]
    old = {k: v for k, v in s.items() if k not in ("competence", "join_rule")}  # a summary from before
    assert "| – | – |" in runs_table([old])[2] and failures_table([old])[2].endswith("| – | – | – |")


# ---------------------------------------------------------------------------- where the errors are
# A Countdown-3 APR record worked by hand: [25, 4, 6] -> 106 (25*4=100, 100+6=106). The root
# writes three operations, spawns two children, and after the join copies child 0's path.
BIG_NUMS, BIG_TARGET = [25, 4, 6], 106
BIG_PROMPT = "Moving to Node #0\nCurrent State: 106:[25, 4, 6], Operations: []"
BIG_SEG0 = ("\nExploring Operation: 25*4=100, Resulting Numbers: [6, 100]\n"  # right, on the final path
            "Exploring Operation: 25+6=31, Resulting Numbers: [4, 31]\n"  # right, off it
            "Exploring Operation: 25*6=106, Resulting Numbers: [4, 106]\n"  # 25*6 is 150: a wrong result = the target
            "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n"
            "<Start Sub Search 1 at level 1> Moving to Node #0,1\n<End Calling Sub Searches>")
BIG_PATH0 = ("Moving to Node #0,0\nCurrent State: 106:[6, 100], Operations: ['25*4=100']\n"
             "Exploring Operation: 100+6=106, Resulting Numbers: [106]\n106,106 equal: Goal Reached\n")
BIG_SEG1 = ("106,106 equal: Goal Reached\nMoving to Node #0\nCurrent State: 106:[25, 4, 6], Operations: []\n"
            "Exploring Operation: 25*4=100, Resulting Numbers: [6, 100]\n"  # on the path again
            "Generated Node #0,0: 106:[6, 100] Operation: 25*4=100\n" + BIG_PATH0)  # 100+6=106: on the path
BIG_CHILD0 = ("\nExploring Operation: 100-6=94, Resulting Numbers: [94]\n94,106 unequal: No Solution\n"  # right, off
              "Exploring Operation: 100/6=16, Resulting Numbers: [16]\n16,106 unequal: No Solution\n"  # 100/6 is no integer
              "Exploring Operation: 100+?\n"  # unreadable
              "Exploring Operation: 100+6=106, Resulting Numbers: [106]\n106,106 equal: Goal Reached\n" + BIG_PATH0)
BIG_CHILD1 = ("\nExploring Operation: 31*4=124, Resulting Numbers: [124]\n124,106 unequal: No Solution\n"  # right, off
              "Exploring Operation: 100+6=106, Resulting Numbers: [106]\n"  # on the root's path, not this child's; 100 is not here
              "No solution found.\n")


def big_record() -> Record:
    kids = [{"node": "0,0", "prompt": "Moving to Node #0,0\nCurrent State: 106:[6, 100], Operations: ['25*4=100']",
             "segments": [BIG_CHILD0], "joins": [], "children": []},
            {"node": "0,1", "prompt": "Moving to Node #0,1\nCurrent State: 106:[4, 31], Operations: ['25+6=31']",
             "segments": [BIG_CHILD1], "joins": [], "children": []}]
    join = P.join_text([P.ChildResult(0, 1, "0,0", BIG_PATH0), P.ChildResult(1, 1, "0,1", None)])
    threads = {"node": "0", "prompt": BIG_PROMPT, "segments": [BIG_SEG0, BIG_SEG1], "joins": [join], "children": [kids]}
    text = P.Thread.from_json(threads).text()
    v = check(BIG_NUMS, BIG_TARGET, text)
    return record(nums=BIG_NUMS, target=BIG_TARGET, text=text, threads=threads, correct=v.correct, reason=v.reason,
                  answer=list(v.path))


def entry(n: int, e: int) -> dict:
    return {"operations": n, "errors": e, "rate": e / n if n else 0.0}


def test_operation_lines_read_sizes_and_wrong_results():
    lines = C.operation_lines(BIG_PROMPT + BIG_SEG0)
    assert [(x.written, x.op, x.operand_digits, x.result_digits, x.wrong, x.wrong_result) for x in lines] == [
        ("25*4=100", "*", 2, 3, False, False), ("25+6=31", "+", 2, 2, False, False),
        ("25*6=106", "*", 2, 3, True, True)]  # sized by the true result, 150
    (odd,) = C.operation_lines("Current State: 9:[4, 5], Operations: []\nExploring Operation: 4-5=1, Resulting Numbers: [1]\n")
    assert (odd.result_digits, odd.wrong, odd.wrong_result) == (1, True, True)  # no a op b: sized by what it wrote
    (bad,) = C.operation_lines("Exploring Operation: 4-\n")
    assert (bad.op, bad.operand_digits, bad.wrong, bad.wrong_result) == (None, None, True, False)
    assert C.operation_errors(BIG_PROMPT + BIG_SEG0) == (3, 1)


def test_a_childs_path_is_the_one_it_passed_on():
    rec = big_record()
    assert rec.correct and rec.answer == ["25*4=100", "100+6=106"]
    got = [(t.node, kind, sorted(path)) for t, kind, path in C.record_threads(rec)]
    assert got == [("0", "parent", ["100+6=106", "25*4=100"]), ("0,0", "child", ["100+6=106"]), ("0,1", "child", [])]
    (none, kind, path), = C.record_threads(record(text="x", threads=None))
    assert (none, kind, path) == (None, "parent", frozenset())


def test_breakdown_of_a_hand_worked_record():
    c = C.measure([big_record()])
    # root: 25*4 (on), 25+6, 25*6=106 (wrong result, the target), 25*4 (on), 100+6 (on): 5, 1 wrong;
    # child 0: 100-6, 100/6=16 (wrong result), unreadable, 100+6 twice (on): 5, 2 wrong;
    # child 1: 31*4, 100+6 (100 not among [4, 31]; off: the child passed nothing on): 2, 1 wrong.
    assert (c["operations"], c["arithmetic_errors"]) == (12, 4)
    b = c["arithmetic_breakdown"]
    assert b["by_op"] == {"+": entry(5, 1), "-": entry(1, 0), "*": entry(4, 1), "/": entry(1, 1), "unreadable": entry(1, 1)}
    assert b["by_operand_digits"] == {"1": entry(0, 0), "2": entry(5, 1), "3": entry(6, 2), "4+": entry(0, 0),
                                      "unreadable": entry(1, 1)}
    assert b["by_result_digits"] == {"1": entry(0, 0), "2": entry(3, 1), "3": entry(8, 2), "4+": entry(0, 0),
                                     "unreadable": entry(1, 1)}
    assert b["by_thread"] == {"parent": entry(5, 1), "child": entry(7, 3)}
    assert b["by_path"] == {"on": entry(5, 0), "off": entry(7, 4)}
    assert b["wrong_results"] == {"results": 2, "equal_target": 1, "share": 0.5}
    assert C.result_rate(c) == (8, 0.25)
    assert "arithmetic errors 33.3% of 12 operations (3+ digit results 25.0%); false claims at 0/1 joins" in C.describe(c)


def test_breakdown_adds_up_over_records_and_counts_a_tree_less_record_as_the_parent():
    solver = record(threads=None, text=BIG_PROMPT + "\nExploring Operation: 100+6=106, Resulting Numbers: [106]\n")
    c = C.measure([big_record(), solver, big_record()])
    b = c["arithmetic_breakdown"]
    # the solver text: one operation, 100+6=106 with 100 not among [25, 4, 6], and no final path
    assert b["by_thread"] == {"parent": entry(5 + 1 + 5, 1 + 1 + 1), "child": entry(14, 6)}
    assert b["by_path"] == {"on": entry(10, 0), "off": entry(15, 9)}
    for dim in C.BREAKDOWNS:
        assert sum(x["operations"] for x in b[dim].values()) == c["operations"] == 25
        assert sum(x["errors"] for x in b[dim].values()) == c["arithmetic_errors"] == 9
    assert b["wrong_results"] == {"results": 4, "equal_target": 2, "share": 0.5}
    assert "unreadable" not in C.measure([record(threads=tree(True))])["arithmetic_breakdown"]["by_op"]


def test_summary_line_and_report_show_where_the_errors_are(tmp_path):
    s = summarize([big_record()], {"method": "apr", "samples": 1, "context": 1024, "model": "m", "label": "APR greedy",
                                   "family": "apr", "join_rule": "official", "temperature": 0.0})
    assert s["competence"]["arithmetic_breakdown"]["by_thread"]["child"] == entry(7, 3)
    assert "arithmetic errors 33.3% of 12 operations (3+ digit results 25.0%);" in describe(s)

    from apr.report_errors import errors_table

    head, _, row = errors_table([s])
    assert head.startswith("| run | 1-digit results | 2-digit | 3-digit | 4+ digit | parent | children | on the path")
    assert row == ("| APR greedy | – (0) | 33.3 (3) | 25.0 (8) | – (0) | 20.0 (5) | 42.9 (7) | 0.0 (5) | 57.1 (7) "
                   "| 50.0 (1 of 2) |")
    old = {**s, "competence": {k: v for k, v in s["competence"].items() if k != "arithmetic_breakdown"}}
    assert errors_table([old])[2] == "| APR greedy | – | – | – | – | – | – | – | – | – |"
    assert "3+ digit" not in describe(old)


SOS_TEXT = ("Current State: 24:[4, 9, 3], Operations: []\n"
            "Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n"
            "Exploring Operation: 9+3=12, Resulting Numbers: [4, 12]\nGenerated Node #0,1: 24:[4, 12] Operation: 9+3=12\n"
            "Moving to Node #0,1\nCurrent State: 24:[4, 12], Operations: ['9+3=12']\n"  # right
            "Exploring Operation: 4+12=16, Resulting Numbers: [16]\n16,24 unequal: No Solution\n"
            "Moving to Node #0,0\nCurrent State: 24:[4, 12], Operations: ['9-3=6']\n"  # node 0,1's numbers
            "Moving to Node #0,5\nCurrent State: 24:[1, 2], Operations: ['9-3=6']\n"  # never generated: not a copy
            "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n")  # the root: not a copy


def test_state_copies_are_checked_against_the_generated_node():
    assert C.state_copy_errors(SOS_TEXT) == (2, 1)
    moves = P.node_moves(SOS_TEXT)
    assert [m.node for m in moves] == ["0,1", "0,0"] and SOS_TEXT[moves[1].at:].startswith("Moving to Node #0,0\n")
    assert moves[1].named.nums == [4, 6] and moves[1].written.nums == [4, 12] and set(moves[1].generated) == {"0,0", "0,1"}
    # an APR child's own start is handed to it, and a parent's root is no copy either
    assert C.state_copy_errors(tree(True)["children"][0][0]["text"]) == (0, 0)
    c = C.measure([record(text=SOS_TEXT)])
    assert (c["moves"], c["state_copy_errors"], c["state_copy_error_rate"]) == (2, 1, 0.5)
    assert "states copied wrong at 1/2 moves (50.0%)" in C.describe(c)
    assert "states copied" not in C.describe(C.measure([record(text="")]))  # no moves, no clause


def test_goal_verdicts_are_checked_and_near_misses_counted_apart():
    text = ("Exploring Operation: 4+69=73, Resulting Numbers: [73]\n73,79 equal: Goal Reached\n"  # near miss, wrong
            "Exploring Operation: 9*2=18, Resulting Numbers: [18]\n18,81 unequal: No Solution\n"  # digits swapped, right
            "Exploring Operation: 9+2=11, Resulting Numbers: [11]\n11,79 unequal: No Solution\n"  # far, right
            "Exploring Operation: 70+9=79, Resulting Numbers: [79]\n79,79 unequal: No Solution\n")  # equal, wrong
    c = C.verdict_errors(text)
    assert (c["verdicts"], c["verdict_errors"], c["near_miss_verdicts"], c["near_miss_verdict_errors"]) == (4, 2, 2, 1)
    assert [t for t in range(60, 100) if C.near_miss(73, t)] == [64, 65, 66, 67, 68, 69, 70, 71, 72, 74, 75, 76, 77, 78, 79, 80, 81, 82]
    assert C.near_miss(18, 81) and C.near_miss(81, 18) and not C.near_miss(79, 79) and not C.near_miss(5, 50)
    assert not C.near_miss(50, 5) and not C.near_miss(10, 100) and not C.near_miss(42, 124)  # swaps are of two digits
    assert C.verdict_errors("1" * 5000 + ",24 unequal: No Solution\n")["verdicts"] == 0  # no number that long is read
    m = C.measure([record(nums=[4, 69, 6], target=79, text=text, correct=False, reason="no solution found")])
    assert (m["verdicts"], m["near_miss_verdict_errors"], m["near_miss_verdict_error_rate"]) == (4, 1, 0.5)
    assert "near misses called equal at 1/2 goal lines (50.0%)" in C.describe(m)


def test_the_checked_reward_takes_a_tenth_off_for_each_wrong_line_in_any_thread():
    from apr.countdown import Problem
    from apr.train.rewards import resolve_reward

    checked, problem = resolve_reward("checked"), Problem(nums=[4, 9, 3], target=24)
    joined = tree(True)["text"]  # the root's text with the join text in it: not what is judged
    assert checked({"threads": tree(True), "text": joined, "correct": False}, problem) == pytest.approx(-0.4)  # root 2, children 2
    assert checked({"threads": tree(False), "text": tree(False)["text"], "correct": True}, problem) == pytest.approx(0.8)  # root 2
    state = "Current State: 24:[4, 9, 3], Operations: []\n"
    one_wrong = state + "Exploring Operation: 9*3=28, Resulting Numbers: [4, 28]\n"
    assert checked({"threads": None, "text": one_wrong, "correct": True}, problem) == pytest.approx(0.9)  # SoS+: one text
    assert checked({"threads": None, "text": state, "correct": True}, problem) == 1.0
    assert checked({"threads": {}, "text": one_wrong, "correct": True}, problem) == pytest.approx(0.9)  # empty tree: the text
    many = state + "Exploring Operation: 9*3=28, Resulting Numbers: [4, 28]\n" * 8
    assert checked({"threads": None, "text": many, "correct": True}, problem) == pytest.approx(0.5)  # at most 0.5 off
    assert checked({"threads": None, "text": many, "correct": False}, problem) == pytest.approx(-0.5)
