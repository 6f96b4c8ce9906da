"""Uncertainty of the study's ranking: a seed bootstrap of the average rank, and the budget a ranking needs.

Two questions a reviewer asks of any ranking (docs/ANALYSIS.md, "Uncertainty"):

1. *Would another set of seeds give the same order?* Where cells (benchmark x network x point) ran several
   seeds, `rank_intervals` resamples the seeds **within each cell** (with replacement, as many as the cell
   has), recomputes each cell's mean, each architecture's best point and rank per benchmark and the average
   rank exactly as `tables.average_ranks` does, and reports a percentile interval per architecture plus, for
   each pair of neighbours in the ranking, the share of resamples in which their order flips.
2. *How many epochs did the ranking need?* `budget` reads each trial's per-epoch history from MLflow and
   finds, per benchmark, the first epoch from which the ranking stays within Kendall tau 0.9 of the final one.

Seeded numpy resampling is used instead of `scipy.stats.bootstrap`: the statistic couples hundreds of
independent samples (one per cell) through a max and a rank, cells with a single seed must stay fixed (scipy
refuses samples with fewer than two observations), and the neighbour flip shares need the joint resamples
of all architectures, which one vectorised resampling matrix gives directly.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from scipy import stats

#: Bootstrap resamples of the seeds (the percentile interval's Monte-Carlo error is ~0.5 % at 2000).
N_BOOT = 2000
#: Neighbours are "distinguishable" when their order flips in at most this share of resamples.
FLIP_ALPHA = 0.05
#: The ranking "has settled" from the first epoch after which Kendall tau to the final ranking stays >= this.
TAU = 0.9


@dataclass
class _Group:
    """One ranked group (benchmark x metric x setting): seed values per cell, and which network each is."""
    benchmark: str
    networks: list[str]
    values: np.ndarray  # (cells, max seeds), direction-aligned, NaN-padded
    n: np.ndarray  # (cells,) finished seeds
    net_of: np.ndarray  # (cells,) index into networks
    point_of: np.ndarray  # (cells,) index of the point within its network


def ranked_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The finished seed-level rows `average_ranks` ranks: default weights, loss networks only, the primary
    metric of each benchmark (all its metrics when it names none), settings with the benchmark's fullest
    set of networks (ablations stay out). Adds a `benchmark` column ("task/dataset")."""
    d = df[(df["status"] == "FINISHED") & (df["metric"] != "") & df["value"].notna()
           & df["is_default_weights"] & ~df["is_baseline"].fillna(False).astype(bool)].copy()
    if d.empty:
        return d.assign(benchmark=pd.Series(dtype=str))
    d["benchmark"] = d["task"].astype(str) + "/" + d["dataset"].astype(str)
    has_primary = d.groupby("benchmark")["primary"].transform("any")
    d = d[d["primary"] | ~has_primary]
    size = d.groupby(["benchmark", "setting"])["network"].transform("nunique")
    return d[size == size.groupby(d["benchmark"]).transform("max")]


def _groups(rows: pd.DataFrame) -> list[_Group]:
    out = []
    for (bench, _metric, _setting), g in rows.groupby(["benchmark", "metric", "setting"], sort=True):
        cells = list(g.groupby(["network", "point"], sort=True)["aligned"])
        networks = sorted({net for (net, _), _ in cells})
        width = max(len(v) for _, v in cells)
        values = np.full((len(cells), width), np.nan)
        for i, (_, v) in enumerate(cells):
            values[i, :len(v)] = v.to_numpy(dtype=float)
        net_of = np.array([networks.index(net) for (net, _), _ in cells])
        point_of = np.array([int((net_of[:i] == net_of[i]).sum()) for i in range(len(cells))])
        out.append(_Group(bench, networks, values, np.array([len(v) for _, v in cells]), net_of, point_of))
    return out


def _resampled_means(g: _Group, rng: np.random.Generator | None, n_boot: int) -> np.ndarray:
    """(n_boot, cells) cell means, seeds drawn with replacement within each cell (rng None: the plain means)."""
    if rng is None:
        return np.nanmean(g.values, axis=1)[None, :]
    draws = rng.integers(0, g.n[:, None], size=(n_boot, len(g.n), g.values.shape[1]))
    picked = g.values[np.arange(len(g.n))[None, :, None], draws]
    used = np.arange(g.values.shape[1])[None, None, :] < g.n[None, :, None]
    return np.where(used, picked, 0.0).sum(axis=2) / g.n[None, :]


