"""Which engine to build, as plain settings: the local engine over a model folder, or a
client of an OpenAI-compatible server. Command-line options map onto `EngineSpec`."""

from __future__ import annotations

import dataclasses
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
    # Tokens per sequence (the local engine's max_len); None: the model's default window
    # (apr.runtime_config.default_context), the one an unset RuntimeConfig.context resolves to.
    context: int | None = None

    def for_window(self, context: int) -> "EngineSpec":
        """This spec with the run's window (a resolved `RuntimeConfig.context`) when it sets none."""
        return self if self.context is not None else dataclasses.replace(self, context=context)


def make_engine(spec: EngineSpec) -> Engine:
    """The engine the spec names. Errors (missing folder, unreachable server) are one line."""
    if spec.server:
        from apr.engine.openai import OpenAIEngine

        return OpenAIEngine(spec.server, model=spec.served_model, tokenizer=spec.model)
    if not spec.model:
        raise UserError("give `model` (a model folder) or `server` (a URL)", fields=("model", "server"))
    from apr.engine.local import LocalEngine
    from apr.model_folder import load_model_info
    from apr.runtime_config import default_context

    context = spec.context if spec.context is not None else default_context(load_model_info(spec.model))
    return LocalEngine(spec.model, max_slots=spec.max_slots, max_len=context, device=spec.device,
                       dtype=spec.dtype)
