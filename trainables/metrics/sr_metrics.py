"""Super-resolution scores as the SR literature computes them: PSNR and SSIM on the 8-bit Y channel.

Y is MATLAB's `rgb2ycbcr` on 8-bit images: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B
in 0..255, ROUNDED to an integer (MATLAB returns uint8). Published tables are computed that way; without
the rounding they are off by ~0.01 dB. Borders of `scale` pixels are shaved. PSNR uses peak 255; SSIM is
Wang et al.'s (Gaussian window, sigma 1.5, population covariances), computed by scikit-image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainables.data.superres import list_images, prepare_hr
from trainables.errors import DataError
from trainables.images import read_rgb, to_uint8

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
#: The authors' test script's luma weights, applied to RGB in [0, 1] (reference_impl.md section 3.2).
REFERENCE_Y_WEIGHTS = np.array([65.738, 129.057, 25.064]) / 256.0
#: Pixels the authors' test script shaved from every border, whatever the scale.
REFERENCE_SHAVE = 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 Y with integer values in 16..235 (MATLAB rgb2ycbcr)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    # exactly, in integers: 255000 Y = 4080000 + 65481 R + 128553 G + 24966 B, rounded half up as MATLAB's
    # uint8 conversion does; 194 colours land exactly on .5, where float sums + np.round (half to even) went
    # either way (136 of them down)
    num = img.astype(np.int64) @ np.array([65481, 128553, 24966], dtype=np.int64) + 4_080_000
    return ((num + 127_500) // 255_000).astype(np.float64)


def _as_y(img: np.ndarray | torch.Tensor, shave: int) -> np.ndarray:
    """Y channel of an 8-bit image (uint8 HWC array, or a (3, H, W) tensor in [0, 1], quantised first)."""
    arr = to_uint8(img) if isinstance(img, torch.Tensor) else img
    y = rgb_to_y(arr)
    return y[shave:-shave, shave:-shave] if shave > 0 else y


def reference_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float64 luma in [0, 0.86] as the authors' test script computed it."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
    return (img.astype(np.float64) / 255.0) @ REFERENCE_Y_WEIGHTS


def _reference_scores(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(PSNR, SSIM) the way the `center288` protocol's source did (see the module docstring)."""
    a, b = (reference_y(to_uint8(x) if isinstance(x, torch.Tensor) else x) for x in (sr, hr))
    s = REFERENCE_SHAVE
    a, b = a[s : a.shape[0] - s, s : a.shape[1] - s], b[s : b.shape[0] - s, s : b.shape[1] - s]
    if a.shape != b.shape:
        raise ValueError(f"SR {a.shape} and HR {b.shape} differ in size")
    return float(peak_signal_noise_ratio(b, a, data_range=1)), float(structural_similarity(b, a, data_range=1))


def psnr_ssim(
    sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, scale: int, protocol: str = "full"
) -> tuple[float, float]:
    """(PSNR dB, SSIM) of one SR image against its HR image on Y: borders of `scale` pixels shaved and
    Gaussian SSIM (`full`), or the authors' scoring (`center288`: 2 px, uniform 7x7 SSIM)."""
    if protocol == "center288":
        return _reference_scores(sr, hr)
    if protocol != "full":
        raise ValueError(f"protocol {protocol!r}: use full or center288")
    a, b = _as_y(sr, scale), _as_y(hr, scale)
    if a.shape != b.shape:
        raise ValueError(f"SR {a.shape} and HR {b.shape} differ in size")
    psnr = peak_signal_noise_ratio(b, a, data_range=255)
    ssim = structural_similarity(b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    return float(psnr), float(ssim)


def evaluate_folders(sr_dir: Path, hr_dir: Path, scale: int, protocol: str = "full") -> dict[str, Any]:
    """Mean and per-image Y-PSNR/SSIM of the SR images in `sr_dir` against the HR images in `hr_dir`.

    Files are paired by name stem. Each HR image is first put through the test protocol (`full`: modcrop
    to the scale; `center288`: the reference's 288 centre crop, scored as the reference did), and the SR
    image must have that size.
    Returns {"psnr", "ssim", "n", "images": {stem: {"psnr", "ssim"}}}.
    """
    sr = {f.stem: f for f in list_images(Path(sr_dir))}
    hr = {f.stem: f for f in list_images(Path(hr_dir))}
    unpaired = sorted(set(sr) ^ set(hr))
    if unpaired:
        names = ", ".join(str(sr.get(s) or hr.get(s)) for s in unpaired[:5])
        raise DataError(f"{len(unpaired)} file(s) have no partner with the same name stem: {names}")
    per: dict[str, dict[str, float]] = {}
    for stem in sorted(sr):
        target = prepare_hr(read_rgb(hr[stem]), scale, protocol)
        out = read_rgb(sr[stem])
        if out.shape != target.shape:
            raise DataError(
                f"{sr[stem]} is {out.shape[2]}x{out.shape[1]} but {hr[stem]} under protocol {protocol} at x{scale} is "
                f"{target.shape[2]}x{target.shape[1]}; SR images must have the (modcropped) HR size"
            )
        p, s = psnr_ssim(out, target, scale, protocol)
        per[stem] = {"psnr": p, "ssim": s}
    return {
        "psnr": float(np.mean([v["psnr"] for v in per.values()])),
        "ssim": float(np.mean([v["ssim"] for v in per.values()])),
        "n": len(per),
        "images": per,
    }
