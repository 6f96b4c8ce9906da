"""The claims section on planted truth: the recipe claim ("a more accurate recipe of the same architecture gives a
better perceptual loss") in each direction and under the null, C1 inverse (as Kumar et al. found on BAPPS) and
positive, C2, the VGG claim "not applicable" without a plain VGG, and `dpl analyze --compare` of two studies.

Two planted studies in one MLflow store, in the public schema, 8 modern architectures with torchvision's own
recipes (7 with V1/V2, regnet_y_16gf with three), 4 points, 2 benchmarks (one lower-is-better):
- "kumar": ImageNet top-1 (V1) lowers the score (inverse C1), the more accurate recipe scores worse, no
  last-point bonus, no plain VGG;
- "classic": top-1 raises the score, the more accurate recipe scores better, the last point is best, and
  vgg16 (one recipe) is there as an anchor.
References: the planted values, torchvision's recipe metadata, scipy.stats.binomtest, and sign-flip p-values
enumerated here.
"""
from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torchvision
from scipy import stats

from test_analysis_planted import raw_frame, write_store

#: architecture: (its torchvision recipes, family)
RECIPES = {
    "resnet50": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "resnet101": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "resnet152": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "resnext50_32x4d": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "resnext101_32x8d": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "wide_resnet50_2": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "resnet"),
    "mobilenet_v3_large": (("IMAGENET1K_V1", "IMAGENET1K_V2"), "mobilenet"),
    "regnet_y_16gf": (("IMAGENET1K_V1", "IMAGENET1K_V2", "IMAGENET1K_SWAG_LINEAR_V1"), "regnet"),
}
ANCHOR = {"vgg16": (("IMAGENET1K_V1",), "vgg")}  # a plain VGG with a single recipe ("classic" only)
#: (task, dataset, primary metric, direction): the second is lower-is-better, so the claim must align signs
BENCHMARKS = [("similarity", "bapps", "2afc/mean", "max"), ("superres", "coco", "test/lpips", "min")]
LAYER = {1: 0.0, 2: 0.4, 3: 0.2, 4: 0.0}


@functools.cache
def top1(net: str, ws: str) -> float:
    """torchvision's own ImageNet-1K top-1 of a weight set."""
    return float(torchvision.models.get_model_weights(net)[ws].meta["_metrics"]["ImageNet-1K"]["acc@1"])


def recipe_rank(net: str, ws: str, nets: dict) -> float:
    """-0.5 for the least accurate recipe of `net` up to +0.5 for the most accurate."""
    order = sorted(nets[net][0], key=lambda w: top1(net, w))
    return order.index(ws) / (len(order) - 1) - 0.5 if len(order) > 1 else 0.0


def planted(rng: np.random.Generator, nets: dict, c1: float = 0.0, recipe: float = 0.0, last: float = 0.0,
            arch_recipe_sd: float = 0.0, noise: float = 0.2) -> dict[tuple[str, str, str, int], float]:
    """Standardised score per (task, network, weight set, position): `c1` x standardised V1 top-1 + an
    architecture part (sd 0.3) + (`recipe` + a per-architecture recipe part of sd `arch_recipe_sd`, shared by
    its points and benchmarks) x recipe rank + LAYER (+ `last` at position 4) + cell noise (sd `noise`)."""
    v1 = np.array([top1(n, "IMAGENET1K_V1") for n in nets])
    z = dict(zip(nets, (v1 - v1.mean()) / v1.std()))
    arch = {n: c1 * z[n] + rng.normal(0, 0.3) for n in nets}
    suits = {n: recipe + rng.normal(0, arch_recipe_sd) if arch_recipe_sd else recipe for n in nets}
    out = {}
    for task, *_ in BENCHMARKS:
        for net, (sets, _) in nets.items():
            for ws in sets:
                for pos in range(1, 5):
                    out[(task, net, ws, pos)] = (arch[net] + suits[net] * recipe_rank(net, ws, nets) + LAYER[pos]
                                                 + (last if pos == 4 else 0.0) + rng.normal(0, noise))
    return out


