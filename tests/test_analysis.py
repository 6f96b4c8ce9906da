"""The analysis package against a crafted MLflow store: statistics must equal scipy computed here.

The store follows the public schema of the study engine: a parent study run with plan.json and one run per
trial with crafted final metrics (ImageNet-correlated for superres, anti-correlated for the autoencoder),
plus a failed, a running and a never-started trial, two seeds of one cell, V2 weights of resnet50 and a
train-mode repeat of vgg16_bn.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

TOP1 = {"alexnet": 56.52, "vgg11": 69.02, "vgg16": 71.59, "vgg16_bn": 73.36, "resnet50": 76.13,
        "efficientnet_b0": 77.69}
FAMILY = {"alexnet": "alexnet", "vgg11": "vgg", "vgg16": "vgg", "vgg16_bn": "vgg", "resnet50": "resnet",
          "efficientnet_b0": "efficientnet"}
NOISE = {"alexnet": 0.3, "vgg11": -0.4, "vgg16": 0.9, "vgg16_bn": -0.8, "resnet50": 0.2, "efficientnet_b0": -0.1}
V2_TOP1 = 80.86
SR_DIRS = {"test/set5/psnr": "max", "test/lpips": "min"}


def psnr(net: str, top1: float, pos: int) -> float:
    return 20 + 0.1 * top1 + 0.3 * NOISE[net] - 0.5 * pos + 0.05 * pos * pos


def lpips_(net: str, top1: float, pos: int) -> float:
    return 1 - 0.01 * top1 + 0.02 * NOISE[net] ** 2 + 0.01 * pos  # min metric: lower is better


def ae_acc(net: str, top1: float, pos: int) -> float:
    return 0.9 - 0.002 * top1 + 0.01 * NOISE[net] + 0.01 * pos + (0.03 if pos == 4 else 0)


def delin(net: str, top1: float, pos: int) -> float:
    return 0.5 + 0.01 * pos - 0.001 * top1


def _trial(client, exp_id, parent, key, task, dataset, net, pos, metrics, directions, primary, *,
           status="FINISHED", seed=0, weights_set="IMAGENET1K_V1", top1=None, mode="eval", error=""):
    from mlflow.entities import Metric, Param, RunTag

    tags = {"dpl.kind": "trial", "dpl.study": "crafted", "dpl.trial_key": key, "mlflow.parentRunId": parent,
            "dpl.weights_random": "false", "dpl.synthetic_data": "true", "dpl.primary_metric": primary,
            "dpl.directions": json.dumps(directions)}
    if error:
        tags["dpl.error"] = error
    params = {"task": task, "dataset": dataset, "network": net, "point": f"p{pos}", "variant": "baseline",
              "seed": str(seed), "weights": weights_set, "normalisation": "imagenet", "mode": mode,
              "transform_input": "False", "budget": "smoke", "hp.lr": "0.001", "position": str(pos),
              "relative_depth": str(round(pos / 4 - 0.01 * len(net), 4)), "imagenet_top1": str(top1 or TOP1[net]),
              "arch_imagenet_top1": str(TOP1[net]), "weights_set": weights_set, "family": FAMILY[net],
              "batch_norm": str(net in ("vgg16_bn", "resnet50", "efficientnet_b0"))}
    run = client.create_run(exp_id, tags=tags)
    now = int(time.time() * 1000)
    ms = []
    if status == "FINISHED":
        ms = [Metric("train/loss", 1.0, now, 1), Metric("train/loss", 0.5, now, 2)]
        # an earlier value of a final metric at step 1: the analysis must take the last one
        ms += [Metric(m, -99.0, now, 1) for m in metrics] + [Metric(m, v, now + 1, 2) for m, v in metrics.items()]
    client.log_batch(run.info.run_id, metrics=ms, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A crafted store + the analysis of it; returns (uri, out_dir, report path, expected values)."""
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze

    tmp = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MPLCONFIGDIR", str(tmp / "mpl"))
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(tracking_uri=uri)
        client.create_experiment("other-study", artifact_location=(tmp / "art0").as_uri())
        exp = client.create_experiment("crafted", artifact_location=(tmp / "art").as_uri())
        parent = client.create_run(exp, tags={"dpl.kind": "study", "dpl.study": "crafted"}).info.run_id
        plan, expected = [], {}

        def add(key, task, dataset, net, pos, fn_metrics, dirs, primary, **kw):
            plan.append({"trial_key": key, "task": task, "dataset": dataset, "network": net, "point": f"p{pos}",
                         "variant": "baseline", "seed": kw.get("seed", 0)})
            if kw.pop("missing", False):
                return
            top1 = kw.get("top1") or TOP1[net]
            metrics = {m: f(net, top1, pos) for m, f in fn_metrics.items()}
            if kw.get("status", "FINISHED") == "FINISHED":
                for m, v in metrics.items():
                    expected.setdefault((task, m, net, kw.get("weights_set", "IMAGENET1K_V1"), kw.get("mode", "eval"),
                                         pos), []).append(v)
            _trial(client, exp, parent, key, task, dataset, net, pos, metrics, dirs, primary, **kw)

        sr = {"test/set5/psnr": psnr, "test/lpips": lpips_}
        for net in TOP1:
            for pos in range(1, 5):
                add(f"sr-{net}-{pos}", "superres", "coco", net, pos, sr, SR_DIRS, "test/set5/psnr")
                status = "FAILED" if (net, pos) == ("efficientnet_b0", 2) else "FINISHED"
                add(f"ae-{net}-{pos}", "autoencoder", "svhn", net, pos, {"probe/best_val_test_acc": ae_acc},
                    {"probe/best_val_test_acc": "max"}, "probe/best_val_test_acc", status=status,
                    error="CUDA out of memory" if status == "FAILED" else "")
        # a second seed of one cell: values +-0.1 around a shifted mean
        sr_seed = {"test/set5/psnr": lambda n, t, p: psnr(n, t, p) + 0.2, "test/lpips": lpips_}
        add("sr-alexnet-1-s1", "superres", "coco", "alexnet", 1, sr_seed, SR_DIRS, "test/set5/psnr", seed=1)
        for pos in range(1, 5):
            add(f"sr-v2-{pos}", "superres", "coco", "resnet50", pos, sr, SR_DIRS, "test/set5/psnr",
                weights_set="IMAGENET1K_V2", top1=V2_TOP1)
            train = {"test/set5/psnr": lambda n, t, p: psnr(n, t, p) - 0.3 * p, "test/lpips": lpips_}
            add(f"sr-train-{pos}", "superres", "coco", "vgg16_bn", pos, train, SR_DIRS, "test/set5/psnr",
                mode="train")
            for net in ("alexnet", "vgg16"):
                add(f"dl-{net}-{pos}", "delineation", "mrd", net, pos, {"test/quality": delin},
                    {"test/quality": "max"}, "test/quality", status="RUNNING" if (net, pos) == ("vgg16", 2)
                    else "FINISHED")
        add("dl-resnet50-1", "delineation", "mrd", "resnet50", 1, {}, {}, "", missing=True)
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        client.log_artifact(parent, str(plan_path))
        client.set_terminated(parent)

        out = tmp / "analysis"
        report = analyze(uri, "crafted", out)
        yield {"uri": uri, "out": out, "report": report, "expected": expected, "client": client, "exp": exp}


