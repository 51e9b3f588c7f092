"""The decode step's per-row tensors (engine/batch.py, engine/finish.py): rows that come and go mid-run,
stop strings screened on tokens, length limits and sampling from slot state give the same
completions as running each request alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from support.models import make_char_tokenizer  # noqa: E402

from apr.engine.base import Request, SamplingParams  # noqa: E402
from apr.engine.finish import FinishTable  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402

TEXTS = ["Current State: 24:[4, 9, 3], Operations: []", "hi", "Moving to Node #0,1\n", "abc" * 12,
         "Exploring Operation: 9-3=6", "7", "Generated Node #0,1: 24:[4, 6]"]


def requests(free_text: list[str]) -> list[Request]:
    out = []
    for i, t in enumerate(TEXTS * 2):
        sp = SamplingParams(temperature=0.0 if i % 3 == 0 else 0.8, top_k=20 if i % 3 == 2 else 0, seed=i)
        stop = [free_text[i % len(free_text)][5:7]] if i % 2 else []  # a stop string the text reaches
        out.append(Request(f"r{i}", t, 8 + 3 * (i % 5), stop, sp))
    return out


def test_rows_coming_and_going_match_requests_alone(tiny_model_dir):
    eng = LocalEngine(tiny_model_dir, max_slots=5, max_len=256, device="cpu", dtype="float32")
    free = [c.text for c in eng.run([Request(f"f{i}", t, 20, []) for i, t in enumerate(TEXTS)])]
    reqs = requests(free)
    alone = {r.id: eng.run([r])[0] for r in reqs}
    # Now together: submitted a few at a time while others decode, one cancelled mid-run,
    # fewer slots than requests (queuing), rows finishing by length, stop string and EOS.
    done = {}
    for k in range(0, len(reqs), 3):
        for r in reqs[k:k + 3]:
            eng.submit(r)
        for _ in range(2):
            for c in eng.poll():
                done[c.id] = c
        if k == 3:
            assert eng.cancel("r4")
    while eng.pending():
        for c in eng.poll():
            done[c.id] = c
    assert set(done) == {r.id for r in reqs} - {"r4"}
    reasons = set()
    for i, c in done.items():
        a = alone[i]
        assert (c.token_ids, c.text, c.finish_reason, c.n_tokens) == (a.token_ids, a.text, a.finish_reason, a.n_tokens), i
        reasons.add(c.finish_reason)
    assert {"length", "stop"} <= reasons


def test_finish_table_flags_tokens_that_may_end_a_stop():
    tok = make_char_tokenizer()
    V = len(tok)
    ft = FinishTable(tok, V + 3, {2}, "cpu")  # the model's vocabulary may be larger than the tokenizer's
    assert ft.group([]) == 0 and ft.group(["ab", ""]) == 1 and ft.group(["ab"]) == 1 and ft.group(["x", "yz"]) == 2
    ids = {c: tok.convert_tokens_to_ids(c) for c in "abxz"}
    row1, row2 = ft.stop[1].tolist(), ft.stop[2].tolist()
    assert row1[ids["b"]] and not row1[ids["a"]] and not row1[ids["z"]]
    assert row2[ids["x"]] and row2[ids["z"]] and not row2[ids["b"]]
    assert not any(row1[i] for i in tok.all_special_ids)  # decoded text skips them
    assert row1[V] and row1[V + 2]  # ids the tokenizer lacks: checked the slow way
    assert ft.eos.nonzero().flatten().tolist() == [2]
    ft.set_eos({5, 7})
    assert ft.eos.nonzero().flatten().tolist() == [5, 7] and ft.eos_ids == {5, 7}
