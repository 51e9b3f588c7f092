"""The GPU window script (scripts/gpu_window.py) end to end on the CPU at toy sizes, so a GPU
window is never lost to a bug a CPU run would have found: data, four trainings side by
side, export, evaluation, packing within the file limits, and the deadline guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_window.py"


def window(tmp: Path, models: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp / "out"), "--work", str(tmp / "work"), "--models", str(models),
           "--toy", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def test_a_toy_window_trains_exports_evaluates_and_packs(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    r = window(tmp_path, models, "--deadline", "400", "--eval-seconds", "120", "--startup-seconds", "20")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 1024 * 1024 for f in files), files
    results = json.loads((out / "results.json").read_text())["jobs"]
    assert sorted(results) == ["cd3-apr", "cd3-sos", "cd4-apr", "cd4-sos"]
    for method, order in (("apr", "hybrid"), ("sos", "ranked")):  # the CPU line's demonstrations
        for task, cap in (("cd3", 100), ("cd4", 200)):  # each task's cap on results
            first = json.loads((tmp_path / "work" / task / f"{method}.jsonl").read_text().splitlines()[0])
            assert first["solver"]["order"] == order and first["solver"]["max_result"] == cap
    for name in results:  # the CPU line's recipe: budget prefixes for both, goal drills for APR
        config = (tmp_path / "work" / "train" / name / "config.yaml").read_text()
        assert "budget_prefix: true" in config and ("goal_drills: 1.5" in config) == name.endswith("apr"), name
    for name, res in results.items():
        assert res["trained"] and res["steps"] == 2, (name, res)
        assert res["eval"]["problems"] == 2 and "arithmetic_error_rate" in json.dumps(res["eval"]), (name, res["eval"])
    # --apply puts the models in place and adds one ledger row per model
    ledger = tmp_path / "ledger.md"
    ledger.write_text("| header |\n")
    r = window(tmp_path, models, "--apply", str(out), "--ledger", str(ledger))
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(ledger.read_text().splitlines()) == 1 + 4 and "Countdown-4 APR" in ledger.read_text()
    model = models / "cd4-apr"
    history = json.loads((model / "training_history.json").read_text())
    assert history[-1]["window"] == 0 and history[-1]["tokens_cumulative"] == history[-1]["tokens"] > 0
    assert (model / "val_problems.jsonl").is_file() and "cd4-apr" in (model / "README.md").read_text()
    assert json.loads((model / "config.json").read_text())["dtype"] in ("bfloat16", "torch.bfloat16")

    # The next window starts from these weights and counts on from their history.
    r = window(tmp_path / "second", models, "--plan")
    plan = json.loads(r.stdout)
    assert plan["cd3-sos"] == {"init": str(models / "cd3-sos"), "window": 1, "problem_seed": 1001}


def test_the_deadline_guard_packs_whatever_there_is(tmp_path):
    r = window(tmp_path, tmp_path / "none", "--deadline", "3", "--pack-seconds", "2")
    out = tmp_path / "out"
    assert (out / "results.json").is_file() and (out / "log.txt").is_file()
    assert "deadline" in (out / "log.txt").read_text()
    assert len(list(out.iterdir())) <= 8
