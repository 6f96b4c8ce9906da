"""Successive halving over a study's grid (`search: {type: halving}`): Ray Tune's ASHA scheduler stops the
trials whose per-epoch selection metric (the task's EPOCH_METRIC) falls behind at a rung.

Every (network, point[, weights, ...], seed) of the grid starts; each reports its selection metric every
epoch. At each rung (epoch `grace_epochs x reduction_factor^k`, below `max_epochs`) a trial whose value is
below the (1 - 1/reduction_factor) quantile of the values already recorded at that rung is stopped, so about
1 in `reduction_factor` trials goes on. This is Ray's `AsyncHyperBandScheduler` (ASHA, one bracket), with
three changes that this project's resume model needs (`HalvingScheduler`):

- **Keyed by trial key, not Ray's trial id.** The project never restores a Tuner (docs/ARCHITECTURE.md):
  every launch is a fresh Tuner with fresh trial ids. Keying the rungs by `dpl.trial_key` lets a relaunch
  rebuild the rungs and lets an interrupted trial that resumes keep the rungs it already passed.
- **No rung at `max_epochs`** (and `stop_last_trials` off): a trial that survived every rung runs to its
  end and finishes normally, with its final (test) metrics; Ray would otherwise stop it at its last report,
  before the task returns.
- **Stops are recorded when they are decided**, in the driver, before Tune ends the trial: the run gets
  `dpl.stopped_early` (the epoch) and `dpl.stopped_metric`, a description saying so, and status FINISHED.
  FINISHED, not FAILED or KILLED: it did what the search asked, `dpl status` and the report show it as
  *stopped*, never as failed, and a relaunch (which skips FINISHED runs) never retries it. The trial's own
  thread is blocked in `tune.report` when the decision is made and leaves through Tune's stop (SystemExit),
  so it writes nothing after the record.

**Relaunch.** ASHA's rungs live in the Tuner's memory, which a killed driver loses. `rebuild` replays every
per-epoch value MLflow holds for the study's trials, in the order they were logged (metric timestamps),
through the new scheduler's own `on_result`: the rungs come back as they were, with the same cutoffs. A trial
the replay stops whose stop was not recorded yet (the driver died between its result and the record) is
recorded now and not run again; the other unfinished trials resume from their checkpoints (the ordinary
resume path) with the rungs they passed already recorded. Finished and stopped trials keep their results.

Compute: the grid's is every trial to `max_epochs`; `expected_epochs` is synchronous successive halving's
(a 1/reduction_factor share of the trials continues past each rung). ASHA promotes more than that while few
results are in (the first trial at a rung always goes on), so the harness (`bench/halving_sim.py`,
docs/ANALYSIS.md) measures the real share.
"""
from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from study import tracking
from study.batch import close_orphans, run_batch
from study.plan import PlannedTrial, longest_first
from study.search import _fail, samples_done
from study.spec import StudySpec
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.tasks import epoch_metric, epochs, task_module

#: Tune reports metrics with '/' replaced by '.' (`study.trainable.TuneMlflowReporter`); the time attribute is
#: the task's epoch, which survives a resume (Tune's own `training_iteration` restarts at 1 in a new Tuner).
TIME_ATTR = "epoch"


@dataclass(frozen=True)
class Halving:
    """One halving search: what it ranks on and its schedule."""

    task: str
    dataset: str
    metric: str
    mode: str  # "max" | "min"
    grace: int
    reduction_factor: float
    max_epochs: int
    n_trials: int
    n_configs: int
    n_seeds: int

    @property
    def tune_metric(self) -> str:
        return self.metric.replace("/", ".")

    @property
    def rungs(self) -> list[int]:
        """The epochs at which trials are compared: ASHA's milestones below max_epochs (from the scheduler
        itself), each as the epoch it takes effect at (a trial is compared at its first report at or past it)."""
        return sorted({math.ceil(m) for m in HalvingScheduler(self).milestones()})

    def expected_epochs(self) -> float:
        """Epochs one trial runs on average under synchronous successive halving: every trial to the first
        rung, a 1/reduction_factor share of them past each rung (ties and ASHA's early promotions make the
        real share somewhat larger)."""
        edges = [0, *self.rungs, self.max_epochs]
        return sum((b - a) * self.reduction_factor ** -i for i, (a, b) in enumerate(zip(edges, edges[1:])))

    def describe(self) -> str:
        rungs = ", ".join(map(str, self.rungs))
        return (f"halving search on {self.metric} ({self.mode}) over {self.n_configs} configurations x "
                f"{self.n_seeds} seed(s): rungs at epoch {rungs} of {self.max_epochs}, about 1 in "
                f"{self.reduction_factor:g} trials passes each")


