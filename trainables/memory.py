"""How much accelerator memory a trial needs, known before anything runs, and a check of that on the CPU.

`estimate_trial_memory(config)` runs the trial's own step (`task.training_step`, built by the functions the
task's `run` uses: its network, the loss network to the point, the optimizer, a batch of the trial's shapes)
on the **meta device**, where every operator computes its output's shape and nothing is allocated, and
counts the bytes of every tensor storage alive after each operator (`LiveBytes`, a TorchDispatchMode whose
storages are released by Python's own reference counting, as the caching allocator releases blocks). The
peak, and what it consisted of at that moment, is the estimate:

- `params`: parameters and buffers of every module of the step (task network, loss network to the point);
- `gradients`, `optimizer`: of the trained parameters, from the previous step (a warm-up step gives every
  trained parameter its gradient and Adam its state first, so the counted step is a steady-state one: the
  tasks clear gradients only after the forward pass);
- `inputs`: the batch on the device;
- `activations`: everything else alive at the peak: the tensors autograd saved for backward through the
  task network and the loss network, the outputs and temporaries of the operators.

Torch's own `torch.distributed._tools.mem_tracker.MemTracker` was tried first and does not fit these steps:
it registers a gradient hook on every parameter (a frozen loss network raises) and refuses a module called
twice per step at top level (`feature_mse` runs the loss network on the target and on the output).

What it leaves out, on a GPU: the CUDA context of each process (~0.3-0.6 GiB with lazy module loading),
cuDNN/cuBLAS workspaces (allocated inside kernels, up to a few hundred MiB for large convolutions), and the
caching allocator's rounding (512 B blocks, 2 MiB segments) and fragmentation. `with_margin` adds
MARGIN_FIXED_GIB + (MARGIN_FACTOR - 1) x the estimate for them; that is what the GPU fraction must hold.

`measure_cpu_peak(config)` runs the same step on real CPU tensors and reads the CPU allocator's peak from
the torch profiler's memory events: the independent check (tests/test_memory.py, bench/memory_estimate.py).

Estimates are cached on disk like the loss-network metadata (`$DPL_CACHE_DIR/memory_estimates.json`),
keyed by every setting of the trial that reaches the step, by the torch and torchvision versions and by the
code of the trial (the `trainables` package and the task's module, comments and docstrings aside): any
change to them recomputes.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import gc
import hashlib
import inspect
import json
import os
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from trainables.config import TrialConfig
from trainables.errors import UserError
from trainables.tasks import TrainingStep, task_module

GIB = 2**30
#: Margin for what the estimate leaves out (see the module docstring): per process, the CUDA context and
#: cuDNN workspaces; in proportion, the caching allocator's rounding and fragmentation. Assumed, not yet
#: measured on a GPU (docs/benchmarks/memory.md); `bench/memory_estimate.py --device cuda --full-batch`
#: compares them with torch.cuda.max_memory_reserved and the device's used memory.
MARGIN_FIXED_GIB = 1.0
MARGIN_FACTOR = 1.25
#: The categories of an estimate, in the order they are shown.
CATEGORIES = ("params", "gradients", "optimizer", "inputs", "activations")


class MemoryEstimateError(UserError):
    """The trial's step cannot be run on the meta device (or its task offers none)."""


def with_margin(total_bytes: float) -> float:
    """Bytes a GPU must hold for a trial whose estimate is `total_bytes`."""
    return total_bytes * MARGIN_FACTOR + MARGIN_FIXED_GIB * GIB


