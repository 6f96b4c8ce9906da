"""Processes a test starts, and ending exactly those: a command runs in a session of its own, and the test
ends every process of that session, found by session id, never by name.

Why sessions: a `dpl run` driver starts Ray's GCS, raylet, agents and workers, and the raylet puts each
worker in a process group of its own, so killing the driver's process group leaves workers behind; and
after a SIGKILL of the driver, `ray::DashboardAgent` and `ray::RuntimeEnvAgent` can outlive it (stack notes).
None of them calls setsid, so all stay in the session the test created (orphans keep their session id),
and no process of another session (the user's own Ray, another test run) is ever touched. `ray stop`,
which kills every Ray on the machine by name, is never needed.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def kill_session(sid: int, timeout: float = 30) -> int:
    """SIGKILL every process of session `sid` until none is left (a process may start another while the
    first round is sent); returns how many were killed. Zombies are not counted: they are already dead."""
    killed: set[int] = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        members = session_members(sid)
        if not members:
            return len(killed)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)
    raise AssertionError(f"processes of session {sid} survived SIGKILL for {timeout} s: {session_members(sid)}")


def start_in_session(cmd: list[str], **popen: Any) -> subprocess.Popen:
    """`cmd` as the leader of a new session (its pid is the session id for `kill_session`)."""
    return subprocess.Popen(cmd, start_new_session=True, **popen)


def run_in_session(cmd: list[str], timeout: float, **popen: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)` in a session of its own; whatever of it is left
    when it exits or times out (a Ray it did not shut down) is killed."""
    proc = start_in_session(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    finally:
        kill_session(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def outside_ray_cluster(temp_dir: Path) -> Iterator[dict[str, Any]]:
    """`ray start --head` with Ray temp dir `temp_dir` (where it writes `ray_current_cluster`, the file a
    plain `ray.init()` joins), as a user starts Ray; yields {"pid": its session, "address": its GCS}.
    Started in a session of its own, so only it is killed at the end."""
    address_file = temp_dir / "ray_current_cluster"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # writes no token to ~/.ray
    ray_bin = Path(sys.executable).parent / "ray"
    proc = start_in_session([str(ray_bin), "start", "--head", f"--port={free_port()}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                             "--block"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not address_file.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert address_file.is_file(), "the outside Ray (ray start --head) did not come up"
        yield {"pid": proc.pid, "address": address_file.read_text().strip()}
    finally:
        kill_session(proc.pid)


def outside_ray_misuse(cluster: dict[str, Any]) -> str | None:
    """What went wrong with the outside Ray of `outside_ray_cluster`, or None: its `ray start --block` process
    died (something ran `ray stop` or killed Ray processes by name), or a driver connected to it (its GCS
    job table is not empty: a test, `dpl run` or a Ray of the suite attached to it)."""
    from ray._raylet import GcsClient

    if cluster["pid"] not in session_members(cluster["pid"]):
        return "the outside `ray start --head` was killed"
    jobs = GcsClient(address=cluster["address"]).get_all_job_info(timeout=30)  # its GCS still answers
    return f"{len(jobs)} driver(s) of the suite connected to the outside Ray" if jobs else None

