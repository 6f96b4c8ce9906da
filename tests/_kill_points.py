"""Kill a step of the code under test at every point: fork a child that runs it and SIGKILLs itself just
before its n-th audited operation (Python audit hooks see every open, mkdir, rename, remove, rmdir, copy,
database connection, ...), for n = 1, 2, ... until the step completes. The parent then reads what the
kill left, as the next attempt of a trial would. Used for both checkpoint modes (`test_checkpoint_swap.py`,
`test_artifact_checkpoints.py`).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Callable


def killed_at(n: int, step: Callable[[], object], events: frozenset[str] | None = None) -> bool:
    """Run `step` in a forked child that is SIGKILLed just before its n-th audit event (of `events` only,
    when given); True if the kill happened, False if `step` completed first."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            seen = 0

            def hook(event: str, args: tuple) -> None:
                nonlocal seen
                if events is None or event in events:
                    seen += 1
                    if seen == n:
                        os.kill(os.getpid(), signal.SIGKILL)

            sys.addaudithook(hook)
            step()
        except BaseException:  # noqa: BLE001 - shown to the parent as exit status 1
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    deadline = time.time() + 30
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.002)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"the child hung (kill point {n})")
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, f"the step raised (kill point {n}); see the captured stderr"
    return False