def halving_setup(spec: StudySpec, plan: list[PlannedTrial]) -> Halving:
    """The halving search of `spec` over its grid `plan`, validated: one task and dataset (one metric ranks
    them all), a declared per-epoch metric, the same number of epochs for every trial, at least one rung.
    Every refusal is one line, before anything is written."""
    search = spec.raw["search"]
    tasks = sorted({t.config.task for t in plan})
    if len(tasks) != 1:
        raise ConfigError("study spec: search.type halving: give exactly one task under tasks (one search "
                          "per task: the metrics of different tasks are not comparable)")
    datasets = sorted({t.config.dataset for t in plan})
    if len(datasets) != 1:
        raise _fail(f"tasks.{tasks[0]}.datasets", f"a search covers one dataset, got {', '.join(datasets)}",
                    f"run one search per dataset, e.g. --set tasks.{tasks[0]}.datasets={datasets[0]}")
    module = task_module(tasks[0])
    declared = epoch_metric(module)
    metric = search.get("metric") or (declared[0] if declared else None)
    if metric is None:
        raise _fail("search.metric", f"task {tasks[0]} declares no EPOCH_METRIC (a metric it reports every epoch)",
                    "name one with search.metric and search.mode, or add EPOCH_METRIC = (name, 'max'|'min') "
                    "to its module")
    mode = search.get("mode") or (declared[1] if declared and declared[0] == metric else None)
    if mode not in ("max", "min"):
        raise _fail("search.mode", f"{mode!r} for metric {metric}", "max | min")
    counts = {epochs(module, t.config) for t in plan}
    if len(counts) != 1:
        raise _fail("search.type halving", f"the trials run different numbers of epochs ({sorted(counts)})",
                    "give every trial the same epoch budget (one value of the task's epochs setting)")
    (n_epochs,) = counts
    if n_epochs < 2:
        raise _fail("search.type halving", f"task {tasks[0]}'s trials report {metric} at {n_epochs} epoch(s) "
                    "(nothing to stop early: e.g. similarity's baseline trains nothing)",
                    "use search.type grid, or a budget with several epochs")
    given = search.get("max_epochs")
    if given is not None and given != n_epochs:
        raise _fail("search.max_epochs", f"{given}, but the trials run {n_epochs} epochs",
                    f"drop it, or set the task's epoch budget (its `epochs` setting) to {given}")
    seeds = sorted({t.config.seed for t in plan})
    halving = Halving(tasks[0], datasets[0], metric, mode, int(search["grace_epochs"]),
                      float(search["reduction_factor"]), n_epochs, len(plan), len(plan) // len(seeds), len(seeds))
    if halving.grace >= n_epochs or not halving.rungs:
        raise _fail("search.grace_epochs", f"{halving.grace}, but the trials run {n_epochs} epochs (no rung below "
                    "the last epoch)", f"an integer below {n_epochs}, e.g. 1")
    return halving


def plan_section(spec: StudySpec, trials: list[PlannedTrial], grid_gflops: float | None) -> dict[str, Any]:
    """`dpl plan`'s section of a halving search: its rungs and compute, at most the grid's `grid_gflops` (every
    trial to its last epoch), expected the synchronous successive-halving share (`Halving.expected_epochs`)."""
    h = halving_setup(spec, trials)
    share = h.expected_epochs() / h.max_epochs
    return {"type": "halving", "metric": h.metric, "mode": h.mode, "rungs": h.rungs, "max_epochs": h.max_epochs,
            "reduction_factor": h.reduction_factor, "configurations": h.n_configs, "seeds": h.n_seeds,
            "max_trial_epochs": h.n_trials * h.max_epochs, "expected_trial_epochs": h.n_trials * h.expected_epochs(),
            "expected_share": share, "max_gflops": grid_gflops,
            "expected_gflops": None if grid_gflops is None else grid_gflops * share, "describe": h.describe()}


class HalvingScheduler(AsyncHyperBandScheduler):
    """Ray's ASHA for one halving search, keyed by trial key, without a rung at max_epochs, recording its
    stops (module docstring). `keys`: `config_id` -> trial key; `on_stop(key, epoch, value)` is called when
    a stop is decided."""

    def __init__(self, halving: Halving, keys: dict[str, str] | None = None,
                 on_stop: Callable[[str, int, float], None] | None = None) -> None:
        super().__init__(time_attr=TIME_ATTR, metric=halving.tune_metric, mode=halving.mode,
                         max_t=halving.max_epochs, grace_period=halving.grace,
                         reduction_factor=halving.reduction_factor, brackets=1, stop_last_trials=False)
        bracket = self._brackets[0]
        # no rung at the last epoch: a trial that passed every rung runs to its end (module docstring)
        bracket._rungs = [(m, rec) for m, rec in bracket._rungs if m < halving.max_epochs]
        self.keys, self.on_stop = keys or {}, on_stop
        self.stopped: dict[str, tuple[int, float]] = {}

    def milestones(self) -> list[float]:
        return sorted(m for m, _ in self._brackets[0]._rungs)

    def recorded(self) -> dict[float, dict[str, float]]:
        """milestone -> {trial key: value recorded there} (direction-aligned: higher is better)."""
        return {m: dict(rec) for m, rec in self._brackets[0]._rungs}

    def key_of(self, trial: Any) -> str:
        cfg = trial.config["trial"]
        return self.keys.get(config_id(cfg)) or trial_key(TrialConfig.from_dict(cfg))

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, _Keyed(self.key_of(trial)))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        key = self.key_of(trial)
        action = super().on_trial_result(tune_controller, _Keyed(key), result)
        if action == TrialScheduler.STOP:
            epoch, value = int(result[TIME_ATTR]), float(result[self._metric])
            self.stopped[key] = (epoch, value)
            if self.on_stop is not None:
                self.on_stop(key, epoch, value)
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        keyed = _Keyed(self.key_of(trial))
        if keyed.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, keyed, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(self.key_of(trial), None)

    def replay(self, key: str, epoch: int, value: float) -> bool:
        """Feed one recorded (epoch, value) of trial `key` to the rungs, as a live result would be; True when
        the rungs stop the trial there (`rebuild`)."""
        return self._brackets[0].on_result(_Keyed(key), epoch, self._metric_op * value) == TrialScheduler.STOP


