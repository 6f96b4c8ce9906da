"""Statistical tests of the transfer-learning conventions the paper challenges (scipy.stats).

C1 "better ImageNet accuracy => better loss network", C2 "later layers => better", and the batch-norm
findings. Every test returns `TestResult`s stating the hypothesis, statistic, n, p and a plain verdict;
when there are too few networks or pairs it says "insufficient data: n=..." instead of a number.
Scores are direction-aligned (`aligned`: "min" metrics sign-flipped) so that higher is always better.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import GROUP_KEYS
from analysis.tables import average_ranks, best_points, rank_table

ALPHA = 0.05
MIN_CORR_N = 4
N_BOOT = 2000
CORRELATIONS = ("spearman", "kendall", "pearson")
_PAIR_KEYS = ["task", "dataset", "metric", "direction", "primary", "variant", "weights_kind",
              "normalisation", "transform_input"]


@dataclass
class TestResult:
    """One line of conventions.json."""

    test: str
    task: str
    dataset: str
    metric: str
    scope: str
    statistic: str
    value: float | None
    p_value: float | None
    n: int
    verdict: str
    hypothesis: str
    setting: str = "all"
    ci_low: float | None = None
    ci_high: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("value", "p_value", "ci_low", "ci_high"):
            if d[k] is not None and (isinstance(d[k], float) and math.isnan(d[k])):
                d[k] = None
            elif d[k] is not None:
                d[k] = float(d[k])
        return d


def _key(key: tuple) -> dict:
    task, dataset, metric, _direction, _primary, setting = key
    return {"task": task, "dataset": dataset, "metric": metric, "setting": setting}


def _insufficient(n: int, why: str = "") -> str:
    return f"insufficient data: n={n}" + (f" ({why})" if why else "")


# ---------------------------------------------------------------------------------------------- correlations
def batch_correlation(x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Row-wise correlation of (B, n) arrays: Pearson, Spearman (Pearson of average ranks) or Kendall tau-b.

    Vectorised so that 2000 bootstrap resamples cost milliseconds; equals scipy.stats on every row
    (checked in the tests). Rows without variation give NaN, as scipy does.
    """
    x, y = np.atleast_2d(x).astype(float), np.atleast_2d(y).astype(float)
    if kind == "kendall":
        iu = np.triu_indices(x.shape[1], k=1)
        dx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
        dy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
        s = (dx * dy).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return s / np.sqrt((dx != 0).sum(axis=1) * (dy != 0).sum(axis=1).astype(float))
    if kind == "spearman":
        x, y = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt((xc**2).sum(axis=1) * (yc**2).sum(axis=1))
    return np.where(np.isfinite(r), r, np.nan)


