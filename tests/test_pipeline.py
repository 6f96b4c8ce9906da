"""The real pipeline as users run it: `dpl run --preset smoke` under Ray and MLflow, a relaunch that adds two
faults, a relaunch that retries them, then `dpl analyze` on that very store (the session's shared smoke
study, tests/_smoke_study.py, whose first launch tests/test_console.py reads).

The four real tasks run on synthetic data with random weights. Beside them, trials go wrong on purpose, and
the other trials go on:
  - autoencoder/stl10 points at an empty data directory: its two trials raise a DataError and are FAILED
    with their one-line `dpl.error` (they fail again on the relaunch: the data is still missing);
  - a toy trial (tests/plugins/toy_task.py) kills its own worker at epoch 2 with `max_failures: 0`, one
    death more than allowed: the trial ends FAILED with a clear error, the study exits non-zero, and the
    relaunch retries it from its epoch-1 checkpoint (the toy kills only once).
The contract checked: every trial of plan.json (as the driver wrote it) appears in the analysis tables
with its task/dataset/network/point and, when FINISHED, the finite primary metric MLflow holds; coverage
lists every planned trial with the status and error MLflow holds; the report files are written.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from study import tracking

pytestmark = pytest.mark.slow

#: the smoke preset's cells (study/presets/smoke.yaml), written out here, and the three the faults add
SMOKE_CELLS = {("similarity", "bapps", "squeezenet1_1", "features.1"),
               ("similarity", "bapps", "squeezenet1_1", "features.12"),
               ("similarity", "bapps", "alexnet", "features.1"), ("similarity", "bapps", "alexnet", "features.11"),
               ("superres", "coco", "squeezenet1_1", "features.1"),
               ("delineation", "mass_roads", "squeezenet1_1", "features.1"),
               ("autoencoder", "svhn", "squeezenet1_1", "features.1"), ("autoencoder", "svhn", "none", "")}
FAULT_CELLS = {("autoencoder", "stl10", "squeezenet1_1", "features.1"), ("autoencoder", "stl10", "none", ""),
               ("toy", "noise", "squeezenet1_1", "features.1")}


@pytest.fixture(scope="module")
def pipeline(smoke_study):
    """What each step of the shared smoke study left behind."""
    return {"demo": smoke_study.demo, "first": smoke_study.faults["result"],
            "second": smoke_study.relaunch["result"], "analyze": smoke_study.analysis,
            "after_demo": smoke_study.demo["trials"], "after_first": smoke_study.faults["trials"],
            "after_second": smoke_study.relaunch["trials"], "plan": smoke_study.relaunch["plan"],
            "report": smoke_study.report, "toy_data": smoke_study.toy_data, "study_dir": smoke_study.study_dir}


def by_cell(plan: list[dict], trials: dict[str, dict]) -> dict[tuple[str, str, str, str], dict]:
    """(task, dataset, network, point) -> that trial's run, as `mlflow_trials` read it ({} if it has none)."""
    return {(p["task"], p["dataset"], p["network"], p["point"]): trials.get(p["trial_key"], {}) for p in plan}


def test_plan_is_the_smoke_study_plus_the_faults(pipeline) -> None:
    assert {(p["task"], p["dataset"], p["network"], p["point"]) for p in pipeline["demo"]["plan"]} == SMOKE_CELLS
    cells = [(p["task"], p["dataset"], p["network"], p["point"]) for p in pipeline["plan"]]
    assert len(cells) == len(set(cells)) == 11 and set(cells) == SMOKE_CELLS | FAULT_CELLS
    # the faults' relaunch kept the first launch's trial keys (the same trials, not new ones)
    assert {p["trial_key"] for p in pipeline["demo"]["plan"]} <= {p["trial_key"] for p in pipeline["plan"]}


