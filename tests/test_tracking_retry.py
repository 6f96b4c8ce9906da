"""The client side of a tracking server that restarts (study/tracking_retry.py), without a server.

Transient failures are real ones (a connection refused by a closed loopback port) or the exceptions MLflow
raises for them; "a lost answer" is a call the store executed whose caller then got a transient error,
as when the server dies between doing the work and answering. The stores are SQLite and MLflow's file
store, which, unlike SQL stores, keeps a metric logged twice twice: so only our read-back prevents it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from _servers import free_port
from study import artifact_checkpoints as ac
from study import tracking, tracking_retry
from study.trainable import TuneMlflowReporter
from trainables.reporting import CHECKPOINT_FILE, load_checkpoint


@pytest.fixture(autouse=True)
def _no_mlflow_retries(monkeypatch) -> None:
    """What `tracking.client(..., retry_s=)` sets in a study's processes, undone after each test."""
    monkeypatch.setenv(tracking_retry.MLFLOW_RETRIES_ENV, "0")


def lost_answer(what: str) -> MlflowException:
    """The exception MLflow raises when a request's connection dies (here: after the store did the work)."""
    inner = requests.exceptions.ConnectionError(f"('Connection aborted.', RemoteDisconnected('{what}'))")
    exc = MlflowException(f"API request to http://127.0.0.1/ failed with exception {inner}")
    exc.__context__ = inner
    return exc


