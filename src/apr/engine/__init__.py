"""Inference engines: a local PyTorch engine with continuous batching and an HTTP client
for OpenAI-compatible servers (vLLM, SGLang, `apr serve`). Both implement `Engine`;
`make_engine(EngineSpec(...))` builds the one a set of options names.

Heavy modules (torch) load lazily: `from apr.engine import LocalEngine` imports them.
"""

from apr.engine.base import Completion, Engine, EngineError, Request, SamplingParams
from apr.engine.spec import EngineSpec, make_engine

__all__ = ["Completion", "Engine", "EngineError", "EngineSpec", "Request", "SamplingParams", "make_engine",
           "LocalEngine", "OpenAIEngine"]


def __getattr__(name: str):
    if name == "LocalEngine":
        from apr.engine.local import LocalEngine

        return LocalEngine
    if name == "OpenAIEngine":
        from apr.engine.openai import OpenAIEngine

        return OpenAIEngine
    raise AttributeError(name)
