"""Who may do what: `apr serve`'s API key, its weight reload (off by default, inside one
root, all or nothing), its access log and options; and RL configs that name code."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from support.models import make_char_tokenizer, save_apr_model_dir, save_model_dir  # noqa: E402
from support.servers import serve  # noqa: E402

import apr.commands.serve as serve_cmd  # noqa: E402
from apr.commands import build_parser  # noqa: E402
from apr.commands import main as cli_main  # noqa: E402
from apr.engine.base import Request  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.openai import OpenAIEngine  # noqa: E402
from apr.errors import UserError  # noqa: E402
from apr.serve import serving_window  # noqa: E402

PROMPT = "Current State: 24:[4, 9, 3]"
KEY = "s3cret-key"


def greedy(url, headers=None) -> str:
    r = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 12, "temperature": 0},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def reload(url, path, headers=None) -> httpx.Response:
    return httpx.post(url + "/update_weights_from_disk", json={"model_path": str(path)}, headers=headers, timeout=120)


# ---------------------------------------------------------------------------- API key


def test_an_api_key_guards_every_endpoint(tiny_model_dir, tmp_path, monkeypatch):
    url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device="cpu"), api_key=KEY,
                         reload_root=tmp_path)
    try:
        calls = [("GET", "/health", None), ("GET", "/v1/models", None),
                 ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
                 ("POST", "/update_weights_from_disk", {"model_path": str(tmp_path)}),
                 ("GET", "/nope", None)]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}):
            for method, path, body in calls:
                r = httpx.request(method, url + path, json=body, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, path)
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/health", headers=good).status_code == 200
        assert greedy(url, good)
        # The client sends the key given, or APR_API_KEY; without one it says what is missing.
        monkeypatch.delenv("APR_API_KEY", raising=False)
        with pytest.raises(UserError, match="wants an API key.*APR_API_KEY"):
            OpenAIEngine(url)
        with pytest.raises(UserError, match="was refused"):
            OpenAIEngine(url, api_key="wrong")
        eng = OpenAIEngine(url, api_key=KEY)
        (c,) = eng.run([Request("a", "hi", 3, [])])
        assert c.finish_reason != "error"
        eng.close()
        monkeypatch.setenv("APR_API_KEY", KEY)
        eng = OpenAIEngine(url)
        (c,) = eng.run([Request("a", "hi", 3, [])])
        assert c.finish_reason != "error"
        eng.close()
    finally:
        stop()


def test_the_access_log_has_one_line_per_request(tiny_model_dir):
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    log = logging.getLogger("apr.serve.access")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for access_log in (True, False):
            lines.clear()
            url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device="cpu"),
                                 access_log=access_log)
            try:
                with httpx.Client(base_url=url) as c:  # one keep-alive connection, three requests
                    c.get("/health")
                    c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
                    c.post("/v1/completions", json={"prompt": "hi", "top_p": 7})
            finally:
                stop()
            if not access_log:
                assert lines == []
                continue
            assert len(lines) == 3, lines
            assert '"GET /health" 200' in lines[0] and lines[0].startswith("127.0.0.1:")
            assert '"POST /v1/completions" 200' in lines[1] and '"POST /v1/completions" 400' in lines[2]
            assert all(line.endswith("ms") for line in lines)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


# ---------------------------------------------------------------------------- weight reload


def model_with(path: Path, hidden: int = 64, tok=None, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tok or make_char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(make_char_tokenizer()), hidden_size=hidden, intermediate_size=160,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=3, initializer_range=0.3,
                      rope_parameters={"rope_theta": 5000.0, "rope_type": "default"})
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def edit_weights(folder: Path, fn) -> Path:
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f, metadata={"format": "pt"})
    return folder


def test_weight_reload_is_off_unless_asked(tiny_model_dir, tmp_path):
    other = save_model_dir(tmp_path / "other", seed=7)
    url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device="cpu"))
    try:
        before = greedy(url)
        r = reload(url, other)
        assert r.status_code == 404 and r.json()["success"] is False and "--allow-reload" in r.json()["message"]
        eng = OpenAIEngine(url)
        with pytest.raises(UserError, match="cannot reload weights.*--allow-reload"):
            eng.reload_weights(other)
        eng.close()
        assert greedy(url) == before
    finally:
        stop()


def test_weight_reload_stays_inside_its_root_and_is_all_or_nothing(tiny_model_dir, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    good = save_model_dir(root / "good", seed=7)
    save_model_dir(outside, seed=7)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "sneaky").mkdir()
    for f in outside.iterdir():  # a folder inside the root whose files live outside it
        (root / "sneaky" / f.name).symlink_to(f)
    wider = model_with(root / "wider", hidden=32)
    tok = make_char_tokenizer()
    tok.add_tokens(["<extra>"])
    other_tok = model_with(root / "other_tok", tok=tok)
    lacking = edit_weights(save_model_dir(root / "lacking", seed=7), lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight"))
    nan = edit_weights(save_model_dir(root / "nan", seed=7),
                       lambda sd: sd["model.norm.weight"].__setitem__(0, float("nan")))
    (root / "empty").mkdir()
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "config.json").write_text("{not json")

    eng = LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device="cpu")
    url, stop, _ = serve(eng, reload_root=root)
    try:
        before = greedy(url)
        refusals = {
            str(outside): (403, "not inside the reload root"),
            str(tmp_path / "missing"): (403, "not inside the reload root"),
            str(root / ".." / "outside"): (403, "not inside the reload root"),
            "escape": (403, "not inside the reload root"),
            "sneaky": (403, "links outside the reload root"),
            "meta-llama/Llama-2-7b-hf": (400, "no folder there"),  # a folder under the root, never the hub
            "empty": (400, "no config.json"),
            "not_a_model": (400, "not a Hugging Face model folder"),
            "wider": (400, "different architecture: dim 32 (served 64)"),
            "other_tok": (400, "different tokenizer"),
            "lacking": (400, "lacks or misshapes 1 weights"),
            "nan": (400, "NaN"),
        }
        for path, (code, piece) in refusals.items():
            t = time.perf_counter()
            r = reload(url, path)
            assert (r.status_code, r.json()["success"]) == (code, False), (path, r.text)
            assert piece in r.json()["message"], (path, r.json())
            assert time.perf_counter() - t < 10, path
            assert greedy(url) == before, path  # the old model serves on, unmixed
        # Outside the root, a path that exists and one that does not get the same answer.
        a, b = (reload(url, p).json()["message"] for p in (outside, tmp_path / "missing"))
        assert a.replace(str(outside), "P") == b.replace(str(tmp_path / "missing"), "P")
        for bad in ({}, {"model_path": 7}, {"model_path": ""}, {"model_path": "good", "load_format": "x"}):
            r = httpx.post(url + "/update_weights_from_disk", json=bad)
            assert r.status_code == 400 and r.json()["success"] is False
        assert eng.model_path == str(tiny_model_dir)

        # A swap that fails half way puts the old weights back.
        real_load = eng.load_weights

        def half_then_fail(sd):
            eng.model.embed.weight.data.zero_()
            raise RuntimeError("device lost")

        eng.load_weights = half_then_fail
        r = reload(url, "good")
        assert r.status_code == 500 and "old weights keep serving" in r.json()["message"]
        assert greedy(url) == before
        eng.load_weights = real_load

        # The client GRPO uses: a good folder swaps (absolute path, as GRPO sends it), and back.
        client = OpenAIEngine(url)
        client.reload_weights(good.resolve())
        ref = LocalEngine(good, max_slots=1, max_len=128, device="cpu").run([Request("r", PROMPT, 12, [])])[0].text
        assert greedy(url) == ref != before
        with pytest.raises(UserError, match="could not reload weights.*different architecture"):
            client.reload_weights(wider)
        assert greedy(url) == ref
        client.close()
    finally:
        stop()


def test_inference_goes_on_while_new_weights_load(tiny_model_dir, tmp_path, monkeypatch):
    root = tmp_path / "root"
    good = save_model_dir(root / "good", seed=7)
    eng = LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device="cpu")
    real = eng.stage_weights
    loading, release = threading.Event(), threading.Event()

    def slow(folder):
        loading.set()
        release.wait(30)
        return real(folder)

    monkeypatch.setattr(eng, "stage_weights", slow)
    url, stop, _ = serve(eng, reload_root=root)
    try:
        before = greedy(url)
        t = threading.Thread(target=reload, args=(url, good))
        t.start()
        assert loading.wait(30)
        assert greedy(url) == before  # served by the old weights while the new ones load
        release.set()
        t.join(60)
        assert greedy(url) != before
    finally:
        release.set()
        stop()


# ---------------------------------------------------------------------------- the command


def serve_parser():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    return p, sub.choices["serve"]


def test_serve_options_have_help_with_defaults_and_old_names_still_work(capsys):
    _, sp = serve_parser()
    visible = [a for a in sp._actions if a.option_strings and a.help != "==SUPPRESS==" and a.dest != "help"]
    assert {a.option_strings[0] for a in visible} >= {"--model", "--host", "--port", "--api-key", "--allow-reload",
                                                     "--served-model", "--context", "--max-slots", "--no-access-log"}
    shown = sp._get_formatter()
    for a in visible:  # the help formatter adds a plain default; the others say theirs
        assert "default" in shown._get_help_string(a) or a.required, a.option_strings
    help_text = sp.format_help()
    assert "--max-len" not in help_text and "--served-model-name" not in help_text
    p, _ = serve_parser()
    capsys.readouterr()
    args = p.parse_args(["serve", "--model", "m", "--max-len", "64", "--served-model-name", "x"])
    assert (args.context, args.served_model) == (64, "x")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--max-len is deprecated; use --context" in err[0]
    assert "--served-model-name is deprecated; use --served-model" in err[1]
    args = p.parse_args(["serve", "--model", "m"])
    assert (args.context, args.served_model, args.host) == (None, None, "127.0.0.1")  # None: the model's window


@pytest.mark.parametrize("argv, piece", [
    (["--port", "70000"], "argument --port: must be an integer in 0..65535"),
    (["--port", "-1"], "argument --port: must be an integer in 0..65535"),
    (["--max-slots", "0"], "argument --max-slots: must be a positive integer"),
    (["--context", "1"], "argument --context: must be an integer in 16..1048576"),
    (["--context", "1000000000"], "argument --context: must be an integer in 16..1048576"),
    (["--context", "1024"], "--context 1024 is more than the model's 512 positions (max_position_embeddings)"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--backlog", "0"], "--backlog"),
    (["--api-key", ""], "the API key (--api-key, APR_API_KEY) is empty"),
    (["--allow-reload", "/no/such/root"], "--allow-reload"),
    (["--device", "tpu"], "argument --device: must be auto, cpu, cuda or cuda:N"),
])
def test_bad_serve_options_are_one_line_errors(tiny_model_dir, argv, piece, capsys):
    assert cli_main(["serve", "--model", str(tiny_model_dir)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apr: error:") and "\n" not in err and piece in err, err


@pytest.mark.parametrize("argv, piece", [
    (["--context", "100000"], "config.json: --context 100000 is more than the model's 512 positions"),
    pytest.param(["--device", "cuda"], "device 'cuda': CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--device", f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"],
     "CUDA is not available on this machine" if not torch.cuda.is_available() else "this machine has"),
])
def test_a_window_or_device_the_model_cannot_have_is_refused_before_it_loads(tiny_model_dir, argv, piece,
                                                                             capsys, monkeypatch):
    import apr.engine.local

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(apr.engine.local, "load_hf_causal_lm", no_load)
    assert cli_main(["serve", "--model", str(tiny_model_dir)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apr: error:") and "\n" not in err and piece in err, err


def run_serve(monkeypatch, argv) -> str:
    """Run `apr serve` until it is listening, then stop it; its stderr."""
    real = serve_cmd.start_server

    def start(*a, **kw):
        httpd, worker = real(*a, **kw)

        def stop_at_once():
            raise KeyboardInterrupt

        httpd.serve_forever = stop_at_once
        return httpd, worker

    monkeypatch.setattr(serve_cmd, "start_server", start)
    return cli_main(["serve", "--port", "0", "--device", "cpu", "--max-slots", "1"] + argv)


def test_serving_beyond_this_machine_without_a_key_warns(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.delenv("APR_API_KEY", raising=False)
    for argv, warned in ((["--host", "0.0.0.0"], True), (["--host", "0.0.0.0", "--api-key", KEY], False),
                         ([], False), (["--host", "localhost"], False)):
        assert run_serve(monkeypatch, ["--model", str(tiny_model_dir)] + argv) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if "without an API key" in line]
        assert len(warnings) == (1 if warned else 0), (argv, err)
    monkeypatch.setenv("APR_API_KEY", KEY)
    assert run_serve(monkeypatch, ["--model", str(tiny_model_dir), "--host", "0.0.0.0"]) == 0
    assert "without an API key" not in capsys.readouterr().err


def test_the_window_is_what_the_model_was_trained_for(tmp_path, tiny_model_dir):
    m = save_apr_model_dir(tmp_path / "m")
    info = json.loads((m / "apr.json").read_text())
    info["context"] = 96
    (m / "apr.json").write_text(json.dumps(info))
    assert serving_window(m, 400) == serving_window(m) == 96  # capped at the trained context
    assert serving_window(m, 64) == 64
    assert serving_window(tiny_model_dir) == 512  # no apr.json: max_position_embeddings
    with pytest.raises(UserError, match="more than the model's 512 positions"):
        serving_window(tiny_model_dir, 4096)  # asked past the position limit: refused, not capped


# ---------------------------------------------------------------------------- configs that name code


def rl_config(*sets):
    from apr.train.config import RLConfig, load_config

    return load_config(None, ["init=m", "problems=p"] + list(sets), cls=RLConfig)


def test_a_config_runs_code_only_when_it_says_so(tmp_path, monkeypatch):
    from apr.train.rewards import resolve_reward

    f = tmp_path / "my_reward.py"
    f.write_text("def r(record, problem):\n    return 0.25\n")
    monkeypatch.delenv("APR_REWARD_MODULES", raising=False)
    assert rl_config("reward=partial").reward == "partial"
    with pytest.raises(UserError, match="must be one of binary, format, partial, checked,"):
        rl_config("reward=nope")
    with pytest.raises(UserError, match="names code to run; set `trust_reward_code: true`"):
        rl_config(f"reward={f}:r")
    cfg = rl_config(f"reward={f}:r", "trust_reward_code=true")
    assert resolve_reward(cfg.reward)({}, None) == 0.25
    with pytest.raises(UserError, match="no such file"):
        resolve_reward(f"{tmp_path / 'gone.py'}:r")
    # A module must be on the allow-list of whoever runs the training, not of the config.
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="trust_reward_code"):
        rl_config("reward=my_reward:r")
    with pytest.raises(UserError, match="not allowed.*APR_REWARD_MODULES"):
        rl_config("reward=my_reward:r", "trust_reward_code=true")
    with pytest.raises(UserError, match="not allowed"):
        rl_config("reward=os:system", "trust_reward_code=true")
    monkeypatch.setenv("APR_REWARD_MODULES", "my_reward, other.pkg")
    cfg = rl_config("reward=my_reward:r", "trust_reward_code=true")
    assert resolve_reward(cfg.reward)({}, None) == 0.25
    with pytest.raises(UserError, match="not allowed"):
        rl_config("reward=other:r", "trust_reward_code=true")  # `other.pkg` does not allow `other`
    assert "my_reward" in sys.modules
