"""Demonstrations -> token sequences, loss masks and packed rows."""

import json

import numpy as np
import pytest
import torch

from apr import protocol
from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.errors import UserError
from apr.model_folder import make_model
from apr.search import AprConfig, SosConfig
from apr.train import packing

SMALL = TaskConfig(num_count=3, num_max=20, target_min=10, target_max=30)


def records(n=12, cfg=None, task=SMALL, seed=3):
    cfg = cfg or AprConfig()
    return [("demo.jsonl", i + 1, demonstration(p, i, 0, cfg)) for i, p in enumerate(generate(n, seed=seed, task=task))]


def test_masks_cover_exactly_the_inserted_text(tok):
    demos = packing.demonstrations(records(20), tok, budget_prefix=False)
    joined = [s for d in demos for s in d.strings if s.inserted]
    assert joined, "expected some parent-after-join segments"
    for s in joined:
        ids, trained = packing.encode(s, tok)
        enc = tok(s.text, add_special_tokens=False, return_offsets_mapping=True)
        inside = np.zeros(len(s.text), bool)
        for a, b in s.inserted:
            inside[a:b] = True
        masked_chars = np.zeros(len(s.text), bool)
        for (a, b), t in zip(enc["offset_mapping"], trained[1:-1]):
            if not t:
                masked_chars[a:b] = True
        assert (masked_chars == inside).all()  # char-level tokenizer: exact
        assert trained[0] is False and trained[-1] is True
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        _, all_trained = packing.encode(s, tok, train_on_inserted=True)
        assert all(all_trained[1:])


def test_pack_no_leaks_and_same_logits_as_separate_documents(tok):
    torch.manual_seed(0)
    docs = [([tok.bos_token_id] + list(np.random.randint(4, 100, n)) + [tok.eos_token_id], [False] + [True] * (n + 1)) for n in (30, 50, 20, 70)]
    packed = packing.pack(docs, 128, tok.pad_token_id)
    assert packed.input_ids.shape[1] == 128
    assert sum(len(d[0]) for d in docs) == (packed.input_ids != tok.pad_token_id).sum()
    # a target never is a BOS (no loss across documents) and positions restart per document
    assert not (packed.targets == tok.bos_token_id).any()
    real = packed.input_ids != tok.pad_token_id
    assert ((packed.position_ids == 0) == (packed.input_ids == tok.bos_token_id))[real].all()
    model = make_model("tiny", tok).eval()
    with torch.no_grad():
        ids, pos = torch.from_numpy(packed.input_ids).long(), torch.from_numpy(packed.position_ids).long()
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        for r in range(len(packed)):
            starts = np.flatnonzero(packed.input_ids[r] == tok.bos_token_id)
            for s in starts:
                n = int(np.argmax(packed.input_ids[r, s:] == tok.eos_token_id)) + 1
                alone = model(input_ids=ids[r : r + 1, s : s + n]).logits
                torch.testing.assert_close(logits[r : r + 1, s : s + n], alone, atol=1e-4, rtol=1e-4)


def test_long_documents_dropped_and_counted(tok):
    demos = packing.demonstrations(records(6), tok, budget_prefix=False)
    stats = packing.DataStats()
    lengths = [len(packing.encode(s, tok)[0]) for d in demos for s in d.strings]
    context = sorted(lengths)[len(lengths) // 2]
    packing.build_packed(demos, tok, context, False, stats)
    assert stats.dropped_long == sum(n > context for n in lengths)
    assert stats.documents == sum(n <= context for n in lengths)


def test_token_budget_prefix(tok):
    recs = records(4, SosConfig())
    demos = packing.demonstrations(recs, tok, budget_prefix=True)
    for (_, _, r), d in zip(recs, demos):
        (s,) = d.strings
        n = len(tok(r["search_path"], add_special_tokens=False)["input_ids"])
        budget = min(4096, -(-n // 512) * 512)
        assert s.text == f"Token Budget: {budget} " + r["search_path"]
    assert packing.token_budget(1) == 512 and packing.token_budget(513) == 1024 and packing.token_budget(10**6) == 4096


def test_child_budget_prefix(tok):
    recs = records(6)
    for (_, _, r), d in zip(recs, packing.demonstrations(recs, tok, budget_prefix=True)):
        n = protocol.thread_from_record(r).count_descendants()
        roots = [s for s in d.strings if s.text.startswith("Sub Call Budget:")]
        assert roots and all(s.text.startswith(f"Sub Call Budget: {n} Moving to Node #0\n") for s in roots)
        assert len(d.strings) - len(roots) == n


def test_overlap_with_evaluation_problems_refused(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"nums": [3, 1, 2], "target": 12}) + "\n")
    recs = [("d.jsonl", 1, {"nums": [5, 6, 7], "target": 18}), ("d.jsonl", 2, {"nums": [2, 3, 1], "target": 12})]
    with pytest.raises(UserError, match=r"d.jsonl:2: 1 training problem"):
        packing.check_no_overlap(recs, val)
    packing.check_no_overlap(recs[:1], val)


def test_bad_dataset_line_names_file_and_line(tmp_path):
    bad = tmp_path / "demo.jsonl"
    good = json.dumps({"nums": [1, 2], "target": 3, "search_path": "Current State: 3:[1, 2], Operations: []\n"})
    bad.write_text(good + "\n" + '{"nums": [1, 2], "target": 3}\n')
    with pytest.raises(UserError, match=r"demo.jsonl:2: record has neither"):
        packing.read_demonstrations(bad)
    bad.write_text(good + "\n\n{not json\n")
    with pytest.raises(UserError, match=r"demo.jsonl:3: invalid JSON"):
        packing.read_demonstrations(bad)
    bad.write_text(good + "\n" + json.dumps({"nums": [1], "target": 1, "trace_dict": {"main_calls": []}}) + "\n")
    with pytest.raises(UserError, match=r"demo.jsonl:2: `nums` must hold 2..6 numbers"):
        packing.read_demonstrations(bad)
    bad.write_text(good + "\n" + json.dumps({"nums": [1, 2], "target": 3, "trace_dict": {"main_calls": []}}) + "\n")
    with pytest.raises(UserError, match=r"demo.jsonl:2: bad trace"):
        packing.demonstrations(list(packing.read_demonstrations(bad)), None, budget_prefix=False)


def test_batched_encoding_equals_one_string_at_a_time(tok):
    demos = packing.demonstrations(records(8), tok, budget_prefix=True)
    strings = [s for d in demos for s in d.strings]
    assert any(s.inserted for s in strings)
    for train_on_inserted in (False, True):
        fast = packing.encode_many(strings, tok, train_on_inserted)
        slow = packing.encode_many(strings, tok, train_on_inserted, batched=False)
        assert len(fast) == len(slow) == len(strings)
        for (a, m), (b, n) in zip(fast, slow):
            assert a.tolist() == b.tolist() and m.tolist() == n.tolist()
