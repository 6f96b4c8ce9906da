"""What each trial asks Ray for: a fixed share of a GPU, or (`resources: {gpu: auto}`) the share it needs.

With `gpu: auto` and `gpu_memory_gb` (the memory of one GPU of the cluster, GiB as nvidia-smi reports it;
`--gpu-memory` on `dpl run` / `dpl plan`), each trial asks for the smallest fraction in steps of 1/8 that
holds its memory estimate plus the margin (`trainables.memory`: its own step on the meta device, cached),
through Tune's per-trial resources (`tune.with_resources` with a function of the trial's config). Ray
places a fractional request on one GPU, so trials of different sizes pack a GPU up to 1 and never beyond.
A trial that fits no GPU of that size is refused before anything runs, with what would fit.
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from study.spec import StudySpec
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.errors import UserError

#: Fractions are multiples of 1/GPU_STEPS of a GPU (0.125, 0.25, ... 1).
GPU_STEPS = 8
GIB = 2**30


@dataclass(frozen=True)
class Share:
    """A trial's memory estimate (`trainables.memory`) and the GPU fraction it asks for (None: no fit)."""

    estimate: dict[str, Any]
    fraction: float | None

    @property
    def need_bytes(self) -> int:
        return int(self.estimate["with_margin_bytes"])


def use_gpu_memory(spec: StudySpec, gpu_memory: float | None, gpus_per_trial: float | None = None) -> None:
    """`--gpu-memory N`: every trial its own share of an N GiB GPU (gpu: auto); not with --gpus-per-trial."""
    if gpu_memory is None:
        return
    if gpus_per_trial is not None:
        raise UserError("give --gpu-memory (each trial the share of a GPU of that size it needs) or --gpus-per-trial "
                        "(one share for every trial), not both")
    if gpu_memory <= 0:
        raise UserError(f"--gpu-memory {gpu_memory:g}: give the memory of one GPU in GiB, e.g. --gpu-memory 40")
    spec.raw["resources"].update(gpu="auto", gpu_memory_gb=gpu_memory)


def is_auto(spec: StudySpec) -> bool:
    return spec.raw["resources"].get("gpu") == "auto"


def gpu_memory_gb(spec: StudySpec) -> float:
    """The GPU size the auto fractions are taken of; refused when missing."""
    size = spec.raw["resources"].get("gpu_memory_gb")
    if not size:
        raise ConfigError("study spec: resources.gpu: auto needs the memory of one GPU: resources.gpu_memory_gb "
                          "(GiB, e.g. 40) or --gpu-memory 40")
    return float(size)


def fraction_for(need_bytes: float, memory_gb: float) -> float | None:
    """The smallest k/GPU_STEPS of a `memory_gb` GPU holding `need_bytes`; None when a whole GPU is too small."""
    k = max(1, math.ceil(need_bytes / (memory_gb * GIB / GPU_STEPS)))
    return k / GPU_STEPS if k <= GPU_STEPS else None


def shares(spec: StudySpec, configs: list[TrialConfig]) -> list[Share]:
    """Estimate and fraction of each config on the spec's GPU size (estimates cached on disk)."""
    from trainables.memory import estimate_many

    size = gpu_memory_gb(spec)
    return [Share(e, fraction_for(e["with_margin_bytes"], size)) for e in estimate_many(configs)]


def trial_resources(spec: StudySpec, config: TrialConfig) -> dict[str, float]:
    """What one trial asks Ray for: {"cpu", "gpu"}; with gpu auto, its own fraction (refused if none fits)."""
    res = spec.raw["resources"]
    if not is_auto(spec):
        return {"cpu": res["cpu"], "gpu": res["gpu"]}
    share = shares(spec, [config])[0]
    if share.fraction is None:
        raise UserError(misfit_message(spec, config, share, 1))
    return {"cpu": res["cpu"], "gpu": share.fraction}


def resource_table(spec: StudySpec, configs: list[TrialConfig]) -> dict[str, dict[str, float]]:
    """trial_key(config) -> {"cpu", "gpu"} for every config; with gpu auto, the first trial that fits no GPU of
    the spec's size is refused in one line (saying how many others do not fit either)."""
    res = spec.raw["resources"]
    if not is_auto(spec):
        return {trial_key(c): {"cpu": res["cpu"], "gpu": res["gpu"]} for c in configs}
    found = shares(spec, configs)
    misfits = [(c, s) for c, s in zip(configs, found) if s.fraction is None]
    if misfits:
        raise UserError(misfit_message(spec, *misfits[0], len(misfits)))
    return {trial_key(c): {"cpu": res["cpu"], "gpu": s.fraction} for c, s in zip(configs, found)}


