"""One real smoke study, launched as a user would and shared by the session (the `smoke_study` fixture).

A `dpl run` of the smoke preset costs ~45 s of CI; the console and pipeline tests check the same store, so
it runs once. Each step runs on first use, after the steps before it, into one study directory:

1. `demo`: `dpl run --preset smoke`, exactly as `make demo` runs it (8 trials, all FINISHED): its console
   is what tests/test_console.py reads;
2. `faults`: a relaunch that adds two ways to go wrong (tests/test_pipeline.py), and the other trials go on:
   - autoencoder/stl10 points at an empty data directory: its two trials (squeezenet1_1 and the pixel
     baseline) raise a DataError and are FAILED with their one-line `dpl.error`, again on every relaunch;
   - a toy trial (tests/plugins/toy_task.py, a plugin as a user's own task would be) kills its own worker
     at epoch 2 with `max_failures: 0`, one death more than allowed: FAILED with a clear error;
3. `relaunch`: the same command again: the failed trials are retried, the toy resumes from its epoch-1
   checkpoint (it kills only once) and finishes, stl10 fails again, the finished trials are untouched;
4. `analysis`: `dpl analyze` on that very store.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from study import tracking
from test_study import PLUGINS, dpl

EXPERIMENT = "smoke"


def toy_env() -> dict[str, str]:
    """The toy task is a plugin: DPL_TASKS names it, PYTHONPATH finds it."""
    return {"DPL_TASKS": "toy=toy_task", "PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}


def mlflow_trials(study_dir: Path) -> dict[str, dict[str, Any]]:
    """trial key -> status, error tag, params and final metrics, straight from the study's MLflow store."""
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    exp = c.get_experiment_by_name(EXPERIMENT)
    out: dict[str, dict[str, Any]] = {}
    for run in tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'"):
        key = run.data.tags[tracking.KEY_TAG]
        assert key not in out, f"two runs for trial {key}"
        out[key] = {"status": run.info.status, "error": run.data.tags.get(tracking.ERROR_TAG, ""),
                    "params": run.data.params, "metrics": run.data.metrics, "run_id": run.info.run_id,
                    "primary": run.data.tags.get("dpl.primary_metric", ""), "run_name": run.info.run_name}
    return out


class SmokeStudy:
    """The shared study; each property is one step (run once, on first use, after the steps before it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.study_dir = root / "study"
        self.empty = root / "no-stl10-here"
        self.toy_data = root / "toy"
        self.report = root / "report"
        self.seconds: dict[str, float] = {}

    def _timed(self, step: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = dpl(*args, env=env, timeout=600)
        self.seconds[step] = time.monotonic() - start
        print(f"smoke study: {step} {self.seconds[step]:.0f} s", file=sys.stderr)
        return result

    def fault_args(self) -> list[str]:
        """The smoke preset plus the two faults (one network and point each)."""
        self.empty.mkdir(exist_ok=True)
        self.toy_data.mkdir(exist_ok=True)
        toy = {"data": str(self.toy_data), "budget": "smoke", "networks": ["squeezenet1_1"], "points": ["p1"],
               "params": {"epochs": 2, "kill_at_epoch": 2}}
        return ["run", "--preset", "smoke", "--storage", str(self.study_dir),
                "--set", 'tasks.autoencoder.datasets=["svhn", "stl10"]',
                "--set", f'tasks.autoencoder.data={json.dumps({"svhn": "synthetic", "stl10": str(self.empty)})}',
                "--set", f"tasks.toy={json.dumps(toy)}", "--set", "max_failures=0"]

    @functools.cached_property
    def demo(self) -> dict[str, Any]:
        result = self._timed("demo", "run", "--preset", "smoke", "--storage", str(self.study_dir))
        return {"result": result, "lines": result.stderr.splitlines() + result.stdout.splitlines(),
                "trials": mlflow_trials(self.study_dir),
                "plan": json.loads((self.study_dir / "plan.json").read_text())}

    def _launch_with_faults(self, step: str) -> dict[str, Any]:
        result = self._timed(step, *self.fault_args(), env=toy_env())
        return {"result": result, "trials": mlflow_trials(self.study_dir),
                "plan": json.loads((self.study_dir / "plan.json").read_text())}

    @functools.cached_property
    def faults(self) -> dict[str, Any]:
        self.demo
        return self._launch_with_faults("faults")

    @functools.cached_property
    def relaunch(self) -> dict[str, Any]:
        self.faults
        return self._launch_with_faults("relaunch")

    @functools.cached_property
    def analysis(self) -> subprocess.CompletedProcess:
        self.relaunch
        return self._timed("analysis", "analyze", "--study-dir", str(self.study_dir), "--experiment", EXPERIMENT,
                           "--out", str(self.report), env=toy_env())
