"""CPU seconds of one `dpl run`, per process, with dpl's private Ray against the same run on Ray's own defaults.

What a launch costs before its trials do any work decides how long a small study (and the test suite, which
launches ~30) takes on a 2-core machine. `study.local_ray` starts Ray without the processes a private one-node
Ray does not use: the dashboard (API server), the autoscaler monitor, the log monitor (without --verbose) and the
idle workers Ray prestarts per CPU. This runs one toy study (tests/plugins/toy_task.py: 4 trials of 2 epochs,
network "none", 2 at a time) both ways, alternating, and reads every process's CPU time from /proc while it
runs (sampled every 0.1 s: a process living less than that is missed).

    python bench/launch_cpu.py            # 3 runs each way, ~2 min on 2 cores
    python bench/launch_cpu.py --runs 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: `dpl run` with `study.local_ray` back on Ray's defaults (nothing skipped, idle workers prestarted)
RAY_DEFAULTS = ("import contextlib, sys, study.local_ray as lr; lr._without = lambda methods: contextlib.nullcontext(); "
                "lr.NO_IDLE_WORKERS.clear(); from study.cli import main; sys.exit(main(sys.argv[1:]))")
KINDS = [("study.cli", "driver (dpl run)"), ("-c import contextlib", "driver (dpl run)"),
         ("setup_worker.py", "trial workers"), ("default_worker.py", "idle prestarted workers"),
         ("dashboard/dashboard.py", "dashboard (API server)"), ("dashboard/agent.py", "dashboard agent"),
         ("runtime_env/agent", "runtime env agent"), ("log_monitor.py", "log monitor"),
         ("autoscaler/_private/monitor.py", "autoscaler monitor"), ("gcs_server", "GCS and raylet"), ("raylet", "GCS and raylet")]


def kind(command: str) -> str:
    return next((name for part, name in KINDS if part in command), "other")


def cpu_of(pid: str) -> tuple[str, float] | None:
    """(start time, utime + stime seconds) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(command: list[str], env: dict[str, str]) -> tuple[dict[str, float], float]:
    """CPU seconds by process kind of everything started while `command` ran, and its wall time."""
    before = {pid for pid in os.listdir("/proc") if pid.isdigit()}
    seen: dict[tuple[str, str], list] = {}
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        running = proc.poll() is None
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in before or (stat := cpu_of(pid)) is None:
                continue
            entry = seen.setdefault((pid, stat[0]), [None, 0.0])
            if entry[0] is None:
                try:
                    entry[0] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    entry[0] = ""
            entry[1] = stat[1]
        if not running:
            break
        time.sleep(0.1)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"FAIL: the study failed (exit {proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    by_kind: dict[str, float] = defaultdict(float)
    for command_line, cpu in seen.values():
        if command_line:
            by_kind[kind(command_line)] += cpu
    return by_kind, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average)")
    results: dict[str, list[tuple[dict[str, float], float]]] = {"dpl": [], "ray defaults": []}
    with tempfile.TemporaryDirectory(prefix="dpl-launch-cpu-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        spec = Path(tmp) / "toy.yaml"
        spec.write_text(yaml.safe_dump({"name": "toy", "weights": "random", "networks": ["none"], "seeds": [0, 1, 2, 3],
                                        "resources": {"cpu": 1}, "max_concurrent": 2, "ray": {"num_cpus": 2},
                                        "tasks": {"toy": {"data": str(data), "params": {"epochs": 2}}}}))
        env = {**os.environ, "DPL_TASKS": "toy=toy_task", "MLFLOW_DISABLE_TELEMETRY": "true",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": tmp,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "plugins"), str(ROOT)])}
        for i in range(args.runs):
            for name, head in (("dpl", ["-m", "study.cli"]), ("ray defaults", ["-c", RAY_DEFAULTS])):
                study = Path(tmp) / f"study-{name.replace(' ', '-')}-{i}"
                results[name].append(measure([sys.executable, *head, "run", str(spec), "--storage", str(study)], env))
    kinds = [k for k in dict.fromkeys(name for _, name in KINDS) if any(k in r for rs in results.values() for r, _ in rs)]
    print(f"\none `dpl run` of a 4-trial toy study, CPU seconds per process kind (median of {args.runs} runs each)")
    print(f"{'process':26s} {'dpl':>8s} {'Ray defaults':>13s}")
    for k in kinds + ["other"]:
        a = statistics.median(r.get(k, 0.0) for r, _ in results["dpl"])
        b = statistics.median(r.get(k, 0.0) for r, _ in results["ray defaults"])
        if a or b:
            print(f"{k:26s} {a:8.2f} {b:13.2f}")
    total = {n: statistics.median(sum(r.values()) for r, _ in rs) for n, rs in results.items()}
    wall = {n: statistics.median(w for _, w in rs) for n, rs in results.items()}
    print(f"{'total CPU s':26s} {total['dpl']:8.2f} {total['ray defaults']:13.2f}   ratio {total['dpl'] / total['ray defaults']:.2f}")
    print(f"{'wall s':26s} {wall['dpl']:8.2f} {wall['ray defaults']:13.2f}   ratio {wall['dpl'] / wall['ray defaults']:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
