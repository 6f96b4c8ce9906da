"""BAPPS scores: 2AFC agreement with human judgements and JND mean average precision.

Both follow the `lpips` package's `score_2afc_dataset` / `score_jnd_dataset` exactly (same formula, same
sort, same VOC AP), so numbers are comparable with published LPIPS tables; the tests check this against
the package itself.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def twoafc_scores(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-triplet agreement: 1[d0<d1](1-j) + 1[d1<d0] j + 0.5 1[d0=d1] (j = fraction preferring p1)."""
    d0, d1, judge = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (d0, d1, judge))
    return (d0 < d1) * (1.0 - judge) + (d1 < d0) * judge + (d1 == d0) * 0.5


def twoafc_score(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> float:
    """Mean 2AFC agreement over a set of triplets, in [0, 1]; 0.5 is chance."""
    return float(np.mean(twoafc_scores(d0, d1, judge)))


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope (PASCAL VOC 2010+ AP), as `lpips.voc_ap(use_07_metric=False)`."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope from the right
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def jnd_map(d: np.ndarray, same: np.ndarray) -> float:
    """JND mAP: rank pairs by distance (ascending = "same" first) and score with fractional labels.

    NaN when no pair was judged "same" by anyone (recall is undefined), as in lpips.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    same = np.asarray(same, dtype=np.float64).reshape(-1)
    order = np.argsort(d)  # default kind, as lpips: identical tie-breaking on identical input
    s = same[order]
    tp = np.cumsum(s)
    fp = np.cumsum(1.0 - s)
    fn = np.sum(s) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp / (tp + fp)
        rec = tp / (tp + fn)
    return voc_ap(rec, prec)


def summarise(
    twoafc: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    jnd: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, float]:
    """Final metric dict: `2afc/<subset>`, `2afc/mean` (unweighted over subsets), `jnd/<subset>`, `jnd/pooled`.

    `twoafc[subset] = (d0, d1, judge)`, `jnd[subset] = (d, same)`. The pooled JND ranks all pairs together
    (what the paper's code reports); the per-subset values are LPIPS' own.
    """
    out: dict[str, float] = {f"2afc/{k}": twoafc_score(*v) for k, v in twoafc.items()}
    if twoafc:
        out["2afc/mean"] = float(np.mean([out[f"2afc/{k}"] for k in twoafc]))
    out.update({f"jnd/{k}": jnd_map(*v) for k, v in jnd.items()})
    if jnd:
        out["jnd/pooled"] = jnd_map(np.concatenate([v[0] for v in jnd.values()]),
                                    np.concatenate([v[1] for v in jnd.values()]))
    return out
