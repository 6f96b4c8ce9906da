"""The MLflow side of a study: one experiment, a parent run, and exactly one run per trial key.

Ray's MLflowLoggerCallback keeps its trial -> run map in driver memory and creates a second run for every
trial resumed after a restore (reproduced here: 10 runs for 6 trials). Instead, each trial finds its run
by the `dpl.trial_key` tag, creates it only when absent, and sets it RUNNING again on resume; params are
logged once. The driver creates the store and the experiment before any trial starts, because several
processes creating a fresh SQLite schema at once fail.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from trainables.errors import UserError

KEY_TAG = "dpl.trial_key"
KIND_TAG = "dpl.kind"
STUDY_TAG = "dpl.study"
ERROR_TAG = "dpl.error"
FINISHED, FAILED, RUNNING, KILLED = "FINISHED", "FAILED", "RUNNING", "KILLED"
#: Fixed names of the public schema (README): these params are logged for every trial.
CONFIG_PARAMS = ("task", "dataset", "network", "point", "variant", "seed", "weights", "normalisation", "mode",
                 "transform_input", "budget")


def default_tracking_uri(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def artifact_location(study_dir: Path) -> str:
    return (Path(study_dir).resolve() / "mlartifacts").as_uri()


#: MLflow's own client settings for an authenticated server; the driver hands them to every worker
#: through Ray's runtime env (never through the trial config, which Tune writes into the study directory).
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")


def refuse_credentials_in_uri(tracking_uri: str) -> None:
    """A user:password@ in the URI would be copied into every trial's config (Tune writes it to disk),
    the saved spec and the driver's log lines; MLflow reads credentials from the environment instead."""
    if urllib.parse.urlparse(tracking_uri).password is not None:
        raise UserError(
            "the tracking URI carries a password, which would be written into the study's files and logs: "
            "use http(s)://host:port and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD "
            "(or MLFLOW_TRACKING_TOKEN) in the environment instead"
        )


def client(tracking_uri: str):  # -> MlflowClient (import kept lazy: mlflow costs 2 s)
    refuse_credentials_in_uri(tracking_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Refuse an http(s) tracking server that does not answer, before any trial starts."""
    refuse_credentials_in_uri(tracking_uri)
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(
            f"MLflow tracking server {tracking_uri} is not reachable ({exc.strerror or exc}); start it "
            f"(see cluster/README.md) or drop --tracking-uri to use the study's own SQLite store"
        ) from exc


def is_new_local_store(tracking_uri: str) -> bool:
    """A SQLite store that does not exist yet: creating it (MLflow's schema migrations) takes seconds."""
    return tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists()


def init_experiment(tracking_uri: str, name: str, study_dir: Path) -> str:
    """Create (once, on the driver) the store and the study's experiment; returns its id."""
    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            probe = db.parent / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"cannot write to the study directory {db.parent} ({exc.strerror}); choose another with --storage"
            ) from exc
    c = client(tracking_uri)
    try:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            location = artifact_location(study_dir) if not tracking_uri.startswith("http") else None
            return c.create_experiment(name, artifact_location=location, tags={STUDY_TAG: name})
    except Exception as exc:  # noqa: BLE001 - mlflow raises many kinds for an unusable store
        if isinstance(exc, UserError):
            raise
        raise UserError(f"MLflow store {tracking_uri} is not usable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI or rename the study")
    return exp.experiment_id


def find_runs(c: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_by_key(c: Any, experiment_id: str) -> dict[str, Any]:
    """trial key -> its run (if a key somehow has several, the FINISHED/newest one wins)."""
    out: dict[str, Any] = {}
    for run in find_runs(c, experiment_id, f"tags.`{KIND_TAG}` = 'trial'"):
        key = run.data.tags.get(KEY_TAG)
        prev = out.get(key)
        if prev is None or (run.info.status == FINISHED) > (prev.info.status == FINISHED):
            out[key] = run
    return out


def parent_run(c: Any, experiment_id: str, name: str) -> str:
    """The study's parent run id (created once)."""
    found = find_runs(c, experiment_id, f"tags.`{KIND_TAG}` = 'study'")
    if found:
        return found[0].info.run_id
    run = c.create_run(experiment_id, run_name=f"study:{name}", tags={KIND_TAG: "study", STUDY_TAG: name})
    return run.info.run_id


def log_plan(c: Any, parent_id: str, plan: list[dict[str, Any]], coverage: dict[str, Any] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "plan.json").write_text(json.dumps(plan, indent=1))
        c.log_artifact(parent_id, str(Path(tmp) / "plan.json"))
        if coverage is not None:
            (Path(tmp) / "coverage.json").write_text(json.dumps(coverage, indent=1))
            c.log_artifact(parent_id, str(Path(tmp) / "coverage.json"))
    c.set_tag(parent_id, "dpl.planned", str(len(plan)))


def attach_trial_run(c: Any, experiment_id: str, key: str, run_name: str, tags: dict[str, str]) -> str:
    """The run for `key`: found by tag and set RUNNING again, or created. Never a second one."""
    found = find_runs(c, experiment_id, f"tags.`{KEY_TAG}` = '{key}'")
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status=RUNNING)
        c.set_tag(run_id, ERROR_TAG, "")
        return run_id
    run = c.create_run(experiment_id, run_name=run_name, tags={KEY_TAG: key, KIND_TAG: "trial", **tags})
    return run.info.run_id


def log_params_once(c: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params not yet on the run; MLflow refuses a param re-logged with another value."""
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    new = [Param(k, _param_value(v)) for k, v in params.items() if v is not None and k not in existing]
    for i in range(0, len(new), 100):
        c.log_batch(run_id, params=new[i : i + 100])


def _param_value(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text[:6000]


def finish_run(c: Any, run_id: str, status: str, error: str = "") -> None:
    if error:
        c.set_tag(run_id, ERROR_TAG, error.splitlines()[0][:4000] if error else "")
    c.set_terminated(run_id, status=status)
