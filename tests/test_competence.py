"""Competence measures (apr.competence) on hand-built records: arithmetic errors over every
thread, joins handed a false success claim, failure reasons; and their place in the eval
summary, the line `apr eval` prints and the report."""

import pytest

from apr import competence as C
from apr import protocol as P
from apr.eval import describe, summarize
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
    assert c["false_claim_join_rate"] == 0.5 and c["rejected_claims"] == 3
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
    assert "arithmetic errors 35.3% of 17 operations; false claims at 1/2 joins (50.0%) (official joins); RUN/summary.json" in line

    from apr.report import failures_table, runs_table

    row = runs_table([s])[2]
    assert "| official |" in row and "| 35.3 (17) | 50.0 (2) |" in row
    assert "wrong arithmetic 1" in failures_table([s])[2]
    old = {k: v for k, v in s.items() if k not in ("competence", "join_rule")}  # a summary from before
    assert "| – | – |" in runs_table([old])[2] and failures_table([old])[2].endswith("| – | – | – |")
