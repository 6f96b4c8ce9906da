"""Expand a StudySpec into trials: one per (task, dataset, network, point, variant, seed).

Each trial is a fully resolved TrialConfig with its key. Data marked `synthetic` is generated once per
study under `<study>/data/<dataset>` before any trial starts (generation is seeded, so every node of a
cluster that shares the directory sees the same files).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.spec import StudySpec
from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.tasks import task_module
from trainables.trial import NO_NETWORK, SYNTHETIC_MARKER, prepare

#: Which synthetic generator serves which dataset name.
SYNTH_SOURCE = {"bapps": "bapps", "coco": "superres", "mass_roads": "roads", "svhn": "svhn", "stl10": "stl10"}


@dataclass(frozen=True)
class PlannedTrial:
    key: str
    config: TrialConfig

    def summary(self) -> dict[str, Any]:
        c = self.config
        return {"trial_key": self.key, "task": c.task, "dataset": c.dataset, "network": c.network,
                "point": c.point, "variant": c.variant, "seed": c.seed, "weights": c.weights, "mode": c.mode,
                "normalisation": c.normalisation, "transform_input": c.transform_input}


def _networks(spec_value: Any) -> list[str]:
    return list(ln.REGISTRY) if spec_value == "all" else list(spec_value)


def _points(spec_value: Any, network: str) -> list[tuple[str, ...]]:
    """One trial per point: 'all' -> the paper's 4; a mapping gives per-network lists."""
    if network == NO_NETWORK:
        return [()]
    if isinstance(spec_value, dict):
        spec_value = spec_value.get(network, "all")
    if spec_value == "all":
        spec_value = ["all"]
    if isinstance(spec_value, str):
        spec_value = [spec_value]
    points: list[tuple[str, ...]] = []
    for p in spec_value:
        for node in ln.resolve_points(network, p):
            points.append((node,))
    return points


def data_root(spec: StudySpec, task: str, dataset: str, setting: Any) -> str:
    if isinstance(setting, dict):
        setting = setting.get(dataset)
    if setting in (None, "synthetic"):
        return str(spec.study_dir / "data" / dataset)
    return str(Path(setting).expanduser().resolve())


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


def ensure_synthetic_data(spec: StudySpec) -> list[Path]:
    """Generate each synthetic dataset once (skipped when its marker exists)."""
    from trainables.data import dataset_module

    made = []
    for dataset, root in synthetic_datasets(spec).items():
        if (root / SYNTHETIC_MARKER).is_file():
            continue
        size = "smoke" if all(s.get("budget", "smoke") == "smoke" for s in spec.raw["tasks"].values()) else "quick"
        dataset_module(SYNTH_SOURCE[dataset]).synthesize(root, seed=0, size=size)
        made.append(root)
    return made


def expand(spec: StudySpec) -> list[PlannedTrial]:
    """The full grid, in a stable order (task, dataset, network, point, variant, seed); no duplicates."""
    raw = spec.raw
    trials: dict[str, PlannedTrial] = {}
    for task, settings in raw["tasks"].items():
        module = task_module(task)
        datasets = settings.get("datasets", [module.DATASETS[0]])
        variants = settings.get("variants", [module.VARIANTS[0]])
        networks = _networks(settings.get("networks", raw["networks"]))
        points_setting = settings.get("points", raw["points"])
        for dataset in datasets:
            root = data_root(spec, task, dataset, settings.get("data", "synthetic"))
            for network in networks:
                for points in _points(points_setting, network):
                    for variant in variants:
                        for seed in raw["seeds"]:
                            config = TrialConfig(
                                task=task, network=network, points=points, dataset=dataset, variant=variant,
                                seed=seed, weights=raw["weights"], normalisation=raw["normalisation"],
                                mode=raw["mode"], transform_input=raw["transform_input"],
                                budget=settings.get("budget", "smoke"), params=dict(settings.get("params", {})),
                                data_root=root,
                            )
                            try:
                                config = prepare(config)
                            except ConfigError as exc:
                                raise ConfigError(f"study spec: tasks.{task}: {exc}") from exc
                            key = trial_key(config)
                            trials.setdefault(key, PlannedTrial(key, config))
    return list(trials.values())


def longest_first(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    """The trials ordered by their task's RELATIVE_COST (default 1), most expensive first, plan order kept
    within a cost. Tune starts grid trials in list order, so a long trial started last would leave the
    other slots idle at the end of a launch (the smoke preset's superres trial is 55 % of its compute)."""
    return sorted(trials, key=lambda t: -float(getattr(task_module(t.config.task), "RELATIVE_COST", 1.0)))


def save_plan(spec: StudySpec, trials: list[PlannedTrial]) -> Path:
    path = spec.study_dir / "plan.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([t.summary() | {"config": t.config.to_dict()} for t in trials], indent=1))
    tmp.replace(path)
    return path


def load_plan(study_dir: Path) -> list[dict[str, Any]]:
    path = Path(study_dir) / "plan.json"
    return json.loads(path.read_text()) if path.is_file() else []