def _lookup(table: dict[str, dict[str, float]], config: dict[str, Any]) -> dict[str, float]:
    return table[trial_key(TrialConfig.from_dict(config["trial"]))]


def tune_resources(spec: StudySpec, configs: list[TrialConfig]) -> dict[str, float] | Callable[[dict[str, Any]], dict[str, float]]:
    """`tune.with_resources`' argument: the fixed request, or with gpu auto a function of a trial's config
    (Tune's per-trial resources) looking its request up in `resource_table` (so it is picklable and cheap)."""
    if not is_auto(spec):
        res = spec.raw["resources"]
        return {"cpu": res["cpu"], "gpu": res["gpu"]}
    return functools.partial(_lookup, resource_table(spec, configs))


def typical_gpu(spec: StudySpec, configs: list[TrialConfig]) -> float:
    """The GPU share of a typical trial (the median fraction with gpu auto), for the console's ETA."""
    if not is_auto(spec):
        return float(spec.raw["resources"].get("gpu") or 0)
    return statistics.median(r["gpu"] for r in resource_table(spec, configs).values()) if configs else 0.0


# ------------------------------------------------------------------------------------ what would fit


def _fits_at(config: TrialConfig, setting: str, value: int, memory_gb: float) -> bool:
    from trainables.memory import estimate_trial_memory

    est = estimate_trial_memory(config.replace(params={**config.params, setting: value}))
    return fraction_for(est["with_margin_bytes"], memory_gb) is not None


def misfit_message(spec: StudySpec, config: TrialConfig, share: Share, count: int) -> str:
    """One line: which trial fits no GPU of this size, by how much, and what would fit (the largest batch
    found by halving the task's batch setting, and the smallest GPU that holds it as it is)."""
    size = gpu_memory_gb(spec)
    need = share.need_bytes / GIB
    setting = share.estimate.get("batch_setting") or "batch_size"
    value = config.params.get(setting)
    hints = []
    if isinstance(value, int) and value > 1:
        smaller = value // 2
        while smaller >= 1 and not _fits_at(config, setting, smaller, size):
            smaller //= 2
        if smaller >= 1:
            hints.append(f"a smaller batch (--set tasks.{config.task}.{setting}={smaller} fits)")
    hints.append(f"a GPU with at least {math.ceil(need)} GiB (--gpu-memory {math.ceil(need)})")
    others = f" (and {count - 1} more trial(s))" if count > 1 else ""
    point = config.point or "pixel"
    return (f"trial {config.task}:{config.dataset}:{config.network}:{point}{others} needs "
            f"{need:.1f} GiB (estimate {share.estimate['total_bytes'] / GIB:.1f} GiB + margin), more than one "
            f"{size:g} GiB GPU; use " + " or ".join(hints))


# ------------------------------------------------------------------------------- `dpl plan`'s packing

#: Share of a device's dense matmul peak that each task's real training step sustained in the benches
#: (bench/*_throughput.py on 2 CPU cores, worked out in cluster/README.md "Assumed sustained rate"):
#: superres 0.26-0.38, delineation 0.13-0.62, autoencoder 0.25-0.80; the median of each. No task has been
#: measured on a GPU yet (docs/BENCHMARKS.md), so these CPU ratios stand in for the GPU's.
MEASURED_EFFICIENCY = {"superres": 0.30, "delineation": 0.44, "autoencoder": 0.56}
#: For a task without a measurement (similarity: evaluation only; plug-ins): the cluster README's assumption.
DEFAULT_EFFICIENCY = 0.35
#: Dense FP32 peak assumed for the GPU-hours: an A100 (`dpl plan --gpu-tflops` for another card).
DEFAULT_GPU_TFLOPS = 19.5


def trials_per_gpu(fraction: float) -> int:
    """How many trials of this share one GPU holds at once."""
    return math.floor(1 / fraction + 1e-9)


def gpu_hours(task: str, gflops: float | None, tflops: float) -> float | None:
    """GPU-hours of `gflops` of training at the task's measured efficiency x the GPU's peak. Packing trials
    on a GPU changes the wall clock, not this: a compute-bound GPU shared by n trials runs each at ~1/n."""
    if gflops is None:
        return None
    return gflops / (MEASURED_EFFICIENCY.get(task, DEFAULT_EFFICIENCY) * tflops * 1e3) / 3600


