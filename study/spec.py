"""StudySpec: a study as a YAML file (or a built-in preset), validated with one-line errors.

A spec names *what* to compare (tasks, networks, points, variants, seeds, weights) and *how much*
(per-task budgets and settings) and *with what* (resources). `study.plan` expands it into trials. The
resolved spec is saved in the study directory, so `dpl resume DIR` needs nothing else.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.tracking_retry import DEFAULT_RETRY_S
from trainables.config import (
    BUDGETS,
    MODES,
    NORMALISATIONS,
    RESIZE_WORDS,
    TRANSFORM_INPUT,
    ConfigError,
    parse_assignments,
    resize_setting,
)

PRESETS = ("smoke", "quick", "paper", "corrected", "extended")
SPEC_FILE = "study.yaml"
#: Where relative `data:` paths of a spec point: `--data-root DIR`, else this variable, else the spec's own
#: `data_root`, else DEFAULT_DATA_ROOT (relative to the current directory). `dpl data fetch all --out DIR`
#: fills DIR with the layout the presets read (one folder per dataset, `trainables.data.ROOT_DIRS`).
DATA_ROOT_ENV = "DPL_DATA_ROOT"
DEFAULT_DATA_ROOT = "datasets"

#: The loss-network conditions: study-level defaults, overridable per task, each a value or a list of values
#: (a list expands the grid). value -> allowed values (None = any string; checked when the trial is prepared).
CONDITIONS: dict[str, tuple[str, ...] | None] = {
    "weights": None,
    "normalisation": NORMALISATIONS,
    "mode": MODES,
    "transform_input": TRANSFORM_INPUT,
    "resize": RESIZE_WORDS,  # or a side in pixels (resize_setting)
}
#: Conditions whose values are normalised before they are checked (a YAML `resize: 224` is the string "224").
NORMALISED_CONDITIONS = {"resize": resize_setting}

#: Every top-level key, with what it holds (also the text of the "allowed keys" errors).
TOP_KEYS = {
    "name": "study name (= MLflow experiment)",
    "tasks": "mapping task -> settings",
    "networks": "list of torchvision names, or 'all' (the paper's 14) or 'extended' (the modern set), also inside a list",
    "points": "'all' (each network's 4 default points), a list of p1..p4 / node names, or a mapping network -> list",
    "seeds": "list of integers",
    "weights": "imagenet | random | weight-set name | state-dict path, or a list of them",
    "recipes": "mapping network -> list of torchvision weight sets: that network's weights axis (recipes as an axis)",
    "normalisation": "imagenet | none, or a list",
    "mode": "eval | train, or a list",
    "transform_input": "auto | on | off, or a list",
    "resize": "off | auto | a side in pixels: resize the loss network's input (auto: a fixed-size network's own size), or a list",
    "pixel_baseline": "true | false: add the pixel-loss trial (network none) to every task that has one",
    "data_root": "directory that relative data paths are read from (default: --data-root, $DPL_DATA_ROOT, datasets)",
    "resources": "mapping cpu, gpu (per trial: a fraction or auto), gpu_memory_gb (for auto)",
    "max_concurrent": "integer",
    "max_failures": "integer (restarts of a trial whose worker died)",
    "ray": "mapping of ray.init settings for a local cluster (num_cpus, num_gpus)",
    "search": "mapping: type grid|optuna|halving, num_samples, metric, space (optuna); grace_epochs, "
              "reduction_factor, max_epochs (halving)",
    "storage": "study directory",
    "checkpoints": "auto | shared | mlflow: where trials keep checkpoints (auto = mlflow for an http(s) tracking URI)",
    "ray_storage": "Ray Tune's storage_path: a local path on the head or an object-store URI (default <study>/ray)",
    "plugins": "mapping task name -> module of a task of your own (as DPL_TASKS; dpl records those a study uses)",
    "tracking_retry_s": "seconds a trial (and the driver) keeps retrying an unreachable MLflow server (default 300)",
}
TASK_KEYS = {
    "datasets": "list of dataset names (default: the task's first)",
    "data": "dataset root, 'synthetic', or a mapping dataset -> root/'synthetic'",
    "variants": "list of variant names",
    "budget": "smoke | quick | paper",
    "params": "mapping of task settings (see docs/tasks/<task>.md)",
    "networks": "override the study's networks for this task",
    "points": "override the study's points for this task",
    "weights": "override the study's weights for this task (a value or a list)",
    "normalisation": "override the study's normalisation for this task (a value or a list)",
    "mode": "override the study's loss-network mode for this task (a value or a list)",
    "transform_input": "override the study's transform_input for this task (a value or a list)",
    "resize": "override the study's resize for this task (a value or a list)",
    "pixel_baseline": "true | false: add this task's pixel-loss trial (network none)",
}
RESOURCE_KEYS = {
    "cpu": "CPUs per trial",
    "gpu": "GPU per trial: a fraction, whole GPUs, or auto (the smallest 1/8 step holding the trial's memory estimate)",
    "gpu_memory_gb": "memory of one GPU in GiB (a positive number, e.g. 40): what gpu: auto sizes the fractions for",
}
SEARCH_KEYS = {"type": "grid | optuna | halving", "num_samples": "integer (optuna)",
               "metric": "metric name (default: optuna the task's primary, halving its EPOCH_METRIC)",
               "mode": "max | min (default: the metric's direction)", "space": "mapping name -> distribution (optuna)",
               "batch_size": "trials asked per round (optuna; default: max_concurrent)",
               "grace_epochs": "epochs every trial runs before it can be stopped (halving; default 1)",
               "reduction_factor": "about 1 in this many trials passes each rung (halving; default 3)",
               "max_epochs": "the epochs a trial runs when never stopped (halving; default: the task's)"}


@dataclass
class StudySpec:
    """A validated spec; `raw` is the resolved mapping that is saved and hashed into nothing."""

    name: str
    raw: dict[str, Any]
    storage: Path = field(default_factory=Path)

    @property
    def study_dir(self) -> Path:
        return self.storage


def _fail(key: str, problem: str, allowed: str) -> ConfigError:
    return ConfigError(f"study spec: {key}: {problem}; allowed: {allowed}")


def _check_keys(mapping: Any, allowed: dict[str, str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise _fail(where, f"expected a mapping, got {type(mapping).__name__}", ", ".join(allowed))
    for k in mapping:
        if k not in allowed:
            raise _fail(f"{where}.{k}" if where else str(k), "unknown key", ", ".join(allowed))
    return mapping


def _expect(value: Any, kind: type | tuple[type, ...], key: str, allowed: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _fail(key, f"{value!r} has the wrong type", allowed)
    return value


def validate(raw: dict[str, Any], task_settings: bool = True) -> dict[str, Any]:
    """Check a spec mapping; returns it with defaults filled in. Errors name the key and what is allowed.

    `task_settings=False` checks each task's name but not its settings against the task's module, which
    imports the module (torch: seconds): for reading back a saved spec, checked when it was saved.

    Tasks of the user's own: those the spec's `plugins` maps become known to this process (`use_plugins`,
    so also to its Ray workers), and `plugins` is set to the module of every such task the spec uses
    (from DPL_TASKS or the spec), so the saved spec names them: `dpl status` and `dpl resume` of the study
    need no DPL_TASKS.
    """
    from trainables.tasks import TASKS as BUILT_IN
    from trainables.tasks import all_tasks, use_plugins

    raw = copy.deepcopy(raw)
    _check_keys(raw, TOP_KEYS, "")
    plugins = raw.get("plugins") or {}
    if not isinstance(plugins, dict) or not all(isinstance(m, str) and m for m in plugins.values()):
        raise _fail("plugins", f"{plugins!r}", "a mapping task name -> package.module")
    use_plugins(plugins)
    TASKS = all_tasks()
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail("name", f"{name!r} is not a usable study name", "a non-empty string without '/'")
    tasks = raw.get("tasks")
    if not tasks:
        raise _fail("tasks", "missing or empty", ", ".join(TASKS))
    _check_keys(tasks, {t: "" for t in TASKS}, "tasks")
    for task, settings in tasks.items():
        if task_settings:
            tasks[task] = _validate_task(task, {} if settings is None else settings)
    raw["plugins"] = {task: TASKS[task] for task in tasks if task not in BUILT_IN}
    raw["networks"] = raw.get("networks", "all")
    if raw["networks"] != "all":
        raw["networks"] = _as_list(raw["networks"], "networks")
    raw.setdefault("points", "all")
    seeds = _as_list(raw.setdefault("seeds", [0]), "seeds")
    for s in seeds:
        _expect(s, int, "seeds", "a list of integers")
    raw["seeds"] = seeds
    for key, allowed in CONDITIONS.items():
        raw[key] = condition_values(raw.setdefault(key, allowed[0] if allowed else "imagenet"), key, allowed)
    raw["recipes"] = _recipes(raw.setdefault("recipes", {}))
    _expect(raw.setdefault("pixel_baseline", False), bool, "pixel_baseline", "true | false")
    if "data_root" in raw:
        _expect(raw["data_root"], str, "data_root", "a directory path")
    res = _check_keys(raw.setdefault("resources", {}), RESOURCE_KEYS, "resources")
    cpu = _expect(res.setdefault("cpu", 1), (int, float), "resources.cpu", "a positive number")
    gpu_allowed = "a fraction in [0, 1] (0.25 = 4 trials per GPU), whole GPUs, or auto (each trial its own share)"
    gpu = res.setdefault("gpu", 0)
    if cpu <= 0:
        raise _fail("resources.cpu", f"{cpu}", "a positive number")
    if gpu != "auto":
        _expect(gpu, (int, float), "resources.gpu", gpu_allowed)
        if gpu < 0 or (gpu > 1 and gpu != int(gpu)):
            raise _fail("resources.gpu", f"{gpu}", gpu_allowed)
    if res.get("gpu_memory_gb") is not None:
        size = _expect(res["gpu_memory_gb"], (int, float), "resources.gpu_memory_gb", RESOURCE_KEYS["gpu_memory_gb"])
        if size <= 0:
            raise _fail("resources.gpu_memory_gb", f"{size}", RESOURCE_KEYS["gpu_memory_gb"])
    mc = _expect(raw.setdefault("max_concurrent", 0), int, "max_concurrent", "an integer >= 0 (0 = no limit)")
    if mc < 0:
        raise _fail("max_concurrent", f"{mc}", "an integer >= 0 (0 = no limit)")
    mf = _expect(raw.setdefault("max_failures", 2), int, "max_failures", "an integer >= 0")
    if mf < 0:
        raise _fail("max_failures", f"{mf}", "an integer >= 0")
    if raw.setdefault("checkpoints", "auto") not in ("auto", "shared", "mlflow"):
        raise _fail("checkpoints", repr(raw["checkpoints"]), "auto | shared | mlflow")
    retry = _expect(raw.setdefault("tracking_retry_s", DEFAULT_RETRY_S), (int, float), "tracking_retry_s",
                    "a number of seconds > 0")
    if retry <= 0:
        raise _fail("tracking_retry_s", f"{retry}", "a number of seconds > 0")
    if raw.get("ray_storage") is not None:
        _expect(raw["ray_storage"], str, "ray_storage", "a local path on the head or a URI such as s3://bucket/dpl")
    _check_keys(raw.setdefault("ray", {}), {"num_cpus": "", "num_gpus": ""}, "ray")
    search = _check_keys(raw.setdefault("search", {"type": "grid"}), SEARCH_KEYS, "search")
    if search.setdefault("type", "grid") not in ("grid", "optuna", "halving"):
        raise _fail("search.type", repr(search["type"]), "grid | optuna | halving")
    if search["type"] == "halving":
        grace = _expect(search.setdefault("grace_epochs", 1), int, "search.grace_epochs", "an integer >= 1")
        if grace < 1:
            raise _fail("search.grace_epochs", f"{grace}", "an integer >= 1")
        rf = _expect(search.setdefault("reduction_factor", 3), (int, float), "search.reduction_factor", "a number > 1")
        if rf <= 1:
            raise _fail("search.reduction_factor", f"{rf}", "a number > 1 (3: a third of the trials pass each rung)")
        if search.setdefault("max_epochs", None) is not None:
            _expect(search["max_epochs"], int, "search.max_epochs", "an integer > grace_epochs")
        wrong = [k for k in ("num_samples", "space", "batch_size") if k in search]
        if wrong:
            raise _fail(f"search.{wrong[0]}", "an optuna setting",
                        "for halving: type, metric, mode, grace_epochs, reduction_factor, max_epochs")
    if search["type"] == "optuna":
        n = _expect(search.setdefault("num_samples", 10), int, "search.num_samples", "a positive integer")
        if n <= 0:
            raise _fail("search.num_samples", f"{n}", "a positive integer")
        _expect(search.setdefault("space", {}), dict, "search.space", "a mapping name -> distribution")
    return raw


def _recipes(value: Any) -> dict[str, list[str]]:
    """`recipes: {resnet50: [IMAGENET1K_V1, IMAGENET1K_V2]}`: the weight sets (training recipes) a network is
    run with, in place of the study's `weights`, so one study holds architecture and point fixed and varies
    the recipe (the analysis pairs them: docs/ANALYSIS.md). Names are checked against torchvision when planned."""
    _expect(value, dict, "recipes", "a mapping network -> list of weight sets, e.g. {resnet50: [IMAGENET1K_V1, IMAGENET1K_V2]}")
    out: dict[str, list[str]] = {}
    for network, sets in value.items():
        sets = _as_list(sets, f"recipes.{network}")
        if not sets or not all(isinstance(s, str) and s for s in sets):
            raise _fail(f"recipes.{network}", f"{sets!r}", "a list of weight-set names, e.g. [IMAGENET1K_V1, IMAGENET1K_V2]")
        out[str(network)] = sets
    return out


def condition_values(value: Any, key: str, allowed: tuple[str, ...] | None) -> Any:
    """A condition's values: one value or a non-empty list of distinct ones, each allowed (any string for
    weights, whose names are checked against torchvision when the trial is prepared). Returns `value` with
    NORMALISED_CONDITIONS applied (the same shape: one value or a list)."""
    shown = " | ".join(allowed) if allowed else TOP_KEYS["weights"]
    values = value if isinstance(value, list) else [value]
    normalise = NORMALISED_CONDITIONS.get(key.rsplit(".", 1)[-1])
    if normalise is not None:
        try:
            values = [normalise(v) for v in values]
        except ConfigError as exc:
            raise _fail(key, str(exc).split(": ", 1)[-1], TOP_KEYS[key.rsplit(".", 1)[-1]]) from exc
        value, allowed = (values if isinstance(value, list) else values[0]), None
    if not values:
        raise _fail(key, "an empty list", f"{shown}, or a non-empty list of them")
    for v in values:
        if not isinstance(v, str) or (allowed and v not in allowed):
            hint = " (YAML reads a bare on/off/yes/no as a boolean: quote it)" if isinstance(v, bool) else ""
            listed = f" (in the list {value!r})" if isinstance(value, list) else ""
            raise _fail(key, f"{v!r}{listed}{hint}", shown)
    if len(set(values)) != len(values):
        raise _fail(key, f"{value!r} lists a value twice", "distinct values")
    return value


def _task_module(task: str) -> Any:
    from trainables.tasks import task_module

    return task_module(task)


def _validate_task(task: str, settings: Any) -> dict[str, Any]:
    """One `tasks.<task>` mapping: spec keys, loss-network conditions, and the task's own settings given
    directly (`tasks.superres.eval_protocol: center288`, the same as under `params`)."""
    where = f"tasks.{task}"
    if not isinstance(settings, dict):
        raise _fail(where, f"expected a mapping, got {type(settings).__name__}", ", ".join(TASK_KEYS))
    budget = settings.setdefault("budget", "smoke")
    if budget not in BUDGETS:
        raise _fail(f"{where}.budget", f"{budget!r}", " | ".join(BUDGETS))
    module = _task_module(task)
    known = module.BUDGETS[budget]
    for key in settings:
        if key in TASK_KEYS:
            continue
        if key not in known:
            renamed = getattr(module, "RENAMED_SETTINGS", {}).get(key)
            raise _fail(f"{where}.{key}", f"unknown key{f' ({renamed})' if renamed else ''}",
                        f"{', '.join(TASK_KEYS)}, or a setting of task {task}: {', '.join(sorted(known))}")
    for key in ("datasets", "variants"):
        if key in settings:
            settings[key] = _as_list(settings[key], f"{where}.{key}")
    params = _expect(settings.get("params", {}), dict, f"{where}.params", "a mapping of task settings")
    for key in params:
        if key in settings:
            raise _fail(f"{where}.{key}", f"given both as {where}.{key} and {where}.params.{key}", "one of them")
    for key, value in {**params, **{k: v for k, v in settings.items() if k not in TASK_KEYS}}.items():
        if isinstance(value, list) and not value and not isinstance(known.get(key), list):
            raise _fail(f"{where}.{key}", "an empty list", "a value, or a non-empty list of values (expands the grid)")
    for key, allowed in CONDITIONS.items():
        if key in settings:
            settings[key] = condition_values(settings[key], f"{where}.{key}", allowed)
    if "pixel_baseline" in settings:
        _expect(settings["pixel_baseline"], bool, f"{where}.pixel_baseline", "true | false")
        if settings["pixel_baseline"] and not has_pixel_baseline(module):
            raise _fail(f"{where}.pixel_baseline", f"task {task} has no pixel-loss baseline",
                        "false (the baseline is for the tasks that train with a loss network)")
    return settings


def has_pixel_baseline(module: Any) -> bool:
    """Whether a task module takes network "none" (its `NETWORKLESS_OK`): the training tasks' pixel loss."""
    return "none" in getattr(module, "NETWORKLESS_OK", ())


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, list) or not value:
        raise _fail(key, f"{value!r} is not a non-empty list", "a list (or a single value)")
    return value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a mapping in this spec")
    node[parts[-1]] = value


