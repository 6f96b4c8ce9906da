"""Correctness, completeness and quality of extracted roads (Wiedemann et al., 1998), with a tolerance buffer.

A predicted road pixel is *matched* when a label road pixel lies within `tolerance` pixels (Euclidean) of
it, and a label road pixel is matched when a predicted one lies within `tolerance` of it. Then

    correctness  = matched prediction / prediction
    completeness = matched label / label
    quality      = matched prediction / (prediction + unmatched label)

`tolerance=0` is the pixel-exact TP/(TP+FP[+FN]) of the reference code. A 0/0 ratio counts as 1: a tile
without roads that is predicted empty is perfect (the reference divided by zero there). Scores are
reported two ways: pooled (counts summed over a split, so big road networks weigh more) and as per-tile
means.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

from trainables.errors import DataError

RATIOS = ("correctness", "completeness", "quality")


@dataclass(frozen=True)
class Counts:
    """The four pixel counts every ratio is made of (integers, so that they pool by plain summation)."""

    pred: int
    label: int
    matched_pred: int
    matched_label: int

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.pred, self.label, self.matched_pred, self.matched_label)

    def ratios(self) -> dict[str, float]:
        unmatched_label = self.label - self.matched_label
        return {
            "correctness": _ratio(self.matched_pred, self.pred),
            "completeness": _ratio(self.matched_label, self.label),
            "quality": _ratio(self.matched_pred, self.pred + unmatched_label),
        }


def _ratio(num: int, den: int) -> float:
    return 1.0 if den == 0 else num / den


def within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels at Euclidean distance <= tolerance from a True pixel of `mask` (all False if mask is empty)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    # distance_transform_edt measures the distance to the nearest zero, so the roads must be the zeros.
    return distance_transform_edt(~mask) <= tolerance


def tile_counts(pred: np.ndarray, label: np.ndarray, tolerance: float = 3.0) -> Counts:
    """Counts for one tile; `pred` and `label` are boolean road masks of the same (H, W) shape."""
    pred = np.asarray(pred, dtype=bool)
    label = np.asarray(label, dtype=bool)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in size")
    if tolerance < 0:
        raise ValueError(f"tolerance {tolerance} must be >= 0 pixels")
    return Counts(
        pred=int(pred.sum()),
        label=int(label.sum()),
        matched_pred=int((pred & within(label, tolerance)).sum()),
        matched_label=int((label & within(pred, tolerance)).sum()),
    )


def summarise(counts: list[Counts], prefix: str = "") -> dict[str, float]:
    """Pooled ratios (`{prefix}quality`) and per-tile means (`{prefix}tile_mean/quality`) over tiles."""
    if not counts:
        raise ValueError("no tiles to score")
    pooled = sum(counts[1:], counts[0]).ratios()
    per_tile = [c.ratios() for c in counts]
    out = {f"{prefix}{k}": v for k, v in pooled.items()}
    out.update({f"{prefix}tile_mean/{k}": float(np.mean([r[k] for r in per_tile])) for k in RATIOS})
    return out


def score_tiles(
    probs: list[np.ndarray], labels: list[np.ndarray], tolerance: float = 3.0, threshold: float = 0.3
) -> dict[str, float]:
    """Threshold probability maps (road where prob > threshold) and summarise against boolean labels."""
    return summarise([tile_counts(p > threshold, y, tolerance) for p, y in zip(probs, labels, strict=True)])


PRED_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def evaluate_folders(
    pred_dir: str | Path, label_dir: str | Path, tolerance: float = 3.0, threshold: float = 0.3
) -> dict[str, float]:
    """Score a folder of predicted probability maps against a folder of labels, paired by file stem.

    Predictions: 8-bit grey PNG/TIFF (0-255 = probability 0-1) or float .npy; labels: binary images
    (0/255 or 0/1) or .npy. Adds `n_tiles`, `tolerance` and `threshold` so that a saved result says how it
    was made.
    """
    from trainables.data.roads import read_label, read_probability  # readers live with the dataset

    preds = _by_stem(Path(pred_dir), PRED_SUFFIXES)
    labels = _by_stem(Path(label_dir), LABEL_SUFFIXES)
    missing_label = sorted(set(preds) - set(labels))
    missing_pred = sorted(set(labels) - set(preds))
    if missing_label or missing_pred:
        parts = []
        if missing_label:
            parts.append(f"no label in {label_dir} for prediction(s) {', '.join(missing_label[:5])}")
        if missing_pred:
            parts.append(f"no prediction in {pred_dir} for label(s) {', '.join(missing_pred[:5])}")
        raise DataError("; ".join(parts) + " (files are paired by name without extension)")
    counts = []
    for stem in sorted(preds):
        prob, label = read_probability(preds[stem]), read_label(labels[stem])
        if prob.shape != label.shape:
            raise DataError(f"{preds[stem]} is {prob.shape} but its label {labels[stem]} is {label.shape}")
        counts.append(tile_counts(prob > threshold, label, tolerance))
    return {**summarise(counts), "n_tiles": float(len(counts)), "tolerance": float(tolerance), "threshold": float(threshold)}


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes:
            if p.stem in found:
                raise DataError(f"{folder} has two files for {p.stem}: {found[p.stem].name} and {p.name}")
            found[p.stem] = p
    if not found:
        raise DataError(f"{folder} holds no {'/'.join(suffixes)} files")
    return found
