"""Super-resolution data: a folder of training photographs, a validation folder, and the three test sets.

Layout under a data root (what `download`, `synthesize` and the task all use):

    <root>/train/            any images, searched recursively (e.g. COCO train2014: train/train2014/*.jpg)
    <root>/val/              validation images, searched recursively (e.g. COCO val2014)
    <root>/test/set5/        5 HR images (PNG)
    <root>/test/set14/       14 HR images (PNG)
    <root>/test/bsd100/      the 100 test images of BSDS300 (JPEG, as Berkeley ships them)

The degradation (Johnson et al. 2016): Gaussian blur (sigma 1.0) then bicubic down-sampling by the scale,
quantised to 8 bits (low-resolution inputs are 8-bit images in every real use). It runs on batched
tensors on the training device, so data loading only reads and crops. `blur_sigma=0` gives the plain
bicubic degradation of the standard benchmark tables (Set5 x4 bicubic 28.42 dB).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF
from torchvision.transforms.functional import gaussian_blur

from trainables.data.download import extract, fetch
from trainables.errors import DataError, UserError
from trainables.images import read_rgb, to_uint8
from trainables.progress import ProgressFn, Ticker

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")
TEST_SETS = ("set5", "set14", "bsd100")
PROTOCOLS = ("full", "center288")
CENTER_CROP = 288
#: How training and validation HR crops are made: `random` native-resolution crops (train; centre crops
#: for val), or the reference code's `resize_center`: shorter side resized to the crop size, centre crop.
TRAIN_CROPS = ("random", "resize_center")

# ------------------------------------------------------------------------------------------- sources
# COCO 2014 (official site). The COCO project publishes no checksums: SHA256SUMS (download.MANIFEST) guards them.
COCO_URLS = {
    "train": "http://images.cocodataset.org/zips/train2014.zip",
    "val": "http://images.cocodataset.org/zips/val2014.zip",
}
# Set5 / Set14 HR images as distributed with SelfExSR (Huang et al., CVPR 2015), the copy every SR paper's
# tables are computed on (Set5: Bevilacqua et al. 2012; Set14: Zeyde et al. 2010; the original authors'
# pages are gone). The SRF_4 HR files are modcropped to a multiple of 4 (and so of 2; x8 crops further).
# GitHub publishes no checksums for raw files: SHA256SUMS (download.MANIFEST) guards them.
SELFEXSR = "https://raw.githubusercontent.com/jbhuang0604/SelfExSR/master/data/{name}/image_SRF_4/img_{i:03d}_SRF_4_HR.png"
SELFEXSR_COUNTS = {"set5": ("Set5", 5), "set14": ("Set14", 14)}
# BSD100 = the 100 test images of BSDS300 (official Berkeley archive; no published checksum: SHA256SUMS guards it).
BSDS300_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz"


def download(root: Path) -> Path:
    """Fetch COCO train2014/val2014, Set5, Set14 and BSD100 into the layout above (about 19 GB)."""
    root = Path(root)
    cache = root / "downloads"
    for split, url in COCO_URLS.items():
        if not any((root / split).glob("*/*.jpg")):
            extract(fetch(url, cache / Path(url).name), root / split)
    for name, (remote, count) in SELFEXSR_COUNTS.items():
        for i in range(1, count + 1):
            fetch(SELFEXSR.format(name=remote, i=i), root / "test" / name / f"img_{i:03d}.png")
    bsd = root / "test" / "bsd100"
    if len(list_images(bsd, missing_ok=True)) < 100:
        extract(fetch(BSDS300_URL, cache / "BSDS300-images.tgz"), cache)
        src = cache / "BSDS300" / "images" / "test"
        bsd.mkdir(parents=True, exist_ok=True)
        for f in list_images(src):
            shutil.copy2(f, bsd / f.name)
    return root


# --------------------------------------------------------------------------------------------- files


def list_images(folder: Path, missing_ok: bool = False) -> list[Path]:
    """Image files under `folder` (recursively), sorted; a missing or empty folder is a DataError."""
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()) if folder.is_dir() else []
    if not files and not missing_ok:
        raise DataError(
            f"no images in {folder}; run `dpl data fetch superres` (or `dpl data synth superres`) with this data "
            f"root, or put images there"
        )
    return files


def seeded_subset(files: list[Path], n: int, seed: int) -> list[Path]:
    """`n` files chosen with `seed` (all of them for n <= 0 or n >= len), in file order, so that the
    subset does not depend on the order the file system lists them in."""
    if n <= 0 or n >= len(files):
        return list(files)
    keep = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [files[i] for i in sorted(keep)]


def test_files(root: Path) -> dict[str, list[Path]]:
    return {name: list_images(Path(root) / "test" / name) for name in TEST_SETS}


# ------------------------------------------------------------------------------------ image operations


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid (what saving an image does), staying float in [0, 1]."""
    return x.clamp(0, 1).mul(255).round().div(255)


def bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with the a=-0.5 kernel, widened when shrinking (antialias): the kernel of MATLAB's
    `imresize` and PIL's BICUBIC. torch's plain bicubic uses a=-0.75 and does not antialias."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def degrade(hr: torch.Tensor, scale: int, blur_sigma: float = 1.0) -> torch.Tensor:
    """(B, 3, H, W) HR in [0, 1] -> 8-bit LR (B, 3, H/scale, W/scale): blur, bicubic down, quantise.
    H and W must be multiples of the scale (see `modcrop`)."""
    if hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not a multiple of the scale {scale}")
    if blur_sigma > 0:
        k = 2 * math.ceil(3 * blur_sigma) + 1
        hr = gaussian_blur(hr, [k, k], [blur_sigma, blur_sigma])
    return quantise(bicubic(hr, (hr.shape[-2] // scale, hr.shape[-1] // scale)))


def upscale_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: LR up by the scale, quantised."""
    return quantise(bicubic(lr, (lr.shape[-2] * scale, lr.shape[-1] * scale)))


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom/right so that H and W are multiples of the scale (the standard SR protocol)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def at_least(img: torch.Tensor, side: int) -> torch.Tensor:
    """Scale up (bicubic) so that the shorter side is >= `side`; larger images are left as they are."""
    h, w = img.shape[-2:]
    if min(h, w) >= side:
        return img
    f = side / min(h, w)
    return bicubic(img[None], (max(side, round(h * f)), max(side, round(w * f))))[0].clamp(0, 1)


def center_crop(img: torch.Tensor, side: int) -> torch.Tensor:
    img = at_least(img, side)
    h, w = img.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return img[..., top : top + side, left : left + side]


def resize_center(img: torch.Tensor, side: int) -> torch.Tensor:
    """The reference code's crop: torchvision `Resize(side)` (shorter side to `side`, bilinear, on the 8-bit
    PIL image as its dataset did) then `CenterCrop(side)`; an 8-bit (3, side, side) float image in [0, 1].

    Unlike a native crop this rescales every photograph, so objects appear at a size that depends on the
    photograph's resolution; kept to reproduce the paper (`train_crop=resize_center`, `eval_protocol=center288`).
    """
    pil = Image.fromarray(to_uint8(img))
    out = TF.center_crop(TF.resize(pil, side, interpolation=TF.InterpolationMode.BILINEAR), [side, side])
    return TF.to_tensor(out)


def prepare_hr(img: torch.Tensor, scale: int, protocol: str = "full") -> torch.Tensor:
    """The HR image a test protocol scores against: `full` = the whole image modcropped to the scale;
    `center288` = the reference code's protocol, `resize_center(img, 288)` (its test set used the training
    transform: shorter side resized to 288, centre 288 x 288 crop)."""
    if protocol == "full":
        return modcrop(img, scale)
    if protocol == "center288":
        return resize_center(img, CENTER_CROP)
    raise UserError(f"eval_protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------------------------- datasets


class RandomCrops(Dataset):
    """HR training crops: job i = (file index, crop position as fractions of the free range).

    The jobs are drawn in the main process from a generator seeded by (seed, epoch), so an epoch's batches
    are the same whether it runs first or after a resume, and whatever the number of loader workers.
    """

    def __init__(self, files: list[Path], crop: int, seed: int, epoch: int, n: int) -> None:
        self.files, self.crop = files, crop
        rng = np.random.default_rng([seed, epoch])
        passes = -(-n // len(files))
        self.index = np.concatenate([rng.permutation(len(files)) for _ in range(passes)])[:n]
        self.frac = rng.random((n, 2))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = at_least(read_rgb(self.files[self.index[i]]), self.crop)
        h, w = img.shape[-2:]
        top = int(self.frac[i, 0] * (h - self.crop + 1))
        left = int(self.frac[i, 1] * (w - self.crop + 1))
        return img[:, top : top + self.crop, left : left + self.crop]


class ResizeCenterCrops(RandomCrops):
    """The reference's training images: each job's file resized (shorter side to `crop`) and centre-cropped,
    so a file always gives the same crop; the per-epoch order is drawn as in RandomCrops."""

    def __getitem__(self, i: int) -> torch.Tensor:
        return resize_center(read_rgb(self.files[self.index[i]]), self.crop)


def train_crops(kind: str, files: list[Path], crop: int, seed: int, epoch: int, n: int) -> Dataset:
    """The epoch's HR training crops for `train_crop` = `kind` (see TRAIN_CROPS)."""
    if kind == "random":
        return RandomCrops(files, crop, seed, epoch, n)
    if kind == "resize_center":
        return ResizeCenterCrops(files, crop, seed, epoch, n)
    raise UserError(f"train_crop {kind!r}: use one of {', '.join(TRAIN_CROPS)}")


def center_crops(files: list[Path], crop: int, kind: str = "random") -> torch.Tensor:
    """(N, 3, crop, crop) uint8 validation crops, kept in memory (100 x 288^2 x 3 bytes = 25 MB): native
    centre crops, or for `kind=resize_center` the reference's resize-then-centre-crop."""
    make = resize_center if kind == "resize_center" else center_crop
    return torch.stack([make(read_rgb(f), crop).mul(255).round().byte() for f in files])


# -------------------------------------------------------------------------------------------- synthetic

#: images per split for each synthetic size, and the side range of the images
SYNTH_SIZES = {
    "smoke": ({"train": 12, "val": 4, "set5": 5, "set14": 4, "bsd100": 4}, (72, 112)),
    "small": ({"train": 200, "val": 20, "set5": 5, "set14": 14, "bsd100": 100}, (256, 400)),
}


def synthesize(out: Path, seed: int = 0, size: str = "smoke", progress: ProgressFn | None = None) -> Path:
    """Procedural photographs (smooth colour fields, gradients, textures, shapes with sharp and soft edges)
    in the layout above: JPEG for train/val/bsd100 as in COCO and BSDS300, PNG for Set5/Set14.
    `progress(done, total)` is told each image (`dpl data synth` draws a bar with it)."""
    from trainables.trial import SYNTHETIC_MARKER

    if size not in SYNTH_SIZES:
        raise UserError(f"synthetic superres size {size!r}: use one of {', '.join(SYNTH_SIZES)}")
    counts, (lo, hi) = SYNTH_SIZES[size]
    out = Path(out)
    rng = np.random.default_rng(seed)
    tick = Ticker(progress, sum(counts.values()))
    for split, n in counts.items():
        folder = out / (f"test/{split}" if split in TEST_SETS else f"{split}/synth{split}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            img = Image.fromarray(synthetic_image(rng, h, w))
            if split in ("set5", "set14"):
                img.save(folder / f"img_{i + 1:03d}.png")
            else:
                img.save(folder / f"{i:06d}.jpg", quality=95)
            tick.add()
    (out / SYNTHETIC_MARKER).write_text(json.dumps({"generator": __name__, "seed": seed, "size": size}))
    return out


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: a multi-scale smooth noise colour field plus a gradient, a periodic texture
    patch, and a few filled shapes, some blurred (out-of-focus edges) and some sharp."""
    base = sum(gaussian_filter(rng.standard_normal((h, w, 3)), (s, s, 0)) * s for s in (2, 6, 18))
    # each channel stretched to the full range, then a random gamma: photographs use the whole 8 bits
    base = (base - base.min((0, 1))) / (np.ptp(base, (0, 1)) + 1e-8)
    base = base ** rng.uniform(0.5, 2.0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(-0.5, 0.5, 3)
    img = np.clip(0.8 * base + 0.1 + ramp, 0, 1)
    # a stripe texture in an elliptic patch
    f, theta = rng.uniform(8, 30), rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(theta) * xx + np.sin(theta) * yy))
    cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
    mask = ((yy - cy * h / max(h, w)) ** 2 + (xx - cx * w / max(h, w)) ** 2) < r**2
    img[mask] = 0.5 * img[mask] + 0.5 * stripes[mask][:, None] * rng.uniform(0.3, 1, 3)
    canvas = Image.fromarray((img * 255).astype(np.uint8))
    for _ in range(int(rng.integers(3, 7))):
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.1, 0.5) * h
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=255)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=255)
        else:
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
            draw.polygon(pts, fill=255)
        alpha = np.asarray(layer, dtype=np.float64) / 255
        if rng.random() < 0.4:
            alpha = gaussian_filter(alpha, rng.uniform(1, 3))
        colour = rng.uniform(0, 1, 3) * 255
        arr = np.asarray(canvas, dtype=np.float64)
        arr = arr * (1 - alpha[..., None]) + colour * alpha[..., None]
        canvas = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
    return np.asarray(canvas)
