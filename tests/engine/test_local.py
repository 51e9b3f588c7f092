"""The local engine: our Llama forward against HF, continuous batching, cache reuse,
seeded sampling, stop strings, abort and weight loading; the engine interface's defaults
and `make_engine`."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")

from support.models import make_char_tokenizer, make_tiny_llama  # noqa: E402

from apr.engine import EngineError, EngineSpec, make_engine  # noqa: E402
from apr.engine.base import Request, SamplingParams, common_prefix_len, stop_match  # noqa: E402
from apr.engine.llama import Transformer  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.sampler import gumbel_noise, sample, vocab_hash  # noqa: E402
from apr.engine.scripted import ScriptedEngine  # noqa: E402
from apr.errors import UserError  # noqa: E402

# APR_TEST_DEVICE=cuda runs the engine tests on a GPU (fp32, CUDA graphs on).
DEVICE = os.environ.get("APR_TEST_DEVICE", "cpu")

PROMPTS = [
    "Current State: 24:[4, 9, 3], Operations: []",
    "hi",
    "Moving to Node #0,1\n",
    "abc" * 12,
    "Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,1: 24:[4, 6]",
    "7",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device=DEVICE, dtype="float32", record_logits=True)


def hf_greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=3)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("tie", [False, True])
def test_forward_matches_hf(tie):
    tok = make_char_tokenizer()
    hf = make_tiny_llama(len(tok), seed=1, tie=tie)
    m = Transformer.from_hf(hf)
    m.setup_cache(4, 64)
    a, b = tok(PROMPTS[0])["input_ids"], tok(PROMPTS[2])["input_ids"]
    with torch.no_grad():
        ref_a = hf(torch.tensor([a])).logits[0]
        ref_b = hf(torch.tensor([b])).logits[0]
        # Two rows of different lengths in one padded forward, in slots 3 and 1.
        toks = torch.zeros(2, len(a), dtype=torch.long)
        toks[0, :len(a)], toks[1, :len(b)] = torch.tensor(a), torch.tensor(b)
        out = m(toks, torch.tensor([3, 1]), torch.tensor([0, 0]), torch.tensor([len(a), len(b)]),
                len(a), all_logits=True)
        torch.testing.assert_close(out[0], ref_a, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1, :len(b)], ref_b, atol=1e-4, rtol=1e-4)
        # Decode one token per row at their own positions, rows as a cache view (slots 0..3).
        nxt = [5, 7]
        ref_a2 = hf(torch.tensor([a + [nxt[0]]])).logits[0, -1]
        ref_b2 = hf(torch.tensor([b + [nxt[1]]])).logits[0, -1]
        toks = torch.tensor([[0], [nxt[1]], [0], [nxt[0]]])
        start = torch.tensor([64, len(b), 64, len(a)])  # idle rows use the scratch cell
        out = m(toks, slice(0, 4), start, torch.ones(4, dtype=torch.long), len(a) + 1)
        torch.testing.assert_close(out[3], ref_a2, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1], ref_b2, atol=1e-4, rtol=1e-4)


def test_greedy_matches_generate_with_queuing(tiny_hf, tiny_model_dir):
    model, tok = tiny_hf
    n = 24
    refs = [hf_greedy(model, tok, p, n) for p in PROMPTS]
    # 3 slots for 6 requests: the rest queue; tiny prefill chunks exercise chunked prefill.
    for kw in ({}, {"prefill_chunk": 5, "prefill_budget": 12}):
        eng = LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device=DEVICE, dtype="float32", **kw)
        for i, p in enumerate(PROMPTS):
            eng.submit(Request(str(i), p, n, []))
        assert eng.pending() == len(PROMPTS) and eng.free_slots() == 0
        done = {}
        while eng.pending():
            for c in eng.poll():
                done[c.id] = c
        for i, ref in enumerate(refs):
            c = done[str(i)]
            assert c.token_ids == ref, (kw, i)
            if c.finish_reason == "eos":
                assert ref[-1] == 2 and c.text == tok.decode(ref[:-1], skip_special_tokens=True)
            else:
                assert c.finish_reason == "length" and c.n_tokens == n and c.text == tok.decode(ref, skip_special_tokens=True)
            assert c.prompt_tokens == len(tok(PROMPTS[i])["input_ids"]) and c.cached_tokens == 0
            assert c.end_time >= c.first_token_time > 0
        assert eng.free_slots() == 3


def test_cache_reuse(engine, tiny_hf):
    model, tok = tiny_hf
    p = PROMPTS[4]
    (a,) = engine.run([Request("a", p, 10, [], cache_key="k")])
    assert "k" in engine.kept
    # Extend the context with the generated text and a new suffix: only the rest is prefilled.
    p2 = p + a.text + "\nMoving to Node #0,1"
    before = engine.stats["prefill_tokens"]
    (b,) = engine.run([Request("b", p2, 4, [], cache_key="k")])
    # The cache holds the prompt and all but the newest generated token; the new prompt's
    # ids share a prefix with them (the random model may emit special tokens text drops).
    kept = tok(p)["input_ids"] + a.token_ids[:-1]
    new = tok(p2)["input_ids"]
    lcp = next((i for i, (x, y) in enumerate(zip(kept, new)) if x != y), min(len(kept), len(new)))
    assert b.cached_tokens == lcp > len(tok(p)["input_ids"]) - 1
    assert engine.stats["prefill_tokens"] - before == b.prompt_tokens - b.cached_tokens
    ids2 = tok(p2, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(ids2).logits[0, -1]
    torch.testing.assert_close(engine.first_logits["b"], ref, atol=1e-4, rtol=1e-4)
    assert b.token_ids == hf_greedy(model, tok, p2, 4)
    # A different suffix rolls back to the longest common token prefix.
    p3 = p[:-5] + "XYZ"
    (c,) = engine.run([Request("c", p3, 3, [], cache_key="k")])
    assert c.cached_tokens == len(tok(p[:-5])["input_ids"])
    with torch.no_grad():
        ref = model(tok(p3, return_tensors="pt")["input_ids"]).logits[0, -1]
    torch.testing.assert_close(engine.first_logits["c"], ref, atol=1e-4, rtol=1e-4)
    # The same prompt again: everything but the last token comes from the cache.
    (d,) = engine.run([Request("d", p3, 3, [], cache_key="k")])
    assert d.cached_tokens == d.prompt_tokens - 1 and d.token_ids == c.token_ids
    engine.release("k")
    (e,) = engine.run([Request("e", p3, 3, [], cache_key="k")])
    assert e.cached_tokens == 0 and e.token_ids == c.token_ids
    engine.release("k")


def test_kept_caches_are_evicted_when_slots_run_out(engine):
    reqs = [Request(f"k{i}", PROMPTS[i], 3, [], cache_key=f"key{i}") for i in range(3)]
    engine.run(reqs)
    assert len(engine.kept) == 3 and engine.free_slots() == 3
    out = engine.run([Request(f"n{i}", PROMPTS[3 + i], 3, []) for i in range(2)])
    assert all(c.finish_reason in ("length", "eos") for c in out)
    assert list(engine.kept) == ["key2"]  # the two least recently kept were evicted
    (c,) = engine.run([Request("again", PROMPTS[2] + "x", 2, [], cache_key="key2")])
    assert c.cached_tokens == len(engine.tokenizer(PROMPTS[2])["input_ids"])
    for k in list(engine.kept):
        engine.release(k)


def test_seeded_sampling_independent_of_batch(engine):
    sp = SamplingParams(temperature=0.9, top_k=30, top_p=0.95, seed=1234)
    (alone,) = engine.run([Request("x", PROMPTS[0], 20, [], sampling=sp)])
    others = [Request(f"o{i}", PROMPTS[i], 20, [], sampling=SamplingParams(temperature=1.0, seed=i))
              for i in range(1, 5)]
    # Now the same request shares steps with others and lands in another slot.
    out = engine.run(others[:2] + [Request("x2", PROMPTS[0], 20, [], sampling=sp)] + others[2:])
    assert out[2].token_ids == alone.token_ids
    (again,) = engine.run([Request("x3", PROMPTS[0], 20, [], sampling=sp)])
    assert again.token_ids == alone.token_ids
    diff = engine.run([Request("y", PROMPTS[0], 20, [], sampling=SamplingParams(temperature=0.9, seed=99))])
    assert diff[0].token_ids != alone.token_ids


def test_sample_filters_and_distribution():
    V = 50
    torch.manual_seed(0)
    logits = torch.randn(4, V) * 2
    vh = vocab_hash(V, "cpu")
    z = torch.zeros(4, dtype=torch.long)
    seed, pos = torch.tensor([1, 2, 3, 4]), torch.tensor([10, 10, 10, 10])
    t1 = torch.ones(4)
    # top_k = 1 and a tiny top_p both reduce to greedy.
    assert torch.equal(sample(logits, t1, torch.ones(4, dtype=torch.long), t1, seed, pos, vh), logits.argmax(-1))
    assert torch.equal(sample(logits, t1, z, torch.full((4,), 1e-6), seed, pos, vh), logits.argmax(-1))
    assert torch.equal(sample(logits, torch.zeros(4), z, t1, seed, pos, vh, False), logits.argmax(-1))
    # top_k = 3: every draw is among the 3 best.
    n = 2000
    row = logits[:1].expand(n, V)
    seeds, poss = torch.arange(n), torch.arange(n) * 7
    ks = sample(row, torch.ones(n), torch.full((n,), 3), torch.ones(n), seeds, poss, vh)
    assert set(ks.tolist()) <= set(logits[0].topk(3).indices.tolist())
    # Unfiltered draws follow softmax(logits).
    draws = sample(row, torch.ones(n), torch.zeros(n, dtype=torch.long), torch.ones(n), seeds, poss, vh, False)
    freq = torch.bincount(draws, minlength=V).float() / n
    assert (freq - torch.softmax(logits[0], -1)).abs().max() < 0.05
    g = gumbel_noise(seeds[:2], poss[:2], vh)
    assert torch.isfinite(g).all() and not torch.equal(g[0], g[1])


def test_stop_strings(engine):
    (free,) = engine.run([Request("f", PROMPTS[3], 30, [])])
    text = free.text
    assert len(text) >= 12
    stop = text[8:11]
    first = text.find(stop)
    (c,) = engine.run([Request("s", PROMPTS[3], 30, ["@@never@@", stop])])
    assert c.finish_reason == "stop" and c.text == text[:first + len(stop)]
    assert c.token_ids == free.token_ids[:c.n_tokens]
    assert stop_match("abcabc", ["ca", "bc"]) == (3, "bc")


def test_eos_ends_sequence_without_its_text(engine):
    (free,) = engine.run([Request("f", PROMPTS[1], 20, [])])
    eos_tok = free.token_ids[6]
    saved = engine.eos_ids
    engine.eos_ids = saved | {eos_tok}
    try:
        (c,) = engine.run([Request("e", PROMPTS[1], 20, [])])
    finally:
        engine.eos_ids = saved
    k = free.token_ids.index(eos_tok)
    assert c.finish_reason == "eos" and c.token_ids == free.token_ids[:k + 1]
    assert c.text == engine.tokenizer.decode(free.token_ids[:k], skip_special_tokens=True)


def test_bad_requests_and_model_folder(engine, tmp_path):
    out = engine.run([Request("long", "x" * 400, 5, []), Request("zero", "hi", 0, [])])
    assert out[0].finish_reason == "error" and "max_len" in out[0].error
    assert out[1].finish_reason == "length" and out[1].n_tokens == 0
    with pytest.raises(UserError, match="not found"):
        LocalEngine(tmp_path / "missing")
    with pytest.raises(UserError):
        LocalEngine(tmp_path)


def test_cancel_drops_running_and_queued_requests(tiny_hf, tiny_model_dir):
    model, tok = tiny_hf
    n = 24
    refs = [hf_greedy(model, tok, p, n) for p in PROMPTS]
    eng = LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device=DEVICE, dtype="float32")
    for i, p in enumerate(PROMPTS):
        eng.submit(Request(str(i), p, n, []))
    eng.poll()  # three run, three queue
    assert eng.cancel("0") and eng.cancel(str(len(PROMPTS) - 1))  # one running, one queued
    assert not eng.cancel("0") and not eng.cancel("no such request")
    done = {}
    while eng.pending():
        for c in eng.poll():
            done[c.id] = c
    assert set(done) == {str(i) for i in range(1, len(PROMPTS) - 1)}
    for i in range(1, len(PROMPTS) - 1):  # the others are untouched by the freed slot's reuse
        assert done[str(i)].token_ids == refs[i]
    assert eng.free_slots() == 3


def test_abort_drops_requests_and_keeps_caches(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device=DEVICE, dtype="float32")
    (kept,) = eng.run([Request("k", PROMPTS[4], 4, [], cache_key="key")])
    for i, p in enumerate(PROMPTS):
        eng.submit(Request(str(i), p, 24, []))
        if i == 1:
            eng.poll()  # two run in the slots the kept cache leaves; the rest queue
    eng.abort()
    assert eng.pending() == 0 and eng.free_slots() == 3 and eng.poll() == []
    assert list(eng.kept) == ["key"]  # kept caches stay usable
    (again,) = eng.run([Request("k2", PROMPTS[4], 4, [], cache_key="key")])
    assert again.cached_tokens == again.prompt_tokens - 1 and again.token_ids == kept.token_ids


def test_load_weights_in_place_releases_kept_caches(tiny_hf, tiny_model_dir):
    tok = make_char_tokenizer()
    other = make_tiny_llama(len(tok), seed=2)
    eng = LocalEngine(tiny_model_dir, max_slots=3, max_len=256, device=DEVICE, dtype="float32")
    eng.run([Request("a", PROMPTS[0], 4, [], cache_key="key")])
    eng.submit(Request("busy", PROMPTS[1], 4, []))
    with pytest.raises(RuntimeError):
        eng.load_weights(other.state_dict())
    eng.abort()
    eng.load_weights(other.state_dict())
    assert not eng.kept
    (b,) = eng.run([Request("b", PROMPTS[0], 12, [], cache_key="key")])
    assert b.cached_tokens == 0 and b.token_ids == hf_greedy(other, tok, PROMPTS[0], 12)
    # reload_weights reads a folder (here: the original weights) through the same path.
    eng.run([Request("c", PROMPTS[0], 4, [], cache_key="key")])
    eng.reload_weights(tiny_model_dir)
    (d,) = eng.run([Request("d", PROMPTS[0], 12, [])])
    assert not eng.kept and d.token_ids == hf_greedy(tiny_hf[0], tok, PROMPTS[0], 12)


def test_reload_weights_is_one_checked_path(tiny_model_dir, tmp_path):
    """A folder whose weights do not fit is refused before anything changes; a good one swaps
    in through the same stage-then-swap path `apr serve` uses."""
    from apr.engine.base import WeightsRefused

    tok = make_char_tokenizer()
    wider = tmp_path / "wider"
    make_tiny_llama(len(tok), head_dim=8).save_pretrained(wider)
    tok.save_pretrained(wider)
    other = tmp_path / "other"
    make_tiny_llama(len(tok), seed=5).save_pretrained(other)
    tok.save_pretrained(other)
    eng = LocalEngine(tiny_model_dir, max_slots=2, max_len=128, device=DEVICE, dtype="float32")
    (before,) = eng.run([Request("a", PROMPTS[0], 12, [], cache_key="key")])
    refusals = {wider: r"different architecture: head_dim 8 \(served 16\)", tmp_path / "none": "no model folder"}
    for folder, piece in refusals.items():
        with pytest.raises(WeightsRefused, match=piece):
            eng.reload_weights(folder)
    (same,) = eng.run([Request("b", PROMPTS[0], 12, [])])
    assert same.token_ids == before.token_ids and list(eng.kept) == ["key"] and eng.model_path == str(tiny_model_dir)
    eng.reload_weights(other)
    (after,) = eng.run([Request("c", PROMPTS[0], 12, [])])
    assert not eng.kept and eng.model_path == str(other)
    assert after.token_ids == hf_greedy(make_tiny_llama(len(tok), seed=5), tok, PROMPTS[0], 12)


@pytest.mark.parametrize("device, piece", [("tpu", "unknown device 'tpu'"), ("meta", "unknown device 'meta'"),
                                           ("cuda:99", "cuda:99")])
def test_a_device_the_machine_lacks_is_a_one_line_error(device, piece):
    from apr.device import resolve_device

    with pytest.raises(UserError, match=piece) as e:
        resolve_device(device)
    assert "\n" not in str(e.value)
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")


def test_scripted_engine_interface_defaults():
    tok = make_char_tokenizer()
    eng = ScriptedEngine(tok, {"ab": "cd"}, max_slots=2)
    with pytest.raises(EngineError, match="cannot reload weights"):
        eng.reload_weights("/nowhere")
    for i in range(3):
        eng.submit(Request(str(i), "ab", 5, []))
    eng.poll()
    eng.abort()
    assert eng.pending() == 0 and eng.free_slots() == 2 and eng.poll() == []
    assert common_prefix_len([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_len([], [1]) == 0
    assert common_prefix_len([1, 2], [1, 2]) == 2


def test_make_engine_from_spec(tiny_model_dir):
    with pytest.raises(UserError, match="give `model`"):
        make_engine(EngineSpec())
    with pytest.raises(UserError, match="not found"):
        make_engine(EngineSpec(model="/nowhere/model"))
    eng = make_engine(EngineSpec(model=str(tiny_model_dir), device=DEVICE, dtype="float32", max_slots=2, context=128))
    with eng:
        assert isinstance(eng, LocalEngine) and eng.max_slots == 2 and eng.max_len == 128
        assert eng.dtype == torch.float32 and eng.model_path == str(tiny_model_dir)
