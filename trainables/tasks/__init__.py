"""The four benchmarks. Each task module exposes the same small interface:

- `DATASETS`: tuple of dataset names it accepts (first = default)
- `VARIANTS`: tuple of variant names (first = default)
- `METRICS`: {final metric name: "max" | "min"}; `PRIMARY_METRIC`: the one used to rank loss networks
- `DISTANCE` (optional): "lpips" or "mse", how the task uses the loss network (logged as param `distance`,
  so `dpl recommend` can print the `PerceptualLoss(...)` line that reproduces it)
- `EPOCH_METRIC`: (name, "max" | "min"), the validation metric the task reports at every epoch and selects
  on; comparable across loss networks (never the loss itself, whose scale depends on the network). A run
  records it (tags `dpl.epoch_metric`, `dpl.epoch_metric_mode`); the analysis reads the per-epoch ranking
  from it and a halving search (`search: {type: halving}`) stops trials on it. Required for halving only.
- `epochs(config) -> int` (optional): how many epochs, each reporting EPOCH_METRIC, a trial with these
  resolved settings runs (default `config.params["epochs"]`; 0 = it reports none per epoch)
- `BUDGETS`: {"smoke"|"quick"|"paper": {hyper-parameter: default}} (the keys `--set` may override)
- `input_size(config) -> int`: the loss network's input size (for the feature-shape metadata)
- `run(config, reporter) -> dict[str, float]`: the trial itself; `config.params` is already resolved
- optional `training_step(config, device) -> TrainingStep`: one step of the trial as `run` takes it, on
  inputs of the trial's shapes, built by the same functions `run` uses; `trainables.memory` runs it on the
  meta device to estimate the trial's memory before anything runs (a task without it has no estimate, so a
  study with `resources: {gpu: auto}` refuses it)
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from trainables.errors import UserError

TASKS = {
    "similarity": "trainables.tasks.similarity",
    "superres": "trainables.tasks.superres",
    "delineation": "trainables.tasks.delineation",
    "autoencoder": "trainables.tasks.autoencoder",
}


@dataclass
class TrainingStep:
    """One step of a trial exactly as its task runs it, on inputs of the trial's shapes and device.

    `run` is the training step (forward through the task's network and the loss network to the point,
    backward, optimizer step), or for a trial that trains nothing its evaluation forward. `evaluation`, if
    given, is a later phase that may need more memory than training (e.g. delineation's whole-tile
    validation). `modules`, `inputs` and `optimizer` are what the step's tensors live in, so that
    `trainables.memory` can count them. `batch_setting` names the task setting the memory grows with, for
    the hint of what would fit on a smaller GPU.
    """

    run: Callable[[], Any]
    modules: tuple[Any, ...]  # torch.nn.Module; None entries (no loss network) are skipped
    inputs: tuple[Any, ...] = ()  # torch.Tensor
    optimizer: Any = None  # torch.optim.Optimizer
    evaluation: Callable[[], Any] | None = None
    batch_setting: str = "batch_size"


#: Extra tasks of the user's own, as "name=package.module,name2=...": the same interface makes any
#: image-synthesis task a study task (e.g. for an Optuna search of its best loss network).
PLUGIN_ENV = "DPL_TASKS"


def plugin_tasks() -> dict[str, str]:
    """The user's own tasks known to this process: name -> module, from DPL_TASKS."""
    return dict(item.split("=", 1) for item in os.environ.get(PLUGIN_ENV, "").split(",") if "=" in item)


def all_tasks() -> dict[str, str]:
    return {**TASKS, **plugin_tasks()}


def use_plugins(recorded: dict[str, str]) -> None:
    """Make tasks of the user's own that a study recorded (name -> module) known to this process, and so
    to the subprocesses and Ray workers it starts (both read DPL_TASKS). A name DPL_TASKS already maps
    keeps that mapping: the setting of the moment wins over the record (a module that moved)."""
    merged = {**recorded, **plugin_tasks()}
    if merged != plugin_tasks():
        os.environ[PLUGIN_ENV] = ",".join(f"{name}={module}" for name, module in merged.items())


def epoch_metric(module: ModuleType) -> tuple[str, str] | None:
    """A task module's (EPOCH_METRIC name, direction), None when it declares none; a malformed one is a
    one-line error naming the module."""
    value = getattr(module, "EPOCH_METRIC", None)
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str)
            and value[1] in ("max", "min")):
        raise UserError(f"{module.__name__}.EPOCH_METRIC = {value!r}: give (metric name, 'max' | 'min'), "
                        f"e.g. ('val/psnr', 'max')")
    return value[0], value[1]


def epochs(module: ModuleType, config: Any) -> int:
    """How many epochs (each reporting the EPOCH_METRIC) a trial of `config` runs: the module's
    `epochs(config)`, else its `epochs` setting, else 0 (no per-epoch report known)."""
    if hasattr(module, "epochs"):
        return int(module.epochs(config))
    return int(config.params.get("epochs", 0))


def task_module(name: str) -> ModuleType:
    tasks = all_tasks()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}: use one of {', '.join(tasks)}")
    try:
        return importlib.import_module(tasks[name])
    except ModuleNotFoundError as exc:
        raise UserError(f"task {name!r}: cannot import {tasks[name]} ({exc}); put the directory that holds it on "
                        f"PYTHONPATH, or map {name} to another module with {PLUGIN_ENV}={name}=package.module") from exc
