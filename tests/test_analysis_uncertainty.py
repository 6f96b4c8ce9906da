"""Uncertainty of the ranking on planted truth: a seed bootstrap of the average rank and the epoch budget.

Stores are written to the public MLflow schema with `write_store` of the planted-truth tests (4 networks x 2
points x 2 benchmarks x 3 seeds, per-epoch histories at step = epoch). References written here: the planted
order, scipy.stats.rankdata, a flip probability enumerated by hand, and Kendall taus worked out by hand.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_analysis_planted import raw_frame, write_store

NETS = {"alexnet": 4.0, "vgg16": 3.0, "resnet18": 2.0, "densenet121": 1.0}  # planted true score: order a > b > c > d
#: task, dataset, primary metric, direction
BENCH = [("superres", "coco", "test/set5/psnr", "max"), ("autoencoder", "svhn", "test/loss", "min")]
EPOCHS = 5


def pattern(task: str, net: str, epoch: int) -> float:
    """Planted per-epoch true score. superres: reversed order at epochs 1-2, final order from 3 (settles at 3).
    autoencoder: reversed at 1, final at 2, vgg16/resnet18 swapped at 3 (tau = 4/6), final from 4 (settles at 4)."""
    s = NETS[net]
    if task == "superres":
        return -s if epoch <= 2 else s
    if epoch == 1:
        return -s
    if epoch == 3 and net in ("vgg16", "resnet18"):
        return 5.0 - s  # 3 <-> 2
    return s


def records(noise: float, rng: np.random.Generator, seeds: int = 3) -> list[dict]:
    """Trial records with final metrics and `history` {metric: {epoch: value}} (logged after write_store)."""
    out = []
    for task, ds, metric, direction in BENCH:
        for i, net in enumerate(NETS):
            for pos in (1, 2):
                offset = -0.4 if (pos == 1) == (i % 2 == 0) else 0.0  # the best point alternates by network
                for seed in range(seeds):
                    e = rng.normal(0, noise)
                    z = {ep: pattern(task, net, ep) + offset + e for ep in range(1, EPOCHS + 1)}
                    sign = 1.0 if direction == "max" else -1.0
                    hist = {metric: {ep: sign * v for ep, v in z.items()}}
                    if task == "superres":  # a per-epoch validation metric, named only by the run's tag
                        hist["val/planted"] = {ep: pattern(task, net, ep) + offset for ep in range(1, EPOCHS + 1)}
                    params = {"task": task, "dataset": ds, "network": net, "variant": "default", "seed": str(seed),
                              "normalisation": "none", "mode": "eval", "transform_input": "auto",
                              "budget": "smoke", "point": f"p{pos}", "position": str(pos),
                              "relative_depth": str(pos / 2), "weights": "imagenet", "weights_set": "IMAGENET1K_V1",
                              "imagenet_top1": str(60 + i), "arch_imagenet_top1": str(60 + i), "family": net,
                              "batch_norm": "False"}
                    tags = {"dpl.kind": "trial", "dpl.trial_key": f"{task}-{net}-{pos}-{seed}",
                            "dpl.primary_metric": metric, "dpl.directions": json.dumps({metric: direction}),
                            "dpl.weights_random": "false", "dpl.synthetic_data": "false",
                            # the task's declared EPOCH_METRIC (the autoencoder's is never logged here)
                            "dpl.epoch_metric": "val/planted" if task == "superres" else "val/loss",
                            "dpl.epoch_metric_mode": "max" if task == "superres" else "min"}
                    out.append({"params": params, "tags": tags, "metrics": {metric: hist[metric][EPOCHS]},
                                "history": hist})
    return out


def write(client, name: str, recs: list[dict], tmp, per_epoch: bool) -> None:
    """A store of `recs`: full histories (per_epoch) or the primary metric only once, at the last epoch."""
    from mlflow.entities import Metric

    exp = client.create_experiment(name, artifact_location=(tmp / name).as_uri())
    write_store(client, exp, [{**r, "metrics": {}} for r in recs])
    runs = {r.data.tags["dpl.trial_key"]: r.info.run_id
            for r in client.search_runs([exp], "tags.`dpl.kind` = 'trial'", max_results=1000)}
    for r in recs:
        hist = r["history"] if per_epoch else {
            m: ({EPOCHS: h[EPOCHS]} if m == r["tags"]["dpl.primary_metric"] else h) for m, h in r["history"].items()}
        client.log_batch(runs[r["tags"]["dpl.trial_key"]],
                         metrics=[Metric(m, v, 0, ep) for m, h in hist.items() for ep, v in h.items()])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two studies: `tight` (seed noise sd 0.001, full histories), `wide` (sd 3 against gaps of 1, primary
    metric logged once, the tagged epoch metric val/planted per epoch for superres only); tight also analysed end to end."""
    from mlflow.tracking import MlflowClient

    from analysis.report import analyze
    from analysis.runs import load_results

    tmp = tmp_path_factory.mktemp("uncertainty")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MPLCONFIGDIR", str(tmp / "mpl"))
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(tracking_uri=uri)
        write(client, "tight", records(0.001, np.random.default_rng(1)), tmp, per_epoch=True)
        write(client, "wide", records(3.0, np.random.default_rng(2)), tmp, per_epoch=False)
        analyze(uri, "tight", tmp / "out", log_to_mlflow=False, figures=False)
        yield {"client": client, "out": tmp / "out", "df": {n: load_results(client, n)[0] for n in ("tight", "wide")}}


