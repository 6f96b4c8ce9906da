"""The study engine end to end: Ray Tune trials, MLflow runs keyed by trial key, exactly-once resume.

Uses the toy task in tests/plugins (plugged in through DPL_TASKS, as a user's own task would be), so
each trial runs the real loss-network path in about a second.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _processes import kill_session, run_in_session, start_in_session
from study import tracking
from study.spec import load_spec, validate
from study.trainable import ATTEMPTS_TAG
from trainables.config import ConfigError, TrialConfig
from trainables.reporting import CHECKPOINT_FILE, START_EPOCH_METRIC, LocalReporter

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setenv("DPL_TASKS", "toy=toy_task")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(PLUGINS)


def write_spec(tmp_path: Path, name: str = "toy", **overrides) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    spec = {
        "name": name,
        "weights": "random",
        "networks": ["squeezenet1_1"],
        "points": ["p1", "p2"],
        "seeds": [0, 1],
        "tasks": {"toy": {"data": str(data_dir), "params": {"epochs": 3}}},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "ray": {"num_cpus": 2},
    }
    spec.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trial_runs(study_dir: Path, experiment: str = "toy") -> list[tuple[str, str, str]]:
    """(trial key, status, run id) of every trial run, straight from the SQLite store."""
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name(experiment)
    runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
    return [(r.data.tags[tracking.KEY_TAG], r.info.status, r.info.run_id) for r in runs]


def dpl(*args: str, timeout: float = 400, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a session of its own: whatever Ray it leaves behind, even on a timeout, is ended with it;
    `env` is added to this process's environment."""
    return run_in_session([sys.executable, "-m", "study.cli", *args], timeout=timeout,
                          env={**os.environ, **(env or {})})


def attempts(client, run_id: str) -> tuple[int, list[tuple[int, int]]]:
    """(`dpl.attempts` tag, [(attempt, first epoch it logged)]) of a run: how often it started, and where."""
    history = [(m.step, int(m.value)) for m in client.get_metric_history(run_id, START_EPOCH_METRIC)]
    return int(client.get_run(run_id).data.tags[ATTEMPTS_TAG]), history


def checkpointed_epoch(study_dir: Path, key: str) -> int | None:
    """The epoch of a trial's checkpoint in the study's store, read straight from `checkpoints/<key>/`."""
    import torch

    path = study_dir / "checkpoints" / key / CHECKPOINT_FILE
    return int(torch.load(path, weights_only=True)["epoch"]) if path.is_file() else None


def assert_exactly_once(study_dir: Path, planned: int) -> None:
    runs = trial_runs(study_dir)
    keys = [k for k, _, _ in runs]
    assert len(keys) == len(set(keys)) == planned, runs
    assert {s for _, s, _ in runs} == {"FINISHED"}, runs


