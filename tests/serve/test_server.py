"""`apr serve` and the HTTP client engine against it."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from support.models import save_model_dir  # noqa: E402
from support.servers import serve  # noqa: E402

from apr.commands import main as cli_main  # noqa: E402
from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.openai import OpenAIEngine  # noqa: E402
from apr.errors import UserError  # noqa: E402

PROMPTS = ["Current State: 24:[4, 9, 3]", "hi", "Moving to Node #0,1\n", "abc" * 9, "7", "xyz\nq"]


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return LocalEngine(tiny_model_dir, max_slots=4, max_len=256, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    eng = LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device="cpu")
    url, stop, _ = serve(eng, context=256, reload_root=tmp_path_factory.getbasetemp())
    yield url
    stop()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_health_models_and_bad_requests(server):
    assert httpx.get(server + "/health").json()["status"] == "ok"
    models = httpx.get(server + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny"
    assert models["data"][0]["max_model_len"] == 256
    r = httpx.post(server + "/v1/completions", json={"prompt": "hi", "logprobs": 2})
    assert r.status_code == 400 and "'logprobs'" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", content=b"{not json")
    assert r.status_code == 400
    r = httpx.post(server + "/v1/completions", json={"prompt": "x" * 300, "max_tokens": 2})
    assert r.status_code == 400 and "context is 256" in r.json()["error"]["message"]


def test_completions_shape(server, local):
    (ref,) = local.run([Request("r", PROMPTS[0], 12, [])])
    stop = ref.text[4:6]
    body = {"prompt": [PROMPTS[0], PROMPTS[1]], "max_tokens": 12, "temperature": 0, "stop": [stop]}
    data = httpx.post(server + "/v1/completions", json=body, timeout=60).json()
    c0 = data["choices"][0]
    cut = ref.text.find(stop)
    assert c0["text"] == ref.text[:cut] and c0["finish_reason"] == "stop" and c0["stop_reason"] == stop
    assert len(data["choices"]) == 2 and data["usage"]["prompt_tokens"] > 0
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


def test_http_client_matches_local_engine(server, local):
    refs = local.run([Request(f"l{i}", p, 20, []) for i, p in enumerate(PROMPTS)])
    stops = [[r.text[5:7]] if i % 2 == 0 and len(r.text) > 8 else [] for i, r in enumerate(refs)]
    refs = local.run([Request(f"m{i}", p, 20, s) for i, (p, s) in enumerate(zip(PROMPTS, stops))])
    eng = OpenAIEngine(server, max_concurrency=4)
    assert eng.model == "tiny" and eng.tokenizer is None
    reqs = [Request(f"h{i}", p, 20, s) for i, (p, s) in enumerate(zip(PROMPTS, stops))]
    for r in reqs:
        eng.submit(r)
    assert eng.pending() == len(reqs)
    got = {}
    while eng.pending():
        for c in eng.poll():
            got[c.id] = c
    for i, ref in enumerate(refs):
        c = got[f"h{i}"]
        assert c.text == ref.text and c.finish_reason == ref.finish_reason, i
        assert c.n_tokens == ref.n_tokens and c.prompt_tokens == ref.prompt_tokens
    # Seeded sampling goes through too.
    sp = SamplingParams(temperature=0.8, top_k=20, seed=5)
    (a,) = local.run([Request("s", PROMPTS[2], 15, [], sampling=sp)])
    (b,) = eng.run([Request("s", PROMPTS[2], 15, [], sampling=sp)])
    assert a.text == b.text
    eng.close()


def test_reload_weights(server, tmp_path, tiny_model_dir):
    other = save_model_dir(tmp_path / "other", seed=7)
    eng = OpenAIEngine(server + "/v1")
    req = Request("x", PROMPTS[0], 10, [])
    (before,) = eng.run([req])
    eng.reload_weights(other)
    (after,) = eng.run([req])
    ref = LocalEngine(other, max_slots=1, max_len=64, device="cpu").run([req])[0]
    assert after.text == ref.text != before.text
    with pytest.raises(UserError, match="could not reload"):
        eng.reload_weights(tmp_path / "missing")
    eng.reload_weights(tiny_model_dir)
    (back,) = eng.run([req])
    assert back.text == before.text
    eng.close()


def test_parse_vllm_and_sglang_shapes(server):
    eng = OpenAIEngine(server)
    req = Request("p", "x", 5, ["\n"])
    vllm = {"choices": [{"text": "ab", "finish_reason": "stop", "stop_reason": "\n"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3}}
    c = eng._parse(req, vllm, 0.0)
    assert (c.text, c.finish_reason, c.n_tokens, c.prompt_tokens) == ("ab\n", "stop", 3, 3)
    sgl = {"choices": [{"text": "ab", "finish_reason": "stop", "matched_stop": 2}], "usage": {}}
    assert eng._parse(req, sgl, 0.0).finish_reason == "eos"
    sgl["choices"][0]["matched_stop"] = "\n"
    assert eng._parse(req, sgl, 0.0).text == "ab\n"
    eos = {"choices": [{"text": "ab", "finish_reason": "stop", "stop_reason": None}]}
    assert eng._parse(req, eos, 0.0).finish_reason == "eos"
    eng.close()


def test_unreachable_server_and_no_reload_endpoint():
    with pytest.raises(UserError, match="cannot reach"):
        OpenAIEngine(f"http://127.0.0.1:{_free_port()}/v1")

    class Minimal(BaseHTTPRequestHandler):  # lists a model, nothing else
        def log_message(self, *a):
            pass

        def do_GET(self):
            data = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Minimal)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        eng = OpenAIEngine(f"http://127.0.0.1:{httpd.server_address[1]}", retries=1, backoff=0.01)
        with pytest.raises(UserError, match="cannot reload weights"):
            eng.reload_weights("/nowhere")
        (c,) = eng.run([Request("a", "hi", 3, [])])
        assert c.finish_reason == "error" and "404" in c.error
        eng.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_command_errors(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert cli_main(["serve", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apr: error:") and "\n" not in err


def test_http_client_retries_server_errors():
    calls = []

    class Flaky(BaseHTTPRequestHandler):  # 503 on the first completion, then a vLLM answer
        def log_message(self, *a):
            pass

        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._json(200, {"data": [{"id": "m"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            if len(calls) == 1:
                return self._json(503, {"error": "busy"})
            self._json(200, {"choices": [{"text": "12", "finish_reason": "stop", "stop_reason": "\n"}],
                             "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                                       "prompt_tokens_details": {"cached_tokens": 2}}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        eng = OpenAIEngine(f"http://127.0.0.1:{httpd.server_address[1]}/v1", retries=2, backoff=0.01)
        sp = SamplingParams(temperature=0.5, top_k=7, top_p=0.9, seed=3)
        (c,) = eng.run([Request("a", "abc", 9, ["\n"], sp)])
        assert len(calls) == 2 and c.finish_reason == "stop" and c.text == "12\n"
        assert (c.n_tokens, c.prompt_tokens, c.cached_tokens) == (3, 4, 2)
        b = calls[-1]
        assert (b["model"], b["max_tokens"], b["stop"], b["top_k"], b["seed"], b["temperature"]) == \
            ("m", 9, ["\n"], 7, 3, 0.5)
        assert eng.pending() == 0 and eng.free_slots() == eng.max_concurrency
        eng.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
