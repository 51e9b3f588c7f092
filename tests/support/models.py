"""Tiny model folders for tests: a random Llama with a character-level tokenizer (the engine
and server tests), or with our trace tokenizer and apr.json (what the runtime, `apr run` and
`apr eval` load). The session's shared folder is the `tiny_model_dir` fixture (conftest.py)."""

from __future__ import annotations

import string
from pathlib import Path

CHARS = list(string.digits + string.ascii_letters + string.punctuation + " \n")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def make_char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def make_tiny_llama(vocab_size: int, seed: int = 0, tie: bool = False, **kw):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=tie,
        initializer_range=0.3, rope_parameters={"rope_theta": 5000.0, "rope_type": "default"}, **kw)
    return LlamaForCausalLM(cfg).eval()


def save_model_dir(path: Path, seed: int = 0, tie: bool = False) -> Path:
    tok = make_char_tokenizer()
    model = make_tiny_llama(len(tok), seed=seed, tie=tie)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_apr_model_dir(path: Path, method: str = "apr") -> Path:
    """A tiny random Llama with our trace tokenizer and apr.json, as the runtime, `apr run`
    and `apr eval` load it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from apr.model_folder import ModelInfo, save_model
    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_model(LlamaForCausalLM(cfg), tok, ModelInfo(method=method, preset="test"), path)
    return path


def tiny_model(tok, seed=0):
    """A one-layer random Llama for `tok` (RL loss and GRPO tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg)
