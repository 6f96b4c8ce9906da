"""The Ray that `dpl run` starts for itself when no `--address` is given: private, quiet, no dashboard.

- **Private.** `ray.init()` without an address joins the newest cluster of this machine (the one named in
  `<ray temp dir>/ray_current_cluster`, written by `ray start`) or `$RAY_ADDRESS`, so a user's own
  `ray start --head` would silently receive the study's trials, under that cluster's resources and
  environment. `dpl run` starts a new local Ray instead (`address="local"`) and shuts it down at the end;
  running on an existing cluster is asked for with `--address auto` (the newest cluster, or $RAY_ADDRESS)
  or `--address HOST:PORT`.
- **Quiet.** Without `--verbose`, Ray's own log lines at start-up (e.g. its notice that token
  authentication is on) are not shown, also when connecting to a cluster with `--address` (`quiet_logs`);
  authentication itself is left as Ray sets it (for a new local cluster: token authentication, with a
  token in ~/.ray/auth_token unless RAY_AUTH_MODE says otherwise).
- **No dashboard, nothing it cannot use.** Ray 2.60 starts `ray/dashboard/dashboard.py` on every head node
  even with `include_dashboard=False` (then loading only its usage-statistics module): `Node.start_head_processes`
  calls `start_api_server` unconditionally, and no setting turns it off. It also starts the autoscaler monitor
  (`autoscaler/_private/monitor.py`, which reads the cluster's load for an autoscaler; a private one-node Ray
  has nothing to scale, as `ray start --no-monitor` also says) and the log monitor (`log_monitor.py`, which
  streams the workers' stdout and stderr to the driver; without `--verbose` dpl asks for none:
  `log_to_driver=False`, and the logs stay in Ray's session directory). A study uses none of these (Tune needs
  neither the dashboard nor the job and state APIs it serves), so for its own Ray dpl skips those calls (the
  log monitor only without `--verbose`): three processes and ~1.5 CPU-seconds less per `dpl run`, more on a
  long study (the log monitor polls the log files all along). What cannot be avoided, because the raylet of
  every node starts them: `ray::DashboardAgent` (the per-node agent for metrics, logs and health reports; it
  serves no web UI) and `ray::RuntimeEnvAgent` (which applies the runtime env through which dpl hands its
  environment variables to the trials). A dashboard is available by starting Ray yourself
  (`ray start --head`) and running the study there with `--address auto`.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


#: Ray starts one idle Python worker per CPU for the first driver, before the driver's job (and its runtime
#: env, which carries dpl's environment variables) is known: every trial then needs a worker started for that
#: runtime env, and the idle ones (~0.4 CPU-s each, more memory) are never used.
NO_IDLE_WORKERS = {"prestart_worker_first_driver": False}


def start(kwargs: dict[str, Any], verbose: bool) -> None:
    """`ray.init(address="local", **kwargs)`: a new local Ray of this process's own, never another one."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        print(f"dpl: starting a Ray of this study's own although RAY_ADDRESS is set ({os.environ['RAY_ADDRESS']}); "
              f"to run on that cluster pass --address auto", file=sys.stderr)
    skipped = ("start_api_server", "start_monitor") + (() if verbose else ("start_log_monitor",))
    with _without(skipped), quiet_logs(verbose):
        ray.init(address="local", **{"_system_config": NO_IDLE_WORKERS, **kwargs})


@contextmanager
def _without(methods: tuple[str, ...]) -> Iterator[None]:
    """Ray's head node without the processes these `Node.start_*` methods start (see the module docstring);
    Ray's own methods again after. If a later Ray renames one, it is not skipped and `tests/test_local_ray.py`
    says so."""
    from ray._private import node

    originals = {name: getattr(node.Node, name) for name in methods if hasattr(node.Node, name)}
    for name in originals:
        setattr(node.Node, name, lambda self, **kwargs: None)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(node.Node, name, original)


@contextmanager
def quiet_logs(verbose: bool) -> Iterator[None]:
    """Ray's own log lines while it starts or connects only with --verbose (errors are always shown)."""
    if verbose:
        yield
        return
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