def _group_ranks(g: _Group, means: np.ndarray) -> np.ndarray:
    """(resamples, networks) rank of each network's best point (1 = best, ties averaged)."""
    best = np.full((means.shape[0], len(g.networks), int(g.point_of.max()) + 1), -np.inf)
    best[:, g.net_of, g.point_of] = means
    return stats.rankdata(-best.max(axis=2), axis=1, method="average")


def _average_ranks(groups: list[_Group], rng: np.random.Generator | None, n_boot: int,
                   networks: list[str]) -> np.ndarray:
    """(resamples, networks) average rank: mean over a benchmark's groups, then mean over benchmarks."""
    per_bench: dict[str, list[np.ndarray]] = {}
    for g in groups:
        r = _group_ranks(g, _resampled_means(g, rng, n_boot))
        full = np.full((r.shape[0], len(networks)), np.nan)
        full[:, [networks.index(n) for n in g.networks]] = r
        per_bench.setdefault(g.benchmark, []).append(full)
    with warnings.catch_warnings():  # "mean of empty slice": a network absent from a benchmark stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        bench = np.stack([np.nanmean(np.stack(v), axis=0) for v in per_bench.values()])
        return np.nanmean(bench, axis=0)


def rank_intervals(df: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = 0.95) -> pd.DataFrame:
    """Per architecture: average rank, its seed-bootstrap percentile interval, and its neighbour below.

    `df` is the tidy seed-level table (`runs.load_results`). Columns: network, avg_rank (as in the
    average-rank table), ci_low, ci_high, boot_sd, max_seeds (most seeds of any of its cells), next_network
    (the one ranked just after it), flip_share (share of resamples in which the two swap order, ties counted
    half) and distinguishable (flip_share <= FLIP_ALPHA; None when no cell has two seeds, since then there is
    no seed variation to resample and the interval is a single point, not a certainty).
    """
    cols = ["network", "avg_rank", "ci_low", "ci_high", "boot_sd", "max_seeds", "next_network", "flip_share",
            "distinguishable"]
    rows = ranked_rows(df)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    groups = _groups(rows)
    networks = sorted(set(rows["network"]))
    point = _average_ranks(groups, None, 1, networks)[0]
    several = any((g.n > 1).any() for g in groups)
    boot = _average_ranks(groups, np.random.default_rng(seed), n_boot, networks) if several else point[None, :]
    tail = (1 - level) / 2 * 100
    out = pd.DataFrame({"network": networks, "avg_rank": point,
                        "ci_low": np.nanpercentile(boot, tail, axis=0),
                        "ci_high": np.nanpercentile(boot, 100 - tail, axis=0),
                        "boot_sd": boot.std(axis=0) if several else np.nan,
                        "max_seeds": rows.groupby(["network", "point"])["seed"].nunique()
                        .groupby(level="network").max().reindex(networks).to_numpy()})
    order = np.lexsort((np.array(networks), point))
    nxt = np.r_[order[1:], -1]
    flips = [(np.mean(boot[:, j] < boot[:, i]) + 0.5 * np.mean(boot[:, j] == boot[:, i])) if j >= 0 and several
             else math.nan for i, j in zip(order, nxt)]
    out = out.iloc[order].reset_index(drop=True)
    out["next_network"] = [networks[j] if j >= 0 else "" for j in nxt]
    out["flip_share"] = flips
    out["distinguishable"] = [None if math.isnan(f) else bool(f <= FLIP_ALPHA) for f in flips]
    return out[cols]


# --------------------------------------------------------------------------------------- budget (histories)

def _history(client: MlflowClient, run_id: str, metric: str) -> dict[int, float]:
    """step -> value of one metric of one run (the newest value where a step was logged twice)."""
    hist = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    return {int(m.step): float(m.value) for m in hist}


def _epoch_metric(client: MlflowClient, trials: pd.DataFrame) -> tuple[str, str, str]:
    """(metric, direction, source) whose per-epoch history ranks this benchmark: the primary metric when it
    has more than one logged step, else the per-epoch selection metric the task declared (the run's tags
    `dpl.epoch_metric` / `dpl.epoch_metric_mode`, its EPOCH_METRIC) when logged; ("", "", why) if none.
    Probed on one run, so a benchmark costs one extra history read at most."""
    first = trials.iloc[0]
    primary, direction = str(first["metric"]), str(first["direction"])
    if len(_history(client, first["run_id"], primary)) > 1:
        return primary, direction, "primary metric"
    metric, direction = str(first.get("epoch_metric") or ""), str(first.get("epoch_metric_mode") or "")
    if metric and len(_history(client, first["run_id"], metric)) > 1:
        return metric, direction, f"{metric} (the primary metric {primary} is logged once)"
    return "", "", f"no per-epoch history of {primary}" + (f" or {metric}" if metric else "")


