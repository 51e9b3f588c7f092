"""`init`: a supervised run that starts from an earlier run's model (how GPU windows add up),
and the child budget a trained APR model records for itself."""

import json

import pytest

from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.errors import UserError
from apr.model_folder import load_model_info
from apr.search import AprConfig
from apr.train.config import load_config
from apr.train.sft import train_sft


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "val.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 24}) + "\n")
    with open(d / "demos.jsonl", "w") as f:
        for i, p in enumerate(generate(30, seed=5, task=TaskConfig(num_count=3, num_max=20, target_min=10, target_max=30))):
            f.write(json.dumps(demonstration(p, i, 0, AprConfig(budget_prefix=True))) + "\n")
    return d


def run(demos, out, *extra):
    sets = [f"data={demos / 'demos.jsonl'}", f"eval_problems={demos / 'val.jsonl'}", f"out_dir={out}", "model=cpu-mini",
            "context=512", "batch_size=4", "log_every=1", "eval_every=0", "val_fraction=0", "optim.lr=3e-3",
            "optim.warmup_steps=1", "budget_prefix=true", "device=cpu", *extra]
    return train_sft(load_config(None, sets))


def first_loss(out):
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_a_run_continues_from_init_and_records_its_child_budget(demos, tmp_path):
    first = run(demos, tmp_path / "a", "max_steps=12")
    info = load_model_info(first)
    assert info.child_budget is not None and info.child_budget >= 1
    fresh = run(demos, tmp_path / "b", "max_steps=1")
    cont = run(demos, tmp_path / "c", "max_steps=1", f"init={first}")
    assert first_loss(tmp_path / "c") < first_loss(tmp_path / "b") - 0.3  # it starts where the first run ended
    assert load_model_info(cont).child_budget == info.child_budget and fresh


def test_init_of_another_preset_is_refused(demos, tmp_path):
    first = run(demos, tmp_path / "a", "max_steps=1")
    with pytest.raises(UserError, match="preset"):
        run(demos, tmp_path / "b", "max_steps=1", "model=tiny", f"init={first}")


def test_init_grows_into_a_wider_preset_computing_the_same_function(demos, tmp_path):
    first = run(demos, tmp_path / "a", "max_steps=6")
    same = run(demos, tmp_path / "b", "max_steps=1", f"init={first}")
    wide = run(demos, tmp_path / "c", "max_steps=1", "model=cpu-wide", f"init={first}")
    # the first step's loss is the started model's on the same batch: the grown MLPs add nothing yet
    assert first_loss(tmp_path / "c") == pytest.approx(first_loss(tmp_path / "b"), abs=1e-5)
    assert load_model_info(wide).preset == "cpu-wide" and load_model_info(same).preset == "cpu-mini"
    with pytest.raises(UserError, match="preset"):  # never shrunk
        run(demos, tmp_path / "d", "max_steps=1", "model=cpu-mini", f"init={wide}")
