"""`apr run` and `apr solve` end to end on a tiny random model (the local engine)."""

import json

import pytest
from support.models import save_apr_model_dir

from apr.commands import main
from apr.datasets import packaged_validation_set

VAL = str(packaged_validation_set())
KEYS = {"nums", "target", "text", "correct", "reason", "total_tokens", "sequential_tokens", "longest_thread", "children", "latency_s", "threads"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("m") / "model", method="apr")


def run(*args):
    return main([str(a) for a in args])


def test_run_writes_records_and_resumes(model_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    common = ("run", "--model", model_dir, "--problems", VAL, "--out", out, "--context", 64, "--quiet")
    assert run(*common, "--limit", 3) == 0
    first = [json.loads(l) for l in open(out)]
    assert len(first) == 3 and all(KEYS <= set(r) for r in first)
    with open(out, "a") as f:
        f.write('{"index": 99, "torn')  # an interrupted write
    assert run(*common, "--limit", 5) == 0
    recs = [json.loads(l) for l in open(out)]
    assert sorted(r["index"] for r in recs) == [0, 1, 2, 3, 4]
    assert recs[:3] == first  # finished records are kept, not redone
    # the same problems, uninterrupted, give the same records (timings aside)
    fresh = tmp_path / "fresh.jsonl"
    assert run("run", "--model", model_dir, "--problems", VAL, "--out", fresh, "--context", 64, "--quiet", "--limit", 5) == 0
    strip = lambda rs: sorted(({k: v for k, v in r.items() if k != "latency_s"} for r in rs), key=lambda r: r["index"])
    assert strip(recs) == strip(json.loads(l) for l in open(fresh))


def test_run_refuses_output_of_another_method(model_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert run("run", "--model", model_dir, "--problems", VAL, "--out", out, "--context", 48, "--limit", 1, "--quiet") == 0
    assert run("run", "--model", model_dir, "--problems", VAL, "--out", out, "--context", 48, "--limit", 1, "--method", "sos", "--quiet") == 2
    assert "another run" in capsys.readouterr().err


def test_solve_prints_tree_and_metrics(model_dir, capsys):
    assert run("solve", 4, 9, 3, "--target", 24, "--model", model_dir, "--context", 64) == 0
    out = capsys.readouterr().out
    assert "Moving to Node #0" in out and "total tokens" in out and "incorrect" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (("--model", "/nonexistent/model"), "model folder not found"),
        (("--server", "http://127.0.0.1:9", "--model", None), ""),
    ],
)
def test_bad_model_or_server_is_one_line_exit_2(model_dir, tmp_path, capsys, args, msg):
    args = tuple(model_dir if a is None else a for a in args)
    assert run("run", "--problems", VAL, "--out", tmp_path / "o.jsonl", "--limit", 1, "--quiet", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_bad_problem_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"nums": [1, 2], "target": 3}\n{"nums": [1, "2"], "target": 3}\n')
    assert run("run", "--model", model_dir, "--problems", bad, "--out", tmp_path / "o.jsonl") == 2
    assert "p.jsonl:2:" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
