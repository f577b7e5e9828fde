"""Graceful stop on SIGTERM, the signal a spot-capacity reclaim or `kill` sends.

The handler only sets a flag. The training loop checks it after every batch, saves a
checkpoint at that point and raises `TrainingInterrupted`, which the CLI turns into
exit status 143 (128 + SIGTERM). Rerunning the same command resumes from that batch.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

EXIT_STATUS = 128 + signal.SIGTERM


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""


class GracefulStop:
    """A flag set by SIGTERM; `install` is a no-op outside the main thread."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signal_number: int, frame) -> None:
        self.signal_number = signal_number
        log.warning("Received %s: saving a checkpoint after the current batch", signal.Signals(signal_number).name)
