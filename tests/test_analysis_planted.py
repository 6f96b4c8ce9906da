"""The analysis on planted truth: a 14-network x 4-point x 4-benchmark store written to the public MLflow
schema (README), with tasks that differ in variant and conditions and pixel baselines, must give one ranking
equal to a scipy recomputation and recover every planted effect; simulated null studies must keep each
test's false-positive rate within its nominal level.

Independent references: scipy.stats.rankdata / binomtest / permutation_test called here, the planted values
themselves, and the files the analysis writes.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

# the paper's 14 networks: ImageNet top-1 (V1), family, batch norm
NETS = {
    "alexnet": (56.52, "alexnet", False), "vgg11": (69.02, "vgg", False), "vgg16": (71.59, "vgg", False),
    "vgg16_bn": (73.36, "vgg", True), "vgg19": (72.38, "vgg", False), "resnet18": (69.76, "resnet", True),
    "resnet50": (76.13, "resnet", True), "resnext50_32x4d": (77.62, "resnet", True),
    "densenet121": (74.43, "densenet", True), "googlenet": (69.78, "googlenet", True),
    "inception_v3": (77.29, "inception", True), "squeezenet1_1": (58.18, "squeezenet", False),
    "efficientnet_b0": (77.69, "efficientnet", True), "efficientnet_b7": (84.12, "efficientnet", True),
}
PLAIN_VGG = {"vgg11", "vgg16", "vgg19"}
# benchmark: task, dataset, variant, normalisation, mode, {metric: direction}, primary, scale, pixel baseline
BENCHMARKS = [
    ("similarity", "bapps", "baseline", "imagenet", "eval", {"2afc/mean": "max", "jnd/pooled": "max"},
     "2afc/mean", 0.02, False),
    ("superres", "coco", "default", "none", "eval", {"test/set5/psnr": "max", "test/set5/lpips": "min"},
     "test/set5/psnr", 1.0, True),
    ("delineation", "mrd", "default", "none", "train", {"test/quality": "max", "test/correctness": "max"},
     "test/quality", 0.05, True),
    ("autoencoder", "svhn", "default", "imagenet", "train", {"probe/best_val_test_acc": "max"},
     "probe/best_val_test_acc", 0.03, True),
]
OFFSET = {"similarity": 0.7, "superres": 25.0, "delineation": 0.5, "autoencoder": 0.6}


#: the planted layer effect: position 3 best, the last one worst (so "later is better" is false)
LAYER = {1: -2.0, 2: 1.0, 3: 2.0, 4: -1.0}


_TOP1 = np.array([v[0] for v in NETS.values()])
TOP1_Z = dict(zip(NETS, (_TOP1 - _TOP1.mean()) / _TOP1.std()))


def planted(rng: np.random.Generator, vgg: float = 2.0, arch_sd: float = 0.3, layer: float = 1.0,
            point_sd: float = 0.3, shared_arch: bool = True, top1: float = 0.0,
            last: float = 0.0) -> dict[tuple[str, str, int], float]:
    """Standardised true score per (task, network, position): plain-VGG bonus + architecture effect (the
    same on every benchmark unless `shared_arch` is false) + `top1` x standardised ImageNet top-1 + layer
    effect (LAYER x layer, plus `last` at position 4) + a per-cell part (sd `point_sd`)."""
    out = {}
    layer_of = {p: layer * v + (last if p == 4 else 0.0) for p, v in LAYER.items()}

    def arch_effects() -> dict[str, float]:
        return {n: rng.normal(0, arch_sd) + (vgg if n in PLAIN_VGG else 0.0) + top1 * TOP1_Z[n] for n in NETS}

    arch = arch_effects()
    for task, *_ in BENCHMARKS:
        if not shared_arch:
            arch = arch_effects()
        for net in NETS:
            for pos in range(1, 5):
                out[(task, net, pos)] = arch[net] + layer_of[pos] + rng.normal(0, point_sd)
    return out


def metric_value(task: str, metric: str, direction: str, z: float, scale: float) -> float:
    """The logged value of a metric from the standardised score (a "min" metric falls as z rises)."""
    v = OFFSET[task] + scale * z
    return v if direction == "max" else 10.0 - v if metric.endswith("lpips") else -v


def trials(truth: dict, baseline_z: float = 0.0) -> list[dict]:
    """Trial records in the public schema: params, tags, final metrics."""
    out = []
    for task, ds, variant, norm, mode, dirs, primary, scale, has_base in BENCHMARKS:
        nets = [(n, pos) for n in NETS for pos in range(1, 5)] + ([("none", 0)] if has_base else [])
        for net, pos in nets:
            z = baseline_z if net == "none" else truth[(task, net, pos)]
            params = {"task": task, "dataset": ds, "network": net, "variant": variant, "seed": "0",
                      "normalisation": norm, "mode": mode, "transform_input": "auto", "budget": "smoke"}
            tags = {"dpl.kind": "trial", "dpl.trial_key": f"{task}-{net}-{pos}", "dpl.weights_random": "false",
                    "dpl.synthetic_data": "false", "dpl.primary_metric": primary, "dpl.directions": json.dumps(dirs)}
            if net == "none":
                params |= {"point": "none", "weights": "none"}
                tags["dpl.baseline"] = "pixel"
            else:
                top1, family, bn = NETS[net]
                params |= {"point": f"p{pos}", "position": str(pos), "relative_depth": str(pos / 4),
                           "weights": "imagenet", "weights_set": "IMAGENET1K_V1", "imagenet_top1": str(top1),
                           "arch_imagenet_top1": str(top1), "family": family, "batch_norm": str(bn),
                           "gflops_to_point": str(round(0.1 * pos * (1 + len(net) % 5), 3)),
                           "distance": "lpips" if task == "similarity" else "mse"}
            metrics = {m: metric_value(task, m, d, z, scale) for m, d in dirs.items()}
            out.append({"params": params, "tags": tags, "metrics": metrics})
    return out


def write_store(client, exp_id: str, records: list[dict], plan_extra: list[dict] = ()) -> str:
    """Write a study as the engine does: a parent run with plan.json, one FINISHED run per trial."""
    import tempfile
    from pathlib import Path

    from mlflow.entities import Metric, Param, RunTag

    parent = client.create_run(exp_id, tags={"dpl.kind": "study"}).info.run_id
    now = int(time.time() * 1000)
    for rec in records:
        run = client.create_run(exp_id, tags={**rec["tags"], "mlflow.parentRunId": parent})
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 1) for k, v in rec["metrics"].items()],
                         params=[Param(k, v) for k, v in rec["params"].items()],
                         tags=[RunTag("dpl.study", "planted")])
        client.set_terminated(run.info.run_id)
    plan = [{"trial_key": r["tags"]["dpl.trial_key"], **{k: r["params"][k] for k in
             ("task", "dataset", "network", "point", "variant", "seed")}} for r in records] + list(plan_extra)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "plan.json").write_text(json.dumps(plan))
        client.log_artifact(parent, str(Path(tmp) / "plan.json"))
    client.set_terminated(parent)
    return parent


def raw_frame(records: list[dict]) -> pd.DataFrame:
    """What reading the store should give: one raw row per trial x metric (written here, not read)."""
    rows = []
    for i, rec in enumerate(records):
        p, t = rec["params"], rec["tags"]
        top1 = float(p.get("imagenet_top1", "nan"))
        for m, d in json.loads(t["dpl.directions"]).items():
            rows.append({
                "run_id": f"r{i}", "trial_key": t["dpl.trial_key"], "status": "FINISHED", "start_time": i,
                "error": "", "task": p["task"], "dataset": p["dataset"], "variant": p["variant"], "seed": p["seed"],
                "network": p["network"], "weights": p["weights"], "weights_set": p.get("weights_set", ""),
                "weights_kind": "imagenet", "normalisation": p["normalisation"], "mode": p["mode"],
                "transform_input": p["transform_input"], "budget": p["budget"], "point": p["point"],
                "position": float(p.get("position", "nan")), "relative_depth": float(p.get("relative_depth", "nan")),
                "family": p.get("family", ""), "has_batch_norm": (p["batch_norm"] == "True") if "batch_norm" in p
                else None, "imagenet_top1": top1, "arch_imagenet_top1": top1, "top1_fallback": math.isnan(top1),
                "weights_random": False, "synthetic_data": False, "primary_metric": t["dpl.primary_metric"],
                "baseline_tag": t.get("dpl.baseline", ""), "gflops_to_point": float(p.get("gflops_to_point", "nan")),
                "distance": p.get("distance", ""),
                "metric": m, "direction": d, "value": rec["metrics"][m]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The planted store, analysed once; returns uri, out dir, truth, records, client, experiment id."""
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze

    tmp = tmp_path_factory.mktemp("planted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MPLCONFIGDIR", str(tmp / "mpl"))
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("planted", artifact_location=(tmp / "art").as_uri())
        truth = planted(np.random.default_rng(7))
        records = trials(truth, baseline_z=0.5)
        write_store(client, exp, records)
        out = tmp / "analysis"
        problems: list[str] = []
        analyze(uri, "planted", out, log_to_mlflow=False, problems=problems, figures=False)
        yield {"uri": uri, "out": out, "truth": truth, "records": records, "client": client, "exp": exp,
               "problems": problems, "tmp": tmp}


