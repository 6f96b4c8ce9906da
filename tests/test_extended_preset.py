"""The `extended` preset: today's networks, the recipe pairs and the paper's anchors under the corrected protocol.

References are written here, not read from the preset: the extended table (trainables.network_registry), the
`corrected` preset's task settings (what "the corrected protocol" means), torchvision's own weight sets. The
proof at CI size runs the preset narrowed to four modern families on random weights, synthetic data and smoke
budgets through `dpl run` and `dpl analyze`, and reads the runs back from MLflow.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
import torchvision
import yaml

from study import tracking
from study.plan import expand, plan_report
from study.spec import load_spec, preset_path
from trainables.config import ConfigError
from trainables.network_registry import REGISTRY
from test_study import dpl, trial_runs

ANCHORS = {"vgg16", "alexnet", "resnet50"}
#: at least these (issue 24): the modern networks whose 4 default points the preset must cover
MODERN = {"convnext_tiny", "convnext_base", "efficientnet_v2_s", "efficientnet_v2_m", "regnet_y_1_6gf",
          "regnet_y_16gf", "vit_b_16", "swin_t", "swin_v2_b", "maxvit_t", "mobilenet_v3_large"}
TASKS = {"similarity": ["bapps"], "superres": ["coco"], "delineation": ["mass_roads"],
         "autoencoder": ["svhn", "stl10"]}


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> dict:
    spec = load_spec(preset="extended", storage=tmp_path_factory.mktemp("extended") / "study")
    return {"spec": spec, "report": plan_report(spec, compute=True)}


def test_modern_networks_each_with_four_points_on_every_benchmark(extended) -> None:
    rows = [r for r in extended["report"]["trials"] if r["network"] != "none"]
    points = defaultdict(set)
    for r in rows:
        points[(r["network"], r["task"], r["dataset"])].add(r["point"])
    networks = {n for n, _, _ in points}
    outside = networks - set(REGISTRY)
    assert len(outside) >= 12 and MODERN <= outside and ANCHORS <= networks
    for network in networks:
        for task, datasets in TASKS.items():
            for ds in datasets:
                assert len(points[(network, task, ds)]) == 4, (network, task, ds, points[(network, task, ds)])
    compute = extended["report"]["compute"]
    assert compute["total_gflops"] > 0
    per_task = compute["per_task"]
    assert {(t, d) for t, per in per_task.items() for d in per["per_dataset"]} == {(t, d) for t, ds in TASKS.items()
                                                                                  for d in ds}
    assert all(per["total_gflops"] > 0 for per in per_task.values())


def test_recipe_pairs_and_the_v1_anchor(extended) -> None:
    """Each architecture in `recipes` runs at every point with each of its weight sets, all real torchvision
    recipes at 224 px with distinct ImageNet top-1; every other network runs with IMAGENET1K_V1 (`imagenet`)."""
    recipes = extended["spec"].raw["recipes"]
    assert len(recipes) >= 6  # the recipe claim needs 6 architectures with pairs to reach p < 0.05 (docs/ANALYSIS.md)
    assert recipes["resnet50"][:2] == ["IMAGENET1K_V1", "IMAGENET1K_V2"]
    by_cell = defaultdict(set)
    for r in extended["report"]["trials"]:
        by_cell[(r["task"], r["dataset"], r["network"], r["point"])].add(r["weights"])
    for (task, ds, network, point), weights in by_cell.items():
        if network in recipes:
            assert weights == set(recipes[network]), (task, ds, network, point)
            enum = torchvision.models.get_model_weights(network)
            top1 = [enum[w].meta["_metrics"]["ImageNet-1K"]["acc@1"] for w in weights]
            assert len(set(top1)) == len(top1)
            assert all(enum[w].transforms.keywords["crop_size"] == 224 for w in weights)
        else:
            assert weights == {"imagenet"}, (network, weights)


def test_tasks_run_under_the_corrected_protocol(tmp_path, extended) -> None:
    """Every task setting of `extended` equals `corrected`'s; the loss-network conditions too, and `resize`
    (fixed-size networks at their own size) is the one addition."""
    corrected = load_spec(preset="corrected", storage=tmp_path / "c").raw
    raw = extended["spec"].raw
    assert raw["tasks"] == corrected["tasks"]
    for key in ("normalisation", "mode", "transform_input", "pixel_baseline", "seeds"):
        assert raw[key] == corrected[key], key
    assert raw["resize"] == "auto" and corrected["resize"] == "off"


def test_recipes_key_is_checked(tmp_path) -> None:
    base = yaml.safe_load(preset_path("smoke").read_text())

    def spec(**over) -> object:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**base, **over}))
        return load_spec(str(path), storage=tmp_path / "study")

    plan = expand(spec(recipes={"alexnet": ["IMAGENET1K_V1"]}))
    assert {t.config.weights for t in plan if t.config.network == "alexnet"} == {"IMAGENET1K_V1"}
    assert {t.config.weights for t in plan if t.config.network == "squeezenet1_1"} == {"random"}
    with pytest.raises(ConfigError, match=r"recipes: resnet50 is in no task's networks"):
        expand(spec(recipes={"resnet50": ["IMAGENET1K_V1"]}))
    with pytest.raises(ConfigError, match=r"recipes"):
        spec(recipes=["resnet50"])
    with pytest.raises(ConfigError, match=r"recipes.alexnet"):
        spec(recipes={"alexnet": []})


def narrowed_extended(tmp_path: Path) -> Path:
    """`extended` narrowed to CI size: four modern families at p1-p4, random weights, no recipes (random weights
    have none), synthetic data, smoke budgets cut further; similarity and one training task (delineation)."""
    raw = yaml.safe_load(preset_path("extended").read_text())
    raw.update(name="extended_ci", weights="random", recipes={}, pixel_baseline=False,
               networks=["swin_t", "vit_b_32", "convnext_tiny", "regnet_y_1_6gf"], points=["p1", "p2", "p3", "p4"],
               resources={"cpu": 1, "gpu": 0}, max_concurrent=2, ray={"num_cpus": 2})
    raw["tasks"] = {
        "similarity": {"data": "synthetic", "budget": "smoke", "variants": ["baseline"], "max_eval_pairs": 2},
        "delineation": {"data": "synthetic", "budget": "smoke", "epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
    }
    path = tmp_path / "extended_ci.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow  # a real study of 32 trials (four modern networks x 4 points x 2 tasks) and its analysis
def test_extended_at_ci_size_runs_and_is_analysed(tmp_path) -> None:
    study_dir = tmp_path / "study"
    run = dpl("run", str(narrowed_extended(tmp_path)), "--storage", str(study_dir), timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name("extended_ci")
    runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
    assert len(runs) == 32 and {r.info.status for r in runs} == {"FINISHED"}
    cells = {(r.data.params["task"], r.data.params["network"], r.data.params["point"]) for r in runs}
    assert len(cells) == 32
    layouts = {r.data.params["network"]: r.data.params["feature_layout"] for r in runs
               if r.data.params["point"] == "features.1" or r.data.params["network"] == "vit_b_32"}
    assert layouts["swin_t"].startswith("NHWC") and layouts["vit_b_32"].startswith("tokens")
    assert all(r.data.tags["dpl.weights_random"] == "true" for r in runs)
    assert len(trial_runs(study_dir, "extended_ci")) == 32

    out = tmp_path / "analysis"
    analyze = dpl("analyze", "--study-dir", str(study_dir), "--experiment", "extended_ci", "--out", str(out),
                  "--no-figures")
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    vgg = [c for c in claims.index if "VGG" in c]
    assert vgg and all(claims.loc[c, "verdict"].startswith("not applicable") for c in vgg)
    recipe = claims.loc["A more accurate recipe of the same architecture gives a better perceptual loss", "verdict"]
    assert recipe.startswith("not supported") or recipe.startswith("not applicable")


def test_resize_off_unquoted_in_yaml_is_off(tmp_path) -> None:
    """YAML reads `resize: off` as False; the spec (as the README writes it) still means `off`."""
    raw = yaml.safe_load(preset_path("smoke").read_text())
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw) + "resize: off\n")
    assert yaml.safe_load(path.read_text())["resize"] is False
    spec = load_spec(str(path), storage=tmp_path / "study")
    assert {t.config.resize for t in expand(spec)} == {"off"}
