"""The command line as a new user meets it: every option documented with its default, one
name per idea, `apr --version`, the commands listed in pipeline order, and bad options
refused up front: one line `apr: error: ...`, exit code 2, nothing written."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path

import pytest

import apr
from apr.commands import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "default"


def parsers(parser: argparse.ArgumentParser, name: str = "apr"):
    """(name, parser) of the top-level parser and every command and subcommand under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_of_every_command_has_help():
    seen, missing = set(), []
    for name, p in parsers(build_parser()):
        seen.add(name)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
                continue
            if not (a.help or "").strip():
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, f"options without help: {missing}"
    assert {"apr demo", "apr data problems", "apr data traces", "apr verify", "apr train sft", "apr train rl",
            "apr solve", "apr run", "apr serve", "apr eval", "apr report", "apr pipeline"} <= seen


def test_help_shows_defaults_and_lists_commands_in_pipeline_order(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    section = out.split("  COMMAND\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert all(re.match(r"^    [a-z]+ +\S", line) for line in section), section  # one line each
    assert [line.split()[0] for line in section] == ["demo", "data", "verify", "train", "solve", "run", "serve",
                                                      "eval", "report", "pipeline"]
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"--context TOKENS\s+tokens per thread, 16\.\.1048576.*\(default:\s+the\s+model's\s+apr\.json\s+"
                     r"eval_context,\s+else\s+the\s+context\s+it\s+was\s+trained\s+with\)", out, flags=re.S)
    assert "--max-children N" in out and "(default: 16)" in out and "(default: auto)" in out


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"apr {apr.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    if "version" in project["project"]:
        assert project["project"]["version"] == apr.__version__
    else:  # one source of truth: pyproject reads apr.__version__
        assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "apr.__version__"}


def test_one_name_per_idea():
    """The shared ideas have one spelling wherever they appear; --model is always a folder."""
    spellings = {
        "model": {"--model"}, "problems": {"--problems"}, "out": {"--out"}, "device": {"--device"},
        "dtype": {"--dtype"}, "context": {"--context"}, "quiet": {"--quiet"}, "served_model": {"--served-model"},
        "seed": {"--seed"}, "workers": {"--workers"}, "limit": {"--limit"}, "child_budget": {"--child-budget"},
        "budget_prefix": {"--budget-prefix"},
    }
    old = {"--no-progress", "--max-len", "--served-model-name", "--sub-call-budget"}
    for name, p in parsers(build_parser()):
        if name == "apr serve" and "--context" not in p._option_string_actions:
            continue  # not yet renamed by the server's owner (--max-len -> --context, --served-model-name -> --served-model)
        for a in p._actions:
            if a.help == argparse.SUPPRESS:
                continue  # hidden deprecated aliases
            assert not old & set(a.option_strings), f"{name}: {a.option_strings}"
            if a.dest in spellings and a.option_strings:
                assert set(a.option_strings) == spellings[a.dest], f"{name}: {a.option_strings}"


def test_runtime_options_are_the_runtime_config_fields():
    """One source for the runtime settings: every RuntimeConfig field is an option of the
    commands that run a model, with the field's default and help."""
    import dataclasses

    from apr.runtime_config import RuntimeConfig

    commands = dict(parsers(build_parser()))
    for name in ("apr solve", "apr run", "apr eval"):
        actions = {a.dest: a for a in commands[name]._actions if a.help != argparse.SUPPRESS}
        for f in dataclasses.fields(RuntimeConfig):
            if name == "apr eval" and f.name == "method":
                continue  # eval's --method names evaluation methods (cons@N, solver rows, ...)
            a = actions[f.name]
            assert a.option_strings == ["--" + f.name.replace("_", "-")] and a.default == f.default, (name, f.name)
            assert a.help == f.metadata["help"], (name, f.name)


