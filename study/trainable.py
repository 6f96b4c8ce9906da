"""The Ray Tune function trainable: one trial = `trainables.trial.run_trial` with a Tune + MLflow reporter.

Where checkpoints go depends on the study's checkpoint mode (`study.artifact_checkpoints.resolve_mode`):

- `shared` (file/SQLite tracking, a study directory every node mounts): to Ray (so `FailureConfig`
  restarts a trial whose worker died) and to the study's own `checkpoints/<trial key>/` directory (a link
  swapped by `trainables.reporting.store_checkpoint`, so a kill never leaves it half-written), written
  before `tune.report` returns. A trial resumes from the latter, which is always the newest: Ray's
  experiment state can lag it by an epoch or two, and a fresh driver launch (new Tuner, new Ray trial
  ids) still finds it by key.
- `mlflow` (an MLflow server): to the trial's MLflow run only (a new artifact version, then the run's
  `dpl.checkpoint` tag moved to it), and resumed from there on any node; the trial touches neither the
  head's study directory nor Ray's storage (`tune.report` carries no checkpoint). Synthetic data the node
  cannot see is regenerated in its cache and checked against the plan's hash.

Every attempt is recorded in the run (`dpl.attempts`, `attempt/start_epoch`), so whether a restarted trial
resumed or started over is visible, not assumed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import tempfile
import traceback
from pathlib import Path
from typing import Any

from study import artifact_checkpoints, tracking, tracking_retry
from study.spec import DATA_ROOT_ENV
from trainables.config import TrialConfig, is_synthetic, trial_key
from trainables.reporting import START_EPOCH_METRIC, newest_checkpoint, store_checkpoint

#: Tag: how many attempts of this trial have started in its run (1 for a trial never interrupted).
ATTEMPTS_TAG = "dpl.attempts"
#: The GPU share a trial ran with: the param holds the first attempt's (params cannot change), the metric
#: every attempt's at step = attempt, so a relaunch with another --gpu-memory is recorded, not refused.
GPU_FRACTION_PARAM, GPU_FRACTION_METRIC = "gpu_fraction", "attempt/gpu_fraction"


class TuneMlflowReporter:
    """Reporter for a trial under Ray Tune, logging to the trial's MLflow run.

    In mode `shared` metrics are logged before the checkpoint is copied, so a kill in between loses no metric
    (in mode `mlflow` they go with the checkpoint's commit, see `record`); the resumed
    trial then re-runs that epoch from the previous checkpoint, and `logged_steps` (what the run holds:
    read when this attempt starts, updated as it logs) keeps a metric from being logged twice at one step,
    also when a task's final report repeats the last epoch's metrics. Only (metric, step) pairs already
    present are skipped: a final metric reported at the last epoch's step still gets logged.

    Because of that skip, a trial that restarted from epoch 1 would leave the same history as one that
    resumed; so each attempt is recorded: constructing the reporter starts attempt n (tag `dpl.attempts` = n),
    and its first logged epoch e goes to metric `attempt/start_epoch` = e at step n. A trial never
    interrupted has one attempt starting at 1; a resumed one starts at its checkpoint's epoch + 1; an
    attempt that died before logging an epoch leaves its step missing.
    """

    def __init__(self, client: Any, run_id: str, checkpoint_dir: Path, mode: str = "shared") -> None:
        """`checkpoint_dir`: the study's `checkpoints/<key>` (mode `shared`), or a node-local scratch folder
        that resumed checkpoints are downloaded into (mode `mlflow`)."""
        self.client = client
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.mode = mode
        self.last: dict[str, float] = {}
        run = client.get_run(run_id)
        self.logged_steps = _logged_steps(client, run)
        self.attempt = int(run.data.tags.get(ATTEMPTS_TAG, "0")) + 1
        self.start_epoch: int | None = None
        client.set_tag(run_id, ATTEMPTS_TAG, str(self.attempt))
        self.checkpoints = artifact_checkpoints.RunCheckpoints(client, run_id)  # mode mlflow's versions

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        from ray import tune

        values = {k: float(v) for k, v in metrics.items()}
        shared = self.record(epoch, values, checkpoint_dir)
        ray_metrics = {"epoch": epoch, **{k.replace("/", "."): v for k, v in values.items()}}
        if shared:  # Ray keeps a copy too, for FailureConfig restarts (mode `mlflow`: resume reads the run)
            tune.report(ray_metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        else:
            tune.report(ray_metrics)

    def record(self, epoch: int, values: dict[str, float], checkpoint_dir: Path | None = None) -> bool:
        """Everything an epoch leaves in MLflow and the study: its metrics and its checkpoint. True when the
        checkpoint went to the study directory (Ray should get it too). What `report` does before Tune, and
        what `bench/tracking_load.py` times.

        Mode `mlflow`: the checkpoint is uploaded as a new version first; then the epoch's metrics and the
        pointer's move to that version go in one request (the commit point: the pointer never names a
        partial upload, and a kill before it re-runs this epoch from the previous checkpoint, which logs its
        metrics then); then the older version is deleted. Three requests an epoch for a one-file checkpoint.
        Mode `shared`: metrics first, then the checkpoint swapped into the study directory."""
        self.last = values
        if checkpoint_dir is not None and self.mode == "mlflow":  # resume reads the run: no shared storage
            path = self.checkpoints.stage(Path(checkpoint_dir))
            self.log_metrics(epoch, values, tags={artifact_checkpoints.POINTER_TAG: path})
            self.checkpoints.committed(path)
            return False
        self.log_metrics(epoch, values)
        if checkpoint_dir is None:
            return False
        store_checkpoint(Path(checkpoint_dir), self.checkpoint_dir)
        return True

    def log_metrics(self, epoch: int, values: dict[str, float], tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, epoch) for k, v in values.items() if epoch > self.logged_steps.get(k, -1)]
        if self.start_epoch is None:  # this attempt's first epoch: record where it started
            self.start_epoch = epoch
            batch.append(Metric(START_EPOCH_METRIC, float(epoch), now, self.attempt))
        tracking_retry.log_metrics_once(self.client, self.run_id, batch, tags)  # once, also when sent again
        self.logged_steps.update({m.key: m.step for m in batch})

    def log_artifact(self, path: Path, subdir: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=subdir or None)

    def set_info(self, info: dict[str, Any]) -> None:
        tracking.log_params_once(self.client, self.run_id, info)
        for key in ("weights_random", "synthetic_data"):
            if key in info:
                self.client.set_tag(self.run_id, f"dpl.{key}", str(bool(info[key])).lower())

    def resume_dir(self) -> Path | None:
        if self.mode == "mlflow":
            return artifact_checkpoints.download(self.client, self.run_id, self.checkpoint_dir)
        newest = newest_checkpoint(self.checkpoint_dir)
        if newest is not None:
            return newest
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        local = Path(tempfile.mkdtemp(prefix="dpl-resume-"))
        return Path(ckpt.to_directory(str(local)))


def _logged_steps(client: Any, run: Any) -> dict[str, int]:
    """metric -> newest step already in the run's history (empty for a run that logged nothing yet)."""
    return {key: max(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def _planned_synthetic(config: TrialConfig, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's manifest of this trial's data when that is the study's generated data, else None."""
    entry = manifest.get(config.dataset)
    return entry if entry and entry.get("root") == config.data_root else None


def _local_synthetic(config: TrialConfig, entry: dict[str, Any]) -> TrialConfig:
    """The config reading the study's generated data where this node has it: the driver's copy when this
    node sees it (a shared study directory), else a copy regenerated in this node's cache with the same
    hash (`trainables.data.manifest.local_copy`; a mismatch is a one-line DataError)."""
    if is_synthetic(config.data_root):
        return config
    from trainables.data.manifest import local_copy

    root = local_copy(config.dataset, entry["generator"], int(entry["seed"]), entry["size"], entry["sha256"])
    return dataclasses.replace(config, data_root=str(root))


def node_data(config: TrialConfig, driver_root: str | None, node_root: str | None) -> TrialConfig:
    """The config reading a real dataset from this node's own data root (`DPL_DATA_ROOT` in the environment
    `ray start` ran with), when the driver's data root (`driver_root`) holds it at `driver_root/<rel>` and this
    node has `node_root/<rel>`: nodes without a shared mount each `dpl data fetch all --out <their root>`.
    Otherwise the driver's path, as on a shared mount or a node laid out like the head. The trial key is the
    driver's either way (it is computed before)."""
    if not driver_root or not node_root or is_synthetic(config.data_root):
        return config
    try:
        rel = Path(config.data_root).relative_to(driver_root)
    except ValueError:  # a dataset the spec names by an absolute path outside the data root
        return config
    local = Path(node_root).expanduser().resolve() / rel
    return dataclasses.replace(config, data_root=str(local)) if local.exists() else config


def granted_gpu() -> float:
    """The share of a GPU Ray gave this trial (its placement group's GPU; 0 without one)."""
    from ray import tune

    return float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0))


def record_gpu_share(c: Any, run_id: str, gpu: float, attempt: int) -> None:
    """The GPU share this attempt runs with: param `gpu_fraction` once (the first attempt's: MLflow refuses a
    param re-logged with another value, and a relaunch with another --gpu-memory may ask for another share),
    metric `attempt/gpu_fraction` at step = attempt for every attempt."""
    tracking.log_params_once(c, run_id, {GPU_FRACTION_PARAM: gpu})
    c.log_metric(run_id, GPU_FRACTION_METRIC, gpu, step=attempt)


def run_config_trial(payload: dict[str, Any]) -> None:
    """The Tune trainable. `payload` = {"trial": TrialConfig dict, "study": {...tracking settings}}.

    A Python exception inside the task is recorded (run FAILED, `dpl.error` tag) and the trial ends
    normally, so Ray does not retry a deterministic error; only a dead worker is restarted by Ray. A
    tracking server that stays unreachable past the study's `tracking_retry_s` ends the trial the same way
    with one line, but nothing can be recorded then: its run keeps what it holds (RUNNING), and the next
    launch resumes it from its last checkpoint.
    """
    import torch
    from ray import tune

    study = payload["study"]
    config = TrialConfig.from_dict(payload["trial"])
    torch.set_num_threads(max(1, int(study.get("cpus_per_trial") or 1)))
    c = tracking.client(study["tracking_uri"], retry_s=study.get("tracking_retry_s"))
    try:
        final, error = _tracked_trial(c, study, config)
    except tracking_retry.TrackingUnavailable as exc:
        final, error = {}, str(exc)
        print(f"dpl: {error}", file=sys.stderr)
    if error:
        tune.report({"dpl_failed": 1, "error": error[:500]})
    else:
        tune.report({"dpl_done": 1, **{k.replace("/", "."): v for k, v in final.items()}})


def trial_tags(config: TrialConfig, study: dict[str, Any]) -> dict[str, str]:
    """The tags a trial's run is created with (besides its key and kind)."""
    from trainables.tasks import epoch_metric, task_module
    from trainables.trial import BASELINE_INFO, NO_NETWORK

    task = task_module(config.task)
    tags = {
        tracking.STUDY_TAG: study["name"],
        "mlflow.parentRunId": study["parent_run_id"],
        "dpl.primary_metric": task.PRIMARY_METRIC,
        "dpl.directions": json.dumps(task.METRICS),
        "dpl.weights_random": str(config.weights == "random").lower(),
    }
    declared = epoch_metric(task)
    if declared:  # what the analysis reads the per-epoch ranking from, and a halving search stops on
        tags.update({tracking.EPOCH_METRIC_TAG: declared[0], tracking.EPOCH_MODE_TAG: declared[1]})
    if config.network == NO_NETWORK:  # the pixel-loss baseline: analysis reports it beside the ranking
        tags.update({f"dpl.{k}": v for k, v in BASELINE_INFO.items()})
    return tags


def trial_params(config: TrialConfig, git_commit: str | None) -> dict[str, Any]:
    """The params every trial run holds (README, MLflow schema): the config, its task settings, the commit."""
    params = {k: getattr(config, k) if k != "point" else config.point for k in tracking.CONFIG_PARAMS}
    params.update({f"hp.{k}": v for k, v in config.params.items()})
    params["git_commit"] = git_commit
    return params


def scratch_dir(key: str) -> Path:
    """A new local folder for one attempt's checkpoints in mode mlflow (each is uploaded, then deleted),
    `<tmp>/dpl-<key>-<pid>-*`, after removing those of the same trial whose process has died.

    An attempt removes its own folder when it ends, but a killed one cannot (a preempted node, a SIGKILLed
    worker), and a kill mid-write leaves up to a whole checkpoint there (70 MB for an SVHN autoencoder): the
    next attempt of the trial on that node cleans up after it. A live process's folder is never touched:
    another study on this node may run a trial with the same key (the key is the config's hash)."""
    prefix = f"dpl-{key}-"
    for old in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = old.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def _tracked_trial(c: Any, study: dict[str, Any], config: TrialConfig) -> tuple[dict[str, float], str]:
    """Attach the trial's run, run the task into it, close it: (final metrics, "") or ({}, one-line error)."""
    from trainables.tasks import task_module
    from trainables.trial import run_trial

    synthetic = _planned_synthetic(config, study.get("synthetic") or {})
    key = trial_key(config, synthetic=True if synthetic else None)
    mode = study.get("checkpoints", "shared")
    task = task_module(config.task)
    run_name = (study.get("run_names") or {}).get(key) or tracking.trial_run_name(config)  # distinct in the plan
    run_id = tracking.attach_trial_run(c, study["experiment_id"], key, run_name, trial_tags(config, study))
    tracking.log_params_once(c, run_id, trial_params(config, study.get("git_commit")))
    scratch = scratch_dir(key) if mode == "mlflow" else None
    try:
        reporter = TuneMlflowReporter(c, run_id, scratch or Path(study["study_dir"]) / "checkpoints" / key, mode=mode)
        record_gpu_share(c, run_id, granted_gpu(), reporter.attempt)
        if synthetic:
            config = _local_synthetic(config, synthetic)
        else:
            config = node_data(config, study.get("data_root"), os.environ.get(DATA_ROOT_ENV))
        final = run_trial(config, reporter)
        newest = newest_checkpoint(reporter.checkpoint_dir) if mode == "shared" else None
        if newest is not None:  # (mode mlflow: the run already holds it, under the dpl.checkpoint tag)
            c.log_artifacts(run_id, str(newest.resolve()), artifact_path="checkpoint")
    except tracking_retry.TrackingUnavailable:
        raise  # nothing can be recorded; the caller ends the trial with the line
    except Exception as exc:  # noqa: BLE001 - recorded, not retried (see run_config_trial)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        traceback.print_exc()
        tracking.finish_run(c, run_id, tracking.FAILED, message)
        return {}, message
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    tracking.drop_empty_duplicates(c, study["experiment_id"], key, run_id)
    tracking.describe_trial_run(c, run_id, config, final, task.PRIMARY_METRIC, task.METRICS, run_name=run_name)
    tracking.finish_run(c, run_id, tracking.FINISHED)
    return final, ""