def read_histories(client: MlflowClient, df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch values of the ranked trials: one history metric per benchmark (see `_epoch_metric`).

    Columns: benchmark, setting, network, point, seed, run_id, metric, epoch, aligned (sign-flipped for
    "min" metrics), source. One `get_metric_history` call per finished trial (plus one probe per benchmark).
    """
    cols = ["benchmark", "setting", "network", "point", "seed", "run_id", "metric", "epoch", "aligned", "source"]
    rows = ranked_rows(df)
    out: list[dict] = []
    for bench, g in rows.groupby("benchmark", sort=True):
        trials = g.drop_duplicates("run_id")
        trials = trials[trials["metric"] == trials["metric"].iloc[0]]  # one ranked metric per benchmark
        metric, direction, source = _epoch_metric(client, trials)
        if not metric:
            out.append({"benchmark": bench, "source": source})
            continue
        sign = -1.0 if direction == "min" else 1.0
        for t in trials.itertuples(index=False):
            for epoch, value in _history(client, t.run_id, metric).items():
                out.append({"benchmark": bench, "setting": t.setting, "network": t.network, "point": t.point,
                            "seed": t.seed, "run_id": t.run_id, "metric": metric, "epoch": epoch,
                            "aligned": sign * value, "source": source})
    return pd.DataFrame(out, columns=cols)


def _ranking_at(h: pd.DataFrame, epoch: int) -> pd.Series:
    """Per network: its best point's seed-mean at `epoch`, each trial at its newest step <= epoch (a trial
    that stopped early keeps its last value); NaN for a network with a cell not yet logged."""
    upto = h[h["epoch"] <= epoch].sort_values("epoch").groupby("run_id").tail(1)
    cells = upto.groupby(["network", "point"])["aligned"].mean()
    expected = h.drop_duplicates(["network", "point"]).set_index(["network", "point"]).index
    cells = cells.reindex(expected)
    return cells.groupby(level="network").max(skipna=False)


def budget(hist: pd.DataFrame, tau: float = TAU) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, curve): per benchmark (and setting), the epoch from which the ranking stays within Kendall
    tau `tau` (scipy.stats.kendalltau, tau-b) of the final epoch's ranking, and tau at every epoch.

    summary columns: benchmark, setting, metric, source, n_networks, final_epoch, settle_epoch, share
    (settle_epoch / final_epoch: the budget share the ranking needed). A benchmark without per-epoch history
    gets one row saying so. A tau that is undefined (a network not yet logged, or all scores equal) counts as
    not settled.
    """
    s_cols = ["benchmark", "setting", "metric", "source", "n_networks", "final_epoch", "settle_epoch", "share"]
    summary, curve = [], []
    if hist.empty:
        return pd.DataFrame(columns=s_cols), pd.DataFrame(columns=["benchmark", "setting", "epoch", "tau"])
    for bench, b in hist.groupby("benchmark", sort=True):
        if b["metric"].isna().all():
            summary.append({"benchmark": bench, "source": b["source"].iloc[0]})
            continue
        for setting, h in b.dropna(subset=["metric"]).groupby("setting", sort=True):
            epochs = sorted(int(e) for e in h["epoch"].unique())
            final = _ranking_at(h, epochs[-1])
            taus = []
            for e in epochs:
                now = _ranking_at(h, e)
                ranked = now.notna().all() and len(now) >= 2  # one network has no ranking to settle (tau is NaN)
                t = stats.kendalltau(now.to_numpy(), final.to_numpy()).statistic if ranked else math.nan
                taus.append(t)
                curve.append({"benchmark": bench, "setting": setting, "epoch": e, "tau": t})
            settle = epochs[-1]
            for e, t in zip(reversed(epochs), reversed(taus)):
                if not t >= tau:  # NaN counts as not settled
                    break
                settle = e
            summary.append({"benchmark": bench, "setting": setting, "metric": h["metric"].iloc[0],
                            "source": h["source"].iloc[0], "n_networks": len(final), "final_epoch": epochs[-1],
                            "settle_epoch": settle, "share": settle / epochs[-1]})
    return pd.DataFrame(summary, columns=s_cols), pd.DataFrame(curve)
