"""The default child budget of an APR model comes from the model (apr.json) or its task,
never a constant above what the task allows."""

from pathlib import Path

from apr.model import ModelInfo, load_model_info
from apr.runtime import RuntimeConfig, default_child_budget

ROOT = Path(__file__).resolve().parents[1]
CD3 = {"num_count": 3, "num_range": [1, 99], "target_range": [10, 100]}


def test_the_model_says_its_budget():
    info = ModelInfo(method="apr", sub_call_budget=True, task=CD3, child_budget=4)
    assert RuntimeConfig.for_model(info).sub_call_budget == 4
    assert RuntimeConfig.for_model(info, sub_call_budget=7).sub_call_budget == 7  # asked for: asked for
    assert RuntimeConfig.for_model(info, method="sos").sub_call_budget is None


def test_without_one_the_task_caps_the_published_ten():
    assert default_child_budget(ModelInfo(method="apr", sub_call_budget=True, task=CD3)) == 9
    assert default_child_budget(ModelInfo(method="apr", sub_call_budget=True)) == 10  # Countdown-4
    assert RuntimeConfig.for_model(ModelInfo(method="apr", sub_call_budget=False)).sub_call_budget is None


def test_the_committed_countdown3_models_ask_for_their_swept_budget():
    # docs/reports/cpu_task_h200: budget 4 was the best of 2/4/8/10 on the validation problems
    for d in ("models/default", "models/sft/default"):
        assert load_model_info(ROOT / d).child_budget == 4
