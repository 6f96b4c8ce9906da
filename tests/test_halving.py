"""Successive halving (`search: {type: halving}`, study/halving.py): the scheduler's rungs and decisions,
rebuilding them after a relaunch, the expected compute, and the one-line refusals. The end-to-end studies
(a planted-curve plugin under Ray and MLflow, a kill and relaunch, a real task) are in
tests/test_halving_study.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from study import tracking
from study.halving import Halving, HalvingScheduler, config_id, rebuild
from study.plan import PlannedTrial
from study.spec import load_spec
from trainables.config import ConfigError, TrialConfig

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture(autouse=True)
def planted_task(monkeypatch):
    monkeypatch.setenv("DPL_TASKS", "planted=planted_task,toy=toy_task")
    monkeypatch.syspath_prepend(PLUGINS)


def halving(grace: int = 1, rf: float = 3, max_epochs: int = 9, mode: str = "max") -> Halving:
    return Halving("planted", "planted", "val/score", mode, grace, rf, max_epochs, 16, 16, 1)


def trial(key: str) -> SimpleNamespace:
    """What the scheduler reads of a Tune trial: its config (the trial's TrialConfig as a dict)."""
    return SimpleNamespace(trial_id=f"ray-{key}", config={"trial": {"key": key}})


def scheduler(h: Halving, keys: list[str], stops: list | None = None) -> HalvingScheduler:
    sched = HalvingScheduler(h, {config_id({"key": k}): k for k in keys},
                             None if stops is None else lambda *a: stops.append(a))
    for k in keys:
        sched.on_trial_add(None, trial(k))
    return sched


def result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "val.score": value}


def test_rungs_are_ashas_below_the_last_epoch() -> None:
    """grace 1, factor 3, 9 epochs: ASHA's milestones are 1, 3, 9; the one at 9 is dropped (a trial that
    passed every rung runs to its end). factor 2, 8 epochs: 1, 2, 4."""
    assert halving().rungs == [1, 3]
    assert halving(rf=2, max_epochs=8).rungs == [1, 2, 4]
    assert halving(grace=2, rf=3, max_epochs=20).rungs == [2, 6, 18]


def test_expected_epochs_is_synchronous_successive_halving() -> None:
    """Every trial to the first rung, a 1/factor share past each: written out by hand here."""
    assert halving().expected_epochs() == pytest.approx(1 + (3 - 1) / 3 + (9 - 3) / 9)
    assert halving(rf=2, max_epochs=8).expected_epochs() == pytest.approx(1 + 1 / 2 + 2 / 4 + 4 / 8)


def test_decisions_follow_the_quantile_cutoff_and_never_stop_at_the_last_epoch() -> None:
    """At a rung, a trial below the (1 - 1/3) quantile of the values recorded there is stopped: numpy's
    percentile written here; the first trial at a rung always goes on; one that passed every rung is not
    stopped at its last epoch (Ray's own ASHA stops it at max_t, before the task returns its results)."""
    import numpy as np

    stops: list = []
    sched = scheduler(halving(), ["a", "b", "c", "d"], stops)
    assert sched.on_trial_result(None, trial("a"), result(1, 0.5)) == "CONTINUE"  # nothing recorded yet
    assert sched.on_trial_result(None, trial("b"), result(1, 0.4)) == "STOP"  # cutoff = 0.5
    assert sched.on_trial_result(None, trial("c"), result(1, 0.9)) == "CONTINUE"
    cutoff = np.percentile([0.5, 0.4, 0.9], 100 * (1 - 1 / 3))
    assert sched.on_trial_result(None, trial("d"), result(1, cutoff - 1e-9)) == "STOP"
    assert stops == [("b", 1, 0.4), ("d", 1, cutoff - 1e-9)]
    assert sched.on_trial_result(None, trial("a"), result(2, 0.6)) == "CONTINUE"  # no rung at 2
    assert sched.on_trial_result(None, trial("a"), result(3, 0.7)) == "CONTINUE"
    for epoch in range(4, 10):
        assert sched.on_trial_result(None, trial("a"), result(epoch, 0.8)) == "CONTINUE"
    assert sched.recorded() == {1: {"a": 0.5, "b": 0.4, "c": 0.9, "d": cutoff - 1e-9}, 3: {"a": 0.7}}


def test_min_metrics_are_stopped_when_higher() -> None:
    sched = scheduler(halving(mode="min"), ["a", "b"])
    assert sched.on_trial_result(None, trial("a"), result(1, 0.5)) == "CONTINUE"
    assert sched.on_trial_result(None, trial("b"), result(1, 0.6)) == "STOP"


