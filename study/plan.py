"""Expand a StudySpec into trials: one per (task, dataset, network, point, variant, seed, condition).

Each trial is a fully resolved TrialConfig with its key. A condition is one combination of the loss-network
settings (weights, normalisation, mode, transform_input, resize: study-level values, overridden per task, each a
value or a list) and of the task settings given as lists (`tasks.superres.eval_protocol: [full, center288]`).
`pixel_baseline: true` adds the network-less trial (network "none") of every task that has one, once per
(dataset, variant, seed, task-setting combination).

Data marked `synthetic` is generated once per study under `<study>/data/<dataset>` before any trial starts;
plan.json records, per trial on such data, how it was made and the sha256 of its files
(`synthetic_manifest`), so a node that does not see the study directory regenerates the same bytes and
checks them (`trainables.data.manifest`). Relative data paths are read from the spec's data root
(`--data-root`, `$DPL_DATA_ROOT`, `datasets/`).

`plan_report` is what `dpl plan` prints: the trials, counts per task and dataset, and a compute estimate,
computed without Ray, MLflow or writing anything.

torch and torchvision (3 s to import) are imported by the functions that expand or cost a grid, not by the
module: `dpl status` reads plan.json through it and needs neither.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec import CONDITIONS, TASK_KEYS, StudySpec, has_pixel_baseline
from trainables.config import NO_NETWORK, SYNTHETIC_MARKER, ConfigError, TrialConfig, trial_key
from trainables.errors import UserError
from trainables.tasks import task_module

#: Which synthetic generator (= `trainables.data` module) serves which dataset name.
SYNTH_SOURCE = {"bapps": "bapps", "coco": "superres", "mass_roads": "roads", "svhn": "svhn", "stl10": "stl10"}
#: The seed every study's synthetic data is generated with (so every node can regenerate the same bytes).
SYNTH_SEED = 0


@dataclass(frozen=True)
class PlannedTrial:
    key: str
    config: TrialConfig

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {"trial_key": self.key, "task": c.task, "dataset": c.dataset, "network": c.network,
                "point": c.point, "variant": c.variant, "seed": c.seed, "weights": c.weights, "mode": c.mode,
                "normalisation": c.normalisation, "transform_input": c.transform_input, "resize": c.resize}

    def row(self) -> dict[str, Any]:
        """Everything `dpl plan` shows of a trial: the summary, budget, every resolved task setting, data."""
        c = self.config
        return {**self.summary(), "point": c.point or NO_NETWORK, "baseline": "pixel" if c.network == NO_NETWORK else "",
                "budget": c.budget, "params": dict(c.params), "data_root": c.data_root}


def _networks(spec_value: Any) -> list[str]:
    from trainables import loss_networks as ln  # torch and torchvision: imported where a grid is expanded

    return ln.expand_networks(spec_value)


def _points(spec_value: Any, network: str) -> list[tuple[str, ...]]:
    """One trial per point: 'all' -> the network's 4 default points; a mapping gives per-network lists."""
    if network == NO_NETWORK:
        return [()]
    if isinstance(spec_value, dict):
        spec_value = spec_value.get(network, "all")
    if spec_value == "all":
        spec_value = ["all"]
    if isinstance(spec_value, str):
        spec_value = [spec_value]
    from trainables import loss_networks as ln

    points: list[tuple[str, ...]] = []
    for p in spec_value:
        for node in ln.resolve_points(network, p):
            points.append((node,))
    return points


def data_root(spec: StudySpec, task: str, dataset: str, setting: Any) -> str:
    """The directory a task's dataset is read from. Relative paths are taken from the spec's data root
    (a study saved before data roots existed has none: the current directory, as it was then)."""
    if isinstance(setting, dict):
        setting = setting.get(dataset)
    if setting in (None, "synthetic"):
        return str(spec.study_dir / "data" / dataset)
    path = Path(setting).expanduser()
    if not path.is_absolute() and spec.raw.get("data_root"):
        path = Path(spec.raw["data_root"]) / path
    return str(path.resolve())


