"""`dpl status DIR`: the study's coverage per task, read from MLflow (the plan comes from the study dir).

A run that is RUNNING while no driver holds the study's lock is shown as `interrupted`: its driver was
killed, and `dpl resume DIR` continues it from its last checkpoint in the same run.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from study import tracking
from study.driver import driver_alive
from study.plan import load_plan
from study.spec import load_saved_spec


def study_status(study_dir: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    spec = load_saved_spec(study_dir)
    tracking_uri = tracking_uri or tracking.default_tracking_uri(spec.study_dir)
    c = tracking.client(tracking_uri)
    exp = c.get_experiment_by_name(spec.name)
    runs = tracking.runs_by_key(c, exp.experiment_id) if exp else {}
    alive = driver_alive(spec.study_dir)
    plan = load_plan(spec.study_dir)
    per_task: dict[str, Counter] = defaultdict(Counter)
    failures = []
    planned_keys = set()
    for t in plan:
        planned_keys.add(t["trial_key"])
        run = runs.get(t["trial_key"])
        state = _state(run.info.status if run else None, alive)
        per_task[t["task"]]["planned"] += 1
        per_task[t["task"]][state] += 1
        if state == "failed":
            failures.append({**{k: t[k] for k in ("trial_key", "task", "dataset", "network", "point", "variant", "seed")},
                             "error": run.data.tags.get(tracking.ERROR_TAG, "")})
    extra = [k for k in runs if k not in planned_keys]
    for key in extra:  # e.g. trials sampled by an Optuna search: not in the grid plan
        run = runs[key]
        task = run.data.params.get("task", "?")
        state = _state(run.info.status, alive)
        per_task[task]["planned"] += 1
        per_task[task][state] += 1
        if state == "failed":
            failures.append({"trial_key": key, "task": task, "network": run.data.params.get("network"),
                             "point": run.data.params.get("point"), "error": run.data.tags.get(tracking.ERROR_TAG, "")})
    states = ("planned", "finished", "running", "interrupted", "failed", "pending")
    tasks = {task: {s: counts.get(s, 0) for s in states} for task, counts in per_task.items()}
    total = {s: sum(t[s] for t in tasks.values()) for s in states}
    experiment_id = exp.experiment_id if exp else None
    base = tracking.ui_base_url(tracking_uri)
    return {"study": spec.name, "study_dir": str(spec.study_dir), "tracking_uri": tracking_uri,
            "driver_running": alive, "tasks": tasks, "total": total, "failures": failures,
            "experiment_id": experiment_id, "ui_command": tracking.ui_command(tracking_uri),
            "ui_url": tracking.runs_page_url(base, experiment_id) if base and experiment_id else None}


def _state(status: str | None, alive: bool) -> str:
    if status == tracking.FINISHED:
        return "finished"
    if status in (tracking.FAILED, tracking.KILLED):
        return "failed"
    if status == tracking.RUNNING:
        return "running" if alive else "interrupted"
    return "pending"


def print_status(study_dir: Path, tracking_uri: str | None = None, as_json: bool = False) -> int:
    st = study_status(study_dir, tracking_uri)
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"study {st['study']} ({st['study_dir']}), driver {'running' if st['driver_running'] else 'not running'}")
    header = ["task", "planned", "finished", "running", "interrupted", "failed", "pending"]
    rows = [[task, *(str(v[h]) for h in header[1:])] for task, v in st["tasks"].items()]
    rows.append(["total", *(str(st["total"][h]) for h in header[1:])])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    for f in st["failures"]:
        print(f"FAILED {f['task']} {f.get('network')}:{f.get('point')} [{f['trial_key']}]: {f['error']}")
    for line in tracking.ui_hint(st["tracking_uri"], st["experiment_id"]):
        print(line)
    return 0
