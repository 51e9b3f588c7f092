"""`apr eval`: metrics on hand-built records, scripted replays of solver traces (a known,
non-trivial accuracy), a tiny random model end to end, resuming, and bad input."""

import json
import random

import pytest
from support.models import save_apr_model_dir
from support.traces import scripted_engine, solver_traces

from apr.commands import build_parser, main
from apr.countdown import read_problems
from apr.datasets import packaged_validation_set
from apr.commands.eval import eval_spec
from apr.eval import evaluate
from apr.eval_summary import consensus, solved, summarize
from apr.records import Record
from apr.stats import wilson

VAL = str(packaged_validation_set())
N = 8


def rec(index, sample, correct, answer, reason="correct", **kw):
    base = {"index": index, "sample": sample, "correct": correct, "answer": list(answer), "text": "", "reason": reason,
            "total_tokens": 100, "sequential_tokens": 50, "longest_thread": 40, "children": 2, "latency_s": 1.0,
            "nums": [1, 2], "target": 3, "method": "sos"}
    return Record(**{**base, **kw})


# ---------------------------------------------------------------------------- statistics

def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_cons_and_pass_on_hand_built_records():
    good, bad, other = ("1+2=3",), ("1*2=2",), ("2-1=1",)
    # two wrong claims outvote one right claim: cons fails, pass succeeds
    samples = [rec(0, 0, False, (), text="x", reason="wrong arithmetic"), rec(0, 1, True, good)]
    samples[0].answer = []
    wrong = [rec(0, 2, False, bad), rec(0, 3, False, bad)]
    assert not consensus(samples + wrong) and solved("pass@4", samples + wrong)
    # samples with no solution do not vote: one right claim among failures wins
    none = [rec(0, k, False, (), reason="no solution found") for k in range(3)]
    assert consensus(none + [rec(0, 3, True, good)])
    # a tie goes to the path claimed first
    assert consensus([rec(0, 0, True, good), rec(0, 1, False, other)])
    assert not consensus([rec(0, 0, False, other), rec(0, 1, True, good)])
    # a sample the runtime cut does not vote even if its text held a path
    assert not consensus([rec(0, 0, False, bad, reason="context window reached")] * 3 + [rec(0, 3, False, other)])
    assert not consensus(none) and not solved("pass@3", none)


def test_summary_sweeps_from_one_run():
    records = [rec(0, 0, True, ("a",)), rec(0, 1, False, ("b",)), rec(1, 0, False, ("c",)), rec(1, 1, True, ("d",), longest_thread=900)]
    meta = {"method": "pass@2", "samples": 2, "context": 1024, "model": "m", "label": "x", "family": "sos"}
    s = summarize(records, meta)
    assert s["accuracy"] == 1.0 and s["problems"] == 2
    assert s["by_samples"]["pass@"]["1"]["accuracy"] == 0.5 and s["by_samples"]["cons@"]["2"]["accuracy"] == 0.5
    assert s["accuracy_within_context"]["512"]["accuracy"] == 0.5  # problem 1's winner needed 900 tokens
    assert s["accuracy_within_context"]["1024"]["accuracy"] == 1.0
    assert s["metrics"]["total_tokens"]["mean"] == 200  # samples add up
    assert s["by_samples"]["pass@"]["1"]["total_tokens"] == 100


# ---------------------------------------------------------------------------- scripted replays

def scripted(tok, method="apr"):
    return scripted_engine(tok, solver_traces(N, method))


def args(*argv):
    return eval_spec(build_parser().parse_args(["eval", *map(str, argv), "--quiet"]))


