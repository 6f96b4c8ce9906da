"""A study tracked through a real MLflow server (the project's recipe, cluster/mlflow-server.sh) that dies,
freezes and stays away, on SQLite and on a private PostgreSQL (tests/_servers.py).

- the server is `kill -9`ed while trials log, and restarted 10 s later (both backends): no trial FAILED, one
  FINISHED run per trial key, no (run, metric, step) twice in the store's own table, no epoch missing, and
  a trial whose worker dies after the restart resumes from the checkpoint in its run (`--checkpoints mlflow`);
- the server freezes (SIGSTOP: it accepts connections and answers none) for less than the study's
  `tracking_retry_s`, then for longer: the first is ridden out (requests time out and are sent again, and the
  replays the server executes late double nothing), the second ends every trial and the driver with one
  line each, without hanging; the next launch resumes the trials from their checkpoints, exactly once;
- a smoke study (one real task and the toy task) on the PostgreSQL server, then `dpl analyze` on it.

The servers are the session's (tests/conftest.py `tracking_servers`): 20-60 s each to start on 2 cores.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from _servers import BIN, REPO, process_groups, start, tails, wait_for
from study import artifact_checkpoints as ac
from study import tracking
from study.trainable import ATTEMPTS_TAG
from trainables.reporting import START_EPOCH_METRIC, load_checkpoint

pytestmark = pytest.mark.slow
PLUGINS = REPO / "tests" / "plugins"
EPOCHS = 8


def study_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DPL_TASKS": "toy=toy_task",
            "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(REPO)]), "MLFLOW_DISABLE_TELEMETRY": "true",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **extra}


def toy_spec(path: Path, name: str, retry_s: float, **params: Any) -> Path:
    """Two toy trials (seeds 0, 1; pixel loss, no network to build) logging an epoch a second."""
    data = path.parent / f"{name}-data"
    data.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({
        "name": name, "weights": "random", "networks": ["none"], "seeds": [0, 1], "max_concurrent": 2,
        "resources": {"cpu": 1}, "ray": {"num_cpus": 2}, "max_failures": 2, "tracking_retry_s": retry_s,
        "tasks": {"toy": {"data": str(data), "params": {"epochs": EPOCHS, "sleep_s": 1.0, **params}}}}))
    return path


def run_cmd(spec: Path, study: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", "run", str(spec), "--storage", str(study), "--tracking-uri", url,
            "--checkpoints", "mlflow"]


def running_trial_at(c: Any, experiment: str, version: int) -> Any:
    """A RUNNING trial run whose checkpoint pointer has reached `version` (that many epochs uploaded)."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    for r in tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'"):
        if r.info.status == "RUNNING" and r.data.tags.get(ac.POINTER_TAG, "") >= ac.version_path(version):
            return r
    return None


def doubled_steps(backend: str, server: Any, tracking_servers: Any) -> list[tuple]:
    """(run, metric, step, count) logged more than once, read from the store's own `metrics` table."""
    query = "SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
    if backend == "postgres":
        with tracking_servers.postgres.connect("mlflow") as conn:
            return list(conn.execute(query).fetchall())
    with sqlite3.connect(server.store / "mlflow.db") as conn:
        return conn.execute(query).fetchall()


def check_exactly_once(c: Any, experiment: str, keys: int, scratch: Path) -> list[Any]:
    """One FINISHED run per trial key, every epoch's loss once, the final metrics, the last epoch's
    checkpoint under the run's pointer; returns the runs."""
    exp = c.get_experiment_by_name(experiment)
    runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
    assert len(runs) == len({r.data.tags[tracking.KEY_TAG] for r in runs}) == keys, [r.info for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.status, r.data.tags.get("dpl.error")) for r in runs]
    for r in runs:
        assert [m.step for m in c.get_metric_history(r.info.run_id, "train/loss")] == list(range(1, EPOCHS + 1))
        assert {"score", "final_loss"} <= set(r.data.metrics)
        assert load_checkpoint(ac.download(c, r.info.run_id, scratch))["epoch"] == EPOCHS
    return runs