def _conv(study) -> pd.DataFrame:
    return pd.DataFrame(json.loads((study["out"] / "conventions.json").read_text()))


def _best(expected: dict, task: str, metric: str, direction: str, nets=TOP1, mode="eval") -> dict[str, float]:
    """Best (direction-aware) seed-averaged value per network, from the crafted values."""
    pick = max if direction == "max" else min
    out = {}
    for net in nets:
        vals = [np.mean(v) for (t, m, n, ws, md, _), v in expected.items()
                if (t, m, n, ws, md) == (task, metric, net, "IMAGENET1K_V1", mode)]
        if vals:
            out[net] = pick(vals)
    return out


def test_results_csv_is_tidy_and_takes_the_last_value(study):
    df = pd.read_csv(study["out"] / "results.csv")
    for col in ("task", "dataset", "metric", "network", "point", "position", "relative_depth", "imagenet_top1",
                "value", "direction", "status", "seed", "mode", "weights_set", "has_batch_norm", "top1_fallback"):
        assert col in df.columns, col
    row = df[(df.task == "superres") & (df.network == "vgg11") & (df.position == 3) & (df.metric == "test/set5/psnr")]
    assert len(row) == 1 and row["value"].iloc[0] == pytest.approx(psnr("vgg11", TOP1["vgg11"], 3))
    assert not (df["value"] == -99.0).any()  # step-1 values never win over the final one
    assert set(df["metric"]) == {"test/set5/psnr", "test/lpips", "probe/best_val_test_acc", "test/quality"}


