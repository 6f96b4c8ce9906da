"""Budgeted search with Optuna instead of a grid (e.g. "the best loss network for my task in 12 trials").

Ray's OptunaSearch refuses grid values and keeps its state in the Tuner, which this project never
restores. Here Optuna runs ask/tell against its own SQLite storage in the study directory; each asked
trial becomes an ordinary TrialConfig (same key, same MLflow run, same checkpoints), run in batches through
the grid driver. A driver killed mid-batch leaves Optuna trials RUNNING: the next launch re-runs exactly
those configs (their runs and checkpoints are found by key) and tells Optuna their results.

Space syntax (spec `search.space`):
  network: {choices: [vgg16, resnet18]}      point: {choices: [p1, p2, p3, p4]}
  params.lr: {low: 1.0e-4, high: 1.0e-2, log: true}      params.epochs: {low: 1, high: 5, int: true}
"""
from __future__ import annotations

import sys
from typing import Any

from study import tracking
from study.plan import PlannedTrial, data_root
from study.spec import StudySpec
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.tasks import task_module
from trainables.trial import prepare


def _suggest(trial: Any, name: str, dist: dict[str, Any]) -> Any:
    if "choices" in dist:
        return trial.suggest_categorical(name, dist["choices"])
    if "low" in dist and "high" in dist:
        if dist.get("int"):
            return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
        return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
    raise ConfigError(f"study spec: search.space.{name}: give choices: [...] or low/high (with int/log)")


def _config_for(spec: StudySpec, values: dict[str, Any]) -> TrialConfig:
    raw = spec.raw
    (task, settings), = raw["tasks"].items()
    module = task_module(task)
    networks = raw["networks"] if raw["networks"] != "all" else ["vgg16"]
    network = values.get("network", networks[0])
    point = values.get("point", "p1")
    params = dict(settings.get("params", {}))
    params.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("params.")})
    dataset = settings.get("datasets", [module.DATASETS[0]])[0]
    config = TrialConfig(
        task=task, network=network, points=(point,), dataset=dataset,
        variant=values.get("variant", settings.get("variants", [module.VARIANTS[0]])[0]),
        seed=raw["seeds"][0], weights=raw["weights"], normalisation=raw["normalisation"], mode=raw["mode"],
        transform_input=raw["transform_input"], budget=settings.get("budget", "smoke"), params=params,
        data_root=data_root(spec, task, dataset, settings.get("data", "synthetic")),
    )
    return prepare(config)


def _final_value(c: Any, run: Any, metric: str) -> float | None:
    history = c.get_metric_history(run.info.run_id, metric)
    return history[-1].value if history else None


def run_optuna(spec: StudySpec, study_info: dict[str, Any], c: Any, experiment_id: str) -> None:
    import optuna
    from optuna.trial import TrialState

    from study.driver import close_orphans, run_batch

    search = spec.raw["search"]
    if len(spec.raw["tasks"]) != 1:
        raise ConfigError("study spec: search.type optuna: give exactly one task under tasks")
    (task,) = spec.raw["tasks"]
    module = task_module(task)
    metric = search.get("metric") or module.PRIMARY_METRIC
    if metric not in module.METRICS:
        raise ConfigError(f"study spec: search.metric: {metric!r}; allowed: {', '.join(module.METRICS)}")
    direction = search.get("mode") or module.METRICS[metric]
    storage = f"sqlite:///{spec.study_dir / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction="maximize" if direction == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.raw["seeds"][0]))
    batch_size = int(search.get("batch_size") or spec.raw["max_concurrent"] or 2)
    while True:
        trials = study.get_trials(deepcopy=False)
        pending = [t for t in trials if t.state == TrialState.RUNNING]  # left by a killed driver
        done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in trials)
        if not pending and done >= search["num_samples"]:
            break
        batch: list[tuple[int, PlannedTrial]] = []
        for t in pending:
            cfg = TrialConfig.from_dict(t.user_attrs["config"])
            batch.append((t.number, PlannedTrial(trial_key(cfg), cfg)))
        while not pending and len(batch) < min(batch_size, search["num_samples"] - done):
            ot = study.ask()
            values = {name: _suggest(ot, name, dist) for name, dist in search["space"].items()}
            cfg = _config_for(spec, values)
            ot.set_user_attr("config", cfg.to_dict())
            ot.set_user_attr("trial_key", trial_key(cfg))
            batch.append((ot.number, PlannedTrial(trial_key(cfg), cfg)))
        runs = tracking.runs_by_key(c, experiment_id)
        to_run = {p.key: p for _, p in batch if not (p.key in runs and runs[p.key].info.status == tracking.FINISHED)}
        if to_run:
            results = run_batch(spec, list(to_run.values()), study_info)
            close_orphans(c, experiment_id, set(to_run), results)
        runs = tracking.runs_by_key(c, experiment_id)
        for number, p in batch:
            run = runs.get(p.key)
            value = _final_value(c, run, metric) if run and run.info.status == tracking.FINISHED else None
            if value is None:
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, value)
            print(f"dpl: optuna trial {number}: {p.config.network}:{p.config.point} {metric}={value}", file=sys.stderr)
    try:
        best = study.best_trial
        print(f"dpl: best so far: {best.params} {metric}={best.value}", file=sys.stderr)
    except ValueError:
        print("dpl: no completed search trial yet", file=sys.stderr)
