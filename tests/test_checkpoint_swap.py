"""The checkpoint swap survives a kill at any instant (`trainables.reporting.store_checkpoint`).

The kill test forks a child that replaces a checkpoint through the real `LocalReporter.report` and
SIGKILLs itself just before its n-th audited operation (Python audit hooks see every mkdir, open, rename,
symlink, remove, rmdir of the swap; `_kill_points.killed_at`), for every n until the swap completes. After each kill the directory is
read as a fresh attempt would: it must give the previous checkpoint or the new one, complete, file for file,
never nothing and never a partial copy. Partial leftovers a kill can leave are also built by hand (a
truncated `state.pt`) to show they are never picked up.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from _kill_points import killed_at
from trainables.reporting import CHECKPOINT_FILE, LocalReporter, newest_checkpoint, store_checkpoint

OLD = {CHECKPOINT_FILE: b"epoch-1 " * 5000, "extra.bin": b"old extra"}
NEW = {CHECKPOINT_FILE: b"epoch-2 " * 6000, "extra.bin": b"new extra"}
NEXT = {CHECKPOINT_FILE: b"epoch-3 " * 7000, "extra.bin": b"next extra"}


def write_tree(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def read_tree(path: Path | None) -> dict[str, bytes] | None:
    return None if path is None else {p.name: p.read_bytes() for p in Path(path).iterdir()}


# the states a study directory can be in when a new checkpoint is stored
def _fresh(out: Path) -> None:
    out.mkdir(parents=True)


def _previous(out: Path) -> None:
    store_checkpoint(write_tree(out.parent / "src-old", OLD), out / "checkpoint")


def _legacy_dir(out: Path) -> None:
    """`checkpoint/` as a real directory, as the former rename-over swap wrote it."""
    write_tree(out / "checkpoint", OLD)


def _old_swap_window(out: Path) -> None:
    """What the former swap left when killed between its two renames: `.old` and `.tmp`, no `checkpoint`."""
    write_tree(out / "checkpoint.old", OLD)
    write_tree(out / "checkpoint.tmp", {CHECKPOINT_FILE: b"epoch-2 " * 10})


INITIAL: dict[str, Callable[[Path], None]] = {
    "fresh": _fresh, "previous": _previous, "legacy_dir": _legacy_dir, "old_swap_window": _old_swap_window,
}


def report_killed_at(n: int, out: Path, src: Path) -> bool:
    """`LocalReporter(out).report(2, ..., src)` in a forked child, SIGKILLed just before its n-th audited
    operation; True if the kill happened, False if the report completed first."""
    return killed_at(n, lambda: LocalReporter(out, echo=False).report(2, {"train/loss": 0.5}, checkpoint_dir=src))


@pytest.mark.parametrize("initial", list(INITIAL))
def test_kill_at_every_point_of_the_swap_leaves_a_complete_checkpoint(tmp_path, initial) -> None:
    src = write_tree(tmp_path / "src-new", NEW)
    nxt = write_tree(tmp_path / "src-next", NEXT)
    before = None if initial == "fresh" else OLD
    seen: list[str] = []
    for n in range(1, 500):
        out = tmp_path / f"kill{n}" / "out"
        INITIAL[initial](out)
        killed = report_killed_at(n, out, src)
        found = read_tree(LocalReporter(out, echo=False).resume_dir())
        assert found in (before, NEW), f"kill point {n}: resumed from {found and sorted(found)} ({initial})"
        seen.append("new" if found == NEW else "old")
        # the next attempt goes on from that state: its checkpoint replaces everything the kill left
        LocalReporter(out, echo=False).report(3, {"train/loss": 0.4}, checkpoint_dir=nxt)
        assert read_tree(LocalReporter(out, echo=False).resume_dir()) == NEXT
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == \
            ["checkpoint", os.readlink(out / "checkpoint")]
        if not killed:
            break
    else:
        raise AssertionError("the swap never completed")
    assert n > 10, f"only {n} kill points: the audit hook did not see the swap's operations"
    # one switch from the previous checkpoint to the new one, at a single operation: the swap is atomic
    assert seen == sorted(seen, key=["old", "new"].index) and seen[-1] == "new", seen


TRUNCATED = {CHECKPOINT_FILE: NEW[CHECKPOINT_FILE][:100]}


@pytest.mark.parametrize(
    "layout, expected",
    [
        # first swap killed mid-copy: only a partial `.tmp` (former swap) or an unreferenced version
        ({"checkpoint.tmp": TRUNCATED}, None),
        ({"checkpoint.v000001": TRUNCATED}, None),
        # a complete checkpoint beside newer partial copies: the complete one
        ({"checkpoint": OLD, "checkpoint.tmp": TRUNCATED}, OLD),
        ({"checkpoint.v000001": OLD, "->": "checkpoint.v000001", "checkpoint.v000002": TRUNCATED}, OLD),
        # the former swap killed between its renames: the `.old` it moved aside, not the unprovable `.tmp`
        ({"checkpoint.old": OLD, "checkpoint.tmp": TRUNCATED}, OLD),
        # a real `checkpoint` always wins over a stale `.old`
        ({"checkpoint": NEW, "checkpoint.old": OLD}, NEW),
    ],
)
def test_partial_copies_are_never_resumed_from(tmp_path, layout, expected) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, files in layout.items():
        if name == "->":
            os.symlink(files, out / "checkpoint")
        else:
            write_tree(out / name, files)
    assert read_tree(LocalReporter(out, echo=False).resume_dir()) == expected
    assert read_tree(newest_checkpoint(out / "checkpoint")) == expected


def test_study_reporter_stores_and_recovers_through_the_same_swap(tmp_path, monkeypatch) -> None:
    """`TuneMlflowReporter` keeps `<study>/checkpoints/<key>` with the same swap: a report leaves a link to
    one complete version (what `tune.report` is handed is the staged copy), and after the former swap's
    kill window it resumes from `<key>.old`."""
    from ray import tune

    from study.trainable import TuneMlflowReporter

    handed: list[str] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: handed.append(checkpoint.path))
    c = _NoTracking()  # MLflow logging is tested in test_study.py; here only the checkpoint store matters
    store = tmp_path / "checkpoints" / "key1"
    reporter = TuneMlflowReporter(c, "run1", store)
    reporter.report(1, {"train/loss": 0.5}, checkpoint_dir=write_tree(tmp_path / "staged1", OLD))
    reporter.report(2, {"train/loss": 0.4}, checkpoint_dir=write_tree(tmp_path / "staged2", NEW))
    assert handed == [str(tmp_path / "staged1"), str(tmp_path / "staged2")]
    assert store.is_symlink() and read_tree(reporter.resume_dir()) == NEW
    assert sorted(p.name for p in store.parent.iterdir()) == ["key1", os.readlink(store)]

    legacy = tmp_path / "checkpoints" / "key2"
    write_tree(legacy.with_name("key2.old"), OLD)
    write_tree(legacy.with_name("key2.tmp"), TRUNCATED)
    assert read_tree(TuneMlflowReporter(c, reporter.run_id, legacy).resume_dir()) == OLD


class _NoTracking:
    """The few MlflowClient calls the reporter makes, for a run that holds nothing."""

    class _Run:
        class data:  # noqa: N801 - mirrors mlflow.entities.Run.data
            metrics: dict = {}
            tags: dict = {}

    def get_run(self, run_id: str) -> "_NoTracking._Run":
        return self._Run()

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        pass

    def log_batch(self, run_id: str, metrics: list, tags: list = ()) -> None:
        pass
