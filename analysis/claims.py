"""The paper's four findings (and the pixel baseline) as explicit tests: statistic, effect size, p or interval,
verdict; per benchmark (task, dataset, setting; primary metric) and pooled over the study.

- VGG without batch norm performs best: ranks of those networks vs the rest, exact permutation test.
- The layer matters at least as much as the architecture: share of score variance within architectures
  (choice of point) vs between them, F test of equal shares with its interval; plus the best point of the
  worst architecture against the worst point of the best one.
- C1 / C2 are the rows of `conventions` (pooled: average-rank Spearman, last-point binomial); `summary` reads
  them as the paper states them (the paper claims their *absence*).
- Pixel baseline: how many (network, point) beat the pixel-loss baseline, with a Clopper-Pearson interval.
- Recipes (a control the paper did not have): of two or more ImageNet weight sets of one architecture, does
  the more accurate one give the better loss at the same point? Sign agreement per (architecture, point,
  benchmark), tested over architectures by an exact sign-flip permutation test, per benchmark and pooled.

Everything is computed on direction-aligned scores (higher = better) of the default weights of each
architecture (the recipe claim: of every ImageNet weight set); pixel baselines are compared with, never ranked
among, the loss networks.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.conventions import ALPHA, TestResult
from analysis.tables import average_ranks, best_points, rank_table

N_PERM = 9999
VGG_HYPOTHESIS = "VGG networks without batch norm rank better than the other architectures (one-sided)"
LAYER_HYPOTHESIS = ("the choice of extraction point explains at least as much score variance as the choice "
                    "of architecture (share within architectures vs between)")
BASELINE_HYPOTHESIS = "a (network, point) perceptual loss beats the pixel-loss baseline"
RECIPE_HYPOTHESIS = ("of two or more ImageNet weight sets (training recipes) of the same architecture, the more "
                     "accurate one gives the better perceptual loss at the same point (two-sided)")
#: What Kumar et al. (TMLR 2022, "Do better ImageNet classifiers assess perceptual similarity better?") report,
#: set beside our verdicts: on BAPPS, modern networks with higher top-1 give worse perceptual scores, and past a
#: moderate accuracy, training changes that raise top-1 (more steps, label smoothing, dropout, ...) lower it.
KUMAR = {
    "C1 imagenet_accuracy": "inverse on BAPPS: more accurate modern classifiers give worse perceptual scores",
    "claim recipe_accuracy": "inverse on BAPPS: past a moderate top-1, recipes that raise it (longer training, "
                             "label smoothing, dropout) give worse perceptual scores",
}
_UNIT = ["task", "dataset", "setting"]


def _base(task: str, dataset: str, metric: str, setting: str) -> dict:
    return {"task": task, "dataset": dataset, "metric": metric, "setting": setting}


def _networks(cells: pd.DataFrame) -> pd.DataFrame:
    """Finished primary-metric cells of the loss networks' default weights (no baselines)."""
    c = cells[cells["primary"] & cells["is_default_weights"] & ~cells["is_baseline"].astype(bool) & (cells["n"] > 0)]
    return c.dropna(subset=["aligned"])


def is_plain_vgg(df: pd.DataFrame) -> pd.Series:
    """VGG without batch norm: family vgg and batch_norm false (by name where the param is absent)."""
    bn = df["has_batch_norm"].where(df["has_batch_norm"].notna(), df["network"].astype(str).str.endswith("_bn"))
    return (df["family"].astype(str) == "vgg") & ~bn.astype(bool)


