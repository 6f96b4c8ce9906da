"""What a person sees in the MLflow UI of a study: the page `dpl status` points at, in a real browser.

A small study store is made with the engine's own functions (spec, plan, experiment, study run, trial runs
keyed, named and described as the trainable does, metrics per epoch), `mlflow ui` serves it on loopback,
and headless Chromium renders the URL `dpl status` prints and one trial's page. Screenshots stay under the
test's tmp_path. MLflow 3 opens an experiment on its GenAI "Overview" unless the URL names the training
view, which is what the runs-table check guards.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from _browser import chromium, find_chromium, render, visible_text  # noqa: F401 - chromium is a fixture
from study import tracking
from study.plan import expand, save_plan
from study.spec import load_spec, save_spec
from trainables.config import trial_key

PLUGINS = str(Path(__file__).parent / "plugins")
EPOCHS = 3


def make_study(tmp_path: Path, monkeypatch) -> tuple[Path, str, dict[str, str]]:
    """A study dir as `dpl run` leaves it (spec, plan, store), two finished trials; (dir, exp id, name -> run id)."""
    monkeypatch.setenv("DPL_TASKS", "toy=toy_task")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(PLUGINS)
    from trainables.tasks import task_module

    data = tmp_path / "data"
    data.mkdir()
    spec_file = tmp_path / "ui.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "ui-study", "weights": "random", "networks": ["squeezenet1_1"], "points": ["p1", "p2"],
        "seeds": [0], "tasks": {"toy": {"data": str(data), "params": {"epochs": EPOCHS}}}, "resources": {"cpu": 1}}))
    spec = load_spec(spec_file, storage=tmp_path / "study")
    uri = tracking.default_tracking_uri(spec.study_dir)
    exp_id = tracking.init_experiment(uri, spec.name, spec.study_dir)
    save_spec(spec)
    plan = expand(spec)
    save_plan(spec, plan)
    c = tracking.client(uri)
    parent = tracking.parent_run(c, exp_id, spec.name)
    task = task_module("toy")
    names = {}
    for i, t in enumerate(plan):
        run_id = tracking.attach_trial_run(c, exp_id, trial_key(t.config), tracking.trial_run_name(t.config),
                                           {"mlflow.parentRunId": parent, tracking.STUDY_TAG: spec.name})
        tracking.log_params_once(c, run_id, {k: getattr(t.config, k) for k in tracking.CONFIG_PARAMS})
        for epoch in range(1, EPOCHS + 1):
            c.log_metric(run_id, "train/loss", 1.0 / (epoch + i), step=epoch)
        final = {"score": -0.25 - i, "final_loss": 0.25 + i}
        for k, v in final.items():
            c.log_metric(run_id, k, v, step=EPOCHS)
        tracking.describe_trial_run(c, run_id, t.config, final, task.PRIMARY_METRIC, task.METRICS)
        tracking.finish_run(c, run_id, tracking.FINISHED)
        names[tracking.trial_run_name(t.config)] = run_id
    tracking.describe_study_run(c, exp_id, parent, spec.name, [t.summary() for t in plan])
    c.set_terminated(parent, status=tracking.FINISHED)
    assert c.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    assert "| toy | 2 | 2 | 0 | 0 | 0 | 0 |" in c.get_run(parent).data.tags[tracking.NOTE_TAG].splitlines()
    return spec.study_dir, exp_id, names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def study_ui(tmp_path, monkeypatch):
    """(study dir, experiment id, {run name: run id}, UI base URL) with `mlflow ui` serving the store."""
    study_dir, exp_id, names = make_study(tmp_path, monkeypatch)
    port = free_port()
    command = tracking.ui_command(tracking.default_tracking_uri(study_dir)).split()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    log = open(tmp_path / "mlflow-ui.log", "w")
    proc = subprocess.Popen([mlflow, *command[1:], "--port", str(port), "--workers", "1"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                 # no GenAI job runner (8 processes, ~25 CPU-s to start; README, "Tracking")
                                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not start: {(tmp_path / 'mlflow-ui.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield study_dir, exp_id, names, base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def assert_training_view(text: str) -> None:
    """The side bar of MLflow's model-training view (Runs, Models, Model registry), not the GenAI one."""
    assert "Model registry" in text, text[:600]
    for genai in ("Observability", "Evaluation runs", "Playground"):
        assert genai not in text, f"GenAI page ({genai!r} in the side bar): {text[:600]}"


def printed_url(study_dir: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "study.cli", "status", str(study_dir)], capture_output=True,
                         text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    found = re.findall(r"http://\S+", out.stdout)
    assert len(found) == 1, out.stdout
    return found[0]


@pytest.mark.slow
def test_printed_url_opens_training_runs_with_readable_trial_pages(study_ui, chromium, tmp_path):
    study_dir, exp_id, names, base = study_ui
    url = printed_url(study_dir).replace(tracking.LOCAL_UI, base)  # the port this test's server got
    assert url == tracking.runs_page_url(base, exp_id)

    runs = visible_text(render(chromium, url, tmp_path / "runs.png"))
    assert_training_view(runs)
    for name in names:  # listed flat, not folded under the study run
        assert name in runs, f"runs table lacks trial run {name!r}: {runs[:1500]}"
    assert "study:ui-study" in runs
    assert (tmp_path / "runs.png").stat().st_size > 10_000

    name, run_id = sorted(names.items())[0]
    page = visible_text(render(chromium, tracking.run_page_url(base, exp_id, run_id), tmp_path / "trial.png"))
    assert_training_view(page)
    assert name in page
    assert "Task toy on noise, loss network squeezenet1_1 at point features.1, seed 0." in page, page[:2000]
    assert "Primary metric score (higher is better): -0.2500" in page, page[:2000]
    assert (tmp_path / "trial.png").stat().st_size > 10_000
