"""The paper's tables: network x extraction point per task/metric, best point, ranks and average ranks.

Decisions where the paper is silent (see docs/ANALYSIS.md): a network is ranked by its best point;
ties share the average rank; a model's average rank is the mean over benchmarks (task/dataset) of its mean
rank over that benchmark's metrics, so a benchmark with ten metrics does not outweigh one with three.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import GROUP_KEYS

_BEST_KEYS = GROUP_KEYS + ["model", "network", "weights_set", "is_default_weights", "family", "has_batch_norm",
                          "is_baseline"]


def column_label(position: float, point: str) -> str:
    """Table column of a point: L1..L4 for the paper's positions, the node name for any other point."""
    return f"L{int(position)}" if isinstance(position, (int, float)) and not math.isnan(position) else str(point)


def groups(cells: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The (task, dataset, metric, direction, primary, setting) groups of `cells`, in a stable order."""
    if cells.empty:
        return []
    return [(k, g) for k, g in cells.groupby(GROUP_KEYS, sort=True, dropna=False)]


def group_name(key: tuple) -> str:
    """A human label of a group key, e.g. "superres/coco test/set5/psnr (variant=lin)"."""
    task, dataset, metric, _direction, _primary, setting = key
    tail = "" if setting == "all" else f" ({setting})"
    return f"{task}/{dataset} {metric}{tail}"


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def score_table(group: pd.DataFrame, best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Network (model) x point table of one group, with `best` (direction-aware) and `best_point` columns.

    `best` = `best_points(group)`, when the caller already has it."""
    g = group.assign(column=[column_label(p, q) for p, q in zip(group["position"], group["point"])])
    table = g.pivot_table(index="model", columns="column", values="value", aggfunc="first", dropna=False)
    table = table.reindex(columns=sorted(table.columns, key=lambda c: (not re.fullmatch(r"L\d", c), c)))
    best = (best_points(group) if best is None else best).set_index("model")
    table["best"] = best["value"]
    table["best_point"] = best["best_point"]
    order = g.groupby("model")["imagenet_top1"].first().sort_values(kind="stable").index
    return table.reindex(order)


def status_table(group: pd.DataFrame, numeric: pd.DataFrame | None = None) -> pd.DataFrame:
    """Like `score_table` but as display strings: formatted means (± std over seeds), or the run status."""
    g = group.assign(column=[column_label(p, q) for p, q in zip(group["position"], group["point"])])

    def show(row: pd.Series) -> str:
        if row["n"] == 0 or math.isnan(row["value"]):
            return str(row["statuses"]).split("x")[0] or "missing"
        text = f"{row['value']:.4g}"
        return text + (f" ± {row['std']:.2g} (n={row['n']})" if row["n"] > 1 else "")

    g["shown"] = g.apply(show, axis=1)
    table = g.pivot_table(index="model", columns="column", values="shown", aggfunc="first")
    numeric = score_table(group) if numeric is None else numeric
    table = table.reindex(index=numeric.index, columns=[c for c in numeric.columns if c not in ("best", "best_point")])
    table = table.fillna("missing")
    table["best"] = [f"{v:.4g} ({p})" if isinstance(p, str) else "n/a"
                     for v, p in zip(numeric["best"], numeric["best_point"])]
    return table


@dataclass
class Shown:
    """A table as a person reads it: display strings (first column = row label), which cells are bold, and
    an optional tooltip per cell. Both renderers (HTML, Markdown) take this, so they bold the same cells."""

    frame: pd.DataFrame
    bold: pd.DataFrame | None = None
    titles: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.frame = self.frame.reset_index(drop=True)
        idx, cols = self.frame.index, self.frame.columns
        self.bold = (pd.DataFrame(False, index=idx, columns=cols) if self.bold is None
                     else self.bold.reset_index(drop=True).reindex(index=idx, columns=cols).fillna(False).astype(bool))
        self.titles = (pd.DataFrame("", index=idx, columns=cols) if self.titles is None
                       else self.titles.reset_index(drop=True).reindex(index=idx, columns=cols).fillna("").astype(str))

    @classmethod
    def plain(cls, df: pd.DataFrame, digits: int = 4) -> "Shown":
        """Any DataFrame, numbers formatted (NaN = "n/a"), nothing bold."""
        return cls(df.apply(lambda col: col.map(lambda v: fmt_cell(v, digits))) if not df.empty else df.astype(str))

    @property
    def empty(self) -> bool:
        return self.frame.empty


def fmt_cell(v: object, digits: int = 4) -> str:
    """One table cell as text: floats to `digits` significant digits, NaN/None as "n/a"."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}"
    return str(v)


#: A table cell no trial was planned for (the pixel baseline has no L1-L4; a network has no "none" point).
NOT_PLANNED = "–"


def score_display(group: pd.DataFrame, numeric: pd.DataFrame | None = None) -> Shown:
    """A group's network x point table for people: first column `network`, then L1..L4 (other points by node
    name), then `best point`; each network's best cell bold (direction-aware, from `best_points`); each
    cell's tooltip names its extraction point (L1 = features.4 for vgg16, ...). Failed or missing cells show
    their status, never a blank; cells no trial was planned for show NOT_PLANNED."""
    best = best_points(group)
    numeric = score_table(group, best) if numeric is None else numeric
    shown = status_table(group, numeric)
    cols = [c for c in numeric.columns if c not in ("best", "best_point")]
    g = group.assign(column=[column_label(p, q) for p, q in zip(group["position"], group["point"])])
    points = g.pivot_table(index="model", columns="column", values="point", aggfunc="first")
    points = points.reindex(index=shown.index, columns=cols)
    best = best.set_index("model")
    bold = pd.DataFrame(False, index=shown.index, columns=["network", *cols, "best point"])
    best_col = []
    for model in shown.index:
        if model in best.index:
            label = column_label(best.loc[model, "best_position"], best.loc[model, "best_point"])
            if label in bold.columns:
                bold.loc[model, label] = True
            best_col.append(label if label == best.loc[model, "best_point"]
                            else f"{label} = {best.loc[model, 'best_point']}")
        else:
            best_col.append("n/a")
    frame = shown[cols].copy()
    planned = g.pivot_table(index="model", columns="column", values="n", aggfunc="size").reindex(
        index=shown.index, columns=cols)
    frame = frame.mask(planned.isna(), NOT_PLANNED)  # no run and no plan entry: e.g. the pixel baseline at L1
    frame.insert(0, "network", shown.index)
    frame["best point"] = best_col
    frame.columns.name = None
    titles = points.fillna("").astype(str).copy()
    titles.insert(0, "network", "")
    titles["best point"] = ""
    return Shown(frame, bold.reset_index(drop=True), titles.reset_index(drop=True))


#: Display headers of the average-rank table (the CSV keeps the column names).
_AVG_HEADERS = {"imagenet_top1": "ImageNet top-1 (%)", "avg_rank": "average rank",
                "avg_rank_all_metrics": "average rank (all metrics)", "n_benchmarks": "benchmarks"}


def average_rank_display(avg: pd.DataFrame) -> Shown:
    """The average-rank table for people: readable headers, the best (lowest) rank of each benchmark column
    and of the average bold."""
    rank_cols = [c for c in avg.columns if c not in ("network", "imagenet_top1", "n_benchmarks")]
    bold = pd.DataFrame(False, index=avg.index, columns=avg.columns)
    for c in rank_cols:
        values = pd.to_numeric(avg[c], errors="coerce")
        if values.notna().any():
            bold[c] = values == values.min()
    shown = Shown.plain(avg)
    shown.bold = bold.reset_index(drop=True)
    shown.frame.columns = shown.bold.columns = shown.titles.columns = [_AVG_HEADERS.get(c, c) for c in avg.columns]
    return shown


def best_points(cells: pd.DataFrame) -> pd.DataFrame:
    """Per group and model: the best point (max of the direction-aligned score) and its attributes.

    Columns: group keys, model, network, value, aligned, best_point, best_position, best_depth,
    n_points (finished points), max_position (the deepest paper position that finished), is_last (best
    point is position 4 with all four positions finished), imagenet_top1, top1_fallback. Ties go to the
    earlier point, which is conservative for the "later is better" test.
    """
    done = cells[cells["n"] > 0].dropna(subset=["aligned"])
    if done.empty:
        return pd.DataFrame(columns=_BEST_KEYS + ["value", "aligned", "best_point", "best_position", "is_last"])
    done = done.assign(_gid=done.groupby(_BEST_KEYS, dropna=False, sort=False).ngroup(), _neg=-done["aligned"])
    stats = done.groupby("_gid").agg(n_points=("point", "size"), n_positions=("position", "nunique"),
                                     max_position=("position", "max"))
    best = done.sort_values(["_gid", "_neg", "relative_depth", "position"], kind="stable").drop_duplicates("_gid")
    best = best.join(stats, on="_gid")[_BEST_KEYS + [
        "value", "aligned", "point", "position", "relative_depth", "imagenet_top1", "top1_fallback",
        "n_points", "n_positions", "max_position"]]
    best = best.rename(columns={"point": "best_point", "position": "best_position", "relative_depth": "best_depth"})
    best["is_last"] = (best["best_position"] == 4) & (best["n_positions"] == 4)
    return best.sort_values(_BEST_KEYS).reset_index(drop=True)


def rank_table(best: pd.DataFrame) -> pd.DataFrame:
    """Rank the models of each group by their best point (1 = best, direction-aware; ties averaged).

    Only the default weights of each architecture are ranked, so that V2 weights do not push V1 networks
    down (the within-architecture weight comparison is the recipe claim in `claims`), and pixel-loss
    baselines are never ranked among the loss networks (`baseline_comparison` sets them beside the ranking).
    """
    b = best[best["is_default_weights"] & ~best["is_baseline"].fillna(False).astype(bool)].copy()
    b["rank"] = b.groupby(GROUP_KEYS, dropna=False)["aligned"].rank(ascending=False, method="average")
    return b


def average_ranks(ranks: pd.DataFrame) -> pd.DataFrame:
    """The study's one cross-benchmark ranking: per architecture, its rank on each benchmark and their mean.

    A benchmark is a (task, dataset). Its rank of a network is the rank of the network's best point on the
    benchmark's primary metric (all its metrics when it names none), averaged over the settings that vary
    within that benchmark (e.g. similarity variants), so every benchmark counts once; a setting that ranked
    fewer networks than the benchmark's fullest one (an ablation, e.g. vgg16_bn alone in train mode) is left
    out of this table (its ranks are in `ranks`). Columns: network,
    imagenet_top1, one column per benchmark, avg_rank (mean over benchmarks: the headline, sorted on),
    avg_rank_all_metrics (the same with each benchmark's mean rank over all its metrics), n_benchmarks.
    """
    cols = ["network", "imagenet_top1", "avg_rank", "avg_rank_all_metrics", "n_benchmarks"]
    if ranks.empty:
        return pd.DataFrame(columns=cols)
    r = ranks.assign(benchmark=ranks["task"].astype(str) + "/" + ranks["dataset"].astype(str))
    size = r.groupby(["benchmark", "setting"])["network"].transform("nunique")
    r = r[size == size.groupby(r["benchmark"]).transform("max")]  # ablations (fewer networks) stay out
    has_primary = r.groupby("benchmark")["primary"].transform("any")
    prim = r[r["primary"] | ~has_primary]
    per = prim.pivot_table(index="network", columns="benchmark", values="rank", aggfunc="mean")
    every = r.pivot_table(index="network", columns="benchmark", values="rank", aggfunc="mean")
    out = per.copy()
    out.columns.name = None
    out["avg_rank"] = per.mean(axis=1)
    out["avg_rank_all_metrics"] = every.mean(axis=1)
    out["n_benchmarks"] = per.notna().sum(axis=1)
    out.insert(0, "imagenet_top1", r.groupby("network")["imagenet_top1"].first())
    return out.reset_index().sort_values(["avg_rank", "network"]).reset_index(drop=True)


def to_markdown(df: pd.DataFrame | Shown, index: bool = False, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` dependency); NaN shows as "n/a"; a `Shown` table's
    bold cells as **x**."""
    if isinstance(df, Shown):
        d, bold = df.frame, df.bold.to_numpy()
    else:
        d = df.reset_index() if index else df
        bold = np.zeros(d.shape, bool)

    def fmt(v: object, strong: bool) -> str:
        text = fmt_cell(v, digits).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")
        return f"**{text}**" if strong and text else text

    lines = ["| " + " | ".join(map(str, d.columns)) + " |", "|" + "---|" * len(d.columns)]
    lines += ["| " + " | ".join(fmt(v, b) for v, b in zip(row, flags)) + " |"
              for row, flags in zip(d.itertuples(index=False), bold)]
    return "\n".join(lines)


def write_tables(cells: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write every group's table, the ranks and the average ranks as CSV and Markdown under `out_dir`.

    Returns {name: csv path}; the Markdown file sits next to each CSV with the same stem.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def save(name: str, numeric: pd.DataFrame, shown: pd.DataFrame | Shown, index: bool) -> None:
        path = out_dir / f"{slug(name)}.csv"
        numeric.to_csv(path, index=index)
        path.with_suffix(".md").write_text(to_markdown(shown, index=index) + "\n")
        written[name] = path

    for key, g in groups(cells):
        numeric = score_table(g)
        save(f"table_{group_name(key)}", numeric, score_display(g, numeric), index=True)
    ranks = rank_table(best_points(cells))
    rank_cols = GROUP_KEYS + ["network", "imagenet_top1", "value", "best_point", "rank"]
    save("ranks", ranks[rank_cols], ranks[rank_cols], index=False)
    avg = average_ranks(ranks)
    save("average_ranks", avg, avg, index=False)
    return written
