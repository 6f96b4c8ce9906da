"""Budgeted search with Optuna instead of a grid (e.g. "the best loss network for my task in 12 trials").

Ray's OptunaSearch refuses grid values and keeps its state in the Tuner, which this project never
restores. Here Optuna runs ask/tell against its own SQLite storage in the study directory; each asked
trial becomes ordinary TrialConfigs (same keys, same MLflow runs, same checkpoints), run in batches through
the batch runner (`study.batch`). A driver killed mid-batch leaves Optuna trials RUNNING: the next launch re-runs exactly
those configs (their runs and checkpoints are found by key) and tells Optuna their results.

What is searched is what the spec says, nothing is dropped (README, "Searching instead of a grid"):
  - network, point, variant: categorical dimensions whose choices are the spec's networks / points /
    variants for the task, unless `search.space` names them (then the space's choices);
  - params.<setting>: a task setting, given as choices or low/high (with int/log) in `search.space`;
  - seeds: repetitions, not a choice: every sampled configuration runs once per seed and Optuna is told
    the mean of the metric (a sample whose seeds do not all finish is FAIL);
  - datasets: one search is one benchmark, and scores on different datasets are not comparable, so a
    task with several datasets is refused (one search per dataset).

Space syntax (spec `search.space`):
  network: {choices: [vgg16, resnet18]}      point: {choices: [p1, p2, p3, p4]}     variant: {choices: [...]}
  params.lr: {low: 1.0e-4, high: 1.0e-2, log: true}      params.epochs: {low: 1, high: 5, int: true}
"""
from __future__ import annotations

import itertools
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from study import tracking
from study.batch import close_orphans, run_batch
from study.plan import PlannedTrial, data_root, plan_summaries, save_plan
from study.spec import StudySpec
from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.errors import UserError
from trainables.tasks import task_module
from trainables.trial import NO_NETWORK, prepare

#: The categorical dimensions a search has besides `params.<setting>`.
DIMENSIONS = ("network", "point", "variant")


@dataclass(frozen=True)
class SearchSpace:
    """What one search samples: `choices` per categorical dimension (one choice = fixed, not sampled),
    `params` = the task-setting distributions; every sample runs with each of `seeds`."""

    task: str
    dataset: str
    choices: dict[str, list[Any]]
    params: dict[str, dict[str, Any]]
    seeds: list[int]
    metric: str
    direction: str  # "max" | "min"

    def sampled(self) -> dict[str, dict[str, Any]]:
        """name -> distribution of every dimension Optuna samples (fixed ones are left out)."""
        dims = {k: {"choices": v} for k, v in self.choices.items() if len(v) > 1}
        return {**dims, **self.params}

    def fixed(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.choices.items() if len(v) == 1}


def _fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"study spec: {key}: {problem}; {fix}")


def _spec_points(value: Any, key: str) -> list[str]:
    """The spec's points (at `key`) as one list of choices, each naming one point on any network."""
    if isinstance(value, dict):
        raise _fail(key, "a per-network mapping cannot be one search dimension",
                    "give search.space.point: {choices: [p1, p2, ...]}")
    value = [value] if isinstance(value, str) else list(value)
    return [p for v in value for p in (["p1", "p2", "p3", "p4"] if v == "all" else [v])]


def _spec_choices(spec: StudySpec, task: str, dim: str) -> list[Any]:
    """A dimension's choices when `search.space` does not name it: what the spec lists for the task."""
    raw, settings = spec.raw, spec.raw["tasks"][task]
    if dim == "network":
        networks = settings.get("networks", raw["networks"])
        return ln.expand_networks(networks)
    if dim == "point":
        key = f"tasks.{task}.points" if "points" in settings else "points"
        return _spec_points(settings.get("points", raw["points"]), key)
    return list(settings.get("variants", [task_module(task).VARIANTS[0]]))