# -------------------------------------------------------------------------------------------- VGG without BN
def _mean_difference_test(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    """(mean(a) - mean(b), one-sided p that it is this low by chance) by permutation of the group labels.

    scipy's permutation_test refuses a group of one (a study with a single plain VGG); then every one of
    the n labelings puts one element in `a`, so the exact p is the share of elements at most as good."""
    diff = float(a.mean() - b.mean())
    if len(a) > 1 and len(b) > 1:
        res = stats.permutation_test((a, b), lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
                                     permutation_type="independent", alternative="less", vectorized=True,
                                     n_resamples=N_PERM, rng=seed)
        return diff, float(res.pvalue)
    pooled = np.concatenate([a, b])
    others = (pooled.sum() - pooled) / (len(pooled) - 1)  # mean of the rest when element i is the group of one
    stat = pooled - others if len(a) == 1 else others - pooled
    return diff, float(np.mean(stat <= diff + 1e-12 * max(1.0, abs(diff))))


def _vgg_result(base: dict, scope: str, ranks: pd.Series, plain: np.ndarray, seed: int) -> TestResult:
    """Mean rank of plain VGGs minus that of the rest (negative = VGG better); exact permutation p when
    the number of label assignments (n choose k) fits in N_PERM, seeded resamples otherwise."""
    plain = np.asarray(plain, bool)
    a, b = ranks.to_numpy(float)[plain], ranks.to_numpy(float)[~plain]
    n = len(a) + len(b)
    if len(a) < 1 or len(b) < 1:
        why = ("no plain VGG (vgg11, vgg16 or vgg19 without batch norm) in this study" if len(a) < 1
               else "only plain VGGs in this study: nothing to compare them with")
        return TestResult("claim vgg_without_bn_best", **base, scope=scope, statistic="mean_rank_difference",
                          value=None, p_value=None, n=n, hypothesis=VGG_HYPOTHESIS, verdict=f"not applicable: {why}")
    if n < 4:
        return TestResult("claim vgg_without_bn_best", **base, scope=scope, statistic="mean_rank_difference",
                          value=None, p_value=None, n=n, hypothesis=VGG_HYPOTHESIS,
                          verdict=f"insufficient data: n={n} ({len(a)} plain VGG, {len(b)} other)")
    diff, p = _mean_difference_test(a, b, seed)
    # effect size: probability that a plain VGG ranks better than another architecture (ties count 1/2)
    superiority = float(np.mean((a[:, None] < b[None, :]) + 0.5 * (a[:, None] == b[None, :])))
    exact = math.comb(n, len(a)) <= N_PERM
    verdict = (f"supported: plain VGGs rank {-diff:.2g} places better on average (p={p:.3g})" if p < ALPHA
               else f"not supported: mean rank difference {diff:.2g} (p={p:.3g})")
    return TestResult("claim vgg_without_bn_best", **base, scope=scope, statistic="mean_rank_difference", value=diff,
                      p_value=p, n=n, verdict=verdict, hypothesis=VGG_HYPOTHESIS,
                      extra={"effect_size": superiority, "effect": "P(plain VGG ranks better)", "n_vgg": len(a),
                             "p_method": "exact permutation" if exact else f"permutation ({N_PERM} resamples)",
                             "vgg": sorted(ranks.index[plain].astype(str))})


def vgg_claim(cells: pd.DataFrame, seed: int = 0, best: pd.DataFrame | None = None) -> list[TestResult]:
    """Per benchmark (primary metric, best point per network) and pooled over the average rank.

    `best` = best_points(cells) when the caller has it (only its primary, default-weight rows are used)."""
    nets = _networks(cells)
    out = []
    if best is not None:
        best = best[best["primary"] & best["is_default_weights"] & ~best["is_baseline"].astype(bool)]
    ranks = rank_table(best_points(nets) if best is None else best) if not nets.empty else pd.DataFrame()
    for (task, ds, metric, setting), g in (ranks.groupby(["task", "dataset", "metric", "setting"], sort=True)
                                           if not ranks.empty else []):
        out.append(_vgg_result(_base(task, ds, metric, setting), "per benchmark", g.set_index("network")["rank"],
                               is_plain_vgg(g).to_numpy(), seed))
    if not ranks.empty:
        avg = average_ranks(ranks).set_index("network")
        attrs = ranks.drop_duplicates("network").set_index("network")[["family", "has_batch_norm"]]
        attrs = attrs.reindex(avg.index).reset_index()
        out.append(_vgg_result(_base("all", "all", "average rank", "all"), "pooled (average rank)",
                               avg["avg_rank"], is_plain_vgg(attrs).to_numpy(), seed))
    return out


# ------------------------------------------------------------------------------------ layer vs architecture
def _matrix(g: pd.DataFrame) -> pd.DataFrame:
    """Network x position (1-4) aligned scores, networks with all four positions only."""
    m = g.dropna(subset=["position"]).pivot_table(index="network", columns="position", values="aligned")
    return m.dropna() if m.shape[1] == 4 else m.iloc[0:0]


def _layer_result(base: dict, scope: str, mats: list[np.ndarray], seed: int = 0) -> TestResult:
    """share_point - share_arch with an F test of equal shares (pooled: on the mean of the benchmarks'
    standardised network x point matrices).

    Model: score = architecture effect (variance s_a^2) + point-within-architecture part (variance s^2).
    MS_between / MS_within ~ lam * F(A-1, 3A) with lam = (4 s_a^2 + s^2) / s^2, and equal expected sums of
    squares (the claim's boundary) is lam0 = 3A / (A-1). One-sided p-values against lam0 give the verdict;
    the interval inverts the F quantiles for lam and maps it to share_point - share_arch.
    """
    n = mats[0].shape[0] if mats else 0
    if n < 4:
        return TestResult("claim layer_vs_architecture", **base, scope=scope, statistic="share_point - share_arch",
                          value=None, p_value=None, n=n, verdict=f"insufficient data: n={n} networks with 4 points",
                          hypothesis=LAYER_HYPOTHESIS)
    k = mats[0].shape[1]
    # pooled: the mean of the standardised matrices, one test (benchmarks share architectures, so their sums of
    # squares are not independent and may not be added up as if they were)
    z = np.mean([(m - m.mean()) / (m.std() or 1.0) for m in mats], axis=0)
    ss_b = k * ((z.mean(axis=1) - z.mean()) ** 2).sum()
    ss_w = ((z - z.mean(axis=1, keepdims=True)) ** 2).sum()
    d1, d2 = n - 1, n * (k - 1)
    share_arch = ss_b / (ss_b + ss_w) if ss_b + ss_w > 0 else math.nan
    value = 1 - 2 * share_arch
    lam0 = d2 / d1  # equal expected sums of squares
    f_obs = (ss_b / d1) / (ss_w / d2) if ss_w > 0 else math.inf
    p_layer = float(stats.f.cdf(f_obs / lam0, d1, d2))   # small F: the point explains more
    p_arch = float(stats.f.sf(f_obs / lam0, d1, d2))     # large F: the architecture explains more
    lam_hi, lam_lo = f_obs / stats.f.ppf(0.025, d1, d2), f_obs / stats.f.ppf(0.975, d1, d2)

    def diff(lam: float) -> float:  # share_point - share_arch of the expected sums of squares
        return 1 - 2 * d1 * lam / (d1 * lam + d2)

    lo, hi = diff(lam_hi), diff(lam_lo)
    if p_layer < ALPHA:
        verdict = f"supported: the point explains {1 - share_arch:.0%} of the variance, the architecture {share_arch:.0%}"
    elif p_arch < ALPHA:
        verdict = f"contradicted: the architecture explains {share_arch:.0%} of the variance, the point {1 - share_arch:.0%}"
    else:
        verdict = f"inconclusive: point {1 - share_arch:.0%} vs architecture {share_arch:.0%} (p={2 * min(p_layer, p_arch):.3g})"
    extra = {"share_point": 1 - share_arch, "share_arch": share_arch, "effect_size": 1 - share_arch,
             "effect": "share of variance explained by the point", "F": f_obs, "df": [d1, d2],
             "p_point_more": p_layer, "p_arch_more": p_arch}
    if len(mats) == 1:
        extra.update(_overlap(mats[0]))
    return TestResult("claim layer_vs_architecture", **base, scope=scope, statistic="share_point - share_arch",
                      value=value, p_value=min(1.0, 2 * min(p_layer, p_arch)), n=n, verdict=verdict,
                      hypothesis=LAYER_HYPOTHESIS, ci_low=lo, ci_high=hi, extra=extra)


def _overlap(m: np.ndarray) -> dict:
    """Best point of the worst architecture minus worst point of the best (architectures by best point);
    > 0 means a good layer of a bad network beats a bad layer of the best network."""
    best_arch, worst_arch = int(np.argmax(m.max(axis=1))), int(np.argmin(m.max(axis=1)))
    return {"best_of_worst_minus_worst_of_best": float(m[worst_arch].max() - m[best_arch].min()),
            "best_arch_row": best_arch, "worst_arch_row": worst_arch}


def layer_claim(cells: pd.DataFrame, seed: int = 0) -> list[TestResult]:
    """Per benchmark and pooled over the architectures present with 4 points in every benchmark."""
    nets = _networks(cells)
    out, mats = [], []
    for (task, ds, metric, setting), g in nets.groupby(["task", "dataset", "metric", "setting"], sort=True):
        m = _matrix(g)
        r = _layer_result(_base(task, ds, metric, setting), "per benchmark", [m.to_numpy()] if len(m) else [], seed)
        if "best_arch_row" in r.extra:
            r.extra["best_arch"], r.extra["worst_arch"] = (str(m.index[r.extra.pop("best_arch_row")]),
                                                           str(m.index[r.extra.pop("worst_arch_row")]))
        if len(m):
            mats.append(m)
        out.append(r)
    if mats:
        common = sorted(set.intersection(*(set(m.index) for m in mats)))
        out.append(_layer_result(_base("all", "all", "primary", "all"), "pooled (standardised per benchmark)",
                                 [m.loc[common].to_numpy() for m in mats] if common else [], seed))
    return out


# ------------------------------------------------------------------------------------------------ recipes
#: With n architectures a two-sided sign-flip test cannot give p below 2 / 2**n: this many are needed for 0.05.
MIN_RECIPE_ARCHITECTURES = 6


def _recipe_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Finished primary-metric cells of every ImageNet weight set whose own top-1 was logged (all recipes, not
    only the default one); random weights, weight files and pixel baselines have no recipe accuracy."""
    c = cells[cells["primary"] & (cells["weights_kind"] == "imagenet") & ~cells["is_baseline"].astype(bool)
              & ~cells["top1_fallback"].fillna(True).astype(bool) & (cells["n"] > 0)]
    return c.dropna(subset=["aligned", "imagenet_top1"])


RECIPE_PAIR_COLUMNS = ["task", "dataset", "metric", "setting", "network", "point", "n_recipes", "recipes",
                       "agreement", "better", "worse", "ties"]


def recipe_pairs(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (benchmark, setting, architecture, point) run with two or more recipes of different top-1.

    `agreement` = mean over the pairs of its recipes of sign(score difference) x sign(top-1 difference): +1 when
    the more accurate recipe scored better, -1 when worse, 0 on a tie; with two recipes it is that one sign.
    `recipes` lists the weight sets, least accurate first; better / worse / ties count the pairs."""
    keys = ["task", "dataset", "metric", "setting", "network", "point"]
    c = _recipe_cells(cells).drop_duplicates(keys + ["weights_set"]).sort_values("imagenet_top1", kind="stable")
    c = c.assign(gid=c.groupby(keys, sort=True).ngroup())  # one integer per (benchmark, architecture, point)
    side = c[["gid", "imagenet_top1", "aligned"]]
    pairs = side.merge(side, on="gid", suffixes=("_low", "_high"))
    pairs = pairs[pairs["imagenet_top1_high"] > pairs["imagenet_top1_low"]]
    if pairs.empty:
        return pd.DataFrame(columns=RECIPE_PAIR_COLUMNS)
    sign = np.sign(pairs["aligned_high"].to_numpy() - pairs["aligned_low"].to_numpy())
    counts = pairs[["gid"]].assign(agreement=sign, better=sign > 0, worse=sign < 0, ties=sign == 0).groupby("gid").agg(
        {"agreement": "mean", "better": "sum", "worse": "sum", "ties": "sum"})
    groups = c.groupby("gid").agg(**{k: (k, "first") for k in keys}, n_recipes=("weights_set", "size"),
                                  recipes=("weights_set", " < ".join))
    return groups.join(counts, how="inner").reset_index(drop=True)[RECIPE_PAIR_COLUMNS].astype(
        {"better": int, "worse": int, "ties": int})


def sign_flip_test(values: np.ndarray, seed: int = 0) -> tuple[float, str]:
    """Two-sided p that the mean of `values` is this far from 0 if each value's sign were a coin flip (the
    null of a statistic symmetric about 0), with how it was computed: every one of the 2**n sign patterns
    when 2**n <= N_PERM (exact), else N_PERM seeded random ones. On values of +-1 this is the two-sided
    sign test (binomial, p = 1/2)."""
    values = np.asarray(values, float)
    n = len(values)
    how = (f"exact sign-flip permutation ({2 ** n} sign patterns)" if 2 ** n <= N_PERM
           else f"sign-flip permutation ({N_PERM} resamples)")
    if n < 2:  # scipy refuses one value; its two patterns, +v and -v, give p = 1 whatever v is
        return 1.0, how
    res = stats.permutation_test((values,), lambda v, axis=-1: v.mean(axis=axis), permutation_type="samples",
                                 vectorized=True, alternative="two-sided", n_resamples=N_PERM, rng=seed)
    return float(res.pvalue), how


def _recipe_result(base: dict, scope: str, pairs: pd.DataFrame, per_arch: pd.Series, seed: int) -> TestResult:
    """Mean over architectures of their agreement (value in [-1, 1]), sign-flip test over architectures.

    The architecture is the unit: its points and benchmarks share the same two weight files, so a recipe that
    happens to suit one architecture moves all its pairs together; counting pairs as independent would reject
    a true null far more often than 5 % (tests/test_analysis_recipes.py shows it)."""
    n = len(per_arch)
    if n == 0:
        return TestResult("claim recipe_accuracy", **base, scope=scope, statistic="mean_agreement", value=None,
                          p_value=None, n=0, hypothesis=RECIPE_HYPOTHESIS,
                          verdict="not applicable: no architecture ran with two or more ImageNet weight sets of "
                                  "different top-1 at the same point (e.g. weights: [IMAGENET1K_V1, IMAGENET1K_V2])")
    value = float(per_arch.mean())
    p, how = sign_flip_test(per_arch.to_numpy(), seed)
    better, worse, ties = (int(pairs[c].sum()) for c in ("better", "worse", "ties"))
    total = better + worse + ties
    tally = f"in {better}/{total} pairs better, {worse} worse, over {n} architecture{'s' if n > 1 else ''}"
    if p < ALPHA:
        verdict = (f"supported: the more accurate recipe scored better {tally} (p={p:.3g})" if value > 0 else
                   f"contradicted (inverse): the more accurate recipe scored worse; {tally} (p={p:.3g})")
    else:
        verdict = f"not supported: the more accurate recipe scored better {tally} (p={p:.3g})"
        if n < MIN_RECIPE_ARCHITECTURES:
            verdict += (f"; with {n} architecture{'s' if n > 1 else ''} p cannot go below {2.0 ** (1 - n):.3g}: "
                        f"at least {MIN_RECIPE_ARCHITECTURES} are needed to reach {ALPHA}")
    return TestResult("claim recipe_accuracy", **base, scope=scope, statistic="mean_agreement", value=value,
                      p_value=p, n=n, verdict=verdict, hypothesis=RECIPE_HYPOTHESIS,
                      extra={"effect_size": (better + 0.5 * ties) / total,
                             "effect": "P(the more accurate recipe scores better), over pairs",
                             "pairs": total, "better": better, "worse": worse, "ties": ties, "p_method": how,
                             "architectures": {str(k): float(v) for k, v in per_arch.items()}})


def recipe_claim(cells: pd.DataFrame, seed: int = 0) -> list[TestResult]:
    """Per benchmark (task, dataset, setting; primary metric) and pooled: each architecture's agreement
    (per benchmark: mean over its points; pooled: mean over benchmarks of its mean over points and settings,
    so each benchmark counts once, as in the average rank), tested over architectures. A study without a recipe pair gets one pooled "not applicable"."""
    pairs = recipe_pairs(cells)
    out = []
    for (task, ds, metric, setting), g in pairs.groupby(["task", "dataset", "metric", "setting"], sort=True):
        out.append(_recipe_result(_base(task, ds, metric, setting), "per benchmark", g,
                                  g.groupby("network")["agreement"].mean(), seed))
    per_benchmark = pairs.groupby(["network", "task", "dataset"])["agreement"].mean()
    per_arch = per_benchmark.groupby("network").mean() if len(pairs) else pd.Series(dtype=float)
    out.append(_recipe_result(_base("all", "all", "primary", "all"), "pooled over benchmarks", pairs, per_arch,
                              seed))
    return out


# ----------------------------------------------------------------------------------------- pixel baseline
def baseline_comparison(cells: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and setting (primary metric): the pixel baseline's score beside the loss networks.

    Columns: task, dataset, setting, metric, baseline, best_network, best_point, best_value, beat_cells
    ((network, point) cells better than the baseline), n_cells, beat_networks (architectures whose best point
    beats it), n_networks. Empty when the study has no pixel baseline."""
    c = cells[cells["primary"] & (cells["n"] > 0)].dropna(subset=["aligned"])
    base = c[c["is_baseline"].astype(bool)]
    nets = _networks(cells)
    rows = []
    for (task, ds, setting), g in nets.groupby(_UNIT, sort=True):
        b = base[(base["task"] == task) & (base["dataset"] == ds)]
        b = b[b["setting"] == setting] if (b["setting"] == setting).any() else b
        if b.empty:
            continue
        ref = float(b["aligned"].mean())
        best = best_points(g)
        top = best.loc[best["aligned"].idxmax()]
        rows.append({"task": task, "dataset": ds, "setting": setting, "metric": g["metric"].iloc[0],
                     "baseline": float(b["value"].mean()), "best_network": top["network"],
                     "best_point": top["best_point"], "best_value": float(top["value"]),
                     "beat_cells": int((g["aligned"] > ref).sum()), "n_cells": int(len(g)),
                     "beat_networks": int((best["aligned"] > ref).sum()), "n_networks": int(len(best))})
    return pd.DataFrame(rows, columns=["task", "dataset", "setting", "metric", "baseline", "best_network",
                                       "best_point", "best_value", "beat_cells", "n_cells", "beat_networks",
                                       "n_networks"])


def _beat_result(base: dict, scope: str, k: int, n: int, extra: dict) -> TestResult:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    verdict = f"{k}/{n} (network, point) beat the pixel baseline"
    return TestResult("claim beats_pixel_baseline", **base, scope=scope, statistic="share_beating_baseline",
                      value=k / n, p_value=None, n=n, verdict=verdict, hypothesis=BASELINE_HYPOTHESIS,
                      ci_low=float(ci.low), ci_high=float(ci.high),
                      extra={"effect_size": k / n, "effect": "share of cells better than the baseline", **extra})


def baseline_claim(cells: pd.DataFrame) -> list[TestResult]:
    """Share of (network, point) cells better than the baseline, with a Clopper-Pearson 95 % interval."""
    table = baseline_comparison(cells)
    out = [_beat_result(_base(r.task, r.dataset, r.metric, r.setting), "per benchmark", r.beat_cells, r.n_cells,
                        {"beat_networks": r.beat_networks, "n_networks": r.n_networks})
           for r in table.itertuples()]
    if len(table):
        out.append(_beat_result(_base("all", "all", "primary", "all"), "pooled", int(table["beat_cells"].sum()),
                                int(table["n_cells"].sum()), {"beat_networks": int(table["beat_networks"].sum()),
                                                              "n_networks": int(table["n_networks"].sum())}))
    return out


def run_claims(cells: pd.DataFrame, seed: int = 0) -> list[TestResult]:
    """Every claim test that `conventions.run_all` does not already compute."""
    if cells.empty:
        return []
    return vgg_claim(cells, seed) + layer_claim(cells, seed) + baseline_claim(cells) + recipe_claim(cells, seed)


# ----------------------------------------------------------------------------------------------- summary
#: (claim as the paper states it, test name, pooled scope prefix, per-benchmark scope, how a significant
#: result reads, where the evidence is)
CLAIMS = [
    ("VGG networks without batch norm perform best", "claim vgg_without_bn_best", "pooled", "per benchmark",
     "direct", "tables/average_ranks.md"),
    ("The extraction layer matters at least as much as the architecture", "claim layer_vs_architecture", "pooled",
     "per benchmark", "direct", "tables/table_*.md, figures/heatmap_*"),
    ("C1: better ImageNet accuracy does not mean a better loss network", "C1 imagenet_accuracy", "average rank",
     "best point", "absence", "figures/accuracy_*, section C1"),
    ("C2: later layers are not generally better", "C2 last_point_best", "pooled", "per network", "absence",
     "figures/depth_*, section C2"),
    ("Perceptual losses beat the pixel baseline", "claim beats_pixel_baseline", "pooled", "per benchmark", "count",
     "section Pixel baselines"),
    ("A more accurate recipe of the same architecture gives a better perceptual loss", "claim recipe_accuracy",
     "pooled", "per benchmark", "direct", "recipe_pairs.csv, section Claim: recipes"),
]
#: The column that sets Kumar et al.'s direction beside ours.
KUMAR_COLUMN = "Kumar et al. (TMLR 2022)"


def _reading(kind: str, verdict: str) -> str:
    """The paper's claim's verdict from a test's verdict (C1/C2 claim the absence of an effect; a significant
    effect the other way is INVERSE, as Kumar et al. found for C1 on BAPPS)."""
    if verdict.startswith(("insufficient", "no variation")):
        return "untested: " + verdict
    if kind == "absence":
        if verdict.startswith("supported"):
            return "contradicted (the convention holds: " + verdict.split(":", 1)[1].strip() + ")"
        if verdict.startswith("contradicted"):
            return ("INVERSE: " + verdict.split(":", 1)[1].strip() + " (the paper's claim of no positive effect "
                    "holds, and the effect runs the other way)")
        return "consistent (no significant effect; absence of evidence, not proof)"
    return verdict


def _benchmarks(per: list[TestResult]) -> str:
    """How many benchmarks are significant on their own, and in which direction when not all agree."""
    if not per:
        return ""
    yes = sum(1 for x in per if x.verdict.startswith("supported"))
    no = sum(1 for x in per if x.verdict.startswith("contradicted"))
    return f"{yes + no}/{len(per)} significant" + (f" ({yes} supported, {no} contradicted)" if no else "")


def summary(results: list[TestResult]) -> pd.DataFrame:
    """One row per claim: pooled statistic, effect size, p or interval, the paper's claim's verdict, how many
    benchmarks are significant on their own, and what Kumar et al. report where they tested the same."""
    rows = []
    for claim, test, scope, per_scope, kind, where in CLAIMS:
        def pick(r: TestResult) -> bool:
            return r.test == test and (test != "C1 imagenet_accuracy" or r.statistic == "spearman")
        pooled = [r for r in results if pick(r) and r.task == "all" and r.scope.startswith(scope)]
        per = [r for r in results if pick(r) and r.task != "all" and r.scope == per_scope]
        kumar = KUMAR.get(test, "")
        if not pooled:
            rows.append({"claim": claim, "statistic": "", "value": math.nan, "effect size": "", "p / interval": "",
                         "verdict": "untested: nothing to test in this study", "benchmarks": "",
                         KUMAR_COLUMN: kumar, "see": where})
            continue
        r = pooled[0]
        effect = r.extra.get("effect_size")
        interval = (f"p={r.p_value:.3g}" if r.p_value is not None else "") + (
            f" [{r.ci_low:.3g}, {r.ci_high:.3g}]" if r.ci_low is not None and not math.isnan(r.ci_low) else "")
        rows.append({"claim": claim, "statistic": r.statistic, "value": r.value if r.value is not None else math.nan,
                     "effect size": f"{effect:.3g} ({r.extra.get('effect')})" if effect is not None else "",
                     "p / interval": interval.strip(), "verdict": _reading(kind, r.verdict),
                     "benchmarks": _benchmarks(per), KUMAR_COLUMN: kumar, "see": where})
    return pd.DataFrame(rows)
