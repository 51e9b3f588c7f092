"""The server's settings (`ServeConfig`, request `Limits`) and the window it serves a model
folder with (`serving_window`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apr.errors import UserError

DEFAULT_CONTEXT = 4096  # the window when none is asked for of a folder without apr.json (capped at its positions)


@dataclass(frozen=True)
class Limits:
    """Sizes one request may have (bigger ones are refused with 400 or 413)."""

    max_body_bytes: int = 8 << 20
    max_prompts: int = 256  # prompts in one request
    max_n: int = 16  # samples per prompt
    max_choices: int = 256  # prompts x n
    max_stop: int = 16  # stop strings
    max_stop_chars: int = 256  # characters per stop string
    max_cache_key_chars: int = 256
    max_path_chars: int = 4096  # model_path of a weight reload


@dataclass(frozen=True)
class ServeConfig:
    """What `start_server` serves and how. Numbers come checked (the command's option types);
    the two settings that guard access are checked here, whoever builds the config."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    model_name: str = "apr"  # the name clients ask for (`model`); others get 404
    # The window requests are checked against and /v1/models reports (`serving_window`);
    # start_server also caps it at the engine's own (the local engine's KV-cache length).
    context: int = DEFAULT_CONTEXT
    api_key: str | None = None  # None: no authentication
    reload_root: str | Path | None = None  # None: /update_weights_from_disk is off
    access_log: bool = True  # one line per request on the `apr.serve.access` logger
    backlog: int = 2048  # listen backlog (the kernel caps it at net.core.somaxconn)
    max_concurrency: int = 1024  # completion requests handled at once; more wait for a place
    queue_timeout: float = 60.0  # seconds a request waits for a place before a 503
    idle_timeout: float = 120.0  # seconds an idle keep-alive connection stays open
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():  # an empty key would let anyone in
            raise UserError("the API key (--api-key, APR_API_KEY) is empty")
        if self.reload_root is not None and not Path(self.reload_root).is_dir():
            raise UserError("the weight-reload root (--allow-reload) is not a folder", str(self.reload_root))


def serving_window(model_dir: str | Path, asked: int | None = None) -> int:
    """The window to serve a model folder with, read before anything loads: `asked`, by default
    the window the model is evaluated at (apr.json `eval_context`, else its training `context`;
    a folder without apr.json: 4096), capped at what apr.json vouches for (the larger of the
    two) and at the model's positions. A window asked past the model's position limit
    (config.json `max_position_embeddings`) is a UserError: the model has no positions there,
    and a KV cache that long may not even fit in memory."""
    from apr.model_folder import load_model_info, position_limit
    from apr.runtime_config import default_context

    model_dir = Path(model_dir)
    limit = position_limit(model_dir)
    if asked is not None and limit is not None and asked > limit:
        raise UserError(f"--context {asked} is more than the model's {limit} positions (max_position_embeddings)",
                        str(model_dir / "config.json"))
    if (model_dir / "apr.json").is_file():
        info = load_model_info(model_dir)
        default, vouched = default_context(info), max(info.context, info.eval_context or 0)
    else:
        default, vouched = DEFAULT_CONTEXT, limit
    wanted = default if asked is None else asked
    return min(wanted, vouched or wanted, limit or wanted)
