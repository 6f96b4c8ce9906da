"""BAPPS (Zhang et al. 2018): reader for the official layout, official download, synthetic generator.

On-disk layout (the one LPIPS' `download_dataset.sh` produces, rooted at `root`):

    2afc/{train,val}/<subset>/{ref,p0,p1}/<idx>.png   64x64 patches
    2afc/{train,val}/<subset>/judge/<idx>.npy         float array (1,): fraction of humans preferring p1
    jnd/val/<subset>/{p0,p1}/<idx>.png
    jnd/val/<subset>/same/<idx>.npy                   float array (1,): fraction answering "same"

Judgements are loaded eagerly when a split is opened (they are tiny), so a missing or malformed label
fails before any compute is spent; images are read lazily by the DataLoader workers.
"""
from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainables.data.download import extract, fetch
from trainables.errors import DataError, UserError
from trainables.images import read_rgb, save_rgb
from trainables.progress import ProgressFn, Ticker

TRAIN_SUBSETS = ("traditional", "cnn", "mix")
VAL_SUBSETS = ("traditional", "cnn", "superres", "deblur", "color", "frameinterp")
JND_SUBSETS = ("traditional", "cnn")
#: kind -> (image folders, label folder)
FOLDERS = {"2afc": (("ref", "p0", "p1"), "judge"), "jnd": (("p0", "p1"), "same")}

#: archive -> (URLs in order of preference, md5). The Berkeley URLs are the ones the paper's code and the
#: LPIPS paper used; the S3 mirror is what LPIPS' download_dataset.sh points at today. Neither source
#: publishes a checksum, so each archive is checked against the SHA256SUMS manifest beside it (recorded on
#: first download or pinned by the user, see `download.MANIFEST`) and by reading the layout afterwards.
SOURCES = {
    "twoafc_train": (
        (
            "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_train.tar.gz",
            "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/twoafc_train.tar.gz",
        ),
        None,
    ),
    "twoafc_val": (
        (
            "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/twoafc_val.tar.gz",
            "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/twoafc_val.tar.gz",
        ),
        None,
    ),
    "jnd": (
        (
            "https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/jnd.tar.gz",
            "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/jnd.tar.gz",
        ),
        None,
    ),
}
#: archive -> (destination under root, the folder name to look for inside the archive)
ARCHIVE_TARGETS = {"twoafc_train": ("2afc/train", "train"), "twoafc_val": ("2afc/val", "val"), "jnd": ("jnd/val", "val")}


# ------------------------------------------------------------------------------------------ reading


def subsets_for(kind: str, split: str) -> tuple[str, ...]:
    if kind == "jnd":
        return JND_SUBSETS
    return TRAIN_SUBSETS if split == "train" else VAL_SUBSETS


