"""Exact arithmetic (issue 20) over HTTP: `apr serve` takes an `arithmetic` request field and
reports what it wrote (`usage.forced_tokens`, per choice `forced_spans`); the client engine
sends the field and refuses a server that does not honour it, in one line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from support.models import save_apr_model_dir, tiny_model  # noqa: E402,F401

from apr.commands import main  # noqa: E402
from apr.engine.base import Request  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.openai import OpenAIEngine  # noqa: E402
from apr.datasets import packaged_validation_set  # noqa: E402
from apr.errors import UserError  # noqa: E402
from apr.serve import ServeConfig, start_server  # noqa: E402

VAL = str(packaged_validation_set())
# A prompt that ends where the result is due: under exact arithmetic the next token is `6`.
AT_RESULT = "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\nExploring Operation: 9-3="


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("exact_serve") / "model")


@pytest.fixture(scope="module")
def server(model_dir):
    eng = LocalEngine(model_dir, max_slots=4, max_len=512, device="cpu", dtype="float32")
    httpd, worker = start_server(eng, ServeConfig(port=0, model_name="tiny", context=512))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()
    worker.close()


def post(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"max_tokens": 3, "temperature": 0, **body}, timeout=60)


@pytest.fixture(scope="module")
def ignoring_server():
    """An OpenAI-compatible server that ignores fields it does not know (as vLLM and SGLang
    do): no forced tokens in its answers."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _json(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._json({"data": [{"id": "m", "max_model_len": 512}]})

        def do_POST(self):
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._json({"choices": [{"text": "7", "finish_reason": "length", "stop_reason": None}],
                        "usage": {"prompt_tokens": 4, "completion_tokens": 1}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_serve_writes_the_result_and_says_so(server):
    data = post(server, prompt=AT_RESULT, arithmetic="exact").json()
    (ch,) = data["choices"]
    assert ch["text"][0] == "6" and not ch["text"][1:2].isdigit()
    assert data["usage"]["forced_tokens"] == 1 and ch["forced_spans"] == [[0, 1]]
    echoed = post(server, prompt=AT_RESULT, arithmetic="exact", echo=True).json()["choices"][0]
    assert echoed["forced_spans"] == [[len(AT_RESULT), len(AT_RESULT) + 1]]  # spans of the text as sent
    plain = post(server, prompt=AT_RESULT).json()
    assert "forced_tokens" not in plain["usage"] and "forced_spans" not in plain["choices"][0]
    assert post(server, prompt=AT_RESULT, arithmetic="model").json()["choices"][0]["text"] == plain["choices"][0]["text"]


def test_serve_streams_forced_tokens_too(server):
    body = {"prompt": AT_RESULT, "arithmetic": "exact", "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 3, "temperature": 0}
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["forced_spans"] == [[0, 1]] and events[-1]["usage"]["forced_tokens"] == 1


@pytest.mark.parametrize("value", ["rounded", 3, True, ""])
def test_serve_refuses_a_bad_mode(server, value):
    r = post(server, prompt="hi", arithmetic=value)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "arithmetic" and "'arithmetic' must be one of model, exact" in err["message"]


def test_client_engine_sends_the_mode_to_apr_serve(server, model_dir):
    eng = OpenAIEngine(server, tokenizer=str(model_dir))
    eng.check_arithmetic("exact")
    local = LocalEngine(model_dir, max_slots=2, max_len=512, device="cpu", dtype="float32")
    reqs = [Request(f"{m}", AT_RESULT, 3, [], arithmetic=m) for m in ("exact", "model")]
    got, want = eng.run(reqs), local.run(reqs)
    for g, w in zip(got, want):
        assert (g.text, g.forced_tokens, g.forced_spans) == (w.text, w.forced_tokens, w.forced_spans)
    assert got[0].forced_tokens == 1 and got[0].forced_spans == [(0, 1)]
    eng.close()


def test_client_engine_refuses_a_server_that_ignores_the_mode(ignoring_server):
    url, seen = ignoring_server
    eng = OpenAIEngine(url)
    eng.check_arithmetic("model")  # nothing to ask
    assert seen == []
    with pytest.raises(UserError, match="does not support exact arithmetic"):
        eng.check_arithmetic("exact")
    assert seen[-1]["arithmetic"] == "exact"
    # an answer without forced tokens is an error, checked or not
    (c,) = eng.run([Request("x", AT_RESULT, 3, [], arithmetic="exact")])
    assert c.finish_reason == "error" and "does not support exact arithmetic" in c.error
    (c,) = eng.run([Request("y", AT_RESULT, 3, [])])
    assert c.text == "7" and "arithmetic" not in seen[-1]
    eng.close()


@pytest.mark.parametrize("command", ["run", "eval"])
def test_commands_with_a_server(command, server, ignoring_server, model_dir, tmp_path, capsys):
    def argv(url, out):
        return ([command] + (["--method", "apr"] if command == "eval" else []) +
                ["--server", url, "--model", str(model_dir), "--problems", VAL, "--limit", "1", "--context", "64",
                 "--arithmetic", "exact", "--out", str(out), "--quiet"])

    assert main(argv(ignoring_server[0], tmp_path / "no")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not support exact arithmetic" in err[0] and "--arithmetic" in err[0]
    out = tmp_path / "yes"
    assert main(argv(server, out)) == 0
    records = out / "records.jsonl" if command == "eval" else out
    (rec,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert rec["arithmetic"] == "exact" and "forced_tokens" in rec