# ------------------------------------------------------------------------------------------ counting


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive, by category, and their peak.

    A storage is counted once, when an operator first returns a tensor on it (views and in-place results
    share their input's storage), and released when Python frees it (a weakref finalizer), i.e. when the
    last tensor on it dies, which is when a caching allocator gets the block back. Storages created before
    the mode is entered are counted by `add`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = dict.fromkeys(CATEGORIES, 0)
        self.peak = 0
        self.at_peak = dict(self.live)
        self._records: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> [category, bytes]

    def add(self, tensor: torch.Tensor, category: str) -> None:
        """Count `tensor`'s storage under `category`; one already counted moves to it."""
        storage = tensor.untyped_storage()
        record = self._records.get(storage)
        if record is not None:
            self.live[record[0]] -= record[1]
            record[0] = category
            self.live[category] += record[1]
            return
        record = [category, storage.nbytes()]
        self._records[storage] = record
        self.live[category] += record[1]
        weakref.finalize(storage, self._release, record)
        self._update_peak()

    def reset_peak(self) -> None:
        """Start the peak again from what is alive now."""
        self.peak, self.at_peak = sum(self.live.values()), dict(self.live)

    def _release(self, record: list[Any]) -> None:
        self.live[record[0]] -= record[1]

    def _update_peak(self) -> None:
        total = sum(self.live.values())
        if total > self.peak:
            self.peak, self.at_peak = total, dict(self.live)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and self._records.get(t.untyped_storage()) is None:
                self.add(t, "activations")
        return out


def _modules(step: TrainingStep) -> list[torch.nn.Module]:
    return [m for m in step.modules if m is not None]


def _trained(step: TrainingStep) -> list[torch.Tensor]:
    if step.optimizer is None:
        return []
    return [p for group in step.optimizer.param_groups for p in group["params"] if p.requires_grad]


def _optimizer_state(step: TrainingStep) -> list[torch.Tensor]:
    if step.optimizer is None:
        return []
    return [v for state in step.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _count_persistent(counter: LiveBytes, step: TrainingStep) -> None:
    """Gradients of the trained parameters and the optimizer's state, as they stand after a step."""
    for p in _trained(step):
        if p.grad is not None:
            counter.add(p.grad, "gradients")
    for v in _optimizer_state(step):
        counter.add(v, "optimizer")


def _warm_up(step: TrainingStep) -> None:
    """What a step finds from the one before: a gradient on every trained parameter, the optimizer's state."""
    for p in _trained(step):
        p.grad = torch.zeros_like(p)
    if step.optimizer is not None:
        step.optimizer.step()


# ------------------------------------------------------------------------------------------ estimate


def estimation_config(config: TrialConfig) -> TrialConfig:
    """The trial with random loss-network weights (same shapes, nothing to read or download) and its
    GoogLeNet/Inception input transform resolved as the real weights would have it."""
    from trainables.loss_networks import uses_transform_input
    from trainables.trial import NO_NETWORK

    if config.network == NO_NETWORK:
        return config.replace(weights="random")
    applied = uses_transform_input(config.network, config.weights, config.transform_input)
    return config.replace(weights="random", transform_input="on" if applied else "off")


def training_step(config: TrialConfig, device: torch.device | str) -> TrainingStep:
    """The task's step for `config` on `device` (a prepared config: its params resolved)."""
    module = task_module(config.task)
    if not hasattr(module, "training_step"):
        raise MemoryEstimateError(f"task {config.task!r} has no training_step, so its memory cannot be estimated; "
                                  f"give resources.gpu a fraction (e.g. --gpus-per-trial 0.25) instead of auto")
    return module.training_step(estimation_config(config), torch.device(device))


def estimate_uncached(config: TrialConfig) -> dict[str, Any]:
    """The estimate (see the module docstring), computed on the meta device: bytes per category at the peak."""
    try:
        step = training_step(config, "meta")
        counter = LiveBytes()
        for m in _modules(step):
            for t in (*m.parameters(), *m.buffers()):
                counter.add(t, "params")
        for t in step.inputs:
            counter.add(t, "inputs")
        with counter:
            _warm_up(step)
            _count_persistent(counter, step)
            counter.reset_peak()  # the warm-up's own temporaries are not a trial's step
            step.run()
            _count_persistent(counter, step)
            if step.evaluation is not None:
                step.evaluation()
    except MemoryEstimateError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a point that cannot run at this input size
        raise MemoryEstimateError(f"{_name(config)}: its step cannot be run to estimate its memory "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    return {**{k: int(v) for k, v in counter.at_peak.items()}, "total_bytes": int(counter.peak),
            "with_margin_bytes": int(with_margin(counter.peak)), "batch_setting": step.batch_setting}


def _name(config: TrialConfig) -> str:
    return f"{config.task}:{config.dataset}:{config.network}:{config.point or 'pixel'}:{config.variant}"


# --------------------------------------------------------------------------------------------- cache


def _code(path: Path) -> str:
    """A module's code without its comments and docstrings (editing those keeps the cache)."""
    return _parsed(path, path.stat().st_mtime_ns)


@functools.cache
def _parsed(path: Path, mtime_ns: int) -> str:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _source_digest(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(path.name.encode())
        h.update(_code(path).encode())
    return h.hexdigest()[:16]


def _code_fingerprint() -> str:
    """torch, torchvision and the trial code (every module of the `trainables` package)."""
    package = Path(__file__).resolve().parent
    return f"torch{torch.__version__}|tv{torchvision.__version__}|{_source_digest(package.rglob('*.py'))}"


def _entry_key(config: TrialConfig) -> str:
    """What reaches the step: task, dataset, variant, network, points, loss-network conditions but the weights
    (their values do not change shapes), every task setting, and the task module's source (plug-in tasks
    live outside `trainables`)."""
    c = estimation_config(config)
    source = inspect.getsourcefile(task_module(c.task))
    fields = {k: v for k, v in dataclasses.asdict(c).items() if k not in ("seed", "weights", "data_root", "device")}
    fields["task_source"] = _source_digest([Path(source)]) if source else ""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cache_file() -> Path:
    root = Path(os.environ.get("DPL_CACHE_DIR", Path.home() / ".cache" / "dpl"))
    return root / "memory_estimates.json"


def _load_cache(fingerprint: str) -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if data.get("fingerprint") == fingerprint else {}


def _save_cache(fingerprint: str, entries: dict[str, Any]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "entries": entries}))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs recomputation


def estimate_many(configs: list[TrialConfig], workers: int | None = None) -> list[dict[str, Any]]:
    """`estimate_trial_memory` of each config, reading the cache once. Missing estimates are computed in
    `workers` processes (default: one per CPU, when at least PARALLEL_FROM are missing; a cold `dpl plan
    --preset paper` is ~5 CPU-minutes) and the cache is written as they come in, so an interrupted run keeps
    what it computed."""
    fingerprint = _code_fingerprint()
    entries = _load_cache(fingerprint)
    keys = [_entry_key(c) for c in configs]
    missing = {k: c for k, c in zip(keys, configs) if k not in entries}
    workers = workers or ((os.cpu_count() or 1) if len(missing) >= PARALLEL_FROM else 1)
    if missing:
        for done, (key, estimate) in enumerate(_compute(missing, workers), 1):
            entries[key] = estimate
            if done % SAVE_EVERY == 0 or done == len(missing):
                _save_cache(fingerprint, {**_load_cache(fingerprint), **entries})
    return [entries[k] for k in keys]


#: Missing estimates from which `estimate_many` uses a process per CPU; how often it writes the cache.
PARALLEL_FROM, SAVE_EVERY = 16, 16


def _compute(missing: dict[str, TrialConfig], workers: int) -> Iterable[tuple[str, dict[str, Any]]]:
    if workers <= 1:
        for key, config in missing.items():
            yield key, estimate_uncached(config)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker (forking a process that already ran torch ops is not safe);
    # plug-in tasks reach the workers through DPL_TASKS and PYTHONPATH, as they reach Ray's
    with ProcessPoolExecutor(min(workers, len(missing)), mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from zip(missing, pool.map(estimate_uncached, missing.values(), chunksize=2))


def estimate_trial_memory(config: TrialConfig) -> dict[str, Any]:
    """Bytes a trial's step holds at its peak, by category (params, gradients, optimizer, inputs,
    activations), `total_bytes`, `with_margin_bytes` (what a GPU must hold) and the task setting it grows
    with (`batch_setting`); cached on disk. `config` must be prepared (`trainables.trial.prepare`)."""
    return estimate_many([config])[0]


# --------------------------------------------------------------------------------------------- check


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _allocator_peak(prof: Any) -> int:
    """The CPU allocator's peak of bytes allocated while the profiler ran and still alive.

    Its memory events carry the running total the allocator reports (`total_allocated`); that counter
    lives as long as the process and is not lowered by frees outside a profiling session, so the total
    just before this session's first allocation is subtracted.
    """
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        fields = event.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
            events.append((event.start_time_ns, fields.total_allocated, fields.alloc_size))
    if not events:
        return 0
    events.sort()
    baseline = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - baseline


def measure_cpu_peak(config: TrialConfig, steps: int = 2) -> dict[str, int]:
    """The same step on real CPU tensors: bytes of the parameters, buffers and inputs (built before) plus the
    CPU allocator's peak over `steps` steps and the evaluation phase (torch profiler memory events).

    What the GPU would hold too, with two differences: kernels that take scratch memory from the CPU allocator
    (oneDNN reorders) count here, cuDNN workspaces do not; and a CPU trial keeps its batch where it is read.
    """
    from torch.profiler import ProfilerActivity, profile

    step = training_step(config, "cpu")
    modules = _modules(step)
    persistent = _storage_bytes([t for m in modules for t in (*m.parameters(), *m.buffers())] + list(step.inputs))
    gc.collect()  # no earlier garbage freed (and counted) while the allocator is watched
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            step.run()
        if step.evaluation is not None:
            step.evaluation()
    dynamic = _allocator_peak(prof)
    return {"persistent_bytes": persistent, "dynamic_peak_bytes": dynamic, "total_bytes": persistent + dynamic}
