"""The study engine end to end: Ray Tune trials, MLflow runs keyed by trial key, exactly-once resume.

Uses the toy task in tests/plugins (plugged in through DPL_TASKS, as a user's own task would be), so
each trial runs the real loss-network path in about a second.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study import tracking
from study.spec import load_spec, validate
from trainables.config import ConfigError

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


def dpl(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


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



@pytest.mark.slow
def test_run_then_relaunch_with_new_points_never_duplicates(tmp_path) -> None:
    study_dir = tmp_path / "study"
    result = dpl("run", str(write_spec(tmp_path)), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random loss-network weights" in result.stderr
    assert_exactly_once(study_dir, 4)
    first = {k: rid for k, _, rid in trial_runs(study_dir)}

    c = tracking.client(tracking.default_tracking_uri(study_dir))
    run = c.get_run(next(iter(first.values())))
    for name in ("task", "dataset", "network", "point", "variant", "seed", "weights"):
        assert name in run.data.params
    assert run.data.tags["dpl.weights_random"] == "true"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]

    # relaunch with one more point: only the 2 new trials run, the 4 finished runs are untouched
    result = dpl("run", str(write_spec(tmp_path, points=["p1", "p2", "p3"])), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 already finished" not in result.stderr and "4 already finished, 2 to run" in result.stderr
    assert_exactly_once(study_dir, 6)
    after = {k: rid for k, _, rid in trial_runs(study_dir)}
    assert all(after[k] == rid for k, rid in first.items())

    status = dpl("status", str(study_dir), "--json")
    st = json.loads(status.stdout)
    assert st["total"]["finished"] == 6 and st["total"]["pending"] == 0


@pytest.mark.slow
def test_failing_trial_is_recorded_and_study_goes_on(tmp_path) -> None:
    bad = write_spec(tmp_path, name="toy", seeds=[0, 1], points=["p1"],
                     tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 2, "fail": True}}})
    study_dir = tmp_path / "study"
    result = dpl("run", str(bad), "--storage", str(study_dir))
    assert result.returncode == 1 and "2 trial(s) failed" in result.stderr
    runs = trial_runs(study_dir)
    assert len(runs) == 2 and {s for _, s, _ in runs} == {"FAILED"}
    status = dpl("status", str(study_dir))
    assert "FAILED toy squeezenet1_1:features.1" in status.stdout and "asked to fail" in status.stdout


def trial_progress(db: Path) -> tuple[int, int]:
    """(FINISHED trial runs, RUNNING trial runs that already logged an epoch), read straight from SQLite
    so the poll never goes through (or waits on) the driver."""
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            rows = con.execute(
                "select r.status, exists(select 1 from metrics m where m.run_uuid = r.run_uuid) from runs r "
                "join tags t on r.run_uuid = t.run_uuid where t.key = 'dpl.kind' and t.value = 'trial'"
            ).fetchall()
    except sqlite3.Error:
        return 0, 0
    return (sum(s == "FINISHED" for s, _ in rows), sum(s == "RUNNING" and logged for s, logged in rows))


# when to kill: (finished, running-with-an-epoch) -> bool, for a study of 6 trials run one at a time
KILL_MOMENTS = {
    "before_any_trial_finished": lambda done, running: done == 0 and running >= 1,
    "mid_study": lambda done, running: 2 <= done <= 3,
    "during_the_last_trial": lambda done, running: done == 5 and running >= 1,
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_sigkill_driver_then_resume_is_exactly_once(tmp_path, moment) -> None:
    spec = write_spec(tmp_path, seeds=[0, 1, 2], points=["p1", "p2"], max_concurrent=1,
                      tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 3, "sleep_s": 1.0}}})
    study_dir = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec), "--storage", str(study_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ.copy())
    db = study_dir / "mlflow.db"
    deadline = time.time() + 300
    progress = (0, 0)
    while time.time() < deadline and proc.poll() is None and not KILL_MOMENTS[moment](*progress):
        time.sleep(0.2)
        progress = trial_progress(db)
    assert proc.poll() is None and KILL_MOMENTS[moment](*progress), f"never reached {moment}: {progress}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)

    status = json.loads(dpl("status", str(study_dir), "--json").stdout)
    assert status["driver_running"] is False and status["total"]["finished"] == progress[0] < 6

    result = dpl("run", str(spec), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{progress[0]} already finished, {6 - progress[0]} to run" in result.stderr
    assert_exactly_once(study_dir, 6)
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    for _, _, run_id in trial_runs(study_dir):  # every epoch once: a killed trial resumed, it did not restart
        assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3]


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_in_same_run(tmp_path) -> None:
    spec = write_spec(tmp_path, seeds=[0], points=["p1"],
                      tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 4, "kill_at_epoch": 3}}})
    study_dir = tmp_path / "study"
    result = dpl("run", str(spec), "--storage", str(study_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "data").glob("killed-*")), "the worker was never killed"
    assert_exactly_once(study_dir, 1)
    (key, _, run_id), = trial_runs(study_dir)
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    steps = [m.step for m in c.get_metric_history(run_id, "train/loss")]
    assert steps == [1, 2, 3, 4], steps  # epochs 1-2 before the kill, 3-4 after: no epoch re-run from scratch


@pytest.mark.slow
def test_fractional_gpus_on_two_node_cluster_and_concurrent_sqlite_logging(tmp_path) -> None:
    """8 trials at 0.25 GPU on two nodes with one declared GPU each: 4 share each GPU, all recorded."""
    import ray
    from ray.cluster_utils import Cluster

    from study.driver import run_study

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


@pytest.mark.slow
def test_load_64_trials_8_concurrent_all_recorded(tmp_path) -> None:
    """64 small trials, 8 at a time, on one machine and one fresh SQLite store: every result recorded."""
    spec = write_spec(tmp_path, name="load", networks=["none"], seeds=list(range(64)), max_concurrent=8,
                      ray={"num_cpus": 8}, tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 2}}})
    study_dir = tmp_path / "study"
    result = dpl("run", str(spec), "--storage", str(study_dir), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
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