def test_results_without_the_epoch_or_metric_are_ignored() -> None:
    """A trial's last report (`dpl_done` with its final metrics) or a failure carries no epoch."""
    sched = scheduler(halving(), ["a", "b"])
    sched.on_trial_result(None, trial("a"), result(1, 0.5))
    assert sched.on_trial_result(None, trial("b"), {"dpl_done": 1, "score": 0.1}) == "CONTINUE"
    sched.on_trial_complete(None, trial("b"), {"dpl_done": 1, "score": 0.1})
    assert sched.recorded()[1] == {"a": 0.5}


class History:
    """A stand-in MLflow client: metric histories with (timestamp, step, value)."""

    def __init__(self, events: dict[str, list[tuple[int, int, float]]]) -> None:
        self.events = events

    def get_metric_history(self, run_id: str, metric: str) -> list:
        return [SimpleNamespace(timestamp=ts, step=ep, value=v) for ts, ep, v in self.events.get(run_id, [])]


def run(key: str, status: str, stopped: int | None = None) -> SimpleNamespace:
    tags = {tracking.STOPPED_TAG: str(stopped), tracking.STOPPED_VALUE_TAG: "0.1"} if stopped else {}
    return SimpleNamespace(info=SimpleNamespace(run_id=key, status=status), data=SimpleNamespace(tags=tags))


def planned(keys: list[str]) -> list[PlannedTrial]:
    return [PlannedTrial(k, TrialConfig(task="planted", network="alexnet", points=("features.1",))) for k in keys]


def test_rebuild_replays_the_rungs_a_killed_driver_held_and_finds_its_lost_stops() -> None:
    """The values MLflow holds, replayed in logging order, give the rungs a live scheduler built from the
    same results; a RUNNING trial the replay stops (its stop was never recorded) is returned, so is one
    whose stop tags were written but not its FINISHED status; finished and recorded stops are not."""
    events = {  # key -> (timestamp, epoch, value); a: finished, b: stopped and recorded
        "a": [(1, 1, 0.5), (6, 2, 0.6), (7, 3, 0.7), (11, 9, 0.9)],
        "b": [(2, 1, 0.4)],
        "c": [(3, 1, 0.9), (4, 2, 0.5), (5, 3, 0.65)],  # first at rung 3 (before a's 0.7 there): goes on
        "d": [(8, 1, 0.95)],  # interrupted after epoch 1: passes rung 1, resumes
        "e": [(10, 1, 0.2)],  # its stop was being recorded when the driver died: tags, no FINISHED
        "f": [(9, 1, 0.3)],  # below rung 1's cutoff, the driver died before recording it: a lost stop
    }
    runs = {"a": run("a", "FINISHED"), "b": run("b", "FINISHED", stopped=1), "c": run("c", "RUNNING"),
            "d": run("d", "RUNNING"), "e": run("e", "RUNNING", stopped=1), "f": run("f", "RUNNING")}
    keys = list(events)
    live = scheduler(halving(), keys)
    for ts, key, epoch, value in sorted((ts, k, ep, v) for k, evs in events.items() for ts, ep, v in evs):
        live.on_trial_result(None, trial(key), result(epoch, value))
    rebuilt = scheduler(halving(), keys)
    late = rebuild(rebuilt, History(events), runs, planned(keys), halving())
    assert rebuilt.recorded() == live.recorded()
    assert late == {"f": (1, 0.3), "e": (1, 0.1)}  # in logging order c passed rung 3 (by key order it would not)
    # d resumes: its passed rung is recorded under its key, so its next epochs are not compared there again
    assert rebuilt.on_trial_result(None, trial("d"), result(2, 0.0)) == "CONTINUE"


def spec_of(tmp_path: Path, **overrides) -> object:
    raw = {"name": "h", "weights": "random", "networks": ["squeezenet1_1", "alexnet"], "points": ["p1", "p2"],
           "seeds": [0], "tasks": {"planted": {"data": str(tmp_path)}},
           "search": {"type": "halving", "grace_epochs": 1, "reduction_factor": 3}}
    raw.update(overrides)
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_spec(path, storage=tmp_path / "study")


@pytest.mark.parametrize("overrides, message", [
    ({"tasks": {"planted": {}, "toy": {}}}, "search.type halving: give exactly one task"),
    ({"search": {"type": "halving", "max_epochs": 20}}, r"search.max_epochs: 20, but the trials run 9 epochs"),
    ({"search": {"type": "halving", "grace_epochs": 9}}, r"search.grace_epochs: 9, but the trials run 9 epochs"),
    ({"search": {"type": "halving", "reduction_factor": 1}}, r"search.reduction_factor: 1; allowed: a number > 1"),
    ({"search": {"type": "halving", "num_samples": 4}}, "search.num_samples: an optuna setting"),
    ({"search": {"type": "halving", "metric": "val/other"}}, r"search.mode: None for metric val/other"),
    ({"tasks": {"planted": {"params": {"epochs": 1}}}}, "report val/score at 1 epoch"),
])
def test_what_a_halving_search_cannot_run_is_refused_in_one_line(tmp_path, overrides, message) -> None:
    from study.halving import halving_setup
    from study.plan import expand

    if "tasks" in overrides:
        overrides["tasks"] = {t: {"data": str(tmp_path), **s} for t, s in overrides["tasks"].items()}
    with pytest.raises(ConfigError, match=message) as info:
        spec = spec_of(tmp_path, **overrides)
        halving_setup(spec, expand(spec))
    assert "\n" not in str(info.value)


