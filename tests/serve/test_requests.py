"""`apr serve` requests: each field checked before the engine (a bad request fails alone),
engine-step failures isolated, n / echo / stream, the model name, and many clients at once."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

torch = pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from support.servers import serve  # noqa: E402

from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402

CONTEXT = 128
GOOD = {"prompt": "Current State: 24:[4, 9, 3]", "max_tokens": 40, "temperature": 0}


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return LocalEngine(tiny_model_dir, max_slots=4, max_len=CONTEXT, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=4, max_len=CONTEXT, device="cpu"))
    yield url
    stop()


def post(url, body, **kw):
    if isinstance(body, (bytes, str)):
        return httpx.post(url + "/v1/completions", content=body, headers={"Content-Type": "application/json"},
                          timeout=60, **kw)
    return httpx.post(url + "/v1/completions", json=body, timeout=60, **kw)


def ref_text(local, prompt, n, **sp):
    (c,) = local.run([Request("r", prompt, n, [], SamplingParams(**sp))])
    return c.text


# (body, status, param the error names, a piece of its message)
BAD = [
    ({"prompt": "hi", "top_k": 1e20}, 400, "top_k", "integer"),
    ({"prompt": "hi", "top_k": 10**20}, 400, "top_k", "between"),
    ({"prompt": "hi", "top_k": 1000}, 400, "top_k", "between"),  # more than the vocabulary
    ({"prompt": "hi", "top_k": -2}, 400, "top_k", "between"),
    ({"prompt": "hi", "cache_key": [1]}, 400, "cache_key", "string"),
    ({"prompt": "hi", "cache_key": ""}, 400, "cache_key", "string"),
    ({"prompt": "hi", "cache_key": "k" * 300}, 400, "cache_key", "string"),
    (b'{"prompt": "hi", "max_tokens": 1e999}', 400, None, "out of range"),
    (b'{"prompt": "hi", "temperature": NaN}', 400, None, "NaN"),
    (b'{"prompt": "hi", "temperature": Infinity}', 400, None, "Infinity"),
    (b'{"prompt": "hi", "seed": 1' + b"0" * 5000 + b"}", 400, None, "bad JSON"),
    (b"[" * 100000 + b"]" * 100000, 400, None, "bad JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (b"{not json", 400, None, "bad JSON"),
    ({"prompt": "hi", "max_tokens": 1e3}, 400, "max_tokens", "integer"),
    ({"prompt": "hi", "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ({"prompt": "hi", "max_tokens": True}, 400, "max_tokens", "integer"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens", "between"),
    ({"prompt": "hi", "max_tokens": CONTEXT + 1}, 400, "max_tokens", "between"),
    ({"prompt": "hi", "max_tokens": CONTEXT - 2}, 400, "max_tokens", "at most 125"),  # 3 prompt tokens with BOS
    ({"prompt": "x" * CONTEXT, "max_tokens": 1}, 400, "prompt", "context is 128"),
    ({"prompt": "hi", "temperature": -0.1}, 400, "temperature", "in [0"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature", "number"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p", "in (0, 1]"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "top_p", "in (0, 1]"),
    ({"prompt": "hi", "seed": 2**64}, 400, "seed", "between"),
    ({"prompt": "hi", "seed": 1.5}, 400, "seed", "integer"),
    ({"prompt": "hi", "stop": ["a"] * 17}, 400, "stop", "at most 16"),
    ({"prompt": "hi", "stop": "s" * 300}, 400, "stop", "at most 256"),
    ({"prompt": "hi", "stop": [1]}, 400, "stop", "list of strings"),
    ({"prompt": ["hi"] * 257}, 400, "prompt", "at most 256"),
    ({"prompt": []}, 400, "prompt", "non-empty"),
    ({"prompt": [1, 2, 3]}, 400, "prompt", "token-id"),
    ({"max_tokens": 3}, 400, "prompt", "must be a string"),
    ({"prompt": "hi", "n": 0}, 400, "n", "between"),
    ({"prompt": "hi", "n": 17}, 400, "n", "between"),
    ({"prompt": ["hi"] * 20, "n": 16}, 400, "n", "choices"),
    ({"prompt": "hi", "best_of": 3}, 400, "best_of", "best_of"),
    ({"prompt": "hi", "logprobs": 1}, 400, "logprobs", "not supported"),
    ({"prompt": "hi", "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ({"prompt": "hi", "logit_bias": {"5": 1}}, 400, "logit_bias", "not supported"),
    ({"prompt": "hi", "suffix": "x"}, 400, "suffix", "not supported"),
    ({"prompt": "hi", "min_tokens": 3}, 400, "min_tokens", "unknown field"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream", "true or false"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ({"prompt": "hi", "echo": 1}, 400, "echo", "true or false"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "model", "does not exist"),
    ({"prompt": "hi", "model": 7}, 400, "model", "string"),
]


def test_each_bad_request_fails_alone_while_good_ones_succeed(server, local):
    want = ref_text(local, GOOD["prompt"], GOOD["max_tokens"])
    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(post, server, GOOD) for _ in range(3)]
        time.sleep(0.05)  # the good requests are decoding while the bad ones arrive
        bads = [pool.submit(post, server, body) for body, *_ in BAD]
        for (body, status, param, piece), fut in zip(BAD, bads):
            r = fut.result()
            err = r.json()["error"]
            assert r.status_code == status, (body if isinstance(body, dict) else body[:60], r.text[:300])
            assert err["param"] == param and piece in err["message"], (body, err)
        for g in goods:
            r = g.result()
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    assert post(server, {"prompt": "hi", "model": "tiny", "max_tokens": 2}).status_code == 200  # the served name


def test_body_limits_and_routes(server):
    r = post(server, b'{"prompt": "' + b"x" * (9 << 20) + b'"}')
    assert r.status_code == 413
    assert httpx.get(server + "/v1/completions").status_code == 405
    assert httpx.post(server + "/health", json={}).status_code == 405
    assert httpx.get(server + "/nope").status_code == 404
    r = httpx.post(server + "/v1/completions", content=iter([b'{"prompt": "hi"}']))  # chunked upload
    assert r.status_code == 411


def test_max_tokens_is_refused_past_the_window_not_clipped(server, local):
    # "hi" is 3 tokens with BOS: 125 new tokens fit exactly, 126 do not.
    r = post(server, {"prompt": "hi", "max_tokens": CONTEXT - 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= CONTEXT - 3
    r = post(server, {"prompt": "hi", "max_tokens": CONTEXT - 2, "temperature": 0})
    assert r.status_code == 400
    # Without max_tokens the default (16) shrinks to what a long prompt leaves.
    r = post(server, {"prompt": "x" * (CONTEXT - 6), "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5


def test_models_reports_the_window(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=1, max_len=64, device="cpu")
    url, stop, _ = serve(eng)  # asked for 128, the engine holds 64
    try:
        (m,) = httpx.get(url + "/v1/models").json()["data"]
        assert m["id"] == "tiny" and m["max_model_len"] == 64
        r = post(url, {"prompt": "hi", "max_tokens": 62})
        assert r.status_code == 400 and "context of 64" in r.json()["error"]["message"]
    finally:
        stop()


def test_n_samples_with_distinct_seeds_and_echo(server, local):
    body = {"prompt": ["ab", "Moving"], "n": 3, "max_tokens": 12, "temperature": 0.9, "seed": 5}
    data = post(server, body).json()
    assert [c["index"] for c in data["choices"]] == list(range(6))
    for k, c in enumerate(data["choices"]):
        prompt = body["prompt"][k // 3]
        (ref,) = local.run([Request("x", prompt, 12, [], SamplingParams(temperature=0.9, seed=5 + k))])
        assert c["text"] == ref.text, k
    assert len({c["text"] for c in data["choices"][:3]}) > 1  # distinct seeds, distinct samples
    assert data["usage"]["prompt_tokens"] == 3 + 7  # each prompt counted once
    echo = post(server, {**body, "echo": True}).json()
    for a, b, k in zip(data["choices"], echo["choices"], range(6)):
        assert b["text"] == body["prompt"][k // 3] + a["text"]


def sse(r) -> list:
    events = []
    for line in r.text.split("\n"):
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_stream_is_server_sent_events_with_the_same_text(server):
    body = {"prompt": ["Current State: 24:[4, 9, 3]", "hi"], "n": 2, "max_tokens": 20, "temperature": 0.7,
            "seed": 1, "stop": ["\n"]}
    plain = post(server, body).json()
    r = post(server, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    assert events[-1] == "[DONE]"
    texts: dict[int, str] = {}
    finish = {}
    for e in events[:-2]:
        assert e["object"] == "text_completion" and e["model"] == "tiny"
        for ch in e["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            if ch["finish_reason"]:
                finish[ch["index"]] = (ch["finish_reason"], ch["stop_reason"])
    assert events[-2]["usage"] == plain["usage"] and events[-2]["choices"] == []
    for c in plain["choices"]:
        assert texts[c["index"]] == c["text"] and finish[c["index"]] == (c["finish_reason"], c["stop_reason"])
    # The OpenAI client's shape: a stream without usage, then a plain request on the same connection.
    with httpx.Client(base_url=server, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json={**body, "prompt": "hi", "n": 1, "seed": 3, "stream": True}) as s:
            got = "".join(ch["text"] for e in sse(httpx.Response(200, content=s.read()))[:-1] for ch in e["choices"])
        assert got == plain["choices"][2]["text"]  # choice 2: "hi" with seed 1 + 2
        assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


class FlakyEngine(LocalEngine):
    """Its step raises whenever a request whose prompt starts with BOOM is in it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.inflight: dict[str, Request] = {}

    def submit(self, req):
        self.inflight[req.id] = req
        super().submit(req)

    def poll(self):
        if any(r.prompt.startswith("BOOM") for r in self.inflight.values()):
            raise RuntimeError("kernel exploded")
        done = super().poll()
        for c in done:
            self.inflight.pop(c.id, None)
        return done

    def abort(self):
        self.inflight.clear()
        super().abort()


