"""Figures (matplotlib, Agg) in the paper's style: per benchmark a network x point heatmap, ImageNet accuracy
vs score, and score vs relative depth.

Heatmaps are drawn for every task/metric; the scatter and depth figures for each benchmark's primary
metric only, which keeps a 14-network, 20-metric study's report readable. Colours are colour-blind safe
(`cividis` heatmaps, Okabe-Ito lines) and nothing is colour-only: the best point of each network is boxed
and starred, lines differ in marker as well as colour, and every cell prints its value. Each figure is
built by a `draw_*` function returning the Figure (so tests can inspect it) and saved by `make_figures`.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.tables import (  # noqa: E402
    best_points, column_label, group_name, groups, score_display, score_table, slug,
)

DPI = 100
#: Narrowest figure (inches): titles and axis labels of a one-network, one-point study still fit.
MIN_WIDTH = 7.0
#: Perceptually uniform and readable with any colour-vision deficiency (Nuñez et al. 2018); reversed for
#: "lower is better" metrics, so that a brighter cell is always a better score.
HEATMAP_CMAP = "cividis"
#: Okabe & Ito's colour-blind-safe palette, black first and yellow (weak on white) last.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
#: One marker per line colour, so that lines differ in shape too (and in greyscale print).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MISSING_COLOUR = "#e0e0e0"
BEST_MARK = "*"
DEPTH_LABEL = "relative depth of extraction point (0 = input, 1 = last layer)"
ACCURACY_LABEL = "ImageNet top-1 accuracy (%)"

#: What a metric measures and its unit, by the last part of its name (`test/set5/psnr` -> psnr).
_METRIC_NAMES = {
    "psnr": ("PSNR", "dB"), "ssim": ("SSIM", "0-1"), "lpips": ("LPIPS distance", "0-1"),
    "quality": ("road quality", "0-1"), "correctness": ("road correctness", "0-1"),
    "completeness": ("road completeness", "0-1"),
}


@dataclass(frozen=True)
class Drawn:
    """A saved figure and what it shows: kind (heatmap, accuracy, depth), its group's label, whether that
    group is its benchmark's primary metric, the PNG and a caption that says what is shown."""

    kind: str
    group: str
    primary: bool
    path: Path
    caption: str