def _expected_ranking(truth: dict) -> pd.DataFrame:
    """Average rank recomputed with scipy: per benchmark rank the networks' best point (1 = best)."""
    cols = {}
    for task, ds, *_ in BENCHMARKS:
        best = {n: max(truth[(task, n, p)] for p in range(1, 5)) for n in NETS}
        names = list(best)
        cols[f"{task}/{ds}"] = dict(zip(names, stats.rankdata([-best[n] for n in names])))
    table = pd.DataFrame(cols)
    table["avg_rank"] = table.mean(axis=1)
    return table


def test_one_ranking_over_all_four_benchmarks_equals_scipy(store):
    avg = pd.read_csv(store["out"] / "tables" / "average_ranks.csv").set_index("network")
    want = _expected_ranking(store["truth"])
    assert set(avg.index) == set(NETS)  # the pixel baseline ("none") is never ranked
    assert (avg["n_benchmarks"] == 4).all()
    assert "setting" not in avg.columns
    for col in want.columns:
        assert avg.loc[list(NETS), col].to_numpy() == pytest.approx(want.loc[list(NETS), col].to_numpy()), col
    assert avg["avg_rank"].is_monotonic_increasing
    # all-metrics variant: every metric is the same planted score, so the ranks agree
    assert avg["avg_rank_all_metrics"].to_numpy() == pytest.approx(avg["avg_rank"].to_numpy())
    md = (store["out"] / "report.md").read_text()
    ranking = md[md.index("## Average ranks"):md.index("\n## ", md.index("## Average ranks"))]  # to the next section
    assert ranking.count("| network |") == 1 and "| none |" not in ranking