def _load_label(path: Path) -> float:
    """One judgement file: a float array of shape (1,) in [0, 1]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"label {path} is unreadable ({type(exc).__name__}); re-download or regenerate it") from exc
    if arr.shape not in ((1,), (1, 1)) or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"label {path} has shape {arr.shape} dtype {arr.dtype}; expected a float array of shape (1,)")
    value = float(arr.reshape(-1)[0])
    if not 0.0 <= value <= 1.0:
        raise DataError(f"label {path} holds {value}, outside [0, 1]")
    return value


class BappsSubset(Dataset):
    """One subset folder (e.g. `2afc/val/cnn`): items are dicts of (3, S, S) images plus the label.

    Pairs are in sorted file-stem order; every folder must hold the same stems.
    """

    def __init__(self, directory: Path, kind: str, image_size: int = 64) -> None:
        self.directory = Path(directory)
        self.kind = kind
        self.image_size = image_size
        self.image_folders, self.label_folder = FOLDERS[kind]
        if not self.directory.is_dir():
            raise DataError(f"BAPPS folder {self.directory} does not exist; run `dpl data fetch bapps` or `dpl data synth bapps`")
        stems: dict[str, set[str]] = {}
        for folder in (*self.image_folders, self.label_folder):
            d = self.directory / folder
            if not d.is_dir():
                raise DataError(f"BAPPS folder {d} does not exist; the subset is incomplete, re-download it")
            ext = ".npy" if folder == self.label_folder else ".png"
            stems[folder] = {p.stem for p in d.iterdir() if p.suffix == ext}
        all_stems = set().union(*stems.values())
        for folder, have in stems.items():
            if have != all_stems:
                missing = sorted(all_stems - have)[0]
                ext = ".npy" if folder == self.label_folder else ".png"
                raise DataError(
                    f"BAPPS {self.directory}: {folder}/ has {len(have)} files but other folders have {len(all_stems)}; "
                    f"missing {self.directory / folder / (missing + ext)}"
                )
        if not all_stems:
            raise DataError(f"BAPPS folder {self.directory / self.label_folder} is empty")
        self.stems = sorted(all_stems)
        self.labels = torch.tensor(
            [_load_label(self.directory / self.label_folder / f"{s}.npy") for s in self.stems], dtype=torch.float32
        )

    def __len__(self) -> int:
        return len(self.stems)

    def select(self, positions: Sequence[int]) -> "BappsSubset":
        """A view on some of the pairs (by position), sharing the already-loaded labels."""
        view = copy.copy(self)
        view.stems = [self.stems[i] for i in positions]
        view.labels = self.labels[list(positions)]
        return view

    def _image(self, folder: str, stem: str) -> torch.Tensor:
        path = self.directory / folder / f"{stem}.png"
        img = read_rgb(path)
        if img.shape[-2:] != (self.image_size, self.image_size):
            img = read_rgb(path, self.image_size)
        return img

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        stem = self.stems[i]
        item = {f: self._image(f, stem) for f in self.image_folders}
        item[self.label_folder] = self.labels[i]
        return item


def open_subset(root: Path, kind: str, split: str, subset: str, image_size: int = 64) -> BappsSubset:
    """The subset folder `root/<kind>/<split>/<subset>` (all pairs; cut it down with `.select`)."""
    return BappsSubset(Path(root) / kind / split / subset, kind, image_size)


# ----------------------------------------------------------------------------------------- download


def download(root: Path) -> Path:
    """Fetch the three official archives (resumable) and arrange them as `root/2afc/{train,val}`, `root/jnd/val`."""
    root = Path(root)
    for name, (urls, md5) in SOURCES.items():
        dest_rel, inner = ARCHIVE_TARGETS[name]
        dest = root / dest_rel
        if dest.is_dir() and any(dest.iterdir()):
            continue
        archive = _fetch_any(urls, root / "_downloads" / f"{name}.tar.gz", md5)
        staging = root / "_downloads" / f"{name}.extract"
        shutil.rmtree(staging, ignore_errors=True)
        extract(archive, staging)
        found = [p for p in staging.rglob(inner) if p.is_dir() and (p / "traditional").is_dir()]
        if not found:
            raise DataError(f"{archive}: no {inner}/traditional folder inside; the archive is not the BAPPS one, delete it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        found[0].rename(dest)
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _fetch_any(urls: tuple[str, ...], dest: Path, md5: str | None) -> Path:
    """Try each mirror in turn; the last one's error is the one shown."""
    for i, url in enumerate(urls):
        try:
            return fetch(url, dest, md5)
        except DataError:
            if i == len(urls) - 1:
                raise
    raise AssertionError("unreachable")


# -------------------------------------------------------------------------------------- synthesis

#: images per subset for each synthetic size: (2afc train, 2afc val, jnd val)
SYNTH_SIZES = {"smoke": (16, 24, 24), "small": (300, 200, 200)}
#: distortion kinds used by each synthetic subset (mirrors the spirit of the real subsets)
SUBSET_KINDS = {
    "traditional": ("blur", "noise", "colour", "quantise", "jpeg", "warp"),
    "cnn": ("noise", "jpeg", "warp", "blur"),
    "mix": ("blur", "noise", "colour", "quantise", "jpeg", "warp"),
    "superres": ("resample",),
    "deblur": ("blur", "noise"),
    "color": ("colour", "quantise"),
    "frameinterp": ("warp", "ghost"),
}
#: simulated observers per judgement (BAPPS has 2 per train and 5 per val triplet, 3 per JND pair)
OBSERVERS_2AFC, OBSERVERS_JND = 5, 3
#: steepness of the simulated observers' logistic in hidden distortion strength
SHARPNESS = 12.0