def metric_label(metric: str, direction: str) -> str:
    """Axis label of a metric: what it is, its unit and direction, e.g. "PSNR [test/set5/psnr] (dB, higher
    is better)"."""
    last = metric.rsplit("/", 1)[-1]
    if metric.startswith("2afc"):
        name, unit = "2AFC score", "0-1"
    elif metric.startswith("jnd"):
        name, unit = "JND mAP", "0-1"
    elif "acc" in last:
        name, unit = "probe accuracy", "0-1"
    else:
        name, unit = _METRIC_NAMES.get(last, (metric, ""))
    better = "lower is better" if direction == "min" else "higher is better"
    what = name if name == metric else f"{name} [{metric}]"
    return f"{what} ({unit + ', ' if unit else ''}{better})"


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative luminance)."""
    return "black" if relative_luminance(rgba) > 0.179 else "white"


def relative_luminance(rgba: tuple[float, ...]) -> float:
    """WCAG 2 relative luminance of an sRGB colour with channels in [0, 1]."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def draw_heatmap(group: pd.DataFrame, name: str) -> plt.Figure:
    """Network (rows, by ImageNet top-1) x point (L1-L4) heatmap of one group, the value in every cell, each
    network's best point boxed and starred; failed or missing cells grey with their status."""
    baseline = group[group["is_baseline"].fillna(False).astype(bool)]
    group = group[~group["is_baseline"].fillna(False).astype(bool)]  # no L1-L4: its value goes in the title
    best = best_points(group)
    numeric = score_table(group, best)
    status = score_display(group, numeric).frame.set_index("network")  # FAILED / missing / – (not planned)
    table = numeric.drop(columns=["best", "best_point"])
    values = table.to_numpy(dtype=float)
    direction = str(group["direction"].iloc[0])
    metric = str(group["metric"].iloc[0])
    n_rows, n_cols = values.shape
    width = max(MIN_WIDTH, 3.4 + 1.15 * n_cols)  # a smoke study's 1 x 1 map still fits its labels
    fig, ax = plt.subplots(figsize=(width, max(3.4, 2.6 + 0.42 * n_rows)), layout="constrained")
    cmap = plt.get_cmap(HEATMAP_CMAP + ("_r" if direction == "min" else "")).with_extremes(bad=MISSING_COLOUR)
    finite = np.isfinite(values)
    lo, hi = (np.nanmin(values), np.nanmax(values)) if finite.any() else (0.0, 1.0)
    pad = 0.0 if hi > lo else 0.05 * max(abs(lo), 1e-3)  # one value: a readable bar around it, not 1e-9 wide
    norm = Normalize(lo - pad, hi + pad)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    best_cells = _best_cells(best, table)
    for (i, j), v in np.ndenumerate(values):
        starred = (i, j) in best_cells
        if finite[i, j]:
            text, colour = f"{v:.3g}" + (BEST_MARK if starred else ""), text_colour(cmap(norm(v)))
        else:
            text, colour = str(status.iloc[i, j]), "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour,
                fontweight="bold" if starred else "normal")
    for i, j in best_cells:  # a white and a black box: visible on any cell colour
        ax.add_patch(plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="white", lw=3.0))
        ax.add_patch(plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black", lw=1.2))
    ax.set_xticks(range(n_cols), table.columns)
    ax.set_yticks(range(n_rows), table.index)
    ax.set_xlabel("extraction point (L1 = earliest of the paper's four, L4 = deepest)")
    ax.set_ylabel("network (by ImageNet top-1, ascending)")
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(metric_label(metric, direction).replace(" (", "\n(", 1), fontsize=8)  # two lines: fits
    base = baseline["value"].dropna()
    base_text = f"; pixel-loss baseline: {base.iloc[0]:.3g}" if len(base) else ""
    ax.set_title(_wrap(f"{name}: score per network and extraction point", width) + "\n"
                 + _wrap(f"({BEST_MARK} and box = best point of each network{base_text})", width), fontsize=10)
    return fig


def _best_cells(best: pd.DataFrame, table: pd.DataFrame) -> set[tuple[int, int]]:
    """(row, column) of each network's best point in `table`."""
    cells = set()
    cols, rows = list(table.columns), list(table.index)
    for _, b in best.iterrows():
        label = column_label(b["best_position"], b["best_point"])
        if b["model"] in rows and label in cols:
            cells.add((rows.index(b["model"]), cols.index(label)))
    return cells


def spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    """Spearman rho, its p-value and n; NaN when there are fewer than 3 points or no spread."""
    n = len(x)
    if n < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan"), float("nan"), n
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue), n