def _check_distribution(name: str, dist: Any) -> None:
    if not isinstance(dist, dict):
        raise _fail(f"search.space.{name}", f"{dist!r} is not a mapping", "give choices: [...] or low/high (with int/log)")
    if "choices" in dist:
        if not isinstance(dist["choices"], list) or not dist["choices"]:
            raise _fail(f"search.space.{name}.choices", f"{dist['choices']!r} is not a non-empty list", "list the values")
    elif name in DIMENSIONS:
        raise _fail(f"search.space.{name}", "a categorical dimension", "give choices: [...]")
    elif not ("low" in dist and "high" in dist):
        raise _fail(f"search.space.{name}", "no distribution", "give choices: [...] or low/high (with int/log)")


def search_space(spec: StudySpec) -> SearchSpace:
    """The space one Optuna search samples, from the spec; every sampled combination is validated here
    (like the grid's `expand`), so a bad choice fails in one line before any trial runs."""
    raw = spec.raw
    if len(raw["tasks"]) != 1:
        raise ConfigError("study spec: search.type optuna: give exactly one task under tasks "
                          "(one search per task; the metrics of different tasks are not comparable)")
    (task, settings), = raw["tasks"].items()
    module = task_module(task)
    search = raw["search"]
    metric = search.get("metric") or module.PRIMARY_METRIC
    if metric not in module.METRICS:
        raise ConfigError(f"study spec: search.metric: {metric!r}; allowed: {', '.join(module.METRICS)}")
    direction = search.get("mode") or module.METRICS[metric]
    if direction not in ("max", "min"):
        raise ConfigError(f"study spec: search.mode: {direction!r}; allowed: max | min")
    space = search.get("space") or {}
    for name, dist in space.items():
        if name not in DIMENSIONS and not name.startswith("params."):
            raise _fail(f"search.space.{name}", "unknown dimension",
                        f"allowed: {', '.join(DIMENSIONS)}, params.<task setting>")
        _check_distribution(name, dist)
    datasets = settings.get("datasets", [module.DATASETS[0]])
    if len(datasets) > 1:
        raise _fail(f"tasks.{task}.datasets", f"a search covers one dataset, got {', '.join(map(str, datasets))} "
                    "(their scores are not comparable)", f"run one search per dataset, e.g. "
                    f"--set tasks.{task}.datasets={datasets[0]}")
    choices = {dim: list(dict.fromkeys(space[dim]["choices"] if dim in space else _spec_choices(spec, task, dim)))
               for dim in DIMENSIONS}
    space_obj = SearchSpace(task, datasets[0], choices, {k: v for k, v in space.items() if k.startswith("params.")},
                            list(raw["seeds"]), metric, direction)
    for combo in itertools.product(*(choices[d] for d in DIMENSIONS)):
        values = dict(zip(DIMENSIONS, combo))
        values.update({name: dist["choices"][0] if "choices" in dist else dist["low"]
                       for name, dist in space_obj.params.items()})  # names and types of the settings
        try:
            several = values["network"] != NO_NETWORK and len(ln.resolve_points(values["network"], values["point"])) != 1
            if not several:
                _config_for(spec, space_obj, values, space_obj.seeds[0])
        except UserError as exc:  # a ConfigError, or the loss-network registry's unknown network / node
            raise ConfigError(f"study spec: search: {exc}") from exc
        if several:
            raise _fail("search.space.point", f"{values['point']!r} is several points", "give single points (p1..p4 or node names)")
    return space_obj


