"""The child budget: the default of an APR model comes from the model (apr.json) or its
task, never a constant above what the task allows; asked of a method that cannot apply it,
it is refused; the APR solver row honours it."""

from pathlib import Path

import pytest

from apr.commands import main
from apr.errors import UserError
from apr.model_folder import ModelInfo, load_model_info
from apr.runtime_config import RuntimeConfig, default_child_budget, window_token_budget

ROOT = Path(__file__).resolve().parents[1]
CD3 = {"num_count": 3, "num_range": [1, 99], "target_range": [10, 100]}


def test_the_model_says_its_budget():
    info = ModelInfo(method="apr", budget_prefix=True, task=CD3, child_budget=4)
    assert RuntimeConfig().resolve(info).child_budget == 4
    assert RuntimeConfig(child_budget=7).resolve(info).child_budget == 7  # asked for: asked for
    assert RuntimeConfig(method="sos").resolve(info).child_budget is None


def test_without_one_the_task_caps_the_published_ten():
    assert default_child_budget(ModelInfo(method="apr", budget_prefix=True, task=CD3)) == 9
    assert default_child_budget(ModelInfo(method="apr", budget_prefix=True)) == 10  # Countdown-4
    assert RuntimeConfig().resolve(ModelInfo(method="apr", budget_prefix=False)).child_budget is None


def test_the_committed_countdown3_models_ask_for_their_swept_budget():
    # docs/reports/cpu_task_h200: budget 4 was the best of 2/4/8/10 on the validation problems;
    # docs/reports/cd3_window_budget.md: the CPU line's models run at a 512-token window, where
    # APR at budget 2 keeps every thread inside it (sessions 4-6)
    for d, budget in (("models/default", 2), ("models/sft/default", 4), ("models/rl/default", 4)):
        info = load_model_info(ROOT / d)
        assert info.child_budget == budget and info.budget_prefix  # sft/, rl/: written as `sub_call_budget: true`
        assert RuntimeConfig().resolve(info).child_budget == budget
    for d in ("models/default", "models/default-sos"):
        info = load_model_info(ROOT / d)
        resolved = RuntimeConfig().resolve(info)
        assert (info.eval_context, resolved.context) == (512, 512)
    assert RuntimeConfig().resolve(load_model_info(ROOT / "models/default-sos")).token_budget == 512


def test_a_setting_of_the_other_method_is_refused_not_ignored():
    with pytest.raises(UserError, match="`child_budget` applies to APR only; this run's method is sos"):
        RuntimeConfig(child_budget=3).resolve(ModelInfo(method="sos"))
    with pytest.raises(UserError, match="`token_budget` applies to SoS\\+ only"):
        RuntimeConfig(token_budget=512).resolve(ModelInfo(method="apr"))
    with pytest.raises(UserError, match="`child_budget` must be >= 1, got 0"):
        RuntimeConfig(child_budget=0)


def test_the_command_line_names_the_option(tmp_path, capsys):
    model = ROOT / "models" / "default-sos"
    argv = ["run", "--model", str(model), "--problems", str(ROOT / "models/default/val_problems.jsonl"),
            "--out", str(tmp_path / "o.jsonl"), "--limit", "1", "--quiet"]
    assert main([*argv, "--child-budget", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["apr: error: --child-budget applies to APR only; this run's method is sos"]
    assert main([*argv, "--sub-call-budget", "3"]) == 2  # the old name: a hidden alias
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "apr: warning: --sub-call-budget is deprecated; use --child-budget"
    assert err[1] == "apr: error: --child-budget applies to APR only; this run's method is sos"
    assert not (tmp_path / "o.jsonl").exists()


def test_the_apr_solver_row_runs_at_the_budget_asked(tmp_path):
    import json

    def children(out, *extra):
        assert main(["eval", "--method", "solver-apr", "--out", str(tmp_path / out), "--limit", "30", "--quiet",
                     *extra]) == 0
        recs = [json.loads(line) for line in open(tmp_path / out / "records.jsonl")]
        return [r["children"] for r in recs], json.loads((tmp_path / out / "summary.json").read_text())

    free, _ = children("free")
    capped, summary = children("capped", "--child-budget", "2")
    assert max(free) > 2 and max(capped) <= 2 and sum(c > 0 for c in capped) > 0
    assert summary["child_budget"] == 2 and summary["label"] == "solver APR, budget 2"
    assert main(["eval", "--method", "solver-sos", "--out", str(tmp_path / "s"), "--child-budget", "2"]) == 2
    assert main(["eval", "--method", "solver-apr", "--out", str(tmp_path / "t"), "--context", "512"]) == 2
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


def test_a_token_budget_model_is_asked_for_what_fits_its_window():
    info = ModelInfo(method="sos", budget_prefix=True, context=1024)
    assert RuntimeConfig().resolve(info).token_budget == 1024  # its training window
    assert RuntimeConfig(context=512).resolve(info).token_budget == 512  # a shorter window asks for less
    assert RuntimeConfig(context=700, token_budget=1536).resolve(info).token_budget == 1536  # asked for: asked for
    assert [window_token_budget(c) for c in (100, 512, 1000, 1024, 4096, 32768)] == [512, 512, 512, 1024, 4096, 4096]
    assert RuntimeConfig().resolve(ModelInfo(method="sos", budget_prefix=False)).token_budget is None
