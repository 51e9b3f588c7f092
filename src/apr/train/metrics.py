"""Per-step metrics of a training run: OUT_DIR/metrics.jsonl and, when installed (the `tb`
extra: `pip install 'apr[tb]'`), TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from apr.io import atomic_write

log = logging.getLogger(__name__)
_told_tb_off = False  # the hint is shown once per process


def tensorboard_writer(log_dir: Path):
    """A TensorBoard SummaryWriter for `log_dir`, or None when the optional tensorboard
    package is missing (said once: which extra installs it)."""
    global _told_tb_off
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        if not _told_tb_off:
            _told_tb_off = True
            log.info("TensorBoard logging off: pip install 'apr[tb]'")
        return None
    return SummaryWriter(str(log_dir))


class MetricsLog:
    """Appends one JSON line per logged step; mirrors numeric values to TensorBoard
    (OUT_DIR/tb) when the `tensorboard` package is installed (`pip install 'apr[tb]'`)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None  # made at the first log, by the process that logs

    def log(self, rec: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is None:
            self._tb = tensorboard_writer(self.path.parent / "tb") or False
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
