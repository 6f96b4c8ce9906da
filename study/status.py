"""`dpl status DIR`: the study's coverage per task, read from MLflow (the plan comes from the study dir).

A run that is RUNNING while no driver holds the study's lock is shown as `interrupted`: its driver was
killed, and `dpl resume DIR` continues it from its last checkpoint in the same run. `--watch` refreshes
the same table until the driver lets go of the lock (`watch_status`).
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, TextIO

from study import tracking
from study.lock import driver_alive
from study.plan import load_plan
from study.spec import SPEC_FILE, load_saved_spec
from trainables.errors import UserError


def study_status(study_dir: Path, tracking_uri: str | None = None) -> dict[str, Any]:
    spec = load_saved_spec(study_dir, task_settings=False)  # no task module, no torch: status stays quick
    tracking_uri = tracking_uri or tracking.default_tracking_uri(spec.study_dir)
    c = tracking.client(tracking_uri)
    exp = c.get_experiment_by_name(spec.name)
    runs = tracking.runs_by_key(c, exp.experiment_id) if exp else {}
    alive = driver_alive(spec.study_dir)
    plan = load_plan(spec.study_dir)
    per_task: dict[str, Counter] = defaultdict(Counter)
    failures, stopped = [], []
    planned_keys = set()
    for t in plan:
        planned_keys.add(t["trial_key"])
        run = runs.get(t["trial_key"])
        state = _state(run, alive)
        per_task[t["task"]]["planned"] += 1
        per_task[t["task"]][state] += 1
        if state == "failed":
            failures.append({**{k: t[k] for k in ("trial_key", "task", "dataset", "network", "point", "variant", "seed")},
                             "error": run.data.tags.get(tracking.ERROR_TAG, "")})
        elif state == "stopped":
            stopped.append({**{k: t[k] for k in ("trial_key", "network", "point", "seed")},
                            "epoch": int(run.data.tags[tracking.STOPPED_TAG]),
                            "metric": run.data.tags.get(tracking.EPOCH_METRIC_TAG, ""),
                            "value": float(run.data.tags.get(tracking.STOPPED_VALUE_TAG, "nan"))})
    extra = [k for k in runs if k not in planned_keys]
    for key in extra:  # e.g. trials sampled by an Optuna search: not in the grid plan
        run = runs[key]
        task = run.data.params.get("task", "?")
        state = _state(run, alive)
        per_task[task]["planned"] += 1
        per_task[task][state] += 1
        if state == "failed":
            failures.append({"trial_key": key, "task": task, "network": run.data.params.get("network"),
                             "point": run.data.params.get("point"), "error": run.data.tags.get(tracking.ERROR_TAG, "")})
    states = ("planned", "finished", "stopped", "running", "interrupted", "failed", "pending")
    tasks = {task: {s: counts.get(s, 0) for s in states} for task, counts in per_task.items()}
    total = {s: sum(t[s] for t in tasks.values()) for s in states}
    experiment_id = exp.experiment_id if exp else None
    base = tracking.ui_base_url(tracking_uri)
    parent = tracking.study_run(c, experiment_id) if exp else None
    search = _search(parent.data.tags if parent else {}, spec.raw, len(plan))
    return {"study": spec.name, "study_dir": str(spec.study_dir), "tracking_uri": tracking_uri,
            "driver_running": alive, "tasks": tasks, "total": total, "failures": failures, "stopped": stopped,
            "search": search,
            "experiment_id": experiment_id, "ui_command": tracking.ui_command(tracking_uri),
            "ui_url": tracking.runs_page_url(base, experiment_id) if base and experiment_id else None}


def _search(tags: dict[str, str], raw: dict[str, Any], planned: int = 0) -> dict[str, Any] | None:
    """A search study's progress as its driver last recorded it (study-run tags): type, samples (the
    budget), done, left, seeds each sample runs on; before the first record, the spec's (a halving search's
    samples: its `planned` trials' configurations). None for a grid."""
    kind = raw["search"].get("type", "grid")
    if kind == "grid":
        return None
    budget = raw["search"].get("num_samples") or planned // max(1, len(raw["seeds"]))
    recorded = {tracking.SEARCH_TAG: kind, tracking.SEARCH_SAMPLES_TAG: str(budget),
                tracking.SEARCH_DONE_TAG: "0", tracking.SEARCH_SEEDS_TAG: str(len(raw["seeds"])), **tags}
    total, done = int(recorded[tracking.SEARCH_SAMPLES_TAG]), int(recorded[tracking.SEARCH_DONE_TAG])
    return {"type": kind, "samples": total, "done": done, "left": max(0, total - done),
            "seeds": int(recorded[tracking.SEARCH_SEEDS_TAG]), "line": tracking.search_line(recorded)}


