"""Recipes as an axis: one architecture and point held fixed, `weights` varied over torchvision's recipes.

Random weights cannot show this (they have no recipe), so each recipe is a seeded file in the torch hub cache
under torchvision's own file name (as in tests/test_weights_offline.py): the real download path reads it,
in the driver and in Ray's workers (they inherit TORCH_HOME). References: torchvision's recipe metadata,
the runs in MLflow, the files the analysis writes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torchvision

from study import tracking
from study.cli import main
from test_study import dpl, toy_task, write_spec  # noqa: F401 - toy_task: autouse fixture (DPL_TASKS)
from test_weights_offline import checkpoints, put_in_cache, seeded_state, urls_for_child_processes  # noqa: F401

RECIPES = ["IMAGENET1K_V1", "IMAGENET1K_V2"]


def top1(ws: str) -> float:
    return float(torchvision.models.ResNet50_Weights[ws].meta["_metrics"]["ImageNet-1K"]["acc@1"])


def recipe_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, name="recipes", networks=["resnet50"], points=["p1"], seeds=[0], weights=RECIPES)


def test_a_recipe_axis_plans_one_trial_per_recipe(tmp_path, capsys) -> None:
    assert main(["plan", str(recipe_spec(tmp_path)), "--json", "--no-compute"]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert sorted(t["weights"] for t in trials) == RECIPES
    assert {(t["network"], t["point"]) for t in trials} == {("resnet50", "relu")}
    assert len({t["trial_key"] for t in trials}) == 2


@pytest.mark.slow  # 223 s measured at load average ~30 on 2 cores: Ray start, two trials, the analysis
def test_a_recipe_axis_runs_and_every_run_records_its_recipe(tmp_path, checkpoints, monkeypatch) -> None:  # noqa: F811
    for i, ws in enumerate(RECIPES):
        put_in_cache(checkpoints, "resnet50", ws, seeded_state("resnet50", 20 + i), monkeypatch)
    urls_for_child_processes([("resnet50", ws) for ws in RECIPES], monkeypatch)
    study_dir = tmp_path / "study"
    run = dpl("run", str(recipe_spec(tmp_path)), "--storage", str(study_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name("recipes")
    runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
    by_recipe = {r.data.params["weights"]: r for r in runs}
    assert sorted(by_recipe) == RECIPES and all(r.info.status == "FINISHED" for r in runs)
    for ws, r in by_recipe.items():
        p = r.data.params
        assert p["weights_set"] == ws and float(p["imagenet_top1"]) == pytest.approx(top1(ws))
        assert float(p["arch_imagenet_top1"]) == pytest.approx(top1("IMAGENET1K_V1"))
        assert (p["network"], p["point"]) == ("resnet50", "relu") and r.data.tags["dpl.weights_random"] == "false"
    scores = [by_recipe[ws].data.metrics["score"] for ws in RECIPES]
    assert scores[0] != scores[1]  # two different weight files really ran

    out = tmp_path / "analysis"
    analyze = dpl("analyze", "--study-dir", str(study_dir), "--experiment", "recipes", "--out", str(out),
                  "--no-figures")
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    pairs = pd.read_csv(out / "recipe_pairs.csv")
    assert len(pairs) == 1 and pairs["recipes"].iloc[0] == "IMAGENET1K_V1 < IMAGENET1K_V2"
    assert pairs["agreement"].iloc[0] == (1.0 if scores[1] > scores[0] else -1.0)
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    verdict = claims.loc["A more accurate recipe of the same architecture gives a better perceptual loss", "verdict"]
    assert verdict.startswith("not supported") and "over 1 architecture" in verdict and "at least 6" in verdict
