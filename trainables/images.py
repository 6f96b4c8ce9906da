"""Reading and writing images as float tensors in [0, 1], with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainables.errors import DataError


#: Modes whose values are 0-255 per channel; others (16-bit "I;16", float "F") would be scaled wrongly.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def read_rgb(path: str | Path, size: int | None = None) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]; greyscale/palette/alpha images are converted to RGB.

    `size` resizes to size x size with bicubic filtering (PIL, antialiased); None keeps the original.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in EIGHT_BIT_MODES:
                raise DataError(
                    f"image {path} has mode {im.mode} (not 8-bit colour or grey); convert it to 8-bit RGB PNG"
                )
            im = im.convert("RGB")
            if size is not None:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image {path} is unreadable or truncated ({exc}); re-download or regenerate it") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) in [0, 1] -> (H, W, 3|1) uint8, rounded like every image writer does."""
    arr = img.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return arr.permute(1, 2, 0).numpy()


def save_rgb(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(img)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return path
