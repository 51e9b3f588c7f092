"""The data commands end to end, through `apr.commands.main`, including bad input."""

import json

import pytest

from apr.commands import main
from apr.datasets import packaged_validation_set

VAL = str(packaged_validation_set())


def run(*args):
    return main([str(a) for a in args])


def test_problems_traces_verify_round_trip(tmp_path):
    probs = tmp_path / "p.jsonl"
    assert run("data", "problems", "--n", 40, "--seed", 3, "--out", probs, "--exclude", VAL, "--quiet") == 0
    val_keys = {(tuple(sorted(json.loads(l)["nums"])), json.loads(l)["target"]) for l in open(VAL)}
    rows = [json.loads(l) for l in open(probs)]
    assert len(rows) == 40 and not val_keys & {(tuple(sorted(r["nums"])), r["target"]) for r in rows}
    for solver in ("apr", "sos"):
        out = tmp_path / f"{solver}.jsonl"
        assert run("data", "traces", "--solver", solver, "--problems", probs, "--out", out, "--quiet") == 0
        recs = [json.loads(l) for l in open(out)]
        assert len(recs) == 40
        assert {"nums", "target", "search_path", "trace_dict", "solved", "solver"} <= set(recs[0])
        assert set(recs[0]["trace_dict"]) == {"main_calls", "sub_calls"}
        lines = tmp_path / f"{solver}_verify.jsonl"
        lines.write_text("".join(json.dumps({"nums": r["nums"], "target": r["target"], "text": r["search_path"]}) + "\n" for r in recs))
        checked = tmp_path / f"{solver}_checked.jsonl"
        assert run("verify", "--input", lines, "--out", checked) == 0
        got = [json.loads(l) for l in open(checked)]
        assert [g["correct"] for g in got] == [r["solved"] for r in recs]
        assert all("reason" in g for g in got)


def test_traces_same_for_any_worker_count(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run("data", "traces", "--solver", "apr", "--problems", VAL, "--out", a, "--quiet")
    run("data", "traces", "--solver", "apr", "--problems", VAL, "--out", b, "--workers", 2, "--quiet")
    assert a.read_bytes() == b.read_bytes()


def test_splits_are_disjoint(tmp_path):
    assert run("data", "problems", "--splits", "train=60,val=20,test=20", "--out", tmp_path / "s", "--num-count", 3, "--quiet") == 0
    keys = {}
    for name in ("train", "val", "test"):
        keys[name] = {(tuple(sorted(json.loads(l)["nums"])), json.loads(l)["target"]) for l in open(tmp_path / "s" / f"{name}.jsonl")}
    assert len(keys["train"]) == 60 and not (keys["train"] & keys["val"] or keys["val"] & keys["test"])


def test_verify_to_stdout(tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"nums": [4, 9, 3], "target": 24, "text": "nope"}) + "\n")
    assert run("verify", "--input", f) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["correct"] is False and out["reason"]