def test_an_engine_step_failure_fails_only_its_request(tiny_model_dir, local):
    url, stop, worker = serve(FlakyEngine(tiny_model_dir, max_slots=4, max_len=CONTEXT, device="cpu"))
    try:
        prompts = [f"{i} Current State" for i in range(5)]
        wants = [ref_text(local, p, 25) for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            goods = [pool.submit(post, url, {"prompt": p, "max_tokens": 25, "temperature": 0}) for p in prompts]
            time.sleep(0.05)
            boom = pool.submit(post, url, {"prompt": "BOOM", "max_tokens": 25})
            r = boom.result()
            assert r.status_code == 500 and "kernel exploded" in r.json()["error"]["message"]
            for g, want in zip(goods, wants):
                r = g.result()
                assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
        assert worker.step_failures >= 1
        r = post(url, {"prompt": prompts[0], "max_tokens": 25, "temperature": 0})
        assert r.json()["choices"][0]["text"] == wants[0]  # the server goes on
        r = post(url, {"prompt": "BOOM", "stream": True, "max_tokens": 3})  # a stream ends with the error
        events = sse(r)
        assert "kernel exploded" in events[0]["error"]["message"] and events[-1] == "[DONE]"
    finally:
        stop()


def test_many_concurrent_clients_are_all_answered(tiny_model_dir):
    """200 clients at once, each on its own new connection: none is reset or refused."""
    url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=16, max_len=CONTEXT, device="cpu"))
    n = 200
    barrier = threading.Barrier(n)

    host, port = url.removeprefix("http://").split(":")

    def one(i):
        conn = http.client.HTTPConnection(host, int(port), timeout=120)  # a fresh connection per client
        body = json.dumps({"prompt": f"{i}", "max_tokens": 2, "temperature": 0})
        barrier.wait()
        try:
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status if json.loads(r.read())["choices"][0]["finish_reason"] else -1
        except OSError as e:  # a reset or refused connection
            return type(e).__name__
        finally:
            conn.close()

    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(one, range(n)))
        elapsed = time.perf_counter() - t
        assert codes == [200] * n, {c: codes.count(c) for c in set(codes)}
        print(f"{n} concurrent clients answered in {elapsed:.2f} s")
    finally:
        stop()


def test_a_full_server_says_busy(tiny_model_dir):
    url, stop, _ = serve(LocalEngine(tiny_model_dir, max_slots=1, max_len=CONTEXT, device="cpu"),
                         max_concurrency=1, queue_timeout=0.05)
    try:
        with ThreadPoolExecutor(6) as pool:
            rs = list(pool.map(lambda i: post(url, {"prompt": f"{i}", "max_tokens": 60, "temperature": 0}), range(6)))
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.headers["retry-after"] == "1"
    finally:
        stop()
