"""Bad input over every command, as a demanding user tries it: each case must end as one line
`apr: error: ...` naming what is wrong, exit code 2, no traceback, every file that existed
before byte for byte as it was (and no new one), and within REFUSAL_SECONDS.

The kinds: output paths (a folder where a file goes, a file where a folder goes, a place that
cannot be written, an input as the output), empty or blank inputs, counts and windows past
what the task, the model or the machine can do, devices that do not exist, training into a
finished run or from a broken checkpoint, demonstrations outside their task, broken model
folders and run summaries, and options the method cannot use. The table is written out
where a case is one of a kind; generated (a product, or hypothesis) where a kind has many.
Almost every case runs in-process (`apr.commands.main`); a few run `python -m apr` to see
the process itself end without a traceback.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from apr.commands import main
from apr.countdown import TaskConfig, count_problems_possible, generate
from apr.datasets import demonstration
from apr.search import SosConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL, SOS_MODEL, SFT_MODEL = ROOT / "models/default", ROOT / "models/default-sos", ROOT / "models/sft/default"
# Each refusal within REFUSAL_SECONDS of this process's CPU time (what the command itself costs,
# whatever else the machine runs), and within HANG_SECONDS of wall time: nothing hangs.
REFUSAL_SECONDS, HANG_SECONDS = 10, 120
UNWRITABLE = "/proc/apr-no-such-place"  # no process, root or not, can create files there
TASK3 = TaskConfig(num_count=3, num_max=20, target_min=10, target_max=30)


# ---------------------------------------------------------------------------- the inputs


def jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> Path:
    """A folder of inputs, good and bad, shared by every case (cases only read it)."""
    d = tmp_path_factory.mktemp("inputs")
    jsonl(d / "p.jsonl", [{"nums": [4, 9, 3], "target": 24 + i} for i in range(3)])
    jsonl(d / "v.jsonl", [{"nums": [4, 9, 3], "target": 24, "text": "x"}])
    (d / "empty.jsonl").write_text("")
    (d / "blank.jsonl").write_text(" \n\t\n\n  \n")
    (d / "emptylist.json").write_text("[]\n")
    (d / "adir").mkdir()
    (d / "adir" / "keep.txt").write_text("kept\n")
    (d / "afile").write_text("a file\n")
    # demonstrations: good ones (Countdown-3, tagged with their task), and bad ones
    demos = [{**demonstration(p, i, 0, SosConfig()), "task": TASK3.as_dict()}
             for i, p in enumerate(generate(12, seed=3, task=TASK3))]
    jsonl(d / "demos.jsonl", demos)
    bad = copy.deepcopy(demos)
    bad[3]["nums"][0] = -bad[3]["nums"][0]
    jsonl(d / "negative.jsonl", bad)
    bad = copy.deepcopy(demos)
    bad[4]["nums"][1] = 77  # 77 > the task's 20
    jsonl(d / "outside.jsonl", bad)
    bad = copy.deepcopy(demos)
    bad[5]["search_path"] = bad[5]["search_path"].replace("Exploring Operation: ", "Exploring Operation: 1+1=3, ", 1)
    bad[5].pop("trace_dict", None)
    jsonl(d / "arith.jsonl", bad)
    bad = [{k: v for k, v in r.items() if k != "task"} for r in demos]
    bad[6]["nums"] = bad[6]["nums"] + [1]
    jsonl(d / "mixed.jsonl", bad)
    sft = {"data": str(d / "demos.jsonl"), "model": "cpu-mini", "context": 1024, "batch_size": 2, "max_steps": 1,
           "val_fraction": 0.0, "eval_every": 0, "device": "cpu", "eval_problems": str(d / "p.jsonl"),
           "out_dir": str(d / "sft_new")}
    (d / "sft.json").write_text(json.dumps(sft))  # YAML is a superset of JSON
    (d / "sft.yaml").write_text((d / "sft.json").read_text())
    rl = {"init": str(SFT_MODEL), "problems": str(d / "p.jsonl"), "val_problems": str(d / "v.jsonl"),
          "out_dir": str(d / "rl_new"), "device": "cpu"}
    (d / "rl.yaml").write_text(json.dumps(rl))
    finished_run(d / "done_sft")
    finished_run(d / "done_rl")
    torn = d / "torn"  # a run cut before its end, whose checkpoint state was cut short on disk
    finished_run(torn)
    shutil.rmtree(torn / "final")
    (torn / "checkpoints" / "step_0000002" / "state.pt").write_bytes(b"PK\x03\x04 torn")
    astray = d / "astray"  # `latest` pointing out of the checkpoints folder
    finished_run(astray)
    shutil.rmtree(astray / "final")
    (astray / "checkpoints" / "latest").write_text("../../afile")
    # model folders: apr.json whose `task` is not an object
    for name, task in (("task_list", [4, 1, 99]), ("task_range", {"num_count": 4, "num_range": [1]})):
        m = d / name
        m.mkdir()
        shutil.copy(MODEL / "config.json", m / "config.json")
        info = json.loads((MODEL / "apr.json").read_text())
        (m / "apr.json").write_text(json.dumps({**info, "task": task}))
    # an `apr eval` folder (a solver row, fast) and one whose summary.json is minimal
    assert main(["eval", "--method", "solver-apr", "--problems", str(d / "p.jsonl"), "--out", str(d / "ev"),
                 "--quiet"]) == 0
    (d / "minrun").mkdir()
    (d / "minrun" / "summary.json").write_text(json.dumps({"accuracy": 0.5, "family": "apr"}))
    rlrun = d / "rlrun"  # an `apr train rl` folder whose metrics are not what it writes
    rlrun.mkdir()
    (rlrun / "metrics.jsonl").write_text('{"step": 1, "reward": "high"}\n')
    return d


def finished_run(out: Path) -> None:
    """A run folder as a finished SFT or RL run leaves it (the files' contents do not matter:
    a second run must refuse before reading them)."""
    (out / "final").mkdir(parents=True)
    (out / "final" / "config.json").write_text('{"model_type": "llama"}\n')
    (out / "final" / "model.safetensors").write_bytes(b"weights")
    ck = out / "checkpoints" / "step_0000002"
    ck.mkdir(parents=True)
    (ck / "state.pt").write_bytes(b"state")
    (ck / "meta.json").write_text('{"step": 2}\n')
    (out / "checkpoints" / "latest").write_text("step_0000002")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    (out / "config.yaml").write_text("max_steps: 2\n")


# ---------------------------------------------------------------------------- the check


def snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() if p.is_file() else b"<dir>" for f in folders for p in sorted(f.rglob("*"))}


def refused(argv: list[str] | str, fragment: str, w: Path, capsys) -> str:
    """Run one command line: exit code 2, one line naming `fragment`, nothing written."""
    if isinstance(argv, str):
        argv = argv.format(w=w, model=MODEL, sos=SOS_MODEL, sft=SFT_MODEL, bad=UNWRITABLE).split()
    before = snapshot(w)
    capsys.readouterr()
    t0, c0 = time.perf_counter(), time.process_time()
    rc = main(argv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("apr: error: "), lines
    assert "Traceback" not in err and out == ""
    assert fragment in lines[0], lines[0]
    after = snapshot(w)
    assert after == before, ("files changed", sorted(set(after) ^ set(before)) or
                             [k for k in before if before[k] != after.get(k)])
    assert cpu < REFUSAL_SECONDS and wall < HANG_SECONDS, f"refused after {cpu:.1f} s of CPU, {wall:.1f} s"
    return lines[0]


# ---------------------------------------------------------------------------- output paths

# Every command that writes, with where its output goes: a file or a folder.
WRITERS = [
    ("data problems --n 3 --out {out}", "file"),
    ("data problems --splits a=2,b=1 --out {out}", "dir"),
    ("data traces --solver apr --problems {w}/p.jsonl --out {out}", "file"),
    ("verify --input {w}/v.jsonl --out {out}", "file"),
    ("run --problems {w}/p.jsonl --model {model} --out {out}", "file"),
    ("eval --method solver-sos --problems {w}/p.jsonl --out {out}", "dir"),
    ("eval --method apr --model {model} --problems {w}/p.jsonl --out {out}", "dir"),
    ("report {w}/ev --out {out}", "dir"),
    ("pipeline --preset cpu --stages data --out {out}", "dir"),
    ("train sft --config {w}/sft.yaml --set out_dir={out}", "dir"),
    ("train rl --config {w}/rl.yaml --set out_dir={out}", "dir"),
]
# Where a file must go but a folder is, and the other way round; inside a file; nowhere writable.
BAD_OUTS = {
    "file": [("{w}/adir", "is a folder; a file is expected"), ("{w}/afile/x.jsonl", "is a file, not a folder"),
             ("{bad}/x.jsonl", "cannot be written")],
    "dir": [("{w}/afile", "is a file; a folder is expected"), ("{w}/afile/sub", "is a file, not a folder"),
            ("{bad}/sub", "cannot be written")],
}


@pytest.mark.parametrize("argv,kind", WRITERS, ids=[a.split(" --")[0] for a, _ in WRITERS])
def test_every_output_path_is_checked_before_work(argv, kind, w, capsys):
    for out, fragment in BAD_OUTS[kind]:
        refused(argv.replace("{out}", out), fragment, w, capsys)


# An output that is one of the command's inputs (each command names its own input option).
OVER_INPUTS = [
    ("data problems --n 3 --exclude {w}/p.jsonl --out {w}/p.jsonl", "--out names the --exclude file"),
    ("data traces --solver sos --problems {w}/p.jsonl --out {w}/p.jsonl", "--out names the --problems file"),
    ("verify --input {w}/v.jsonl --out {w}/v.jsonl", "--out names the --input file"),
    ("run --problems {w}/p.jsonl --out {w}/p.jsonl --model {model}", "--out names the --problems file"),
    ("eval --method solver-apr --problems {w}/p.jsonl --out {w}/p.jsonl", "--out names the --problems file"),
    ("report {w}/ev --out {w}/ev", "--out names the `RUN_DIR` folder"),
    ("pipeline --preset cpu --stages data,export --out {w}/pl --export {w}/pl", "--export names the --out folder"),
]



# ---------------------------------------------------------------------------- empty inputs

READERS = [
    "data traces --solver apr --problems {input} --out {w}/o.jsonl",
    "verify --input {input} --out {w}/o.jsonl",
    "verify --input {input}",
    "run --problems {input} --out {w}/o.jsonl --model {model}",
    "eval --method solver-apr --problems {input} --out {w}/e",
    "eval --method sos --model {sos} --problems {input} --out {w}/e",
    "data problems --n 3 --exclude {input} --out {w}/o.jsonl",
    "train sft --config {w}/sft.yaml --set data={input}",
    "train rl --config {w}/rl.yaml --set problems={input}",
]


@pytest.mark.parametrize("argv", READERS, ids=[a.split(" --")[0] for a in READERS])
def test_an_input_without_items_is_refused(argv, w, capsys):
    for name in ("empty.jsonl", "blank.jsonl", "emptylist.json"):
        refused(argv.replace("{input}", f"{w}/{name}"), f"{name}: holds no records", w, capsys)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=" \t\r\n\x0b\x0c", max_size=30), argv=st.sampled_from(READERS[:5]))
def test_any_whitespace_only_file_is_refused(text, argv, w, capsys, tmp_path_factory):
    src = tmp_path_factory.mktemp("blank") / "in.jsonl"
    src.write_text(text)
    refused(argv.replace("{input}", str(src)), "holds no records", w, capsys)


# ---------------------------------------------------------------------------- counts, windows, sizes


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(2, 3), top=st.integers(3, 12), extra=st.integers(1, 10**15))
def test_more_problems_than_the_task_can_make_is_refused(count, top, extra, w, capsys):
    task = TaskConfig(num_count=count, num_max=top, target_min=1, target_max=2 * top)
    n = count_problems_possible(task) + extra
    refused(f"data problems --n {n} --num-count {count} --num-max {top} --target-min 1 --target-max {2 * top} "
            f"--out {w}/o.jsonl", f"{n:,} distinct problems asked", w, capsys)


SIZES = [
    ("data problems --n 1000000000000 --out {w}/o.jsonl", "has at most 386,711,325"),
    ("data problems --splits train=300000000,val=300000000 --out {w}/s", "--splits: 600,000,000 distinct problems"),
    ("serve --model {model} --context 1000000000", "argument --context: must be an integer in 16..1048576"),
    ("serve --model {model} --context 100000", "more than the model's 2048 positions"),
    ("run --problems {w}/p.jsonl --out {w}/o.jsonl --model {model} --context 100000",
     "--context 100000 is more than the model's 2048 positions"),
    ("eval --method apr --model {model} --problems {w}/p.jsonl --out {w}/e --context 3000", "2048 positions"),
    # the default model runs at its apr.json window, 512 tokens
    ("run --problems {w}/p.jsonl --out {w}/o.jsonl --model {model} --max-slots 100000000",
     "a KV cache of 100000000 slots x 512 tokens (lower --max-slots or --context) needs about"),
    ("train sft --config {w}/sft.yaml --set batch_size=1000000 --set context=2048", "lower `batch_size`"),
    ("train sft --config {w}/sft.yaml --set context=4096", "`context` 4096 is more than the cpu-mini preset's 2048"),
]



# ---------------------------------------------------------------------------- devices

DEVICES = [
    "solve 4 9 3 --target 24 --model {model} --device {dev}",
    "run --problems {w}/p.jsonl --out {w}/o.jsonl --model {model} --device {dev}",
    "eval --method apr --model {model} --problems {w}/p.jsonl --out {w}/e --device {dev}",
    "serve --model {model} --device {dev}",
    "pipeline --preset cpu --out {w}/pl --stages train --device {dev}",
    "train sft --config {w}/sft.yaml --set device={dev}",
    "train rl --config {w}/rl.yaml --set device={dev}",
]


@pytest.mark.parametrize("argv", DEVICES, ids=[" ".join(a.split()[:2]) for a in DEVICES])
def test_a_device_the_machine_lacks_is_refused(argv, w, capsys):
    # cuda:99: no machine has it, with CUDA ("has N CUDA devices") or without ("not available")
    refused(argv.replace("{dev}", "cuda:99"), "device 'cuda:99'", w, capsys)
    bogus = "argument --device" if not argv.startswith("train") else "config: `device` must be auto, cpu, cuda"
    refused(argv.replace("{dev}", "tpu"), bogus, w, capsys)


# ---------------------------------------------------------------------------- training

TRAINING = [
    ("train sft --config {w}/sft.yaml --set out_dir={w}/done_sft", "holds a finished run (final/)"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/done_sft --resume", "holds a finished run"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/done_sft --set max_steps=9", "holds a finished run"),
    ("train rl --config {w}/rl.yaml --set out_dir={w}/done_rl", "holds a finished run"),
    ("train rl --config {w}/rl.yaml --set out_dir={w}/done_rl --resume", "holds a finished run"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/done_sft --resume --overwrite",
     "give --resume or --overwrite, not both"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/torn", "holds a checkpoint: resume it (--resume)"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/torn --resume", "--resume: checkpoint has preset None"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/astray --resume", "latest names no checkpoint folder"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/fresh --resume", "--resume: no checkpoint to resume"),
    ("train sft --config {w}/sft.yaml --set data={w}/negative.jsonl", "negative.jsonl:4: `nums` holds a negative"),
    ("train sft --config {w}/sft.yaml --set data={w}/outside.jsonl",
     "outside.jsonl:5: record outside the task it is trained for: number 77 outside the task's 1..20"),
    ("train sft --config {w}/sft.yaml --set data={w}/arith.jsonl", "arith.jsonl:6: bad trace: thread 0 explores '1+1=3'"),
    ("train sft --config {w}/sft.yaml --set data={w}/mixed.jsonl", "mixed.jsonl:7: record outside the task it is "
     "trained for: 4 numbers; line 1 has 3"),
    ("train sft --config {w}/sft.yaml --set time_budget_clock=cpu", "`time_budget_clock` applies to a time budget"),
    ("train rl --config {w}/rl.yaml --set server=http://127.0.0.1:9", "`server` applies to engine=server only"),
    ("train rl --config {w}/rl.yaml --set engine=server --set server=http://127.0.0.1:9 --set max_slots=8",
     "`max_slots` applies to engine=local only"),
]



def test_a_torn_checkpoint_state_is_one_line(w, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(w / "torn", run)
    (run / "checkpoints" / "step_0000002" / "meta.json").write_text(
        json.dumps({"step": 2, "preset": "cpu-mini", "tokenizer": "vocab129-678f66695f34b7f2", "context": 1024}))
    refused(f"train sft --config {w}/sft.yaml --set out_dir={run} --resume".split(), "--resume: unreadable state.pt",
            tmp_path, capsys)


def test_running_out_of_memory_mid_step_is_one_line(w, tmp_path, capsys, monkeypatch):
    """A batch that passes the estimate but still does not fit: caught at the first step,
    before the run folder gets its first file."""
    import torch

    from apr.train.sft import SFTTrainer

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(SFTTrainer, "train_step", oom)
    out = tmp_path / "run"
    refused(f"train sft --config {w}/sft.yaml --set out_dir={out}".split(), "ran out of memory", tmp_path, capsys)
    assert not out.exists()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(1, 12), how=st.sampled_from(["negative", "too big", "target", "count"]))
def test_any_demonstration_outside_its_task_names_its_file_and_line(line, how, w, capsys, tmp_path_factory):
    records = [json.loads(x) for x in (w / "demos.jsonl").read_text().splitlines()]
    r = records[line - 1]
    if how == "negative":
        r["nums"][0], want = -1, "`nums` holds a negative number"
    elif how == "too big":
        r["nums"][-1], want = TASK3.num_max + 1, "outside the task's 1..20"
    elif how == "target":
        r["target"], want = TASK3.target_max + 5, "target 35 outside the task's 10..30"
    else:
        r["nums"], want = r["nums"][:2], "2 numbers; the task has 3"
    path = tmp_path_factory.mktemp("demos") / "d.jsonl"
    jsonl(path, records)
    said = refused(f"train sft --config {w}/sft.yaml --set data={path}".split(), f"d.jsonl:{line}: ", w, capsys)
    assert want in said, said


def test_a_finished_run_survives_a_second_run_unless_overwrite(w, tmp_path, capsys):
    """Byte for byte, whatever the second run asks; `--overwrite` starts it over."""
    run = tmp_path / "run"
    shutil.copytree(w / "done_sft", run)
    for extra in ([], ["--resume"], ["--set", "max_steps=3"], ["--set", "seed=4"], ["--quiet"]):
        refused(["train", "sft", "--config", str(w / "sft.yaml"), "--set", f"out_dir={run}", *extra],
                "holds a finished run", tmp_path, capsys)
    before = (run / "final" / "model.safetensors").read_bytes()
    assert main(["train", "sft", "--config", str(w / "sft.yaml"), "--set", f"out_dir={run}", "--overwrite",
                 "--quiet"]) == 0
    assert (run / "final" / "model.safetensors").read_bytes() != before  # a new model, whole
    assert not (run / "checkpoints").exists()  # the old run's checkpoints went with it
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


# ---------------------------------------------------------------------------- model folders, reports

FOLDERS = [
    ("eval --method apr --model {w}/task_list --problems {w}/p.jsonl --out {w}/e", "`task` must be an object"),
    ("run --model {w}/task_range --problems {w}/p.jsonl --out {w}/o.jsonl", "`task.num_range` must be [low, high]"),
    ("serve --model {w}/task_list", "`task` must be an object"),
    ("solve 4 9 3 --target 24 --model {w}/task_list", "`task` must be an object"),
    ("report {w}/minrun --out {w}/r", "summary.json: `accuracy` and `ci95` (two numbers, 0..1) are required"),
    ("report --rl {w}/rlrun --out {w}/r", "metrics.jsonl:1: `reward` is not a number"),
    ("report --rl {w}/rlrun --out {w}/r --paired {w}/ev,{w}/adir", "metrics.jsonl:1"),
]



# The keys of summary.json the report reads, each given a value of the wrong kind.
SUMMARY_KEYS = ["family", "accuracy", "ci95", "label", "method", "problems", "samples", "metrics",
                "accuracy_within_context", "competence"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(SUMMARY_KEYS), junk=st.sampled_from([None, "x", -1.5, [], {"mean": "x"}, [1], True]),
       drop=st.booleans())
def test_any_broken_summary_is_one_line(key, junk, drop, w, capsys, tmp_path_factory):
    # What is not broken: a summary from before competence was measured; any text as a name.
    assume(not (key == "competence" and (drop or not junk)) and not (key in ("label", "method") and junk == "x"
                                                                          and not drop))
    s = json.loads((w / "ev" / "summary.json").read_text())
    if drop:
        s.pop(key)
    else:
        s[key] = junk
    run = tmp_path_factory.mktemp("run")
    (run / "summary.json").write_text(json.dumps(s))
    refused(["report", str(run), "--out", str(run.parent / (run.name + "_r"))], "summary.json: ", run, capsys)


# ---------------------------------------------------------------------------- options a method cannot use

OPTIONS = [
    ("data traces --solver sos --problems {w}/p.jsonl --out {w}/o.jsonl --spawn-prob 0.5",
     "--spawn-prob applies to the apr solver only"),
    ("data traces --solver sos --problems {w}/p.jsonl --out {w}/o.jsonl --budget-prefix",
     "--budget-prefix applies to the apr solver only"),
    ("data traces --solver apr --problems {w}/p.jsonl --out {w}/o.jsonl --sub-search-prob 0.2",
     "--sub-search-prob applies to the sos solver only"),
    ("run --problems {w}/p.jsonl --out {w}/o.jsonl --model {sos} --child-budget 3", "--child-budget applies to APR"),
    ("run --problems {w}/p.jsonl --out {w}/o.jsonl --model {model} --token-budget 3", "--token-budget applies to SoS+"),
    ("eval --method solver-apr --problems {w}/p.jsonl --out {w}/e --device cpu", "--device does not apply to solver-apr"),
    ("eval --method solver-sos --problems {w}/p.jsonl --out {w}/e --max-slots 3", "--max-slots does not apply"),
    ("solve 4 9 3 --target 24 --model {model} --served-model m", "--served-model names a server's model"),
    ("run --problems {w}/p.jsonl --out {w}/o.jsonl --model {model} --server http://127.0.0.1:9 --dtype float32",
     "--dtype applies to the local engine"),
    ("demo --model {model} --seed 3", "--seed does not apply to the model demo"),
    ("demo --solver --pool 4", "--pool does not apply to the solver demo"),
    ("demo --solver --model {model}", "give --model (the model demo) or --solver"),
    ("pipeline --preset cpu --out {w}/pl --stages data --export {w}/x", "--stages data has no export stage"),
    # a value outside the option's range
    ("data traces --solver sos --problems {w}/p.jsonl --out {w}/o.jsonl --order best",
     "argument --order: invalid choice: 'best'"),
    ("train sft --config {w}/sft.yaml --set node_drills=-0.5", "`node_drills` must be in [0, 10]"),
    ("train sft --config {w}/sft.yaml --set node_drills=many", "`node_drills` must be float"),
    ("train sft --config {w}/sft.yaml --set goal_drills=11", "`goal_drills` must be in [0, 10]"),
    ("train sft --config {w}/sft.yaml --set product_drills=11", "`product_drills` must be in [0, 10]"),
    ("train sft --config {w}/sft.yaml --set product_drills_in_state=true",
     "`product_drills_in_state` applies to product drills"),
    ("train sft --config {w}/sft.yaml --set product_drills=1 --set train_on_inserted=true",
     "`product_drills` needs `train_on_inserted: false`"),
    ("train sft --config {w}/sft.yaml --set model=cpu-huge", "`model` must be a preset"),
]



# ---------------------------------------------------------------------------- the written-out cases

WRITTEN = {"output over an input": OVER_INPUTS, "count, window or size": SIZES, "training": TRAINING,
           "model or run folder": FOLDERS, "option the method cannot use": OPTIONS}


@pytest.mark.parametrize("kind,argv,fragment", [(k, a, f) for k, rows in WRITTEN.items() for a, f in rows],
                         ids=[f"{k}: {a.split(' --')[0]}" for k, rows in WRITTEN.items() for a, _ in rows])
def test_each_written_out_case_is_refused(kind, argv, fragment, w, capsys):
    refused(argv, fragment, w, capsys)


def test_every_command_has_cases():
    import argparse

    from apr.commands import build_parser

    def subcommands(parser):
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    names = {f"{name} {inner}" if inner else name for name, p in subcommands(build_parser()).items()
             for inner in (subcommands(p) or [""])}
    rows = [a for a, _ in WRITERS] + READERS + DEVICES + [a for rows in WRITTEN.values() for a, _ in rows]
    covered = {" ".join(a.split()[:2]) for a in rows} | {a.split()[0] for a in rows}
    assert names <= covered, names - covered


# ---------------------------------------------------------------------------- the process


@pytest.mark.parametrize("argv,fragment", [
    ("data problems --n 1000000000000 --out {w}/o.jsonl", "distinct problems asked"),
    ("train sft --config {w}/sft.yaml --set out_dir={w}/done_sft", "holds a finished run"),
    ("report {w}/minrun --out {w}/r", "summary.json"),
])
def test_the_process_ends_with_one_line_and_no_traceback(argv, fragment, w):
    before = snapshot(w)
    cmd = [sys.executable, "-m", "apr", *argv.format(w=w).split()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=w)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("apr: error: ") and fragment in p.stderr, p.stderr
    assert snapshot(w) == before
