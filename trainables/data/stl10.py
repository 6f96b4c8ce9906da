"""STL-10 (Coates et al. 2011), binary format: `stl10_binary/{train,test}_{X,y}.bin`, `unlabeled_X.bin`.

`*_X.bin` is raw uint8, 3 x 96 x 96 bytes per image, each channel stored column-major (as MATLAB wrote
it): reading it as (N, 3, 96, 96) gives transposed images, so rows and columns are swapped back.
`*_y.bin` is one uint8 label 1..10 per image. The files are read here rather than through torchvision's
STL10 class, whose MD5 check rejects all but the official files; the image files are memory-mapped, so a
subset of the 2.7 GB `unlabeled_X.bin` costs only the bytes it touches.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage

from trainables.data.download import extract, fetch
from trainables.data.svhn import check_size, write_marker
from trainables.errors import DataError, UserError
from trainables.progress import ProgressFn, Ticker

URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
FOLDER = "stl10_binary"
SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE
#: split -> (image file, label file or None)
FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}
SYNTH_SIZES = {
    "smoke": {"train": 500, "test": 300, "unlabeled": 600},
    "small": {"train": 5000, "test": 2000, "unlabeled": 20000},
}
#: The synthetic classes, in label order (written to class_names.txt as the real archive has its own).
SYNTH_CLASSES = ("disc", "square", "triangle", "ring", "cross", "stripes", "star", "checker", "pair", "diamond")


def _missing(path: Path) -> DataError:
    return DataError(
        f"STL-10 file {path} is missing: download it with `dpl data fetch stl10` or make synthetic data with "
        f"`dpl data synth stl10`, and point --data-root at the folder holding {FOLDER}/"
    )


def read(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8 (N, 3, 96, 96), a memory-mapped view; labels int64 (N,) in 0..9, or None if unlabeled)."""
    if split not in FILES:
        raise UserError(f"STL-10 split {split!r}: use one of {', '.join(FILES)}")
    x_name, y_name = FILES[split]
    x_path = Path(root) / FOLDER / x_name
    if not x_path.is_file():
        raise _missing(x_path)
    n, rest = divmod(x_path.stat().st_size, IMAGE_BYTES)
    if rest or n == 0:
        raise DataError(
            f"STL-10 file {x_path} is truncated or corrupt: {x_path.stat().st_size} bytes is not a whole number of "
            f"3x96x96 images ({IMAGE_BYTES} bytes each); re-download it"
        )
    images = np.memmap(x_path, dtype=np.uint8, mode="r").reshape(n, 3, SIZE, SIZE).transpose(0, 1, 3, 2)
    if y_name is None:
        return images, None
    y_path = x_path.with_name(y_name)
    if not y_path.is_file():
        raise _missing(y_path)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    if labels.size != n:
        raise DataError(
            f"STL-10 file {y_path} has {labels.size} labels for {n} images in {x_path.name}; re-download both"
        )
    if labels.min() < 1 or labels.max() > 10:
        raise DataError(f"STL-10 file {y_path} has labels outside 1..10; it is not an STL-10 label file")
    return images, labels - 1


def write(folder: str | Path, split: str, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write (N, 3, 96, 96) uint8 images (and 0..9 labels) as the official-format files of `split`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x_name, y_name = FILES[split]
    np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 1, 3, 2)).tofile(folder / x_name)
    if y_name is not None:
        if labels is None:
            raise ValueError(f"STL-10 split {split} needs labels")
        (np.asarray(labels) + 1).astype(np.uint8).tofile(folder / y_name)
    return folder / x_name


# ---------------------------------------------------------------------------------------- synthetic

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE


def _shape_mask(label: int, cx: float, cy: float, r: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Object silhouette (or texture patch) of class `label` as a float mask in [0, 1]."""
    dx, dy = _XX - cx, _YY - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / r, (-s * dx + c * dy) / r  # rotated, scaled coordinates
    rad = np.hypot(u, v)
    if label == 0:
        m = rad < 1
    elif label == 1:
        m = np.maximum(abs(u), abs(v)) < 0.85
    elif label == 2:
        m = (v < 0.6) & (v > 1.7 * abs(u) - 1.0)
    elif label == 3:
        m = (rad < 1) & (rad > 0.6)
    elif label == 4:
        m = ((abs(u) < 0.28) | (abs(v) < 0.28)) & (np.maximum(abs(u), abs(v)) < 1)
    elif label == 5:
        m = (rad < 1) & (np.sin(u * 9) > 0)
    elif label == 6:
        m = rad < 0.55 + 0.45 * np.cos(5 * np.arctan2(v, u))
    elif label == 7:
        m = (np.maximum(abs(u), abs(v)) < 1) & ((np.floor(u * 3) + np.floor(v * 3)) % 2 == 0)
    elif label == 8:
        m = (np.hypot(u - 0.5, v) < 0.45) | (np.hypot(u + 0.5, v) < 0.45)
    else:
        m = (abs(u) + abs(v) < 1) & ~((abs(u) + abs(v) < 0.45) & (rng.random() < 0.7))
    return m.astype(np.float32)


#: One base hue per class (RGB), jittered per image, so colour is a cue as it is for real object classes.
_PALETTE = np.array(
    [[220, 60, 50], [60, 120, 220], [240, 200, 40], [70, 180, 90], [170, 70, 200],
     [240, 130, 40], [230, 230, 230], [40, 40, 40], [80, 200, 210], [200, 90, 140]], dtype=np.float32)


def render_objects(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """96x96 images of 10 procedurally distinct object classes on smooth textured backgrounds."""
    out = np.empty((len(labels), 3, SIZE, SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        # smooth background: a random colour plus 4x4 noise, interpolated (calmer than the object)
        low = (rng.uniform(60, 195, (3, 1, 1)) + rng.uniform(-35, 35, (3, 4, 4))).astype(np.float32)
        bg = scipy.ndimage.zoom(low, (1, SIZE / 4, SIZE / 4), order=1, mode="nearest", grid_mode=True)
        bg += rng.normal(0, 12, (3, SIZE, SIZE)).astype(np.float32)
        mask = _shape_mask(int(label), rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.22, 0.34),
                           rng.uniform(0, np.pi), rng)
        colour = np.clip(_PALETTE[label] + rng.normal(0, 25, 3), 0, 255)[:, None, None]
        shade = 1 + 0.25 * (_XX - 0.5) * rng.choice([-1, 1])  # directional lighting on the object
        img = bg * (1 - mask) + colour * shade * mask
        out[i] = np.clip(img, 0, 255).round().astype(np.uint8)
    return out


def synthesize(out: Path, seed: int = 0, size: str = "smoke", progress: ProgressFn | None = None) -> Path:
    """Small STL-10-format data in `out/stl10_binary/`, with the synthetic-data marker at `out`.
    `progress(done, total)` is told every few hundred images (`dpl data synth` draws a bar with it)."""
    counts = check_size(size, SYNTH_SIZES)
    out = Path(out)
    folder = out / FOLDER
    tick = Ticker(progress, sum(counts[split] for split in FILES))
    for k, split in enumerate(FILES):
        rng = np.random.default_rng([seed, k])
        labels = rng.integers(0, 10, counts[split])
        write(folder, split, tick.chunks(lambda part: render_objects(part, rng), labels),
              labels if FILES[split][1] else None)
    (folder / "class_names.txt").write_text("\n".join(SYNTH_CLASSES) + "\n")
    # the real archive's 10 predefined folds over the train split, one line of 0-based indices each
    folds = np.array_split(np.random.default_rng([seed, 99]).permutation(counts["train"]), 10)
    (folder / "fold_indices.txt").write_text("".join(" ".join(map(str, f)) + " \n" for f in folds))
    write_marker(out, "trainables.data.stl10.synthesize", seed, size)
    return out


def download(root: Path) -> Path:
    """The official archive (2.6 GB) into `root`, extracted to `root/stl10_binary/`."""
    root = Path(root)
    if all((root / FOLDER / f).is_file() for pair in FILES.values() for f in pair if f):
        return root
    archive = fetch(URL, root / "stl10_binary.tar.gz", MD5)
    extract(archive, root)
    return root
