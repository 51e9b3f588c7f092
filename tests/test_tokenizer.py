"""The trace tokenizer: exact round trips, one token per digit and per fixed phrase."""

import json

import pytest

from apr import protocol
from apr.countdown import TaskConfig, generate
from apr.data import demonstration
from apr.search import AprConfig, SosConfig
from apr.tokenizer import PHRASES, build_tokenizer, load_tokenizer, tokenizer_fingerprint

FORMATS_TEXT = """Sub Call Budget: 2 Moving to Node #0
Current State: 24:[4, 9, 3], Operations: []
Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]
Generated Node #0,1: 24:[4, 6] Operation: 9-3=6
24,24 equal: Goal Reached
8,24 unequal: No Solution
<Calling Sub Searches>
<Start Sub Search 0 at level 1> Moving to Node #0,0
<End Calling Sub Searches>
<Sub Searches>
<No Solution in Sub Search 0 at level 1 at Node #0,0>
<Goal Reached in Sub Search 1 at level 1 at Node #0,1>
Current State: 24:[4, 6], Operations: ['9-3=6', '4*6=24']
<End Sub Searches>
Start Sub Search at level 1: Moving to Node #0,1
Exit Sub Search at level 1
No solution found in sub search
Token Budget: 512 No solution found.
"""


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def traces():
    """Real solver traces: every training string of APR and SoS+ demonstrations."""
    out = []
    for i, p in enumerate(generate(60, seed=7)):
        for cfg in (AprConfig(budget_prefix=i % 2 == 0), SosConfig()):
            rec = demonstration(p, i, 0, cfg)
            out.append(rec["search_path"])
            out.extend(s.text for s in protocol.training_strings(protocol.thread_from_record(rec)))
    return out


def test_round_trip_formats_text(tok):
    ids = tok(FORMATS_TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == FORMATS_TEXT


def test_round_trip_real_traces(tok, traces):
    assert len(traces) > 200
    for ids, text in zip(tok(traces, add_special_tokens=False)["input_ids"], traces):
        assert tok.decode(ids) == text


def test_digits_and_phrases_are_single_tokens(tok):
    for d in "0123456789":
        assert len(tok(d, add_special_tokens=False)["input_ids"]) == 1
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]
    for p in PHRASES + ["\n", " ", "[", "]", "'", ",", "+", "-", "*", "/", "=", ":", "#", "<", ">"]:
        assert len(tok(p, add_special_tokens=False)["input_ids"]) == 1, p


def test_special_tokens_and_bos(tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    ids = tok("Current State: 1:[1]")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "Current State: 1:[1]"


def test_saved_tokenizer_loads_with_autotokenizer(tok, tmp_path, traces):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["decoder"]["type"] == "Fuse"
    auto = AutoTokenizer.from_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    for t in (auto, again):
        assert t.decode(t(traces[0], add_special_tokens=False)["input_ids"]) == traces[0]
        assert t.pad_token_id == tok.pad_token_id
    assert tokenizer_fingerprint(auto) == tokenizer_fingerprint(tok)


def test_load_tokenizer_missing_folder(tmp_path):
    from apr.errors import UserError

    with pytest.raises(UserError):
        load_tokenizer(tmp_path / "nope")