def _procedural_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """(H, W, 3) float image in [0, 1]: a gradient, a sinusoidal texture and a few shapes, randomly mixed."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b = rng.uniform(-1, 1, 2)
    grad = (a * xx + b * yy)[..., None] * rng.uniform(0, 1, 3) + rng.uniform(0, 1, 3)
    tex = np.zeros((size, size, 3))
    for _ in range(3):
        f, th, ph = rng.uniform(2, 12), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)
        tex += wave[..., None] * rng.uniform(-0.2, 0.2, 3)
    img = 0.5 * grad + tex
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) if rng.random() < 0.5 else (
            (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1)))
        img[mask] = rng.uniform(0, 1, 3)
    return np.clip(img, 0, 1)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect") if sigma > 0 else img


def distort(img: np.ndarray, kind: str, s: float, rng: np.random.Generator) -> np.ndarray:
    """Apply distortion `kind` at strength s in [0, 1] (0 = identity); each is roughly calibrated in s."""
    from scipy.ndimage import map_coordinates

    size = img.shape[0]
    if kind == "blur":
        out = _blur(img, 2.5 * s)
    elif kind == "noise":
        out = img + rng.normal(0, 0.25 * s, img.shape)
    elif kind == "colour":
        out = img + rng.choice([-1, 1], 3) * rng.uniform(0.5, 1, 3) * 0.3 * s
    elif kind == "quantise":
        levels = max(2, int(round(2 + 40 * (1 - s) ** 2)))
        out = np.round(img * (levels - 1)) / (levels - 1)
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=int(95 - 90 * s))
        out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0
    elif kind == "warp":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        f, ph = rng.uniform(1, 4), rng.uniform(0, 2 * np.pi, 2)
        dy = 3.0 * s * np.sin(2 * np.pi * f * xx / size + ph[0])
        dx = 3.0 * s * np.sin(2 * np.pi * f * yy / size + ph[1])
        out = np.stack([map_coordinates(img[..., c], [yy + dy, xx + dx], order=1, mode="reflect") for c in range(3)], -1)
    elif kind == "resample":
        factor = 1 + 5 * s
        small = max(4, int(round(size / factor)))
        im = Image.fromarray((img * 255).round().astype(np.uint8))
        out = np.asarray(im.resize((small, small), Image.BICUBIC).resize((size, size), Image.BICUBIC), np.float64) / 255
    elif kind == "ghost":
        shift = max(1, int(round(6 * s)))
        out = (1 - 0.5 * s) * img + 0.5 * s * np.roll(img, shift, axis=int(rng.integers(0, 2)))
    else:
        raise ValueError(f"unknown distortion {kind}")
    return np.clip(out, 0, 1)


def _save(arr: np.ndarray, path: Path) -> None:
    save_rgb(torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float(), path)


def _observers(p: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.binomial(n, p) / n], dtype=np.float32)


def _write_2afc(d: Path, subset: str, n: int, rng: np.random.Generator, tick: Ticker | None = None) -> None:
    kinds = SUBSET_KINDS[subset]
    for i in range(n):
        if tick is not None:
            tick.add()
        ref = _procedural_image(rng)
        k0 = rng.choice(kinds)
        k1 = k0 if rng.random() < 0.5 else rng.choice(kinds)
        s0, s1 = rng.uniform(0.05, 1, 2)
        stem = f"{i:06d}"
        _save(ref, d / "ref" / f"{stem}.png")
        _save(distort(ref, k0, s0, rng), d / "p0" / f"{stem}.png")
        _save(distort(ref, k1, s1, rng), d / "p1" / f"{stem}.png")
        # p1 is preferred (judge -> 1) when it is the less distorted one
        p_prefer_p1 = 1.0 / (1.0 + np.exp(-SHARPNESS * (s0 - s1)))
        (d / "judge").mkdir(parents=True, exist_ok=True)
        np.save(d / "judge" / f"{stem}.npy", _observers(p_prefer_p1, OBSERVERS_2AFC, rng))


def _write_jnd(d: Path, subset: str, n: int, rng: np.random.Generator, tick: Ticker | None = None) -> None:
    kinds = SUBSET_KINDS[subset]
    for i in range(n):
        if tick is not None:
            tick.add()
        img = _procedural_image(rng)
        s = 0.0 if rng.random() < 0.15 else rng.uniform(0.0, 0.6)
        stem = f"{i:06d}"
        _save(img, d / "p0" / f"{stem}.png")
        _save(distort(img, rng.choice(kinds), s, rng), d / "p1" / f"{stem}.png")
        # "same" when the hidden strength is below a threshold of ~0.2
        p_same = 1.0 / (1.0 + np.exp(SHARPNESS * (s - 0.2)))
        (d / "same").mkdir(parents=True, exist_ok=True)
        np.save(d / "same" / f"{stem}.npy", _observers(p_same, OBSERVERS_JND, rng))


def synthesize(out: Path, seed: int = 0, size: str = "smoke", progress: ProgressFn | None = None) -> Path:
    """Write a small BAPPS-layout dataset of procedural images whose judgements follow a hidden truth.

    Each 2AFC triplet distorts a procedural reference twice (same or different kind) with hidden strengths
    s0, s1; 5 simulated observers prefer p1 with probability sigmoid(12 (s0 - s1)). JND pairs are an image
    and a distortion of strength s (sometimes 0); 3 observers answer "same" with probability
    sigmoid(-12 (s - 0.2)). So a sensible metric scores well above chance, and a random one near 0.5.
    `progress(done, total)` is told each triplet or pair (`dpl data synth` draws a bar with it).
    """
    from trainables.trial import SYNTHETIC_MARKER

    if size not in SYNTH_SIZES:
        raise UserError(f"size {size!r} is not one of {', '.join(SYNTH_SIZES)} for bapps")
    out = Path(out)
    n_train, n_val, n_jnd = SYNTH_SIZES[size]
    rng = np.random.default_rng(seed)
    tick = Ticker(progress, n_train * len(TRAIN_SUBSETS) + n_val * len(VAL_SUBSETS) + n_jnd * len(JND_SUBSETS))
    for subset in TRAIN_SUBSETS:
        _write_2afc(out / "2afc" / "train" / subset, subset, n_train, rng, tick)
    for subset in VAL_SUBSETS:
        _write_2afc(out / "2afc" / "val" / subset, subset, n_val, rng, tick)
    for subset in JND_SUBSETS:
        _write_jnd(out / "jnd" / "val" / subset, subset, n_jnd, rng, tick)
    marker = {"generator": "trainables.data.bapps.synthesize", "seed": seed, "size": size}
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker))
    return out
