"""Successive halving on planted truth: does the search find what the full grid finds, and at what compute?

A *world* plants a learning curve per (network, point) cell and a seed spread; one *repetition* draws the
trials' curves once (the same draw is the grid's result and the search's view), runs the study's own
scheduler (`study.halving.HalvingScheduler`, the class `dpl run` uses) over them, ranks the candidates the
way `dpl recommend` does (`analysis.recommend.halving_rank`) and compares with the grid's best cell (the best
seed-mean at the last epoch). Reported over repetitions: how often the grid's best is the search's top-1 and
in its top 3, the compute used (trial-epochs, and weighted by each cell's cost) as a share of the grid's,
and the same recall for random search given the same compute (that many cells at full budget, chosen at
random; its recall is the share of cells it can afford).

Two engines drive the scheduler:
- `tune`: real Ray Tune (a Tuner per repetition, `max_concurrent_trials`, a function trainable that replays
  its planted curve, reporting one epoch every `cost x epoch_s` seconds): the real event loop. Slow (each
  trial costs Tune ~1 s), so few repetitions.
- `replay`: the same scheduler object driven by a discrete-event loop with `concurrency` workers, trials
  started in the same order, one epoch taking `cost` time units: thousands of repetitions in seconds. With
  concurrency 1 it must make exactly Tune's decisions (`--check`); with more, Tune's interleaving depends on
  timing, so the two are compared as distributions.

The worlds (`WORLDS`) and what in them was measured and what assumed: docs/ANALYSIS.md, "Halving on planted
truth". Run from the repository root:

    python bench/halving_sim.py                       # the table of docs/ANALYSIS.md (replay, ~2 min)
    python bench/halving_sim.py --engine tune --reps 20 --settings 1,3 --concurrency 4   # real Tune
    python bench/halving_sim.py --check               # replay == Tune, decision by decision (concurrency 1)
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.recommend import halving_rank  # noqa: E402
from study.batch import scoped_env  # noqa: E402
from study.halving import Halving, HalvingScheduler, config_id  # noqa: E402


@dataclass(frozen=True)
class World:
    """Planted truth for one benchmark, in units of the spread of the cells' final scores (sd 1).

    Cell c's mean curve: final_c + transient_c x exp(-(e - 1) / tau) at epoch e (e = 1..epochs), with final_c
    ~ N(0, 1) and transient_c ~ N(0, early_sd) independent of it, so the ranking at epoch 1 correlates with
    the final one as 1 / sqrt(1 + early_sd^2): `early_sd` sets the rank crossings. A trial (cell, seed) adds
    a seed offset ~ N(0, seed_sd) held over its epochs and validation noise ~ N(0, epoch_sd) per epoch.
    A cell's cost per epoch is lognormal(0, cost_sd) (networks differ in FLOPs)."""

    name: str
    cells: int = 56
    epochs: int = 27
    early_sd: float = 1.0
    tau: float = 4.0
    seed_sd: float = 0.3
    epoch_sd: float = 0.1
    cost_sd: float = 0.8
    seeds: int = 1
    note: str = ""

    def draw(self, rng: np.random.Generator) -> "Draw":
        final = rng.normal(0, 1, self.cells)
        transient = rng.normal(0, self.early_sd, self.cells)
        e = np.arange(1, self.epochs + 1)
        mean = final[:, None] + transient[:, None] * np.exp(-(e[None, :] - 1) / self.tau)
        seed = rng.normal(0, self.seed_sd, (self.cells, self.seeds))
        noise = rng.normal(0, self.epoch_sd, (self.cells, self.seeds, self.epochs))
        curves = mean[:, None, :] + seed[:, :, None] + noise  # (cells, seeds, epochs), epoch e at index e - 1
        cost = np.exp(rng.normal(0, self.cost_sd, self.cells))
        return Draw(curves, cost, int(np.argmax(final)))


@dataclass
class Draw:
    curves: np.ndarray  # (cells, seeds, epochs)
    cost: np.ndarray  # (cells,) time / FLOPs of one epoch of the cell
    true_best: int

    @property
    def grid_best(self) -> int:
        """What the full grid reports as best: the best seed-mean at the last epoch."""
        return int(np.argmax(self.curves[:, :, -1].mean(axis=1)))


#: The worlds of docs/ANALYSIS.md. `measured`: seed spread, validation noise and rank crossings as this project's
#: own runs show them (`--measure`: 13 autoencoder trials, 7 cells, smoke budget, 6 epochs, synthetic SVHN,
#: random weights: seed_sd 0.36, epoch_sd 0.18, r(epoch 1, epoch 6) = 0.96 -> early_sd ~0.06); `crossing`:
#: early_sd at the upper end of that r's 95 % interval (0.76 -> 0.85); `hard`: assumed, twice the noise and
#: strong crossings (r ~0.55), to show where halving breaks. Epochs (27) and tau (4) are assumed.
WORLDS = {
    "measured": World("measured", early_sd=0.1, seed_sd=0.36, epoch_sd=0.18),
    "crossing": World("crossing", early_sd=0.85, seed_sd=0.36, epoch_sd=0.18),
    "hard": World("hard", early_sd=1.5, seed_sd=0.72, epoch_sd=0.36),
}


