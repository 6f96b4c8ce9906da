"""Massachusetts Roads (Mnih, 2013): reader, official download, and a synthetic look-alike.

On-disk layout (the official one): `<root>/{train,valid,test}/{sat,map}/`, 1500x1500 tiles; `sat/<stem>.tiff`
is the RGB aerial image and `map/<stem>.tif` the binary road label (0 / 255), paired by file stem. The
official splits hold 1108 / 14 / 49 tiles.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError
from scipy.ndimage import gaussian_filter

from trainables.data.download import fetch
from trainables.errors import DataError, UserError
from trainables.images import read_rgb
from trainables.progress import ProgressFn, Ticker

SPLITS = ("train", "valid", "test")
SAT_SUFFIX, MAP_SUFFIX = ".tiff", ".tif"
BASE_URL = "https://www.cs.toronto.edu/~vmnih/data/mass_roads/"
#: side of every official tile in pixels (what whole-tile validation and test run at without `test_resize`)
TILE_SIZE = 1500
#: synthetic sizes: tile side in pixels and tiles per split
SYNTH_SIZES = {"smoke": (128, {"train": 6, "valid": 2, "test": 2}), "small": (256, {"train": 32, "valid": 4, "test": 6})}


@dataclass(frozen=True)
class Tile:
    stem: str
    sat: Path
    map: Path


def dataset_root(root: str | Path) -> Path:
    """`root` itself or its `mass_roads/` sub-folder, whichever holds the splits."""
    root = Path(root)
    for cand in (root, root / "mass_roads"):
        if (cand / "test" / "sat").is_dir():
            return cand
    raise DataError(
        f"no Massachusetts Roads data under {root} (expected {root}/test/sat/*.tiff): run `dpl data fetch roads` "
        f"or `dpl data synth roads`"
    )


def list_tiles(root: str | Path, split: str) -> list[Tile]:
    """The split's tiles, sorted by stem; every sat image must have its map and vice versa."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(SPLITS)}")
    base = dataset_root(root) / split
    sats = {p.stem: p for p in (base / "sat").glob(f"*{SAT_SUFFIX}")} if (base / "sat").is_dir() else {}
    maps = {p.stem: p for p in (base / "map").glob(f"*{MAP_SUFFIX}")} if (base / "map").is_dir() else {}
    if not sats:
        raise DataError(f"{base / 'sat'} holds no *{SAT_SUFFIX} tiles; re-download the {split} split")
    for stem in sorted(set(sats) ^ set(maps)):
        missing = base / "map" / f"{stem}{MAP_SUFFIX}" if stem in sats else base / "sat" / f"{stem}{SAT_SUFFIX}"
        raise DataError(f"{missing} is missing (tiles are paired by name); re-download the {split} split")
    return [Tile(s, sats[s], maps[s]) for s in sorted(sats)]


def _read_grey(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "F", "I;16", "I") else im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable or truncated ({exc}); re-download or regenerate it") from exc
    if arr.ndim != 2:
        raise DataError(f"{path} has shape {arr.shape}; expected a single-channel (H, W) map")
    return arr


def read_label(path: str | Path) -> np.ndarray:
    """Boolean (H, W) road mask from a 0/255 (or 0/1, or bool) map."""
    arr = _read_grey(Path(path))
    if arr.dtype == bool:
        return arr
    return arr > (127 if arr.max(initial=0) > 1 else 0.5)


def read_probability(path: str | Path) -> np.ndarray:
    """Float (H, W) road probability: 8-bit images are scaled by 1/255, .npy arrays taken as they are."""
    path = Path(path)
    arr = _read_grey(path)
    if path.suffix.lower() == ".npy":
        return arr.astype(np.float32)
    if arr.dtype != np.uint8:
        raise DataError(f"{path} is {arr.dtype}; save predictions as 8-bit grey images (0-255) or float .npy")
    return arr.astype(np.float32) / 255.0


