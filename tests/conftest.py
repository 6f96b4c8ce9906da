"""Shared test setup: quiet, offline, private caches; real photographs from scikit-image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """TORCH_HOME and matplotlib's cache in temp dirs: tests must never use (or need) downloaded weights."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["MPLCONFIGDIR"] = str(root / "mpl")
    os.environ.setdefault("DPL_CACHE_DIR", str(root / "dpl"))


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photographs that ship offline with scikit-image, as 128x128 PNG crops."""
    from PIL import Image
    from skimage import data

    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        crop = Image.fromarray(img[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]).resize((128, 128))
        paths[name] = out / f"{name}.png"
        crop.save(paths[name])
    return paths


def rng_images(n: int, size: int, seed: int = 0) -> "np.ndarray":
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)
