"""`apr report`: plots and report.md from real run folders (scripted solver replays, the
solver reference rows) and a partial (interrupted) run."""

import json

import pytest
from support.traces import scripted_engine, solver_traces

from apr.commands import build_parser, main
from apr.commands.eval import eval_spec
from apr.eval import evaluate
from apr.records import Record
from apr.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    tok = build_tokenizer()

    def engine(method):
        return scripted_engine(tok, solver_traces(6, method))

    def ev(name, *argv):
        a = build_parser().parse_args(["eval", "--out", str(tmp / name), "--limit", "6", "--quiet", "--context", "8192", *argv])
        evaluate(eval_spec(a), engine=engine(name[:3]))
        return tmp / name

    dirs = [ev("apr", "--server", "scripted://apr", "--method", "apr"),
            ev("sos", "--server", "scripted://sos", "--method", "sos"),
            ev("sos_cons3", "--server", "scripted://sos", "--method", "cons@3")]
    for kind in ("solver-apr", "solver-sos"):
        assert main(["eval", "--method", kind, "--out", str(tmp / kind), "--limit", "6", "--quiet"]) == 0
        dirs.append(tmp / kind)
    return dirs


def test_report_writes_plots_and_table(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    for name in ("context.png", "tokens.png", "latency.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "report.md").read_text()
    for needed in ("83.4", "60.0", "80.1", "66.6", "75.2", "57.3", "75.5", "solver APR", "cons@", "Notes",
                   "arithmetic errors % (operations)", "false-claim joins % (joins)", "| official |", "## Why samples failed"):
        assert needed in md
    s = json.loads((runs[0] / "summary.json").read_text())
    assert f"{100 * s['accuracy']:.1f}" in md


def test_report_summarizes_an_interrupted_run(runs, tmp_path):
    import shutil

    d = tmp_path / "partial"
    shutil.copytree(runs[0], d)
    (d / "summary.json").unlink()
    lines = (d / "records.jsonl").read_text().splitlines()
    indices = sorted(json.loads(line)["index"] for line in lines)
    assert len(indices) >= 3
    gap = indices[1]  # unfinished: only the problems before it may count
    (d / "records.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["index"] != gap))
    assert main(["report", str(d), str(runs[1]), "--out", str(tmp_path / "r")]) == 0
    assert f"(partial: first {gap})" in (tmp_path / "r" / "report.md").read_text()
    assert not (d / "summary.json").exists()  # the report reads run folders, never writes into them
    from apr.report_runs import load_runs

    assert load_runs([str(d)])[0]["problems"] == gap


def test_reports_name_folders_relative_to_the_current_directory(runs, tmp_path, monkeypatch):
    """A committed report must not name the writing machine's folders: paths given absolute
    are written relative to the current directory, or as their name when outside it."""
    import shutil

    from apr.report import shown

    repo = tmp_path / "repo"
    (repo / "runs").mkdir(parents=True)
    local = [shutil.copytree(r, repo / "runs" / r.name) for r in runs[:2]]
    summary = json.loads((local[0] / "summary.json").read_text())
    summary["model"] = str(repo / "models" / "default")  # as `apr eval` writes it: resolved
    (local[0] / "summary.json").write_text(json.dumps(summary))
    monkeypatch.chdir(repo)
    assert main(["report", *map(str, local), str(runs[2]), "--out", str(repo / "report")]) == 0
    md = (repo / "report" / "report.md").read_text()
    assert f"Runs: `runs/{local[0].name}`, `runs/{local[1].name}`, `{runs[2].name}`." in md
    assert "- model `models/default`" in md and "`scripted://sos`" in md  # a server URL is no folder
    assert str(tmp_path) not in md and str(runs[2].parent) not in md

    rl = repo / "runs" / "rl"
    rl.mkdir()
    rows = [{"step": 0, "val_accuracy": 0.2}, {"step": 1, "reward": 0.5, "kl": 0.0}, {"step": 1, "val_accuracy": 0.3}]
    (rl / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", "--rl", str(rl), "--out", str(repo / "rl_report")]) == 0
    md = (repo / "rl_report" / "rl.md").read_text()
    assert "`runs/rl`" in md and str(tmp_path) not in md
    assert shown("runs/apr") == "runs/apr" and shown(repo) == "." and shown("/elsewhere/final") == "final"


def test_report_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "summary.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rl_report_from_metrics(tmp_path):
    d = tmp_path / "rl"
    d.mkdir()
    (d / "config.yaml").write_text("init: nowhere\nmethod: apr\nval_limit: 100\nbatch_size: 4\n")
    rows = [{"step": 0, "val_accuracy": 0.30}]
    rows += [{"step": s, "reward": 0.1 * s, "kl": 0.01, "children": 4.0 + s, "total_tokens": 1000 + 100 * s,
              "zero_adv_groups": 0.5} for s in range(1, 11)]
    rows += [{"step": 10, "val_accuracy": 0.45}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", "--rl", str(d), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "rl.md").read_text()
    assert (tmp_path / "out" / "rl_curve.png").stat().st_size > 1000
    row = next(line for line in md.splitlines() if line.startswith("| apr"))
    # before 30/100, after 45/100 (Wilson intervals), +15 points; first/last 5 steps: children 7 / 12, tokens 1,300 / 1,800
    assert "30.0 [21.9, 39.6]" in row and "45.0 [35.6, 54.8]" in row and "+15.0" in row
    assert "7.0 / 12.0" in row and "1,300 / 1,800" in row and "50%" in row


def test_rl_report_refuses_a_folder_without_metrics(tmp_path, capsys):
    assert main(["report", "--rl", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_paired_change_counts_discordant_problems(tmp_path):
    from apr.report_rl import paired_change

    def run(name, solved, longest=1):
        d = tmp_path / name
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"samples": 1, "method": "sos"}))
        rec = lambda i, c: Record(index=i, sample=0, correct=c, nums=[1, 2], target=3, text="", reason="", answer=[],
                                  total_tokens=1, sequential_tokens=1, longest_thread=longest if i % 2 else 1, children=0,
                                  latency_s=0.0, method="sos")
        (d / "records.jsonl").write_text("".join(json.dumps(rec(i, c).to_json()) + "\n" for i, c in enumerate(solved)))
        return d

    before = run("before", [True] * 40 + [False] * 60)
    after = run("after", [True] * 38 + [False] * 2 + [True] * 30 + [False] * 30)  # 2 lost, 30 gained
    c = paired_change(before, after)
    assert (c["problems"], c["gained"], c["lost"]) == (100, 30, 2)
    assert c["change"] == pytest.approx(0.28) and 0.15 < c["ci95"][0] < 0.28 < c["ci95"][1] < 0.40
    same = paired_change(before, before)
    assert same["change"] == 0 and same["ci95"] == [0.0, 0.0]
    # within a window: the odd problems' longest thread (600 tokens) does not fit 512
    long = run("long", [True] * 100, longest=600)
    assert paired_change(before, long)["after"] == 1.0
    assert paired_change(before, long, window=512)["after"] == 0.5 and paired_change(before, long, window=600)["after"] == 1.0


def test_paired_table_shows_arithmetic_errors_and_tokens_before_and_after(tmp_path):
    from apr.report_rl import paired_lines

    def run(name, solved, summary):
        d = tmp_path / name
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"samples": 1, "method": "sos"}))
        rec = lambda i, c: Record(index=i, sample=0, correct=c, nums=[1, 2], target=3, text="", reason="", answer=[],
                                  total_tokens=1, sequential_tokens=1, longest_thread=1, children=0, latency_s=0.0,
                                  method="sos")
        (d / "records.jsonl").write_text("".join(json.dumps(rec(i, c).to_json()) + "\n" for i, c in enumerate(solved)))
        if summary is not None:
            (d / "summary.json").write_text(json.dumps(summary))
        return str(d)

    before = run("before", [True, False, False, False], {"competence": {"arithmetic_error_rate": 0.06},
                                                         "metrics": {"total_tokens": {"mean": 441.3}}})
    after = run("after", [True, True, True, False], {"competence": {"arithmetic_error_rate": 0.121},
                                                     "metrics": {"total_tokens": {"mean": 1333.0}}})
    old = run("old", [False] * 4, None)  # no summary.json (an older or unfinished run): dashes, not an error
    odd = run("odd", [False] * 4, {"competence": [], "metrics": {"total_tokens": 5}})  # keys of other shapes: dashes
    header, _, row, row_old, row_odd = paired_lines([(before, after), (old, after), (odd, after)])
    assert row_odd == row_old.replace("`old`", "`odd`")
    assert header.endswith("| arithmetic errors % | tokens per problem |")
    assert row.endswith("| 25.0 | 75.0 | +50.0 [+0.0, +100.0] | 2 | 0 | 6.0 → 12.1 | 441 → 1,333 |"), row
    assert row_old.endswith("| 0.0 | 75.0 | +75.0 [+25.0, +100.0] | 3 | 0 | – | – |"), row_old


def test_committed_reports_name_no_machine_folders():
    import re
    from pathlib import Path

    reports = Path(__file__).resolve().parents[1] / "docs" / "reports"
    machine = re.compile(r"(?<![\w.])/(work|root|home|tmp|Users|mnt|scratch)/")
    files = [p for p in reports.rglob("*") if p.suffix in (".md", ".yaml", ".json", ".jsonl", ".txt")]
    assert files
    found = [f"{p.relative_to(reports)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             if machine.search(line)]
    assert not found, found


def test_headline_rows_say_when_our_model_had_rl(runs, tmp_path):
    """The published rows compare supervised with supervised and RL with RL models: a cell
    whose model differs says so, from `rl_steps` in its apr.json (absent: not recorded)."""
    import shutil

    def with_model(run, name, info):
        d = shutil.copytree(run, tmp_path / name)
        model = tmp_path / f"model-{name}"
        model.mkdir()
        if info is not None:
            (model / "apr.json").write_text(json.dumps({"method": name[:3], "preset": "tiny", **info}))
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "model": str(model)}))
        return d

    apr = with_model(runs[0], "apr", {"rl_steps": 40})
    sos = with_model(runs[1], "sos", {})  # written before rl_steps
    assert main(["report", str(apr), str(sos), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    greedy = next(line for line in md.splitlines() if line.startswith("| greedy, no RL"))
    assert "(after 40 RL steps)" in greedy and "(RL not recorded)" in greedy
    at4k = next(line for line in md.splitlines() if line.startswith("| at 4k context"))
    assert "after 40" not in at4k and "(RL not recorded)" in at4k  # RL against RL: nothing to say
    assert "supervised, then 40 GRPO steps" in md and "RL not recorded in apr.json" in md

    apr0 = with_model(runs[0], "apr0", {"rl_steps": 0})
    assert main(["report", str(apr0), "--out", str(tmp_path / "r0")]) == 0
    md = (tmp_path / "r0" / "report.md").read_text()
    at4k = next(line for line in md.splitlines() if line.startswith("| at 4k context"))
    assert "(no RL)" in at4k and "supervised only" in md


def test_runs_under_another_join_rule_stay_out_of_the_published_rows(runs, tmp_path):
    import shutil

    d = shutil.copytree(runs[0], tmp_path / "verified")
    s = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**s, "join_rule": "verified", "problems": 999, "accuracy": 0.987,
                                                "label": "APR, verified join"}))
    assert main(["report", str(d), str(runs[0]), str(runs[1]), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    greedy = next(line for line in md.splitlines() if line.startswith("| greedy, no RL"))
    assert "98.7" not in greedy and f"{100 * s['accuracy']:.1f}" in greedy
    assert "| APR, verified join | apr | verified |" in md  # still in the table of every run


def test_paired_benchmark_refuses_what_it_cannot_compare(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("paired", Path(__file__).parents[1] / "benchmarks" / "paired.py")
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"samples": 4, "method": "sos"}))
    (run / "records.jsonl").write_text("")
    for argv, says in (([str(tmp_path / "none"), str(run)], "no records.jsonl"),
                       ([str(run), str(run), "--window", "0"], "--window must be 1 or more"),
                       ([str(run), str(run)], "one sample per problem")):
        with pytest.raises(SystemExit) as e:
            paired.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert ": error: " in err and says in err
