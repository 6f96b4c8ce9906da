"""SVHN (Netzer et al. 2011), cropped-digits format: `{train,test,extra}_32x32.mat` in one folder.

Each file is a MATLAB v5 file holding `X`, uint8 of shape (32, 32, 3, N), and `y`, shape (N, 1), with
labels 1..10 where 10 stands for the digit 0. The files are read with `scipy.io.loadmat` directly rather
than through torchvision's SVHN class, whose MD5 check rejects every file but the official ones (and so
the synthetic data this module writes in the same format).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw, ImageFont

from trainables.data.download import fetch
from trainables.errors import DataError, UserError
from trainables.progress import ProgressFn, Ticker

URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
#: The MD5s the official site's files have (the same ones torchvision checks).
MD5 = {
    "train": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test": "eb5a983be6a315427106f1b164d9cef3",
    "extra": "a93ce644f1a588dc4d68dda5feec44a7",
}
SPLITS = tuple(MD5)
#: The 116-byte descriptive text opening a MAT v5 file (free text by the format), without a timestamp.
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: dpl (trainables.data.svhn)".ljust(116)
#: Images per split written by `synthesize` at each size.
SYNTH_SIZES = {
    "smoke": {"train": 600, "test": 300, "extra": 800},
    "small": {"train": 5000, "test": 2000, "extra": 20000},
}


def file_name(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"SVHN split {split!r}: use one of {', '.join(SPLITS)}")
    return f"{split}_32x32.mat"


def write_marker(out: Path, generator: str, seed: int, size: str) -> None:
    """The `DPL_SYNTHETIC.json` marker every synthetic dataset carries at its root (see trainables.trial)."""
    from trainables.trial import SYNTHETIC_MARKER  # late: trial imports the task registry

    (Path(out) / SYNTHETIC_MARKER).write_text(json.dumps({"generator": generator, "seed": seed, "size": size}))


def check_size(size: str, sizes: dict[str, dict[str, int]]) -> dict[str, int]:
    if size not in sizes:
        raise UserError(f"synthetic data size {size!r}: use one of {', '.join(sizes)}")
    return sizes[size]


# ------------------------------------------------------------------------------------------ reading


def read(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..9, the digit itself) of one split."""
    path = Path(root) / file_name(split)
    if not path.is_file():
        raise DataError(
            f"SVHN file {path} is missing: download it with `dpl data fetch svhn` or make synthetic data with "
            f"`dpl data synth svhn`, and point --data-root at the folder holding the .mat files"
        )
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError/TypeError/OSError/MatReadError alike
        raise DataError(f"SVHN file {path} is truncated or not a MATLAB file ({exc}); re-download it") from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DataError(
            f"SVHN file {path} lacks X (32x32x3xN) and y (Nx1) of matching N; it is not an SVHN cropped-digits file"
        )
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"SVHN file {path} has labels outside 1..10; it is not an SVHN cropped-digits file")
    images = np.ascontiguousarray(x.astype(np.uint8, copy=False).transpose(3, 2, 0, 1))
    return images, labels % 10


def write(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write (N, 3, 32, 32) uint8 images and 0..9 digit labels as an official-format SVHN .mat file."""
    path = Path(path)
    x = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(2, 3, 1, 0))
    y = np.where(np.asarray(labels) == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": x, "y": y}, format="5", do_compression=False)
    with open(path, "r+b") as f:  # scipy stamps the creation time into the header: fix it, so the same
        f.write(MAT_HEADER)  # images give the same bytes (a worker regenerating synthetic data checks a hash)
    return path


# ---------------------------------------------------------------------------------------- synthetic


def render_digits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """House-number-like 32x32 crops: the labelled digit centred, neighbours cut off at the sides, on
    cluttered, coloured backgrounds with colour, scale and position jitter (as in the real crops).

    The jitter is milder than real SVHN's (one polarity in four is inverted, not half; small shifts), so
    that even the codes of a barely trained autoencoder carry the digit: smoke runs must show a signal.
    """
    out = np.empty((len(labels), 3, 32, 32), dtype=np.uint8)
    fonts = {s: ImageFont.load_default(size=s) for s in range(26, 33, 2)}

    def rgb(c: np.ndarray) -> tuple[int, int, int]:
        return tuple(int(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]

    for i, digit in enumerate(labels):
        dark, light = rng.integers(0, 90, 3), rng.integers(165, 256, 3)
        bg, fg = (light, dark) if rng.random() < 0.25 else (dark, light)
        im = Image.new("RGB", (32, 32), rgb(bg))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.integers(0, 3)):  # clutter: rectangles in nearby colours
            x0, y0 = rng.integers(-8, 32, 2)
            w, h = rng.integers(4, 16, 2)
            draw.rectangle((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=rgb(bg + rng.integers(-40, 41, 3)))
        font = fonts[int(rng.choice(list(fonts)))]
        cx, cy = 16 + rng.integers(-1, 2), 16 + rng.integers(-1, 2)
        draw.text((int(cx), int(cy)), str(int(digit)), fill=rgb(fg), font=font, anchor="mm")
        for side in (-1, 1):  # neighbouring house-number digits, mostly outside the crop
            if rng.random() < 0.3:
                draw.text((float(cx + side * font.size * 0.75), int(cy)), str(int(rng.integers(0, 10))),
                          fill=rgb(fg), font=font, anchor="mm")
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 5, (32, 32, 3))
        out[i] = np.clip(arr, 0, 255).round().astype(np.uint8).transpose(2, 0, 1)
    return out


def synthesize(out: Path, seed: int = 0, size: str = "smoke", progress: ProgressFn | None = None) -> Path:
    """Small SVHN-format data (rendered digits 0-9) in `out`, with the synthetic-data marker.
    `progress(done, total)` is told every few hundred digits (`dpl data synth` draws a bar with it)."""
    counts = check_size(size, SYNTH_SIZES)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tick = Ticker(progress, sum(counts[split] for split in SPLITS))
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])
        labels = rng.integers(0, 10, counts[split])
        write(out / file_name(split), tick.chunks(lambda part: render_digits(part, rng), labels), labels)
    write_marker(out, "trainables.data.svhn.synthesize", seed, size)
    return out


def download(root: Path) -> Path:
    """The three official .mat files into `root` (the folder the autoencoder task's --data-root names)."""
    root = Path(root)
    for split in SPLITS:
        fetch(URL.format(split=split), root / file_name(split), MD5[split])
    return root