def _state(run: Any | None, alive: bool) -> str:
    """`tracking.run_state`, with a RUNNING run shown as interrupted while no driver holds the lock."""
    state = tracking.run_state(run)
    return "interrupted" if state == "running" and not alive else state


def format_status(st: dict[str, Any]) -> list[str]:
    """The lines `dpl status` prints for a `study_status` result (also each refresh of `--watch`)."""
    lines = [f"study {st['study']} ({st['study_dir']}), driver {'running' if st['driver_running'] else 'not running'}"]
    header = ["task", "planned", "finished", *(["stopped"] if st["total"].get("stopped") or st.get("search") else []),
              "running", "interrupted", "failed", "pending"]
    rows = [[task, *(str(v[h]) for h in header[1:])] for task, v in st["tasks"].items()]
    rows.append(["total", *(str(st["total"][h]) for h in header[1:])])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    if st.get("search"):
        sampled = "; the table counts the trials it has sampled so far" if st["search"]["type"] == "optuna" else ""
        lines.append(st["search"]["line"] + sampled)
    if st["stopped"]:
        at = Counter(s["epoch"] for s in st["stopped"])
        lines.append(f"stopped early: {len(st['stopped'])} trial(s), "
                     + ", ".join(f"{n} at epoch {e}" for e, n in sorted(at.items()))
                     + " (finished runs, not failures; `dpl recommend` ranks them by the rung they reached)")
    lines += [f"FAILED {f['task']} {f.get('network')}:{f.get('point')} [{f['trial_key']}]: {f['error']}"
              for f in st["failures"]]
    lines += tracking.ui_hint(st["tracking_uri"], st["experiment_id"])
    return lines


def print_status(study_dir: Path, tracking_uri: str | None = None, as_json: bool = False) -> int:
    st = study_status(study_dir, tracking_uri)
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    print("\n".join(format_status(st)))
    return 0


def _snapshot(study_dir: Path, tracking_uri: str | None) -> tuple[list[str], dict[str, Any] | None, bool]:
    """(lines to show, status or None, whether a driver is still at work) for one `--watch` refresh.

    A driver that holds the lock but has not saved its spec and plan yet is starting: wait for it.
    """
    if not (study_dir / SPEC_FILE).is_file() and driver_alive(study_dir):
        return [f"study {study_dir}: a driver is starting (no spec saved yet)"], None, True
    st = study_status(study_dir, tracking_uri)
    return format_status(st), st, bool(st["driver_running"])


def watch_status(study_dir: Path, tracking_uri: str | None = None, interval: float = 5.0, as_json: bool = False,
                 stream: TextIO | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """`dpl status DIR --watch`: refresh every `interval` s until no driver holds the study's lock.

    Once the lock is free nothing can be RUNNING any more (a run left RUNNING shows as interrupted), so
    that refresh is the last one. On a terminal each refresh redraws the previous one in place (ANSI
    clear screen, as `watch` does); in a pipe or log each is a block of its own under a time stamp
    (with --json: one JSON object per line). Ctrl-C stops watching (exit 0: nothing went wrong).
    """
    if interval <= 0:
        raise UserError(f"--interval must be positive, got {interval}; e.g. --interval 5")
    out = stream or sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    shown = 0
    try:
        while True:
            lines, st, alive = _snapshot(Path(study_dir), tracking_uri)
            if as_json:
                out.write(json.dumps(st) + "\n")
            else:
                stamp = time.strftime("%H:%M:%S")
                foot = (f"[{stamp}] refreshing every {interval:g} s; Ctrl-C stops" if alive
                        else f"[{stamp}] the study's driver is not running: done watching")
                block = [*lines, foot]
                if tty:
                    out.write("\033[H\033[2J")  # home and clear: long lines that wrapped are redrawn too
                elif shown:
                    out.write("\n")
                out.write("\n".join(block) + "\n")
                shown += 1
            out.flush()
            if not alive:
                return 0
            sleep(interval)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return 0