def test_library_errors_name_fields_and_commands_name_their_options(tmp_path, capsys):
    from apr.errors import UserError
    from apr.eval import EvalSpec, evaluate

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "records.jsonl").write_text("")
    with pytest.raises(UserError, match="use another `out`$"):
        evaluate(EvalSpec(method="solver-apr", out=tmp_path / "r", progress=False))
    assert main(["eval", "--method", "solver-apr", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert capsys.readouterr().err == f"apr: error: {tmp_path / 'r'}: holds results without run.json; use another --out\n"
    assert main(["eval", "--method", "solver-sos", "--out", str(tmp_path / "s"), "--top-k", "5"]) == 2
    assert capsys.readouterr().err == "apr: error: --top-k does not apply to solver-sos: a symbolic solver runs, no model\n"


def test_deprecated_alias_warns_and_still_works(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["data", "problems", "--n", "2", "--num-count", "3", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "apr: warning: --no-progress is deprecated; use --quiet"
    assert len(out.read_text().splitlines()) == 2
    assert "--no-progress" not in build_parser()._subparsers._group_actions[0].choices["data"].format_help()


def test_log_level_and_quiet_silence_status_lines(tmp_path, capsys):
    import dataclasses

    from apr.pipeline import PRESETS

    d = tmp_path / "data"  # a finished data stage: the pipeline logs `data: exists`
    d.mkdir()
    (d / "done.json").write_text(json.dumps({"preset": dataclasses.asdict(PRESETS["cpu"]), "seed": 0}))
    argv = ["pipeline", "--preset", "cpu", "--out", str(tmp_path), "--stages", "data"]
    assert main(argv) == 0
    assert "data: exists" in capsys.readouterr().err
    assert main(["--log-level", "warning", *argv]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["--log-level", "INFO", *argv, "--quiet"]) == 0  # an explicit level wins
    assert "data: exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad options

# One row per case: the command line ({tmp} is a folder holding the inputs below) and a
# fragment of the one-line error. Every row: exit code 2, one line on stderr, nothing written.
BAD = [
    # the top level
    ("--log-level loud run", "argument --log-level"),
    ("bogus", "invalid choice: 'bogus'"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --bogus", "unrecognized arguments: --bogus"),
    # apr demo
    ("demo --n 0", "argument --n: must be a positive integer, got '0'"),
    ("demo --pool -3", "argument --pool: must be a positive integer"),
    ("demo --seed -1", "argument --seed: must be an integer >= 0"),
    ("demo --sub-call-budget 0", "argument --sub-call-budget"),
    ("demo --child-budget 0", "argument --child-budget: must be a positive integer"),
    # apr data problems
    ("data problems --n 0 --out {tmp}/n0.jsonl", "argument --n: must be a positive integer, got '0'"),
    ("data problems --n -1 --out {tmp}/o.jsonl", "argument --n: must be a positive integer"),
    ("data problems --n 5 --out {tmp}/o.jsonl --workers 0", "argument --workers: must be a positive integer"),
    ("data problems --n 5 --out {tmp}/o.jsonl --num-count 9", "argument --num-count: must be an integer in 2..6"),
    ("data problems --n 5 --out {tmp}/o.jsonl --seed x", "argument --seed: must be an integer >= 0, got 'x'"),
    ("data problems --splits train=x --out {tmp}/s", "argument --splits: must be name=N"),
    ("data problems --splits a=1,a=2 --out {tmp}/s", "names a split twice"),
    ("data problems --n 3 --splits a=1 --out {tmp}/s", "give --n or --splits, not both"),
    ("data problems --n 5 --out {tmp}/o.jsonl --target-min 50 --target-max 10", "bad target range"),
    ("data problems --n 5 --exclude {tmp}/p.jsonl --out {tmp}/p.jsonl", "names the --exclude file"),
    # apr data traces
    ("data traces --solver nope --problems {tmp}/p.jsonl --out {tmp}/o.jsonl", "argument --solver: invalid choice"),
    ("data traces --solver apr --problems {tmp}/p.jsonl --out {tmp}/p.jsonl", "names the --problems file"),
    ("data traces --solver apr --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --workers 0", "argument --workers"),
    ("data traces --solver apr --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --beam-min 0", "argument --beam-min"),
    ("data traces --solver apr --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --beam-min 9 --beam-max 3",
     "--beam-min must be <= --beam-max"),
    ("data traces --solver apr --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --spawn-prob 1.5",
     "argument --spawn-prob: must be a number in [0, 1]"),
    ("data traces --solver sos --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --sub-search-prob nan",
     "argument --sub-search-prob"),
    ("data traces --solver apr --problems {tmp}/missing.jsonl --out {tmp}/o.jsonl", "no such file"),
    # apr verify
    ("verify --input {tmp}/v.jsonl --out {tmp}/v.jsonl", "names the --input file"),
    ("verify --out {tmp}/o.jsonl", "required: --input"),
    # apr train
    ("train sft --config {tmp}/c.yaml --set nokey", "argument --set: must be KEY=VALUE"),
    ("train rl --config {tmp}/c.yaml --set =1", "argument --set: must be KEY=VALUE"),
    ("train sft", "required: --config"),
    ("train", "required: STAGE"),
    # apr solve
    ("solve 4 9 3 --target 24 --model {model} --top-p 0", "argument --top-p: must be a number in (0, 1]"),
    ("solve 4 9 3 --target 24 --model {model} --temperature -1", "argument --temperature"),
    ("solve 4 9 3 --target 24 --model {model} --temperature inf", "argument --temperature"),
    ("solve 4 -9 3 --target 24 --model {model}", "argument N: must be an integer >= 0"),
    ("solve 4 9 3 --target 24 --server http://127.0.0.1:9", "--server needs --model"),
    ("solve 4 9 3 --target 24 --model {model} --top-k -1", "argument --top-k"),
    # apr run
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --limit 0", "argument --limit"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --max-in-flight 0", "argument --max-in-flight"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --max-slots 0", "argument --max-slots"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --max-children 0", "argument --max-children"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --context 8",
     "argument --context: must be an integer in 16..1048576"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --context 2000000", "argument --context"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --dtype float8", "argument --dtype"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --device gpu", "argument --device"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --model {model} --device cuda:x", "argument --device"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/o.jsonl --server http://127.0.0.1:9", "--server needs --model"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/p.jsonl --model {model}", "names the --problems file"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/notes.txt --model {model}", "not an `apr run` records file"),
    ("run --problems {tmp}/p.jsonl --out {tmp}/v.jsonl --model {model}", "not an `apr run` records file"),
    ("run --problems {tmp}/p.jsonl --out {tmp} --model {model}", "--out is a folder"),
    # apr serve
    ("serve", "required: --model"),
    ("serve --model {model} --port 70000", "--port"),
    ("serve --model {model} --max-slots 0", "--max-slots"),
    # apr eval
    ("eval --method cons@0 --out {tmp}/e", "argument --method"),
    ("eval --method solver-apr --out {tmp}/e --limit 0", "argument --limit"),
    ("eval --method solver-apr --out {tmp}/p.jsonl --problems {tmp}/p.jsonl", "names the --problems file"),
    ("eval --method apr --out {tmp}/e --server http://127.0.0.1:9", "--server needs --model"),
    ("eval --method apr --out {tmp}/e --model {model} --top-p 1.5", "argument --top-p"),
    # apr report
    ("report {tmp} --out {tmp}/r --rl --paired x", "argument --paired: must be BEFORE_DIR,AFTER_DIR"),
    ("report {tmp} --out {tmp}/r --paired a,b", "--paired needs --rl"),
    ("report {tmp}", "required: --out"),
    # apr pipeline
    ("pipeline --preset cpu --out {tmp}/pl --steps 0", "argument --steps"),
    ("pipeline --preset cpu --out {tmp}/pl --train-seconds -5", "argument --train-seconds"),
    ("pipeline --preset cpu --out {tmp}/pl --train-seconds inf", "argument --train-seconds"),
    ("pipeline --preset cpu --out {tmp}/pl --budgets 2,x", "argument --budgets"),
    ("pipeline --preset cpu --out {tmp}/pl --device tpu", "argument --device"),
    ("pipeline --preset cpu --out {tmp}/pl --eval-context 4", "argument --eval-context"),
    ("pipeline --preset cpu --out {tmp}/pl --model-preset huge", "argument --model-preset: invalid choice"),
    ("pipeline --preset cpu --out {tmp}/pl --stages data,bogus", "unknown stage"),
    ("pipeline --preset tpu --out {tmp}/pl", "argument --preset: invalid choice"),
]

@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"nums": [4, 9, 3], "target": 24 + i}) + "\n" for i in range(3)))
    (tmp_path / "v.jsonl").write_text(json.dumps({"nums": [4, 9, 3], "target": 24, "text": "x"}) + "\n")
    (tmp_path / "notes.txt").write_text("not records\n")
    (tmp_path / "c.yaml").write_text("data: x.jsonl\n")
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in sorted(folder.rglob("*"))}