# ----------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"name": "x", "tasks": {"toy": {}}, "colour": 1}, "colour: unknown key"),
        ({"name": "x", "tasks": {"tyo": {}}}, "tasks.tyo: unknown key; allowed: similarity"),
        ({"name": "x", "tasks": {"toy": {"budget": "huge"}}}, "tasks.toy.budget"),
        ({"name": "x", "tasks": {"toy": {}}, "resources": {"gpu": 1.5}}, "resources.gpu"),
        ({"name": "x", "tasks": {"toy": {}}, "resources": {"cpu": -1}}, "resources.cpu"),
        ({"name": "x", "tasks": {"toy": {}}, "seeds": ["a"]}, "seeds"),
        ({"name": "x", "tasks": {"toy": {}}, "mode": "training"}, "mode"),
        ({"tasks": {"toy": {}}}, "name"),
        ({"name": "x", "tasks": {}}, "tasks"),
        ({"name": "x", "tasks": {"toy": {}}, "search": {"type": "random"}}, "search.type"),
    ],
)
def test_malformed_spec_names_the_key(raw, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validate(raw)
    assert "\n" not in str(info.value) and "allowed" in str(info.value)


def test_bad_yaml_and_task_settings(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_spec(bad)
    from study.plan import expand

    spec = load_spec(write_spec(tmp_path, tasks={"toy": {"data": str(tmp_path), "params": {"epoch": 3}}}))
    with pytest.raises(ConfigError, match="unknown task setting.*epoch"):
        expand(spec)
    spec = load_spec(write_spec(tmp_path, networks=["resnet5"]))
    with pytest.raises(Exception, match="did you mean resnet50"):
        expand(spec)


def test_plan_expands_grid_with_stable_keys(tmp_path) -> None:
    from study.plan import expand

    spec = load_spec(write_spec(tmp_path), storage=tmp_path / "s1")
    plan = expand(spec)
    assert len(plan) == 4 and len({t.key for t in plan}) == 4
    again = expand(load_spec(write_spec(tmp_path), storage=tmp_path / "s2"))  # another place, same keys
    assert [t.key for t in plan] == [t.key for t in again]
    assert {t.config.point for t in plan} == {"features.1", "features.3"}


def test_status_of_a_plugin_task_study_needs_no_dpl_tasks(tmp_path, monkeypatch, capsys) -> None:
    """The saved spec records the module of the study's own task (`plugins`), so `dpl status` (and resume)
    of the study works without DPL_TASKS. Status reads only the store, so it answers even when that module
    cannot be imported; resume, which runs the task, then says in one line what to set."""
    import sys

    from study.cli import EXIT_USER_ERROR, main
    from study.plan import expand, save_plan
    from study.spec import SPEC_FILE, save_spec

    spec = load_spec(write_spec(tmp_path), storage=tmp_path / "study")  # DPL_TASKS=toy=toy_task (fixture)
    tracking.init_experiment(tracking.default_tracking_uri(spec.study_dir), spec.name, spec.study_dir)
    save_spec(spec)
    save_plan(spec, expand(spec))
    assert yaml.safe_load((spec.study_dir / SPEC_FILE).read_text())["plugins"] == {"toy": "toy_task"}

    monkeypatch.delenv("DPL_TASKS")
    assert main(["status", str(spec.study_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"]["toy"]["pending"] == 4

    monkeypatch.delenv("DPL_TASKS", raising=False)  # (reading the study made its task known to this process)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != PLUGINS])
    monkeypatch.delitem(sys.modules, "toy_task")
    assert main(["status", str(spec.study_dir), "--json"]) == 0 and "toy_task" not in sys.modules
    assert json.loads(capsys.readouterr().out)["tasks"]["toy"]["pending"] == 4
    assert main(["resume", str(spec.study_dir)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dpl: error: task 'toy': cannot import toy_task")
    assert "PYTHONPATH" in err and "DPL_TASKS=toy=package.module" in err


# ---------------------------------------------------------------------------------- run & resume


def test_resumed_reporter_logs_each_metric_step_once(tmp_path) -> None:
    """A second attempt of a trial (after a kill) re-runs the epoch that had no checkpoint yet: its metrics
    must not be logged twice at that step, but a final metric reported at the same step must still land."""
    from study.trainable import TuneMlflowReporter

    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.init_experiment(uri, "once", tmp_path)
    c = tracking.client(uri)
    run_id = tracking.attach_trial_run(c, exp, "k1", "k1", {})
    first = TuneMlflowReporter(c, run_id, tmp_path / "ckpt")
    first.log_metrics(1, {"train/loss": 0.5})
    first.log_metrics(2, {"train/loss": 0.4})  # ... killed here, before epoch 2's checkpoint was copied
    first.log_metrics(2, {"train/loss": 0.4})  # (a repeated report in one attempt is not logged twice either)
    again = TuneMlflowReporter(c, run_id, tmp_path / "ckpt")  # resumed from the epoch-1 checkpoint
    again.log_metrics(2, {"train/loss": 0.41})
    again.log_metrics(2, {"train/loss": 0.41, "test/score": 0.9})  # the final report, at the last step
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "train/loss")] == [(1, 0.5), (2, 0.4)]
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "test/score")] == [(2, 0.9)]


def test_each_attempt_records_the_epoch_it_started_from(tmp_path) -> None:
    """Because repeated steps are skipped, only the attempt record tells a resumed trial from one that
    started over: `dpl.attempts` counts the attempts started, `attempt/start_epoch` at step n is the first
    epoch attempt n logged (1 for a fresh start, checkpoint epoch + 1 after a resume)."""
    from study.trainable import TuneMlflowReporter

    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.init_experiment(uri, "attempts", tmp_path)
    c = tracking.client(uri)
    run_id = tracking.attach_trial_run(c, exp, "k1", "k1", {})
    first = TuneMlflowReporter(c, run_id, tmp_path / "ckpt")
    assert attempts(c, run_id) == (1, [])  # started, nothing logged yet
    first.log_metrics(1, {"train/loss": 0.5})
    first.log_metrics(2, {"train/loss": 0.4})
    died_early = TuneMlflowReporter(c, run_id, tmp_path / "ckpt")  # killed before its first epoch
    assert died_early.attempt == 2
    again = TuneMlflowReporter(c, run_id, tmp_path / "ckpt")  # resumed from the epoch-2 checkpoint
    again.log_metrics(3, {"train/loss": 0.3})
    again.log_metrics(4, {"train/loss": 0.2, "test/score": 0.9})
    assert attempts(c, run_id) == (3, [(1, 1), (3, 3)])
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]


def test_local_rerun_records_its_attempt_in_metrics_jsonl(tmp_path) -> None:
    """`dpl trial` rerun with the same --out: metrics.jsonl gets one attempt row per run that reported, and
    the rerun's row says it started right after the checkpointed epoch (read from the file on disk)."""
    import torch

    from trainables.trial import run_trial

    class DiesAfterEpoch2(LocalReporter):
        def report(self, epoch, metrics, checkpoint_dir=None):
            super().report(epoch, metrics, checkpoint_dir)
            if epoch == 2:
                raise KeyboardInterrupt  # the trial is stopped here, its epoch-2 checkpoint stored

    config = TrialConfig(task="toy", network="none", points=(), weights="random", params={"epochs": 4})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_trial(config, DiesAfterEpoch2(out, echo=False))
    saved = torch.load(out / "checkpoint" / CHECKPOINT_FILE, weights_only=True)["epoch"]
    assert saved == 2
    rerun = LocalReporter(out, echo=False)
    run_trial(config, rerun)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "attempt" in r] == [{"attempt": 1, "start_epoch": 1},
                                                  {"attempt": 2, "start_epoch": saved + 1}]
    assert [r["epoch"] for r in rows if "epoch" in r] == [1, 2, 3, 4]
    assert (rerun.attempt, rerun.start_epoch) == (2, 3) and [r["epoch"] for r in rerun.history] == [3, 4]



def trial_progress(study_dir: Path) -> tuple[int, int]:
    """(FINISHED trial runs, RUNNING trial runs with a checkpoint of epoch 1 or 2 on disk), read straight from
    SQLite and the checkpoint store so the poll never goes through (or waits on) the driver. A kill then
    interrupts a trial mid-way whose resume is visible: its next attempt must start at that epoch + 1."""
    db = study_dir / "mlflow.db"
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            rows = con.execute(
                "select r.status, k.value from runs r join tags t on r.run_uuid = t.run_uuid "
                f"join tags k on r.run_uuid = k.run_uuid and k.key = '{tracking.KEY_TAG}' "
                "where t.key = 'dpl.kind' and t.value = 'trial'"
            ).fetchall()
    except sqlite3.Error:
        return 0, 0
    running = 0
    for status, key in rows:
        if status == "RUNNING":
            with contextlib.suppress(Exception):  # a checkpoint being swapped in: not yet
                running += checkpointed_epoch(study_dir, key) in (1, 2)
    return sum(s == "FINISHED" for s, _ in rows), running


# when to kill: (finished, running-with-a-checkpoint) -> bool, for a study of 6 trials run one at a time; the study is
# killed at each moment in turn, relaunched after each kill, and the fourth launch completes it
KILL_MOMENTS = {
    "before_any_trial_finished": lambda done, running: done == 0 and running >= 1,
    "mid_study": lambda done, running: 2 <= done <= 3,
    "during_the_last_trial": lambda done, running: done == 5 and running >= 1,
}


def launch_and_kill(spec: Path, study_dir: Path, moment: str) -> tuple[tuple[int, int], str]:
    """`dpl run` until `moment`, then SIGKILL of the driver's whole session; (progress at the kill, its stderr)."""
    log = study_dir.parent / f"launch-{moment}.log"
    with open(log, "w") as err:
        proc = start_in_session([sys.executable, "-m", "study.cli", "run", str(spec), "--storage", str(study_dir)],
                                stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy())
        try:
            deadline = time.time() + 300
            progress = trial_progress(study_dir)
            while time.time() < deadline and proc.poll() is None and not KILL_MOMENTS[moment](*progress):
                time.sleep(0.2)
                progress = trial_progress(study_dir)
            assert proc.poll() is None and KILL_MOMENTS[moment](*progress), f"never reached {moment}: {progress}"
        finally:
            # the driver and every process it started (Ray's, also those that outlive a SIGKILL of the driver)
            kill_session(proc.pid)
            proc.wait()
    return progress, log.read_text()


@pytest.mark.slow
def test_sigkill_driver_three_times_then_resume_is_exactly_once(tmp_path) -> None:
    """One study, its driver SIGKILLed at each of the three moments in turn (before any trial finished, mid-study,
    during the last trial), relaunched after each, the last launch with a grid point added: every trial runs
    exactly once, each interrupted trial resumes from the checkpoint it left on disk at the kill, however often
    it was interrupted, and the new point's trials are the only new runs."""
    spec = write_spec(tmp_path, seeds=[0, 1, 2], points=["p1", "p2"], max_concurrent=1,
                      tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 3, "sleep_s": 1.0}}})
    study_dir = tmp_path / "study"
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    kills: list[dict[str, tuple[int, int | None]]] = []
    finished_before = 0
    for moment in KILL_MOMENTS:
        progress, stderr = launch_and_kill(spec, study_dir, moment)
        if kills:  # a relaunch: it ran only what the kill before it left unfinished
            expected = f"{finished_before} already finished, {6 - finished_before} to run"
            assert expected in stderr, (moment, stderr[-3000:])
        # the trials this kill interrupted: attempts started so far (0 if killed before its reporter existed) and
        # the epoch of the checkpoint each left on disk
        kills.append({key: (int(c.get_run(rid).data.tags.get(ATTEMPTS_TAG, 0)), checkpointed_epoch(study_dir, key))
                      for key, status, rid in trial_runs(study_dir) if status != "FINISHED"})
        status = json.loads(dpl("status", str(study_dir), "--json").stdout)
        assert status["driver_running"] is False and status["total"]["finished"] == progress[0] < 6, (moment, status)
        finished_before = progress[0]

    # the last launch also adds a grid point (p3, 3 trials): only the unfinished and the new trials run, and the
    # finished runs keep their run ids
    kept = {key: rid for key, status, rid in trial_runs(study_dir) if status == "FINISHED"}
    grown = write_spec(tmp_path, seeds=[0, 1, 2], points=["p1", "p2", "p3"], max_concurrent=1,
                       tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 3, "sleep_s": 1.0}}})
    result = dpl("run", str(grown), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{finished_before} already finished, {9 - finished_before} to run" in result.stderr
    assert "random loss-network weights" in result.stderr
    assert_exactly_once(study_dir, 9)
    runs = {key: rid for key, _, rid in trial_runs(study_dir)}
    assert len(kept) == finished_before and all(runs[key] == rid for key, rid in kept.items())
    run = c.get_run(next(iter(runs.values())))
    assert {"task", "dataset", "network", "point", "variant", "seed", "weights"} <= set(run.data.params)
    assert run.data.tags["dpl.weights_random"] == "true"
    st = json.loads(dpl("status", str(study_dir), "--json").stdout)
    assert st["total"]["finished"] == 9 and st["total"]["pending"] == 0
    for key, _, run_id in trial_runs(study_dir):  # every epoch once: a killed trial resumed, it did not restart
        assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
        started, history = attempts(c, run_id)
        hits = [(k, kill[key]) for k, kill in enumerate(kills) if key in kill]
        if not hits:  # finished before its first kill, or started after the last one: one attempt, from epoch 1
            assert (started, history) == (1, [(1, 1)]), key
            continue
        assert started == hits[-1][1][0] + 1, (key, hits, history)  # one attempt more than at its last kill
        for k, (before, epoch) in hits:
            again = kills[k + 1].get(key) if k + 1 < len(kills) else None
            if again is not None and again[0] == before:  # interrupted again before its next attempt began
                continue
            # the attempt after the kill started right after the epoch checkpointed when it was killed
            if epoch is None or epoch < 3:
                assert (before + 1, (epoch or 0) + 1) in history, (key, k, epoch, history)
            else:  # checkpointed every epoch: that attempt had nothing left to train, so it logged no epoch
                assert all(a != before + 1 for a, _ in history), (key, k, history)


@pytest.mark.slow
def test_fractional_gpus_on_two_node_cluster_and_concurrent_sqlite_logging(tmp_path, monkeypatch) -> None:
    """8 trials at 0.25 GPU on two nodes with one declared GPU each: 4 share each GPU, all recorded."""
    import ray
    from ray.cluster_utils import Cluster

    from study.driver import run_study

    # Cluster records its address as the newest cluster of the Ray temp dir: a dir of its own keeps it
    # from standing in for the session's outside Ray there (tests/test_outside_ray.py)
    ray_tmp = tempfile.mkdtemp(prefix="dplc", dir="/tmp")  # short: Ray's socket paths are length-limited
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1})
    cluster.add_node(num_cpus=4, num_gpus=1)
    try:
        spec = load_spec(write_spec(tmp_path, seeds=list(range(4)), points=["p1", "p2"], max_concurrent=0,
                                    tasks={"toy": {"data": str(tmp_path / "data"),
                                                   "params": {"epochs": 2, "sleep_s": 2.0}}},
                                    resources={"cpu": 0.5, "gpu": 0.25}),
                         storage=tmp_path / "study")
        code = run_study(spec, ray_address=cluster.address)
        assert code == 0
        assert_exactly_once(tmp_path / "study", 8)
        c = tracking.client(tracking.default_tracking_uri(tmp_path / "study"))
        exp = c.get_experiment_by_name("toy")
        runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
        spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
        overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        assert overlap >= 4, f"at most {overlap} trials ran at once"
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_load_64_trials_8_concurrent_all_recorded(tmp_path) -> None:
    """64 small trials, 8 at a time, on one machine and one fresh SQLite store: every result recorded. With
    --verbose, the console shows Ray Tune's own tables and the workers' output instead of dpl's trial lines."""
    spec = write_spec(tmp_path, name="load", networks=["none"], seeds=list(range(64)), max_concurrent=8,
                      ray={"num_cpus": 8}, tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 2}}})
    study_dir = tmp_path / "study"
    result = dpl("run", str(spec), "--storage", str(study_dir), "--verbose", timeout=900)  # workers' output too
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr + result.stdout
    assert "Trial status" in result.stdout and "╭" in result.stdout  # Tune prints its tables to stdout
    assert "(run_config_trial pid=" in result.stderr  # the workers' output reaches the console
    assert not re.search(r"^\[\d+:\d\d\] started ", result.stderr, re.M)  # and dpl's own trial lines do not
    runs = trial_runs(study_dir, "load")
    assert len(runs) == len({k for k, _, _ in runs}) == 64 and {s for _, s, _ in runs} == {"FINISHED"}
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    for _, _, run_id in runs:
        history = c.get_metric_history(run_id, "train/loss")
        assert [m.step for m in history] == [1, 2]
        assert "score" in c.get_run(run_id).data.metrics