def test_settings_only_split_where_they_vary_within_a_benchmark(store):
    df = pd.read_csv(store["out"] / "results.csv")
    assert set(df["setting"]) == {"all"}  # variant, normalisation and mode differ only between benchmarks
    assert len(list((store["out"] / "tables").glob("table_*.csv"))) == 7  # one per task x metric


def test_store_to_dataframe_path_is_faithful(store):
    """Reading the store gives the frame written here directly, so simulations may skip MLflow."""
    from analysis.runs import aggregate_seeds, client_for, load_results, tidy

    df, _ = load_results(client_for(store["uri"]), "planted")
    direct = tidy(raw_frame(store["records"]))
    keys = ["task", "dataset", "metric", "network", "point"]
    cols = keys + ["value", "aligned", "setting", "is_baseline", "position", "imagenet_top1", "has_batch_norm",
                   "family", "primary", "gflops_to_point", "is_default_weights"]
    a = df[cols].sort_values(keys).reset_index(drop=True)
    b = direct[cols].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert aggregate_seeds(df)["aligned"].sum() == pytest.approx(aggregate_seeds(direct)["aligned"].sum())


def test_planted_claims_are_recovered(store):
    conv = pd.DataFrame(json.loads((store["out"] / "conventions.json").read_text()))
    vgg = conv[(conv.test == "claim vgg_without_bn_best") & (conv.task == "all")]
    assert len(vgg) == 1 and vgg["verdict"].iloc[0].startswith("supported")
    # reference: exact permutation test over all C(14, 3) = 364 label assignments, written here
    avg = pd.read_csv(store["out"] / "tables" / "average_ranks.csv")
    a = avg[avg.network.isin(PLAIN_VGG)]["avg_rank"].to_numpy()
    b = avg[~avg.network.isin(PLAIN_VGG)]["avg_rank"].to_numpy()
    ref = stats.permutation_test((a, b), lambda u, v: u.mean() - v.mean(), permutation_type="independent",
                                 alternative="less", vectorized=False, n_resamples=10**6)
    assert len(ref.null_distribution) == math.comb(14, 3)
    assert vgg["p_value"].iloc[0] == pytest.approx(ref.pvalue)
    assert vgg["value"].iloc[0] == pytest.approx(a.mean() - b.mean())
    layer = conv[(conv.test == "claim layer_vs_architecture")]
    assert len(layer) == 5 and layer["verdict"].str.startswith("supported").all()  # planted layer >> arch
    # variance share of one benchmark against a formula written here (one-way ANOVA sums of squares)
    m = np.array([[store["truth"][("superres", n, p)] for p in range(1, 5)] for n in NETS])
    between = 4 * ((m.mean(axis=1) - m.mean()) ** 2).sum() / ((m - m.mean()) ** 2).sum()
    sr = layer[layer.task == "superres"]
    assert sr["extra"].iloc[0]["share_arch"] == pytest.approx(between)
    assert sr["ci_low"].iloc[0] <= sr["value"].iloc[0] <= sr["ci_high"].iloc[0]
    worst, best = sr["extra"].iloc[0]["worst_arch"], sr["extra"].iloc[0]["best_arch"]
    mx = {n: max(store["truth"][("superres", n, p)] for p in range(1, 5)) for n in NETS}
    assert best == max(mx, key=mx.get) and worst == min(mx, key=mx.get)
    # no ImageNet effect was planted: C1 must not claim one on the average rank
    c1 = conv[(conv.test == "C1 imagenet_accuracy") & (conv.scope == "average rank")]
    assert len(c1) == 1 and not c1["verdict"].iloc[0].startswith("supported")