def read_pair(tile: Tile) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image in [0, 1] and (1, H, W) float label in {0, 1}."""
    img = read_rgb(tile.sat)
    label = torch.from_numpy(read_label(tile.map)).float()[None]
    if img.shape[1:] != label.shape[1:]:
        raise DataError(f"{tile.sat} is {tuple(img.shape[1:])} but {tile.map} is {tuple(label.shape[1:])}")
    return img, label


# ------------------------------------------------------------------------------------------ download


def download(root: Path) -> Path:
    """Fetch every tile listed on the official index pages into `root/{split}/{sat,map}/`.

    The source publishes no checksums, so each file is checked against the SHA256SUMS manifest of its folder
    (recorded on first download or pinned by the user, see `download.MANIFEST`); fetch() resumes
    partial files and skips complete ones, so an interrupted download is continued by running it again.
    """
    root = Path(root)
    for split in SPLITS:
        for kind, suffix in (("sat", SAT_SUFFIX), ("map", MAP_SUFFIX)):
            page_url = f"{BASE_URL}{split}/{kind}/index.html"
            page = fetch(page_url, root / ".index" / f"{split}_{kind}.html")  # re-used offline once fetched
            links = _links(page.read_text(errors="replace"), page_url, suffix)
            if not links:
                page.unlink()
                raise DataError(f"{page_url} lists no *{suffix} files; the source may have moved, retry later")
            for url in links:
                fetch(url, root / split / kind / urllib.parse.unquote(url.rsplit("/", 1)[-1]))
    list_tiles(root, "test")
    return root


def _links(html: str, page_url: str, suffix: str) -> list[str]:
    hrefs = re.findall(r'href\s*=\s*["\']([^"\']+)["\']', html, flags=re.IGNORECASE)
    return sorted({urllib.parse.urljoin(page_url, h) for h in hrefs if h.lower().endswith(suffix)})


# ------------------------------------------------------------------------------------------- synthesis


def synthesize(out: Path, seed: int = 0, size: str = "smoke", progress: ProgressFn | None = None) -> Path:
    """Road-like tiles in the official layout: curved roads of varying width with junctions, drawn on a
    textured background with buildings, and partly hidden by trees and shadows (the label is not).

    Occluders matter: a model must bridge them, which is what the topology-aware loss is about.
    `progress(done, total)` is told each tile (`dpl data synth` draws a bar with it).
    """
    from trainables.trial import SYNTHETIC_MARKER

    if size not in SYNTH_SIZES:
        raise UserError(f"synthetic roads size {size!r}: use one of {', '.join(SYNTH_SIZES)}")
    side, counts = SYNTH_SIZES[size]
    out = Path(out)
    rng = np.random.default_rng(seed)
    tick = Ticker(progress, sum(counts[split] for split in SPLITS))
    for split in SPLITS:
        (out / split / "sat").mkdir(parents=True, exist_ok=True)
        (out / split / "map").mkdir(parents=True, exist_ok=True)
        for i in range(counts[split]):
            img, label = _synth_tile(rng, side)
            stem = f"synth_{split}_{i:04d}"
            Image.fromarray(img).save(out / split / "sat" / f"{stem}{SAT_SUFFIX}")
            Image.fromarray(label).save(out / split / "map" / f"{stem}{MAP_SUFFIX}")
            tick.add()
    (out / SYNTHETIC_MARKER).write_text(json.dumps({"generator": "trainables.data.roads", "seed": seed, "size": size}))
    return out


def _synth_tile(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 0/255 label."""
    # background: low-frequency vegetation/soil colour field plus fine grain
    field = gaussian_filter(rng.standard_normal((side, side)), side / 12)
    field = (field - field.min()) / (np.ptp(field) + 1e-8)
    green, soil = np.array([70, 105, 55]), np.array([140, 120, 85])
    bg = green + field[..., None] * (soil - green) + rng.normal(0, 10, (side, side, 1))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):  # buildings: grey-ish roofs, road-coloured distractors
        x, y, w, h = rng.integers(0, side, 2).tolist() + rng.integers(side // 32 + 3, side // 10 + 4, 2).tolist()
        roof = tuple(int(c) for c in rng.integers(90, 200, 3))
        draw.rectangle([x, y, x + w, y + h], fill=roof)

    label = Image.new("L", (side, side), 0)
    ldraw = ImageDraw.Draw(label)
    roads: list[np.ndarray] = []
    for _ in range(rng.integers(2, 4)):
        base = roads[rng.integers(len(roads))] if roads else None
        start = base[rng.integers(len(base))] if base is not None and rng.random() < 0.6 else None
        pts = _curve(rng, side, start)  # a start on an existing road makes a junction
        roads.append(pts)
        width = int(rng.integers(max(2, side // 64), max(4, side // 24)))
        grey = int(rng.integers(80, 150))
        xy = [tuple(p) for p in pts.tolist()]
        draw.line(xy, fill=(grey, grey, grey + 5), width=width, joint="curve")
        ldraw.line(xy, fill=255, width=width, joint="curve")
    # occluders: trees (dark green blobs) and shadows (darkened ellipses) over the roads, not in the label
    arr = np.asarray(img, dtype=np.float32)
    occ = Image.new("L", (side, side), 0)
    odraw = ImageDraw.Draw(occ)
    for _ in range(rng.integers(2, 7)):
        on_road = roads[rng.integers(len(roads))]
        cx, cy = on_road[rng.integers(len(on_road))] if rng.random() < 0.5 else rng.integers(0, side, 2)
        rad = int(rng.integers(side // 40 + 2, side // 16 + 3))
        odraw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=int(rng.choice([1, 2])))
    occ_arr = np.asarray(occ.filter(ImageFilter.MaxFilter(3)))
    arr[occ_arr == 1] = np.array([35, 70, 30]) + rng.normal(0, 8, ((occ_arr == 1).sum(), 3))
    arr[occ_arr == 2] *= 0.55
    arr += rng.normal(0, 6, arr.shape)  # sensor noise
    return np.clip(arr, 0, 255).astype(np.uint8), np.asarray(label)


def _curve(rng: np.random.Generator, side: int, start: np.ndarray | None) -> np.ndarray:
    """A smoothly turning polyline through `start` (random walks on the heading, both ways out of the tile)."""
    origin = np.asarray(start, dtype=float) if start is not None else rng.uniform(side * 0.2, side * 0.8, 2)
    heading0 = rng.uniform(0, 2 * np.pi)
    step = max(2.0, side / 48)
    halves = []
    for direction in (0.0, np.pi) if start is None else (0.0,):
        pos, heading, turn, pts = origin.copy(), heading0 + direction, 0.0, []
        for _ in range(int(3 * side / step)):
            turn = 0.8 * turn + rng.normal(0, 0.03)
            heading += turn
            pos = pos + step * np.array([np.cos(heading), np.sin(heading)])
            pts.append(pos.copy())
            if not (-side * 0.1 < pos[0] < side * 1.1 and -side * 0.1 < pos[1] < side * 1.1):
                break
        halves.append(pts)
    pts = halves[1][::-1] + [origin] + halves[0] if len(halves) == 2 else [origin] + halves[0]
    return np.round(np.array(pts)).astype(int)