def check_refused(argv: str, fragment: str, tmp: Path, capsys) -> None:
    before = snapshot(tmp)
    rc = main(argv.format(tmp=tmp, model=MODEL).split())
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("apr: error: "), err
    assert fragment in err[0], err[0]
    assert snapshot(tmp) == before, "something was written"


@pytest.mark.parametrize("argv,fragment", BAD)
def test_bad_option_is_one_line_exit_2_nothing_written(argv, fragment, inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    check_refused(argv, fragment, inputs, capsys)


def test_every_command_has_a_bad_option_row():
    names = {name.removeprefix("apr ") for name, _ in parsers(build_parser())} - {"apr"}
    covered = {argv.split()[0] for argv, _ in BAD} | {" ".join(argv.split()[:2]) for argv, _ in BAD}
    assert names <= covered, names - covered


def test_the_control_row_works(inputs, monkeypatch):
    """The rows fail for their option alone: the same command line without it works."""
    monkeypatch.chdir(inputs)
    assert main(f"data problems --n 5 --out {inputs}/o.jsonl --quiet".split()) == 0
    assert len((inputs / "o.jsonl").read_text().splitlines()) == 5


def test_run_refuses_a_file_that_is_not_records_before_loading_the_model(inputs, capsys, monkeypatch):
    """Checked before the model loads: no model folder is needed to see the refusal either."""
    import apr.commands.solve as solve

    monkeypatch.setattr(solve, "make_engine", lambda spec: pytest.fail("the model was loaded"))
    check_refused("run --problems {tmp}/p.jsonl --out {tmp}/notes.txt --model {model}",
                  "not an `apr run` records file", inputs, capsys)