def records(truth: dict, nets: dict) -> list[dict]:
    """Trial records in the public schema (params, tags, final metrics), one per planted cell."""
    out = []
    for task, ds, metric, direction in BENCHMARKS:
        for net, (sets, family) in nets.items():
            for ws in sets:
                for pos in range(1, 5):
                    z = truth[(task, net, ws, pos)]
                    params = {"task": task, "dataset": ds, "network": net, "variant": "default", "seed": "0",
                              "normalisation": "imagenet", "mode": "eval", "transform_input": "auto",
                              "budget": "smoke", "point": f"p{pos}", "position": str(pos),
                              "relative_depth": str(pos / 4), "weights": ws, "weights_set": ws,
                              "imagenet_top1": str(top1(net, ws)), "arch_imagenet_top1": str(top1(net, "IMAGENET1K_V1")),
                              "family": family, "batch_norm": str(family != "vgg"), "gflops_to_point": str(0.1 * pos)}
                    tags = {"dpl.kind": "trial", "dpl.trial_key": f"{task}-{net}-{ws}-{pos}",
                            "dpl.weights_random": "false", "dpl.synthetic_data": "false",
                            "dpl.primary_metric": metric, "dpl.directions": json.dumps({metric: direction})}
                    value = 0.7 + 0.02 * z if direction == "max" else 0.3 - 0.02 * z
                    out.append({"params": params, "tags": tags, "metrics": {metric: value}})
    return out


def cells_of(truth: dict, nets: dict) -> pd.DataFrame:
    """Seed-averaged cells of a planted study through the same path as a store (checked faithful in
    tests/test_analysis_planted.py)."""
    from analysis.runs import aggregate_seeds, tidy

    return aggregate_seeds(tidy(raw_frame(records(truth, nets))))


def agreement_by_hand(truth: dict, nets: dict) -> dict[str, float]:
    """Per architecture: mean over benchmarks of the mean over points of mean over recipe pairs of
    sign(score difference) x sign(top-1 difference), from the planted values (direction-aligned by
    construction: the planted z is higher-is-better on both benchmarks)."""
    out = {}
    for net, (sets, _) in nets.items():
        if len(sets) < 2:
            continue
        per_bench = []
        for task, *_ in BENCHMARKS:
            per_point = []
            for pos in range(1, 5):
                pairs = [np.sign(top1(net, b) - top1(net, a)) * np.sign(truth[(task, net, b, pos)] - truth[(task, net, a, pos)])
                         for a, b in itertools.combinations(sets, 2)]
                per_point.append(np.mean(pairs))
            per_bench.append(np.mean(per_point))
        out[net] = float(np.mean(per_bench))
    return out


