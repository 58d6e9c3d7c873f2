"""SIGTERM and SIGINT during a run: recorded, acted on at the next step boundary (a checkpoint, then
:class:`Interrupted`), and restored afterwards."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from didr.errors import DidrError


class Interrupted(DidrError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, saved: Path | None):
        self.signum, self.step, self.saved = signum, step, saved
        where = f"checkpoint saved to {saved}; continue with --resume" if saved else "no output directory, nothing saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {where}")


class StopSignals:
    """Within the block, SIGTERM and SIGINT are recorded instead of killing the process; the loop
    checks ``signum`` at each step boundary. A second signal acts as usual."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
