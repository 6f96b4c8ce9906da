"""The real pipeline as users run it: `dpl run --preset smoke` (narrowed with --set) under Ray and MLflow,
a relaunch, then `dpl analyze` on that very store.

The four real tasks run on synthetic data with random weights, one network and one point each. Beside
them, two trials go wrong on purpose, and the other trials go on:
  - autoencoder/stl10 points at an empty data directory: the trial raises a DataError and is FAILED with
    its one-line `dpl.error` (it fails again on the relaunch: the data is still missing);
  - a toy trial (tests/plugins/toy_task.py) kills its own worker at epoch 2 with `max_failures: 0`, one
    death more than allowed: the trial ends FAILED with a clear error, the study exits non-zero, and the
    relaunch retries it from its epoch-1 checkpoint (the toy kills only once).
The contract checked: every trial of plan.json (as the driver wrote it) appears in the analysis tables
with its task/dataset/network/point and, when FINISHED, the finite primary metric MLflow holds; coverage
lists every planned trial with the status and error MLflow holds; the report files are written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from study import tracking
from test_study import PLUGINS, dpl

pytestmark = pytest.mark.slow

#: Narrow the smoke preset to one network and one point per task, and add the two faults.
def smoke_args(study_dir: Path, empty: Path, toy_data: Path) -> list[str]:
    toy = {"data": str(toy_data), "budget": "smoke", "params": {"epochs": 2, "kill_at_epoch": 2}}
    return ["run", "--preset", "smoke", "--storage", str(study_dir),
            "--set", 'networks=["squeezenet1_1"]', "--set", 'points=["p1"]',
            "--set", 'tasks.autoencoder.networks=["squeezenet1_1"]',
            "--set", 'tasks.autoencoder.datasets=["svhn", "stl10"]',
            "--set", f'tasks.autoencoder.data={json.dumps({"svhn": "synthetic", "stl10": str(empty)})}',
            "--set", f"tasks.toy={json.dumps(toy)}", "--set", "max_failures=0"]


def mlflow_trials(study_dir: Path) -> dict[str, dict]:
    """trial key -> status, error tag, params and final metrics, straight from the study's MLflow store."""
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name("smoke")
    out = {}
    for run in tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'"):
        key = run.data.tags[tracking.KEY_TAG]
        assert key not in out, f"two runs for trial {key}"
        out[key] = {"status": run.info.status, "error": run.data.tags.get(tracking.ERROR_TAG, ""),
                    "params": run.data.params, "metrics": run.data.metrics, "run_id": run.info.run_id,
                    "primary": run.data.tags.get("dpl.primary_metric", "")}
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Launch, relaunch and analyse one narrowed smoke study; returns what each step left behind."""
    root = tmp_path_factory.mktemp("pipeline")
    study_dir, empty, toy_data = root / "study", root / "no-stl10-here", root / "toy"
    empty.mkdir()
    toy_data.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # the toy task is a plugin, as a user's own task would be
        mp.setenv("DPL_TASKS", "toy=toy_task")
        mp.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
        started = time.monotonic()
        first = dpl(*smoke_args(study_dir, empty, toy_data))
        after_first = mlflow_trials(study_dir)
        launched = time.monotonic()
        second = dpl(*smoke_args(study_dir, empty, toy_data))
        after_second = mlflow_trials(study_dir)
        relaunched = time.monotonic()
        analyze = dpl("analyze", "--study-dir", str(study_dir), "--experiment", "smoke", "--out", str(root / "report"))
        print(f"pipeline: launch {launched - started:.0f} s, relaunch {relaunched - launched:.0f} s, "
              f"analyze {time.monotonic() - relaunched:.0f} s", file=sys.stderr)
    plan = json.loads((study_dir / "plan.json").read_text())
    return {"first": first, "second": second, "analyze": analyze, "after_first": after_first,
            "after_second": after_second, "plan": plan, "report": root / "report", "toy_data": toy_data}


def by_task(plan: list[dict], trials: dict[str, dict]) -> dict[tuple[str, str], dict]:
    return {(p["task"], p["dataset"]): trials.get(p["trial_key"], {}) for p in plan}


def test_plan_is_the_narrowed_smoke_study(pipeline) -> None:
    cells = {(p["task"], p["dataset"], p["network"], p["point"]) for p in pipeline["plan"]}
    assert cells == {("similarity", "bapps", "squeezenet1_1", "features.1"),
                     ("superres", "coco", "squeezenet1_1", "features.1"),
                     ("delineation", "mass_roads", "squeezenet1_1", "features.1"),
                     ("autoencoder", "svhn", "squeezenet1_1", "features.1"),
                     ("autoencoder", "stl10", "squeezenet1_1", "features.1"),
                     ("toy", "noise", "squeezenet1_1", "features.1")}
    assert len(pipeline["plan"]) == 6


def test_failures_are_recorded_and_the_other_trials_go_on(pipeline) -> None:
    first = pipeline["first"]
    assert first.returncode == 1, first.stderr[-3000:]
    assert "0 already finished, 6 to run" in first.stderr and "2 trial(s) failed" in first.stderr
    trials = by_task(pipeline["plan"], pipeline["after_first"])
    assert list(pipeline["toy_data"].glob("killed-*")), "the toy worker was never killed"
    for cell in [("similarity", "bapps"), ("superres", "coco"), ("delineation", "mass_roads"), ("autoencoder", "svhn")]:
        assert trials[cell]["status"] == "FINISHED", (cell, trials[cell].get("error"))
    data_failure = trials[("autoencoder", "stl10")]
    assert data_failure["status"] == "FAILED"
    assert data_failure["error"].startswith("DataError: ") and "no-stl10-here" in data_failure["error"]
    dead = trials[("toy", "noise")]
    assert dead["status"] == "FAILED" and dead["error"] and "\n" not in dead["error"]
    assert "died" in dead["error"].lower() or "actor" in dead["error"].lower(), dead["error"]


def test_relaunch_retries_the_failed_trials_and_keeps_the_finished_ones(pipeline) -> None:
    second = pipeline["second"]
    assert second.returncode == 1, second.stderr[-3000:]  # stl10 still has no data
    trials = by_task(pipeline["plan"], pipeline["after_second"])
    errors = {cell: run["error"] for cell, run in trials.items() if run["error"]}
    assert "4 already finished, 2 to run" in second.stderr and "1 trial(s) failed" in second.stderr, (
        errors, second.stderr[-3000:])
    before, after = pipeline["after_first"], pipeline["after_second"]
    assert set(after) == set(before)  # no second run for any trial
    for key, run in before.items():
        if run["status"] == "FINISHED":
            assert after[key]["run_id"] == run["run_id"] and after[key]["metrics"] == run["metrics"]
    toy = trials[("toy", "noise")]
    assert toy["status"] == "FINISHED" and toy["error"] == "", toy
    assert toy["run_id"] == by_task(pipeline["plan"], before)[("toy", "noise")]["run_id"]  # the same run, resumed
    assert trials[("autoencoder", "stl10")]["status"] == "FAILED"
    assert trials[("autoencoder", "stl10")]["error"].startswith("DataError: ")


def test_analysis_reads_every_planned_trial_from_the_engines_store(pipeline) -> None:
    analyze = pipeline["analyze"]
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    report, trials = pipeline["report"], pipeline["after_second"]
    results = pd.read_csv(report / "results.csv", keep_default_na=False, na_values=[""])
    primary = results[results["primary"].astype(str) == "True"]
    for p in pipeline["plan"]:
        run = trials[p["trial_key"]]
        rows = primary[primary["trial_key"] == p["trial_key"]]
        assert len(rows) == 1, (p, rows)
        row = rows.iloc[0]
        for col in ("task", "dataset", "network", "point", "variant"):
            assert str(row[col]) == str(p[col]), (col, row[col], p[col])
        assert int(row["seed"]) == int(p["seed"])
        assert row["status"] == run["status"] and row["metric"] == run["primary"]
        if run["status"] == "FINISHED":
            assert math.isfinite(row["value"]) and row["value"] == pytest.approx(run["metrics"][run["primary"]])
        else:
            assert math.isnan(row["value"]) and row["error"] == run["error"]

    coverage = pd.read_csv(report / "coverage.csv", keep_default_na=False)
    assert sorted(coverage["trial_key"]) == sorted(p["trial_key"] for p in pipeline["plan"])
    assert coverage["planned"].astype(str).eq("True").all()
    status = dict(zip(coverage["trial_key"], coverage["status"]))
    assert status == {k: r["status"] for k, r in trials.items()}
    failed = coverage[coverage["status"] == "FAILED"]
    assert list(failed["task"] + "/" + failed["dataset"]) == ["autoencoder/stl10"]
    assert failed["error"].iloc[0] == trials[failed["trial_key"].iloc[0]]["error"]

    for name in ("report.md", "report.html", "cells.csv", "conventions.json"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    md = (report / "report.md").read_text()
    assert "RANDOM loss-network weights" in md and "SYNTHETIC data" in md
    assert "FAILED" in md and trials[failed["trial_key"].iloc[0]]["error"].split(": ", 1)[1][:60] in md
    assert list((report / "tables").glob("*.csv")), "no score tables written"


def test_analyze_points_the_study_runs_description_at_its_analysis_run(pipeline) -> None:
    """The study run's description (what the MLflow UI shows on it) links the newest analysis run right after
    `dpl analyze`, not only after the next `dpl run`."""
    study_dir = pipeline["report"].parent / "study"
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name("smoke")
    analyses = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'analysis'")
    assert len(analyses) == 1
    (study_run,) = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'study'")
    note = study_run.data.tags[tracking.NOTE_TAG]
    assert f"/runs/{analyses[0].info.run_id}" in note, note
