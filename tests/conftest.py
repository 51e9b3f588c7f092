"""Fixtures shared by the whole suite. Helpers that take arguments are functions in
tests/support/ (importable as `support`, pyproject's pytest `pythonpath`): tiny model folders
(support.models), solver traces and their scripted replay (support.traces), a live `apr
serve` (support.servers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.models import save_model_dir


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls: OpenMP threads only add contention on a shared 2-core machine. Folders of
    such tests use it for every module (their conftest.py); a module alone asks for it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a character tokenizer, saved once for the session."""
    return save_model_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_hf(tiny_model_dir):
    """The tiny model and its tokenizer as Hugging Face loads them (the reference forward)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def tok():
    """The trace tokenizer (apr.tokenizer), one per test module."""
    from apr.tokenizer import build_tokenizer

    return build_tokenizer()