def test_failures_are_recorded_and_the_other_trials_go_on(pipeline) -> None:
    first = pipeline["first"]
    assert first.returncode == 1, first.stderr[-3000:]
    assert "8 already finished, 3 to run" in first.stderr and "3 trial(s) failed" in first.stderr, first.stderr[-3000:]
    trials = by_cell(pipeline["plan"], pipeline["after_first"])
    assert list(pipeline["toy_data"].glob("killed-*")), "the toy worker was never killed"
    for cell in SMOKE_CELLS:  # finished by the first launch and left alone
        assert trials[cell]["status"] == "FINISHED", (cell, trials[cell].get("error"))
        assert trials[cell]["run_id"] == by_cell(pipeline["plan"], pipeline["after_demo"])[cell]["run_id"]
    for network, point in (("squeezenet1_1", "features.1"), ("none", "")):
        data_failure = trials[("autoencoder", "stl10", network, point)]
        assert data_failure["status"] == "FAILED"
        assert data_failure["error"].startswith("DataError: ") and "no-stl10-here" in data_failure["error"]
    dead = trials[("toy", "noise", "squeezenet1_1", "features.1")]
    assert dead["status"] == "FAILED" and dead["error"] and "\n" not in dead["error"]
    assert "died" in dead["error"].lower() or "actor" in dead["error"].lower(), dead["error"]


def test_relaunch_retries_the_failed_trials_and_keeps_the_finished_ones(pipeline) -> None:
    second = pipeline["second"]
    assert second.returncode == 1, second.stderr[-3000:]  # stl10 still has no data
    trials = by_cell(pipeline["plan"], pipeline["after_second"])
    errors = {cell: run["error"] for cell, run in trials.items() if run["error"]}
    assert "8 already finished, 3 to run" in second.stderr and "2 trial(s) failed" in second.stderr, (
        errors, second.stderr[-3000:])
    before, after = pipeline["after_first"], pipeline["after_second"]
    assert set(after) == set(before)  # no second run for any trial
    for key, run in before.items():
        if run["status"] == "FINISHED":
            assert after[key]["run_id"] == run["run_id"] and after[key]["metrics"] == run["metrics"]
    toy_cell = ("toy", "noise", "squeezenet1_1", "features.1")
    toy = trials[toy_cell]
    assert toy["status"] == "FINISHED" and toy["error"] == "", toy
    assert toy["run_id"] == by_cell(pipeline["plan"], before)[toy_cell]["run_id"]  # the same run, resumed
    for network, point in (("squeezenet1_1", "features.1"), ("none", "")):
        assert trials[("autoencoder", "stl10", network, point)]["status"] == "FAILED"
        assert trials[("autoencoder", "stl10", network, point)]["error"].startswith("DataError: ")


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
            written = "" if pd.isna(row[col]) else str(row[col])  # the pixel baseline has no point: ""
            assert written == str(p[col]), (col, row[col], p[col])
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
    assert list(failed["task"] + "/" + failed["dataset"]) == ["autoencoder/stl10"] * 2
    for key, error in zip(failed["trial_key"], failed["error"]):
        assert error == trials[key]["error"]

    for name in ("report.md", "report.html", "cells.csv", "conventions.json"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    md = (report / "report.md").read_text()
    assert "RANDOM loss-network weights" in md and "SYNTHETIC data" in md
    assert "FAILED" in md and trials[failed["trial_key"].iloc[0]]["error"].split(": ", 1)[1][:60] in md
    assert list((report / "tables").glob("*.csv")), "no score tables written"


def test_analyze_points_the_study_runs_description_at_its_analysis_run(pipeline) -> None:
    """The study run's description (what the MLflow UI shows on it) links the newest analysis run right after
    `dpl analyze`, not only after the next `dpl run`."""
    study_dir = pipeline["study_dir"]
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name("smoke")
    analyses = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'analysis'")
    assert len(analyses) == 1
    (study_run,) = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'study'")
    note = study_run.data.tags[tracking.NOTE_TAG]
    assert f"/runs/{analyses[0].info.run_id}" in note, note