class _Keyed:
    """What ASHA's bookkeeping sees of a trial: its trial key as `trial_id` (ASHA reads nothing else)."""

    __slots__ = ("trial_id",)

    def __init__(self, key: str) -> None:
        self.trial_id = key


def config_id(config: dict[str, Any]) -> str:
    """A trial config's identity as Tune hands it back (a JSON text: Tune deep-copies the dict it was given)."""
    return json.dumps(config, sort_keys=True, default=list)


# ----------------------------------------------------------------------------------- recording a stop


class StopRecorder:
    """Records a stop in the trial's MLflow run when the scheduler decides it (on the driver).

    Tune pickles its scheduler with the experiment state, so this holds only plain data and opens its MLflow
    client on first use."""

    def __init__(self, tracking_uri: str, experiment_id: str, halving: Halving,
                 configs: dict[str, dict[str, Any]], run_names: dict[str, str] | None = None) -> None:
        self.tracking_uri, self.experiment_id, self.halving = tracking_uri, experiment_id, halving
        self.configs, self.run_names = configs, run_names or {}
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def __call__(self, key: str, epoch: int, value: float) -> None:
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        found = tracking.find_runs(self._client, self.experiment_id, f"tags.`{tracking.KEY_TAG}` = '{key}'")
        if found:
            record_stop(self._client, found[0], TrialConfig.from_dict(self.configs[key]), epoch, value,
                        self.halving, self.run_names.get(key))


