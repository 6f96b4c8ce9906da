"""The batch runner: one Ray Tune `Tuner` over a list of planned trials, and the MLflow clean-up after it.

Both ways of choosing what to run use it: the grid (`study.driver`) hands it every unfinished trial of the
plan, a search (`study.search`, `study.halving`) hands it the trials of its samples. It knows nothing of
how they were chosen, so imports run one way: driver -> halving -> search -> batch, driver -> batch.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from study import tracking
from study.plan import PlannedTrial
from study.spec import StudySpec


def _concurrency(spec: StudySpec, trials: list[PlannedTrial]) -> int:
    """How many trials run at once: max_concurrent, else what the cluster's CPUs/GPUs allow (for the ETA;
    with gpu auto, at a typical trial's share)."""
    import ray

    from study.resources import typical_gpu

    n_trials, have = len(trials), ray.cluster_resources()
    res = {"cpu": spec.raw["resources"]["cpu"], "gpu": typical_gpu(spec, [t.config for t in trials])}
    fits = [int(have.get(k.upper(), 0) // res[k]) for k in ("cpu", "gpu") if res.get(k)]
    limit = min([spec.raw["max_concurrent"] or n_trials, n_trials, *fits])
    return max(1, limit)


@contextmanager
def scoped_env(values: dict[str, str], keep_existing: bool = False) -> Iterator[None]:
    """Set environment variables for a block, then put back what was there (Tune and MLflow read some of
    their switches from os.environ when they start). A driver run in-process (a notebook, a test) leaves
    its caller's environment as it found it; `keep_existing`: only fill in what is unset (defaults)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if not (keep_existing and old[k] is not None)})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_storage_path(spec: StudySpec) -> str:
    """Ray Tune's `storage_path`: the spec's `ray_storage` (a path on the head, or an object-store URI such as
    s3://bucket/dpl, which Ray writes through pyarrow), else `<study>/ray`. Only Tune's own experiment state
    lives there: resume reads MLflow and the trial checkpoints, so a local path on the head is enough."""
    given = spec.raw.get("ray_storage")
    if given and "://" in given:
        return given
    path = Path(given).expanduser().resolve() if given else spec.study_dir / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def run_batch(spec: StudySpec, trials: list[PlannedTrial], study_info: dict[str, Any], verbose: bool = False,
              planned: int | None = None, already_finished: int = 0, scheduler: Any = None) -> Any:
    """One Tuner over `trials` (a grid over their configs); returns Tune's ResultGrid.

    `scheduler`: a Tune trial scheduler (`study.halving.HalvingScheduler` stops trials early); default FIFO.

    Tune's own tables (status every few seconds, config and result per trial) only when `verbose`;
    otherwise `study.console` prints one line per trial event and a progress line over the `planned`
    trials of the study (`already_finished` of them skipped), and Tune's per-error tracebacks are off.
    """
    from ray import tune

    from study.console import TrialConsole, tune_callback
    from study.resources import tune_resources
    from study.trainable import run_config_trial

    callbacks = [] if verbose else [tune_callback(TrialConsole(
        planned=planned or len(trials), launch=len(trials), already_finished=already_finished,
        concurrency=_concurrency(spec, trials),
        names=_by_config_key(trials, study_info.get("run_names"))))]  # others: their plain run name
    # a fixed share, or (resources.gpu: auto) each trial's own, looked up by its config (study.resources)
    trainable = tune.with_resources(run_config_trial, tune_resources(spec, [t.config for t in trials]))
    storage = ray_storage_path(spec)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.config.to_dict() for t in trials]), "study": study_info},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=spec.raw["max_concurrent"] or None,
            scheduler=scheduler,
            reuse_actors=True,
            trial_dirname_creator=lambda t: f"{t.config['trial']['task']}-{t.config['trial']['network']}-{t.trial_id}",
            trial_name_creator=lambda t: f"{t.config['trial']['network']}:{'+'.join(t.config['trial']['points']) or 'pixel'}",
        ),
        run_config=tune.RunConfig(
            name=f"launch-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=spec.raw["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1 if verbose else 0,
            callbacks=callbacks,
        ),
    )
    # quiet: Ray's new console output prints its experiment header even at verbose=0, the classic one
    # nothing; and no traceback per failed task (the console's FAILED line has the one-line error)
    quiet = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
    # a scheduler's metric is in every epoch's result, not in a trial's last one (`dpl_done` or `dpl_failed`
    # with the final metrics), which Tune would otherwise refuse; the scheduler ignores results without it
    lenient = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"} if scheduler is not None else {}
    with scoped_env({**({} if verbose else quiet), **lenient}):
        return tuner.fit()


def _by_config_key(trials: list[PlannedTrial], run_names: dict[str, str] | None) -> dict[str, str]:
    """`distinct_run_names` re-keyed by `trial_key(config)`, the key the console looks names up by."""
    from trainables.config import trial_key

    return {trial_key(t.config): run_names[t.key] for t in trials if t.key in (run_names or {})}


def close_orphans(c: Any, experiment_id: str, keys: set[str], results: Any) -> None:
    """Runs left RUNNING after Tune gave up on a trial (worker died more than max_failures times)."""
    errors = {}
    for r in results or []:
        key = None
        trial_cfg = (r.config or {}).get("trial") if r.config else None
        if trial_cfg:
            from trainables.config import TrialConfig, trial_key

            key = trial_key(TrialConfig.from_dict(trial_cfg))
        if key and r.error is not None:
            errors[key] = f"{type(r.error).__name__}: {str(r.error).splitlines()[0] if str(r.error) else ''}"
        elif key and (r.metrics or {}).get("dpl_failed"):  # a trial that could not reach the tracking server
            errors[key] = str(r.metrics.get("error", ""))
    for key, run in tracking.runs_by_key(c, experiment_id).items():
        if key in keys and run.info.status == tracking.RUNNING:
            tracking.finish_run(c, run.info.run_id, tracking.FAILED,
                                errors.get(key, "trial ended without reporting (worker died); rerun to resume"))


