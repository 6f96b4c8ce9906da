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

#: The folder each dataset occupies under a data root: what `dpl data fetch all --out DIR` (and
#: `dpl data synth all`) writes and what the `quick`, `paper` and `corrected` presets read (their `data:`
#: paths are relative to the data root, `--data-root` / $DPL_DATA_ROOT / `datasets`).
ROOT_DIRS = {
    "bapps": "bapps",
    "superres": "superres",
    "roads": "mass_roads",
    "svhn": "svhn",
    "stl10": "stl10",
}


def dataset_module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[name])
