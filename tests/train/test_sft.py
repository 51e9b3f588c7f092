"""The SFT trainer: overfitting, exact resume, DDP equivalence, config checking."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.errors import UserError
from apr.search import AprConfig
from apr.train.config import load_config
from apr.train.sft import SFTTrainer, train_sft
from tolerance import kernel_approx

# Two-number problems: traces of ~110 tokens, so a step is a fraction of a second on a CPU.
TASK = TaskConfig(num_count=2, num_max=20, target_min=10, target_max=30)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "val.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 24}) + "\n")
    with open(d / "demos.jsonl", "w") as f:
        for i, p in enumerate(generate(40, seed=5, task=TASK)):
            f.write(json.dumps(demonstration(p, i, 0, AprConfig())) + "\n")
    return d / "demos.jsonl"


def config(demos: Path, out: Path, *extra: str):
    base = [
        f"data={demos}",
        f"eval_problems={demos.parent / 'val.jsonl'}",
        f"out_dir={out}",
        "model=tiny",
        "context=256",
        "batch_size=4",
        "max_steps=6",
        "log_every=1",
        "eval_every=3",
        "val_fraction=0.1",
        "eval_batches=1",
        "optim.lr=3e-3",
        "optim.warmup_steps=2",
        "optim.min_lr=3e-4",
    ]
    return load_config(None, base + list(extra))


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_overfits_a_few_dozen_traces(demos, tmp_path):
    final = train_sft(config(demos, tmp_path, "max_steps=40", "batch_size=8", "val_fraction=0", "log_every=10"))
    got = losses(tmp_path)
    # bound from a real run: 3.54 at step 10 -> 1.30 at step 40 (a unigram model is ~3)
    assert got[40] < 1.6 and got[40] < 0.5 * got[10], got
    assert (final / "apr.json").exists() and (tmp_path / "config.yaml").exists()
    info = json.loads((final / "apr.json").read_text())
    assert info["method"] == "apr" and info["preset"] == "tiny" and info["context"] == 256
    assert info["task"]["num_count"] == TASK.num_count  # untagged traces: the task is read from them


def test_the_task_of_untagged_demonstrations_holds_them():
    from apr.train.packing import record_task

    recs = [("d.jsonl", 1, {"nums": [3, 150, 7], "target": 5}), ("d.jsonl", 2, {"nums": [1, 2, 3], "target": 40})]
    task = record_task(recs)
    assert task == TaskConfig(num_count=3, num_max=150, target_min=5).as_dict()
    tagged = [(p, n, {**r, "task": TaskConfig(num_count=3, num_max=200, target_min=1).as_dict()}) for p, n, r in recs]
    assert record_task(tagged) == TaskConfig(num_count=3, num_max=200, target_min=1).as_dict()


def test_time_budget_lowers_max_steps_and_ends_the_schedule(demos, tmp_path):
    import yaml

    from apr.train.common import warmup_cosine

    cfg = config(demos, tmp_path, "max_steps=500", "time_budget_s=1e-6", "eval_every=0", "log_every=5")
    final = train_sft(cfg)
    # a budget already spent after the timed probe steps: one more step, then stop
    want = SFTTrainer.PROBE_SKIP + SFTTrainer.PROBE_STEPS + 1
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"] == want
    assert max(losses(tmp_path)) == want and (final / "model.safetensors").exists()
    o = cfg.optim
    assert warmup_cosine(want, o.warmup_steps, cfg.max_steps, o.lr, o.min_lr) == pytest.approx(o.min_lr / o.lr)  # ended there


def test_resume_continues_exactly(demos, tmp_path, monkeypatch):
    whole = train_sft(config(demos, tmp_path / "whole", "save_every=3"))
    cut = tmp_path / "cut"

    real_step = SFTTrainer.train_step

    def dying_step(self):
        if self.step == 4:  # killed after the checkpoint at step 3, mid-way to the next
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(SFTTrainer, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config(demos, cut, "save_every=3"))
    monkeypatch.setattr(SFTTrainer, "train_step", real_step)
    assert (cut / "checkpoints" / "latest").read_text() == "step_0000003"
    with pytest.raises(UserError, match="resume it"):
        train_sft(config(demos, cut, "save_every=3"))
    with pytest.raises(UserError, match="checkpoint has preset 'tiny'"):
        train_sft(config(demos, cut, "save_every=3", "model=small"), resume=True)
    train_sft(config(demos, cut, "save_every=3"), resume=True)
    # exact, not tests/tolerance.py: both runs use this process's kernels, so a resume replays bit for bit
    assert losses(cut) == losses(tmp_path / "whole") and len(losses(cut)) == 6
    metrics = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]  # lines after the checkpoint were re-logged once
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_two_process_gloo_ddp_equals_one_process(demos, tmp_path):
    one = tmp_path / "one"
    train_sft(config(demos, one, "max_steps=3", "eval_every=0"))
    two = tmp_path / "two"
    sets = [
        f"data={demos}", f"eval_problems={demos.parent / 'val.jsonl'}", f"out_dir={two}", "context=256",
        "batch_size=4", "max_steps=3", "log_every=1", "eval_every=0", "val_fraction=0.1", "eval_batches=1",
        "optim.lr=3e-3", "optim.warmup_steps=2", "optim.min_lr=3e-4", "device=cpu",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "apr"]
    cmd += ["train", "sft", "--config", str(Path(__file__).parents[2] / "configs" / "sft_apr_tiny.yaml")]
    cmd += [arg for s in sets for arg in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert b[step] == kernel_approx(a[step]), (step, a, b)


def test_config_refuses_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(UserError, match="unknown key `optim.lrr`"):
        load_config(None, ["data=x", "optim.lrr=1"])
    with pytest.raises(UserError, match="`max_steps` must be int"):
        load_config(None, ["data=x", "max_steps=ten"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: x\noptim:\n  lr: 5e-5\n  warmup: 3\n")
    with pytest.raises(UserError, match="unknown key `optim.warmup`"):
        load_config(cfg)
    cfg.write_text("data: x\ncompile: 'yes'\n")
    with pytest.raises(UserError, match="`compile` must be bool"):
        load_config(cfg)
    toml = tmp_path / "c.toml"
    toml.write_text('data = "x"\nmax_steps = 7\n[optim]\nlr = 5e-5\n')
    c = load_config(toml, ["optim.lr=1e-4", "data=123.jsonl", "compile=true"])
    assert (c.max_steps, c.optim.lr, c.data, c.compile) == (7, 1e-4, "123.jsonl", True)


def test_budget_prefix_and_its_old_keys(tmp_path, caplog):
    """`budget_prefix` was `sub_call_budget` (APR) and `token_budget` (SoS+); both still load."""
    assert load_config(None, ["data=x", "budget_prefix=true"]).budget_prefix
    cfg = tmp_path / "old.yaml"  # as an earlier run's config.yaml says it: both keys
    cfg.write_text("data: x\ntoken_budget: false\nsub_call_budget: true\n")
    with caplog.at_level("WARNING"):
        assert load_config(cfg).budget_prefix
    assert "`sub_call_budget` is deprecated; use `budget_prefix`" in caplog.text
    assert not load_config(cfg, ["sub_call_budget=false"]).budget_prefix


def test_cli_reports_bad_config_as_one_line(tmp_path, capsys):
    from apr.commands import main

    assert main(["train", "sft", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "sft", "--config", str(Path(__file__).parents[2] / "configs" / "sft_apr_tiny.yaml"), "--set", "nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("apr: error:") for line in err)


def test_a_held_out_set_too_long_for_the_context_is_no_error(tmp_path):
    """With a tiny held-out share, every held-out document may exceed the context: training
    goes on without a validation loss instead of stopping."""
    import random

    from apr.search import SosConfig
    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    recs = [demonstration(p, i, 0, SosConfig()) for i, p in enumerate(generate(40, seed=5, task=TASK))]
    from apr.train import packing

    demos = packing.demonstrations([("d", i, r) for i, r in enumerate(recs)], tok, budget_prefix=False)
    lengths = [max(len(ids) for ids, _ in packing.encode_many(d.strings, tok)) for d in demos]
    order = list(range(len(recs)))
    random.Random(0).shuffle(order)  # the trainer's split: seed 0, the first n_val records held out
    held = order[0]
    longer = [n for n in lengths if n < lengths[held]]
    assert longer, "need a training document shorter than the held-out one"
    (tmp_path / "val.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 24}) + "\n")
    with open(tmp_path / "demos.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    cfg = config(tmp_path / "demos.jsonl", tmp_path / "run", "max_steps=2", f"context={lengths[held] - 1}",
                 "val_fraction=0.02", "model=tiny")
    trainer = SFTTrainer(cfg)
    assert trainer.val_data is None and len(trainer.train_data) > 0


def test_metrics_name_the_tensorboard_extra_once(tmp_path, monkeypatch, caplog):
    """Without the optional tensorboard package, metrics.jsonl is still written and the log
    says once which extra installs it."""
    import builtins
    import logging

    import apr.train.metrics as M

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr(M, "_told_tb_off", False)
    caplog.set_level(logging.INFO, logger="apr")
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        log = M.MetricsLog(tmp_path / run)
        log.log({"step": 1, "loss": 2.0})
        log.log({"step": 2, "loss": 1.5})
        assert [json.loads(l)["step"] for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        assert not (tmp_path / run / "tb").exists()
    hints = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert hints == ["TensorBoard logging off: pip install 'apr[tb]'"]


def test_progress_lines_when_stderr_is_not_a_terminal(demos, tmp_path, capsys):
    """Through the command, with stderr a file: no bar, one status line per logged step;
    --quiet: neither."""
    from apr.commands import main

    cfg = Path(__file__).parents[2] / "configs" / "sft_apr_tiny.yaml"
    common = ["--set", f"data={demos}", "--set", f"eval_problems={demos.parent / 'val.jsonl'}",
              "--set", "max_steps=2", "--set", "batch_size=2", "--set", "context=256", "--set", "log_every=1",
              "--set", "model=tiny", "--set", "device=cpu", "--set", "val_fraction=0", "--set", "save_every=0"]
    assert main(["train", "sft", "--config", str(cfg), "--set", f"out_dir={tmp_path / 'a'}", *common]) == 0
    err = capsys.readouterr().err
    assert "sft: step 1/2 loss" in err and "sft: step 2/2 loss" in err and "it/s" not in err and "\r" not in err
    assert main(["train", "sft", "--config", str(cfg), "--set", f"out_dir={tmp_path / 'b'}", *common, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "sft:" not in captured.err and "data:" not in captured.err and captured.out.strip().endswith("final")