def test_pixel_baseline_beside_the_ranking(store):
    conv = pd.DataFrame(json.loads((store["out"] / "conventions.json").read_text()))
    beat = conv[conv.test == "claim beats_pixel_baseline"]
    truth = store["truth"]
    total = 0
    for task in ("superres", "delineation", "autoencoder"):
        k = sum(truth[(task, n, p)] > 0.5 for n in NETS for p in range(1, 5))  # baseline planted at z = 0.5
        row = beat[beat.task == task]
        assert row["n"].iloc[0] == 56 and row["value"].iloc[0] == pytest.approx(k / 56), task
        ci = stats.binomtest(k, 56).proportion_ci(method="exact")
        assert (row["ci_low"].iloc[0], row["ci_high"].iloc[0]) == pytest.approx((ci.low, ci.high))
        total += k
    pooled = beat[beat.task == "all"]
    assert pooled["n"].iloc[0] == 168 and pooled["value"].iloc[0] == pytest.approx(total / 168)
    assert "similarity" not in set(beat.task)  # no baseline there
    base = pd.read_csv(store["out"] / "tables" / "ranks.csv")
    assert "none" not in set(base["network"])


def test_report_opens_with_the_claims_tested(store):
    md = (store["out"] / "report.md").read_text()
    assert md.index("## The paper's claims, tested") < md.index("## Coverage")
    claims = pd.read_csv(store["out"] / "claims.csv")
    assert len(claims) == 6 and not claims["verdict"].str.startswith("untested").any()
    assert claims["verdict"].iloc[0].startswith("supported")  # VGG without BN, planted
    recipe = claims.set_index("claim").loc["A more accurate recipe of the same architecture gives a better "
                                           "perceptual loss", "verdict"]
    assert recipe.startswith("not applicable: no architecture ran with two or more ImageNet weight sets")
    assert claims["see"].notna().all()
    assert store["problems"] == []


