"""One driver per study directory, and a way to tell whether one is running.

`dpl run` holds an exclusive `flock` on `<study>/driver.lock` (with its pid in the file) for as long as it
runs; the kernel drops the lock when the process dies, even under `kill -9`, so a relaunch after a crash
never finds a stale lock. `dpl status` only tries the lock, and imports nothing heavy to do so.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from trainables.errors import UserError


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """One driver per study directory: a second `dpl run` on the same study would duplicate trials."""
    path = study_dir / "driver.lock"
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:  # read-only or full disk, a file in the way, no permission
        raise UserError(f"cannot write to the study directory {study_dir} ({exc.strerror}); "
                        f"choose another with --storage or free some space") from exc
    with handle as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"another driver is running this study (pid {f.read().strip() or '?'}); "
                            f"wait for it or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def driver_alive(study_dir: Path) -> bool:
    """Whether a driver holds the study's lock right now (used by `dpl status`)."""
    path = Path(study_dir) / "driver.lock"
    if not path.exists():
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