def test_failed_running_and_missing_trials_are_visible(study):
    cov = pd.read_csv(study["out"] / "coverage.csv")
    status = dict(zip(cov["trial_key"], cov["status"]))
    assert status["ae-efficientnet_b0-2"] == "FAILED"
    assert status["dl-vgg16-2"] == "RUNNING"
    assert status["dl-resnet50-1"] == "missing"
    assert cov["error"].fillna("").str.contains("CUDA out of memory").any()
    table = (study["out"] / "tables" / "table_autoencoder_svhn_probe_best_val_test_acc.md").read_text()
    effnet = next(line for line in table.splitlines() if line.startswith("| efficientnet_b0"))
    assert "FAILED" in effnet
    dl = (study["out"] / "tables" / "table_delineation_mrd_test_quality.md").read_text()
    assert "missing" in next(line for line in dl.splitlines() if line.startswith("| resnet50"))
    html = study["report"].read_text()
    assert "FAILED" in html and "missing" in html and "RUNNING" in html


def test_seeds_are_averaged_with_n(study):
    cells = pd.read_csv(study["out"] / "cells.csv")
    c = cells[(cells.task == "superres") & (cells.network == "alexnet") & (cells.position == 1)
              & (cells.metric == "test/set5/psnr") & (cells["mode"] == "eval")]
    assert len(c) == 1 and int(c["n"].iloc[0]) == 2
    assert c["value"].iloc[0] == pytest.approx(psnr("alexnet", TOP1["alexnet"], 1) + 0.1)
    assert c["std"].iloc[0] == pytest.approx(np.std([0.0, 0.2], ddof=1))


def test_tables_match_inputs(study):
    tab = pd.read_csv(study["out"] / "tables" / "table_superres_coco_test_set5_psnr_mode_eval.csv", index_col=0)
    exp = study["expected"]
    for net in TOP1:
        for pos in range(1, 5):
            assert tab.loc[net, f"L{pos}"] == pytest.approx(np.mean(exp[("superres", "test/set5/psnr", net,
                                                                         "IMAGENET1K_V1", "eval", pos)]))
    best = _best(exp, "superres", "test/set5/psnr", "max")
    assert tab["best"].to_dict() == pytest.approx({**best, "resnet50:IMAGENET1K_V2": psnr("resnet50", V2_TOP1, 1)})
    assert (tab.loc[list(TOP1), "best_point"] == "p1").all()
    # the min metric: lower is better, so the best point is the lowest value (position 1 here)
    lp = pd.read_csv(study["out"] / "tables" / "table_superres_coco_test_lpips_mode_eval.csv", index_col=0)
    assert lp.loc["vgg11", "best"] == pytest.approx(lpips_("vgg11", TOP1["vgg11"], 1))
    ranks = pd.read_csv(study["out"] / "tables" / "ranks.csv")
    r = ranks[(ranks.task == "superres") & (ranks.metric == "test/set5/psnr") & (ranks.setting == "mode=eval")]
    want = stats.rankdata([-best[n] for n in r["network"]])
    assert r["rank"].to_numpy() == pytest.approx(want)
    assert "resnet50:IMAGENET1K_V2" not in set(r["network"])


