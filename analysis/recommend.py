"""`dpl recommend`: the best (network, point) for a task from any finished study, with cost and Pareto front.

Reads the study like the report does (MLflow only). The score is the benchmark's primary metric, seed-averaged;
the interval is a t interval over seeds where a cell has several (none otherwise: one run says nothing about
its spread); the cost is the GFLOPs of the loss network up to the point as the run logged it
(`gflops_to_point` param). When no run logged it the cost column and the Pareto front are left out and the
answer says so, rather than guessing. The answer ends with the Python line that builds the top pick as a
training loss (`trainables.PerceptualLoss`), from what its runs logged: network, point, distance, weights and
any non-default loss-network condition.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.runs import aggregate_seeds, client_for, find_experiment, load_results, load_search
from analysis.uncertainty import _history


def pareto_front(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """True where no other cell is at least as good on both (higher score, lower cost) and better on one."""
    s, c = np.asarray(score, float)[:, None], np.asarray(cost, float)[:, None]
    dominated = ((s.T >= s) & (c.T <= c) & ((s.T > s) | (c.T < c))).any(axis=1)
    return ~dominated & np.isfinite(score) & np.isfinite(cost)


def _interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    if n < 2 or not np.isfinite(std):
        return math.nan, math.nan
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
    return float(lo), float(hi)


#: Loss-network conditions a run logs whose non-default values `PerceptualLoss` must be given to reproduce it.
_CONDITIONS = {"normalisation": ("imagenet", "none"), "mode": ("eval", "train"), "transform_input": ("auto", "on", "off")}


def python_line(run: pd.Series) -> tuple[str, list[str]]:
    """`PerceptualLoss(...)` building the loss network of one trial row as it ran, and notes on what the line
    cannot carry (weights a similarity variant learned during the trial)."""
    notes = []
    distance = str(run.get("distance") or "")
    if distance not in ("lpips", "mse"):  # runs logged before the `distance` param: the engine's tasks' choice
        distance = "lpips" if run["task"] == "similarity" else "mse"
        notes.append(f"the runs do not record their distance; assumed {distance} (what the {run['task']} task uses)")
    kind = run["weights_kind"]
    weights = run["weights_set"] if kind == "imagenet" else "random" if kind == "random" else run["weights"]
    args = [json.dumps(run["network"]), f"points=[{json.dumps(str(run['point']))}]",
            f"distance={json.dumps(distance)}", f"weights={json.dumps(str(weights))}"]
    for name, (default, *others) in _CONDITIONS.items():
        if run.get(name) in others:
            args.append(f"{name}={json.dumps(run[name])}")
    if run["task"] == "similarity" and run.get("variant") not in ("baseline", "", None):
        notes.append(f"the top pick is the {run['variant']} variant, which trained weights during the trial (in its "
                     "MLflow run's checkpoint); the line builds the network without them")
    return f"PerceptualLoss({', '.join(args)})", notes


def recommend(tracking_uri: str | None, experiment: str, task: str, dataset: str | None = None,
              top: int = 10) -> dict[str, Any]:
    """The answer as a dict: task, dataset, metric, direction, notes, has_cost, baseline, rows (top K by score),
    pareto (the front of score vs cost, empty without cost) and python (the `PerceptualLoss(...)` line of the
    top pick). LookupError names what exists when the task or dataset is not in the study."""
    problems: list[str] = []
    df, _ = load_results(client_for(tracking_uri), experiment, problems)
    tasks = sorted(set(df["task"]) - {""}) if not df.empty else []
    if task not in tasks:
        raise LookupError(f"study {experiment!r} has no results for task {task!r}; tasks there: "
                          f"{', '.join(tasks) or 'none'}")
    sub = df[df["task"] == task]
    datasets = sorted(set(sub["dataset"]))
    if dataset is None and len(datasets) > 1:
        raise LookupError(f"task {task!r} ran on several datasets ({', '.join(datasets)}): pick one with --dataset")
    dataset = dataset or datasets[0]
    if dataset not in datasets:
        raise LookupError(f"task {task!r} has no dataset {dataset!r} in study {experiment!r}; "
                          f"datasets: {', '.join(datasets)}")
    sub = sub[(sub["dataset"] == dataset) & sub["primary"]]
    trials = sub[sub["run_id"] != ""]
    notes = list(problems)
    if trials["weights_random"].fillna(False).astype(bool).any():
        notes.append("RANDOM loss-network weights: this ranks random networks, not ImageNet features.")
    if trials["synthetic_data"].fillna(False).astype(bool).any():
        notes.append("SYNTHETIC data (smoke study): the scores test the pipeline, they are not results.")
    client = client_for(tracking_uri)
    search = load_search(client, find_experiment(client, experiment).experiment_id)
    if search is not None and search["type"] == "halving":
        return _halving_answer(client, experiment, task, dataset, trials, search, notes, top)
    cells = aggregate_seeds(sub)
    cells = cells[cells["n"] > 0]
    if cells.empty:
        raise LookupError(f"no finished trial of {task}/{dataset} in study {experiment!r}")
    metric, direction = str(cells["metric"].iloc[0]), str(cells["direction"].iloc[0])
    base = cells[cells["is_baseline"].astype(bool)]
    nets = cells[~cells["is_baseline"].astype(bool)].copy()
    nets = nets.sort_values("aligned", ascending=False).reset_index(drop=True)
    has_cost = bool(nets["gflops_to_point"].notna().any())
    if not has_cost:
        notes.append("cost left out: no run of this study logged gflops_to_point (dpl networks --network N "
                     "shows it per point).")
    rows = []
    for r in nets.itertuples():
        lo, hi = _interval(r.value, r.std, int(r.n))
        row = {"rank": len(rows) + 1, "network": r.model, "point": r.point, "setting": r.setting, "score": r.value,
               "ci_low": lo, "ci_high": hi, "seeds": int(r.n)}
        if has_cost:
            row["gflops"] = r.gflops_to_point
        rows.append(row)
    best = nets.iloc[0]
    ran = trials[(trials["status"] == "FINISHED") & (trials["model"] == best["model"])
                 & (trials["point"] == best["point"]) & (trials["setting"] == best["setting"])].iloc[0]
    line, line_notes = python_line(ran)
    notes += line_notes
    front = []
    if has_cost:
        mask = pareto_front(nets["aligned"].to_numpy(), nets["gflops_to_point"].to_numpy())
        front = [rows[i] for i in np.flatnonzero(mask)]
        front.sort(key=lambda x: x["gflops"])
    return {"experiment": experiment, "task": task, "dataset": dataset, "metric": metric, "direction": direction,
            "notes": notes, "has_cost": has_cost, "n_candidates": len(rows),
            "baseline": float(base["value"].mean()) if len(base) else None, "rows": rows[:top], "pareto": front,
            "python": line}


def _level(history: dict[int, float], finished: bool, rungs: list[int], max_epochs: int) -> int:
    """The highest rung a trial reached (its epoch), `max_epochs` for one that ran to its end, 0 for none."""
    if finished and history:
        return max_epochs
    last = max(history, default=0)
    return max((r for r in rungs if r <= last), default=0)


def _at(history: dict[int, float], epoch: int) -> float:
    """The value a rung at `epoch` compared: the first one logged at or after it (ASHA's rule)."""
    later = [e for e in sorted(history) if e >= epoch]
    return history[later[0]] if later else math.nan


def halving_rank(trials: list[dict[str, Any]], rungs: list[int], max_epochs: int, mode: str) -> list[dict[str, Any]]:
    """The candidates of a halving search, best first: by the highest rung reached, then by the selection
    metric there. `trials`: {"cell": any hashable (the candidate), "finished": ran to its end,
    "history": {epoch: value}}. A cell's rung is the lowest its seeds (trials) reached, its score their mean
    at that rung. Returns {"cell", "level" (epoch; max_epochs = the end; 0 = none), "score", "std", "seeds"}.
    Shared by `dpl recommend` and the planted-truth harness (bench/halving_sim.py), so the harness measures
    the ranking a user gets."""
    sign = -1.0 if mode == "min" else 1.0
    by_cell: dict[Any, list[dict[str, Any]]] = {}
    for t in trials:
        by_cell.setdefault(t["cell"], []).append(t)
    out = []
    for cell, group in by_cell.items():
        level = min(_level(t["history"], t["finished"], rungs, max_epochs) for t in group)
        values = [_at(t["history"], level) for t in group] if level else []
        out.append({"cell": cell, "level": level, "score": float(np.mean(values)) if values else math.nan,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan, "seeds": len(group)})
    return sorted(out, key=lambda c: (c["level"], sign * c["score"] if not math.isnan(c["score"]) else -math.inf),
                  reverse=True)


def _halving_answer(client: Any, experiment: str, task: str, dataset: str, trials: pd.DataFrame,
                    search: dict[str, Any], notes: list[str], top: int) -> dict[str, Any]:
    """`recommend` for a halving study: candidates ranked by `halving_rank`, compute used against the
    grid's, and the candidates never taken past the first rung (docs/ANALYSIS.md, Halving)."""
    started = trials[trials["epoch_metric"] != ""]
    if started.empty:
        raise LookupError(f"no trial of {task}/{dataset} in study {experiment!r} has reported its selection metric")
    metric, mode = str(started["epoch_metric"].iloc[0]), str(started["epoch_metric_mode"].iloc[0])
    hist = {r.run_id: _history(client, r.run_id, metric) for r in started.itertuples()}
    rungs = search["rungs"]
    max_epochs = search.get("max_epochs") or max(max(h, default=0) for h in hist.values())
    used = sum(max(h, default=0) for h in hist.values())
    grid = len(trials) * max_epochs
    cell_of = {r.run_id: (r.model, r.point, r.setting, bool(r.is_baseline)) for r in started.itertuples()}
    ranked = halving_rank([{"cell": cell_of[r.run_id], "finished": r.status == "FINISHED", "history": hist[r.run_id]}
                           for r in started.itertuples()], rungs, max_epochs, mode)
    extra = started.groupby(["model", "point", "setting", "is_baseline"]).agg(
        final=("value", lambda v: v.mean()), all_finished=("status", lambda s: (s == "FINISHED").all()),
        gflops=("gflops_to_point", "first"))
    has_cost = bool(extra["gflops"].notna().any())
    rows, base = [], []
    for c in ranked:
        info = extra.loc[c["cell"]]
        if c["cell"][3]:
            base.append(c["score"])
            continue
        lo, hi = _interval(c["score"], c["std"], c["seeds"])
        row = {"rank": len(rows) + 1, "network": c["cell"][0], "point": c["cell"][1], "setting": c["cell"][2],
               "rung": "end" if c["level"] == max_epochs else (f"epoch {c['level']}" if c["level"] else "none"),
               "score": c["score"], "ci_low": lo, "ci_high": hi, "seeds": c["seeds"],
               "final": float(info["final"]) if info["all_finished"] else math.nan}
        if has_cost:
            row["gflops"] = info["gflops"]
        rows.append(row)
    first = [f"{r['network']}@{r['point']}" for r in rows if r["rung"] in (f"epoch {rungs[0]}", "none")]
    notes += [f"halving search: ranked by {metric} ({mode}) at the highest rung each candidate reached (rungs at "
              f"epoch {', '.join(map(str, rungs))}; 'end' = it ran all {max_epochs} epochs; a cell's rung is the "
              f"lowest its seeds reached); 'final' is the primary metric of candidates that ran to the end.",
              f"compute: the search ran {used} of the grid's {grid} epochs ({used / max(grid, 1):.0%}), "
              f"saving {1 - used / max(grid, 1):.0%} against running every trial to the end.",
              f"never taken past the first rung (epoch {rungs[0]}): {len(first)} of {len(rows)} candidates"
              + (f": {', '.join(first)}" if first else "") + "."]
    sign = -1.0 if mode == "min" else 1.0
    ended = [r for r in rows if r["rung"] == "end"]
    front = []
    if has_cost and ended:
        mask = pareto_front(np.array([sign * r["score"] for r in ended]), np.array([r["gflops"] for r in ended]))
        front = sorted((ended[i] for i in np.flatnonzero(mask)), key=lambda x: x["gflops"])
    return {"experiment": experiment, "task": task, "dataset": dataset, "metric": metric, "direction": mode,
            "notes": notes, "has_cost": has_cost, "n_candidates": len(rows),
            "baseline": float(np.mean(base)) if base else None, "rows": rows[:top], "pareto": front,
            "search": {"type": "halving", "rungs": rungs, "max_epochs": max_epochs, "epochs_used": used,
                       "epochs_grid": grid, "never_past_first_rung": first}}


def format_text(answer: dict[str, Any]) -> str:
    """The answer as plain text lines: notes first, then the top table and the Pareto front."""
    better = "higher" if answer["direction"] != "min" else "lower"
    lines = [f"{answer['task']}/{answer['dataset']} in study {answer['experiment']}: {answer['metric']} "
             f"({better} is better), {answer['n_candidates']} (network, point) candidates"]
    lines += [f"NOTE: {n}" for n in answer["notes"]]
    halving = ["rung"] if answer.get("search", {}).get("type") == "halving" else []
    cols = ["rank", "network", "point", "setting", *halving, "score", "ci_low", "ci_high", "seeds",
            *(["final"] if halving else []), *(["gflops"] if answer["has_cost"] else [])]

    def table(rows: list[dict]) -> list[str]:
        frame = pd.DataFrame(rows, columns=cols)
        if (frame["setting"] == "all").all():
            frame = frame.drop(columns="setting")
        return frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}").splitlines()

    lines += table(answer["rows"])
    if answer["baseline"] is not None:
        lines.append(f"pixel-loss baseline (network none): {answer['baseline']:.4g}")
    if answer["pareto"]:
        lines += ["Pareto front (no cheaper point scores as well):"] + table(answer["pareto"])
    lines += ["The top pick as a loss in your own training (README: \"Use the chosen loss in your own training\"):",
              "from trainables import PerceptualLoss", f"loss_fn = {answer['python']}"]
    return "\n".join(lines)
