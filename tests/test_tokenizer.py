"""The trace tokenizer: exact round trips, one token per digit and per fixed phrase."""

import json

import pytest

from apr import protocol
from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.search import AprConfig, SosConfig
from apr.tokenizer import PHRASES, TOKENIZERS, build_tokenizer, load_tokenizer, tokenizer_fingerprint

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
def traces():
    """Real solver traces: every training string of APR and SoS+ demonstrations."""
    out = []
    for i, p in enumerate(generate(60, seed=7)):
        for cfg in (AprConfig(budget_prefix=i % 2 == 0), SosConfig()):
            rec = demonstration(p, i, 0, cfg)
            out.append(rec["search_path"])
            out.extend(s.text for s in protocol.thread_from_record(rec).training_strings())
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


# ---------------------------------------------------------------- number tokenizers (issue 17)

NUMBER_TOKENIZERS = [n for n in TOKENIZERS if n != "apr"]


@pytest.mark.parametrize("name", NUMBER_TOKENIZERS)
def test_number_tokenizers_round_trip(name, traces):
    tok = build_tokenizer(name)
    for text in [FORMATS_TEXT, *traces, "0 00 007 1005 970299 12345678901234567890\n"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("name,width", [("apr-num99", 2), ("apr-num999", 3)])
def test_numbers_are_right_aligned_chunks(name, width):
    tok = build_tokenizer(name)
    assert tok.tokenize("=6264,") == ["=", "62", "64", ","] if width == 2 else ["=", "6", "264", ","]
    assert tok.tokenize("970299") == (["97", "02", "99"] if width == 2 else ["970", "299"])
    assert tok.tokenize("1005") == (["10", "05"] if width == 2 else ["1", "005"])
    for n in (0, 7, 10**width - 1):  # every number below 10^width is one token
        assert tok.tokenize(str(n)) == [str(n)]
    assert tok.unk_token_id not in tok("9" * 50 + " 05 005", add_special_tokens=False)["input_ids"]
    # The fixed phrases still win over digit chunks and characters.
    assert tok.tokenize("Moving to Node #0,12\n") == ["Moving to Node #", "0", ",", "12", "\n"]


def test_number_tokenizers_have_their_own_fingerprints():
    prints = {n: tokenizer_fingerprint(build_tokenizer(n)) for n in TOKENIZERS}
    assert len(set(prints.values())) == len(TOKENIZERS)
    # The digit tokenizer is unchanged: committed model folders name this fingerprint.
    assert prints["apr"] == "vocab129-678f66695f34b7f2"
    assert load_tokenizer("apr-num99").get_vocab() == build_tokenizer("apr-num99").get_vocab()


def test_unknown_tokenizer_name_is_one_line_error():
    from apr.errors import UserError

    with pytest.raises(UserError, match="unknown tokenizer"):
        build_tokenizer("apr-num9")


@pytest.mark.parametrize("name", NUMBER_TOKENIZERS)
def test_number_tokenizer_model_folder_loads_with_same_ids(name, tmp_path, traces):
    """A model folder written with a number tokenizer loads through AutoTokenizer (what
    transformers, vLLM and SGLang use) and encodes every trace to the same ids."""
    from transformers import AutoTokenizer

    from apr.model_folder import ModelInfo, make_model, save_model

    tok = build_tokenizer(name)
    info = ModelInfo(method="sos", preset="cpu-mini", tokenizer=tokenizer_fingerprint(tok), tokenizer_name=name)
    save_model(make_model("cpu-mini", tok), tok, info, tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer_fingerprint(auto) == tokenizer_fingerprint(tok)
    for text in traces[:40]:
        assert auto(text)["input_ids"] == tok(text)["input_ids"]
    saved = json.loads((tmp_path / "apr.json").read_text())
    assert saved["tokenizer_name"] == name and saved["tokenizer"] == tokenizer_fingerprint(tok)
