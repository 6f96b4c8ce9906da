"""`run_study` when the caller initialised Ray first (a notebook, a script with `ray.init(address=...)`).

The driver must run the study on that Ray and leave it running (it is the caller's), and refuse, in one
line and before writing anything, an `--address` that names another cluster.
"""
from __future__ import annotations

import os

import pytest

from study import tracking
from study.spec import load_spec
from test_study import PLUGINS, assert_exactly_once, toy_task, trial_runs, write_spec  # noqa: F401 - fixture
from trainables.errors import UserError


@pytest.fixture(scope="module")
def user_ray():
    """Ray started by "the user" before `run_study`, once for this module (ray.init costs 5-9 s).

    A plain local `ray.init` passes no runtime env: its workers see the environment this process had
    when Ray started, so the toy task's plugin settings are set before it (as a notebook user would)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPL_TASKS", "toy=toy_task")
        mp.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # never a cluster already running
        try:
            yield ray
        finally:
            ray.shutdown()


def test_run_study_uses_a_ray_initialised_before_it(tmp_path, user_ray, capsys) -> None:
    from study.driver import run_study

    spec = load_spec(write_spec(tmp_path, seeds=[0], points=["p1"]), storage=tmp_path / "study")
    code = run_study(spec)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "1 to run" in err and "already initialised" in err
    assert_exactly_once(tmp_path / "study", 1)
    (_, _, run_id), = trial_runs(tmp_path / "study")
    c = tracking.client(tracking.default_tracking_uri(tmp_path / "study"))
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    assert "dpl: done: 1/1 finished, 0 failed, 0 running, 0 pending" in err
    assert user_ray.is_initialized(), "the caller's Ray was shut down by run_study"


def test_another_address_while_ray_is_initialised_is_refused(tmp_path, user_ray) -> None:
    from study.driver import run_study

    spec = load_spec(write_spec(tmp_path, seeds=[0], points=["p1"]), storage=tmp_path / "study")
    with pytest.raises(UserError, match=r"already initialised.*--address 10\.9\.9\.9:6379.*ray\.shutdown") as info:
        run_study(spec, ray_address="10.9.9.9:6379")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "study" / "mlflow.db").exists()  # refused before the store was written
    assert user_ray.is_initialized()


def test_relaunch_in_the_other_checkpoint_mode_resumes_the_interrupted_trial(tmp_path, user_ray, capsys) -> None:
    """Launch 1 keeps checkpoints in the study dir (`shared`, the default for a SQLite store); its trial's
    worker dies in epoch 3 and, with no restarts allowed, the trial ends FAILED with the epoch-2 checkpoint
    on disk. Launch 2 with `--checkpoints mlflow` carries that checkpoint into the trial's run, and the
    trial resumes at epoch 3 in the same run instead of starting over."""
    from study import artifact_checkpoints as ac
    from study.driver import run_study
    from study.trainable import ATTEMPTS_TAG
    from trainables.reporting import START_EPOCH_METRIC

    spec_file = write_spec(tmp_path, seeds=[0], points=["p1"], max_failures=0,
                           tasks={"toy": {"data": str(tmp_path / "data"), "params": {"epochs": 4, "kill_at_epoch": 3}}})
    study_dir = tmp_path / "study"
    assert run_study(load_spec(spec_file, storage=study_dir)) == 1  # the killed trial is recorded FAILED
    (key, status, run_id), = trial_runs(study_dir)
    assert status == "FAILED" and (ac.shared_dir(study_dir, key) / "state.pt").is_file()
    capsys.readouterr()

    assert run_study(load_spec(spec_file, storage=study_dir), checkpoints="mlflow") == 0
    assert_exactly_once(study_dir, 1)
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    run = c.get_run(run_id)
    history = [(m.step, int(m.value)) for m in c.get_metric_history(run_id, START_EPOCH_METRIC)]
    assert run.data.tags[ATTEMPTS_TAG] == "2" and history == [(1, 1), (2, 3)]  # resumed, not restarted
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert not ac.shared_dir(study_dir, key).exists()  # moved, not copied: one place holds a checkpoint
    assert "moved the checkpoints of 1 interrupted trial(s) to their MLflow runs" in capsys.readouterr().err
    parent = tracking.find_runs(c, run.info.experiment_id, "tags.`dpl.kind` = 'study'")[0]
    assert (parent.data.params["checkpoints"], parent.data.tags["dpl.checkpoints"]) == ("shared", "mlflow")
    assert parent.data.tags["dpl.plugins"] == '{"toy": "toy_task"}'  # the module of the study's own task
