"""A task with planted learning curves, for testing successive halving (DPL_TASKS=planted=planted_task).

Each (network, point) has a planted final score and a learning speed; at every epoch a trial reports
`val/score` = final x (1 - exp(-epoch / tau)) + seed noise, its EPOCH_METRIC, and at its end `score` (the
last value). No loss network is built, so a trial costs milliseconds plus `sleep_s` per epoch; it checkpoints
every epoch like a real task, so a killed trial resumes. `TRUTH` plants the cells the tests name: the best
cell (squeezenet1_1 at features.7) leads at every epoch, a fast starter (alexnet at features.1) is second at
epoch 1 and ends in the lower half (a rank crossing); every other cell gets a final score in [0.3, 0.8] and a
speed from a hash of its name.
"""
from __future__ import annotations

import hashlib
import math
import time

from trainables.reporting import load_checkpoint, staged_checkpoint

DATASETS = ("planted",)
VARIANTS = ("default",)
METRICS = {"score": "max"}
PRIMARY_METRIC = "score"
EPOCH_METRIC = ("val/score", "max")
_BASE = {"epochs": 9, "sleep_s": 0.0, "noise": 0.005}
BUDGETS = {"smoke": dict(_BASE), "quick": dict(_BASE), "paper": dict(_BASE)}
#: (final score, tau in epochs) of the cells the tests name
TRUTH = {("squeezenet1_1", "features.7"): (1.0, 1.0), ("alexnet", "features.1"): (0.55, 0.2)}
BEST = ("squeezenet1_1", "features.7")


def input_size(config) -> int:
    return 32


def _uniform(text: str, lo: float, hi: float) -> float:
    return lo + (hi - lo) * int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def truth(network: str, point: str) -> tuple[float, float]:
    """The planted (final score, tau) of a cell."""
    return TRUTH.get((network, point)) or (_uniform(f"{network}@{point}/final", 0.3, 0.8),
                                           _uniform(f"{network}@{point}/tau", 1.0, 3.0))


def value(network: str, point: str, seed: int, epoch: int, noise: float) -> float:
    """`val/score` of a cell at an epoch: the planted curve plus a seed- and epoch-dependent offset."""
    final, tau = truth(network, point)
    return final * (1 - math.exp(-epoch / tau)) + noise * (_uniform(f"{network}@{point}/{seed}/{epoch}", -1, 1))


def run(config, reporter):
    p = config.params
    state = load_checkpoint(reporter.resume_dir())
    start = int(state["epoch"]) + 1 if state is not None else 1
    score = float(state["score"]) if state is not None else math.nan
    for epoch in range(start, p["epochs"] + 1):
        time.sleep(p["sleep_s"])
        score = value(config.network, config.point, config.seed, epoch, p["noise"])
        metrics = {"val/score": score, **({"score": score} if epoch == p["epochs"] else {})}
        with staged_checkpoint({"epoch": epoch, "score": score}) as d:
            reporter.report(epoch, metrics, checkpoint_dir=d)
    return {"score": score}
