"""Decode attention by spans (engine/attention.py: plan_spans, attend_spans): each span of
rows reads the cache only up to its own longest row, with the same logits and tokens as
reading every row up to the batch's longest."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.models import make_char_tokenizer, make_tiny_llama  # noqa: E402

from apr.engine.base import Request  # noqa: E402
from apr.engine.llama import Transformer  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.attention import plan_spans  # noqa: E402

TEXTS = ["Current State: 24:[4, 9, 3], Operations: []", "hi", "Moving to Node #0,1\n", "abc" * 12,
         "Exploring Operation: 9-3=6", "7", "Moving to Node #0,1\n"]


def test_plan_spans_cuts_at_gaps_and_waste():
    slots, lens = [0, 1, 2, 4, 5, 6], [10, 10, 9, 30, 30, 5]
    # Cost 0: rows of equal length in consecutive slots share a span; nothing else does.
    sp = plan_spans(slots, lens, 0)
    assert [(s.lo, s.hi, s.slot, s.t, s.ragged) for s in sp] == [
        (0, 2, 0, 10, False), (2, 3, 2, 9, False), (3, 5, 4, 30, False), (5, 6, 6, 5, False)]
    assert sum((s.hi - s.lo) * s.t for s in sp) == sum(lens)  # reads exactly the rows' lengths
    # A large cost: one span, as long as its longest row, reading the idle slot 3 too.
    sp = plan_spans(slots, lens, 10 ** 6)
    assert [(s.lo, s.hi, s.slot, s.t, s.ragged) for s in sp] == [(0, 6, 0, 30, True)]
    assert sp[0].qidx.tolist() == [0, 1, 2, 6, 3, 4, 5] and sp[0].keep.tolist() == [0, 1, 2, 4, 5, 6]
    # Rows with different shared prefixes never share a span.
    pre = [(-1, 0)] * 3 + [(9, 4)] * 3
    assert [(s.lo, s.hi, s.p_slot, s.p_len) for s in plan_spans(slots, lens, 10 ** 6, pre)] == [(0, 3, -1, 0), (3, 6, 9, 4)]
    # In between: the row of length 5 would waste 25 positions beside the two of 30.
    sp = plan_spans(slots, lens, 20)
    assert [(s.lo, s.hi, s.t) for s in sp] == [(0, 3, 10), (3, 5, 30), (5, 6, 5)]


@pytest.mark.parametrize("cost", [0, 3, 10 ** 6])
def test_span_decode_matches_padded_decode(cost):
    tok = make_char_tokenizer()
    m = Transformer.from_hf(make_tiny_llama(len(tok), seed=3))
    m.setup_cache(8, 64)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    slots = [0, 1, 2, 4, 5, 6, 7]  # a gap at slot 3
    S = max(map(len, ids))
    toks = torch.zeros(len(ids), S, dtype=torch.long)
    for i, x in enumerate(ids):
        toks[i, :len(x)] = torch.tensor(x)
    lens = torch.tensor([len(x) for x in ids])
    with torch.no_grad():
        m(toks, torch.tensor(slots), torch.zeros(len(ids), dtype=torch.long), lens, S)
        # Poison every cell past each row's length (the new token's cell is written first):
        # a span that read past its rows' lengths would give NaN.
        if cost == 0:
            for kc in m.k_cache + m.v_cache:
                for s, n in zip(slots, lens.tolist()):
                    kc[s, :, n + 1:] = float("nan")
        nxt = torch.tensor([[5], [6], [7], [8], [9], [10], [11]])
        one = torch.ones(len(ids), dtype=torch.long)
        spans = plan_spans(slots, [n + 1 for n in lens.tolist()], cost)
        got = m(nxt, torch.tensor(slots), lens, one, int(lens.max()) + 1, spans=spans)
        if cost == 0:
            for kc in m.k_cache + m.v_cache:
                kc.nan_to_num_(0.0)
        ref = m(nxt, torch.tensor(slots), lens, one, int(lens.max()) + 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_spans_on_and_off_give_the_same_tokens(tiny_model_dir):
    outs = []
    for spans in (False, True):
        eng = LocalEngine(tiny_model_dir, max_slots=4, max_len=256, device="cpu", dtype="float32")
        eng.runner.spans = spans
        outs.append([c.token_ids for c in eng.run([Request(str(i), t, 30, []) for i, t in enumerate(TEXTS)])])
    assert outs[0] == outs[1]
