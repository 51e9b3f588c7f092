"""Which engine to build, as plain settings: the local engine over a model folder, or a
client of an OpenAI-compatible server. Command-line options map onto `EngineSpec`."""

from __future__ import annotations

from dataclasses import dataclass

from apr.engine.base import Engine
from apr.errors import UserError


@dataclass
class EngineSpec:
    model: str | None = None  # model folder (local engine; with server: where the tokenizer is)
    server: str | None = None  # OpenAI-compatible URL
    served_model: str | None = None  # the server's model name (default: the first it lists)
    device: str = "auto"
    dtype: str = "auto"
    max_slots: int = 64
    context: int = 4096  # tokens per sequence (the local engine's max_len)


def make_engine(spec: EngineSpec) -> Engine:
    """The engine the spec names. Errors (missing folder, unreachable server) are one line."""
    if spec.server:
        from apr.engine.openai import OpenAIEngine

        return OpenAIEngine(spec.server, model=spec.served_model, tokenizer=spec.model)
    if not spec.model:
        raise UserError("give `model` (a model folder) or `server` (a URL)", fields=("model", "server"))
    from apr.engine.local import LocalEngine

    return LocalEngine(spec.model, max_slots=spec.max_slots, max_len=spec.context, device=spec.device,
                       dtype=spec.dtype)