def test_similarity_baseline_has_no_epochs_to_halve(tmp_path) -> None:
    from study.halving import halving_setup
    from study.plan import expand

    spec = spec_of(tmp_path, tasks={"similarity": {"variants": ["baseline"]}})
    with pytest.raises(ConfigError, match="report val/2afc at 0 epoch.*similarity's baseline trains nothing"):
        halving_setup(spec, expand(spec))


def test_a_task_without_epoch_metric_needs_one_named(tmp_path, monkeypatch) -> None:
    from study.halving import halving_setup
    from study.plan import expand

    (tmp_path / "bare_task.py").write_text(
        "from toy_task import DATASETS, VARIANTS, METRICS, PRIMARY_METRIC, BUDGETS, input_size, run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DPL_TASKS", "bare=bare_task")
    spec = spec_of(tmp_path, tasks={"bare": {"data": str(tmp_path)}})
    with pytest.raises(ConfigError, match="task bare declares no EPOCH_METRIC"):
        halving_setup(spec, expand(spec))
    named = spec_of(tmp_path, tasks={"bare": {"data": str(tmp_path)}},
                    search={"type": "halving", "metric": "train/loss", "mode": "min"})
    assert halving_setup(named, expand(named)).metric == "train/loss"


def test_dpl_plan_shows_the_maximum_and_expected_compute(tmp_path, capsys) -> None:
    """The grid's trial-epochs (every trial to its last epoch) and the expected ones."""
    from study.cli import main

    spec_of(tmp_path)
    assert main(["plan", str(tmp_path / "h.yaml"), "--storage", str(tmp_path / "s"), "--json"]) == 0
    import json

    search = json.loads(capsys.readouterr().out)["search"]
    assert search["rungs"] == [1, 3] and search["max_trial_epochs"] == 4 * 9
    assert search["expected_trial_epochs"] == pytest.approx(4 * (1 + 2 / 3 + 6 / 9))
    assert main(["plan", str(tmp_path / "h.yaml"), "--storage", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "rungs at epoch 1, 3 of 9" in text and "at most 36 trial-epochs" in text and "expected 9 trial-epochs" in text
    assert math.isclose(search["expected_share"], (1 + 2 / 3 + 6 / 9) / 9)


def test_candidates_rank_by_the_rung_reached_then_by_the_value_there() -> None:
    """What `dpl recommend` shows for a halving study (analysis.recommend.halving_rank), by hand: a cell that
    ran to the end ranks above one stopped at rung 3 even with a lower value; a cell's rung is the lowest its
    seeds reached, its score their mean at that rung (the value logged at the rung's epoch)."""
    from analysis.recommend import halving_rank

    trials = [
        {"cell": "end-low", "finished": True, "history": {1: 0.2, 2: 0.3, 3: 0.4, 9: 0.45}},
        {"cell": "rung3-high", "finished": False, "history": {1: 0.5, 2: 0.6, 3: 0.7}},
        {"cell": "seeds", "finished": True, "history": {1: 0.3, 3: 0.6, 9: 0.9}},
        {"cell": "seeds", "finished": False, "history": {1: 0.1, 2: 0.2, 3: 0.4}},  # stopped at 3: the cell too
        {"cell": "rung1", "finished": False, "history": {1: 0.9}},
        {"cell": "never", "finished": False, "history": {}},
    ]
    ranked = halving_rank(trials, [1, 3], 9, "max")
    assert [(c["cell"], c["level"]) for c in ranked] == [
        ("end-low", 9), ("rung3-high", 3), ("seeds", 3), ("rung1", 1), ("never", 0)]
    seeds = next(c for c in ranked if c["cell"] == "seeds")
    assert seeds["score"] == pytest.approx((0.6 + 0.4) / 2) and seeds["seeds"] == 2
    assert ranked[0]["score"] == 0.45 and math.isnan(ranked[-1]["score"])
    low_first = halving_rank(trials, [1, 3], 9, "min")  # min metrics: lower is better within a rung
    assert [c["cell"] for c in low_first][1:3] == ["seeds", "rung3-high"]
