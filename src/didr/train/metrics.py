"""A run's metrics: JSON lines in ``OUT/metrics.jsonl``, and TensorBoard scalars when it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Metrics as JSON lines (and TensorBoard scalars when it is installed)."""

    def __init__(self, out_dir: Path | None, tensorboard: bool = True):
        self.file = None
        self.tb = None
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    @staticmethod
    def truncate(out_dir: Path, step: int) -> None:
        """Drop the records after ``step``: a resumed run writes them again."""
        path = out_dir / "metrics.jsonl"
        if path.is_file():
            keep = [line for line in path.read_text().splitlines() if _record_step(line) <= step]
            path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, logs: dict[str, float]) -> None:
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **logs}) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in logs.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # an unreadable (half-written) line goes