def sign_flip_p(values: list[float]) -> float:
    """Two-sided p by enumerating all 2^n sign patterns (written out here, not scipy)."""
    v = np.asarray(values, float)
    obs = v.mean()
    null = np.array([(np.array(s) * v).mean() for s in itertools.product((1, -1), repeat=len(v))])
    tol = 1e-12
    return min(1.0, 2 * min(np.mean(null >= obs - tol), np.mean(null <= obs + tol)))


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """Both planted studies in one store, analysed through the CLI: `dpl analyze --experiment kumar
    --compare classic`."""
    from mlflow.tracking import MlflowClient

    from study.cli import main

    tmp = tmp_path_factory.mktemp("recipes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(tracking_uri=uri)
        truth = {"kumar": planted(np.random.default_rng(11), RECIPES, c1=-1.5, recipe=-1.0),
                 "classic": planted(np.random.default_rng(12), RECIPES | ANCHOR, c1=1.5, recipe=1.0, last=2.0)}
        for name, nets in (("kumar", RECIPES), ("classic", RECIPES | ANCHOR)):
            exp = client.create_experiment(name, artifact_location=(tmp / f"art-{name}").as_uri())
            write_store(client, exp, records(truth[name], nets))
        out = tmp / "analysis"
        assert main(["analyze", "--tracking-uri", uri, "--experiment", "kumar", "--out", str(out),
                     "--compare", "classic", "--no-figures"]) == 0
        yield {"uri": uri, "out": out, "truth": truth}


def _conv(out) -> pd.DataFrame:
    return pd.DataFrame(json.loads((out / "conventions.json").read_text()))


def _claims(out) -> pd.DataFrame:
    """This study's claims.csv with the compared study's verdicts (compare.json) beside, by claim."""
    claims = pd.read_csv(out / "claims.csv").rename(columns={"verdict": "verdict (kumar)"})
    other = pd.DataFrame(json.loads((out / "compare.json").read_text())["verdicts"])
    return claims.merge(other[["claim", "verdict (classic)"]], on="claim").set_index("claim")


def test_recipe_pairs_are_per_architecture_point_and_benchmark(studies):
    pairs = pd.read_csv(studies["out"] / "recipe_pairs.csv")
    assert len(pairs) == len(RECIPES) * 4 * len(BENCHMARKS)
    regnet = pairs[pairs.network == "regnet_y_16gf"]
    assert (regnet["n_recipes"] == 3).all()
    assert set(regnet["recipes"]) == {"IMAGENET1K_V1 < IMAGENET1K_V2 < IMAGENET1K_SWAG_LINEAR_V1"}  # by top-1
    # planted: the more accurate recipe is worse everywhere (on the lower-is-better benchmark too)
    assert (pairs["agreement"] == -1).all() and (pairs["better"] == 0).all()
    assert pairs.groupby("network")["worse"].sum().to_dict() == {n: 8 * (3 if n == "regnet_y_16gf" else 1)
                                                                 for n in RECIPES}


def test_recipe_claim_inverse_per_benchmark_and_pooled(studies):
    conv = _conv(studies["out"])
    rows = conv[conv.test == "claim recipe_accuracy"]
    assert set(rows.task) == {"similarity", "superres", "all"}
    for r in rows.itertuples():
        assert r.n == 8 and r.value == pytest.approx(-1.0), r.task
        # all 8 architectures worse: the two-sided sign test, scipy's binomial
        assert r.p_value == pytest.approx(stats.binomtest(0, 8, 0.5).pvalue), r.task
        assert r.verdict.startswith("contradicted (inverse)"), r.verdict
        assert r.extra["p_method"].startswith("exact sign-flip")
    claims = _claims(studies["out"])
    row = claims.loc["A more accurate recipe of the same architecture gives a better perceptual loss"]
    assert row["verdict (kumar)"].startswith("contradicted (inverse)")
    assert row["verdict (classic)"].startswith("supported")
    assert row["benchmarks"] == "2/2 significant (0 supported, 2 contradicted)"
    assert "inverse on BAPPS" in row["Kumar et al. (TMLR 2022)"]


def test_claims_section_c1_inverse_c2_and_vgg_not_applicable(studies):
    claims = _claims(studies["out"])
    c1 = claims.loc["C1: better ImageNet accuracy does not mean a better loss network"]
    assert c1["verdict (kumar)"].startswith("INVERSE: significant negative correlation")
    assert c1["verdict (classic)"].startswith("contradicted (the convention holds")
    assert "inverse on BAPPS" in c1["Kumar et al. (TMLR 2022)"]
    c2 = claims.loc["C2: later layers are not generally better"]
    assert c2["verdict (kumar)"].startswith("consistent")
    assert c2["verdict (classic)"].startswith("contradicted (the convention holds: last point best in 18/18")
    vgg = claims.loc["VGG networks without batch norm perform best"]
    assert vgg["verdict (kumar)"] == ("not applicable: no plain VGG (vgg11, vgg16 or vgg19 without batch norm) "
                                      "in this study")
    # one plain VGG among 9 networks: tested (its exact p can never go below 1/9)
    assert vgg["verdict (classic)"].startswith("not supported: mean rank difference")
    conv = _conv(studies["out"])
    c1_rank = conv[(conv.test == "C1 imagenet_accuracy") & (conv.scope == "average rank")].iloc[0]
    avg = pd.read_csv(studies["out"] / "tables" / "average_ranks.csv")
    ref = stats.spearmanr(avg["imagenet_top1"], -avg["avg_rank"])
    assert c1_rank["value"] == pytest.approx(ref.statistic) and c1_rank["value"] < 0
    md = (studies["out"] / "report.md").read_text()
    section = md[md.index("## The paper's claims, tested"):md.index("## Average ranks")]
    for text in ("verdict (kumar)", "verdict (classic)", "Kumar et al. (TMLR 2022)", "INVERSE",
                 "not applicable: no plain VGG", "A more accurate recipe"):
        assert text in section, text
    assert "### Claim: recipes" in md


def test_compare_puts_both_studies_side_by_side(studies):
    cmp = json.loads((studies["out"] / "compare.json").read_text())
    verdicts = {r["claim"]: r for r in cmp["verdicts"]}
    recipe = verdicts["A more accurate recipe of the same architecture gives a better perceptual loss"]
    assert recipe["verdict (kumar)"].startswith("contradicted") and recipe["verdict (classic)"].startswith("supported")
    corr = {r["benchmark"]: r for r in cmp["rank correlation"]}
    assert corr["similarity/bapps"]["n"] == 8  # the architectures both studies ranked (vgg16 only in one)
    assert corr["similarity/bapps"]["spearman"] < 0  # top-1 ordering planted in opposite directions


def test_recipe_claim_directions_and_null_against_enumeration():
    """Per-architecture agreement and p from the planted values by hand (all 2^8 sign patterns) in each
    direction, a null, and a study with no recipe pair."""
    from analysis.claims import recipe_claim

    for seed, recipe, noise, start in ((1, 1.0, 0.2, "supported"), (2, -1.0, 0.2, "contradicted (inverse)"),
                                       (3, 0.0, 0.2, "not supported"), (4, 0.15, 0.2, "")):
        truth = planted(np.random.default_rng(seed), RECIPES, recipe=recipe, noise=noise)
        pooled = [r for r in recipe_claim(cells_of(truth, RECIPES)) if r.task == "all"][0]
        hand = agreement_by_hand(truth, RECIPES)
        assert pooled.extra["architectures"] == pytest.approx(hand)
        assert pooled.value == pytest.approx(np.mean(list(hand.values())))
        assert pooled.p_value == pytest.approx(sign_flip_p(list(hand.values()))), seed
        assert pooled.verdict.startswith(start), (seed, pooled.verdict)
    only_v1 = {n: (("IMAGENET1K_V1",), f) for n, (_, f) in RECIPES.items()}
    res = recipe_claim(cells_of(planted(np.random.default_rng(5), only_v1), only_v1))
    assert len(res) == 1 and res[0].verdict.startswith("not applicable: no architecture ran with two or more")
    few = {n: RECIPES[n] for n in list(RECIPES)[:3]}
    (pooled,) = [r for r in recipe_claim(cells_of(planted(np.random.default_rng(6), few, recipe=1.0), few))
                 if r.task == "all"]
    assert pooled.p_value == pytest.approx(0.25) and "p cannot go below 0.25: at least 6" in pooled.verdict


def test_recipe_claim_keeps_its_false_positive_rate_when_recipes_suit_architectures():
    """Null: no relation between a recipe's top-1 and its score, but each architecture's recipes differ by a
    random amount shared by all its points and benchmarks. Over 100 studies the architecture-level test
    rejects at most 5 % (99 % Clopper-Pearson interval reaches 0.05); a sign test counting the 64
    (architecture, point, benchmark) pairs as independent rejects far more often: why the unit is the
    architecture."""
    from analysis.claims import recipe_claim, recipe_pairs

    base = cells_of(planted(np.random.default_rng(0), RECIPES), RECIPES)
    keys = list(zip(base["task"], base["network"], base["weights_set"], base["position"].astype(int)))
    sign = np.where(base["direction"] == "max", 1.0, -1.0)
    ours, naive = [], []
    for i in range(100):
        truth = planted(np.random.default_rng(1000 + i), RECIPES, arch_recipe_sd=1.0)
        z = np.array([truth[k] for k in keys])
        cells = base.assign(aligned=z, value=sign * z)
        ours += [r.p_value < 0.05 for r in recipe_claim(cells)]
        pairs = recipe_pairs(cells)
        pairs = pairs[pairs.network != "regnet_y_16gf"]  # two-recipe pairs only: one sign each
        naive.append(stats.binomtest(int(pairs["better"].sum()), int(pairs["better"].sum() + pairs["worse"].sum()),
                                     0.5).pvalue < 0.05)
    k = int(np.sum(ours))
    ci = stats.binomtest(k, len(ours)).proportion_ci(confidence_level=0.99, method="exact")
    assert len(ours) == 300 and ci.low <= 0.05, f"{k}/{len(ours)} false positives"
    assert np.mean(naive) > 0.3, np.mean(naive)