@pytest.mark.parametrize(
    "content,msg",
    [
        (None, "no such file"),
        ('{"nums": [1, 2, 3], "target": 5}\n{"nums": [1, 2, 3], "target": 5\n', ":2: invalid JSON"),
        ('{"nums": [1, 2.5, 3], "target": 5}\n', ":1: `nums` holds a non-integer"),
        ('{"nums": [1, -2, 3], "target": 5}\n', ":1: `nums` holds a negative"),
        ('{"nums": [1, 2, 3], "target": -5}\n', ":1: `target` out of range"),
    ],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, content, msg):
    src = tmp_path / "in.jsonl"
    if content is not None:
        src.write_text(content)
    out = tmp_path / "out.jsonl"
    assert run("data", "traces", "--solver", "apr", "--problems", src, "--out", out, "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "in.jsonl" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_bad_verify_line(tmp_path, capsys):
    src = tmp_path / "v.jsonl"
    src.write_text('{"nums": [1, 2], "target": 3, "text": "x"}\n{"nums": [1, 2], "target": "3", "text": "x"}\n')
    out = tmp_path / "o.jsonl"
    assert run("verify", "--input", src, "--out", out) == 2
    assert "v.jsonl:2: `target` must be an integer" in capsys.readouterr().err
    assert not out.exists()


def test_bad_options(tmp_path, capsys):
    assert run("data", "traces", "--solver", "nope", "--problems", VAL, "--out", tmp_path / "x") == 2
    assert "argument --solver: invalid choice" in capsys.readouterr().err
    assert run("data", "problems", "--n", 5, "--out", tmp_path / "x", "--target-min", 50, "--target-max", 10) == 2
    assert "bad target range" in capsys.readouterr().err
    assert run("data", "problems", "--n", 5, "--out", tmp_path / "x", "--num-count", 9) == 2
    assert "--num-count" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_verify_reads_published_records_with_only_a_search_path(tmp_path, capsys):
    from apr.commands import main

    path = "Current State: 24:[4, 6], Operations: []\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n"
    text = path + "24,24 equal: Goal Reached\nMoving to Node #0\n" + path + "24,24 equal: Goal Reached\n"
    f = tmp_path / "published.jsonl"
    f.write_text(json.dumps({"nums": [4, 6], "target": 24, "search_path": text}) + "\n")
    assert main(["verify", "--input", str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] is True


def test_ranked_order_prints_the_same_kept_nodes_best_first(tmp_path):
    import random
    import re

    from apr import protocol
    from apr.search.beam import Node, expand_node
    from apr.search.heuristics import mult_heuristic

    node = Node("0", [38, 29, 37], [])
    for beam in (1, 3, 6):
        shuffled = expand_node(node, 30, beam, random.Random(1), mult_heuristic)
        ranked = expand_node(node, 30, beam, random.Random(1), mult_heuristic, order="ranked")
        assert sorted(n.nums for n in ranked.kept) == sorted(n.nums for n in shuffled.kept)  # the same nodes kept
        scores = [mult_heuristic(n.nums, 30) for n in ranked.kept]
        assert scores == sorted(scores) and [n.id for n in ranked.kept] == [f"0,{i}" for i in range(len(scores))]
    # the command: every ranked SoS+ trace visits the nodes of an expansion in id order and solves
    # about as often as the published solver (the beams differ: no shuffle draws from the stream)
    probs = tmp_path / "p.jsonl"
    run("data", "problems", "--n", 60, "--seed", 5, "--num-count", 3, "--out", probs, "--quiet")
    solved = {}
    for order in ("shuffled", "ranked"):
        out = tmp_path / f"{order}.jsonl"
        assert run("data", "traces", "--solver", "sos", "--order", order, "--problems", probs, "--out", out, "--quiet") == 0
        recs = [json.loads(l) for l in open(out)]
        assert all(r["solver"]["order"] == order for r in recs)
        solved[order] = [r["solved"] for r in recs]
        if order == "ranked":
            for r in recs:  # the search's moves, before any goal and its clean path
                search = r["search_path"].split("equal: Goal Reached")[0]
                ids = [m.node for m in protocol.node_moves(search)]
                assert ids == [f"0,{i}" for i in range(len(ids))], r["search_path"]
    assert abs(sum(solved["ranked"]) - sum(solved["shuffled"])) <= 3


def test_hybrid_order_ranks_generated_nodes_and_shuffles_last_operations():
    import random

    from apr.search.beam import Node, expand_node
    from apr.search.heuristics import mult_heuristic

    root = Node("0", [38, 29, 37], [])
    for beam in (2, 5):
        hybrid = expand_node(root, 30, beam, random.Random(1), mult_heuristic, order="hybrid")
        ranked = expand_node(root, 30, beam, random.Random(1), mult_heuristic, order="ranked")
        assert hybrid.text == ranked.text  # generated nodes: best first
    # a node's last operations: shuffled, so a goal is not always tested first
    pair = Node("0,0", [6, 5], ["38-29=9"])
    firsts = set()
    for seed in range(20):
        ex = expand_node(pair, 30, 4, random.Random(seed), mult_heuristic, order="hybrid")
        firsts.add(ex.text.split("\n")[0])
        ranked = expand_node(pair, 30, 4, random.Random(seed), mult_heuristic, order="ranked")
        assert ranked.text.startswith("Exploring Operation: 6*5=30") and ex.goal_op == "6*5=30"
    assert len(firsts) > 1 and "Exploring Operation: 6*5=30, Resulting Numbers: [30]" in firsts


def test_max_result_leaves_out_larger_results_and_only_them(tmp_path, capsys):
    import random

    from apr.checker import OP_RE
    from apr.countdown import expand
    from apr.search.beam import Node, expand_node
    from apr.search.heuristics import mult_heuristic

    # one expansion: every legal operation with a result <= 100 is still there, none above it
    node = Node("0", [38, 29, 7], [])
    wide = expand_node(node, 30, 99, random.Random(1), mult_heuristic, order="ranked", max_result=100)
    written = ["{}{}{}={}".format(*m.group(1, 2, 3, 4)) for m in OP_RE.finditer(wide.text)]
    assert sorted(written) == sorted(op for op, nums in expand(node.nums) if nums[-1] <= 100)
    assert "38*29=1102" not in wide.text and "38+29=67" in wide.text
    # the command: no trace of either solver writes a result above the cap, the cap is recorded,
    # and a file written without it reads as before (no `max_result` key)
    probs = tmp_path / "p.jsonl"
    run("data", "problems", "--n", 40, "--seed", 5, "--num-count", 3, "--out", probs, "--quiet")
    for solver in ("apr", "sos"):
        capped, plain = tmp_path / f"{solver}-cap.jsonl", tmp_path / f"{solver}.jsonl"
        assert run("data", "traces", "--solver", solver, "--max-result", 100, "--problems", probs, "--out", capped,
                   "--quiet") == 0
        assert run("data", "traces", "--solver", solver, "--problems", probs, "--out", plain, "--quiet") == 0
        recs = [json.loads(l) for l in open(capped)]
        results = [int(m.group(4)) for r in recs for m in OP_RE.finditer(json.dumps(r))]
        assert results and max(results) <= 100 and all(r["solver"]["max_result"] == 100 for r in recs)
        assert sum(r["solved"] for r in recs) > 30  # few problems need a larger result
        plain_recs = [json.loads(l) for l in open(plain)]
        assert all("max_result" not in r["solver"] for r in plain_recs)
        assert max(int(m.group(4)) for r in plain_recs for m in OP_RE.finditer(json.dumps(r))) > 100
    capsys.readouterr()
    assert run("data", "traces", "--solver", "sos", "--max-result", 0, "--problems", probs, "--out",
               tmp_path / "x.jsonl") == 2
    assert "--max-result" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    # a cap below a problem's target: that problem could never be solved; refused, naming the line
    targets = [json.loads(l)["target"] for l in open(probs)]
    line = max(range(len(targets)), key=lambda k: targets[k]) + 1
    cap = max(targets) - 1
    assert run("data", "traces", "--solver", "apr", "--max-result", cap, "--problems", probs, "--out",
               tmp_path / "x.jsonl") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"p.jsonl:{line}:" in err[0] and f"above --max-result {cap}" in err[0]
    assert not (tmp_path / "x.jsonl").exists()
    # the library refuses a cap that would leave out everything
    from apr.errors import UserError
    from apr.search import AprConfig, SosConfig

    for bad in (0, -3, True, 1.5):
        with pytest.raises(UserError, match="`max_result` must be an integer >= 1"):
            (AprConfig if bad != 0 else SosConfig)(max_result=bad)