def test_scripted_replay_gives_the_solver_accuracy(tok, tmp_path):
    expect = []
    for p, t in zip(read_problems(VAL)[:N], solver_traces(N)):
        from apr.checker import check

        expect.append(check(p.nums, p.target, t.text()).correct)
    s = evaluate(args("--server", "scripted://apr", "--method", "apr", "--out", tmp_path / "a", "--limit", N,
                      "--context", 100_000), engine=scripted(tok))
    assert s["correct"] == sum(expect) and 0 < s["accuracy"] < 1
    assert s["metrics"]["children"]["mean"] > 0 and s["metrics"]["sequential_tokens"]["mean"] < s["metrics"]["total_tokens"]["mean"]
    assert {"p50", "p90", "p99", "mean"} <= set(s["metrics"]["latency_s"])
    assert s["machine"]["cpu"] and s["date"] and s["temperature"] == 0.0
    lo, hi = s["ci95"]
    assert lo <= s["accuracy"] <= hi
    recs = [json.loads(l) for l in open(tmp_path / "a" / "records.jsonl")]
    assert len(recs) == N and all(r["sample"] == 0 for r in recs)


def test_resumed_eval_equals_uninterrupted(tok, tmp_path):
    common = ("--server", "scripted://apr", "--method", "apr", "--context", 100_000)
    evaluate(args(*common, "--out", tmp_path / "r", "--limit", 3), engine=scripted(tok))
    with open(tmp_path / "r" / "records.jsonl", "a") as f:
        f.write('{"index": 7, "torn')  # an interrupted write
    resumed = evaluate(args(*common, "--out", tmp_path / "r", "--limit", N), engine=scripted(tok))
    fresh = evaluate(args(*common, "--out", tmp_path / "f", "--limit", N), engine=scripted(tok))
    assert resumed["accuracy"] == fresh["accuracy"] and resumed["problems"] == N
    for m in ("total_tokens", "sequential_tokens", "longest_thread", "children"):
        assert resumed["metrics"][m] == fresh["metrics"][m]
    no_time = lambda s: {w: {k: v for k, v in p.items() if k != "latency_s"} for w, p in s["accuracy_within_context"].items()}
    assert no_time(resumed) == no_time(fresh)


def test_sampled_methods_write_one_record_per_sample(tok, tmp_path):
    s = evaluate(args("--server", "scripted://sos", "--method", "cons@3", "--out", tmp_path / "c", "--limit", 4,
                      "--context", 100_000), engine=scripted(tok, "sos"))
    recs = [json.loads(l) for l in open(tmp_path / "c" / "records.jsonl")]
    assert sorted((r["index"], r["sample"]) for r in recs) == [(i, k) for i in range(4) for k in range(3)]
    assert s["temperature"] == 1.0 and set(s["by_samples"]) == {"cons@", "pass@"}
    assert len(s["by_samples"]["cons@"]) == 3


def test_solver_reference_rows(tmp_path):
    from apr.checker import check

    for kind in ("solver-apr", "solver-sos"):
        assert main(["eval", "--method", kind, "--out", str(tmp_path / kind), "--limit", "20", "--quiet"]) == 0
        s = json.loads((tmp_path / kind / "summary.json").read_text())
        recs = [json.loads(l) for l in open(tmp_path / kind / "records.jsonl")]
        assert s["family"] == "solver" and s["problems"] == 20
        assert s["correct"] == sum(check(r["nums"], r["target"], r["text"]).correct for r in recs) > 0
        if kind == "solver-apr":
            assert s["metrics"]["children"]["mean"] > 0


# ---------------------------------------------------------------------------- a tiny random model

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("m") / "model", method="sos")