def test_average_rank_is_mean_over_benchmarks_of_mean_over_metrics(study):
    exp = study["expected"]
    avg = pd.read_csv(study["out"] / "tables" / "average_ranks.csv")
    assert "setting" not in avg.columns  # one ranking per study: mode varies in superres only
    avg = avg.set_index("network")

    def ranks(task, metric, d):
        b = _best(exp, task, metric, d)
        sign = -1 if d == "max" else 1
        return dict(zip(b, stats.rankdata([sign * v for v in b.values()])))

    sr = {n: (ranks("superres", "test/set5/psnr", "max")[n] + ranks("superres", "test/lpips", "min")[n]) / 2
          for n in TOP1}
    ae = ranks("autoencoder", "probe/best_val_test_acc", "max")
    dl = ranks("delineation", "test/quality", "max")
    sr_primary = ranks("superres", "test/set5/psnr", "max")
    for net in TOP1:
        parts = [sr[net], ae[net]] + ([dl[net]] if net in dl else [])
        assert avg.loc[net, "avg_rank_all_metrics"] == pytest.approx(np.mean(parts)), net
        primary = [sr_primary[net], ae[net]] + ([dl[net]] if net in dl else [])
        assert avg.loc[net, "avg_rank"] == pytest.approx(np.mean(primary)), net
        assert avg.loc[net, "n_benchmarks"] == len(parts)


