"""What Ray Tune + MLflow cost a study: per-trial overhead and core utilisation, vs the same trials in-process.

Three measurements, side by side in one run, on the same trial configs:

- in-process: each trial through `trainables.trial.run_trial` with a `LocalReporter` (what `dpl trial`
  does), in this process, with torch threads = the study's cpus per trial. Each config runs twice and the
  second (warm) run is timed: C_i is the trial's own compute time, and C = sum of C_i.
- sequential study: `study.driver.run_study` with max_concurrent 1, in a fresh child process (as `dpl run`),
  with its phases timed: driver setup (plan, MLflow experiment, parent run), ray.init, Tune fit, teardown
  (coverage, ray.shutdown); and each trial's own MLflow run span (created -> terminated, inside the worker).
- parallel study: the same with `--slots` trials at once (default 2 = this machine's cores).

Definitions (n trials, W = run_study wall, I = ray.init wall):

- per-trial overhead = (W_sequential - I - C) / n: everything Ray + MLflow + the driver add per trial,
  beyond the fixed cost of starting Ray. Split into: inside the trial's MLflow run (params, metrics,
  checkpoint copies, artifacts: sum(span_i - C_i) / n), Tune scheduling and worker start (fit - sum(span_i)) / n,
  and driver setup + teardown / n.  Target: <= 1 s. (For the parallel run the same quantity in
  slot-seconds: (slots x (W - I) - C) / n.)
- steady-state overhead = the gap between consecutive trials + (span_i - C_i), fixed per-launch costs
  (setup, worker start, teardown) excluded; the script prints from which n the per-trial overhead is <= 1 s.
- core utilisation = C / (slots x W_parallel): the share of the cores the study held that did trial work.
  Target: >= 0.8 on the smoke study (`--preset smoke`; the toy study's trials are far too short for it).
  Printed with its upper bounds (zero overhead; only ray.init + worker start).
- fixed costs, measured apart in fresh interpreters: the imports a trial worker needs, a new MLflow store.

    python bench/study_overhead.py                  # toy study, 6 trials (tests/plugins/toy_task.py), ~1.5 min
    python bench/study_overhead.py --quick          # toy study, 4 trials, sequential only, no probes (~35 s)
    python bench/study_overhead.py --preset smoke   # the smoke preset (8 trials, all 4 tasks), ~3.5 min
    python bench/study_overhead.py --runs none      # only the fixed-cost probes (imports, MLflow store), ~25 s
    python bench/study_overhead.py --preset smoke --runs parallel --slots 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
sys.path.insert(0, str(ROOT))

TARGET_OVERHEAD_S = 1.0
TARGET_UTILISATION = 0.8
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "1",
             "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def setup_env() -> None:
    """The toy task as a plugin, for this process, its children and the Ray workers (driver passes these)."""
    os.environ.update(QUIET_ENV)
    os.environ["DPL_TASKS"] = ",".join(x for x in (os.environ.get("DPL_TASKS", ""), "toy=toy_task") if x)
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    sys.path.insert(0, str(PLUGINS))


def load_line() -> str:
    try:
        return "load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average: unknown"


# --------------------------------------------------------------------------------------------- specs


def toy_spec(workdir: Path, n_trials: int, epochs: int) -> dict[str, Any]:
    """n trials = points x seeds of squeezenet1_1 (3 points when n is a multiple of 3, else 2, else 1)."""
    k = 3 if n_trials % 3 == 0 else 2 if n_trials % 2 == 0 else 1
    points, seeds = ["p1", "p2", "p3"][:k], list(range(n_trials // k))
    data = workdir / "toy-data"
    data.mkdir(parents=True, exist_ok=True)
    return {"name": "bench_toy", "weights": "random", "networks": ["squeezenet1_1"], "points": points,
            "seeds": seeds, "tasks": {"toy": {"data": str(data), "params": {"epochs": epochs}}},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1}


def preset_spec(preset: str, workdir: Path) -> dict[str, Any]:
    """A preset with its synthetic data generated once, up front, and shared by every run below (so that
    no run is charged for generating it)."""
    from study.plan import ensure_synthetic_data
    from study.spec import StudySpec, preset_path, read_yaml, validate
    from trainables.tasks import task_module

    raw = read_yaml(preset_path(preset))
    shared = workdir / "shared"
    spec = StudySpec(name=raw["name"], raw=validate(raw), storage=shared)
    t0 = time.perf_counter()
    made = ensure_synthetic_data(spec)
    if made:
        print(f"generated synthetic data for {', '.join(p.name for p in made)} in {time.perf_counter() - t0:.1f} s "
              f"(once, not charged to any run)")
    for task, settings in raw["tasks"].items():
        if settings.get("data", "synthetic") == "synthetic":
            datasets = settings.get("datasets", [task_module(task).DATASETS[0]])
            settings["data"] = {ds: str(shared / "data" / ds) for ds in datasets}
    return raw


def write_spec(raw: dict[str, Any], path: Path, max_concurrent: int, num_cpus: int | None) -> Path:
    import yaml

    raw = json.loads(json.dumps(raw))
    raw["max_concurrent"] = max_concurrent
    raw.pop("storage", None)
    if num_cpus:
        raw["ray"] = {**raw.get("ray", {}), "num_cpus": num_cpus}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# -------------------------------------------------------------------------------------------- in-process


def in_process(spec_path: Path, workdir: Path) -> list[dict[str, Any]]:
    """C_i of every planned trial: run_trial + LocalReporter, run twice, the second timed."""
    import torch

    from study.plan import expand
    from study.spec import load_spec
    from trainables.reporting import LocalReporter
    from trainables.trial import run_trial

    spec = load_spec(spec_path, storage=workdir / "inproc-study")
    torch.set_num_threads(max(1, int(spec.raw["resources"]["cpu"])))
    rows = []
    for i, t in enumerate(expand(spec)):
        start = time.perf_counter()
        run_trial(t.config, LocalReporter(workdir / "inproc" / f"cold-{i}", echo=False))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_trial(t.config, LocalReporter(workdir / "inproc" / f"timed-{i}", echo=False))
        c = t.config
        rows.append({"key": t.key, "trial": f"{c.task}:{c.network}:{c.point or 'pixel'}:s{c.seed}",
                     "seconds": time.perf_counter() - start, "cold": cold})
    return rows


# ----------------------------------------------------------------------------------------- child (study)


def child(job_path: Path) -> int:
    """Run one study with its phases timed; write the timings next to the job file."""
    t_start = time.perf_counter()
    job = json.loads(job_path.read_text())
    setup_env()
    import mlflow  # noqa: F401  - imported here so that its cost is counted as imports, not as setup
    import ray
    import torch  # noqa: F401

    import study.driver as driver
    from study import tracking
    from study.spec import load_spec

    t_imported = time.perf_counter()
    marks: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            marks[name + "_start"] = time.perf_counter()
            marks[name + "_start_epoch"] = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                marks[name + "_end"] = time.perf_counter()
                marks[name + "_end_epoch"] = time.time()
        return wrapper

    driver._init_ray = timed("ray_init", driver._init_ray)
    driver.run_batch = timed("fit", driver.run_batch)
    if job.get("plan_order"):
        driver.longest_first = list  # the A/B of --plan-order: Tune gets the trials in plan order
    ray.shutdown = timed("ray_shutdown", ray.shutdown)
    spec = load_spec(job["spec"], storage=job["storage"])
    t0 = time.perf_counter()
    code = driver.run_study(spec)
    wall = time.perf_counter() - t0
    c = tracking.client(tracking.default_tracking_uri(spec.study_dir))
    exp = c.get_experiment_by_name(spec.name)
    runs = tracking.find_runs(c, exp.experiment_id, f"tags.`{tracking.KIND_TAG}` = 'trial'")
    result = {
        "code": code, "imports": t_imported - t_start, "wall": wall,
        "setup": marks.get("ray_init_start", t0) - t0,
        "ray_init": marks.get("ray_init_end", 0) - marks.get("ray_init_start", 0),
        "fit": marks.get("fit_end", 0) - marks.get("fit_start", 0),
        "ray_shutdown": marks.get("ray_shutdown_end", 0) - marks.get("ray_shutdown_start", 0),
        "between_init_and_fit": marks.get("fit_start", 0) - marks.get("ray_init_end", 0),
        "after_fit": t0 + wall - marks.get("fit_end", t0 + wall),
        "fit_start_epoch": marks.get("fit_start_epoch"), "fit_end_epoch": marks.get("fit_end_epoch"),
        "trials": [{"key": r.data.tags.get(tracking.KEY_TAG), "status": r.info.status,
                    "start": r.info.start_time / 1000, "end": r.info.end_time / 1000 if r.info.end_time else None,
                    "span": (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None}
                   for r in runs],
    }
    Path(job["out"]).write_text(json.dumps(result, indent=1))
    return 0


def run_child(spec_path: Path, storage: Path, log: Path, plan_order: bool = False) -> dict[str, Any]:
    job = storage.with_suffix(".job.json")
    out = storage.with_suffix(".result.json")
    job.write_text(json.dumps({"spec": str(spec_path), "storage": str(storage), "out": str(out),
                               "plan_order": plan_order}))
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(job)], stdout=f,
                              stderr=subprocess.STDOUT, cwd=str(ROOT), env=os.environ.copy())
    process = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text()[-3000:]
        raise SystemExit(f"study run failed (exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads(out.read_text())
    result["process"] = process
    return result


# --------------------------------------------------------------------------------------- fixed costs


IMPORT_PROBES = (
    ("python start", "pass"),
    ("import torch", "import torch"),
    ("import torch, torchvision", "import torch, torchvision"),
    ("import mlflow", "import mlflow"),
    ("from ray import tune", "from ray import tune"),
    ("a trial worker's imports (study.trainable + run_config_trial)",
     "import study.trainable, torch, torchvision, mlflow, trainables.trial, trainables.tasks; from ray import tune"),
)
MLFLOW_NEW_STORE = """
import sys, time
from pathlib import Path
from study import tracking
d = Path(sys.argv[1])
t = time.perf_counter(); tracking.init_experiment(tracking.default_tracking_uri(d), "probe", d)
print(time.perf_counter() - t)
"""
MLFLOW_FIRST_QUERY = """
import sys, time
from pathlib import Path
import mlflow.tracking
from study import tracking
t = time.perf_counter(); tracking.client(tracking.default_tracking_uri(Path(sys.argv[1]))).get_experiment_by_name("probe")
print(time.perf_counter() - t)
"""


def fixed_costs() -> list[tuple[str, float]]:
    """Costs every launch pays once per process, each measured in a fresh interpreter."""
    rows = []
    for label, code in IMPORT_PROBES:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=os.environ.copy(), check=True,
                       capture_output=True)
        rows.append((f"{label} (fresh interpreter)", time.perf_counter() - start))
    with tempfile.TemporaryDirectory(prefix="dpl-bench-mlflow-") as d:
        for label, code in (("MLflow: a new SQLite store + experiment (tracking.init_experiment, mlflow imported)",
                             MLFLOW_NEW_STORE),
                            ("MLflow: first client + query of that store in a new process (mlflow imported)",
                             MLFLOW_FIRST_QUERY)):
            out = subprocess.run([sys.executable, "-c", code, d], cwd=str(ROOT), env=os.environ.copy(), check=True,
                                 capture_output=True, text=True).stdout.split()
            rows.append((label, float(out[-1])))
    return rows


# -------------------------------------------------------------------------------------------- report


def summarise(name: str, res: dict[str, Any], inproc: dict[str, float], slots: int) -> dict[str, Any]:
    n = len(inproc)
    c_total = sum(inproc.values())
    spans = {t["key"]: t["span"] for t in res["trials"] if t["span"] is not None}
    finished = sum(1 for t in res["trials"] if t["status"] == "FINISHED")
    in_trial = sum(spans[k] - inproc[k] for k in inproc if k in spans) / n
    # the Tune fit as a timeline: worker start (fit start -> first trial run created), the trials, wrap-up
    done = sorted((t["start"], t["end"]) for t in res["trials"] if t["end"])
    first_start, last_end = done[0][0], max(e for _, e in done)
    busy = last_end - first_start
    worker_start = first_start - res["fit_start_epoch"]
    wrap_up = res["fit_end_epoch"] - last_end
    # steady state: slot-seconds between trials (scheduling, actor reset, result handling) per trial
    marginal = (slots * busy - sum(spans.values())) / max(n - 1, 1) if n > 1 else float("nan")
    return {
        "run": name, "slots": slots, "trials": n, "finished": finished, "process": res["process"],
        "imports": res["imports"], "setup": res["setup"], "ray_init": res["ray_init"], "fit": res["fit"],
        "teardown": res["after_fit"] + res["between_init_and_fit"], "wall": res["wall"],
        "span_sum": sum(spans.values()), "C": c_total,
        # slot-seconds per trial not spent on the trial's own compute; slots = 1: (W - I - C) / n
        "overhead": (slots * (res["wall"] - res["ray_init"]) - c_total) / n,
        "in_trial": in_trial,
        "tune": (slots * res["fit"] - sum(spans.values())) / n,
        "driver": slots * (res["setup"] + res["after_fit"] + res["between_init_and_fit"]) / n,
        "worker_start": worker_start, "wrap_up": wrap_up, "busy": busy, "marginal": marginal, "spans": spans,
        "fixed": res["setup"] + res["between_init_and_fit"] + worker_start + wrap_up + res["after_fit"],
        "utilisation": c_total / (slots * res["wall"]),
        "utilisation_fit": c_total / (slots * res["fit"]) if res["fit"] else float("nan"),
    }


def print_runs(rows: list[dict[str, Any]]) -> None:
    cols = [("run", "run", "<12", None), ("slots", "slots", ">6", "d"), ("trials", "trials", ">7", "d"),
            ("finished", "done", ">5", "d"), ("process", "process s", ">10", ".1f"), ("imports", "imports", ">8", ".1f"),
            ("setup", "setup", ">7", ".1f"), ("ray_init", "ray.init", ">9", ".1f"), ("fit", "Tune fit", ">9", ".1f"),
            ("teardown", "teardown", ">9", ".1f"), ("wall", "study W", ">8", ".1f"), ("span_sum", "sum spans", ">10", ".1f"),
            ("C", "C in-proc", ">10", ".2f")]
    print("".join(f"{h:{a}}" for _, h, a, _ in cols))
    for r in rows:
        print("".join(f"{r[k]:{a}{f or ''}}" for k, _, a, f in cols))


def print_fixed_costs() -> None:
    print("\n## fixed costs of a launch, measured apart (what a study's setup and worker start are made of)", flush=True)
    for label, seconds in fixed_costs():
        print(f"{label:<90}{seconds:>7.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="toy study, 4 trials, sequential run only, no fixed-cost probes")
    ap.add_argument("--preset", choices=("smoke", "quick", "paper"), help="measure a built-in study instead of the toy")
    ap.add_argument("--trials", type=int, default=6, help="toy study: number of trials (3 points x seeds)")
    ap.add_argument("--epochs", type=int, default=3, help="toy study: epochs (= MLflow reports + checkpoints) per trial")
    ap.add_argument("--runs", nargs="+", choices=("sequential", "parallel", "none"),
                    help="default: both; none = only the fixed-cost probes")
    ap.add_argument("--no-fixed-costs", action="store_true", help="skip the fixed-cost probes (imports, MLflow store)")
    ap.add_argument("--slots", type=int, default=min(2, os.cpu_count() or 1), help="trials at once in the parallel run")
    ap.add_argument("--plan-order", action="store_true",
                    help="start trials in plan order instead of the driver's longest-first (the A/B for that choice)")
    ap.add_argument("--workdir", help="keep the studies here (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    if args.child:
        return child(Path(args.child))
    setup_env()
    if args.quick:
        args.trials = min(args.trials, 4)
        args.runs = args.runs or ["sequential"]
        args.no_fixed_costs = True
    runs = [r for r in (args.runs or ["sequential", "parallel"]) if r != "none"]
    if args.preset and args.preset != "smoke":
        print(f"note: the {args.preset} preset needs real data and may take hours", file=sys.stderr)
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="dpl-bench-study-") if not args.workdir else None
    workdir = Path(args.workdir or tmp.name).resolve()  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {Path(__file__).name}: python {sys.version.split()[0]}, cpu count {os.cpu_count()}")
    print(f"# command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {load_line()}")
    if not runs:
        print_fixed_costs()
        if tmp is not None:
            tmp.cleanup()
        return 0
    raw = preset_spec(args.preset, workdir) if args.preset else toy_spec(workdir, args.trials, args.epochs)
    cpu = float(raw.get("resources", {}).get("cpu", 1))
    spec_seq = write_spec(raw, workdir / "seq.yaml", 1, max(1, int(cpu)))
    spec_par = write_spec(raw, workdir / "par.yaml", args.slots, max(1, int(cpu * args.slots)))

    print(f"\n## in-process reference: run_trial + LocalReporter, {max(1, int(cpu))} torch thread(s), "
          f"second of two runs timed", flush=True)
    inproc_rows = in_process(spec_seq, workdir)
    inproc = {r["key"]: r["seconds"] for r in inproc_rows}
    print(f"{'trial':<48}{'C_i (warm)':>11}{'first run':>11}")
    for r in inproc_rows:
        print(f"{r['trial']:<48}{r['seconds']:>11.2f}{r['cold']:>11.2f}")
    print(f"{'C = sum':<48}{sum(inproc.values()):>11.2f}{sum(r['cold'] for r in inproc_rows):>11.2f}  "
          f"({len(inproc)} trials; first run = cold: imports, graph tracing, allocator)", flush=True)

    summaries = []
    for run in runs:
        slots = 1 if run == "sequential" else args.slots
        spec_path = spec_seq if run == "sequential" else spec_par
        print(f"\n## {run} study: Ray Tune + MLflow (SQLite), {slots} trial(s) at once, fresh child process "
              f"(log: {workdir / (run + '.log')})", flush=True)
        res = run_child(spec_path, workdir / f"study-{run}", workdir / f"{run}.log", args.plan_order)
        s = summarise(run, res, inproc, slots)
        summaries.append(s)
        print_runs([s])
        formula = "(W - ray.init - C) / n" if slots == 1 else f"({slots} x (W - ray.init) - C) / n"
        print(f"per-trial overhead {formula} = {s['overhead']:.2f} s: inside the trial's MLflow run "
              f"{s['in_trial']:.2f} s, Tune scheduling + worker {s['tune']:.2f} s, driver setup + teardown "
              f"{s['driver']:.2f} s")
        print(f"timeline of the Tune fit: worker start {s['worker_start']:.1f} s (fit start -> first trial run), "
              f"trials {s['busy']:.1f} s (first run created -> last run ended), wrap-up {s['wrap_up']:.1f} s")
        print(f"fixed costs (setup, worker start, wrap-up, teardown; ray.init excluded) {s['fixed']:.1f} s = "
              f"{s['fixed'] / s['trials']:.2f} s per trial at n = {s['trials']}; steady-state gap between trials "
              f"{s['marginal']:.2f} slot-s per trial (scheduling, actor reuse, results)")
        per = 1 - s["marginal"] - s["in_trial"]
        if slots == 1 and per > 0:
            print(f"=> (W - ray.init - C) / n <= 1 s from n >= {s['fixed'] / per:.0f} trials (fixed / (1 s - steady-state "
                  f"overhead))")
        print(f"core utilisation C / (slots x W) = {s['utilisation']:.2f}  (over Tune fit only: "
              f"{s['utilisation_fit']:.2f})", flush=True)

    print("\n## per trial: in-process C_i vs its MLflow run span inside each study (span - C_i = MLflow logging, "
          "checkpoint copies, artifacts, provenance, first-use costs in the worker)")
    spans = {s["run"]: s["spans"] for s in summaries}
    print(f"{'trial':<48}{'C_i':>7}" + "".join(f"{'span ' + r[:3]:>10}" for r in spans))
    for r in inproc_rows:
        print(f"{r['trial']:<48}{r['seconds']:>7.2f}" + "".join(f"{spans[k].get(r['key'], float('nan')):>10.2f}" for k in spans))
    if len(spans) == 2:
        ratio = sum(spans["parallel"].values()) / sum(spans["sequential"].values())
        print(f"sum of spans, parallel / sequential = {ratio:.2f} (1.00 = each of the {args.slots} slots had a free core; "
              f"higher = the trials slowed each other or other processes took cores)")
    c_max = max(inproc.values())
    c_sum = sum(inproc.values())
    bound = c_sum / (args.slots * max(c_sum / args.slots, c_max))
    if "parallel" in runs:
        print(f"utilisation bound with zero overhead at {args.slots} slots: C / (slots x max(C / slots, max C_i)) = {bound:.2f} "
          f"(longest trial {c_max:.1f} s of C = {c_sum:.1f} s)")
    for s in summaries:
        if s["run"] == "parallel":
            w_min = s["ray_init"] + s["worker_start"] + max(c_sum / args.slots, c_max)
            print(f"... and with only this run's ray.init ({s['ray_init']:.1f} s) and worker start ({s['worker_start']:.1f} s) "
                  f"added: {c_sum / (args.slots * w_min):.2f}")

    print("\n## summary (seconds; process = child wall incl. interpreter and imports; study W = run_study wall)")
    print_runs(summaries)
    results = []
    seq = [s for s in summaries if s["run"] == "sequential"]
    par = [s for s in summaries if s["run"] == "parallel"]
    study_name = args.preset or "toy"
    if seq:
        o = seq[0]["overhead"]
        results.append((f"Ray + MLflow overhead <= {TARGET_OVERHEAD_S:g} s per trial ({study_name}, sequential, "
                        f"(W - ray.init - C) / n at n = {seq[0]['trials']})", f"{o:.2f} s", o <= TARGET_OVERHEAD_S))
        m = seq[0]["marginal"] + seq[0]["in_trial"]
        results.append((f"  steady state (gap between trials + inside the trial's MLflow run), fixed costs excluded",
                        f"{m:.2f} s", m <= TARGET_OVERHEAD_S))
    if par:
        u = par[0]["utilisation"]
        note = "" if args.preset == "smoke" else " (target is for --preset smoke)"
        results.append((f"core utilisation >= {TARGET_UTILISATION} ({study_name}, {args.slots} slots){note}",
                        f"{u:.2f}", u >= TARGET_UTILISATION))
    if not args.no_fixed_costs:
        print_fixed_costs()
    bad = [s for s in summaries if s["finished"] != s["trials"]]
    print(f"\n## targets  ({load_line()}; {time.perf_counter() - started:.0f} s)")
    for name, value, ok in results:
        print(f"{'PASS' if ok else 'MISS':<5} {name}: {value}")
    if bad:
        print(f"FAIL  not every trial finished: {[(s['run'], s['finished'], s['trials']) for s in bad]}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