@pytest.mark.slow
def test_tiny_seed_noise_gives_tight_intervals_and_distinguishable_neighbours(stores):
    from analysis.uncertainty import rank_intervals

    iv = rank_intervals(stores["df"]["tight"], n_boot=500)
    assert list(iv["network"]) == list(NETS)  # the planted order
    assert iv["avg_rank"].tolist() == pytest.approx(stats.rankdata([-s for s in NETS.values()]).tolist())
    assert (iv["ci_high"] - iv["ci_low"]).max() < 0.5
    assert (iv["max_seeds"] == 3).all()
    assert iv["distinguishable"].iloc[:-1].tolist() == [True] * 3 and iv["next_network"].iloc[-1] == ""
    # the report's interval table is the one computed here, point estimate = the average-rank table's
    written = pd.read_csv(stores["out"] / "rank_intervals.csv")
    avg = pd.read_csv(stores["out"] / "tables" / "average_ranks.csv").set_index("network")
    assert written.set_index("network")["avg_rank"].to_dict() == pytest.approx(avg["avg_rank"].to_dict())
    assert "## Uncertainty and budget" in (stores["out"] / "report.md").read_text()


@pytest.mark.slow
def test_large_seed_noise_gives_wide_intervals_and_indistinguishable_neighbours(stores):
    from analysis.uncertainty import rank_intervals

    iv = rank_intervals(stores["df"]["wide"], n_boot=500)
    assert (iv["ci_high"] - iv["ci_low"]).min() >= 1.0
    assert iv["distinguishable"].iloc[:-1].tolist() == [False] * 3
    assert (iv["flip_share"].iloc[:-1] > 0.05).all()


def test_flip_share_equals_a_hand_enumerated_probability():
    """Two networks, one point, one benchmark; seeds A = [0, 4] (mean 2), B = [1, 2] (mean 1.5): A ranks first.
    Resampled means: A in {0, 2, 4} w.p. 1/4, 1/2, 1/4; B in {1, 1.5, 2} likewise. B beats A iff A = 0 (1/4);
    they tie iff A = 2 and B = 2 (1/8, counted half): flip share = 1/4 + 1/16 = 5/16."""
    from analysis.runs import tidy
    from analysis.uncertainty import rank_intervals

    recs = []
    for net, values in (("alexnet", (0.0, 4.0)), ("vgg16", (1.0, 2.0))):
        for seed, v in enumerate(values):
            p = {"task": "superres", "dataset": "coco", "network": net, "variant": "default", "seed": str(seed),
                 "normalisation": "none", "mode": "eval", "transform_input": "auto", "budget": "smoke",
                 "point": "p1", "position": "1", "relative_depth": "1", "weights": "imagenet",
                 "weights_set": "IMAGENET1K_V1", "imagenet_top1": "70", "family": net, "batch_norm": "False"}
            t = {"dpl.trial_key": f"{net}-{seed}", "dpl.primary_metric": "psnr", "dpl.directions": '{"psnr": "max"}'}
            recs.append({"params": p, "tags": t, "metrics": {"psnr": v}})
    iv = rank_intervals(tidy(raw_frame(recs)), n_boot=8000, seed=3)
    assert list(iv["network"]) == ["alexnet", "vgg16"]
    assert iv["flip_share"].iloc[0] == pytest.approx(5 / 16, abs=4 * math.sqrt(5 / 16 * 11 / 16 / 8000))
    assert iv["distinguishable"].iloc[0] is False


@pytest.mark.slow
def test_budget_is_the_epoch_the_ranking_settles_at(stores):
    settle = pd.read_csv(stores["out"] / "budget.csv").set_index("benchmark")
    assert settle.loc["superres/coco", "settle_epoch"] == 3  # reversed until 2, final order from 3
    assert settle.loc["autoencoder/svhn", "settle_epoch"] == 4  # final at 2, tau 4/6 < 0.9 at 3, final from 4
    assert (settle["final_epoch"] == EPOCHS).all() and (settle["n_networks"] == 4).all()
    assert settle.loc["superres/coco", "share"] == pytest.approx(3 / 5)
    curve = pd.read_csv(stores["out"] / "budget_curve.csv")
    ae = curve[curve.benchmark == "autoencoder/svhn"].set_index("epoch")["tau"]
    assert ae.to_dict() == pytest.approx({1: -1.0, 2: 1.0, 3: 4 / 6, 4: 1.0, 5: 1.0})


@pytest.mark.slow
def test_budget_falls_back_to_the_validation_history_and_says_when_there_is_none(stores):
    from analysis.uncertainty import budget, read_histories

    settle, _ = budget(read_histories(stores["client"], stores["df"]["wide"]))
    settle = settle.set_index("benchmark")
    # the metric the run's `dpl.epoch_metric` tag names, whatever it is called (no table of task names)
    assert settle.loc["superres/coco", "metric"] == "val/planted" and settle.loc["superres/coco", "settle_epoch"] == 3
    assert "no per-epoch history" in settle.loc["autoencoder/svhn", "source"]
    assert math.isnan(settle.loc["autoencoder/svhn", "settle_epoch"])
