"""Children that share their parent's KV cache (Request.prefix_key): the common token prefix
is read from the parent's kept slot in place (or copied, share_prefix=False) instead of
prefilled, with the same tokens as prefilling it; the parent's slot stays pinned while
children read it, and a request that would overwrite it gets a copy instead."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402

PARENT = "Current State: 24:[4, 9, 3], Operations: []\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\n"
SUFFIXES = ["Moving to Node #0,1\n", "Moving to Node #0,2\n", "x", "Generated Node #0,1: 24:[4, 6]\n"]


def hf_greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=3)
    return out[0, ids.shape[1]:].tolist()


def engine(path, **kw) -> LocalEngine:
    return LocalEngine(path, max_slots=kw.pop("max_slots", 6), max_len=256, device="cpu", dtype="float32", **kw)


def fork(eng: LocalEngine, n_new: int = 16, sampled: bool = False, **req) -> tuple[str, list]:
    """Run the parent (kept under "p"), then its children together; return the parent's
    context and the children's completions."""
    (p,) = eng.run([Request("parent", PARENT, 12, [], cache_key="p")])
    ctx = PARENT + p.text
    kids = [Request(f"c{i}", ctx + sfx, n_new, [], SamplingParams(0.9 if sampled and i % 2 else 0.0, seed=i), **req)
            for i, sfx in enumerate(SUFFIXES)]
    return ctx, eng.run(kids)


def test_children_read_the_parent_prefix_in_place(tiny_model_dir, tiny_hf):
    model, tok = tiny_hf
    plain = engine(tiny_model_dir)
    ctx, ref = fork(plain, sampled=True)
    eng = engine(tiny_model_dir)
    before = eng.stats["prefill_tokens"]
    ctx2, out = fork(eng, sampled=True, prefix_key="p")
    assert ctx2 == ctx
    assert [c.token_ids for c in out] == [c.token_ids for c in ref]  # sampled rows too
    for c, sfx in zip(out[::2], SUFFIXES[::2]):  # the greedy ones are HF's
        assert c.token_ids == hf_greedy(model, tok, ctx + sfx, 16)
    # The prefix was read in place, not prefilled: only each child's suffix was.
    shared = [c.cached_tokens for c in out]
    assert min(shared) >= len(tok(PARENT)["input_ids"]) and eng.stats["prefix_shared"] == sum(shared)
    assert eng.stats["prefix_copied"] == 0 and eng.stats["cow_copied"] == 0
    kid_prefill = eng.stats["prefill_tokens"] - before - len(tok(PARENT)["input_ids"])
    assert kid_prefill == sum(c.prompt_tokens - c.cached_tokens for c in out)
    # Nothing reads the parent any more; its cache is still kept.
    assert not eng.scheduler.pinned and "p" in eng.kept


def test_copying_the_prefix_gives_the_same_tokens(tiny_model_dir):
    _, ref = fork(engine(tiny_model_dir), sampled=True)
    eng = engine(tiny_model_dir, share_prefix=False)
    _, out = fork(eng, sampled=True, prefix_key="p")
    assert [c.token_ids for c in out] == [c.token_ids for c in ref]
    assert eng.stats["prefix_shared"] == 0 and eng.stats["prefix_copied"] == sum(c.cached_tokens for c in out) > 0


def test_decode_without_spans_gathers_the_prefix(tiny_model_dir):
    _, ref = fork(engine(tiny_model_dir))
    eng = engine(tiny_model_dir)
    eng.runner.spans = False
    _, out = fork(eng, prefix_key="p")
    assert [c.token_ids for c in out] == [c.token_ids for c in ref] and eng.stats["prefix_shared"] > 0