def synthetic_datasets(spec: StudySpec) -> dict[str, Path]:
    """dataset -> directory for every dataset the spec wants generated."""
    out: dict[str, Path] = {}
    for task, settings in spec.raw["tasks"].items():
        module = task_module(task)
        setting = settings.get("data", "synthetic")
        for ds in settings.get("datasets", [module.DATASETS[0]]):
            value = setting.get(ds) if isinstance(setting, dict) else setting
            if value in (None, "synthetic"):
                out[ds] = spec.study_dir / "data" / ds
    return out


def _synthetic_size(spec: StudySpec) -> str:
    return "smoke" if all(s.get("budget", "smoke") == "smoke" for s in spec.raw["tasks"].values()) else "small"


def ensure_synthetic_data(spec: StudySpec) -> list[Path]:
    """Generate each synthetic dataset once (skipped when its marker exists)."""
    from trainables.data import dataset_module

    made = []
    for dataset, root in synthetic_datasets(spec).items():
        if (root / SYNTHETIC_MARKER).is_file():
            continue
        if dataset not in SYNTH_SOURCE:
            raise ConfigError(f"study spec: dataset {dataset!r} has no synthetic generator (those with one: "
                              f"{', '.join(SYNTH_SOURCE)}); give its task a `data:` path")
        dataset_module(SYNTH_SOURCE[dataset]).synthesize(root, seed=SYNTH_SEED, size=_synthetic_size(spec))
        made.append(root)
    return made