def attempt_starts(c: Any, run_id: str) -> tuple[int, list[tuple[int, int]]]:
    history = [(m.step, int(m.value)) for m in c.get_metric_history(run_id, START_EPOCH_METRIC)]
    return int(c.get_run(run_id).data.tags[ATTEMPTS_TAG]), history


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_server_killed_mid_study_and_restarted_loses_and_doubles_nothing(backend, tracking_servers, tmp_path) -> None:
    server = tracking_servers.get(backend)
    name = f"restart-{backend}"
    # each trial's worker dies once at epoch 5, after the restart: Ray restarts it, and it must resume from
    # the epoch-4 checkpoint in its MLflow run (the outage leaves the trials blocked at epoch 3 or 4)
    spec = toy_spec(tmp_path / "spec.yaml", name, retry_s=600, kill_at_epoch=5)
    logs = [tmp_path / "driver.log", server.log]
    c = tracking.client(server.url)
    with process_groups() as procs:
        driver = start(procs, run_cmd(spec, tmp_path / "study", server.url), study_env(), logs[0])
        wait_for("a trial with two epochs in its run", lambda: running_trial_at(c, name, 2), 240, logs, driver)
        server.kill()
        killed = time.time()
        time.sleep(10)
        server.start(timeout=300)
        outage = time.time() - killed
        wait_for("the study to finish", lambda: driver.poll() is not None, 400, logs)
    log = logs[0].read_text(errors="replace")
    assert driver.returncode == 0, tails(logs)
    assert "FAILED" not in log, log[-3000:]
    runs = check_exactly_once(c, name, keys=2, scratch=tmp_path / "dl")
    assert doubled_steps(backend, server, tracking_servers) == []
    for r in runs:  # the kill at epoch 5 (after the restart): resumed at 5 from the run's epoch-4 checkpoint
        assert attempt_starts(c, r.info.run_id) == (2, [(1, 1), (2, 5)]), attempt_starts(c, r.info.run_id)
    print(f"\n{backend}: server down {outage:.0f} s (killed, restarted after 10 s, then its start-up)")


def test_server_frozen_within_then_beyond_the_retry_budget(tracking_servers, tmp_path) -> None:
    """Budget 12 s, requests time out after 2 s. A 5 s freeze is ridden out; a freeze that outlasts the
    budget ends the trials and the driver with one line each while the server is still frozen; the next
    launch resumes each trial from its checkpoint; nothing is doubled, also by the requests the frozen
    server executes late."""
    server = tracking_servers.get("sqlite")
    name = "freeze"
    spec = toy_spec(tmp_path / "spec.yaml", name, retry_s=12)
    env = study_env(MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    logs = [tmp_path / "driver.log", tmp_path / "relaunch.log", server.log]
    c = tracking.client(server.url)
    try:
        with process_groups() as procs:
            driver = start(procs, run_cmd(spec, tmp_path / "study", server.url), env, logs[0])
            wait_for("a trial with two epochs in its run", lambda: running_trial_at(c, name, 2), 240, logs, driver)
            server.freeze()
            time.sleep(5)
            server.thaw()
            wait_for("a trial with four epochs in its run", lambda: running_trial_at(c, name, 4), 120, logs, driver)
            at_freeze = {r.info.run_id: r.data.tags[ac.POINTER_TAG] for r in
                         tracking.find_runs(c, c.get_experiment_by_name(name).experiment_id, "tags.`dpl.kind` = 'trial'")}
            server.freeze()
            frozen = time.time()
            wait_for("the driver to give up while the server is frozen", lambda: driver.poll() is not None, 150, logs)
            gave_up = time.time() - frozen
    finally:
        server.thaw()
    log = logs[0].read_text(errors="replace")
    assert driver.returncode == 2, tails(logs)
    error = f"MLflow tracking server {server.url} did not answer for 12 s"
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"dpl: error: {error}") and "Traceback" not in log, log[-3000:]
    assert sum(f"FAILED" in line and error in line for line in log.splitlines()) == 2, log[-3000:]
    with process_groups() as procs:
        relaunch = start(procs, run_cmd(spec, tmp_path / "study", server.url), env, logs[1])
        wait_for("the relaunch to finish", lambda: relaunch.poll() is not None, 400, logs)
    assert relaunch.returncode == 0, tails(logs)
    assert "2 trials planned, 0 already finished, 2 to run" in logs[1].read_text(), tails(logs)
    runs = check_exactly_once(c, name, keys=2, scratch=tmp_path / "dl")
    assert doubled_steps("sqlite", server, tracking_servers) == []
    for r in runs:  # resumed from the checkpoint the run named when the server froze (or a later one)
        n, starts = attempt_starts(c, r.info.run_id)
        assert n == 2 and starts[0] == (1, 1) and starts[1][1] > int(at_freeze[r.info.run_id][-6:]), starts
    print(f"\nfreeze: the driver gave up {gave_up:.0f} s after the server froze (budget 12 s, request timeout 2 s)")


