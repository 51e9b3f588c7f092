"""What every handler thread shares (`App`): the engine worker, the settings, the API key,
and weight reload, which only forwards to the engine: the folder must lie inside the reload
root (the server's own rule), the engine stages and checks the weights off its thread while
the old ones serve, then swaps them in between two engine steps."""

from __future__ import annotations

import hmac
import itertools
import threading
from pathlib import Path

from apr.engine.base import SwapFailed, WeightsRefused
from apr.serve.config import ServeConfig
from apr.serve.worker import EngineWorker


class ReloadError(Exception):
    """A weight reload refused, with the HTTP status to answer."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def reload_folder(root: Path, model_path: str) -> Path:
    """The folder `model_path` names, if it is a local folder inside `root` (resolved, so a
    symlink cannot lead out). Paths outside the root get one answer whether or not they
    exist; a bare name is a folder under the root, never a model-hub name."""
    outside = ReloadError(f"model_path {model_path!r} is not inside the reload root", 403)
    p = Path(model_path)
    if not p.is_absolute():
        p = root / p
    try:
        real = p.resolve()
    except (OSError, RuntimeError, ValueError):
        raise outside from None
    if not real.is_relative_to(root):
        raise outside
    if not real.is_dir():
        raise ReloadError(f"model_path {model_path!r}: no folder there (inside the reload root)")
    for entry in real.iterdir():  # the loader reads these: none may lead out of the root
        if not entry.resolve().is_relative_to(root):
            raise ReloadError(f"model_path {model_path!r}: {entry.name} links outside the reload root", 403)
    if not (real / "config.json").is_file():
        raise ReloadError(f"model_path {model_path!r}: not a model folder (no config.json)")
    return real


class App:
    """What every handler thread shares: the worker, the settings, counters and locks."""

    def __init__(self, worker: EngineWorker, cfg: ServeConfig):
        self.worker, self.cfg = worker, cfg
        eng = worker.engine
        self.tokenizer = eng.tokenizer
        self.context = min(cfg.context, eng.max_len) if eng.max_len is not None else cfg.context
        self.vocab_size = eng.vocab_size
        self.arithmetic_modes = eng.arithmetic_modes  # what a request's `arithmetic` may ask for
        self.key = cfg.api_key.encode() if cfg.api_key else None
        self.root = Path(cfg.reload_root).resolve() if cfg.reload_root is not None else None
        self.places = threading.BoundedSemaphore(cfg.max_concurrency)
        self.reload_lock = threading.Lock()
        self.ids = itertools.count()

    def authorized(self, header: str | None) -> bool:
        if self.key is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.key)
        return ok and scheme.lower() == "bearer"

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "apr", "root": self.cfg.model_name,
                                            "max_model_len": self.context}]}

    def reload(self, model_path: str) -> str:
        """Swap in the weights of a folder inside the reload root; ReloadError says why not."""
        assert self.root is not None
        folder = reload_folder(self.root, model_path)
        with self.reload_lock:  # one at a time; inference goes on while the new weights load
            try:
                staged = self.worker.engine.stage_weights(folder)  # on this thread: the engine serves on
                self.worker.call(lambda e: e.swap_weights(staged))
            except WeightsRefused as e:
                raise ReloadError(str(e)) from None
            except SwapFailed as e:
                raise ReloadError(str(e), 500) from None
        return f"loaded weights from {model_path}"