def test_unreadable_plan_is_reported_not_swallowed(store, tmp_path, monkeypatch, capsys):
    """The README's copied-store case: the database travels, the artifacts do not. Trials planned but never
    started can then not be shown as missing: the CLI and the report must say so."""
    import shutil

    from study.cli import main

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("copied", artifact_location=(tmp_path / "art").as_uri())
    recs = [r for r in store["records"] if r["params"]["task"] == "autoencoder"][:8]
    never = {"trial_key": "never-started", "task": "autoencoder", "dataset": "svhn", "network": "vgg16",
             "point": "p9", "variant": "default", "seed": "0"}
    write_store(client, exp, recs, plan_extra=[never])
    assert main(["analyze", "--tracking-uri", uri, "--experiment", "copied", "--out", str(tmp_path / "ok"),
                 "--no-figures"]) == 0
    assert "warning" not in capsys.readouterr().err
    cov = pd.read_csv(tmp_path / "ok" / "coverage.csv")
    assert "missing" in set(cov["status"])
    shutil.rmtree(tmp_path / "art" / client.search_runs([exp], "tags.`dpl.kind` = 'study'")[0].info.run_id)
    assert main(["analyze", "--tracking-uri", uri, "--experiment", "copied", "--out", str(tmp_path / "out"),
                 "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert err.count("dpl: warning: plan.json of study run") == 1 and "NOT counted as missing" in err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "WARNING:** plan.json of study run" in md and md.index("plan.json") < md.index("## Coverage")


# ------------------------------------------------------------------------------------ simulated null studies
N_NULL = 200
#: architecture-effect sd that makes between- and within-architecture sums of squares equal in expectation
#: (14 networks, 4 points, within sd 1): the boundary of the layer-vs-architecture claim
EQUAL_SHARES_SD = math.sqrt((2 * 14 + 1) / (4 * 13))


@pytest.fixture(scope="module")
def template():
    """Seed-averaged cells of a planted study (primary metrics, loss networks), built via the DataFrame path
    whose faithfulness to the store is checked above, and the (task, network, position) of each row."""
    from analysis.runs import aggregate_seeds, tidy

    recs = trials(planted(np.random.default_rng(0)))
    for r in recs:
        primary = r["tags"]["dpl.primary_metric"]
        r["tags"]["dpl.directions"] = json.dumps({primary: json.loads(r["tags"]["dpl.directions"])[primary]})
    cells = aggregate_seeds(tidy(raw_frame(recs)))
    cells = cells[~cells["is_baseline"].astype(bool)].reset_index(drop=True)
    assert (cells["direction"] == "max").all()  # so value == aligned below
    return cells, list(zip(cells["task"], cells["network"], cells["position"].astype(int)))


def simulate(template, rng: np.random.Generator, **effects) -> pd.DataFrame:
    """A study's cells with scores drawn from `planted(rng, **effects)`."""
    cells, keys = template
    truth = planted(rng, **effects)
    z = np.array([truth[k] for k in keys])
    return cells.assign(value=z, aligned=z)


def null_pvalues(template, n: int = N_NULL, seed: int = 100) -> dict[str, list[float]]:
    """p-values (or rejections as 0/1) of every test over `n` null studies: no VGG, architecture, ImageNet or
    layer effect (scores i.i.d.), and, for the layer claim, the boundary of equal variance shares."""
    from analysis.claims import layer_claim, vgg_claim
    from analysis.conventions import depth_correlation, imagenet_correlation, last_point_test
    from analysis.tables import best_points

    out: dict[str, list[float]] = {k: [] for k in ("vgg", "c1", "c2_last", "c2_depth_network", "layer_point",
                                                   "layer_arch")}
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        cells = simulate(template, rng, vgg=0.0, arch_sd=0.0, layer=0.0, point_sd=1.0)
        best = best_points(cells)
        out["vgg"] += [r.p_value for r in vgg_claim(cells, best=best)]
        out["c1"] += [r.p_value for r in imagenet_correlation(cells, best, n_boot=1, per_position=False)
                      if r.statistic == "spearman"]
        out["c2_last"] += [r.p_value for r in last_point_test(best)]
        out["c2_depth_network"] += [r.p_value for r in depth_correlation(cells[cells["task"] == "superres"])
                                    if r.scope.startswith("network")]
        # independent architecture effects per benchmark: the pooled test (on the mean matrix) is then at the
        # same boundary as each benchmark's
        cells = simulate(template, rng, vgg=0.0, arch_sd=EQUAL_SHARES_SD, layer=0.0, point_sd=1.0,
                         shared_arch=False)
        for r in layer_claim(cells):
            out["layer_point"].append(float(r.verdict.startswith("supported")))
            out["layer_arch"].append(float(r.verdict.startswith("contradicted")))
    return out


def test_null_studies_keep_false_positive_rates_at_nominal_level(template):
    """Over 200 null studies, each test rejects at most 5 % of the time: the 99 % Clopper-Pearson interval of
    its rejection rate must reach down to 0.05 (a test at 8 % over 200 x k p-values would fail)."""
    res = null_pvalues(template)
    for name, ps in res.items():
        ps = np.asarray(ps, float)
        assert len(ps) >= N_NULL and np.isfinite(ps).all(), name
        k = int((ps < 0.05).sum()) if not name.startswith("layer") else int(ps.sum())
        ci = stats.binomtest(k, len(ps)).proportion_ci(confidence_level=0.99, method="exact")
        assert ci.low <= 0.05, f"{name}: {k}/{len(ps)} false positives"
    # the per-network Spearman over 4 points: exact p never reaches 0.05 (min 1/12), the asymptotic one would
    assert min(res["c2_depth_network"]) == pytest.approx(1 / 12)


# ------------------------------------------------------------------------------------------ dpl recommend
def _pareto_reference(points: list[tuple[float, float]]) -> set[int]:
    """Indices not dominated (higher score, lower cost), brute force."""
    keep = set()
    for i, (s, c) in enumerate(points):
        if not any((s2 >= s and c2 <= c and (s2 > s or c2 < c)) for j, (s2, c2) in enumerate(points) if j != i):
            keep.add(i)
    return keep


def test_recommend_on_planted_store(store, capsys):
    from study.cli import main

    assert main(["recommend", "--tracking-uri", store["uri"], "--experiment", "planted", "--task", "superres",
                 "--top", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    truth = store["truth"]
    cells = {(n, f"p{p}"): truth[("superres", n, p)] for n in NETS for p in range(1, 5)}
    order = sorted(cells, key=cells.get, reverse=True)
    assert [(r["network"], r["point"]) for r in answer["rows"]] == order[:3]
    assert answer["rows"][0]["score"] == pytest.approx(metric_value("superres", "test/set5/psnr", "max",
                                                                    cells[order[0]], 1.0))
    assert answer["metric"] == "test/set5/psnr" and answer["has_cost"] and answer["notes"] == []
    net, point = order[0]  # the line that builds the top pick, with the condition the benchmark ran under
    assert answer["python"] == (f'PerceptualLoss("{net}", points=["{point}"], distance="mse", '
                                f'weights="IMAGENET1K_V1", normalisation="none")')
    assert answer["rows"][0]["ci_low"] is None or answer["rows"][0]["ci_low"] != answer["rows"][0]["ci_low"] \
        or answer["rows"][0]["seeds"] == 1  # one seed: no interval
    gflops = {(r["params"]["network"], r["params"]["point"]): float(r["params"]["gflops_to_point"])
              for r in store["records"] if r["params"]["task"] == "superres" and r["params"]["network"] != "none"}
    keys = list(cells)
    want = {keys[i] for i in _pareto_reference([(cells[k], gflops[k]) for k in keys])}
    assert {(r["network"], r["point"]) for r in answer["pareto"]} == want
    assert answer["baseline"] == pytest.approx(metric_value("superres", "test/set5/psnr", "max", 0.5, 1.0))
    assert main(["recommend", "--tracking-uri", store["uri"], "--experiment", "planted", "--task", "nope"]) == 2
    assert "tasks there: autoencoder, delineation, similarity, superres" in capsys.readouterr().err


def test_recommend_says_random_weights_synthetic_data_and_missing_cost(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from study.cli import main

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("smoke", artifact_location=(tmp_path / "art").as_uri())
    recs = [r for r in trials(planted(np.random.default_rng(1))) if r["params"]["task"] == "delineation"][:8]
    for seed in ("0", "1"):  # two seeds: an interval appears
        for r in recs:
            r = json.loads(json.dumps(r))
            r["params"].pop("gflops_to_point", None)
            r["params"]["seed"] = seed
            r["tags"] |= {"dpl.weights_random": "true", "dpl.synthetic_data": "true",
                          "dpl.trial_key": r["tags"]["dpl.trial_key"] + seed}
            r["metrics"] = {m: v + 0.01 * int(seed) for m, v in r["metrics"].items()}
            from mlflow.entities import Metric, Param

            run = client.create_run(exp, tags=r["tags"])
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 1) for k, v in r["metrics"].items()],
                             params=[Param(k, v) for k, v in r["params"].items()])
            client.set_terminated(run.info.run_id)
    assert main(["recommend", "--tracking-uri", uri, "--experiment", "smoke", "--task", "delineation"]) == 0
    out = capsys.readouterr().out
    assert "NOTE: RANDOM loss-network weights" in out and "NOTE: SYNTHETIC data" in out
    assert "cost left out" in out and "gflops" not in out.split("NOTE: cost")[1].split("\n", 1)[1]
    assert main(["recommend", "--tracking-uri", uri, "--experiment", "smoke", "--task", "delineation",
                 "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["rows"][0]
    assert top["seeds"] == 2 and "gflops" not in top
    ref = stats.t.interval(0.95, 1, loc=top["score"], scale=np.std([top["score"] - 0.005, top["score"] + 0.005],
                                                                     ddof=1) / math.sqrt(2))
    assert (top["ci_low"], top["ci_high"]) == pytest.approx(ref)


# ------------------------------------------------------------------------------------- protocol comparison
def test_compare_two_protocols(store, tmp_path, monkeypatch):
    from analysis.report import analyze

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    client = store["client"]
    exp_b = client.create_experiment("planted-b", artifact_location=(store["tmp"] / "art-b").as_uri())
    truth_b = planted(np.random.default_rng(8), vgg=0.0)  # no VGG advantage under the second protocol
    write_store(client, exp_b, [r for r in trials(truth_b, 0.5) if r["params"]["task"] in ("superres", "autoencoder")])
    analyze(store["uri"], "planted", tmp_path, log_to_mlflow=False, figures=False, compare="planted-b")
    cmp = json.loads((tmp_path / "compare.json").read_text())
    corr = {r["benchmark"]: r for r in cmp["rank correlation"]}
    assert set(corr) == {"superres/coco", "autoencoder/svhn", "average rank"}  # benchmarks in both
    a = pd.read_csv(store["out"] / "tables" / "average_ranks.csv").set_index("network")
    rb = _expected_ranking({k: v for k, v in truth_b.items()})
    ref = stats.spearmanr(a.loc[list(NETS), "superres/coco"], rb.loc[list(NETS), "superres/coco"])
    assert corr["superres/coco"]["spearman"] == pytest.approx(ref.statistic)
    assert corr["superres/coco"]["n"] == 14
    moves = cmp["largest moves (average rank)"]
    assert len(moves) == 5 and abs(moves[0]["change"]) >= abs(moves[-1]["change"])
    verdicts = {r["claim"]: r for r in cmp["verdicts"]}
    vgg = verdicts["VGG networks without batch norm perform best"]
    assert vgg["verdict (planted)"].startswith("supported")
    md = (tmp_path / "report.md").read_text()
    top = md[md.index("## The paper's claims, tested"):md.index("## Protocol comparison")]
    assert "verdict (planted)" in top and "verdict (planted-b)" in top


def power_table(n: int = 200, seed: int = 5000) -> pd.DataFrame:
    """Rejection rate at alpha 0.05 of each test under a planted effect, 14 networks x 4 points x 4
    benchmarks, cell sd 1 (the numbers in docs/ANALYSIS.md). Run: python tests/test_analysis_planted.py"""
    from analysis.claims import layer_claim, vgg_claim
    from analysis.conventions import imagenet_correlation, last_point_test
    from analysis.runs import aggregate_seeds, tidy
    from analysis.tables import best_points

    recs = trials(planted(np.random.default_rng(0)))
    for r in recs:
        primary = r["tags"]["dpl.primary_metric"]
        r["tags"]["dpl.directions"] = json.dumps({primary: json.loads(r["tags"]["dpl.directions"])[primary]})
    cells = aggregate_seeds(tidy(raw_frame(recs)))
    cells = cells[~cells["is_baseline"].astype(bool)].reset_index(drop=True)
    tmpl = (cells, list(zip(cells["task"], cells["network"], cells["position"].astype(int))))
    base = {"vgg": 0.0, "arch_sd": 0.5, "layer": 0.0, "point_sd": 1.0}
    cases = [("VGG without BN best", "vgg", [0.5, 1.0, 2.0]), ("C1 ImageNet top-1", "top1", [0.25, 0.5, 1.0]),
             ("C2 last point best", "last", [0.5, 1.0, 2.0]), ("layer vs architecture", "layer", [0.5, 1.0, 1.5])]
    rows = []
    for name, key, sizes in cases:
        for size in sizes:
            hits = {"per benchmark": [], "pooled": []}
            for i in range(n):
                c = simulate(tmpl, np.random.default_rng(seed + i), **{**base, key: size})
                best = best_points(c)
                if key == "vgg":
                    res = vgg_claim(c, best=best)
                elif key == "top1":
                    res = [r for r in imagenet_correlation(c, best, n_boot=1, per_position=False)
                           if r.statistic == "spearman"]
                elif key == "last":
                    res = last_point_test(best)
                else:
                    res = layer_claim(c)
                for r in res:
                    ok = r.verdict.startswith("supported") and (r.value is None or r.value > 0 or key == "vgg")
                    hits["pooled" if r.task == "all" else "per benchmark"].append(ok)
            rows.append({"test": name, "effect": f"{key}={size}", **{k: float(np.mean(v)) for k, v in hits.items()}})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    import sys

    print(power_table(n=int(sys.argv[1]) if len(sys.argv) > 1 else 200).to_string(index=False))


@pytest.mark.parametrize("plain_index", [0, 3, 5])
def test_vgg_claim_with_a_single_plain_vgg_gets_the_exact_permutation_p(plain_index) -> None:
    """A study with one plain VGG (scipy's permutation_test refuses a group of one): the p-value is the
    enumeration of all n ways to pick the one 'VGG', written out here, and the verdict is not a crash."""
    import itertools

    from analysis.claims import _vgg_result

    ranks = pd.Series([1.0, 2.0, 3.5, 3.5, 5.0, 6.0], index=[f"net{i}" for i in range(6)])
    plain = np.zeros(6, bool)
    plain[plain_index] = True
    r = ranks.to_numpy()
    observed = r[plain].mean() - r[~plain].mean()
    diffs = [r[list(c)].mean() - np.delete(r, list(c)).mean() for c in itertools.combinations(range(6), 1)]
    expected = np.mean([d <= observed + 1e-12 for d in diffs])
    res = _vgg_result({"task": "t", "dataset": "d", "metric": "m", "setting": ""}, "per benchmark", ranks, plain, 0)
    assert res.value == pytest.approx(observed) and res.p_value == pytest.approx(expected)
    assert res.p_value == pytest.approx((np.sum(r <= r[plain_index])) / 6)  # the VGG's rank among all, over n
    # and the mirror case: every network but one is a plain VGG
    res = _vgg_result({"task": "t", "dataset": "d", "metric": "m", "setting": ""}, "per benchmark", ranks, ~plain, 0)
    diffs = [np.delete(r, list(c)).mean() - r[list(c)].mean() for c in itertools.combinations(range(6), 1)]
    assert res.p_value == pytest.approx(np.mean([d <= res.value + 1e-12 for d in diffs]))
