"""The Reporter: the only way a task talks to the outside world.

A task never knows whether it runs in-process (`dpl trial`) or under Ray Tune with MLflow: it reports
per-epoch metrics with a checkpoint directory, logs artifacts, records settings it derived (feature-map
shape, FLOPs), and asks where to resume from. `LocalReporter` below is the in-process implementation; the
Ray Tune + MLflow one lives in `study.trainable`, which is why nothing here imports Ray or MLflow.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from trainables.errors import UserError

CHECKPOINT_FILE = "state.pt"
#: Metric, one point per attempt of a trial (step = attempt number 1, 2, ...): the first epoch it reported.
START_EPOCH_METRIC = "attempt/start_epoch"


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


def store_checkpoint(src: Path, dest: Path) -> Path:
    """Make `dest` hold a copy of the checkpoint directory `src`, such that a kill at any instant leaves
    `newest_checkpoint(dest)` a complete checkpoint (the previous one or the new one), never a partial copy.

    `dest` is a symlink to a versioned sibling `<dest>.vNNNNNN`: the copy goes to a fresh version that
    nothing points at (a kill mid-copy leaves an unreferenced partial dir), then a new link replaces `dest`
    in one `os.replace` (atomic), and only then are older versions removed. A `dest` that is still a real
    directory (written before versioning) is first renamed to `<dest>.old`, which `newest_checkpoint`
    falls back to while no `dest` exists; that is also where a kill inside the former rename-over swap left
    the last complete checkpoint. Returns the new version's directory.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir() and not dest.is_symlink():
        _retire_real_dir(dest)
    version = dest.with_name(f"{dest.name}.v{_next_version(dest):06d}")
    shutil.copytree(src, version)
    link = dest.with_name(dest.name + ".link")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(version.name, link)
    os.replace(link, dest)
    _remove_stale(dest, keep=version)
    return version


def newest_checkpoint(dest: Path) -> Path | None:
    """The complete checkpoint `store_checkpoint(..., dest)` left behind, whenever it was interrupted.

    `dest` when it exists (link or, from before versioning, a real directory); otherwise `<dest>.old`,
    the complete checkpoint of an interrupted migration or old-style swap. A `.tmp` or unreferenced version
    is never returned: nothing proves it complete.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        return dest if (dest / CHECKPOINT_FILE).is_file() else None
    old = dest.with_name(dest.name + ".old")
    return old if (old / CHECKPOINT_FILE).is_file() else None


def _retire_real_dir(dest: Path) -> None:
    """Move an old-layout (real directory, complete) `dest` aside to `<dest>.old`, so a link can replace it."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # stale: `dest` itself is complete
    os.rename(dest, old)


def _siblings(dest: Path) -> list[tuple[Path, int | None]]:
    """`store_checkpoint`'s own entries beside `dest`: (path, version number, None for .old/.tmp/.link)."""
    pattern = re.compile(re.escape(dest.name) + r"\.(?:v(\d+)|old|tmp|link)")
    found = []
    for p in dest.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m:
            found.append((p, int(m.group(1)) if m.group(1) else None))
    return found


def _next_version(dest: Path) -> int:
    """One past every version on disk (also a partial one), so a new copy never lands in a used name."""
    return 1 + max((n for _, n in _siblings(dest) if n is not None), default=0)


def _remove_stale(dest: Path, keep: Path) -> None:
    """Delete every entry but `keep` (what `dest` now points at): older versions, partial copies, `.old`."""
    for p, _ in _siblings(dest):
        if p != keep:
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    else:
        shutil.rmtree(p, ignore_errors=True)


def discard_checkpoint(dest: Path) -> None:
    """Delete the checkpoint `store_checkpoint(..., dest)` keeps, and everything beside it: it now lives
    elsewhere (`study.artifact_checkpoints.carry_over`). `.old` and other leftovers go first, while `dest`
    still names a complete version; then `dest`; then the versions. So a kill part-way leaves either the
    complete checkpoint or none that `newest_checkpoint` would return, never a stale `.old`."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    entries = _siblings(dest)
    for p, n in entries:
        if n is None:
            _remove(p)
    if os.path.lexists(dest):
        _remove(dest)
    for p, n in entries:
        if n is not None:
            _remove(p)


class LocalReporter:
    """In-process reporter: metrics to `metrics.jsonl` (and stdout), checkpoints under `out_dir`.

    Only the newest checkpoint is kept (`checkpoint/`, a link swapped by `store_checkpoint`), so a trial
    killed at any moment resumes from a complete one when run again with the same `out_dir`. Each attempt
    (one reporter on that `out_dir`) that reports writes `{"attempt": n, "start_epoch": e}` to metrics.jsonl
    before its first epoch row: n counts the attempts that reported so far, e is the first epoch it reported,
    which shows whether a rerun resumed (checkpoint's epoch + 1) or started over (1).
    """

    def __init__(self, out_dir: Path, echo: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.history: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.artifacts: list[Path] = []
        self.attempt: int | None = None  # set at this attempt's first report
        self.start_epoch: int | None = None

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        lines = []
        if self.attempt is None:
            self.attempt, self.start_epoch = self._attempts_so_far() + 1, epoch
            lines.append({"attempt": self.attempt, "start_epoch": epoch})
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in [*lines, row])
        if checkpoint_dir is not None:
            store_checkpoint(Path(checkpoint_dir), self.out_dir / "checkpoint")
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
        return newest_checkpoint(self.out_dir / "checkpoint")

    def _attempts_so_far(self) -> int:
        """Attempt rows already in metrics.jsonl (earlier runs of this trial on the same `out_dir`)."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return 0
        with open(path) as f:
            return sum(line.startswith('{"attempt": ') for line in f)