class LosesAnswers:
    """A client whose named methods do their work, then fail as if the answer was lost, `times` times each."""

    def __init__(self, real: Any, **methods: int) -> None:
        self.real = real
        self.left = dict(methods)
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in self.left:
            return attr

        def lossy(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            result = attr(*args, **kwargs)
            if self.left[name] > 0:
                self.left[name] -= 1
                raise lost_answer(name)
            return result

        return lossy


class Unreachable:
    """A client whose named methods fail transiently without doing anything (a server that is down)."""

    def __init__(self, real: Any, *methods: str) -> None:
        self.real, self.methods = real, set(methods)

    def __getattr__(self, name: str) -> Any:
        if name in self.methods:
            def down(*args: Any, **kwargs: Any) -> Any:
                raise lost_answer(name)
            return down
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> tuple[Any, str]:
    """(plain client, experiment id) of one SQLite store for the module (a new one costs seconds)."""
    root = tmp_path_factory.mktemp("retry-store")
    uri = tracking.default_tracking_uri(root)
    return tracking.client(uri), tracking.init_experiment(uri, "retry", root)


def file_store(tmp_path: Path) -> tuple[Any, str]:
    """MLflow's file store, which keeps a metric logged twice twice (no primary key to drop it)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    return c, c.create_experiment("retry")


def patient(c: Any, retry_s: float = 30) -> tracking_retry.PatientClient:
    return tracking_retry.PatientClient(c, retry_s, "http://127.0.0.1:5000")


def test_a_server_that_stays_down_fails_the_call_in_one_line_within_the_budget(monkeypatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every request is refused at once
    c = tracking.client(url, retry_s=2)
    sent = []
    real = c.raw.get_experiment_by_name
    monkeypatch.setattr(c.raw, "get_experiment_by_name", lambda *a: sent.append(1) or real(*a))
    started = time.monotonic()
    with pytest.raises(tracking_retry.TrackingUnavailable) as err:
        c.get_experiment_by_name("x")
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server {url} did not answer for 2 s (") and "\n" not in message
    assert "run the same command again to resume" in message and "Connection refused" in message
    assert len(sent) >= 3 and 2 <= elapsed < 6, (len(sent), elapsed)  # retried, and never past the budget


def test_errors_that_a_retry_cannot_fix_are_raised_at_once(sqlite_store) -> None:
    c, exp = sqlite_store
    run_id = c.create_run(exp).info.run_id
    c.log_param(run_id, "lr", "0.1")
    slow = patient(c, retry_s=60)
    started = time.monotonic()
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        slow.log_param(run_id, "lr", "0.2")
    assert time.monotonic() - started < 5
    for transient in (lost_answer("x"), MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)):
        assert tracking_retry.is_transient(transient)
    response = requests.Response()
    for status, expected in ((503, True), (429, True), (404, False), (400, False)):
        response.status_code = status
        assert tracking_retry.is_transient(requests.exceptions.HTTPError(response=response)) is expected
    assert not tracking_retry.is_transient(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    # what the MLflow server answered under load (bench/tracking_load.py, SQLite, 64 trials): a 400 whose
    # request did nothing, because the server's database pool was exhausted
    overloaded = RestException({"error_code": "BAD_REQUEST", "message": "QueuePool limit of size 5 overflow 10 "
                                "reached, connection timed out, timeout 30.00 (Background on this error at: "
                                "https://sqlalche.me/e/21/3o7r)"})
    assert tracking_retry.is_transient(overloaded)
    assert not tracking_retry.is_transient(RestException({"error_code": "BAD_REQUEST", "message": "bad key"}))


def test_a_create_run_whose_answer_was_lost_leaves_one_run_per_key(sqlite_store) -> None:
    c, exp = sqlite_store
    lossy = LosesAnswers(c, create_run=1)
    run_id = tracking.attach_trial_run(patient(lossy), exp, "key1", "trial 1", {})
    assert lossy.calls["create_run"] == 2  # the store made two runs
    runs = tracking.find_runs(c, exp, "tags.`dpl.trial_key` = 'key1'")
    assert [r.info.run_id for r in runs] == [run_id]
    # a create the server executes late, after the trial attached and logged: dropped at the end
    tracking.log_params_once(c, run_id, {"seed": 0})
    late = c.create_run(exp, tags={tracking.KEY_TAG: "key1", tracking.KIND_TAG: "trial"}).info.run_id
    other = c.create_run(exp, tags={tracking.KEY_TAG: "key1", tracking.KIND_TAG: "trial"}).info.run_id
    c.log_param(other, "seed", "1")  # a run that holds data is never deleted
    tracking.drop_empty_duplicates(c, exp, "key1", run_id)
    assert {r.info.run_id for r in tracking.find_runs(c, exp, "tags.`dpl.trial_key` = 'key1'")} == {run_id, other}
    assert c.get_run(late).info.lifecycle_stage == "deleted"


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_metric_batch_whose_answer_was_lost_is_logged_once(tmp_path, monkeypatch, sqlite_store, kind) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    c, exp = file_store(tmp_path) if kind == "file" else sqlite_store
    run_id = c.create_run(exp).info.run_id
    lossy = LosesAnswers(c, log_batch=2)
    reporter = TuneMlflowReporter(patient(lossy), run_id, tmp_path / "ckpt")
    for epoch in (1, 2, 3):
        reporter.log_metrics(epoch, {"train/loss": 1.0 / epoch, "val/psnr": 20.0 + epoch})
    # the store did each lost batch's work: the read-back found it there, so nothing was sent again
    assert lossy.calls["log_batch"] == 3
    for key in ("train/loss", "val/psnr"):
        assert [m.step for m in c.get_metric_history(run_id, key)] == [1, 2, 3], key
    assert [m.step for m in c.get_metric_history(run_id, "attempt/start_epoch")] == [1]


def checkpoint(tmp_path: Path, epoch: int) -> Path:
    d = tmp_path / f"stage-{epoch}"
    d.mkdir()
    torch.save({"epoch": epoch}, d / CHECKPOINT_FILE)
    (d / "extra.bin").write_bytes(bytes([epoch]) * 1000)
    return d


def test_an_epoch_in_mlflow_mode_is_sent_again_and_its_pointer_moves_only_after_the_upload(tmp_path,
                                                                                          sqlite_store) -> None:
    """What a trial's reporter sends per epoch in checkpoint mode `mlflow` (upload, then metrics + pointer in
    one batch, then the delete), with answers lost; then a server that goes away during an upload."""
    c, exp = sqlite_store
    run_id = c.create_run(exp).info.run_id
    lossy = LosesAnswers(c, log_artifacts=1, log_batch=1)
    reporter = TuneMlflowReporter(patient(lossy), run_id, tmp_path / "node", mode="mlflow")
    for epoch in (1, 2):
        reporter.record(epoch, {"train/loss": 1.0 / epoch}, checkpoint(tmp_path, epoch))
    assert lossy.calls == {"log_artifacts": 3, "log_batch": 3}  # one of each sent twice
    assert [a.path for a in c.list_artifacts(run_id, ac.ARTIFACT_ROOT)] == ["checkpoint/v000002"]
    assert ac.pointer(c, run_id) == "checkpoint/v000002"
    assert load_checkpoint(ac.download(c, run_id, tmp_path / "dl"))["epoch"] == 2
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2]
    # the server goes away during epoch 3's upload and stays away past the budget: the pointer stays on the
    # complete version 2 (what a resumed trial downloads), and epoch 3's metrics wait for its re-run
    down = tracking_retry.PatientClient(Unreachable(c, "log_artifacts"), 1, "http://127.0.0.1:5000")
    with pytest.raises(tracking_retry.TrackingUnavailable):
        TuneMlflowReporter(down, run_id, tmp_path / "node2", mode="mlflow").record(3, {"train/loss": 0.3},
                                                                                 checkpoint(tmp_path, 3))
    assert ac.pointer(c, run_id) == "checkpoint/v000002"
    assert load_checkpoint(ac.download(c, run_id, tmp_path / "dl2"))["epoch"] == 2
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2]