def test_smoke_study_on_postgresql_then_analyze(tracking_servers, tmp_path) -> None:
    """One real smoke task (superres) and a toy trial through the server on PostgreSQL; `dpl analyze` reads
    them back from it; the runs are rows of PostgreSQL's own tables, and no SQLite store was made."""
    server = tracking_servers.get("postgres")
    argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in server.pids()]
    assert any("uvicorn" in a for a in argvs), argvs  # what `ps` shows of the server carries no secret
    assert not any(tracking_servers.postgres.password in a or "postgresql://" in a for a in argvs), argvs
    data = tmp_path / "toy-data"
    data.mkdir()
    spec = tmp_path / "pgsmoke.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pgsmoke", "weights": "random", "networks": ["squeezenet1_1"], "points": ["p1"], "seeds": [0],
        "resources": {"cpu": 1}, "ray": {"num_cpus": 2}, "max_concurrent": 2,
        "tasks": {"superres": {"data": "synthetic", "budget": "smoke"},
                  "toy": {"data": str(data), "params": {"epochs": 2}}}}))
    study, report = tmp_path / "study", tmp_path / "report"
    env = study_env()
    run = subprocess.run([*run_cmd(spec, study, server.url)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    analyze = subprocess.run([sys.executable, "-m", "study.cli", "analyze", "--tracking-uri", server.url,
                              "--experiment", "pgsmoke", "--out", str(report)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert analyze.returncode == 0, analyze.stderr[-3000:]

    plan = json.loads((study / "plan.json").read_text())
    assert sorted(p["task"] for p in plan) == ["superres", "toy"]
    with tracking_servers.postgres.connect("mlflow") as conn:  # the store itself, not MLflow's view of it
        rows = dict(conn.execute(
            "SELECT t.value, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'dpl.trial_key' "
            "WHERE e.name = 'pgsmoke' AND r.lifecycle_stage = 'active'").fetchall())
        analyses = conn.execute(
            "SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'dpl.kind' AND t.value = 'analysis'").fetchone()[0]
    assert rows == {p["trial_key"]: "FINISHED" for p in plan}
    assert analyses >= 1  # `dpl analyze` logged its report run through the server
    assert not list(study.rglob("*.db")) and not (REPO / "mlflow.db").exists()  # no SQLite store on the side

    c = tracking.client(server.url)
    runs = tracking.runs_by_key(c, c.get_experiment_by_name("pgsmoke").experiment_id)
    results = pd.read_csv(report / "results.csv", keep_default_na=False, na_values=[""])
    primary = results[results["primary"].astype(str) == "True"]
    for p in plan:
        run_ = runs[p["trial_key"]]
        (row,) = primary[primary["trial_key"] == p["trial_key"]].itertuples()
        metric = run_.data.tags["dpl.primary_metric"]
        assert (row.task, row.network, row.status, row.metric) == (p["task"], p["network"], "FINISHED", metric)
        assert row.value == pytest.approx(run_.data.metrics[metric])
    for name in ("report.md", "report.html"):
        assert (report / name).stat().st_size > 0