def preset_path(name: str) -> Path:
    """The preset file shipped next to this module (not looked up by package name: a folder called `study`
    in the current directory, e.g. a study directory, would shadow the package for `python -m study.cli`)."""
    return Path(__file__).resolve().parent / "presets" / f"{name}.yaml"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"study spec {path} cannot be read ({exc.strerror}); check the path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"study spec {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"study spec {path} must be a mapping of keys ({', '.join(TOP_KEYS)}), got {type(data).__name__}")
    return data


def load_spec(
    path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    storage: str | Path | None = None,
    data_root: str | Path | None = None,
) -> StudySpec:
    """A spec from a file or a preset, with `--set key=value` overrides (dotted keys reach into tasks).

    The data root is resolved here, once (see DATA_ROOT_ENV), and saved with the spec, so a resumed study
    reads the same data whatever the environment of the relaunch.
    """
    if (path is None) == (preset is None):
        raise ConfigError(f"give a study spec file or --preset {'|'.join(PRESETS)} (exactly one)")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: no such preset; use one of {', '.join(PRESETS)}")
    raw = read_yaml(preset_path(preset) if preset else Path(path))
    for key, value in parse_assignments(overrides).items():
        _set_dotted(raw, key, value)
    raw = validate(raw)
    root = data_root or os.environ.get(DATA_ROOT_ENV) or raw.get("data_root") or DEFAULT_DATA_ROOT
    raw["data_root"] = str(Path(root).expanduser().resolve())
    directory = Path(storage or raw.get("storage") or Path("studies") / raw["name"]).resolve()
    raw["storage"] = str(directory)
    return StudySpec(name=raw["name"], raw=raw, storage=directory)


def save_spec(spec: StudySpec) -> Path:
    spec.storage.mkdir(parents=True, exist_ok=True)
    path = spec.storage / SPEC_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(spec.raw, sort_keys=False))
    tmp.replace(path)
    return path


def load_saved_spec(study_dir: Path, data_root: str | Path | None = None, task_settings: bool = True) -> StudySpec:
    """The spec a study was started with. Its saved data root is kept unless `data_root` moves it (data
    paths are not part of trial keys, so moved data keeps every result). A study saved before data roots
    existed resolved relative paths against the current directory, and still does. `task_settings=False`
    (`dpl status`, which runs nothing) skips checking the tasks' settings (`validate`)."""
    path = Path(study_dir) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{study_dir} is not a study directory (no {SPEC_FILE}); start one with `dpl run`")
    raw = validate(read_yaml(path), task_settings)
    if data_root is not None:
        raw["data_root"] = str(Path(data_root).expanduser().resolve())
    raw["storage"] = str(Path(study_dir).resolve())
    return StudySpec(name=raw["name"], raw=raw, storage=Path(study_dir).resolve())