def bootstrap_ci(x: np.ndarray, y: np.ndarray, kind: str, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of a correlation, resampling (x, y) pairs (networks) with replacement.

    Resamples without variation (all the same network) are dropped; seeded, so the report is reproducible.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    r = batch_correlation(np.asarray(x)[idx], np.asarray(y)[idx], kind)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(r, [tail, 100 - tail])
    return float(lo), float(hi)


#: Up to this n every permutation is enumerated (7! = 5040): the p-value is exact.
EXACT_MAX_N = 7
#: Up to this n a seeded permutation test (N_PERM resamples) replaces the large-sample approximation, which
#: is poor there (for n = 4 and rho = 1 the t approximation gives p = 0; the exact p is 1/12).
PERM_MAX_N = 10
N_PERM = 9999


def p_method(n: int) -> str:
    """How `correlate` gets its p-value for n pairs (recorded in each result's extra)."""
    if n <= EXACT_MAX_N:
        return f"exact permutation ({math.factorial(n)} orderings)"
    return f"permutation ({N_PERM} resamples)" if n <= PERM_MAX_N else "scipy large-sample"


def correlate(x: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> tuple[float, float]:
    """scipy's statistic and a two-sided p-value that is exact or permutation-based for small n.

    n <= EXACT_MAX_N: every pairing enumerated (scipy.stats.permutation_test enumerates when n! <= its
    n_resamples); n <= PERM_MAX_N: N_PERM seeded random pairings; larger n: scipy's own p (Kendall: exact
    when there are no ties, Spearman/Pearson: t distribution). Spearman is permuted on the ranks, which is
    the same test and ~10x faster.
    """
    fn = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}[kind]
    res = fn(x, y)
    value = float(res.statistic)
    n = len(x)
    if n > PERM_MAX_N or not np.isfinite(value):
        return value, float(res.pvalue)
    a, b, k = (stats.rankdata(x), stats.rankdata(y), "pearson") if kind == "spearman" else (x, y, kind)

    a = np.asarray(a, float)

    def statistic(v: np.ndarray, axis: int = -1) -> np.ndarray:  # y reordered against a fixed x
        r = batch_correlation(np.broadcast_to(a, np.shape(v)), v, k)
        return r[0] if np.ndim(v) == 1 else r

    perm = stats.permutation_test((np.asarray(b, float),), statistic,
                                  permutation_type="pairings", vectorized=True, alternative="two-sided",
                                  n_resamples=N_PERM if n > EXACT_MAX_N else math.factorial(n), rng=seed)
    return value, float(perm.pvalue)


def _corr_verdict(value: float, p: float, positive: str, negative: str) -> str:
    if math.isnan(value):
        return "no variation: correlation undefined"
    if p < ALPHA:
        return positive if value > 0 else negative
    return f"not supported: no significant correlation (p={p:.3g})"


def _corr_results(test: str, hypothesis: str, base: dict, scope: str, x: np.ndarray, y: np.ndarray,
                  positive: str, negative: str, seed: int, n_boot: int, extra: dict | None = None) -> list[TestResult]:
    n = len(x)
    out = []
    for kind in CORRELATIONS:
        if n < MIN_CORR_N:
            out.append(TestResult(test, **base, scope=scope, statistic=kind, value=None, p_value=None, n=n,
                                  verdict=_insufficient(n), hypothesis=hypothesis, extra=extra or {}))
            continue
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(TestResult(test, **base, scope=scope, statistic=kind, value=None, p_value=None, n=n,
                                  verdict="no variation: correlation undefined", hypothesis=hypothesis,
                                  extra=extra or {}))
            continue
        value, p = correlate(x, y, kind, seed=seed)
        lo, hi = bootstrap_ci(x, y, kind, n_boot=n_boot, seed=seed)
        out.append(TestResult(test, **base, scope=scope, statistic=kind, value=value, p_value=p, n=n,
                              verdict=_corr_verdict(value, p, positive, negative), hypothesis=hypothesis,
                              ci_low=lo, ci_high=hi, extra={**(extra or {}), "p_method": p_method(n)}))
    return out


C1_HYPOTHESIS = "networks with higher ImageNet top-1 give better scores (positive correlation over networks)"
C1_YES = "supported: significant positive correlation of ImageNet top-1 with score"
C1_NO = "contradicted: significant negative correlation of ImageNet top-1 with score"


def imagenet_correlation(cells: pd.DataFrame, best: pd.DataFrame, seed: int = 0,
                         n_boot: int = N_BOOT, per_position: bool = True) -> list[TestResult]:
    """C1 per group: top-1 vs score over networks (default weights), at the best point and each position
    (`per_position=False` skips the latter, for simulations), and over the average rank."""
    out: list[TestResult] = []
    best = best[best["is_default_weights"]]
    for key, g in best.groupby(GROUP_KEYS, sort=True, dropna=False):
        base = _key(key)
        extra = {"top1_fallback": bool(g["top1_fallback"].any())}
        g = g.dropna(subset=["imagenet_top1"])
        out += _corr_results("C1 imagenet_accuracy", C1_HYPOTHESIS, base, "best point",
                             g["imagenet_top1"].to_numpy(), g["aligned"].to_numpy(), C1_YES, C1_NO, seed, n_boot, extra)
        if not per_position:
            continue
        cg = cells[(cells[GROUP_KEYS] == pd.Series(key, index=GROUP_KEYS)).all(axis=1)]
        cg = cg[cg["is_default_weights"] & (cg["n"] > 0)].dropna(subset=["position", "imagenet_top1", "aligned"])
        for pos, pg in cg.groupby("position", sort=True):
            out += _corr_results("C1 imagenet_accuracy", C1_HYPOTHESIS, base, f"position {int(pos)}",
                                 pg["imagenet_top1"].to_numpy(), pg["aligned"].to_numpy(), C1_YES, C1_NO, seed,
                                 n_boot, extra)
    g = average_ranks(rank_table(best)).dropna(subset=["imagenet_top1", "avg_rank"])
    if not g.empty:
        base = {"task": "all", "dataset": "all", "metric": "average rank", "setting": "all"}
        out += [r for r in _corr_results("C1 imagenet_accuracy", C1_HYPOTHESIS, base, "average rank",
                                         g["imagenet_top1"].to_numpy(), -g["avg_rank"].to_numpy(), C1_YES, C1_NO,
                                         seed, n_boot) if r.statistic == "spearman"]
    return out


# ------------------------------------------------------------------------------------------------- C2 depth
C2_HYPOTHESIS = "the last extraction point (position 4) is the best one more often than chance (1/4)"


def _binom_last(base: dict, scope: str, flags: pd.Series) -> TestResult:
    n, k = int(flags.size), int(flags.sum())
    if n < 1:
        return TestResult("C2 last_point_best", **base, scope=scope, statistic="share_last_best", value=None,
                          p_value=None, n=0, verdict=_insufficient(0, "no network with all 4 positions"),
                          hypothesis=C2_HYPOTHESIS)
    p = float(stats.binomtest(k, n, 0.25, alternative="greater").pvalue)
    verdict = (f"supported: last point best in {k}/{n} cells" if p < ALPHA
               else f"not supported: last point best in {k}/{n} cells (p={p:.3g})")
    return TestResult("C2 last_point_best", **base, scope=scope, statistic="share_last_best", value=k / n,
                      p_value=p, n=n, verdict=verdict, hypothesis=C2_HYPOTHESIS, extra={"last_best": k})


def last_point_test(best: pd.DataFrame) -> list[TestResult]:
    """C2 share test per group, and pooled once over the primary metric of every benchmark and setting.

    Only networks with all four paper positions finished count (otherwise "last" is undefined). The
    pooled test uses primary metrics only, because a benchmark's metrics are not independent observations.
    """
    b = best[best["is_default_weights"] & (best["n_positions"] == 4)]
    out = [_binom_last(_key(k), "per network", g["is_last"]) for k, g in b.groupby(GROUP_KEYS, sort=True, dropna=False)]
    if not best.empty:
        out.append(_binom_last({"task": "all", "dataset": "all", "metric": "primary", "setting": "all"},
                               "pooled over networks and benchmarks", b[b["primary"]]["is_last"]))
    return out


D_HYPOTHESIS = "deeper extraction points give better scores (positive rank correlation of relative depth with score)"


def depth_correlation(cells: pd.DataFrame) -> list[TestResult]:
    """C2 as a correlation: Spearman of relative depth vs aligned score, per network and pooled per group.

    Per network n is the number of points (4: never significant alone, reported as a description); the
    pooled test mixes networks (n = all points of the group); "per-network rhos" tests the per-network
    coefficients against 0 with a Wilcoxon signed-rank test, which is free of between-network differences.
    """
    out: list[TestResult] = []
    c = cells[cells["is_default_weights"] & (cells["n"] > 0)].dropna(subset=["relative_depth", "aligned"])
    yes, no = "supported: deeper points score better", "contradicted: deeper points score worse"
    for key, g in c.groupby(GROUP_KEYS, sort=True, dropna=False):
        base = _key(key)
        rhos = []
        for net, ng in g.groupby("network", sort=True):
            n = len(ng)
            if n < MIN_CORR_N:
                out.append(TestResult("C2 depth_correlation", **base, scope=f"network {net}", statistic="spearman",
                                      value=None, p_value=None, n=n, verdict=_insufficient(n), hypothesis=D_HYPOTHESIS))
                continue
            rho, p = (math.nan, math.nan) if np.ptp(ng["aligned"]) == 0 else correlate(
                ng["relative_depth"].to_numpy(), ng["aligned"].to_numpy(), "spearman")
            rhos.append(rho)
            out.append(TestResult("C2 depth_correlation", **base, scope=f"network {net}", statistic="spearman",
                                  value=rho, p_value=p, n=n, verdict=_corr_verdict(rho, p, yes, no),
                                  hypothesis=D_HYPOTHESIS, extra={"p_method": p_method(n)}))
        x, y = g["relative_depth"].to_numpy(), g["aligned"].to_numpy()
        if len(x) < MIN_CORR_N or np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(TestResult("C2 depth_correlation", **base, scope="pooled", statistic="spearman", value=None,
                                  p_value=None, n=len(x), verdict=_insufficient(len(x)), hypothesis=D_HYPOTHESIS))
        else:
            rho, p = correlate(x, y, "spearman")
            out.append(TestResult("C2 depth_correlation", **base, scope="pooled", statistic="spearman", value=rho,
                                  p_value=p, n=len(x), verdict=_corr_verdict(rho, p, yes, no), hypothesis=D_HYPOTHESIS,
                                  extra={"p_method": p_method(len(x))}))
        out.append(_signed_rank("C2 depth_correlation", base, "per-network rhos", np.array(rhos, float),
                                D_HYPOTHESIS, yes, no, statistic="median_rho", min_n=MIN_CORR_N))
    return out


# ------------------------------------------------------------------------------------------------ batch norm
def _signed_rank(test: str, base: dict, scope: str, d: np.ndarray, hyp: str, yes: str, no: str,
                 statistic: str = "median_difference", min_n: int = 1, extra: dict | None = None) -> TestResult:
    """Wilcoxon signed-rank (two-sided) on differences `d`; the value is their median, wins are counted."""
    d = d[np.isfinite(d)]
    n = int(d.size)
    wins = {"wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()), **(extra or {})}
    if n < min_n:
        return TestResult(test, **base, scope=scope, statistic=statistic, value=None, p_value=None, n=n,
                          verdict=_insufficient(n), hypothesis=hyp, extra=wins)
    if np.all(d == 0):
        return TestResult(test, **base, scope=scope, statistic=statistic, value=0.0, p_value=1.0, n=n,
                          verdict="no difference in any pair", hypothesis=hyp, extra=wins)
    p = float(stats.wilcoxon(d).pvalue)
    med = float(np.median(d))
    tally = f"{wins['wins']} wins / {wins['losses']} losses"
    verdict = ((yes if med > 0 else no) + f" ({tally})" if p < ALPHA
               else f"no significant difference ({tally}, p={p:.3g})")
    return TestResult(test, **base, scope=scope, statistic=statistic, value=med, p_value=p, n=n, verdict=verdict,
                      hypothesis=hyp, extra=wins)


def _paired(cells: pd.DataFrame, column: str, a: str, b: str, keys: list[str]) -> pd.DataFrame:
    """Rows where both `column == a` and `column == b` exist, matched on `keys`: d = aligned(a) - aligned(b),
    plus `z`, d divided by the group's score spread, so that pooled tests can mix metrics."""
    c = cells[(cells["n"] > 0)].dropna(subset=["aligned"])
    gk = [k for k in GROUP_KEYS if k in keys]
    spread = c.groupby(gk, dropna=False)["aligned"].std().rename("spread").reset_index()
    wide = c[c[column].isin([a, b])].pivot_table(index=keys, columns=column, values="aligned", aggfunc="mean")
    if a not in wide or b not in wide:
        return pd.DataFrame(columns=keys + ["d", "z"])
    wide = wide.dropna(subset=[a, b]).reset_index()
    wide["d"] = wide[a] - wide[b]
    wide = wide.merge(spread, on=gk, how="left")
    wide["z"] = wide["d"] / wide["spread"].where(wide["spread"] > 0)
    return wide


def batchnorm_test(cells: pd.DataFrame) -> list[TestResult]:
    """vgg16 vs vgg16_bn paired over points: per group (raw differences) and pooled over all benchmarks'
    primary metrics (differences scaled by each group's score spread)."""
    hyp = "vgg16 (no batch norm) scores differently from vgg16_bn at the same point position"
    yes, no = "vgg16 without batch norm is better", "vgg16_bn is better"
    c = cells[cells["is_default_weights"]].dropna(subset=["position"])
    pairs = _paired(c, "network", "vgg16", "vgg16_bn", GROUP_KEYS + ["position"])
    if pairs.empty:
        return [_signed_rank("batchnorm vgg16_vs_vgg16_bn", {"task": "all", "dataset": "all", "metric": "primary",
                                                             "setting": "all"}, "pooled", np.array([]), hyp, yes, no)]
    out = [_signed_rank("batchnorm vgg16_vs_vgg16_bn", _key(k), "paired over points", g["d"].to_numpy(), hyp, yes, no)
           for k, g in pairs.groupby(GROUP_KEYS, sort=True, dropna=False)]
    out.append(_signed_rank("batchnorm vgg16_vs_vgg16_bn",
                            {"task": "all", "dataset": "all", "metric": "primary", "setting": "all"},
                            "pooled over points and benchmarks (scaled)", pairs[pairs["primary"]]["z"].to_numpy(),
                            hyp, yes, no, statistic="median_scaled_difference"))
    return out


def mode_test(cells: pd.DataFrame) -> list[TestResult]:
    """Loss network in eval vs train mode (BatchNorm batch statistics), paired on everything else."""
    hyp = "the loss network's mode (eval vs train BatchNorm) changes the score"
    yes, no = "eval mode is better", "train mode is better"
    keys = _PAIR_KEYS + ["model", "point"]
    pairs = _paired(cells, "mode", "eval", "train", keys)
    if pairs.empty:
        return [_signed_rank("batchnorm eval_vs_train_mode", {"task": "all", "dataset": "all", "metric": "all",
                                                              "setting": "all"}, "pooled", np.array([]), hyp, yes, no)]
    gk = ["task", "dataset", "metric"]
    out = [_signed_rank("batchnorm eval_vs_train_mode", {"task": t, "dataset": ds, "metric": m, "setting": "all"},
                        "paired over networks and points", g["d"].to_numpy(), hyp, yes, no)
           for (t, ds, m), g in pairs.groupby(gk, sort=True)]
    out.append(_signed_rank("batchnorm eval_vs_train_mode", {"task": "all", "dataset": "all", "metric": "primary",
                                                             "setting": "all"},
                            "pooled over benchmarks (scaled)", pairs[pairs["primary"]]["z"].to_numpy(), hyp, yes, no,
                            statistic="median_scaled_difference"))
    return out


def run_all(cells: pd.DataFrame, seed: int = 0, n_boot: int = N_BOOT) -> list[TestResult]:
    """Every convention test on the seed-averaged cells."""
    cells = cells[~cells["is_baseline"].fillna(False).astype(bool)] if not cells.empty else cells
    if cells.empty:
        return []
    best = best_points(cells)
    return (imagenet_correlation(cells, best, seed, n_boot) + last_point_test(best)
            + depth_correlation(cells) + batchnorm_test(cells) + mode_test(cells))
