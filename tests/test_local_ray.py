"""`dpl run` without --address: a private local Ray, quiet, with no dashboard, autoscaler monitor, log monitor or
idle workers (`study.local_ray`).

One real `dpl run` of a one-trial toy study, while a Ray "of the user's" runs on this machine and is
named both by `ray_current_cluster` in the Ray temp dir and by $RAY_ADDRESS (everything that would make a
plain `ray.init()` join it). Its output is read line by line, and the processes of its session are
sampled while it runs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from _processes import kill_session, outside_ray_cluster, session_members, start_in_session

pytestmark = pytest.mark.slow  # ~40 s on 2 busy cores: one `dpl run` with Ray start and shutdown
REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "tests" / "plugins"


@pytest.fixture
def users_ray(outside_ray, tmp_path):
    """The session's outside Ray when the whole suite runs, else one for this test."""
    if outside_ray is not None:
        yield outside_ray
        return
    temp_dir = Path(os.environ["RAY_TMPDIR"]) / "ray"
    with outside_ray_cluster(temp_dir) as cluster:
        yield cluster


#: short-lived helpers, not Ray services: the driver's `git` (it records the commit) and the `ldconfig -p` of Ray's
#: NVIDIA GPU probe (pynvml's `ctypes.util.find_library`; caught once in a fresh-clone CI run)
GIT, LDCONFIG = "git (the driver records the commit)", "ldconfig (Ray's GPU probe)"


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kind(command: str) -> str:
    """What a process of a `dpl run` session is, by its command line (Ray names its workers `ray::...`)."""
    rules = [("study.cli", "driver"), ("gcs_server", "gcs_server"), ("raylet", "raylet"),
             ("autoscaler/_private/monitor.py", "autoscaler monitor"), ("log_monitor.py", "log monitor"),
             ("dashboard/dashboard.py", "DASHBOARD"), ("ray::DashboardAgent", "dashboard agent"),
             ("dashboard/agent.py", "dashboard agent"), ("ray::RuntimeEnvAgent", "runtime env agent"),
             ("runtime_env/agent/main.py", "runtime env agent"), ("default_worker.py", "worker"), ("ray::", "worker"),
             ("git ", GIT), ("/sbin/ldconfig -p", LDCONFIG)]
    return next((name for part, name in rules if part in command), f"other: {command[:80]}")


def test_dpl_run_starts_its_own_quiet_ray_without_a_dashboard(tmp_path, users_ray) -> None:
    from ray._raylet import GcsClient

    data = tmp_path / "data"
    data.mkdir()
    spec = tmp_path / "toy.yaml"
    spec.write_text(yaml.safe_dump({"name": "toy", "weights": "random", "networks": ["none"], "seeds": [0],
                                    "resources": {"cpu": 1},
                                    "tasks": {"toy": {"data": str(data), "params": {"epochs": 2, "sleep_s": 1.0}}}}))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token authentication
    env.update(HOME=str(home), RAY_ADDRESS=users_ray["address"], DPL_TASKS="toy=toy_task",
               PYTHONPATH=os.pathsep.join([str(PLUGINS), str(REPO)]))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = start_in_session([sys.executable, "-m", "study.cli", "run", str(spec), "--storage",
                                 str(tmp_path / "study")], env=env, stdout=o, stderr=e, cwd=REPO)
    seen: dict[str, str] = {}
    workers: dict[int, str] = {}
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            for pid in session_members(proc.pid):
                command = command_of(pid)
                if command:  # (empty: it exited while we looked)
                    seen.setdefault(kind(command), command)
                    if kind(command) == "worker":
                        workers[pid] = command
            time.sleep(0.1)
        assert proc.poll() is not None, "dpl run did not finish in 300 s"
    finally:
        kill_session(proc.pid)
    lines = out.read_text().splitlines() + err.read_text().splitlines()
    assert proc.returncode == 0, "\n".join(lines[-40:])
    assert any("dpl: done: 1/1 finished" in line for line in lines)
    # the user's Ray: still there, and no driver ever connected to it (the study ran on a Ray of its own)
    assert users_ray["pid"] in session_members(users_ray["pid"])
    assert not GcsClient(address=users_ray["address"]).get_all_job_info(timeout=30), "dpl run joined the user's Ray"

    # quiet: every line is dpl's own (a `dpl:` line or the console's `[m:ss]` trial lines), none is Ray's
    foreign = [line for line in lines if line.strip() and not line.startswith(("dpl: ", "["))]
    assert not foreign, f"Ray's own output without --verbose: {foreign}"
    assert any("RAY_ADDRESS is set" in line and "--address auto" in line for line in lines)
    # ... yet authentication was not switched off: Ray enabled token authentication and made its token
    assert (home / ".ray" / "auth_token").is_file(), "Ray ran without token authentication"

    # the processes of its session: Ray's own, and no dashboard, autoscaler monitor or log monitor (not verbose)
    assert {"driver", "gcs_server", "raylet", "worker"} <= set(seen), seen
    for skipped in ("DASHBOARD", "autoscaler monitor", "log monitor"):
        assert skipped not in seen, f"a {skipped} process ran: {seen[skipped][:200]}"
    # one worker, the trial's: none of the idle ones Ray prestarts per CPU (never used: they lack the job's runtime env)
    assert len(workers) == 1, list(workers.values())
    allowed = {"driver", "gcs_server", "raylet", "worker", "dashboard agent", "runtime env agent",
               GIT, LDCONFIG}
    assert set(seen) <= allowed, [seen[k] for k in set(seen) - allowed]
