"""The Reporter: the only way a task talks to the outside world.

A task never knows whether it runs in-process (`dpl trial`) or under Ray Tune with MLflow: it reports
per-epoch metrics with a checkpoint directory, logs artifacts, records settings it derived (feature-map
shape, FLOPs), and asks where to resume from. `LocalReporter` below is the in-process implementation; the
Ray Tune + MLflow one lives in `study.reporter`, which is why nothing here imports Ray or MLflow.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from trainables.errors import UserError

CHECKPOINT_FILE = "state.pt"


class Reporter(Protocol):
    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        """Record one epoch's metrics; `checkpoint_dir` (if given) is copied away before this returns."""

    def log_artifact(self, path: Path, subdir: str = "") -> None:
        """Keep a file (sample images, overlays, tables) with the trial's results."""

    def set_info(self, info: dict[str, Any]) -> None:
        """Record derived, descriptive settings (feature shape, FLOPs, ImageNet top-1): tags, not metrics."""

    def resume_dir(self) -> Path | None:
        """The directory of the newest checkpoint of this trial, or None for a fresh start."""


@contextmanager
def staged_checkpoint(state: dict[str, Any]) -> Iterator[Path]:
    """A temporary directory holding `state` as `state.pt`, for `reporter.report(..., checkpoint_dir=)`.

    Staging in a fresh directory is what Ray asks of `tune.report`; it also keeps a half-written file from
    ever becoming the checkpoint a restarted trial resumes from.
    """
    with tempfile.TemporaryDirectory(prefix="dpl-ckpt-") as tmp:
        torch.save(state, Path(tmp) / CHECKPOINT_FILE)
        yield Path(tmp)


def load_checkpoint(directory: Path | None) -> dict[str, Any] | None:
    """The state saved by `staged_checkpoint`, loaded safely (tensors and plain containers only)."""
    if directory is None:
        return None
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format failure means the same thing to the user
        raise UserError(
            f"checkpoint {path} is corrupt or not a dpl checkpoint ({type(exc).__name__}); "
            f"delete it to restart the trial from scratch"
        ) from exc


class LocalReporter:
    """In-process reporter: metrics to `metrics.jsonl` (and stdout), checkpoints under `out_dir`.

    Only the newest checkpoint is kept (`checkpoint/`), replaced atomically by a rename, so a trial killed
    at any moment resumes from a complete one when run again with the same `out_dir`.
    """

    def __init__(self, out_dir: Path, echo: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.history: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.artifacts: list[Path] = []

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if checkpoint_dir is not None:
            tmp = self.out_dir / "checkpoint.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            final = self.out_dir / "checkpoint"
            old = self.out_dir / "checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        if self.echo:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"[epoch {epoch}] {shown}", file=sys.stderr, flush=True)

    def log_artifact(self, path: Path, subdir: str = "") -> None:
        dest = self.out_dir / "artifacts" / subdir
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / Path(path).name
        if Path(path).resolve() != target.resolve():
            shutil.copy2(path, target)
        self.artifacts.append(target)

    def set_info(self, info: dict[str, Any]) -> None:
        self.info.update(info)
        with open(self.out_dir / "info.json", "w") as f:
            json.dump(self.info, f, indent=2, default=str)

    def resume_dir(self) -> Path | None:
        d = self.out_dir / "checkpoint"
        return d if (d / CHECKPOINT_FILE).is_file() else None
