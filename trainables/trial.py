"""The one entry point for running a trial, in-process or under Ray Tune.

`prepare` validates a TrialConfig against its task (dataset, variant, budget, `--set` overrides) and
returns it with the task's hyper-parameters fully resolved, so the trial key hashes what actually runs.
`run_trial` seeds, records the provenance every run must carry, and hands over to the task.
"""
from __future__ import annotations

import platform
import random
from typing import Any

import numpy as np
import torch
import torchvision

from trainables import loss_networks as ln
from trainables.config import NO_NETWORK, SYNTHETIC_MARKER, ConfigError, TrialConfig, is_synthetic, resolve_params
from trainables.reporting import Reporter
from trainables.tasks import task_module

__all__ = ["SYNTHETIC_MARKER", "NO_NETWORK", "BASELINE_INFO", "prepare", "provenance", "run_trial", "pick_device", "seed_everything"]

#: `provenance()` records a pixel-baseline trial as {"baseline": "pixel"} (the contract's `dpl.baseline`).
BASELINE_INFO = {"baseline": "pixel"}


def _networkless_tasks() -> list[str]:
    """Tasks (built-in and plugged in) whose module accepts network "none", for the error message."""
    from trainables.tasks import all_tasks

    names = []
    for name in all_tasks():
        try:
            if NO_NETWORK in getattr(task_module(name), "NETWORKLESS_OK", ()):
                names.append(name)
        except Exception:  # noqa: BLE001 - a broken plug-in must not hide the real error
            continue
    return names


def check_no_network(config: TrialConfig, task: Any) -> None:
    """Refuse the pixel baseline where a task has none, and near-misses of its spelling everywhere."""
    name = config.network
    if name != NO_NETWORK and name.strip().lower() in (NO_NETWORK, "null", "pixel"):
        raise ConfigError(f"network: {name!r} is not a network; the pixel-loss baseline is spelled exactly 'none'")
    if name == NO_NETWORK and NO_NETWORK not in getattr(task, "NETWORKLESS_OK", ()):
        raise ConfigError(
            f"network: 'none' (the pixel-loss baseline) is not available for task {config.task}; "
            f"it is for {', '.join(_networkless_tasks()) or 'no task'}"
        )


def check_renamed(task: Any, overrides: dict[str, Any]) -> None:
    """A setting a task renamed (`RENAMED_SETTINGS = {old: message}`) is refused with its new name(s)."""
    for old, new in getattr(task, "RENAMED_SETTINGS", {}).items():
        if old in overrides:
            raise ConfigError(f"{old}: this setting was replaced; {new}")


def prepare(config: TrialConfig) -> TrialConfig:
    """Validate against the task and resolve its hyper-parameters (budget preset + overrides)."""
    task = task_module(config.task)
    dataset = config.dataset or task.DATASETS[0]
    if dataset not in task.DATASETS:
        raise ConfigError(f"dataset: {dataset!r} is not one for task {config.task}; use one of {', '.join(task.DATASETS)}")
    if not config.variant:
        config = config.replace(variant=task.VARIANTS[0])
    if config.variant not in task.VARIANTS:
        raise ConfigError(f"variant: {config.variant!r} is not one of {', '.join(task.VARIANTS)} for task {config.task}")
    points = config.points
    check_no_network(config, task)
    check_renamed(task, config.params)
    if config.network == NO_NETWORK:
        points = ()
    else:
        ln.check_network(config.network)
        points = ln.check_points(config.network, ln.resolve_points(config.network, points or ("all",)))
        ln.weights_enum_name(config.network, config.weights)  # fails early on unknown weight sets
    params = resolve_params(task.BUDGETS, config.budget, config.params)
    if hasattr(task, "check_params"):  # bad values fail here, before a run is recorded or data is read
        task.check_params(params)
    config = config.replace(dataset=dataset, points=points, params=params)
    # a task may pin settings its variants imply (similarity `scratch` -> random weights)
    config = task.resolve_config(config) if hasattr(task, "resolve_config") else config
    if config.network != NO_NETWORK:  # a fixed-size network (ViT, MaxViT) at another size fails here, in one line
        ln.network_input_size(config.network, config.weights, task.input_size(config), config.resize)
    return config


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {setting} asked for but CUDA is not available here; use --device cpu or auto")
    return torch.device(setting)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def provenance(config: TrialConfig) -> dict[str, Any]:
    """Settings derived from the config that a reader of the results needs (logged as tags/params).

    Random weights are stated explicitly (`weights_random`), never inferred from an absent tag.
    """
    info: dict[str, Any] = {
        "synthetic_data": is_synthetic(config.data_root),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "weights_random": config.weights == "random",
    }
    if config.network == NO_NETWORK:
        return {**info, **BASELINE_INFO}
    task = task_module(config.task)
    size = ln.network_input_size(config.network, config.weights, task.input_size(config), config.resize)
    enum_name = ln.weights_enum_name(config.network, config.weights)
    top1 = ln.imagenet_top1(config.network)
    info.update(
        weights_set=enum_name or ("random" if config.weights == "random" else "file"),
        imagenet_top1=top1.get(enum_name) if enum_name else None,
        # the architecture's paper (V1) accuracy, so analyses of random-weight studies still have an x-axis
        arch_imagenet_top1=top1.get(ln.PAPER_WEIGHTS),
        transform_input_applied=ln.uses_transform_input(config.network, config.weights, config.transform_input),
        distance=getattr(task, "DISTANCE", None),  # how the task uses the loss network: lpips | mse
        family=ln.family_of(config.network),
        input_size=size,
    )
    metas = [ln.cached_point_metadata(config.network, point, size) for point in config.points]
    # how the network lays out each point's map before it is viewed as (B, C, H, W); "+" joins fused points
    info["feature_layout"] = "+".join(m["feature_layout"] for m in metas)
    if len(metas) == 1:
        meta = metas[0]
        info.update(
            position=meta["position"],
            relative_depth=meta["relative_depth"],
            batch_norm=meta["batch_norm"],
            params_to_point=meta["params_to_point"],
            gflops_to_point=meta["gflops_to_point"],
            feature_shape="x".join(map(str, meta["feature_shape"])),
        )
    elif ln.entry(config.network) is not None:
        info["position"] = None
    return info


def run_trial(config: TrialConfig, reporter: Reporter) -> dict[str, float]:
    """Run one (already `prepare`d or raw) trial; returns its final metrics."""
    config = prepare(config)
    reporter.set_info(provenance(config))
    seed_everything(config.seed)
    return task_module(config.task).run(config, reporter)
