"""Per-step metrics of a training run: OUT_DIR/metrics.jsonl and, when installed, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from apr.io import atomic_write


class MetricsLog:
    """Appends one JSON line per logged step; mirrors numeric values to TensorBoard
    (OUT_DIR/tb) when the `tensorboard` package is installed."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None  # made at the first log, by the process that logs

    def log(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

                self._tb = SummaryWriter(str(self.path.parent / "tb"))
            except ImportError:
                self._tb = False
        if self._tb:
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, rec.get("step", 0))
            self._tb.flush()

    def trim(self, step: int) -> None:
        """Keep only lines up to `step` (a resumed run logs the later ones again); a run
        starting at step 0 starts a fresh log."""
        if not self.path.exists():
            return
        lines = [] if step == 0 else self.path.read_text().splitlines()
        keep = [line for line in lines if line and json.loads(line).get("step", 0) <= step]
        with atomic_write(self.path) as f:
            f.write("".join(line + "\n" for line in keep))
