"""Datasets: one module each, with a reader for the real on-disk layout, the official download, and a
generator of small synthetic data in exactly that layout (`synthesize`), for tests, CI and offline demos.

Every module here exposes `synthesize(out: Path, seed: int = 0, size: str = "smoke") -> Path` and
`download(root: Path) -> Path`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from trainables.errors import UserError

#: dataset name -> module (the name used by `dpl data synth NAME` / `dpl data fetch NAME`)
DATASETS = {
    "bapps": "trainables.data.bapps",
    "superres": "trainables.data.superres",
    "roads": "trainables.data.roads",
    "svhn": "trainables.data.svhn",
    "stl10": "trainables.data.stl10",
}


def dataset_module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name])
