"""Model presets and the model folder format (HF files + apr.json)."""

import json

import pytest
import torch

from apr.errors import UserError
from apr.model import ModelInfo, count_params, load_model, load_model_info, make_model, save_model
from apr.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("preset,low,high", [("tiny", 1e6, 5e6), ("small", 20e6, 40e6), ("paper", 227.5e6, 228.5e6)])
def test_preset_sizes(tok, preset, low, high):
    with torch.device("meta"):
        model = make_model(preset, tok)
    assert low <= count_params(model) <= high
    assert not model.config.tie_word_embeddings


def test_paper_preset_shape(tok):
    with torch.device("meta"):
        c = make_model("paper", tok).config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (18, 1024, 2752, 16)
    assert c.max_position_embeddings == 4096


def test_save_load_round_trip(tok, tmp_path):
    torch.manual_seed(0)
    model = make_model("tiny", tok)
    info = ModelInfo(method="sos", preset="tiny", token_budget=True, tokenizer="t1", context=512)
    save_model(model, tok, info, tmp_path / "m", max_shard_size="1MB")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "apr.json"} <= files
    assert any(f.endswith(".safetensors") for f in files)
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    loaded, tok2, info2 = load_model(tmp_path / "m")
    assert info2 == info and load_model_info(tmp_path / "m") == info
    x = torch.tensor([tok("Current State: 24:[4, 9, 3]")["input_ids"]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
    assert tok2.decode(x[0], skip_special_tokens=True) == "Current State: 24:[4, 9, 3]"


def test_folder_without_apr_json_is_apr(tmp_path):
    assert load_model_info(tmp_path).method == "apr"


def test_load_model_refuses_non_models(tmp_path):
    with pytest.raises(UserError, match="not a model folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(UserError) as e:
        load_model(tmp_path / "bad")
    assert "\n" not in str(e.value)