def draw_accuracy(best: pd.DataFrame, name: str) -> plt.Figure:
    """ImageNet top-1 vs best-point score per network, with a Theil-Sen line and Spearman's rho and p.

    Theil-Sen (median of pairwise slopes) rather than least squares, so that one outlying network cannot
    make a trend; rho (the statistic C1 tests) is in the title.
    """
    b = best[best["is_default_weights"]].dropna(subset=["imagenet_top1", "value"])
    metric = str(b["metric"].iloc[0]) if len(b) else str(best["metric"].iloc[0]) if len(best) else ""
    direction = str(best["direction"].iloc[0]) if len(best) else "max"
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    ax.scatter(b["imagenet_top1"], b["value"], color=OKABE_ITO[4], marker="o", s=36, zorder=3,
               label="network (best point)")
    for _, row in b.iterrows():
        ax.annotate(row["network"], (row["imagenet_top1"], row["value"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    rho, p, n = spearman(b["imagenet_top1"], b["value"])
    if n >= 3 and b["imagenet_top1"].nunique() > 1:
        slope, intercept, _, _ = stats.theilslopes(b["value"], b["imagenet_top1"])
        xs = np.array([b["imagenet_top1"].min(), b["imagenet_top1"].max()])
        ax.plot(xs, intercept + slope * xs, color=OKABE_ITO[5], ls="--", lw=1.2,
                label=f"Theil-Sen fit (slope {slope:.3g} per %)")
    ax.legend(fontsize=7, loc="best")
    fallback = bool(b["top1_fallback"].fillna(False).astype(bool).any()) if len(b) else False
    ax.set_xlabel(ACCURACY_LABEL + ("\n[the architecture's V1 accuracy: these weights are not ImageNet's]"
                                    if fallback else ""))
    ax.set_ylabel(metric_label(metric, direction) + ", best point", fontsize=8)
    stat = (f"Spearman rho = {rho:.2f}, p = {p:.2g}, n = {n}" if np.isfinite(rho)
            else f"Spearman rho undefined (n = {n})")
    ax.set_title(_wrap(f"{name}: ImageNet accuracy vs best-point score", 6.4) + f"\n{stat}", fontsize=10)
    return fig


def draw_depth(group: pd.DataFrame, name: str) -> plt.Figure:
    """Score vs relative depth, one panel per network family, one line (colour and marker) per network."""
    g = group[group["is_default_weights"] & (group["n"] > 0)].dropna(subset=["relative_depth", "value"])
    metric, direction = str(group["metric"].iloc[0]), str(group["direction"].iloc[0])
    families = sorted(g["family"].fillna("").unique()) or [""]
    cols = min(4, len(families))
    rows = int(np.ceil(len(families) / cols))
    width = max(MIN_WIDTH, 3.6 * cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.0 * rows + 0.9), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, fam in zip(axes.flat, families):
        ax.set_prop_cycle(color=list(OKABE_ITO), marker=list(MARKERS))
        for net, ng in g[g["family"].fillna("") == fam].groupby("network"):
            ng = ng.sort_values("relative_depth")
            ax.plot(ng["relative_depth"], ng["value"], label=net, lw=1.4, ms=5)
        ax.set_title(f"family: {fam or '?'}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    fig.supxlabel(DEPTH_LABEL, fontsize=9)
    fig.supylabel(metric_label(metric, direction), fontsize=9)
    fig.suptitle(_wrap(f"{name}: score vs relative depth of the extraction point, per network family", width),
                 fontsize=10)
    return fig


def _wrap(title: str, width_in: float) -> str:
    """`title` broken into lines that fit a figure `width_in` inches wide at 10 pt (about 11 characters an inch)."""
    return textwrap.fill(title, width=max(30, int(width_in * 11)), break_on_hyphens=False)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    return path


def make_figures(cells: pd.DataFrame, out_dir: Path) -> list[Drawn]:
    """All figures under `out_dir`, in report order: per group its heatmap, then (primary metrics only) the
    accuracy scatter and the depth curves. File names: heatmap_/accuracy_/depth_<group slug>.png."""
    drawn: list[Drawn] = []
    best = best_points(cells)
    for key, g in groups(cells):
        name, primary = group_name(key), bool(key[4])
        if g["n"].sum() == 0:
            continue
        stem = slug(name)
        drawn.append(Drawn("heatmap", name, primary, _save(draw_heatmap(g, name), out_dir / f"heatmap_{stem}.png"),
                           f"{name}: score of each network (rows) at each extraction point L1-L4 (columns); "
                           f"{BEST_MARK} and box = the network's best point; grey = failed or missing."))
        if not primary:
            continue
        gb = best[(best[["task", "dataset", "metric", "setting"]] == [key[0], key[1], key[2], key[5]]).all(axis=1)]
        drawn.append(Drawn("accuracy", name, primary,
                           _save(draw_accuracy(gb, name), out_dir / f"accuracy_{stem}.png"),
                           f"{name}: ImageNet top-1 accuracy against each network's best-point score, with "
                           f"Spearman's rho (convention C1) and a Theil-Sen line."))
        drawn.append(Drawn("depth", name, primary, _save(draw_depth(g, name), out_dir / f"depth_{stem}.png"),
                           f"{name}: score against the relative depth of the extraction point, per network "
                           f"family (convention C2)."))
    return drawn
