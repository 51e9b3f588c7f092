"""The window a model runs at by default: apr.json `eval_context`, else the `context` it was
trained with, for `apr eval` (recorded in run.json and the summary as resolved), the engine,
RL rollouts (`RuntimeConfig.resolve`) and `apr serve` (`serving_window`)."""

import json

import pytest
from support.models import save_apr_model_dir

from apr.commands import main
from apr.errors import UserError
from apr.model_folder import ModelInfo, load_model_info
from apr.runtime_config import RuntimeConfig
from apr.serve import serving_window


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_info(path, **fields):
    info = json.loads((path / "apr.json").read_text())
    (path / "apr.json").write_text(json.dumps({**info, **fields}))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random APR model (512 positions) whose apr.json says it was trained at 256 tokens."""
    return with_info(save_apr_model_dir(tmp_path_factory.mktemp("w") / "model"), context=256)


def test_resolve_takes_the_window_from_the_model():
    assert RuntimeConfig().context is None
    assert RuntimeConfig().resolve(ModelInfo(context=256)).context == 256
    assert RuntimeConfig().resolve(ModelInfo(context=256, eval_context=1024)).context == 1024
    assert RuntimeConfig(context=64).resolve(ModelInfo(context=256, eval_context=1024)).context == 64
    assert RuntimeConfig().resolve(ModelInfo()).context == 4096  # a folder without apr.json
    with pytest.raises(ValueError, match="context not set"):
        RuntimeConfig(method="apr", temperature=0.0).require_resolved()


@pytest.mark.parametrize("field, bad, message", [
    *[("eval_context", bad, "eval_context must be a positive integer") for bad in (0, -3, "1024", True, 1.5)],
    *[("rl_steps", bad, "rl_steps must be 0 or a positive integer") for bad in (-1, "40", True, 2.5, None)],
])
def test_a_bad_apr_json_field_is_refused(model, tmp_path, field, bad, message):
    import shutil

    m = tmp_path / "m"
    m.mkdir()
    shutil.copy(model / "apr.json", m / "apr.json")
    with_info(m, **{field: bad})
    with pytest.raises(UserError, match=message):
        load_model_info(m)


def evaluate_once(model, out, *extra):
    argv = ["eval", "--model", str(model), "--method", "apr", "--limit", "1", "--quiet", "--device", "cpu",
            "--out", str(out), *map(str, extra)]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return run["context"], summary["context"], max(r["longest_thread"] for r in recs)


def test_eval_runs_at_the_models_window_unless_asked(model, tmp_path):
    ran, summarized, longest = evaluate_once(model, tmp_path / "default")
    assert ran == summarized == 256 and longest <= 256  # the trained context, not 4096
    ran, summarized, longest = evaluate_once(model, tmp_path / "asked", "--context", 64)
    assert ran == summarized == 64 and longest <= 64


def test_eval_context_wins_over_the_training_context(model, tmp_path):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(model, m)
    with_info(m, eval_context=128)
    ran, summarized, longest = evaluate_once(m, tmp_path / "run")
    assert ran == summarized == 128 and longest <= 128

    from apr.engine.spec import EngineSpec, make_engine

    with make_engine(EngineSpec(model=str(m), device="cpu", dtype="float32", max_slots=1)) as engine:
        assert engine.max_len == 128  # the engine's default window is the runtime's


def test_serve_defaults_to_the_window_the_model_is_evaluated_at(model, tmp_path):
    import shutil

    assert serving_window(model) == 256 and serving_window(model, 400) == 256  # capped at the trained context
    m = tmp_path / "m"
    shutil.copytree(model, m)
    with_info(m, eval_context=128)
    assert serving_window(m) == 128 and serving_window(m, 200) == 200  # trained at 256: still allowed
    with_info(m, eval_context=400)
    assert serving_window(m) == 400 and serving_window(m, 500) == 400  # apr.json vouches for 400
    with_info(m, eval_context=1000)
    assert serving_window(m) == 512  # never past the model's positions
