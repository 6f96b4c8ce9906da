"""What a person reads in the MLflow UI: run names, descriptions, and the printed way to open the UI.

Expected strings are written out by hand, so a changed format has to be changed here on purpose.
"""
from __future__ import annotations

from types import SimpleNamespace

from study import tracking
from trainables.config import TrialConfig


def sr_config(**kw) -> TrialConfig:
    return TrialConfig(task="superres", network="vgg16", points=("features.22",), dataset="coco", seed=0, **kw)


def test_trial_run_name_reads_task_network_point_seed():
    assert tracking.trial_run_name(sr_config()) == "superres/coco vgg16@features.22 seed0"
    assert tracking.trial_run_name(sr_config(variant="default")) == "superres/coco vgg16@features.22 seed0"


def test_trial_run_name_shows_variant_and_non_default_conditions():
    config = TrialConfig(task="similarity", network="alexnet", points=("features.1", "features.4"),
                         dataset="bapps", variant="lin", seed=2, weights="random", mode="train")
    assert tracking.trial_run_name(config) == \
        "similarity/bapps alexnet@features.1+features.4 lin weights=random mode=train seed2"
    pixel = TrialConfig(task="autoencoder", network="none", points=(), dataset="svhn", seed=1)
    assert tracking.trial_run_name(pixel) == "autoencoder/svhn none@pixel seed1"


def test_trial_description_states_task_network_point_conditions_and_primary():
    text = tracking.trial_description(sr_config(), {"test/set5/psnr": 27.123456, "test/set5/ssim": 0.81},
                                      "test/set5/psnr", {"test/set5/psnr": "max"})
    assert text == "\n".join([
        "**Task** superres on coco, **loss network** vgg16 at **point** features.22, seed 0.",
        "",
        "Primary metric `test/set5/psnr` (higher is better): **27.1235**",
        "",
        "| condition | value |",
        "|---|---|",
        "| variant | (default) |",
        "| weights | imagenet |",
        "| normalisation | imagenet |",
        "| mode | eval |",
        "| transform_input | auto |",
        "| resize | off |",
        "| budget | smoke |",
        "",
        "| final metric | value |",
        "|---|---|",
        "| test/set5/psnr | 27.1235 |",
        "| test/set5/ssim | 0.8100 |",
    ])


def test_trial_description_says_when_primary_is_missing():
    text = tracking.trial_description(sr_config(), {}, "test/set5/psnr")
    assert "Primary metric `test/set5/psnr`: not reported (the trial did not finish)" in text.splitlines()


def test_trial_description_of_a_trial_stopped_early_says_so():
    from study.halving import Halving, stop_sentence

    h = Halving("superres", "coco", "val/psnr", "max", 1, 3, 9, 56, 56, 1)
    text = tracking.trial_description(sr_config(), {}, "test/set5/psnr", stopped=stop_sentence(3, 21.51234, h))
    assert ("**Stopped early by the halving search at epoch 3 of 9: `val/psnr` = 21.51 was below the rung's "
            "cutoff.** Primary metric `test/set5/psnr`: not measured (stopped before the test)") in text.splitlines()


def _run(status, task, tags=None):
    return SimpleNamespace(info=SimpleNamespace(status=status),
                           data=SimpleNamespace(params={"task": task}, tags=tags or {}))


def test_coverage_by_task_counts_plan_and_extra_runs():
    """A FINISHED run a halving search stopped (tag `dpl.stopped_early`) counts as stopped, not finished."""
    plan = [{"trial_key": k, "task": "toy"} for k in "abd"] + [{"trial_key": "c", "task": "sr"}]
    runs = {"a": _run("FINISHED", "toy"), "c": _run("FAILED", "sr"), "x": _run("RUNNING", "toy"),
            "d": _run("FINISHED", "toy", {tracking.STOPPED_TAG: "3"})}
    assert tracking.coverage_by_task(plan, runs) == {
        "toy": {"planned": 4, "finished": 1, "stopped": 1, "running": 1, "failed": 0, "pending": 1},
        "sr": {"planned": 1, "finished": 0, "stopped": 0, "running": 0, "failed": 1, "pending": 0},
        "total": {"planned": 5, "finished": 1, "stopped": 1, "running": 1, "failed": 1, "pending": 1},
    }


def test_study_description_has_coverage_table_and_report_link_or_how_to_make_it():
    cov = {"toy": {"planned": 2, "finished": 2, "stopped": 0, "running": 0, "failed": 0, "pending": 0}}
    without = tracking.study_description("demo", cov, "7")
    assert without == "\n".join([
        "**Study** demo: one child run per trial.",
        "",
        "| task | planned | finished | stopped | running | failed | pending |",
        "|---|---|---|---|---|---|---|",
        "| toy | 2 | 2 | 0 | 0 | 0 | 0 |",
        "",
        "No report yet: `dpl analyze --experiment demo --out DIR` tests the conventions and logs its report "
        "here as an analysis run.",
    ])
    with_report = tracking.study_description("demo", cov, "7", analysis_run_id="abc123")
    assert with_report.splitlines()[-1] == (
        "Report: [analysis run](/#/experiments/7/runs/abc123?workflowType=machine_learning) "
        "(`report.html` in its artifacts).")


def test_ui_hint_local_store_and_server():
    assert tracking.ui_hint("sqlite:////s/demo/mlflow.db", "3") == [
        "open the MLflow UI: mlflow ui --backend-store-uri sqlite:////s/demo/mlflow.db --host 127.0.0.1",
        "then the study's runs (training view): "
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true",
    ]
    assert tracking.ui_hint("http://head:5000/", "12") == [
        "then the study's runs (training view): http://head:5000/#/experiments/12/runs?workflowType=machine_learning"
        "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true",
    ]
    assert tracking.ui_hint("sqlite:////s/demo/mlflow.db", None) == [
        "open the MLflow UI: mlflow ui --backend-store-uri sqlite:////s/demo/mlflow.db --host 127.0.0.1"]


def test_run_page_url_names_the_training_view():
    assert tracking.run_page_url("http://127.0.0.1:5000/", "3", "r1") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/r1?workflowType=machine_learning"