def packing_report(spec: StudySpec, configs: list[TrialConfig], rows: list[dict[str, Any]],
                   tflops: float | None = None) -> dict[str, Any]:
    """Memory estimate and GPU fraction of every trial (added to its row as `memory`), and per task and
    dataset: trials, estimate min / median / max, trials per fraction, GPU-hours; trials that fit no GPU."""
    from trainables.memory import MARGIN_FACTOR, MARGIN_FIXED_GIB

    tflops = tflops or DEFAULT_GPU_TFLOPS
    size = gpu_memory_gb(spec)
    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    estimates: dict[tuple[str, str], list[float]] = {}
    misfits, total_hours = [], 0.0
    for config, row, share in zip(configs, rows, shares(spec, configs)):
        hours = gpu_hours(config.task, (row.get("compute") or {}).get("total_gflops"), tflops)
        row["memory"] = {**share.estimate, "gpu_fraction": share.fraction, "gpu_hours": hours}
        cell = per_task.setdefault(config.task, {}).setdefault(
            config.dataset, {"trials": 0, "fractions": {}, "does_not_fit": 0, "gpu_hours": 0.0})
        cell["trials"] += 1
        estimates.setdefault((config.task, config.dataset), []).append(share.estimate["total_bytes"] / GIB)
        if share.fraction is None:
            cell["does_not_fit"] += 1
            misfits.append(misfit_message(spec, config, share, 1))
        else:
            key = f"{share.fraction:g}"
            cell["fractions"][key] = cell["fractions"].get(key, 0) + 1
        if hours is None or cell["gpu_hours"] is None:
            cell["gpu_hours"] = None
        else:
            cell["gpu_hours"] += hours
        total_hours = None if hours is None or total_hours is None else total_hours + hours
    for (task, dataset), values in estimates.items():
        per_task[task][dataset]["estimate_gib"] = {"min": min(values), "median": statistics.median(values),
                                                   "max": max(values)}
        fractions = dict(sorted(per_task[task][dataset]["fractions"].items(), key=lambda kv: float(kv[0])))
        per_task[task][dataset]["fractions"] = fractions
        per_task[task][dataset]["trials_per_gpu"] = {f: trials_per_gpu(float(f)) for f in fractions}
    return {
        "gpu_memory_gb": size, "steps": GPU_STEPS, "margin": {"factor": MARGIN_FACTOR, "fixed_gib": MARGIN_FIXED_GIB},
        "per_task": per_task, "gpu_hours": total_hours, "does_not_fit": misfits,
        "rate": {"gpu_tflops": tflops, "efficiency": {**MEASURED_EFFICIENCY, "other tasks": DEFAULT_EFFICIENCY}},
        "note": (f"fraction = the smallest k/{GPU_STEPS} of a {size:g} GiB GPU holding the estimate x {MARGIN_FACTOR:g} "
                 f"+ {MARGIN_FIXED_GIB:g} GiB (CUDA context, cuDNN workspaces, fragmentation); GPU-hours = training "
                 f"FLOPs / (the task's efficiency measured by the CPU benches x {tflops:g} TFLOP/s)"),
    }


def format_packing(memory: dict[str, Any]) -> list[str]:
    """The text lines of `packing_report` for `dpl plan`."""
    width = 58
    lines = [f"GPU packing on {memory['gpu_memory_gb']:g} GiB GPUs (resources.gpu: auto):",
             f"{'task':<12} {'dataset':<11} {'trials':>6}  {'estimate GiB min / median / max':>31}  "
             f"{'trials @ share of a GPU (trials per GPU)':<{width}} {'GPU-hours':>9}"]
    for task, per_ds in memory["per_task"].items():
        for ds, cell in per_ds.items():
            est = cell["estimate_gib"]
            shares_text = ", ".join(f"{n} @{round(float(f) * GPU_STEPS)}/{GPU_STEPS} ({trials_per_gpu(float(f))}/GPU)"
                                    for f, n in cell["fractions"].items())
            if cell["does_not_fit"]:
                shares_text += f"{', ' if shares_text else ''}{cell['does_not_fit']} fit no GPU"
            hours = "n/a" if cell["gpu_hours"] is None else f"{cell['gpu_hours']:.1f}"
            lines.append(f"{task:<12} {ds:<11} {cell['trials']:>6}  {est['min']:>9.2f} / {est['median']:>6.2f} / "
                         f"{est['max']:>6.2f}      {shares_text:<{width}} {hours:>9}")
    total = "n/a" if memory["gpu_hours"] is None else f"{memory['gpu_hours']:.1f}"
    lines.append(f"{'total':<12} {'':<11} {sum(c['trials'] for d in memory['per_task'].values() for c in d.values()):>6}"
                 f"  {'':>31}  {'':<{width}} {total:>9}")
    eff = ", ".join(f"{k} {v:g}" for k, v in memory["rate"]["efficiency"].items())
    lines.append(f"({memory['note']}; efficiencies: {eff})")
    for message in memory["does_not_fit"]:
        lines.append(f"does not fit: {message}")
    return lines