@pytest.mark.parametrize("kind", ["spearman", "kendall", "pearson"])
def test_bootstrap_ci_equals_scipy(kind: str) -> None:
    """The vectorised percentile bootstrap over networks equals scipy.stats.bootstrap (paired resampling of
    (top-1, score) pairs, percentile method, the same seeded generator) to rounding."""
    from analysis.conventions import bootstrap_ci

    fn = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}[kind]
    rng = np.random.default_rng(5)
    x = rng.normal(size=14)
    y = x + rng.normal(size=14)
    ref = stats.bootstrap((x, y), lambda a, b: fn(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=2000, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(x, y, kind, n_boot=2000, seed=0) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_c1_correlations_equal_scipy(study):
    conv = _conv(study)
    for task, metric, d, sign in (("superres", "test/set5/psnr", "max", 1), ("superres", "test/lpips", "min", -1),
                                  ("autoencoder", "probe/best_val_test_acc", "max", 1)):
        best = _best(study["expected"], task, metric, d)
        x = [TOP1[n] for n in best]
        y = [sign * v for v in best.values()]
        for kind, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
            ref = fn(x, y)
            row = conv[(conv.test == "C1 imagenet_accuracy") & (conv.task == task) & (conv.metric == metric)
                       & (conv.scope == "best point") & (conv.statistic == kind)
                       & conv.setting.isin(["all", "mode=eval"])]
            assert len(row) == 1
            assert row["value"].iloc[0] == pytest.approx(ref.statistic)
            # n = 6 networks: the p-value is the exact permutation one (all 720 orderings), not scipy's
            # large-sample approximation
            exact = stats.permutation_test((y,), lambda v: fn(x, v).statistic, permutation_type="pairings",
                                           n_resamples=math.factorial(6), vectorized=False)
            assert len(exact.null_distribution) == 720
            assert row["p_value"].iloc[0] == pytest.approx(exact.pvalue)
            if kind == "kendall":
                assert row["p_value"].iloc[0] == pytest.approx(stats.kendalltau(x, y, method="exact").pvalue)
            assert row["n"].iloc[0] == len(x)
            # the interval itself is checked against scipy.stats.bootstrap in test_bootstrap_ci_equals_scipy
            assert row["ci_low"].iloc[0] - 1e-9 <= row["value"].iloc[0] <= row["ci_high"].iloc[0] + 1e-9
    sr = conv[(conv.test == "C1 imagenet_accuracy") & (conv.task == "superres") & (conv.scope == "best point")
              & (conv.statistic == "spearman") & (conv.metric == "test/set5/psnr") & (conv.setting == "mode=eval")]
    ae = conv[(conv.test == "C1 imagenet_accuracy") & (conv.task == "autoencoder") & (conv.scope == "best point")
              & (conv.statistic == "spearman")]
    assert sr["value"].iloc[0] > 0.8 and ae["value"].iloc[0] < -0.8
    assert ae["verdict"].iloc[0].startswith("contradicted") and sr["verdict"].iloc[0].startswith("supported")
    # per position: position 3 of the autoencoder
    x = [TOP1[n] for n in TOP1]
    y = [np.mean(study["expected"][("autoencoder", "probe/best_val_test_acc", n, "IMAGENET1K_V1", "eval", 3)])
         for n in TOP1]
    row = conv[(conv.test == "C1 imagenet_accuracy") & (conv.task == "autoencoder") & (conv.scope == "position 3")
               & (conv.statistic == "kendall")]
    assert row["value"].iloc[0] == pytest.approx(stats.kendalltau(x, y).statistic)


def test_insufficient_data_is_said_not_computed(study):
    conv = _conv(study)
    dl = conv[(conv.test == "C1 imagenet_accuracy") & (conv.task == "delineation") & (conv.scope == "best point")]
    assert len(dl) == 3 and dl["value"].isna().all()
    assert (dl["verdict"] == "insufficient data: n=2").all()
    train = conv[(conv.test == "C1 imagenet_accuracy") & (conv.setting == "mode=train") & (conv.scope == "best point")]
    assert (train["verdict"] == "insufficient data: n=1").all()
    assert "insufficient data: n=2" in study["report"].read_text()


def test_bootstrap_kernel_equals_scipy_per_resample():
    from analysis.conventions import batch_correlation, bootstrap_ci

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=9), rng.normal(size=9)
    idx = rng.integers(0, 9, size=(50, 9))
    idx[0] = 0  # a degenerate resample: NaN like scipy
    for kind, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
        got = batch_correlation(x[idx], y[idx], kind)
        assert math.isnan(got[0])
        want = [fn(x[i], y[i]).statistic for i in idx[1:]]
        assert got[1:] == pytest.approx(want)
        res = stats.bootstrap((x, y), lambda a, b: fn(a, b).statistic, paired=True, vectorized=False,
                              n_resamples=500, method="percentile", random_state=0)
        lo, hi = bootstrap_ci(x, y, kind, n_boot=2000, seed=0)
        assert lo == pytest.approx(res.confidence_interval.low, abs=0.15)
        assert hi == pytest.approx(res.confidence_interval.high, abs=0.15)
    assert bootstrap_ci(x, y, "spearman", seed=1) == bootstrap_ci(x, y, "spearman", seed=1)


def test_recipe_claim_counts_v1_v2_pairs(study):
    conv = _conv(study)
    rows = conv[conv.test == "claim recipe_accuracy"]
    assert set(rows.task) == {"superres", "all"}  # V2 weights ran on superres only
    row = rows[rows.task == "superres"].iloc[0]
    # V2 has higher top-1 and the crafted psnr rises with top-1 at every point: 4/4 pairs agree, but they are
    # one architecture's: n = 1, and a sign-flip test of one value has p = 1
    assert row["metric"] == "test/set5/psnr" and row["n"] == 1 and row["value"] == 1.0
    assert row["extra"]["pairs"] == 4 and row["extra"]["better"] == 4 and row["p_value"] == 1.0
    assert row["verdict"].startswith("not supported") and "at least 6 are needed" in row["verdict"]


def test_c2_last_point_share_and_depth_correlation(study):
    conv = _conv(study)
    ae = conv[(conv.test == "C2 last_point_best") & (conv.task == "autoencoder")]
    # efficientnet_b0 lost position 2 (FAILED): only 5 networks have all four positions; all best at L4
    assert ae["n"].iloc[0] == 5 and ae["value"].iloc[0] == 1.0
    assert ae["p_value"].iloc[0] == pytest.approx(stats.binomtest(5, 5, 0.25, alternative="greater").pvalue)
    sr = conv[(conv.test == "C2 last_point_best") & (conv.task == "superres") & (conv.metric == "test/set5/psnr")
              & (conv.setting == "mode=eval")]
    assert sr["value"].iloc[0] == 0.0 and sr["verdict"].iloc[0].startswith("not supported")
    pooled = conv[(conv.test == "C2 last_point_best") & (conv.task == "all")]
    # one pooled test per study, primary metrics: superres psnr 0/6 in eval mode and 0/1 in train mode (vgg16_bn),
    # autoencoder 5/5, delineation alexnet only (vgg16 has a RUNNING point)
    assert len(pooled) == 1
    assert pooled["n"].iloc[0] == 13 and pooled["value"].iloc[0] == pytest.approx(6 / 13)
    # depth correlation, pooled over the autoencoder's finished points
    exp = study["expected"]
    pts = [(n, p) for (t, m, n, ws, md, p) in exp if t == "autoencoder"]
    x = [round(p / 4 - 0.01 * len(n), 4) for n, p in pts]
    y = [np.mean(exp[("autoencoder", "probe/best_val_test_acc", n, "IMAGENET1K_V1", "eval", p)]) for n, p in pts]
    row = conv[(conv.test == "C2 depth_correlation") & (conv.task == "autoencoder") & (conv.scope == "pooled")]
    ref = stats.spearmanr(x, y)
    assert row["value"].iloc[0] == pytest.approx(ref.statistic) and row["p_value"].iloc[0] == pytest.approx(ref.pvalue)
    eff = conv[(conv.test == "C2 depth_correlation") & (conv.task == "autoencoder")
               & (conv.scope == "network efficientnet_b0")]
    assert eff["verdict"].iloc[0] == "insufficient data: n=3"


def test_batchnorm_and_mode_tests_equal_scipy(study):
    conv = _conv(study)
    exp = study["expected"]
    d = [np.mean(exp[("autoencoder", "probe/best_val_test_acc", "vgg16", "IMAGENET1K_V1", "eval", p)])
         - np.mean(exp[("autoencoder", "probe/best_val_test_acc", "vgg16_bn", "IMAGENET1K_V1", "eval", p)])
         for p in range(1, 5)]
    row = conv[(conv.test == "batchnorm vgg16_vs_vgg16_bn") & (conv.task == "autoencoder")]
    assert row["n"].iloc[0] == 4 and row["p_value"].iloc[0] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert row["value"].iloc[0] == pytest.approx(np.median(d))
    assert row["extra"].iloc[0]["wins"] == sum(v > 0 for v in d)
    mode = conv[(conv.test == "batchnorm eval_vs_train_mode") & (conv.metric == "test/set5/psnr")]
    d = [0.3 * p for p in range(1, 5)]  # eval - train, crafted
    assert mode["n"].iloc[0] == 4 and mode["p_value"].iloc[0] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert mode["extra"].iloc[0]["wins"] == 4
    lp = conv[(conv.test == "batchnorm eval_vs_train_mode") & (conv.metric == "test/lpips")]
    assert lp["verdict"].iloc[0] == "no difference in any pair"


def test_report_files_sections_warning_and_mlflow_run(study):
    out = study["out"]
    html = study["report"].read_text()
    md = (out / "report.md").read_text()
    for section in ("Coverage", "Average ranks", "Tables", "Convention tests", "C1: ImageNet accuracy",
                    "Claim: recipes", "C2: is the last point", "C2: relative depth", "vgg16 vs vgg16_bn",
                    "eval vs train mode", "Figures"):
        assert section in html and section in md, section
    assert html.index("WARNING") < html.index("Coverage") and "SYNTHETIC" in html
    assert "data:image/png;base64," in html
    figs = sorted((out / "figures").glob("*.png"))
    assert any(p.name.startswith("heatmap_") for p in figs) and any(p.name.startswith("accuracy_") for p in figs)
    assert any(p.name.startswith("depth_") for p in figs)
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in figs)
    assert (out / "tables" / "average_ranks.md").read_text().startswith("| network |")
    runs = study["client"].search_runs([study["exp"]], "tags.`dpl.kind` = 'analysis'")
    assert len(runs) == 1
    names = {a.path for a in study["client"].list_artifacts(runs[0].info.run_id)}
    assert {"report.html", "report.md", "results.csv", "conventions.json", "figures", "tables"} <= names