def stop_sentence(epoch: int, value: float, halving: Halving) -> str:
    return (f"Stopped early by the halving search at epoch {epoch} of {halving.max_epochs}: "
            f"`{halving.metric}` = {value:.4g} was below the rung's cutoff.")


def record_stop(c: Any, run: Any, config: TrialConfig, epoch: int, value: float, halving: Halving,
                run_name: str | None = None) -> None:
    """Mark `run` stopped early: tags first, status FINISHED last (a kill in between leaves a RUNNING run
    with the tag, which the next launch's `rebuild` finishes the same way)."""
    run_id = run.info.run_id
    c.set_tag(run_id, tracking.STOPPED_TAG, str(epoch))
    c.set_tag(run_id, tracking.STOPPED_VALUE_TAG, repr(float(value)))
    tags = run.data.tags
    primary = tags.get("dpl.primary_metric", halving.metric)
    directions = json.loads(tags.get("dpl.directions") or "{}")
    c.set_tag(run_id, tracking.RUN_NAME_TAG, run_name or tracking.trial_run_name(config))
    c.set_tag(run_id, tracking.NOTE_TAG, tracking.trial_description(
        config, {}, primary, directions, stopped=stop_sentence(epoch, value, halving)))
    c.set_terminated(run_id, status=tracking.FINISHED)


# ------------------------------------------------------------------------------------------ relaunch


def rebuild(scheduler: Any, c: Any, runs: dict[str, Any], plan: list[PlannedTrial], halving: Halving
            ) -> dict[str, tuple[int, float]]:
    """Replay every per-epoch value MLflow holds for the plan's trials, in logging order, through the
    scheduler's rungs (module docstring, Relaunch). Returns the trials the replay stops that MLflow does not
    yet hold as stopped: trial key -> (epoch, value). A finished trial's values are all replayed (they
    fill the rungs above); a trial is not fed past the epoch it stopped at."""
    events = []
    for t in plan:
        run = runs.get(t.key)
        if run is None:
            continue
        for m in c.get_metric_history(run.info.run_id, halving.metric):
            events.append((m.timestamp, t.key, int(m.step), float(m.value)))
    events.sort()
    stopped: dict[str, tuple[int, float]] = {}
    for _, key, epoch, value in events:
        run = runs[key]
        recorded = run.data.tags.get(tracking.STOPPED_TAG)
        if key in stopped or (recorded and epoch > int(recorded)):
            continue
        if scheduler.replay(key, epoch, value) and tracking.run_state(run) != "finished":
            stopped[key] = (epoch, value)
    late = {k: v for k, v in stopped.items() if runs[k].info.status != tracking.FINISHED}
    for t in plan:  # a stop whose tags were written but not its FINISHED status: keep the recorded stop
        run = runs.get(t.key)
        tag = run.data.tags.get(tracking.STOPPED_TAG) if run is not None else None
        if tag and run.info.status != tracking.FINISHED:
            late[t.key] = (int(tag), float(run.data.tags.get(tracking.STOPPED_VALUE_TAG, "nan")))
    return late


def epochs_run(c: Any, runs: dict[str, Any], plan: list[PlannedTrial], halving: Halving) -> int:
    """Epochs the study's trials have run so far: each trial's last epoch with the selection metric logged."""
    total = 0
    for t in plan:
        run = runs.get(t.key)
        if run is not None:
            total += max((int(m.step) for m in c.get_metric_history(run.info.run_id, halving.metric)), default=0)
    return total


