"""Fixtures for the engine tests: a tiny random Llama and a character-level tokenizer,
saved as a Hugging Face model folder. Import the fixtures from the test modules."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matmuls: OpenMP threads only add contention on a shared 2-core machine (import
    it into a test module: autouse there)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


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