def test_unknown_experiment_lists_available(study, tmp_path, monkeypatch):
    from analysis.report import analyze
    from analysis.runs import ExperimentNotFound

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with pytest.raises(LookupError, match="crafted.*other-study|other-study.*crafted") as err:
        analyze(study["uri"], "no-such-study", tmp_path)
    assert isinstance(err.value, ExperimentNotFound) and "\n" not in str(err.value)


def test_random_weights_failed_without_metrics_and_empty_study(tmp_path, monkeypatch):
    """A smoke-like study: random weights (top-1 falls back to the architecture's, flagged), a FAILED run
    that never logged its directions, and an experiment with no trials at all must not crash."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("smoke", artifact_location=(tmp_path / "art").as_uri())
    client.create_experiment("empty", artifact_location=(tmp_path / "art2").as_uri())
    for pos in range(1, 5):
        failed = pos == 3
        run = client.create_run(exp, tags={
            "dpl.kind": "trial", "dpl.trial_key": f"k{pos}", "dpl.weights_random": "true",
            "dpl.synthetic_data": "false", "dpl.primary_metric": "test/quality",
            **({"dpl.error": "boom"} if failed else {"dpl.directions": '{"test/quality": "max"}'})})
        params = {"task": "delineation", "dataset": "mrd", "network": "vgg16", "point": f"features.{pos}",
                  "position": str(pos), "relative_depth": str(pos / 5), "arch_imagenet_top1": "71.59",
                  "weights": "random", "weights_set": "random", "mode": "eval", "family": "vgg"}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        if not failed:
            client.log_metric(run.info.run_id, "test/quality", 0.1 * pos, step=1)
        client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
    report = analyze(uri, "smoke", tmp_path / "out", log_to_mlflow=False)
    html = report.read_text()
    assert html.index("RANDOM") < html.index("Coverage")
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert df["top1_fallback"].all() and (df["imagenet_top1"] == 71.59).all()
    failed = df[df["status"] == "FAILED"]
    assert len(failed) == 1 and failed["metric"].iloc[0] == "test/quality" and failed["value"].isna().all()
    assert "FAILED" in (tmp_path / "out" / "tables" / "table_delineation_mrd_test_quality.md").read_text()
    conv = pd.read_json(tmp_path / "out" / "conventions.json")
    assert (conv[conv.test == "C1 imagenet_accuracy"]["verdict"].str.startswith("insufficient data")).all()
    empty = analyze(uri, "empty", tmp_path / "out2", log_to_mlflow=False)
    assert "Coverage" in empty.read_text()
    # a study that planned trials but ran none yet: every planned trial is "missing"
    planned = client.create_experiment("planned", artifact_location=(tmp_path / "art3").as_uri())
    parent = client.create_run(planned, tags={"dpl.kind": "study"}).info.run_id
    (tmp_path / "plan.json").write_text(json.dumps([{"trial_key": "a", "task": "superres", "dataset": "coco",
                                                     "network": "vgg16", "point": "features.3", "variant": "",
                                                     "seed": 0}]))
    client.log_artifact(parent, str(tmp_path / "plan.json"))
    analyze(uri, "planned", tmp_path / "out3", log_to_mlflow=False)
    cov = pd.read_csv(tmp_path / "out3" / "coverage.csv")
    assert cov["status"].tolist() == ["missing"]
