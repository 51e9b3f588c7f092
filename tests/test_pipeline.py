"""`apr pipeline`: a smoke run with tiny sizes (every stage, then a rerun that skips them),
the export of both models, and bad options."""

import json

from apr.commands import main


def test_pipeline_smoke_and_resume(tmp_path, capsys):
    out, export = tmp_path / "p", tmp_path / "models" / "default"
    argv = ["pipeline", "--preset", "cpu", "--out", str(out), "--train-problems", "12", "--steps", "1",
            "--batch-size", "1", "--context", "1024", "--eval-context", "24", "--eval-limit", "1", "--cons-n", "2",
            "--cons-limit", "1", "--budgets", "2", "--workers", "1", "--model-preset", "cpu-mini"]
    assert main([*argv, "--export", str(export)]) == 0
    for name in ("apr", "sos", "solver_apr", "solver_sos", "sos_cons2", "apr_budget2"):
        assert (out / "eval" / name / "summary.json").is_file(), name
    for name in ("report.md", "context.png", "tokens.png", "latency.png"):
        assert (out / "report" / name).is_file()
    info = json.loads((out / "train" / "apr" / "final" / "apr.json").read_text())
    assert info["method"] == "apr" and info["task"]["num_count"] == 3 and info["budget_prefix"]
    assert (out / "train" / "apr" / "final" / "val_problems.jsonl").is_file()  # `apr eval --model` finds its set
    assert (export / "model.safetensors").is_file() and (export.parent / "default-sos" / "apr.json").is_file()
    assert "apr pipeline" in (export.parent / "README.md").read_text()
    # same tokens for both models: same steps x batch x context
    cfgs = [(out / "train" / m / "config.yaml").read_text() for m in ("apr", "sos")]
    assert all("max_steps: 1" in c and "batch_size: 1" in c for c in cfgs)
    capsys.readouterr()
    # a rerun skips every finished stage
    assert main(argv) == 0
    assert "data: exists" in capsys.readouterr().err


def test_pipeline_bad_options(tmp_path, capsys):
    assert main(["pipeline", "--preset", "cpu", "--out", str(tmp_path / "x"), "--stages", "data,bogus"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["pipeline", "--preset", "cpu", "--out", str(tmp_path / "y"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_demo_without_a_model_shows_the_solver(tmp_path, monkeypatch, capsys):
    import apr.commands.demo as demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "find_default_model", lambda: None)
    assert main(["demo", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "symbolic APR solver" in out and "checker:" in out
    # models/default in the current directory is found first
    (tmp_path / "models" / "default").mkdir(parents=True)
    (tmp_path / "models" / "default" / "config.json").write_text("{}")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert demo.find_default_model() == tmp_path / "models" / "default"


def test_demo_with_the_committed_default_model(capsys):
    import re

    from pathlib import Path

    model = Path(__file__).resolve().parents[1] / "models" / "default"
    assert main(["demo", "--model", str(model), "--n", "2", "--pool", "4"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"solved (\d+) of 4", out)
    assert m, out
    assert out.count("checker:") == 2 and "Moving to Node #0," in out  # children shown under the parent


def test_pipeline_refuses_stage_outputs_of_other_settings(tmp_path, capsys):
    import dataclasses

    from apr.pipeline import PRESETS

    d = tmp_path / "data"
    d.mkdir()
    (d / "done.json").write_text(json.dumps({"preset": dataclasses.asdict(PRESETS["cpu"]), "seed": 0}))
    assert main(["pipeline", "--preset", "cpu", "--out", str(tmp_path), "--stages", "data", "--train-problems", "7"]) == 2
    assert "train_problems 4000, not 7" in capsys.readouterr().err


def test_demo_and_pipeline_refuse_bad_options(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["demo", "--pool", "0"]) == 2
    assert "--pool" in capsys.readouterr().err
    assert main(["pipeline", "--preset", "cpu", "--train-seconds", "-5", "--out", str(tmp_path / "p")]) == 2
    assert "--train-seconds" in capsys.readouterr().err and not (tmp_path / "p").exists()
