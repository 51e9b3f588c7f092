"""scripts/cpu_session.py at toy size: data, both trainings, paired evaluations, solver rows,
then --apply (ledger rows; a model kept only when it beats its start)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("cpu_session", ROOT / "scripts" / "cpu_session.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_cpu_session_end_to_end_at_toy_size(tmp_path):
    s = load_script()
    out, models, ledger = tmp_path / "s1", tmp_path / "models", tmp_path / "ledger.md"
    argv = ["--toy", "--out", str(out), "--models", str(models), "--start", str(tmp_path / "none"), "--minutes", "0.05",
            "--eval-problems", "3"]
    assert s.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    for name in ("default", "default-sos"):
        row = res["jobs"][name]
        assert row["init"] == "" and row["tokens"] > 0 and row["new"]["problems"] == 3
        assert row["solver"]["accuracy_at_window"] >= 0 and row["solver"]["label"].endswith("results <= 100")
    for method, order in (("apr", "hybrid"), ("sos", "ranked")):  # the recipe's demonstrations
        first = json.loads((out / f"data/{method}.jsonl").read_text().splitlines()[0])
        assert first["solver"]["order"] == order and first["solver"]["max_result"] == 100
    info = json.loads((out / "train/default/final/apr.json").read_text())
    assert info["tokenizer_name"] == s.TOY.tokenizer and info["budget_prefix"] is True
    sos = json.loads((out / "train/default-sos/final/apr.json").read_text())
    assert sos["budget_prefix"] is True  # the recipe's SoS+ asks for a token budget
    config = (out / "train/default/config.yaml").read_text()
    assert "goal_drills: 1.5" in config and "goal_drills: 0.0" in (out / "train/default-sos/config.yaml").read_text()
    lines = s.apply(out, models, ledger)
    assert len(lines) == 2 and ledger.read_text().count("\n| 20") == 2
    assert "ranked nodes" in lines[1] and "hybrid" not in lines[1] and "goal drills" not in lines[1]  # SoS+ row
    assert "hybrid nodes" in lines[0] and "goal drills 1.5" in lines[0] and "token budget prefix" in lines[1]  # APR row
    assert all("results <= 100" in line for line in lines)
    history = json.loads((models / "default/training_history.json").read_text())
    assert history[-1]["session"] == 1 and (models / "default-sos/model.safetensors").exists()
    # The losing arm of an A/B: its rows are written, no model is kept.
    lines = s.apply(out, tmp_path / "other", ledger, record_only=True)
    assert all("not kept" in line for line in lines) and not (tmp_path / "other").exists()
    assert ledger.read_text().count("| date |") == 1  # rows after rows: one table
    # Rows after a session's notes get the table's head again, so they render as a table.
    ledger.write_text(ledger.read_text() + "\nSession 1: notes.")
    s.apply(out, tmp_path / "other", ledger, record_only=True)
    text = ledger.read_text()
    assert text.count("| date |") == 2 and "notes.\n\n| date |" in text and text.count("\n| 20") == 6
    # The next session starts from these models (same recipe) and evaluates them paired.
    args = s.argparse.Namespace(toy=True, out=str(tmp_path / "s2"), models=str(models), start=str(tmp_path / "none"),
                                session=2, jobs="")
    assert s.Session(args).init_of(s.JOBS[0]) == models / "default"
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "arithmetic_facts": 0.25, "facts_min_result": 0}))
    assert (arm.recipe.arithmetic_facts, arm.recipe.arithmetic_facts_min_result) == (0.25, 0)
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "node_drills": 0.5}))
    assert (arm.recipe.node_drills, arm.recipe.arithmetic_facts) == (0.5, 0.0)
    assert (s.Recipe().goal_drills, s.Recipe().sos_budget_prefix, s.Recipe().apr_order) == (1.5, True, "hybrid")
    assert s.Recipe().max_result == 100  # the recipe since session 9; an arm may lift the cap
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "max_result": 0}))
    assert arm.recipe.max_result is None
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "goal_drills": 0.5, "no_sos_budget_prefix": True}))
    assert (arm.recipe.goal_drills, arm.recipe.sos_budget_prefix, arm.recipe.node_drills) == (0.5, False, 0.0)
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "order": "shuffled"}))
    assert (arm.recipe.apr_order, arm.recipe.sos_order) == ("shuffled", "shuffled")
    # a wider arm starts from the narrow line's model (grown, apr.train.grow); a deeper one cannot
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "product_drills": 1.0, "preset": "cpu-wide"}))
    assert (arm.recipe.product_drills, arm.recipe.preset) == (1.0, "cpu-wide")
    assert arm.init_of(s.JOBS[0]) == models / "default" and s.Recipe().product_drills == 0.0
    arm = s.Session(s.argparse.Namespace(**{**vars(args), "preset": "cpu-deep"}))
    with pytest.raises(s.RecipeMismatch, match="cpu-mini model"):  # never silently restarted from --start
        arm.init_of(s.JOBS[0])
    wide = tmp_path / "wide"
    (wide / "default").mkdir(parents=True)
    info = json.loads((models / "default/apr.json").read_text())
    (wide / "default/apr.json").write_text(json.dumps({**info, "preset": "cpu-wide"}))
    code = s.main(["--toy", "--out", str(tmp_path / "s3"), "--models", str(wide), "--jobs", "apr"])
    assert code == 2 and not (tmp_path / "s3").exists()  # refused before any work
    # a rerun into the same --out asking for other demonstrations: refused, the data kept as it is
    done = (out / "data/done.json").read_text()
    assert json.loads(done)["max_result"] == 100
    code = s.main(["--toy", "--out", str(out), "--models", str(models), "--jobs", "apr", "--max-result", "0"])
    assert code == 2 and (out / "data/done.json").read_text() == done


def test_better_needs_accuracy_or_fewer_errors():
    s = load_script()
    run = lambda acc, err: {"accuracy": acc, "competence": {"arithmetic_error_rate": err}}  # noqa: E731
    assert s.better(run(0.5, 0.1), None)
    assert s.better(run(0.5, 0.1), run(0.4, 0.0)) and s.better(run(0.5, 0.1), run(0.5, 0.2))
    assert not s.better(run(0.5, 0.1), run(0.5, 0.1)) and not s.better(run(0.4, 0.0), run(0.5, 0.3))


def test_bad_arm_options_are_refused_before_any_work(tmp_path, capsys):
    import pytest

    s = load_script()
    for argv in (["--arithmetic-facts", "-1"], ["--arithmetic-facts", "0.2", "--facts-min-result", "-5"],
                 ["--facts-min-result", "0"], ["--record-only"], ["--arithmetic-facts", "x"], ["--node-drills", "0"], ["--node-drills", "11"],
                 ["--goal-drills", "11"], ["--goal-drills", "-2"], ["--product-drills", "11"],
                 ["--product-drills", "-1"], ["--preset", "cpu-deep"], ["--max-result", "-1"],
                 ["--product-drills", "1"], ["--arithmetic-facts", "0.2", "--max-result", "100"]):
        with pytest.raises(SystemExit) as e:
            s.main(["--toy", "--out", str(tmp_path / "s"), *argv])
        assert e.value.code == 2
        assert ": error: " in capsys.readouterr().err.strip().splitlines()[-1]  # one line says what is wrong
    assert not (tmp_path / "s").exists()  # nothing written


def test_a_continued_model_keeps_its_starts_window_and_budget(tmp_path):
    s = load_script()
    start, final = tmp_path / "start", tmp_path / "final"
    for d, info in ((start, {"method": "apr", "eval_context": 512, "child_budget": 2}),
                    (final, {"method": "apr", "eval_context": None, "child_budget": 6, "context": 1024})):
        d.mkdir()
        (d / "apr.json").write_text(json.dumps(info))
    s.keep_start_settings(final, start)
    assert json.loads((final / "apr.json").read_text()) == {"method": "apr", "eval_context": 512, "child_budget": 2,
                                                            "context": 1024}
    (final / "apr.json").write_text(json.dumps({"method": "sos", "eval_context": None, "child_budget": None}))
    s.keep_start_settings(final, start)  # SoS+: the window, no budget
    assert json.loads((final / "apr.json").read_text()) == {"method": "sos", "eval_context": 512, "child_budget": None}
    s.keep_start_settings(final, None)  # trained from scratch: as SFT wrote it
    assert json.loads((final / "apr.json").read_text())["eval_context"] == 512