def _suggest(trial: Any, name: str, dist: dict[str, Any]) -> Any:
    try:
        if "choices" in dist:
            return trial.suggest_categorical(name, dist["choices"])
        if dist.get("int"):
            return trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
        return trial.suggest_float(name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log")))
    except ValueError as exc:  # e.g. other choices than the earlier launches of this search had
        raise ConfigError(f"study spec: search.space.{name}: Optuna refuses it ({str(exc).splitlines()[0]}); "
                          f"a search keeps its space: use a new study name or --storage for a new space") from exc


def _config_for(spec: StudySpec, space: SearchSpace, values: dict[str, Any], seed: int) -> TrialConfig:
    """The trial of one sample (values = sampled dimensions, the rest fixed) at one seed."""
    raw = spec.raw
    settings = raw["tasks"][space.task]
    values = {**space.fixed(), **values}
    params = dict(settings.get("params", {}))
    params.update({k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("params.")})
    network = values["network"]
    config = TrialConfig(
        task=space.task, network=network, points=() if network == NO_NETWORK else (values["point"],),
        dataset=space.dataset, variant=values["variant"], seed=seed, weights=raw["weights"],
        normalisation=raw["normalisation"], mode=raw["mode"], transform_input=raw["transform_input"],
        resize=raw["resize"],
        budget=settings.get("budget", "smoke"), params=params,
        data_root=data_root(spec, space.task, space.dataset, settings.get("data", "synthetic")),
    )
    return prepare(config)


def sample_trials(spec: StudySpec, space: SearchSpace, values: dict[str, Any]) -> list[PlannedTrial]:
    """The trials of one sample: its configuration once per seed of the spec."""
    return [PlannedTrial(trial_key(cfg), cfg) for cfg in (_config_for(spec, space, values, s) for s in space.seeds)]


def _final_value(c: Any, run: Any, metric: str) -> float | None:
    history = c.get_metric_history(run.info.run_id, metric)
    return history[-1].value if history else None


def _sample_value(c: Any, runs: dict[str, Any], trials: list[PlannedTrial], metric: str) -> float | None:
    """The mean of `metric` over a sample's seeds; None unless every seed's run FINISHED with it."""
    values = []
    for p in trials:
        run = runs.get(p.key)
        value = _final_value(c, run, metric) if run and run.info.status == tracking.FINISHED else None
        if value is None:
            return None
        values.append(value)
    return statistics.fmean(values)


def drawn_trials(study: Any) -> tuple[list[PlannedTrial], dict[str, list[int]]]:
    """Every trial the search has drawn so far (Optuna's storage is the record), and trial key -> the
    numbers of the samples that drew it (a configuration drawn twice is one trial, run once)."""
    trials: dict[str, PlannedTrial] = {}
    samples: dict[str, list[int]] = {}
    for t in study.get_trials(deepcopy=False):
        dicts = t.user_attrs.get("configs") or ([t.user_attrs["config"]] if "config" in t.user_attrs else [])
        for d in dicts:  # "config": one seed (searches made before seeds were searched)
            cfg = TrialConfig.from_dict(d)
            key = trial_key(cfg)
            trials.setdefault(key, PlannedTrial(key, cfg))
            samples.setdefault(key, []).append(t.number)
    return list(trials.values()), samples


def samples_done(samples: dict[str, list[int]], runs: dict[str, Any]) -> int:
    """Samples whose every trial has ended in MLflow (FINISHED, or FAILED/KILLED: a failed sample is spent)."""
    ended = (tracking.FINISHED, tracking.FAILED, tracking.KILLED)
    keys_of: dict[int, list[str]] = {}
    for key, numbers in samples.items():
        for n in numbers:
            keys_of.setdefault(n, []).append(key)
    return sum(all(k in runs and runs[k].info.status in ended for k in keys) for keys in keys_of.values())


def search_record(kind: str, space: SearchSpace, num_samples: int, done: int, drawn: int) -> dict[str, Any]:
    """What a search will run (its sample budget x seeds) and how far it is: `search.json` of the study run."""
    return {"type": kind, "task": space.task, "dataset": space.dataset, "metric": space.metric,
            "direction": space.direction, "num_samples": num_samples, "seeds": space.seeds,
            "n_seeds": len(space.seeds), "max_trials": num_samples * len(space.seeds),
            "samples_drawn": drawn, "samples_done": done, "samples_left": max(0, num_samples - done),
            "dimensions": space.sampled(), "fixed": space.fixed()}


def record_progress(spec: StudySpec, study_info: dict[str, Any], c: Any, experiment_id: str, space: SearchSpace,
                    study: Any) -> tuple[list[PlannedTrial], dict[str, Any]]:
    """Write what the search has drawn (plan.json, in the study directory and on the study run) and its
    record (samples done and left); returns (the drawn trials, the record)."""
    trials, samples = drawn_trials(study)
    save_plan(spec, trials, study_info.get("synthetic") or {}, samples=samples)
    tracking.log_plan(c, study_info["parent_run_id"], plan_summaries(spec.study_dir))
    runs = tracking.runs_by_key(c, experiment_id)
    record = search_record("optuna", space, spec.raw["search"]["num_samples"], samples_done(samples, runs),
                           len({n for ns in samples.values() for n in ns}))
    tracking.record_search(c, study_info["parent_run_id"], record)
    return trials, record


def run_optuna(spec: StudySpec, study_info: dict[str, Any], c: Any, experiment_id: str,
               verbose: bool = False) -> list[PlannedTrial]:
    """Ask, run and tell until the sample budget is spent; returns every trial the search has drawn."""
    import optuna
    from optuna.trial import TrialState

    search = spec.raw["search"]
    space = search_space(spec)
    metric, direction = space.metric, space.direction
    storage = f"sqlite:///{spec.study_dir / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction="maximize" if direction == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.raw["seeds"][0]))
    batch_size = int(search.get("batch_size") or spec.raw["max_concurrent"] or 2)
    print(f"dpl: optuna search over {', '.join(space.sampled()) or 'nothing (every dimension fixed)'}"
          f"{'; fixed: ' + ', '.join(f'{k}={v}' for k, v in space.fixed().items()) if space.fixed() else ''}; "
          f"each sample on seed(s) {', '.join(map(str, space.seeds))}, {metric} averaged", file=sys.stderr)
    drawn, _ = record_progress(spec, study_info, c, experiment_id, space, study)
    while True:
        trials = study.get_trials(deepcopy=False)
        pending = [t for t in trials if t.state == TrialState.RUNNING]  # left by a killed driver
        done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) for t in trials)
        if not pending and done >= search["num_samples"]:
            break
        batch: list[tuple[int, list[PlannedTrial]]] = []
        for t in pending:
            dicts = t.user_attrs.get("configs") or [t.user_attrs["config"]]  # "config": one seed (older)
            cfgs = [TrialConfig.from_dict(d) for d in dicts]
            batch.append((t.number, [PlannedTrial(trial_key(cfg), cfg) for cfg in cfgs]))
        while not pending and len(batch) < min(batch_size, search["num_samples"] - done):
            ot = study.ask()
            values = {name: _suggest(ot, name, dist) for name, dist in space.sampled().items()}
            planned = sample_trials(spec, space, values)
            ot.set_user_attr("configs", [p.config.to_dict() for p in planned])
            ot.set_user_attr("trial_keys", [p.key for p in planned])
            ot.set_user_attr("trial_key", planned[0].key)  # the first seed's (one-seed searches: the run)
            batch.append((ot.number, planned))
        drawn, _ = record_progress(spec, study_info, c, experiment_id, space, study)
        runs = tracking.runs_by_key(c, experiment_id)
        to_run = {p.key: p for _, ps in batch for p in ps
                  if not (p.key in runs and runs[p.key].info.status == tracking.FINISHED)}
        if to_run:
            results = run_batch(spec, list(to_run.values()), study_info, verbose=verbose)
            close_orphans(c, experiment_id, set(to_run), results)
        runs = tracking.runs_by_key(c, experiment_id)
        for number, ps in batch:
            value = _sample_value(c, runs, ps, metric)
            if value is None:
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, value)
            cfg = ps[0].config
            print(f"dpl: optuna trial {number}: {cfg.network}:{cfg.point or 'pixel'}:{cfg.variant} "
                  f"{metric}={value}", file=sys.stderr)
        drawn, _ = record_progress(spec, study_info, c, experiment_id, space, study)
    try:
        best = study.best_trial
        print(f"dpl: best so far: {best.params} {metric}={best.value}", file=sys.stderr)
    except ValueError:
        print("dpl: no completed search trial yet", file=sys.stderr)
    return drawn
