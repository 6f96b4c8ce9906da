"""Figures (matplotlib, Agg): score heatmaps, ImageNet accuracy vs score, and score vs relative depth.

Heatmaps are drawn for every task/metric; the scatter and depth figures for each benchmark's primary
metric only, which keeps a 14-network, 20-metric study's report readable.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.tables import best_points, column_label, group_name, groups, score_table, slug  # noqa: E402

DPI = 90


def heatmap(group: pd.DataFrame, title: str, path: Path) -> Path:
    """Network x point heatmap of one group's scores (best point outlined); missing/failed cells blank."""
    best = best_points(group)
    table = score_table(group, best).drop(columns=["best", "best_point"])
    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * values.shape[1], 1.0 + 0.35 * values.shape[0]), layout="constrained")
    name = "viridis" if group["direction"].iloc[0] != "min" else "viridis_r"
    cmap = plt.get_cmap(name).with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(values.shape[1]), table.columns)
    ax.set_yticks(range(values.shape[0]), table.index)
    finite = np.isfinite(values)
    for (i, j), v in np.ndenumerate(values):
        if finite[i, j]:
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="white")
    best = best.set_index("model")
    for i, model in enumerate(table.index):
        if model in best.index:
            label = column_label(best.loc[model, "best_position"], best.loc[model, "best_point"])
            j = list(table.columns).index(label)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    fig.colorbar(im, ax=ax, label=group["metric"].iloc[0])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def accuracy_scatter(best: pd.DataFrame, title: str, path: Path) -> Path:
    """ImageNet top-1 vs best-point score per network, with a Theil-Sen line and Spearman's rho.

    Theil-Sen (median of pairwise slopes) rather than least squares, so that one outlying network cannot
    make a trend; rho (the statistic C1 tests) is in the legend.
    """
    b = best[best["is_default_weights"]].dropna(subset=["imagenet_top1", "value"])
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    ax.scatter(b["imagenet_top1"], b["value"], color="tab:blue")
    for _, row in b.iterrows():
        ax.annotate(row["network"], (row["imagenet_top1"], row["value"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if len(b) >= 3 and b["imagenet_top1"].nunique() > 1:
        slope, intercept, _, _ = stats.theilslopes(b["value"], b["imagenet_top1"])
        xs = np.array([b["imagenet_top1"].min(), b["imagenet_top1"].max()])
        ax.plot(xs, intercept + slope * xs, color="tab:red", lw=1, label=f"Theil-Sen fit (slope {slope:.3g})")
        rho = stats.spearmanr(b["imagenet_top1"], b["value"]).statistic
        ax.legend(title=f"Spearman rho = {rho:.2f}", fontsize=7, title_fontsize=7)
    ax.set_xlabel("ImageNet top-1 (%)" + (" [architecture V1; weights not ImageNet]"
                                          if b["top1_fallback"].any() else ""))
    ax.set_ylabel(f"{b['metric'].iloc[0] if len(b) else ''} (best point)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def depth_curves(group: pd.DataFrame, title: str, path: Path) -> Path:
    """Score vs relative depth, one panel per network family, one line per network."""
    g = group[group["is_default_weights"] & (group["n"] > 0)].dropna(subset=["relative_depth", "value"])
    families = sorted(g["family"].fillna("").unique()) or [""]
    cols = min(4, len(families))
    rows = int(np.ceil(len(families) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, fam in zip(axes.flat, families):
        for net, ng in g[g["family"].fillna("") == fam].groupby("network"):
            ng = ng.sort_values("relative_depth")
            ax.plot(ng["relative_depth"], ng["value"], marker="o", label=net)
        ax.set_title(fam or "?", fontsize=8)
        ax.set_xlabel("relative depth", fontsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def make_figures(cells: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    """All figures under `out_dir`: {"heatmaps": [...], "accuracy": [...], "depth": [...]}."""
    figs: dict[str, list[Path]] = {"heatmaps": [], "accuracy": [], "depth": []}
    best = best_points(cells)
    for key, g in groups(cells):
        name = group_name(key)
        if g["n"].sum() == 0:
            continue
        figs["heatmaps"].append(heatmap(g, name, out_dir / f"heatmap_{slug(name)}.png"))
        if not bool(key[4]):  # primary metric only
            continue
        gb = best[(best[["task", "dataset", "metric", "setting"]] == [key[0], key[1], key[2], key[5]]).all(axis=1)]
        figs["accuracy"].append(accuracy_scatter(gb, name, out_dir / f"accuracy_{slug(name)}.png"))
        figs["depth"].append(depth_curves(g, name, out_dir / f"depth_{slug(name)}.png"))
    return figs