@pytest.mark.slow
def test_optuna_search_state_survives_relaunch(tmp_path) -> None:
    """A budgeted search over networks, points and a task setting; a relaunch with a bigger budget only
    runs the extra trials, and Optuna's state (its SQLite storage) carries over."""
    import optuna

    def spec(n: int) -> Path:
        return write_spec(tmp_path, name="search", seeds=[0], max_concurrent=2,
                          networks=["squeezenet1_1", "alexnet"],
                          tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 1}}},
                          search={"type": "optuna", "num_samples": n,
                                  "space": {"network": {"choices": ["squeezenet1_1", "alexnet"]},
                                            "point": {"choices": ["p1", "p2"]},
                                            "params.lr": {"low": 0.01, "high": 0.5, "log": True}}})

    study_dir = tmp_path / "study"
    result = dpl("run", str(spec(2)), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best so far" in result.stderr
    first = trial_runs(study_dir, "search")
    assert 1 <= len(first) <= 2 and {s for _, s, _ in first} == {"FINISHED"}  # a repeated sample reuses its run
    result = dpl("run", str(spec(4)), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = trial_runs(study_dir, "search")
    assert {k for k, _, _ in first} <= {k for k, _, _ in runs} and len(runs) == len({k for k, _, _ in runs})
    stored = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    complete = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(t.user_attrs["trial_key"] in {k for k, _, _ in runs} for t in complete)
