"""The MLflow side of a study: one experiment, a parent run, and exactly one run per trial key.

Ray's MLflowLoggerCallback keeps its trial -> run map in driver memory and creates a second run for every
trial resumed after a restore (reproduced here: 10 runs for 6 trials). Instead, each trial finds its run
by the `dpl.trial_key` tag, creates it only when absent, and sets it RUNNING again on resume; params are
logged once. The driver creates the store and the experiment before any trial starts, because several
processes creating a fresh SQLite schema at once fail.
"""
from __future__ import annotations

import json
import logging
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
#: MLflow's own tags: a run's description (markdown, shown on its page) and its display name.
NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"
#: MLflow 3's UI opens an experiment on its GenAI pages unless it is told this is model training; the tag
#: alone does not change the landing page, so the printed URL also names the training view explicitly.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
UI_VIEW_QUERY = "workflowType=machine_learning"
#: Sorted by run name, the runs table lists the trial runs flat (sorted by date, MLflow folds them under the
#: study run, two clicks away), in the order task/dataset network@point.
RUNS_ORDER_QUERY = "orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"
LOCAL_UI = "http://127.0.0.1:5000"
#: Conditions a trial run's name shows only when they differ from these defaults (its description lists all).
NAME_DEFAULTS = {"weights": "imagenet", "normalisation": "imagenet", "mode": "eval", "transform_input": "auto",
                 "resize": "off"}
FINISHED, FAILED, RUNNING, KILLED = "FINISHED", "FAILED", "RUNNING", "KILLED"
#: A trial a halving search stopped early: the run is FINISHED (it never failed, and a relaunch skips it) and
#: carries the epoch it reached and its last selection metric; its description says so.
STOPPED_TAG, STOPPED_VALUE_TAG = "dpl.stopped_early", "dpl.stopped_metric"
#: Trial-run tags: the task's per-epoch selection metric (its EPOCH_METRIC) and its direction (max | min).
EPOCH_METRIC_TAG, EPOCH_MODE_TAG = "dpl.epoch_metric", "dpl.epoch_metric_mode"
#: A search study's record on its study run (tags; the whole record in its `search.json` artifact): the kind
#: of search (optuna | halving), the samples it will run (its budget), how many are done, and the seeds each
#: sample runs on. A grid study has none of these tags.
SEARCH_TAG = "dpl.search"
SEARCH_SAMPLES_TAG = "dpl.search_samples"
SEARCH_DONE_TAG = "dpl.search_samples_done"
SEARCH_SEEDS_TAG = "dpl.search_seeds"
#: A halving search's rungs (epochs, comma-separated) and the epochs its trials ran against the grid's ("41/144").
SEARCH_RUNGS_TAG, SEARCH_EPOCHS_TAG = "dpl.search_rungs", "dpl.search_epochs"
SEARCH_MAX_EPOCHS_TAG = "dpl.search_max_epochs"
#: Fixed names of the public schema (README): these params are logged for every trial.
CONFIG_PARAMS = ("task", "dataset", "network", "point", "variant", "seed", "weights", "normalisation", "mode",
                 "transform_input", "resize", "budget")


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