def test_pinned_parent_is_copied_on_write_not_overwritten(tiny_model_dir, tiny_hf):
    model, tok = tiny_hf
    eng = engine(tiny_model_dir, max_slots=4)
    (p,) = eng.run([Request("parent", PARENT, 12, [], cache_key="p")])
    ctx = PARENT + p.text
    kids = [Request(f"c{i}", ctx + s, 20, [], prefix_key="p") for i, s in enumerate(SUFFIXES[:2])]
    for r in kids:
        eng.submit(r)
    eng.poll()
    assert eng.scheduler.pinned  # the parent's slot is read
    # The parent resumes with a context that parts early: rolling back in place would
    # overwrite what the children read, so it gets a fresh slot with its prefix copied.
    resumed = PARENT[:20] + "Moving to Node #7\n"
    eng.submit(Request("again", resumed, 10, [], cache_key="p"))
    # Two more requests want slots: 4 slots = 2 children + the pinned parent + 1.
    eng.submit(Request("other", "hi", 5, []))
    done = {}
    while eng.pending():
        for c in eng.poll():
            done[c.id] = c
    assert eng.stats["cow_copied"] == done["again"].cached_tokens == len(tok(PARENT[:20])["input_ids"])
    assert done["again"].token_ids == hf_greedy(model, tok, resumed, 10)
    for r in kids:
        assert done[r.id].token_ids == hf_greedy(model, tok, r.prompt, 20)
    assert done["other"].token_ids == hf_greedy(model, tok, "hi", 5)
    assert not eng.scheduler.pinned and not any(eng.scheduler.readers)


def test_kept_child_and_grandchild_keep_reading_the_root(tiny_model_dir, tiny_hf):
    model, tok = tiny_hf
    eng = engine(tiny_model_dir)
    ctx, (kid,) = fork_one(eng)
    assert eng.scheduler.slot_prefix[eng.kept["k"]][0] == eng.kept["p"]  # the kept child still reads
    # The child resumes on its own kept cache (its prefix still read from the root) ...
    again = ctx + SUFFIXES[0] + kid.text + "\nMoving to Node #0,1,0\n"
    (a,) = eng.run([Request("k2", again, 10, [], cache_key="k")])
    assert a.cached_tokens > len(tok(ctx + SUFFIXES[0])["input_ids"]) and a.token_ids == hf_greedy(model, tok, again, 10)
    # ... and a grandchild forked from the kept child shares only the root's part.
    assert eng.scheduler.slot_prefix[eng.kept["k"]] == (eng.kept["p"], kid.cached_tokens)
    g_prompt = again + a.text + "x"
    (g,) = eng.run([Request("g", g_prompt, 10, [], prefix_key="k")])
    assert g.cached_tokens == kid.cached_tokens and g.token_ids == hf_greedy(model, tok, g_prompt, 10)
    eng.release("k")
    eng.release("p")
    assert not eng.kept and not eng.scheduler.pinned


def fork_one(eng):
    (p,) = eng.run([Request("parent", PARENT, 12, [], cache_key="p")])
    ctx = PARENT + p.text
    return ctx, eng.run([Request("kid", ctx + SUFFIXES[0], 12, [], cache_key="k", prefix_key="p")])


def test_cancel_abort_and_unknown_keys_leave_no_readers(tiny_model_dir, tiny_hf):
    model, tok = tiny_hf
    eng = engine(tiny_model_dir)
    (p,) = eng.run([Request("parent", PARENT, 12, [], cache_key="p")])
    ctx = PARENT + p.text
    for i, s in enumerate(SUFFIXES):
        eng.submit(Request(f"c{i}", ctx + s, 30, [], prefix_key="p"))
    eng.poll()
    assert eng.cancel("c1") and len(eng.scheduler.readers[eng.kept["p"]]) == 3
    eng.abort()
    assert not eng.scheduler.pinned and not any(eng.scheduler.readers)
    # An unknown prefix_key (or one released) prefills everything, as without it.
    eng.release("p")
    (c,) = eng.run([Request("late", ctx + "x", 6, [], prefix_key="p")])
    assert c.cached_tokens == 0 and c.token_ids == hf_greedy(model, tok, ctx + "x", 6)