def record_progress(c: Any, parent_id: str, halving: Halving, plan: list[PlannedTrial], runs: dict[str, Any],
                    used: int) -> dict[str, Any]:
    """The search's record on the study run (`search.json`, tags): configurations (its samples) done and
    left, the rungs, and the epochs used against the grid's."""
    configs: dict[str, int] = {}
    samples = {t.key: [configs.setdefault(config_id({**t.config.to_dict(), "seed": 0}), len(configs))] for t in plan}
    done = samples_done(samples, runs)
    grid = halving.n_trials * halving.max_epochs
    record = {"type": "halving", "task": halving.task, "dataset": halving.dataset, "metric": halving.metric,
              "direction": halving.mode, "num_samples": halving.n_configs, "n_seeds": halving.n_seeds,
              "max_trials": halving.n_trials, "samples_drawn": halving.n_configs, "samples_done": done,
              "samples_left": halving.n_configs - done, "grace_epochs": halving.grace,
              "reduction_factor": halving.reduction_factor, "max_epochs": halving.max_epochs, "rungs": halving.rungs,
              "epochs_used": used, "epochs_grid": grid, "expected_share": halving.expected_epochs() / halving.max_epochs,
              "stopped": sum(tracking.run_state(runs.get(t.key)) == "stopped" for t in plan)}
    tracking.record_search(c, parent_id, record)
    c.set_tag(parent_id, tracking.SEARCH_RUNGS_TAG, ",".join(map(str, halving.rungs)))
    c.set_tag(parent_id, tracking.SEARCH_MAX_EPOCHS_TAG, str(halving.max_epochs))
    c.set_tag(parent_id, tracking.SEARCH_EPOCHS_TAG, f"{used}/{grid}")
    return record


def shuffled(trials: list[PlannedTrial], seed: int) -> list[PlannedTrial]:
    """The trials in a seeded random order. ASHA lets the first trials at a rung through against few
    competitors, so starting them in plan order (network by network) would favour the first networks."""
    out = list(trials)
    random.Random(seed).shuffle(out)
    return longest_first(out)


def run_halving(spec: StudySpec, plan: list[PlannedTrial], todo: list[PlannedTrial], study_info: dict[str, Any],
                c: Any, experiment_id: str, verbose: bool = False) -> None:
    """Run (or continue) the halving search over `plan`: rebuild the rungs from MLflow, record the stops the
    replay decides, run the unfinished trials under the scheduler, record the search's progress."""
    halving = halving_setup(spec, plan)
    configs = {t.key: t.config.to_dict() for t in plan}
    recorder = StopRecorder(study_info["tracking_uri"], experiment_id, halving, configs, study_info.get("run_names"))
    scheduler = HalvingScheduler(halving, {config_id(cfg): key for key, cfg in configs.items()}, recorder)
    runs = tracking.runs_by_key(c, experiment_id)
    late = rebuild(scheduler, c, runs, plan, halving)
    for key, (epoch, value) in late.items():
        record_stop(c, runs[key], TrialConfig.from_dict(configs[key]), epoch, value, halving,
                    (study_info.get("run_names") or {}).get(key))
    todo = [t for t in todo if t.key not in late]
    print(f"dpl: {halving.describe()}" + (f"; {len(late)} trial(s) stopped on the replayed rungs" if late else ""),
          file=sys.stderr)
    try:
        if todo:
            results = run_batch(spec, shuffled(todo, spec.raw["seeds"][0]), study_info, verbose=verbose,
                                planned=len(plan), already_finished=len(plan) - len(todo), scheduler=scheduler)
            close_orphans(c, experiment_id, {t.key for t in todo}, results)
    finally:
        runs = tracking.runs_by_key(c, experiment_id)
        record = record_progress(c, study_info["parent_run_id"], halving, plan, runs,
                                 epochs_run(c, runs, plan, halving))
        print(f"dpl: halving: {record['stopped']} trial(s) stopped early; {record['epochs_used']} of the grid's "
              f"{record['epochs_grid']} epochs run ({record['epochs_used'] / record['epochs_grid']:.0%})",
              file=sys.stderr)
