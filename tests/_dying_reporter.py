"""An in-process trial killed mid-run: a LocalReporter that dies right after storing an epoch's checkpoint."""
from __future__ import annotations

from pathlib import Path

from trainables.reporting import LocalReporter


class Killed(Exception):
    """Stands for the kill: raised out of `run_trial` after the checkpoint of epoch `last` is on disk."""


class KillAfter(LocalReporter):
    """Dies right after the checkpoint of epoch `last` is stored, as a preempted trial would."""

    def __init__(self, out_dir: Path, last: int = 1) -> None:
        super().__init__(out_dir, echo=False)
        self.last = last

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        super().report(epoch, metrics, checkpoint_dir)
        if epoch >= self.last:
            raise Killed
