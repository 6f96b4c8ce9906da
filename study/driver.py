"""The driver: plan the study, skip what MLflow says is finished, run the rest as Ray Tune trials.

Resume needs no Ray state: every launch builds a fresh Tuner over the trials that are not FINISHED in
MLflow, and each trial reattaches to its run and checkpoint by key. So a relaunch after `kill -9` of the
driver, a relaunch on a new Ray cluster, and a spec with newly added grid points all work the same way,
which `Tuner.restore` (fixed trial list, lagging checkpoints, new trial ids) cannot offer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import tracking
from study.artifact_checkpoints import carry_over, resolve_mode
from study.batch import close_orphans, run_batch, scoped_env
from study.lock import study_lock
from study.plan import (PlannedTrial, ensure_synthetic_data, expand, load_planned, longest_first, plan_summaries,
                        save_plan, synthetic_manifest)
from study.spec import StudySpec, save_spec
from study.tracking_retry import TrackingUnavailable
from trainables.errors import UserError

#: Study-run tag: the checkpoint mode of the newest launch (param `checkpoints` keeps the first launch's).
CHECKPOINTS_TAG = "dpl.checkpoints"
#: Study-run tag: JSON {task: module} of the tasks of the user's own the study uses (`plugins` in study.yaml).
PLUGINS_TAG = "dpl.plugins"

#: Quiet, private and offline-friendly defaults for every process of a study (driver and workers).
STUDY_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "1",
    # MLflow prints "View run ... at: URL" at every run's end, after one more get_run request (the console
    # prints the study's URL itself)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def apply_cli_overrides(spec: StudySpec, gpus_per_trial: float | None, cpus_per_trial: float | None,
                        max_concurrent: int | None, gpu_memory: float | None = None) -> None:
    from study.resources import use_gpu_memory
    from study.spec import validate

    use_gpu_memory(spec, gpu_memory, gpus_per_trial)
    if gpus_per_trial is not None:
        spec.raw["resources"]["gpu"] = gpus_per_trial
    if cpus_per_trial is not None:
        spec.raw["resources"]["cpu"] = cpus_per_trial
    if max_concurrent is not None:
        spec.raw["max_concurrent"] = max_concurrent
    spec.raw.update(validate({k: v for k, v in spec.raw.items()}))


def running_ray(address: str | None) -> bool:
    """Whether this process already has Ray initialised (a notebook's or a script's own `ray.init`).

    That Ray is used as it is (its resources, its runtime env) and left running. Asking for another
    cluster with `--address` while connected to one is refused: Ray cannot hold two connections.
    """
    if "ray" not in sys.modules:  # never imported, so never initialised (keeps a finished relaunch light)
        return False
    import ray

    if not ray.is_initialized():
        return False
    current = ray.get_runtime_context().gcs_address
    if address and address != "auto" and address.removeprefix("ray://") != current:
        raise UserError(f"Ray is already initialised in this process (cluster {current}), so --address "
                        f"{address} cannot be used; drop --address to run there, or call ray.shutdown() first")
    return True


def _init_ray(spec: StudySpec, address: str | None, verbose: bool = False) -> bool:
    """Connect to Ray at `address`, or start a private local one (`study.local_ray`: never a cluster that
    is merely running on this machine); True when this process connected or started it and must shut it down.

    False means Ray was already initialised here (see `running_ray`): it is ready and used as it is.
    Workers' stdout/stderr reach this console only when `verbose` (`dpl run --verbose`): otherwise each
    trial is one line per event (`study.console`); a failure's one-line error is in that line and in
    MLflow (`dpl.error`), its traceback in Ray's worker logs (`<ray temp dir>/session_latest/logs`, by
    default /tmp/ray).
    """
    import ray

    if ray.is_initialized():
        return False
    passed = ("TORCH_HOME", "DPL_CACHE_DIR", "DPL_TASKS", "PYTHONPATH", *tracking.CREDENTIAL_ENV)
    env = {**STUDY_ENV, **{k: v for k, v in os.environ.items() if k in passed}}
    kwargs: dict[str, Any] = {"include_dashboard": False, "runtime_env": {"env_vars": env},
                              "log_to_driver": verbose, "configure_logging": False}
    from study import local_ray

    if address:
        with local_ray.quiet_logs(verbose):
            ray.init(address=address, **kwargs)
        return True
    kwargs.update({k: v for k, v in spec.raw.get("ray", {}).items() if v is not None})
    local_ray.start(kwargs, verbose)
    return True


def distinct_run_names(plan: list[PlannedTrial]) -> dict[str, str]:
    """trial key -> MLflow run name, for the trials whose plain name (`tracking.trial_run_name`) another
    trial of the plan shares, e.g. a grid over a task setting (lr=[1e-3, 1e-4]): those get the settings
    that differ appended, as the console shows them. Over the whole plan, so a relaunch names them alike."""
    from study.console import display_names
    from trainables.config import trial_key

    shown = display_names([t.config for t in plan])
    return {t.key: shown[trial_key(t.config)] for t in plan
            if shown[trial_key(t.config)] != tracking.trial_run_name(t.config)}


def coverage(plan: list[PlannedTrial], runs: dict[str, Any]) -> dict[str, Any]:
    """planned / finished / stopped (early, by a halving search) / failed / running / pending counts."""
    counts = {"planned": len(plan), "finished": 0, "stopped": 0, "failed": 0, "running": 0, "pending": 0}
    for t in plan:
        counts[tracking.run_state(runs.get(t.key))] += 1
    return counts


@dataclass
class Launch:
    """What the driver knows once the store is ready: where to log, the plan, and what is left to run."""

    c: Any
    experiment_id: str
    parent_id: str
    plan: list[PlannedTrial]
    todo: list[PlannedTrial]
    synthetic: dict[str, dict[str, Any]]  # dataset -> manifest of the study's generated data (plan.json)


def _prepare(spec: StudySpec, tracking_uri: str) -> Launch:
    """Create or open the store and experiment, save the spec and plan, and find the unfinished trials.

    An Optuna search records the trials it draws as it draws them (`study.search.record_progress`), not the
    grid it draws from: its plan here is what earlier launches drew, and nothing is to run until it asks."""
    experiment_id = tracking.init_experiment(tracking_uri, spec.name, spec.study_dir)
    save_spec(spec)
    for root in ensure_synthetic_data(spec):
        print(f"dpl: generated synthetic data in {root}", file=sys.stderr)
    optuna = spec.raw["search"]["type"] == "optuna"
    plan = load_planned(spec.study_dir) if optuna else expand(spec)
    manifest = synthetic_manifest(spec)
    c = tracking.client(tracking_uri, retry_s=spec.raw["tracking_retry_s"])
    parent_id = tracking.parent_run(c, experiment_id, spec.name)
    c.update_run(parent_id, status=tracking.RUNNING)
    if not optuna:
        save_plan(spec, plan, manifest)
        tracking.log_plan(c, parent_id, [t.summary() for t in plan])
    runs = tracking.runs_by_key(c, experiment_id)
    todo = [] if optuna else [t for t in plan if not (t.key in runs and runs[t.key].info.status == tracking.FINISHED)]
    return Launch(c, experiment_id, parent_id, plan, todo, manifest)


@dataclass
class RayUse:
    """Ray for one launch: `ready` when trials can be submitted, `owned` when this process started it
    (and shuts it down at the end; a Ray the caller initialised before `run_study` is left running)."""

    ready: bool = False
    owned: bool = False


def _prepare_and_start_ray(spec: StudySpec, tracking_uri: str, ray_address: str | None,
                           verbose: bool = False) -> tuple[Launch, RayUse]:
    """`_prepare`, and Ray if anything is left to run; (launch, how Ray is used).

    On a new local store every trial is still to run, so Ray starts while MLflow creates the store in a
    thread: both take seconds (schema migrations 2-4 s, ray.init 3-4 s on 2 cores) and neither needs the
    other. An existing store is opened first, so a relaunch of a finished study never starts Ray.
    """
    search = spec.raw["search"]["type"] == "optuna"
    if not tracking.is_new_local_store(tracking_uri):
        launch = _prepare(spec, tracking_uri)
        if not (launch.todo or search):
            return launch, RayUse()
        return launch, RayUse(ready=True, owned=_init_ray(spec, ray_address, verbose))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpl-mlflow-setup") as pool:
        pending = pool.submit(_prepare, spec, tracking_uri)
        owned = _init_ray(spec, ray_address, verbose)
        try:
            return pending.result(), RayUse(ready=True, owned=owned)
        except BaseException:
            if owned:
                import ray

                ray.shutdown()
            raise


def run_study(
    spec: StudySpec,
    tracking_uri: str | None = None,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    ray_address: str | None = None,
    checkpoints: str | None = None,
    verbose: bool = False,
    gpu_memory: float | None = None,
) -> int:
    """Run every trial of `spec` that is not FINISHED yet. Exit code 0 when all are finished.

    `verbose`: Ray Tune's own tables and the workers' output on the console (`dpl run --verbose`);
    otherwise one line per trial event and a progress line (`study.console`).

    `checkpoints`: auto | shared | mlflow, where trials keep checkpoints (`study.artifact_checkpoints`).

    `gpu_memory`: GiB of one GPU; every trial asks for the share of it that its memory estimate needs
    (`study.resources`); a trial that fits no such GPU is refused before anything runs.
    """
    with scoped_env(STUDY_ENV, keep_existing=True):  # defaults, for this run only
        return _run_study(spec, tracking_uri, gpus_per_trial, cpus_per_trial, max_concurrent, ray_address,
                          checkpoints, verbose, gpu_memory)


def _run_study(spec: StudySpec, tracking_uri: str | None, gpus_per_trial: float | None,
               cpus_per_trial: float | None, max_concurrent: int | None, ray_address: str | None,
               checkpoints: str | None, verbose: bool, gpu_memory: float | None) -> int:
    apply_cli_overrides(spec, gpus_per_trial, cpus_per_trial, max_concurrent, gpu_memory)
    study_dir = spec.study_dir
    tracking_uri = tracking_uri or spec.raw.get("tracking_uri") or tracking.default_tracking_uri(study_dir)
    tracking.check_reachable(tracking_uri)  # before the lock: an unreachable server leaves no file behind
    with study_lock(study_dir):
        checkpoint_mode = resolve_mode(checkpoints or spec.raw.get("checkpoints"), tracking_uri)
        grid = expand(spec)  # validate every trial (networks, points, settings) before anything is written
        if spec.raw["search"]["type"] in ("grid", "halving"):  # an optuna search sizes each batch it draws
            from study.resources import is_auto, resource_table

            if is_auto(spec):  # every trial's share of a GPU, and a trial that fits none refused, before anything runs
                resource_table(spec, [t.config for t in grid])
        if spec.raw["search"]["type"] == "optuna":
            from study.search import search_space

            search_space(spec)  # and every combination a search can sample
        elif spec.raw["search"]["type"] == "halving":
            from study.halving import halving_setup

            halving_setup(spec, grid)  # one task and dataset, a per-epoch metric, a rung
        if running_ray(ray_address):
            print("dpl: using the Ray already initialised in this process (its resources and runtime env; "
                  "it is left running)", file=sys.stderr)
        launch, ray_use = _prepare_and_start_ray(spec, tracking_uri, ray_address, verbose)
        c, experiment_id, plan, todo = launch.c, launch.experiment_id, launch.plan, launch.todo
        weights_note = " (random loss-network weights: nothing can be downloaded here)" if spec.raw["weights"] == "random" else ""
        print(f"dpl: study {spec.name!r} in {study_dir}: {len(plan)} trials planned, "
              f"{len(plan) - len(todo)} already finished, {len(todo)} to run{weights_note}", file=sys.stderr)
        print(f"dpl: MLflow store {tracking_uri} (experiment {spec.name!r})", file=sys.stderr)
        for line in tracking.ui_hint(tracking_uri, experiment_id):
            print(f"dpl: {line}", file=sys.stderr)
        study_info = {
            "name": spec.name, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
            "parent_run_id": launch.parent_id, "study_dir": str(study_dir), "git_commit": git_commit(),
            "cpus_per_trial": spec.raw["resources"]["cpu"],
            "checkpoints": checkpoint_mode, "synthetic": launch.synthetic,
            "run_names": distinct_run_names(plan), "data_root": spec.raw.get("data_root"),
            "tracking_retry_s": spec.raw["tracking_retry_s"],
        }
        tracking.log_params_once(c, launch.parent_id, {"checkpoints": checkpoint_mode})  # the first launch's
        c.set_tag(launch.parent_id, CHECKPOINTS_TAG, checkpoint_mode)  # this launch's
        if spec.raw.get("plugins"):  # the modules of the user's own tasks (also in the saved spec)
            c.set_tag(launch.parent_id, PLUGINS_TAG, json.dumps(spec.raw["plugins"], sort_keys=True))
        moved = carry_over(c, tracking.runs_by_key(c, experiment_id), study_dir, checkpoint_mode)
        if moved:
            print(f"dpl: moved the checkpoints of {moved} interrupted trial(s) to "
                  f"{'their MLflow runs' if checkpoint_mode == 'mlflow' else study_dir / 'checkpoints'} "
                  f"(--checkpoints {checkpoint_mode}), where they resume from", file=sys.stderr)
        unreachable = False
        try:
            if ray_use.ready and spec.raw["search"]["type"] == "optuna":
                from study.search import run_optuna

                plan = run_optuna(spec, study_info, c, experiment_id, verbose=verbose)
            elif spec.raw["search"]["type"] == "halving":  # also with nothing to run: it records its progress
                from study.halving import run_halving

                run_halving(spec, plan, todo, study_info, c, experiment_id, verbose=verbose)
            elif ray_use.ready and todo:
                results = run_batch(spec, longest_first(todo), study_info, verbose=verbose, planned=len(plan),
                                    already_finished=len(plan) - len(todo))
                close_orphans(c, experiment_id, {t.key for t in todo}, results)
        except TrackingUnavailable:
            unreachable = True  # its one line is the error; the bookkeeping below would wait a second budget
            raise
        finally:
            search = ""
            try:
                if not unreachable:
                    if spec.raw["search"]["type"] == "optuna":
                        plan = load_planned(study_dir)  # what the search drew (it records each draw)
                    runs = tracking.runs_by_key(c, experiment_id)
                    cov = coverage(plan, runs)
                    summaries = plan_summaries(study_dir)  # as saved: a search's rows also name their samples
                    tracking.log_plan(c, launch.parent_id, summaries, cov)
                    tracking.describe_study_run(c, experiment_id, launch.parent_id, spec.name, summaries)
                    search = tracking.search_line(c.get_run(launch.parent_id).data.tags)
                    c.set_terminated(launch.parent_id, status=tracking.FINISHED)
            finally:
                if ray_use.owned:
                    import ray

                    ray.shutdown()
        print(f"dpl: done: {coverage_line(cov)}" + (f"; {search}" if search else ""), file=sys.stderr)
        for line in tracking.ui_hint(tracking_uri, experiment_id):
            print(f"dpl: {line}", file=sys.stderr)
        if cov.get("failed"):
            more = "" if verbose else "; their tracebacks: rerun with --verbose, or Ray's worker logs"
            print(f"dpl: {cov['failed']} trial(s) failed; see `dpl status {study_dir}`{more}", file=sys.stderr)
            return 1
        return 0


def coverage_line(cov: dict[str, Any]) -> str:
    """`8/8 finished, 0 failed, 0 running, 0 pending` (the dict, as a person reads it; a halving search adds
    `k stopped early` after the finished count)."""
    stopped = f"{cov['stopped']} stopped early, " if cov.get("stopped") else ""
    return (f"{cov.get('finished', 0)}/{cov.get('planned', 0)} finished, {stopped}{cov.get('failed', 0)} failed, "
            f"{cov.get('running', 0)} running, {cov.get('pending', 0)} pending")
