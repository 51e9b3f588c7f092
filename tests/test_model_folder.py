"""Model presets and the model folder format (HF files + apr.json)."""

import json

import pytest
import torch

from apr.errors import UserError
from apr.model_folder import ModelInfo, count_params, load_model, load_model_info, make_model, save_model
from apr.tokenizer import build_tokenizer


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
    info = ModelInfo(method="sos", preset="tiny", budget_prefix=True, tokenizer="t1", context=512)
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


def test_model_folders_load_in_transformers_4_and_5_conventions(tmp_path):
    """tokenizer_config.json names a class both versions know, returns no token_type_ids,
    and says the trained context; a model card sits beside the weights; files are not 0600."""
    import json

    from transformers import AutoTokenizer

    from apr.model_folder import ModelInfo, save_model
    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    d = save_model(model, tok, ModelInfo(method="sos", preset="test", context=512), tmp_path / "m")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["model_max_length"] == 512
    back = AutoTokenizer.from_pretrained(d)
    assert "token_type_ids" not in back("Moving to Node #0") and back.model_max_length == 512
    assert back("Moving to Node #0")["input_ids"] == tok("Moving to Node #0")["input_ids"]
    assert "SoS+" in (d / "README.md").read_text()
    assert all(p.stat().st_mode & 0o044 for p in d.iterdir()), "files readable by the group and others"


@pytest.mark.parametrize("content,msg", [("[1, 2]", "must be a JSON object"), ('{"method": "xyz"}', "unknown method"),
                                         ("\xff", "unreadable"), ('{"context": -1}', "context must be")])
def test_a_bad_apr_json_is_one_line(tmp_path, content, msg):
    from apr.errors import UserError
    from apr.model_folder import load_model_info

    (tmp_path / "apr.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(UserError, match=msg):
        load_model_info(tmp_path)


@pytest.mark.parametrize("old,want", [({"method": "apr", "sub_call_budget": True}, True),
                                      ({"method": "apr", "sub_call_budget": False}, False),
                                      ({"method": "sos", "token_budget": True}, True),
                                      ({"method": "sos", "sub_call_budget": False, "token_budget": False}, False)])
def test_an_apr_json_written_before_the_rename_still_loads(tmp_path, old, want):
    """apr.json said `sub_call_budget` / `token_budget` (one per method) before `budget_prefix`."""
    (tmp_path / "apr.json").write_text(json.dumps({**old, "child_budget": 4}))
    info = load_model_info(tmp_path)
    assert info.budget_prefix is want and info.child_budget == 4 and info.method == old["method"]