def client(tracking_uri: str, retry_s: float | None = None):  # -> MlflowClient (import kept lazy: 2 s)
    """An MlflowClient; with `retry_s` (a study's `tracking_retry_s`) and an http(s) URI, one whose calls
    outlast a server restart of up to that many seconds (`study.tracking_retry`)."""
    refuse_credentials_in_uri(tracking_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    from study.tracking_retry import patient

    return patient(MlflowClient(tracking_uri=tracking_uri), tracking_uri, retry_s)


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
    # a new SQLite store logs its schema migrations at INFO: two lines of noise on `dpl run`'s console
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    c = client(tracking_uri)
    try:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            location = artifact_location(study_dir) if not tracking_uri.startswith("http") else None
            return c.create_experiment(name, artifact_location=location,
                                       tags={STUDY_TAG: name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if exp.lifecycle_stage != "deleted" and exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)  # a study made before
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
    found = study_run(c, experiment_id)
    if found is not None:
        return found.info.run_id
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


def study_run(c: Any, experiment_id: str) -> Any | None:
    """The study's parent run (`dpl.kind=study`), or None before the first launch created it."""
    found = find_runs(c, experiment_id, f"tags.`{KIND_TAG}` = 'study'")
    return found[0] if found else None


def record_search(c: Any, parent_id: str, record: dict[str, Any]) -> None:
    """Record what a search will run and how far it is: `search.json` on the study run, and its tags."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "search.json").write_text(json.dumps(record, indent=1))
        c.log_artifact(parent_id, str(Path(tmp) / "search.json"))
    for tag, key in ((SEARCH_TAG, "type"), (SEARCH_SAMPLES_TAG, "num_samples"), (SEARCH_DONE_TAG, "samples_done"),
                     (SEARCH_SEEDS_TAG, "n_seeds")):
        c.set_tag(parent_id, tag, str(record[key]))


def search_line(tags: dict[str, str]) -> str | None:
    """`search optuna: 3 of 12 samples done, 9 left (each on 2 seeds)` from a study run's tags; None for a grid.

    A halving search's samples are its configurations (every one starts), and it adds its rungs and the
    epochs its trials ran against the grid's: `...; rungs at epoch 1, 3 of 9; 56 of the grid's 144 epochs run`."""
    if SEARCH_TAG not in tags:
        return None
    total, done = int(tags.get(SEARCH_SAMPLES_TAG, 0)), int(tags.get(SEARCH_DONE_TAG, 0))
    seeds = tags.get(SEARCH_SEEDS_TAG, "1")
    what = "configurations" if tags[SEARCH_TAG] == "halving" else "samples"
    line = (f"search {tags[SEARCH_TAG]}: {done} of {total} {what} done, {max(0, total - done)} left "
            f"(each on {seeds} seed{'s' if seeds != '1' else ''})")
    if tags.get(SEARCH_RUNGS_TAG):
        line += f"; rungs at epoch {tags[SEARCH_RUNGS_TAG].replace(',', ', ')} of {tags.get(SEARCH_MAX_EPOCHS_TAG, '?')}"
    if tags.get(SEARCH_EPOCHS_TAG):
        used, grid = (int(v) for v in tags[SEARCH_EPOCHS_TAG].split("/"))
        line += f"; {used} of the grid's {grid} epochs run ({used / max(grid, 1):.0%})"
    return line


def attach_trial_run(c: Any, experiment_id: str, key: str, run_name: str, tags: dict[str, str]) -> str:
    """The run for `key`: found by tag and set RUNNING again, or created. Never a second one.

    `create_run` is the one tracking call that is not idempotent: sent again after its response was lost
    (a server restart, a timeout), it makes a second run. So after creating, the key's runs are read back
    and the extra empty ones deleted (`keep_one_run`)."""
    found = find_runs(c, experiment_id, f"tags.`{KEY_TAG}` = '{key}'")
    if found:
        run_id = keep_one_run(c, found)
        c.update_run(run_id, status=RUNNING)
        c.set_tag(run_id, ERROR_TAG, "")
        return run_id
    c.create_run(experiment_id, run_name=run_name, tags={KEY_TAG: key, KIND_TAG: "trial", **tags})
    return keep_one_run(c, find_runs(c, experiment_id, f"tags.`{KEY_TAG}` = '{key}'"))


def _is_empty(run: Any) -> bool:
    return not run.data.metrics and not run.data.params and run.info.status == RUNNING


def keep_one_run(c: Any, runs: list[Any], keep: str | None = None) -> str:
    """Of several runs of one trial key, the one to use (`keep`, else a FINISHED one, else the one holding
    the most, else the oldest); the others that hold nothing (a `create_run` the server executed although
    its client never got the answer) are deleted. A run holding data is never deleted."""
    def rank(r: Any) -> tuple:
        return (r.info.run_id == keep, r.info.status == FINISHED, len(r.data.metrics) + len(r.data.params),
                -(r.info.start_time or 0), r.info.run_id)

    best, *others = sorted(runs, key=rank, reverse=True)
    for run in others:
        if _is_empty(run):
            c.delete_run(run.info.run_id)
    return best.info.run_id


def drop_empty_duplicates(c: Any, experiment_id: str, key: str, run_id: str) -> None:
    """Delete empty runs of `key` other than `run_id` that appeared after the trial attached (a `create_run`
    sent while the server was frozen can be executed late, after the retry that succeeded)."""
    found = find_runs(c, experiment_id, f"tags.`{KEY_TAG}` = '{key}'")
    if len(found) > 1:
        keep_one_run(c, found, keep=run_id)


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


# --- What a person sees in the MLflow UI: names, descriptions, and where to open it ------------------------

def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI for a local store (None for a server, which serves its own UI)."""
    if urllib.parse.urlparse(tracking_uri).scheme in ("http", "https", "databricks"):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1"


def ui_base_url(tracking_uri: str) -> str | None:
    """The UI's base URL: the server itself, or where `ui_command` serves a local store (its default port)."""
    parsed = urllib.parse.urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return None if parsed.scheme == "databricks" else LOCAL_UI


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the training view (MLflow 3 otherwise opens its GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_VIEW_QUERY}&{RUNS_ORDER_QUERY}"


def run_page_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the training view (without the query it shows the GenAI side bar)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW_QUERY}"


def ui_hint(tracking_uri: str, experiment_id: str | None) -> list[str]:
    """The lines `dpl run` and `dpl status` print: how to open this study in the MLflow UI."""
    command, base = ui_command(tracking_uri), ui_base_url(tracking_uri)
    lines = [f"open the MLflow UI: {command}"] if command else []
    if base and experiment_id is not None:
        lines.append(f"then the study's runs (training view): {runs_page_url(base, experiment_id)}")
    return lines


def trial_run_name(config: Any) -> str:
    """A run name a person can read in the runs table: `superres/coco vgg16@features.22 seed0`.

    The variant (unless it is `default`) and any condition that is not the default (weights, normalisation, mode, transform_input, resize)
    are added, so the trials of an ablation grid are told apart; the key stays in the `dpl.trial_key` tag.
    """
    task = f"{config.task}/{config.dataset}" if config.dataset else config.task
    parts = [task, f"{config.network}@{config.point or 'pixel'}"]
    if config.variant and config.variant != "default":  # the single-variant tasks' only one says nothing
        parts.append(config.variant)
    parts += [f"{k}={getattr(config, k)}" for k, default in NAME_DEFAULTS.items() if getattr(config, k) != default]
    parts.append(f"seed{config.seed}")
    return " ".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def trial_description(config: Any, final_metrics: dict[str, float], primary: str,
                      directions: dict[str, str] | None = None, stopped: str | None = None) -> str:
    """The trial run's description (markdown): what was trained with which loss, and how well it did.

    `stopped`: for a trial a halving search stopped early, the sentence saying where and why (it has no
    final metrics, and that is not a failure)."""
    direction = (directions or {}).get(primary)
    better = {"max": " (higher is better)", "min": " (lower is better)"}.get(direction or "", "")
    value = final_metrics.get(primary)
    result = (f"Primary metric `{primary}`{better}: **{_fmt(float(value))}**" if value is not None
              else f"**{stopped}** Primary metric `{primary}`: not measured (stopped before the test)" if stopped
              else f"Primary metric `{primary}`: not reported (the trial did not finish)")
    conditions = {"variant": config.variant or "(default)", **{k: getattr(config, k) for k in NAME_DEFAULTS},
                  "budget": config.budget}
    lines = [f"**Task** {config.task}" + (f" on {config.dataset}" if config.dataset else "")
             + f", **loss network** {config.network} at **point** {config.point or 'pixel (no network)'},"
             f" seed {config.seed}.", "", result, "", "| condition | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in conditions.items()]
    if final_metrics:
        lines += ["", "| final metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(float(v))} |" for k, v in sorted(final_metrics.items())]
    return "\n".join(lines)


def describe_trial_run(c: Any, run_id: str, config: Any, final_metrics: dict[str, float], primary: str,
                       directions: dict[str, str] | None = None, run_name: str | None = None) -> None:
    """Give a finished trial run its readable name and its description (also renames runs made earlier).

    `run_name`: the plan's distinct name when the plain `trial_run_name` is shared (`driver.distinct_run_names`)."""
    c.set_tag(run_id, RUN_NAME_TAG, run_name or trial_run_name(config))
    c.set_tag(run_id, NOTE_TAG, trial_description(config, final_metrics, primary, directions))


COVERAGE_STATES = ("planned", "finished", "stopped", "running", "failed", "pending")


def run_state(run: Any | None) -> str:
    """A trial's state as `dpl` reports it: finished (ran its whole budget), stopped (early, by a halving
    search: FINISHED in MLflow with `dpl.stopped_early`), running, failed (FAILED or KILLED), pending (no run)."""
    status = run.info.status if run is not None else None
    if status == FINISHED:
        return "stopped" if run.data.tags.get(STOPPED_TAG) else "finished"
    return {FAILED: "failed", KILLED: "failed", RUNNING: "running"}.get(status, "pending")


def study_description(name: str, coverage: dict[str, dict[str, int]], experiment_id: str,
                      analysis_run_id: str | None = None) -> str:
    """The study run's description (markdown): coverage per task, and the report run or how to make it."""
    lines = [f"**Study** {name}: one child run per trial.", "",
             "| task | " + " | ".join(COVERAGE_STATES) + " |", "|---|" + "---|" * len(COVERAGE_STATES)]
    lines += [f"| {task} | " + " | ".join(str(counts.get(s, 0)) for s in COVERAGE_STATES) + " |"
              for task, counts in coverage.items()]
    lines.append("")
    if analysis_run_id:
        lines.append(f"Report: [analysis run]({run_page_url('', experiment_id, analysis_run_id)}) "
                     f"(`report.html` in its artifacts).")
    else:
        lines.append(f"No report yet: `dpl analyze --experiment {name} --out DIR` tests the conventions and "
                     f"logs its report here as an analysis run.")
    return "\n".join(lines)


def coverage_by_task(plan: list[dict[str, Any]], runs: dict[str, Any]) -> dict[str, dict[str, int]]:
    """task -> counts of planned / finished / running / failed / pending, plus a `total` row.

    Runs not in the plan (trials an Optuna search sampled) count under their `task` param.
    """
    table: dict[str, dict[str, int]] = {}
    entries = [(t["task"], runs.get(t["trial_key"])) for t in plan]
    planned = {t["trial_key"] for t in plan}
    entries += [(r.data.params.get("task", "?"), r) for k, r in runs.items() if k not in planned]
    for task, run in entries:
        row = table.setdefault(task, dict.fromkeys(COVERAGE_STATES, 0))
        row["planned"] += 1
        row[run_state(run)] += 1
    table["total"] = {s: sum(r[s] for r in table.values()) for s in COVERAGE_STATES}
    return table


def describe_study_run(c: Any, experiment_id: str, parent_id: str, name: str, plan: list[dict[str, Any]]) -> None:
    """Write the study run's description from what the store holds now (coverage, newest analysis run)."""
    analyses = find_runs(c, experiment_id, f"tags.`{KIND_TAG}` = 'analysis'")
    newest = max(analyses, key=lambda r: r.info.start_time or 0).info.run_id if analyses else None
    text = study_description(name, coverage_by_task(plan, runs_by_key(c, experiment_id)), experiment_id, newest)
    c.set_tag(parent_id, NOTE_TAG, text)


def refresh_study_description(tracking_uri: str | None, experiment_name: str) -> bool:
    """Rewrite the study run's description after `dpl analyze`, so its report link names the new analysis run
    at once, not at the next `dpl run`. False when the store holds no study run (an experiment not made by
    `dpl run`) or its plan cannot be read: the description is then left as it was."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return False
    found = find_runs(c, exp.experiment_id, f"tags.`{KIND_TAG}` = 'study'")
    if not found:
        return False
    parent_id = found[0].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plan = json.loads(Path(c.download_artifacts(parent_id, "plan.json", tmp)).read_text())
        except Exception:  # noqa: BLE001 - a missing/corrupt plan is already reported by the analysis
            return False
    describe_study_run(c, exp.experiment_id, parent_id, experiment_name, plan)
    return True
