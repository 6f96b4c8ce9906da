"""Load a study's trials from MLflow into one tidy DataFrame (one row per trial x final metric).

Only the public MLflow schema written by the study engine is read (tags `dpl.*`, params, final metrics,
the parent run's `plan.json`); nothing here imports the trainables or the study engine, so the analysis
works on any tracking store a study was written to, including a copy on a laptop.

Failed, running and never-started trials are kept as rows with an empty value and their status, so that
tables and the coverage matrix show them instead of silently dropping them.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

#: Statuses of a planned trial; "missing" = planned but no run exists; "STOPPED" = a FINISHED run that a halving
#: search stopped early (tag `dpl.stopped_early` = the epoch): it has no final metrics, and never failed.
STATUSES = ("FINISHED", "STOPPED", "FAILED", "RUNNING", "KILLED", "SCHEDULED", "missing")
#: The settings that change what a score means. Only those that vary *within* a benchmark (task + dataset)
#: split its tables and tests: the similarity task's `baseline` variant beside the other tasks' `default`, or
#: per-task conditions (the reference's normalisation/mode per task), are one study, not several.
SETTING_COLS = ("variant", "mode", "weights_kind", "normalisation", "transform_input")
#: A benchmark: the unit that the cross-benchmark average rank counts once.
BENCHMARK_KEYS = ["task", "dataset"]
#: One table / one convention test is computed per group.
GROUP_KEYS = ["task", "dataset", "metric", "direction", "primary", "setting"]
#: A cell = one (group, network weights, point); seeds are averaged over it.
CELL_KEYS = GROUP_KEYS + [
    "variant", "mode", "weights_kind", "normalisation", "transform_input",
    "network", "weights_set", "model", "family", "has_batch_norm",
    "point", "position", "relative_depth", "imagenet_top1", "top1_fallback", "is_baseline", "gflops_to_point",
]
#: Weight sets that stand for "the architecture" (others, e.g. V2, get their own table row).
_PRIMARY_WEIGHTS = "IMAGENET1K_V1"
#: Columns of the raw table, before `_annotate` (kept even when a study has no runs yet).
RAW_COLUMNS = _COLUMNS = [
    "run_id", "trial_key", "status", "start_time", "error", "task", "dataset", "variant", "seed", "network",
    "weights", "weights_set", "weights_kind", "normalisation", "mode", "transform_input", "budget", "point",
    "position", "relative_depth", "family", "has_batch_norm", "imagenet_top1", "arch_imagenet_top1",
    "top1_fallback", "weights_random", "synthetic_data", "primary_metric", "baseline_tag", "gflops_to_point",
    "distance", "epoch_metric", "epoch_metric_mode", "stopped_epoch", "metric", "direction", "value",
]


class ExperimentNotFound(LookupError):
    """The named study (MLflow experiment) does not exist; the message lists the ones that do."""


def client_for(tracking_uri: str | None) -> MlflowClient:
    """An MlflowClient for `tracking_uri` (None = MLflow's default / $MLFLOW_TRACKING_URI)."""
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment(client: MlflowClient, name: str) -> Any:
    """The experiment called `name`, or ExperimentNotFound naming the available ones."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        shown = ", ".join(names) if names else "none"
        raise ExperimentNotFound(f"no study (MLflow experiment) named {name!r}; available: {shown}")
    return exp


def _search(client: MlflowClient, experiment_id: str, kind: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`dpl.kind` = '{kind}'", max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_plan(client: MlflowClient, experiment_id: str,
              problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Planned trials from `plan.json` of the study's parent run(s), deduplicated by trial_key.

    A relaunched study may have several parent runs; their plans are united (later ones win). A plan that
    cannot be read (no artifact, artifacts not copied with the store, unreadable JSON) is never skipped in
    silence: one line per parent run is appended to `problems`, because without the plan the trials that never
    started cannot be shown as "missing" and the coverage only counts the runs it finds.
    """
    plan: dict[str, dict[str, Any]] = {}
    problems = [] if problems is None else problems
    parents = sorted(_search(client, experiment_id, "study"), key=lambda r: r.info.start_time or 0)
    for parent in parents:
        rid = parent.info.run_id
        with tempfile.TemporaryDirectory(prefix="dpl-plan-") as tmp:
            try:
                path = client.download_artifacts(rid, "plan.json", tmp)
                entries = json.loads(Path(path).read_text())
                entries = [dict(e) | {"trial_key": str(e["trial_key"])} for e in entries]
            except Exception as exc:  # noqa: BLE001 - reported to the user, analysis goes on with the runs
                why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                problems.append(
                    f"plan.json of study run {rid} could not be read ({type(exc).__name__}: {why}); trials "
                    "planned there that never started are NOT counted as missing. Copy the store's artifacts "
                    "too (mlartifacts/ or the experiment's artifact_location) to see them.")
                continue
            for entry in entries:
                plan[entry["trial_key"]] = entry
    return list(plan.values())


def load_search(client: MlflowClient, experiment_id: str) -> dict[str, Any] | None:
    """A search study's record from its study run's tags (`dpl.search`: optuna | halving, `dpl.search_samples`
    = the samples it will run, `dpl.search_samples_done`, `dpl.search_seeds`; a halving search also
    `dpl.search_rungs`, `dpl.search_max_epochs` and `dpl.search_epochs` = "run/grid"); None for a grid study.

    Returns {"type", "samples", "done", "left", "seeds"}: a search's plan.json lists only the trials it has
    drawn, so the configurations it never drew are not missing; these numbers say how much is left."""
    for parent in sorted(_search(client, experiment_id, "study"), key=lambda r: -(r.info.start_time or 0)):
        tags = parent.data.tags
        if "dpl.search" in tags:
            total, done = int(tags.get("dpl.search_samples", 0)), int(tags.get("dpl.search_samples_done", 0))
            out = {"type": tags["dpl.search"], "samples": total, "done": done, "left": max(0, total - done),
                   "seeds": int(tags.get("dpl.search_seeds", 1))}
            if tags.get("dpl.search_rungs"):  # halving: rungs (epochs), last epoch, epochs run / the grid's
                used, grid = (int(v) for v in tags.get("dpl.search_epochs", "0/0").split("/"))
                out.update(rungs=[int(r) for r in tags["dpl.search_rungs"].split(",")], epochs_used=used,
                           epochs_grid=grid, max_epochs=int(tags.get("dpl.search_max_epochs", 0)))
            return out
    return None


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _weights_kind(weights_set: str | None, weights: str | None) -> str:
    ws = weights_set or ""
    if ws in ("random", "file"):
        return ws
    if ws:
        return "imagenet"
    if weights == "random":
        return "random"
    return "imagenet" if weights in (None, "", "imagenet") or str(weights).isupper() else "file"


def _run_rows(run: Run) -> list[dict[str, Any]]:
    """One row per final metric of `run` (a single metric-less row when it has no directions)."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    try:
        directions: dict[str, str] = json.loads(tags.get("dpl.directions") or "{}")
    except json.JSONDecodeError:
        directions = {}
    top1 = _float(params.get("imagenet_top1"))
    arch_top1 = _float(params.get("arch_imagenet_top1"))
    stopped = tags.get("dpl.stopped_early", "") if run.info.status == "FINISHED" else ""
    base = {
        "run_id": run.info.run_id,
        "trial_key": tags.get("dpl.trial_key", run.info.run_id),
        "status": "STOPPED" if stopped else run.info.status,
        "start_time": run.info.start_time or 0,
        "error": tags.get("dpl.error", "") or (
            f"stopped early by the halving search at epoch {stopped} ({tags.get('dpl.epoch_metric', '')}="
            f"{tags.get('dpl.stopped_metric', '')})" if stopped else ""),
        "task": params.get("task", ""),
        "dataset": params.get("dataset", ""),
        "variant": params.get("variant", ""),
        "seed": params.get("seed", ""),
        "network": params.get("network", ""),
        "weights": params.get("weights", ""),
        "weights_set": params.get("weights_set", ""),
        "weights_kind": _weights_kind(params.get("weights_set"), params.get("weights")),
        "normalisation": params.get("normalisation", ""),
        "mode": params.get("mode", ""),
        "transform_input": params.get("transform_input", ""),
        "budget": params.get("budget", ""),
        "point": params.get("point", ""),
        "position": _float(params.get("position")),
        "relative_depth": _float(params.get("relative_depth")),
        "family": params.get("family", ""),
        "has_batch_norm": params.get("batch_norm", "").lower() == "true" if "batch_norm" in params else None,
        "imagenet_top1": top1 if not math.isnan(top1) else arch_top1,
        "arch_imagenet_top1": arch_top1,
        # True when the accuracy is not that of the weights actually used (random/file weights).
        "top1_fallback": math.isnan(top1),
        "weights_random": tags.get("dpl.weights_random", "false").lower() == "true",
        "synthetic_data": tags.get("dpl.synthetic_data", "false").lower() == "true",
        "primary_metric": tags.get("dpl.primary_metric", ""),
        "baseline_tag": tags.get("dpl.baseline", ""),
        # cost of the loss network up to the point, as the engine logged it (absent for old runs: NaN)
        "gflops_to_point": _float(params.get("gflops_to_point")),
        # how the task used the loss network (lpips | mse; absent for runs logged before the param existed)
        "distance": params.get("distance", ""),
        # the per-epoch selection metric the task declared (tags; absent on runs made before: "")
        "epoch_metric": tags.get("dpl.epoch_metric", ""),
        "epoch_metric_mode": tags.get("dpl.epoch_metric_mode", ""),
        "stopped_epoch": _float(stopped),
    }
    if not directions:
        return [{**base, "metric": "", "direction": "", "value": math.nan}]
    finished = run.info.status == "FINISHED"
    return [
        {**base, "metric": m, "direction": d, "value": metrics.get(m, math.nan) if finished else math.nan}
        for m, d in directions.items()
    ]


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per trial_key: a FINISHED one if any, else the newest (a relaunch never double-counts)."""
    if df.empty:
        return df
    rank = (df["status"] != "FINISHED").astype(int)
    keep = (
        df.assign(_r=rank).sort_values(["_r", "start_time"], ascending=[True, False])
        .drop_duplicates("trial_key")["run_id"]
    )
    return df[df["run_id"].isin(set(keep))]


def _fill_missing(df: pd.DataFrame, plan: list[dict[str, Any]]) -> pd.DataFrame:
    """Add rows (status "missing") for planned trials without a run, and metrics for metric-less runs.

    Their metrics and descriptive attributes are borrowed from finished runs of the same task/dataset and
    network/point, so a missing cell shows up in exactly the table and column where its value would be.
    """
    known = set(df["trial_key"]) if not df.empty else set()
    extra = [
        {"run_id": "", "status": "missing", "start_time": 0, "error": "", "metric": "", "direction": "",
         "value": math.nan, **{k: str(v) for k, v in p.items()}}
        for p in plan if str(p["trial_key"]) not in known
    ]
    if extra:
        df = pd.concat([df, pd.DataFrame(extra).reindex(columns=_COLUMNS)], ignore_index=True)
    if df.empty:
        return df
    metrics = df[df["metric"] != ""][["task", "dataset", "metric", "direction", "primary_metric"]].drop_duplicates()
    bare = df[df["metric"] == ""].drop(columns=["metric", "direction", "primary_metric"], errors="ignore")
    if bare.empty:
        return df
    bare = bare.merge(metrics, on=["task", "dataset"], how="left").fillna({"metric": "", "direction": ""})
    known_runs = df[df["run_id"] != ""]
    for keys, cols in (
        (["network", "point"], ["position", "relative_depth"]),
        (["network"], ["family", "has_batch_norm", "arch_imagenet_top1"]),
    ):
        ref = known_runs.dropna(subset=cols[:1]).drop_duplicates(keys)[keys + cols]
        bare = bare.merge(ref, on=keys, how="left", suffixes=("", "_ref"))
        for c in cols:
            bare[c] = bare[c].where(bare[c].notna(), bare.pop(c + "_ref")) if c in bare else bare.pop(c + "_ref")
    bare["imagenet_top1"] = bare["imagenet_top1"].fillna(bare["arch_imagenet_top1"])
    bare["top1_fallback"] = bare["top1_fallback"].fillna(True)
    # Planned-only trials carry no settings: assume their benchmark's usual ones (the most common value),
    # since per-task conditions differ between benchmarks; the study's usual value where the benchmark has none.
    for col in ("weights_kind", "weights_set", *SETTING_COLS):
        if col in known_runs and known_runs[col].notna().any():
            usual = known_runs[col].mode().iloc[0]
            per = known_runs.dropna(subset=[col]).groupby(BENCHMARK_KEYS)[col].agg(lambda v: v.mode().iloc[0])
            fill = [per.get((t, d), usual) for t, d in zip(bare["task"], bare["dataset"])]
            bare[col] = bare[col].fillna(pd.Series(fill, index=bare.index)) if col in bare else fill
    return pd.concat([df[df["metric"] != ""], bare], ignore_index=True)


def _settings(df: pd.DataFrame) -> pd.Series:
    """The `setting` label of each row: the SETTING_COLS that vary within the row's benchmark, else "all".

    Pixel baselines (no loss network, so no mode or normalisation of one) do not make a setting vary.
    """
    out = pd.Series("all", index=df.index, dtype=object)
    for _, g in df.groupby(BENCHMARK_KEYS, dropna=False, sort=False):
        nets = g[~g["is_baseline"]]
        varying = [c for c in SETTING_COLS if nets[c].nunique() > 1]
        if varying:
            out.loc[g.index] = [", ".join(f"{c}={v}" for c, v in zip(varying, row))
                                for row in g[varying].itertuples(index=False)]
    return out


def _annotate(df: pd.DataFrame) -> pd.DataFrame:
    """Add `primary`, `model` (network plus non-default weight set), `is_baseline` and `setting`."""
    df = df.copy()
    df["primary"] = df["metric"] == df["primary_metric"]
    df["is_baseline"] = (df["network"].astype(str) == "none") | (df["baseline_tag"].fillna("").astype(str) == "pixel")
    default_ws = (
        df[df["weights_kind"] == "imagenet"].groupby("network")["weights_set"]
        .agg(lambda s: _PRIMARY_WEIGHTS if _PRIMARY_WEIGHTS in set(s) else min(set(s) - {""}, default=""))
    )
    def model(row: pd.Series) -> str:
        ws = row["weights_set"]
        if row["weights_kind"] != "imagenet" or not ws or ws == default_ws.get(row["network"], ws):
            return str(row["network"])
        return f"{row['network']}:{ws}"
    df["model"] = df.apply(model, axis=1) if len(df) else pd.Series(dtype=str)
    df["is_default_weights"] = df["model"] == df["network"]
    for col in SETTING_COLS:
        df[col] = df[col].fillna("").astype(str)
    df["setting"] = _settings(df) if len(df) else pd.Series(dtype=object)
    df["aligned"] = df["value"].where(df["direction"] != "min", -df["value"])
    return df


def load_results(client: MlflowClient, experiment_name: str,
                 problems: list[str] | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The tidy trial x final-metric table of a study, and its plan.

    Anything that could not be read (e.g. an unreadable plan.json) is appended to `problems` as one line.

    Columns: run_id, trial_key, status, error, task, dataset, metric, direction, primary, value, aligned
    (value sign-flipped for "min" metrics so that higher is always better), network, model, weights,
    weights_set, weights_kind, point, position (1-4 or NaN), relative_depth, imagenet_top1 (of the weights
    used, else the architecture's V1 top-1 with top1_fallback=True), has_batch_norm, family, mode, variant,
    normalisation, transform_input, seed, setting (the settings that vary within the row's benchmark, else
    "all"), is_baseline (pixel-loss baseline: network "none" or tag dpl.baseline=pixel), gflops_to_point
    (logged cost, NaN if absent), distance (lpips | mse, "" if not logged), weights_random, synthetic_data.
    """
    exp = find_experiment(client, experiment_name)
    plan = load_plan(client, exp.experiment_id, problems)
    rows = [row for run in _search(client, exp.experiment_id, "trial") for row in _run_rows(run)]
    return tidy(pd.DataFrame(rows, columns=_COLUMNS), plan), plan


def tidy(raw: pd.DataFrame, plan: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The tidy table from raw rows (one per run x final metric, columns `RAW_COLUMNS`, as read from MLflow).

    Separate from the MLflow reading so that simulated studies (tests, power analyses) go through exactly the
    same deduplication, filling and annotation as a real store without writing thousands of runs.
    """
    df = _dedupe(raw.reindex(columns=_COLUMNS))
    df = _fill_missing(df, plan or [])
    if df.empty:
        return df
    df["position"] = pd.to_numeric(df["position"], errors="coerce")
    for col in ("relative_depth", "imagenet_top1", "arch_imagenet_top1", "value", "gflops_to_point"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = _annotate(df)
    order = ["task", "dataset", "metric", "setting", "network", "model", "position", "point", "seed"]
    return df.sort_values(order, na_position="last").reset_index(drop=True)


def aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Average each cell over its seeds: columns value (mean of finished runs), aligned, std, n, statuses.

    `n` counts finished seeds; a cell with n == 0 keeps value NaN and its statuses (e.g. "FAILED") so that
    the tables show it as failed rather than leaving it out.
    """
    if df.empty:
        return df
    sub = df[df["metric"] != ""]
    grouped = sub.groupby(CELL_KEYS, dropna=False, sort=True)
    out = grouped.agg(
        value=("value", "mean"), aligned=("aligned", "mean"), std=("value", "std"), n=("value", "count"),
        n_runs=("run_id", "size"),
        statuses=("status", lambda s: ", ".join(f"{k}x{v}" for k, v in s.value_counts().sort_index().items())),
    ).reset_index()
    out["is_default_weights"] = out["model"] == out["network"]
    return out


def coverage(df: pd.DataFrame, plan: list[dict[str, Any]]) -> pd.DataFrame:
    """Per planned (or unplanned but present) trial: its status, one row per trial (metrics collapsed).

    Columns: trial_key, planned, status, task, dataset, network, point, variant, seed, error.
    """
    cols = ["trial_key", "task", "dataset", "network", "point", "variant", "seed", "status", "error"]
    if df.empty:
        return pd.DataFrame(columns=cols + ["planned"])
    trials = df.drop_duplicates("trial_key")[cols].copy()
    planned = {str(p["trial_key"]) for p in plan}
    trials["planned"] = trials["trial_key"].isin(planned) if planned else True
    return trials.reset_index(drop=True)


def coverage_summary(cov: pd.DataFrame) -> pd.DataFrame:
    """Counts of trials per (task, dataset) and status: planned vs FINISHED / FAILED / RUNNING / missing."""
    if cov.empty:
        return pd.DataFrame()
    table = pd.crosstab([cov["task"], cov["dataset"]], cov["status"])
    table.insert(0, "planned", cov[cov["planned"]].groupby(["task", "dataset"]).size())
    table["planned"] = table["planned"].fillna(0).astype(int)
    return table.reset_index()