def synthetic_manifest(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """dataset -> how its synthetic data was made and the sha256 of its files (`tree_sha256`), for every
    generated dataset on disk. Recorded in plan.json and handed to the trials: a node that does not see
    the study directory regenerates the data from it and checks the hash (`trainables.data.manifest`)."""
    from trainables.data.manifest import tree_sha256

    out = {}
    for dataset, root in synthetic_datasets(spec).items():
        if dataset in SYNTH_SOURCE and (root / SYNTHETIC_MARKER).is_file():
            out[dataset] = {"root": str(root), "generator": SYNTH_SOURCE[dataset], "seed": SYNTH_SEED,
                            "size": _synthetic_size(spec), "sha256": tree_sha256(root)}
    return out


# ------------------------------------------------------------------------------------------ conditions


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def loss_conditions(raw: dict[str, Any], settings: dict[str, Any], network: str | None = None) -> list[dict[str, str]]:
    """Every combination of the loss-network conditions for one task (task value, else the study's); a
    network named in the study's `recipes` runs with those weight sets unless the task sets `weights`."""
    axes = {key: _values(settings.get(key, raw[key])) for key in CONDITIONS}
    if network in raw.get("recipes", {}) and "weights" not in settings:
        axes["weights"] = list(raw["recipes"][network])
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def task_settings(settings: dict[str, Any], module: Any) -> list[dict[str, Any]]:
    """Every combination of a task's settings (`params` and those given directly under the task).

    A list expands the grid unless the setting's own default is a list (then it is one value).
    """
    given = {**settings.get("params", {}), **{k: v for k, v in settings.items() if k not in TASK_KEYS}}
    defaults = module.BUDGETS[settings.get("budget", "smoke")]
    axes = {k: (v if isinstance(v, list) and not isinstance(defaults.get(k), list) else [v]) for k, v in given.items()}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def pixel_baseline(raw: dict[str, Any], settings: dict[str, Any], module: Any) -> bool:
    """Whether a task gets its network-less trial: the task's `pixel_baseline`, else the study's (which
    applies only to the tasks that have one)."""
    wanted = settings.get("pixel_baseline", raw.get("pixel_baseline", False))
    return bool(wanted) and has_pixel_baseline(module)


def expand(spec: StudySpec) -> list[PlannedTrial]:
    """The full grid, in a stable order (task, dataset, network, point, variant, seed, condition); no
    duplicates (conditions that resolve to the same settings, e.g. `scratch` with any weights, are one)."""
    from trainables.trial import prepare

    raw = spec.raw
    synthetic = synthetic_datasets(spec)
    trials: dict[str, PlannedTrial] = {}
    seen_networks: set[str] = set()
    for task, settings in raw["tasks"].items():
        module = task_module(task)
        datasets = settings.get("datasets", [module.DATASETS[0]])
        variants = settings.get("variants", [module.VARIANTS[0]])
        networks = _networks(settings.get("networks", raw["networks"]))
        if pixel_baseline(raw, settings, module) and NO_NETWORK not in networks:
            networks.append(NO_NETWORK)
        seen_networks.update(networks)
        points_setting = settings.get("points", raw["points"])
        params_grid = task_settings(settings, module)
        for dataset in datasets:
            root = data_root(spec, task, dataset, settings.get("data", "synthetic"))
            is_synth = True if synthetic.get(dataset) == Path(root) else None
            for network in networks:
                # no loss network, so its conditions change nothing: one trial, with the first of each
                conditions = loss_conditions(raw, settings, network)
                net_conditions = conditions[:1] if network == NO_NETWORK else conditions
                for points in _points(points_setting, network):
                    for variant in variants:
                        for seed in raw["seeds"]:
                            for condition in net_conditions:
                                for params in params_grid:
                                    config = TrialConfig(
                                        task=task, network=network, points=points, dataset=dataset,
                                        variant=variant, seed=seed, **condition,
                                        budget=settings.get("budget", "smoke"), params=dict(params), data_root=root,
                                    )
                                    try:
                                        config = prepare(config)
                                    except UserError as exc:  # a setting, or a network/point/input size
                                        raise ConfigError(f"study spec: tasks.{task}: {exc}") from exc
                                    key = trial_key(config, synthetic=is_synth)
                                    trials.setdefault(key, PlannedTrial(key, config))
    stray = sorted(set(raw.get("recipes", {})) - seen_networks)
    if stray:
        raise ConfigError(f"study spec: recipes: {', '.join(stray)} is in no task's networks; add it to `networks` "
                          f"or drop it from `recipes`")
    return list(trials.values())


def longest_first(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    """The trials ordered by their task's RELATIVE_COST (default 1), most expensive first, plan order kept
    within a cost. Tune starts grid trials in list order, so a long trial started last would leave the
    other slots idle at the end of a launch (the smoke preset's superres trial is 55 % of its compute)."""
    return sorted(trials, key=lambda t: -float(getattr(task_module(t.config.task), "RELATIVE_COST", 1.0)))


def save_plan(spec: StudySpec, trials: list[PlannedTrial], manifest: dict[str, dict[str, Any]] | None = None,
              samples: dict[str, list[int]] | None = None) -> Path:
    """plan.json: every trial's summary and config; a trial on generated data also carries that data's
    manifest (`synthetic_data`: generator, seed, size, sha256), which `planned_synthetic` reads back.

    `manifest`: `synthetic_manifest(spec)` when the caller has it already (it hashes the data). `samples`:
    for a search, trial key -> the numbers of the samples that drew it (a search records the trials it drew,
    not the grid it draws from)."""
    path = spec.study_dir / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = synthetic_manifest(spec) if manifest is None else manifest
    rows = []
    for t in trials:
        row = t.summary() | {"config": t.config.to_dict()}
        if samples is not None:
            row["samples"] = samples.get(t.key, [])
        entry = manifest.get(t.config.dataset)
        if entry and entry["root"] == t.config.data_root:
            row["synthetic_data"] = entry
        rows.append(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)
    return path


def load_plan(study_dir: Path) -> list[dict[str, Any]]:
    path = Path(study_dir) / "plan.json"
    return json.loads(path.read_text()) if path.is_file() else []


def load_planned(study_dir: Path) -> list[PlannedTrial]:
    """The trials plan.json holds (a grid's plan, or what a search has drawn so far), as PlannedTrials."""
    return [PlannedTrial(row["trial_key"], TrialConfig.from_dict(row["config"])) for row in load_plan(study_dir)]


def plan_summaries(study_dir: Path) -> list[dict[str, Any]]:
    """plan.json's rows without configs and data manifests: what the study run's own plan.json holds."""
    return [{k: v for k, v in row.items() if k not in ("config", "synthetic_data")} for row in load_plan(study_dir)]


def planned_synthetic(study_dir: Path) -> dict[str, dict[str, Any]]:
    """dataset -> synthetic-data manifest, as `save_plan` recorded it (what the driver hands the trials)."""
    return {row["dataset"]: row["synthetic_data"] for row in load_plan(study_dir) if row.get("synthetic_data")}


# ------------------------------------------------------------------------------------------- compute

#: Full-split sizes that a budget's 0 ("the whole split") stands for: the official figures
#: (background/paper_notes.md section 3.1 for BAPPS; SVHN extra; STL-10 unlabeled; Massachusetts Roads).
FULL_SPLITS = {
    "bapps_2afc_train": 151_300,  # traditional 56.6k + cnn 38.1k + mix 56.6k triplets
    "bapps_2afc_val": 36_300,  # 4.7k + 4.7k + 10.9k + 9.4k + 4.7k + 1.9k triplets
    "bapps_jnd_val": 9_600,  # 4.8k + 4.8k pairs
    "svhn": 531_131,  # extra
    "stl10": 100_000,  # unlabeled
}
#: Backward through a frozen network (input gradients only) costs about one forward; through a trained
#: one (input and weight gradients) about two. So a loss term costs 1 (target, no graph) + 2 (output)
#: forwards per image, and a trained network 3.
LOSS_TERM_PASSES = 3
TRAINED_PASSES = 3


def _meta_gflops(build: Any, shape: tuple[int, ...]) -> float | None:
    """GFLOPs of one forward pass of a freshly built model at `shape`, on the meta device (nothing is
    allocated); None when the model cannot be built or run (e.g. a task module changed its classes)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            model = build()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(shape, device="meta"))
        return counter.get_total_flops() / 1e9
    except Exception:  # noqa: BLE001 - an estimate; the plan is still right without it
        return None


@functools.cache
def _network_gflops(cls: type, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...],
                    shape: tuple[int, ...]) -> float | None:
    """`_meta_gflops` of `cls(*args, **kwargs)`, once per process: a plan's trials of one task share a handful
    of task networks (the extended preset's 500 trials: 4 networks; 19 s of `dpl plan` without this)."""
    return _meta_gflops(lambda: cls(*args, **dict(kwargs)), shape)


def _transform_gflops(config: TrialConfig) -> float | None:
    """Forward GFLOPs per image of the task's own (trained) network: the thing the loss network trains."""
    module, p = task_module(config.task), config.params
    if config.task == "superres" and hasattr(module, "TransformNet"):
        lr = p["crop_size"] // p["scale"]
        return _network_gflops(module.TransformNet, (), (("scale", p["scale"]), ("norm", p.get("norm", "batch"))),
                               (1, 3, lr, lr))
    if config.task == "delineation" and hasattr(module, "UNet"):
        return _network_gflops(module.UNet, (), (("in_ch", 4),), (1, 4, p["crop_size"], p["crop_size"]))
    if config.task == "autoencoder" and hasattr(module, "ConvAutoencoder"):
        size = module.input_size(config)
        return _network_gflops(module.ConvAutoencoder, (size, p.get("z_dim", 64)), (), (1, 3, size, size))
    return 0.0 if config.task == "similarity" else None


def _loss_gflops(config: TrialConfig) -> float | None:
    """Forward GFLOPs per image of the loss network up to its point (0 for the pixel baseline)."""
    if config.network == NO_NETWORK:
        return 0.0
    from trainables import loss_networks as ln

    try:
        size = ln.network_input_size(config.network, config.weights, task_module(config.task).input_size(config),
                                     config.resize)
        return sum(ln.cached_point_metadata(config.network, pt, size)["gflops_to_point"] for pt in config.points)
    except Exception:  # noqa: BLE001 - e.g. a point that cannot run at this size: no estimate
        return None


def _images(config: TrialConfig) -> dict[str, float] | None:
    """Images through the loss network and through the task's network during training, implied by the
    budget (training dominates; validation and test passes are left out except where they are the work).

    Returns {"loss": forward-equivalents per loss-network GFLOP, "transform": per transform GFLOP}.
    """
    p, task = config.params, config.task
    if task == "superres":
        n = p["iterations"] * p["batch_size"]
        return {"loss": LOSS_TERM_PASSES * n, "transform": TRAINED_PASSES * n}
    if task == "delineation":
        k = p.get("k_train", p.get("K", 1))
        n = p["epochs"] * p["steps_per_epoch"] * p["batch_size"]
        return {"loss": (2 * k + 1) * n, "transform": TRAINED_PASSES * k * n}
    if task == "autoencoder":
        n = p["epochs"] * (p["ae_train_images"] or FULL_SPLITS[config.dataset])
        return {"loss": LOSS_TERM_PASSES * n, "transform": TRAINED_PASSES * n}
    if task == "similarity":
        val = p["max_eval_pairs"] * 6 if p["max_eval_pairs"] else FULL_SPLITS["bapps_2afc_val"]
        jnd = p["max_eval_pairs"] * 2 if p["max_eval_pairs"] else FULL_SPLITS["bapps_jnd_val"]
        work = 3 * val + 2 * jnd
        if config.variant != "baseline":
            train = p["max_train_pairs"] or FULL_SPLITS["bapps_2afc_train"]
            work += p["epochs"] * 3 * train * (TRAINED_PASSES if config.variant in ("tune", "scratch") else 1)
        return {"loss": work, "transform": 0}
    return None


def trial_compute(config: TrialConfig) -> dict[str, float | None]:
    """Estimated training compute of one trial in GFLOPs (multiply-add = 2): loss network and task network."""
    images = _images(config)
    g_loss, g_transform = _loss_gflops(config), _transform_gflops(config)
    loss = images["loss"] * g_loss if images and g_loss is not None else None
    transform = images["transform"] * g_transform if images and g_transform is not None else None
    total = loss + transform if loss is not None and transform is not None else None
    return {"loss_network_gflops": loss, "transform_gflops": transform, "total_gflops": total}


# ---------------------------------------------------------------------------------------------- report


def counts(trials: list[PlannedTrial]) -> dict[str, Any]:
    """{"total": n, "per_task": {task: {dataset: {"trials", "loss_network", "pixel_baseline"}}}}."""
    per_task: dict[str, dict[str, dict[str, int]]] = {}
    for t in trials:
        c = per_task.setdefault(t.config.task, {}).setdefault(
            t.config.dataset, {"trials": 0, "loss_network": 0, "pixel_baseline": 0})
        c["trials"] += 1
        c["pixel_baseline" if t.config.network == NO_NETWORK else "loss_network"] += 1
    return {"total": len(trials), "per_task": per_task}


def _zero() -> dict[str, float | None]:
    return {"loss_network_gflops": 0.0, "transform_gflops": 0.0, "total_gflops": 0.0}


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def plan_report(spec: StudySpec, compute: bool = True, gpu_tflops: float | None = None,
                trials: list[PlannedTrial] | None = None) -> dict[str, Any]:
    """What `dpl plan` shows; reads the spec and the loss-network metadata, writes nothing (but the caches
    of metadata and memory estimates). With `resources.gpu: auto` also each trial's memory estimate and GPU
    fraction and the packing per task (`study.resources.packing_report`). `trials`: the spec's `expand`, when
    the caller has it (a halving search adds its own section: `study.halving`)."""
    trials = expand(spec) if trials is None else trials
    rows = [t.row() for t in trials]
    report: dict[str, Any] = {
        "study": spec.name, "storage": str(spec.study_dir), "data_root": spec.raw.get("data_root"),
        "counts": counts(trials), "trials": rows,
    }
    if compute:
        per_task: dict[str, dict[str, Any]] = {}
        total: float | None = 0.0
        for t, row in zip(trials, rows):
            row["compute"] = trial_compute(t.config)
            task = per_task.setdefault(t.config.task, {**_zero(), "per_dataset": {}})
            for agg in (task, task["per_dataset"].setdefault(t.config.dataset, _zero())):
                for k in _zero():
                    agg[k] = _add(agg[k], row["compute"][k])
            total = _add(total, row["compute"]["total_gflops"])
        report["compute"] = {"per_task": per_task, "total_gflops": total,
                             "note": "training passes implied by the budgets (early stopping can only shorten "
                                     "them); FLOPs count a multiply-add as 2; divide by a GPU's sustained "
                                     "FLOP/s for GPU-seconds"}
    from study.resources import is_auto, packing_report

    if is_auto(spec):
        report["memory"] = packing_report(spec, [t.config for t in trials], rows, gpu_tflops)
    return report


def _fmt_gflops(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("EFLOP", 1e9), ("PFLOP", 1e6), ("TFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} GFLOP"


def format_report(report: dict[str, Any]) -> str:
    """The text form of `plan_report`: counts and compute per task, then one line per trial."""
    lines = [f"study {report['study']}: {report['counts']['total']} trials; data root {report['data_root']}; "
             f"study directory {report['storage']}", ""]
    compute = report.get("compute", {}).get("per_task", {})
    lines.append(f"{'task':<12} {'dataset':<11} {'trials':>6} {'loss-net':>8} {'pixel':>5}  "
                 f"{'training compute':>16}  {'of which task net':>17}")
    for task, per_ds in report["counts"]["per_task"].items():
        for ds, c in per_ds.items():
            est = compute.get(task, {}).get("per_dataset", {}).get(ds)
            cells = f"{_fmt_gflops(est['total_gflops']):>16}  {_fmt_gflops(est['transform_gflops']):>17}" if est else ""
            lines.append(f"{task:<12} {ds:<11} {c['trials']:>6} {c['loss_network']:>8} {c['pixel_baseline']:>5}  {cells}")
    if "compute" in report:
        lines.append(f"{'total':<12} {'':<11} {report['counts']['total']:>6} {'':>8} {'':>5}  "
                     f"{_fmt_gflops(report['compute']['total_gflops']):>16}")
        lines.append(f"({report['compute']['note']})")
    if "memory" in report:
        from study.resources import format_packing

        lines += ["", *format_packing(report["memory"])]
    if "search" in report:
        h = report["search"]
        lines += ["", f"{h['describe']}.",
                  f"compute: at most {h['max_trial_epochs']} trial-epochs = {_fmt_gflops(h['max_gflops'])} (the grid: "
                  f"every trial to epoch {h['max_epochs']}); expected {h['expected_trial_epochs']:.0f} trial-epochs = "
                  f"{_fmt_gflops(h['expected_gflops'])} ({h['expected_share']:.0%}; synchronous successive halving, "
                  f"ASHA's early promotions run somewhat more: docs/ANALYSIS.md, Halving)"]
    lines += ["", "settings common to every trial of a task:"]
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in report["trials"]:
        by_task.setdefault(row["task"], []).append(row)
    varying: dict[str, list[str]] = {}
    for task, rows in by_task.items():
        flat = [{**{k: r[k] for k in ("weights", "normalisation", "mode", "transform_input", "budget", "resize")}, **r["params"]}
                for r in rows]
        common = {k: v for k, v in flat[0].items() if all(f.get(k) == v for f in flat)}
        varying[task] = sorted({k for f in flat for k in f if k not in common})
        lines.append(f"  {task}: " + " ".join(f"{k}={v}" for k, v in common.items()))
    lines += ["", "trials:"]
    for row in report["trials"]:
        extra = " ".join(f"{k}={({**row, **row['params']}).get(k)}" for k in varying[row["task"]])
        mem = row.get("memory")
        if mem:
            fraction = "no GPU fits" if mem["gpu_fraction"] is None else f"gpu {mem['gpu_fraction']:g}"
            extra = f"{extra}  " if extra else ""
            extra += f"mem {mem['total_bytes'] / 2**30:.2f} GiB {fraction}"
        lines.append(f"  {row['trial_key']}  {row['task']}:{row['dataset']}:{row['network']}:{row['point']}:"
                     f"{row['variant']}:s{row['seed']}" + (f"  {extra}" if extra else ""))
    return "\n".join(lines)
