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
import time
import tempfile
import traceback
from pathlib import Path
from typing import Any

from study import artifact_checkpoints, tracking
from study.spec import DATA_ROOT_ENV
from trainables.config import TrialConfig, is_synthetic, trial_key
from trainables.reporting import START_EPOCH_METRIC, newest_checkpoint, store_checkpoint

#: Tag: how many attempts of this trial have started in its run (1 for a trial never interrupted).
ATTEMPTS_TAG = "dpl.attempts"


class TuneMlflowReporter:
    """Reporter for a trial under Ray Tune, logging to the trial's MLflow run.

    Metrics are logged before the checkpoint is copied, so a kill in between loses no metric; the resumed
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

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        from ray import tune

        values = {k: float(v) for k, v in metrics.items()}
        self.log_metrics(epoch, values)
        self.last = values
        ray_metrics = {"epoch": epoch, **{k.replace("/", "."): v for k, v in values.items()}}
        if checkpoint_dir is None:
            tune.report(ray_metrics)
            return
        if self.mode == "mlflow":  # resume comes from the run, so Ray needs no (shared) storage for it
            artifact_checkpoints.upload(self.client, self.run_id, Path(checkpoint_dir))
            tune.report(ray_metrics)
            return
        store_checkpoint(Path(checkpoint_dir), self.checkpoint_dir)
        tune.report(ray_metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    def log_metrics(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, epoch) for k, v in values.items() if epoch > self.logged_steps.get(k, -1)]
        if self.start_epoch is None:  # this attempt's first epoch: record where it started
            self.start_epoch = epoch
            batch.append(Metric(START_EPOCH_METRIC, float(epoch), now, self.attempt))
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])
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


def run_config_trial(payload: dict[str, Any]) -> None:
    """The Tune trainable. `payload` = {"trial": TrialConfig dict, "study": {...tracking settings}}.

    A Python exception inside the task is recorded (run FAILED, `dpl.error` tag) and the trial ends
    normally, so Ray does not retry a deterministic error; only a dead worker is restarted by Ray.
    """
    import torch
    from ray import tune

    from trainables.tasks import epoch_metric, task_module
    from trainables.trial import BASELINE_INFO, NO_NETWORK, run_trial

    study = payload["study"]
    config = TrialConfig.from_dict(payload["trial"])
    synthetic = _planned_synthetic(config, study.get("synthetic") or {})
    key = trial_key(config, synthetic=True if synthetic else None)
    mode = study.get("checkpoints", "shared")
    cpus = study.get("cpus_per_trial") or 1
    torch.set_num_threads(max(1, int(cpus)))
    c = tracking.client(study["tracking_uri"])
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
    run_name = (study.get("run_names") or {}).get(key) or tracking.trial_run_name(config)  # distinct in the plan
    run_id = tracking.attach_trial_run(c, study["experiment_id"], key, run_name, tags)
    params = {k: getattr(config, k) if k != "point" else config.point for k in tracking.CONFIG_PARAMS}
    params.update({f"hp.{k}": v for k, v in config.params.items()})
    params["git_commit"] = study.get("git_commit")
    tracking.log_params_once(c, run_id, params)
    scratch = Path(tempfile.mkdtemp(prefix=f"dpl-{key}-")) if mode == "mlflow" else None
    reporter = TuneMlflowReporter(c, run_id, scratch or Path(study["study_dir"]) / "checkpoints" / key, mode=mode)
    try:
        if synthetic:
            config = _local_synthetic(config, synthetic)
        else:
            config = node_data(config, study.get("data_root"), os.environ.get(DATA_ROOT_ENV))
        final = run_trial(config, reporter)
        newest = newest_checkpoint(reporter.checkpoint_dir) if mode == "shared" else None
        if newest is not None:  # (mode mlflow: the run already holds it, under the dpl.checkpoint tag)
            c.log_artifacts(run_id, str(newest.resolve()), artifact_path="checkpoint")
    except Exception as exc:  # noqa: BLE001 - recorded, not retried (see docstring)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        tracking.finish_run(c, run_id, tracking.FAILED, message)
        traceback.print_exc()
        tune.report({"dpl_failed": 1, "error": message[:500]})
        return
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    tracking.describe_trial_run(c, run_id, config, final, task.PRIMARY_METRIC, task.METRICS, run_name=run_name)
    tracking.finish_run(c, run_id, tracking.FINISHED)
    tune.report({"dpl_done": 1, **{k.replace("/", "."): v for k, v in final.items()}})
