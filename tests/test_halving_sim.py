"""The planted-truth harness (bench/halving_sim.py) on the study's own scheduler, small and fast.

The study's `HalvingScheduler` must find the grid's best cell among its top 3 in most repetitions of an
world with rank crossings while running at most half the grid's epochs; a scheduler that never stops runs the whole grid,
one that stops at random (as often as the real one) loses the best cell: the harness must tell them apart,
and a broken scheduler in study/halving.py fails the first test.
"""
from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from halving_sim import WORLDS, halving_of, order, replay, simulate, wilson  # noqa: E402
from study.halving import HalvingScheduler  # noqa: E402

#: small: 24 cells, 9 epochs (rungs at 1 and 3 with factor 3), 80 repetitions in a few seconds
WORLD = replace(WORLDS["crossing"], cells=24, epochs=9)
REPS = 80


class NeverStops(HalvingScheduler):
    def on_trial_result(self, tune_controller, trial, result):
        super().on_trial_result(tune_controller, trial, result)
        return "CONTINUE"


class StopsAtRandom(HalvingScheduler):
    """Stops at a rung as often as the real rule would on average (1 - 1/factor), but blind to the value."""

    rng = random.Random(0)

    def on_trial_result(self, tune_controller, trial, result):
        epoch = result.get("epoch")
        at_rung = epoch in {int(m) for m in self.milestones()}
        return "STOP" if at_rung and self.rng.random() < 1 - 1 / self._reduction_factor else "CONTINUE"


def test_the_study_scheduler_finds_the_grids_best_at_a_fraction_of_its_compute() -> None:
    r = simulate(WORLD, grace=1, rf=3, reps=REPS, concurrency=4, seed=1)
    assert wilson(r["top3"] * REPS, REPS)[1] >= 0.9, r  # top-3 recall consistent with >= 90 %
    assert r["top3"] >= 0.8 and r["share"] <= 0.5, r
    assert r["top3"] > r["random_top3"] + 0.3, r  # far better than random search with the same compute


def test_the_harness_tells_broken_schedulers_apart() -> None:
    never = simulate(WORLD, 1, 3, REPS, 4, seed=1, make=NeverStops)
    assert never["share"] == 1.0 and never["top1"] == 1.0  # the whole grid: its own best, at full price
    blind = simulate(WORLD, 1, 3, REPS, 4, seed=1, make=StopsAtRandom)
    real = simulate(WORLD, 1, 3, REPS, 4, seed=1)
    assert blind["share"] < 0.6 and blind["top3"] < 0.5 < real["top3"], (blind, real)


def test_replay_runs_the_trials_in_the_given_order_and_counts_every_epoch() -> None:
    """One repetition by hand: every trial starts, none runs past the last epoch, the stopped ones stop at
    a rung, the epochs add up to the compute share."""
    import numpy as np

    rng = np.random.default_rng(0)
    draw = WORLD.draw(rng)
    halving = halving_of(WORLD, 1, 3)
    out = replay(draw, halving, order(WORLD, rng), concurrency=2)
    assert len(out.epochs) == WORLD.cells and max(out.epochs.values()) == 9
    assert set(out.stops.values()) <= {1, 3} and all(out.epochs[k] == e for k, e in out.stops.items())
    assert all(e == 9 for k, e in out.epochs.items() if k not in out.stops)
    assert sorted(out.ranking) == list(range(WORLD.cells))


@pytest.mark.slow
def test_replay_makes_the_decisions_real_tune_makes() -> None:
    """Concurrency 1: the same trials in the same order under Ray Tune and under the replay loop give the
    same stops and the same ranking (so the replay's thousands of repetitions measure Tune's scheduler)."""
    import halving_sim
    import ray

    try:
        assert halving_sim.check(reps=2, world=replace(WORLDS["measured"], cells=8, epochs=9)) == 0
    finally:
        ray.shutdown()  # the harness's in-process Ray: later tests start or join Rays of their own