def test_tiny_model_end_to_end_and_refusals(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["eval", "--model", str(model_dir), "--context", "48", "--limit", "2", "--quiet", "--device", "cpu"]
    assert main([*common, "--method", "pass@2", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["problems"] == 2 and s["samples"] == 2 and s["runtime_method"] == "sos"
    assert "48" in s["accuracy_within_context"]
    before = (out / "records.jsonl").read_bytes()
    capsys.readouterr()
    # another method into the same folder: refused, one line, nothing overwritten
    assert main([*common, "--method", "cons@2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another method" in err[0]
    # another model into the same folder
    assert main(["eval", "--method", "solver-apr", "--out", str(out), "--limit", "2", "--quiet"]) == 2
    assert "another model" in capsys.readouterr().err
    assert (out / "records.jsonl").read_bytes() == before
    # a model trained for SoS+ asked to spawn
    assert main([*common, "--method", "apr", "--out", str(tmp_path / "x")]) == 2
    assert "trained for sos" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["not_a_model", "bad_problems", "bad_method"])
def test_bad_input_is_one_line_exit_2(case, model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["eval", "--model", str(model_dir), "--method", "sos", "--out", str(out), "--quiet"]
    if case == "not_a_model":
        (tmp_path / "folder").mkdir()
        argv[2] = str(tmp_path / "folder")
    elif case == "bad_problems":
        bad = tmp_path / "p.jsonl"
        bad.write_text('{"nums": [1, 2], "target": 3}\n{"nums": [1, "2"], "target": 3}\n')
        argv += ["--problems", str(bad)]
    else:
        argv[4] = "cons@0"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("apr: error:")
    if case == "bad_problems":
        assert "p.jsonl:2:" in err[0]
    assert not out.exists()


def test_join_rule_is_part_of_a_run_and_its_summary(tok, tmp_path):
    import dataclasses

    from apr.errors import UserError

    spec = args("--server", "scripted://apr", "--method", "apr", "--out", tmp_path / "j", "--limit", 3, "--context", 100_000)
    s = evaluate(spec, engine=scripted(tok))
    assert s["join_rule"] == "official" and json.loads((tmp_path / "j" / "run.json").read_text())["join_rule"] == "official"
    c = s["competence"]
    assert c["operations"] > 0 and c["arithmetic_error_rate"] == 0.0  # the solvers' arithmetic is right
    assert c["joins"] > 0 and c["false_claim_join_rate"] == 0.0 and c["rejected_claims"] == 0
    assert sum(c["failure_reasons"]["checker"].values()) == s["problems"] - s["correct"]
    verified = dataclasses.replace(spec, runtime=dataclasses.replace(spec.runtime, join_rule="verified"))
    with pytest.raises(UserError, match="another join_rule"):
        evaluate(verified, engine=scripted(tok))
    v = evaluate(dataclasses.replace(verified, out=tmp_path / "v"), engine=scripted(tok))
    assert v["join_rule"] == "verified" and v["accuracy"] == s["accuracy"]
    recs = [json.loads(l) for l in open(tmp_path / "v" / "records.jsonl")]
    assert all(r["rejected_claims"] == 0 for r in recs)
    from apr.eval_summary import describe

    assert "(verified joins)" in describe(v) and "false claims at 0/" in describe(v)


def test_a_solver_row_at_a_result_cap(tmp_path, capsys):
    from apr.checker import OP_RE

    out = tmp_path / "capped"
    assert main(["eval", "--method", "solver-sos", "--max-result", "100", "--out", str(out), "--limit", "20",
                 "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    recs = [json.loads(l) for l in open(out / "records.jsonl")]
    assert s["label"] == "solver SoS+, results <= 100" and s["correct"] > 0
    assert max(int(m.group(4)) for r in recs for m in OP_RE.finditer(r["text"])) <= 100
    # the same folder without the cap is another run, refused; a model run cannot take it
    capsys.readouterr()
    assert main(["eval", "--method", "solver-sos", "--out", str(out), "--limit", "20", "--quiet"]) == 2
    assert "another max_result" in capsys.readouterr().err
    assert main(["eval", "--method", "sos", "--max-result", "100", "--out", str(tmp_path / "m"), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "solver-apr and solver-sos only" in err[0] and not (tmp_path / "m").exists()
    # a cap below a target of the problems asked for: refused before anything is written
    assert main(["eval", "--method", "solver-apr", "--max-result", "12", "--out", str(tmp_path / "low"), "--limit", "20",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "above --max-result 12" in err[0] and not (tmp_path / "low").exists()
