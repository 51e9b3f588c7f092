"""Exact arithmetic (issue 20) through the commands and what they write: `apr run`, `apr
solve`, `apr eval`, `apr demo` accept `--arithmetic exact` on the local engine; records, run
identity, summaries, printed lines and `apr report` rows and legends say so; forced tokens are
counted apart; a run folder or records file of the other mode is refused."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from support.models import save_apr_model_dir, tiny_model  # noqa: E402,F401
from support.traces import solver_traces  # noqa: E402
from test_arithmetic_exact import DEVICE, OP_LINE, PROBS, corrupt, follow, steer  # noqa: E402

from apr.checker import check  # noqa: E402

from apr.commands import main  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.scripted import script_from_thread  # noqa: E402
from apr.engine.spec import EngineSpec  # noqa: E402
from apr.eval import EvalSpec, evaluate  # noqa: E402
from apr.runtime_config import RuntimeConfig  # noqa: E402

from apr.datasets import packaged_validation_set  # noqa: E402

VAL = str(packaged_validation_set())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("exact_cli") / "model")


def cli(*args) -> int:
    return main([str(a) for a in args])


def common(model_dir, out, *extra):
    return ("--model", model_dir, "--problems", VAL, "--limit", 2, "--context", 64, "--out", out, "--quiet", *extra)


# ---------------------------------------------------------------------------- commands

def test_run_writes_exact_records_and_refuses_the_other_mode(model_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert cli("run", *common(model_dir, out, "--arithmetic", "exact")) == 0
    assert "exact arithmetic" in capsys.readouterr().err
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 2
    assert all(r["arithmetic"] == "exact" and r["forced_tokens"] == r["threads"]["forced_tokens"] == 0 for r in recs)
    assert cli("run", *common(model_dir, out)) == 2  # unassisted into an exact file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arithmetic 'exact', not 'model'" in err[0]
    plain = tmp_path / "p.jsonl"
    assert cli("run", *common(model_dir, plain)) == 0
    assert all("arithmetic" not in json.loads(line) for line in plain.read_text().splitlines())
    assert cli("run", *common(model_dir, plain, "--arithmetic", "exact")) == 2


def test_eval_labels_identity_summary_and_line(model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert cli("eval", "--method", "apr", *common(model_dir, out, "--arithmetic", "exact", "--label", "mine")) == 0
    line = capsys.readouterr().err
    meta = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert meta["arithmetic"] == summary["arithmetic"] == "exact"
    assert meta["label"] == summary["label"] == "mine, exact arithmetic"  # a given label gets it too
    assert "mine, exact arithmetic:" in line and "forced tokens" in line and "written by the engine" in line
    assert summary["metrics"]["forced_tokens"]["mean"] == 0 and summary["competence"]["forced_results"] == 0
    assert cli("eval", "--method", "apr", *common(model_dir, out, "--label", "mine")) == 2  # resuming, unassisted
    assert "another arithmetic" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert cli("eval", "--method", "apr", *common(model_dir, plain)) == 0
    s = json.loads((plain / "summary.json").read_text())
    assert "arithmetic" not in s and "forced_tokens" not in s["metrics"] and "exact" not in s["label"]
    assert "arithmetic" not in json.loads((plain / "run.json").read_text())
    assert cli("eval", "--method", "apr", *common(model_dir, plain, "--arithmetic", "exact")) == 2


def test_solve_and_demo_say_exact(model_dir, capsys):
    assert cli("solve", 4, 9, 3, "--target", 24, "--model", model_dir, "--context", 64, "--arithmetic", "exact") == 0
    out = capsys.readouterr().out
    assert "exact arithmetic" in out and "forced" in out
    assert cli("demo", "--model", model_dir, "--n", 1, "--pool", 2, "--arithmetic", "exact") == 0
    out = capsys.readouterr().out
    assert "exact arithmetic" in out and "forced" in out


@pytest.mark.parametrize("argv", [["demo", "--solver", "--arithmetic", "exact"],
                                  ["eval", "--method", "solver-apr", "--limit", "1", "--arithmetic", "exact"]])
def test_exact_without_a_model_is_refused(argv, tmp_path, capsys):
    argv = argv + (["--out", str(tmp_path / "o")] if argv[0] == "eval" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--arithmetic" in err[0]


# ---------------------------------------------------------------------------- eval and report, side by side

@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """The same model, steered to write solver traces with every result corrupted, evaluated
    unassisted and with exact arithmetic (the engine writes the solver's results back)."""
    tmp = tmp_path_factory.mktemp("exact_eval")
    model = save_apr_model_dir(tmp / "model")
    script: dict[str, str] = {}
    for t in solver_traces(3):
        script_from_thread(t, script)
    dirs = {}
    for mode in ("model", "exact"):
        eng = LocalEngine(model, max_slots=48, max_len=2048, device=DEVICE, dtype="float32")
        # exact: the engine writes the solver's results back, so contexts are the solver's;
        # unassisted: they hold the corrupted results
        bad = {ctx if mode == "exact" else corrupt(ctx): corrupt(seg) for ctx, seg in script.items()}
        steer(eng, follow(eng.tokenizer, bad))
        spec = EvalSpec("apr", tmp / mode, EngineSpec(model=str(model)), RuntimeConfig(context=2048, arithmetic=mode),
                        problems=VAL, limit=3, progress=False)
        evaluate(spec, engine=eng)
        dirs[mode] = tmp / mode
    return dirs


def test_eval_counts_forced_tokens_apart_and_competence_honestly(side_by_side):
    s = {m: json.loads((d / "summary.json").read_text()) for m, d in side_by_side.items()}
    recs = [json.loads(line) for line in (side_by_side["exact"] / "records.jsonl").read_text().splitlines()]
    ex, un = s["exact"]["competence"], s["model"]["competence"]
    assert un["arithmetic_errors"] == un["operations"] > 0  # every result corrupted
    assert ex["arithmetic_errors"] == 0 and ex["forced_results"] == ex["operations"] == un["operations"]
    digits = sum(len(m.group(4)) for r in recs for m in OP_LINE.finditer(r["text"]))
    assert sum(r["forced_tokens"] for r in recs) >= digits > 0  # root texts; children's results too
    assert s["exact"]["metrics"]["forced_tokens"]["mean"] == pytest.approx(sum(r["forced_tokens"] for r in recs) / 3)
    # forced tokens are in the totals: the same trace, token for token, costs as much either way
    assert s["exact"]["metrics"]["total_tokens"]["mean"] == s["model"]["metrics"]["total_tokens"]["mean"]
    solved = [check(p.nums, p.target, t.text()).correct for p, t in zip(PROBS, solver_traces(3))]
    assert s["exact"]["accuracy"] == sum(solved) / 3 > 0 and s["model"]["accuracy"] == 0  # wrong arithmetic fails


def test_report_labels_exact_rows_and_sets_them_beside_unassisted(side_by_side, tmp_path):
    from apr.report_plots import cost_series
    from apr.report_runs import load_runs, primary

    out = tmp_path / "report"
    assert main(["report", str(side_by_side["model"]), str(side_by_side["exact"]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| APR greedy") and "| apr | official |" in line]
    assert rows and all(("exact arithmetic" in r) == ("forced" in r) for r in rows)
    assert any("exact arithmetic" in r for r in rows) and any("exact arithmetic" not in r for r in rows)
    assert "## Exact arithmetic (an ablation)" in md and "an ablation, not results about the models" in md
    ablation = md.split("## Exact arithmetic (an ablation)")[1].split("##")[0]
    assert "+33.3" in ablation and "no unassisted run" not in ablation  # 1 of 3 solved only with exact arithmetic
    runs = load_runs([str(side_by_side["exact"]), str(side_by_side["model"])])
    assert primary(runs, "apr")["dir"] == str(side_by_side["model"])  # the published comparisons: unassisted
    labels = [label for label, *_ in cost_series(runs, "total_tokens")]
    assert sorted(labels) == ["APR (one sample)", "APR, exact arithmetic (one sample)"]
    # a summary from before the mode had labels: the report adds it
    d = side_by_side["exact"]
    s = json.loads((d / "summary.json").read_text())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({**s, "label": "renamed"}))
    assert load_runs([str(tmp_path / "old")])[0]["label"] == "renamed, exact arithmetic"