def halving_of(world: World, grace: int, rf: float) -> Halving:
    return Halving("sim", "sim", "val/score", "max", grace, rf, world.epochs, world.cells * world.seeds,
                   world.cells, world.seeds)


def key(cell: int, seed: int) -> str:
    return f"{cell}/{seed}"


@dataclass
class Outcome:
    """One repetition: the search's ranking of cells and the epochs it ran per trial."""

    ranking: list[int]
    epochs: dict[str, int] = field(default_factory=dict)  # trial key -> epochs run
    stops: dict[str, int] = field(default_factory=dict)  # trial key -> epoch it was stopped at


def rank(draw: Draw, halving: Halving, epochs: dict[str, int], stops: dict[str, int]) -> list[int]:
    """The cells as `dpl recommend` ranks them from what the trials logged."""
    trials = [{"cell": c, "finished": key(c, s) not in stops,
               "history": {e: float(draw.curves[c, s, e - 1]) for e in range(1, epochs.get(key(c, s), 0) + 1)}}
              for c in range(draw.curves.shape[0]) for s in range(draw.curves.shape[1])]
    return [r["cell"] for r in halving_rank(trials, halving.rungs, halving.max_epochs, "max")]


def order(world: World, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The trials in the order the study starts them: a seeded shuffle (`study.halving.shuffled`)."""
    trials = [(c, s) for c in range(world.cells) for s in range(world.seeds)]
    return [trials[i] for i in rng.permutation(len(trials))]


# ------------------------------------------------------------------------------------------------ engines


def replay(draw: Draw, halving: Halving, trials: list[tuple[int, int]], concurrency: int,
           make: Callable[..., Any] = HalvingScheduler) -> Outcome:
    """The scheduler driven by a discrete-event loop: `concurrency` workers take the trials in order; one
    epoch of cell c takes cost[c]; each result goes to `on_trial_result` in time order; a STOP or the last
    epoch frees the worker."""
    sched = make(halving, {config_id({"key": key(c, s)}): key(c, s) for c, s in trials})
    pending = list(reversed(trials))
    events: list[tuple[float, int, int, int, int]] = []  # (time, tie, cell, seed, epoch)
    tie = 0
    out = Outcome([])

    def start(now: float) -> None:
        nonlocal tie
        c, s = pending.pop()
        sched.on_trial_add(None, _Trial(key(c, s)))
        tie += 1
        heapq.heappush(events, (now + draw.cost[c], tie, c, s, 1))

    for _ in range(min(concurrency, len(pending))):
        start(0.0)
    while events:
        now, _, c, s, epoch = heapq.heappop(events)
        k = key(c, s)
        out.epochs[k] = epoch
        action = sched.on_trial_result(None, _Trial(k), {"epoch": epoch, "val.score": float(draw.curves[c, s, epoch - 1])})
        if action == "STOP" or epoch == halving.max_epochs:
            if action == "STOP":
                out.stops[k] = epoch
            else:
                sched.on_trial_complete(None, _Trial(k), {"dpl_done": 1})
            if pending:
                start(now)
        else:
            tie += 1
            heapq.heappush(events, (now + draw.cost[c], tie, c, s, epoch + 1))
    out.ranking = rank(draw, halving, out.epochs, out.stops)
    return out


class _Trial:
    """What the scheduler reads of a trial (as Tune's Trial): its config."""

    def __init__(self, k: str) -> None:
        self.trial_id = k
        self.config = {"trial": {"key": k}}


def _replay_trainable(config: dict[str, Any]) -> None:
    """The Tune trainable of the `tune` engine: report the planted curve, one epoch every `epoch_s` seconds."""
    from ray import tune

    for epoch, value in enumerate(config["trial"]["curve"], start=1):
        time.sleep(config["trial"]["epoch_s"])
        tune.report({"epoch": epoch, "val.score": value})


def tune_run(draw: Draw, halving: Halving, trials: list[tuple[int, int]], concurrency: int, epoch_s: float,
             storage: Path) -> Outcome:
    """One repetition under real Ray Tune: a Tuner over the trials in order, the study's scheduler."""
    from ray import tune

    space = [{"key": key(c, s), "curve": [float(v) for v in draw.curves[c, s]], "epoch_s": epoch_s * float(draw.cost[c])}
             for c, s in trials]
    sched = HalvingScheduler(halving, {config_id(item): item["key"] for item in space})
    tuner = tune.Tuner(
        tune.with_resources(_replay_trainable, {"cpu": 0.01}),
        param_space={"trial": tune.grid_search(space)},
        tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=concurrency, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, name=f"sim-{time.time_ns()}"),
    )
    out = Outcome([])
    with scoped_env({"RAY_AIR_NEW_OUTPUT": "0"}):  # no experiment header per Tuner (the caller's env kept)
        results = tuner.fit()
    for r in results:
        k = r.config["trial"]["key"]
        last = int((r.metrics or {}).get("epoch", 0))
        out.epochs[k] = last
        if last < halving.max_epochs:
            out.stops[k] = last
    out.ranking = rank(draw, halving, out.epochs, out.stops)
    return out


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class Tally:
    top1: int = 0
    top3: int = 0
    share: list[float] = field(default_factory=list)  # trial-epochs / the grid's
    cost_share: list[float] = field(default_factory=list)  # cost-weighted
    random3: list[float] = field(default_factory=list)  # random search's recall at the same compute
    grid_true: int = 0  # the grid's best is the planted best
    reps: int = 0

    def add(self, draw: Draw, out: Outcome, world: World, rng: np.random.Generator) -> None:
        best = draw.grid_best
        self.reps += 1
        self.top1 += out.ranking[0] == best
        self.top3 += best in out.ranking[:3]
        used = sum(out.epochs.values())
        grid = world.cells * world.seeds * world.epochs
        self.share.append(used / grid)
        cost = {k: draw.cost[int(k.split("/")[0])] for k in out.epochs}
        self.cost_share.append(sum(cost[k] * e for k, e in out.epochs.items())
                               / (draw.cost.sum() * world.seeds * world.epochs))
        affordable = int(math.floor(used / grid * world.cells))  # cells at full budget for the same epochs
        self.random3.append(float(best in rng.choice(world.cells, affordable, replace=False)) if affordable else 0.0)
        self.grid_true += best == draw.true_best

    def row(self) -> dict[str, float]:
        n = max(self.reps, 1)
        return {"reps": self.reps, "top1": self.top1 / n, "top3": self.top3 / n, "share": float(np.mean(self.share)),
                "share_p90": float(np.percentile(self.share, 90)), "cost_share": float(np.mean(self.cost_share)),
                "random_top3": float(np.mean(self.random3)), "grid_is_true_best": self.grid_true / n}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def simulate(world: World, grace: int, rf: float, reps: int, concurrency: int, seed: int = 0,
             engine: str = "replay", epoch_s: float = 0.002, make: Callable[..., Any] = HalvingScheduler,
             storage: Path | None = None) -> dict[str, float]:
    """`reps` repetitions of one setting in one world; the figures of `Tally.row`."""
    rng = np.random.default_rng(seed)  # the worlds and orders: the same draws for every engine and setting
    pick = np.random.default_rng(seed + 1)  # random search's picks (their number depends on the outcome)
    halving = halving_of(world, grace, rf)
    tally = Tally()
    for _ in range(reps):
        draw = world.draw(rng)
        trials = order(world, rng)
        if engine == "tune":
            out = tune_run(draw, halving, trials, concurrency, epoch_s, storage or Path("/tmp/dpl-halving-sim"))
        else:
            out = replay(draw, halving, trials, concurrency, make)
        tally.add(draw, out, world, pick)
    return tally.row()


SETTINGS = [(1, 2), (1, 3), (1, 4), (2, 3), (3, 3), (3, 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("replay", "tune"), default="replay")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per row (replay 1000, tune 20)")
    ap.add_argument("--worlds", default=",".join(WORLDS))
    ap.add_argument("--settings", default=None, help="grace,factor pairs separated by ';' (default: a sweep)")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (the study's `seeds`)")
    ap.add_argument("--check", action="store_true", help="replay vs Tune, decision by decision (concurrency 1)")
    ap.add_argument("--measure", nargs=2, metavar=("TRACKING_URI", "EXPERIMENT"),
                    help="print a finished grid study's seed spread, noise and rank crossings in World units")
    args = ap.parse_args(argv)
    if args.check:
        return check()
    if args.measure:
        for k, v in measure(*args.measure).items():
            print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")
        return 0
    reps = args.reps or (1000 if args.engine == "replay" else 20)
    settings = ([tuple(float(x) if "." in x else int(x) for x in s.split(",")) for s in args.settings.split(";")]
                if args.settings else SETTINGS)
    if args.engine == "tune":
        _init_ray()
    print(f"# halving on planted truth: engine {args.engine}, {reps} repetitions per row, load {os.getloadavg()[0]:.1f}")
    print("| world | grace | factor | concurrency | top-1 | top-3 (95% CI) | compute (epochs) | p90 | compute (cost) "
          "| random search top-3, same compute | grid's best = planted best |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    started = time.monotonic()
    for name in args.worlds.split(","):
        world = replace(WORLDS[name], seeds=args.seeds)
        for grace, rf in settings:
            for conc in (int(c) for c in args.concurrency.split(",")):
                r = simulate(world, int(grace), float(rf), reps, conc, engine=args.engine)
                lo, hi = wilson(r["top3"] * r["reps"], r["reps"])
                print(f"| {name} | {grace} | {rf:g} | {conc} | {r['top1']:.2f} | {r['top3']:.2f} ({lo:.2f}-{hi:.2f}) "
                      f"| {r['share']:.2f} | {r['share_p90']:.2f} | {r['cost_share']:.2f} | {r['random_top3']:.2f} "
                      f"| {r['grid_is_true_best']:.2f} |", flush=True)
    print(f"# {time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f}")
    return 0


def measure(tracking_uri: str, experiment: str) -> dict[str, float]:
    """The world's parameters as a study's per-epoch histories show them (`--measure`): each trial's history
    of its `dpl.epoch_metric`, cells = (network, point), in units of the sd of the cells' final seed-means.

    seed_sd: within-cell sd of the final values (pooled over cells); epoch_sd: sd of the second differences
    of each history over its last half, / sqrt(6) (noise, not trend, for a smooth curve); early_sd: from the
    correlation r of the cells' seed-means at epoch 1 with those at the end, r = 1 / sqrt(1 + early_sd^2 +
    noise at epoch 1 relative to the spread), solved for early_sd (0 when r is higher than that allows)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`dpl.kind` = 'trial' and attributes.status = 'FINISHED'",
                              max_results=5000)
    metric = runs[0].data.tags["dpl.epoch_metric"]
    sign = -1.0 if runs[0].data.tags.get("dpl.epoch_metric_mode") == "min" else 1.0
    hist: dict[tuple[str, str], list[np.ndarray]] = {}
    for r in runs:
        h = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, metric))
        hist.setdefault((r.data.params["network"], r.data.params["point"]), []).append(sign * np.array([v for _, v in h]))
    epochs = min(len(v) for vs in hist.values() for v in vs)
    final = [np.array([v[epochs - 1] for v in vs]) for vs in hist.values()]  # per cell: its seeds
    first = [np.array([v[0] for v in vs]) for vs in hist.values()]
    spread = np.std([f.mean() for f in final], ddof=1)
    several = [f for f in final if len(f) > 1]  # cells with two or more finished seeds
    seed_sd = np.sqrt(np.mean([f.var(ddof=1) for f in several])) / spread if several else math.nan
    half = [np.diff(v[epochs // 2:epochs], n=2) for vs in hist.values() for v in vs]
    epoch_sd = np.concatenate(half).std(ddof=1) / np.sqrt(6) / spread if epochs >= 4 else math.nan
    r = np.corrcoef([f.mean() for f in first], [f.mean() for f in final])[0, 1]
    n_seeds = np.mean([len(f) for f in final])
    noise1 = (seed_sd ** 2 + epoch_sd ** 2) / n_seeds
    early_sd = math.sqrt(max(0.0, 1 / r ** 2 - 1 - noise1)) if r > 0 else math.inf
    return {"cells": len(hist), "trials": len(runs), "cells_with_2_seeds": len(several), "epochs": epochs,
            "metric": metric,
            "final_spread": float(spread), "seed_sd": float(seed_sd), "epoch_sd": float(epoch_sd),
            "r_first_final": float(r), "early_sd": float(early_sd)}


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        here = Path(__file__).resolve().parent
        path = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])  # workers import this
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}})


def check(reps: int = 3, world: World | None = None) -> int:
    """Replay and Tune make the same decisions at concurrency 1 (same trials, same order, same values)."""
    _init_ray()
    world = world or replace(WORLDS["measured"], cells=16, epochs=9)
    rng = np.random.default_rng(1)
    halving = halving_of(world, 1, 3)
    for i in range(reps):
        draw, trials = world.draw(rng), order(world, rng)
        a = replay(draw, halving, trials, 1)
        b = tune_run(draw, halving, trials, 1, 0.0, Path("/tmp/dpl-halving-sim"))
        same = a.epochs == b.epochs and a.ranking == b.ranking
        print(f"repetition {i}: replay stops {sorted(a.stops.items())}; tune stops {sorted(b.stops.items())}: "
              f"{'SAME' if same else 'DIFFERENT'}")
        if not same:
            print("FAIL: replay and Tune differ")
            return 1
    print("PASS: replay makes Tune's decisions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
