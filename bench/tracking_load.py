"""Load on the MLflow tracking server: N simulated trials logging at once, against the server on SQLite and
on PostgreSQL (both private, on loopback), every run bounded in count and time.

A simulated trial is a real trial's tracking without its training, through the project's own code
(`study.tracking`, `TuneMlflowReporter.record` in checkpoint mode `mlflow`, `study.artifact_checkpoints`,
the study's retry budget), in the order a superres trial logs:
  start: attach its run by key (search, create, search), the config's params, provenance params and tags;
  each epoch: `--epoch-s` of "training" (a sleep, +-20 %), then `record`: 4 metrics, a checkpoint of
    `--checkpoint-mb` uploaded as a new version, the pointer tag moved, the previous version deleted;
  end: 6 test metrics, `--samples` sample images, its description, FINISHED.
Measured checkpoint sizes (one smoke trial each, squeezenet1_1 p1; the task networks do not depend on the
budget): superres 6.5 MB (the default), delineation 1.1 MB, autoencoder/svhn 70 MB, similarity lin 24 kB.

Every HTTP request is timed on the client (`requests.Session.request`), so requests per epoch are counted.
After each run the server is read back: one run per trial key (duplicates = extra runs + (metric, step)
pairs held more than once), FINISHED, no epoch or final metric missing (losses), the pointer on the last
epoch's checkpoint. A (backend, N) **holds** when no trial failed, nothing was duplicated or lost, and the
p99 time to record an epoch is at most `--p99-target-s` (default 10 s: a paper-budget epoch takes minutes on a
GPU, so this keeps tracking under ~10 % of a trial's time; the simulated epochs are compressed to
`--epoch-s` so that the server sees N trials' requests far more often than on a real cluster).

    python bench/tracking_load.py                        # N = 16, 64, 256 x SQLite, PostgreSQL x 1, 4 workers
    python bench/tracking_load.py --n 16 --backends sqlite --workers 1 --epochs 2    # a quick look (~2 min)
    python bench/tracking_load.py --server-url http://HEAD:5000 --n 64   # a server you run (e.g. the cluster's)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/_servers.py: the private PostgreSQL and MLflow servers

EPOCH_METRICS = ("train/loss", "val/psnr", "val/ssim", "val/best_psnr")
FINAL_METRICS = tuple(f"test/{s}/{m}" for s in ("set5", "set14", "bsd100") for m in ("psnr", "ssim"))
_local = threading.local()
_records: list[tuple[int, str, str, float, bool]] = []  # (trial, phase, "METHOD endpoint", seconds, ok)
_records_lock = threading.Lock()


# ------------------------------------------------------------------------------------ client side


def _instrument() -> None:
    """Time every HTTP request this process sends, attributed to the thread's trial and phase."""
    import requests

    real = requests.Session.request

    def timed(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        started, ok = time.perf_counter(), False
        try:
            response = real(self, method, url, *args, **kwargs)
            ok = response.status_code < 400
            return response
        finally:
            with _records_lock:
                _records.append((getattr(_local, "trial", -1), getattr(_local, "phase", "?"),
                                 f"{method} {_endpoint(url)}", time.perf_counter() - started, ok))

    requests.Session.request = timed


def _endpoint(url: str) -> str:
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    if "mlflow-artifacts/artifacts/" in path:
        return "artifacts"
    return path.removeprefix("api/2.0/mlflow/")


def _config(i: int) -> Any:
    from trainables.config import TrialConfig

    return TrialConfig(task="superres", network="squeezenet1_1", points=("features.1",), dataset="coco", seed=i,
                       weights="random", budget="smoke", params={"iterations": 60, "eval_every": 20, "lr": 1e-4})


def simulated_trial(i: int, args: dict[str, Any], study: dict[str, Any], info: dict[str, Any], blob: Path) -> dict:
    """One trial's tracking, as a superres trial does it; returns its epoch latencies and error."""
    from study import tracking
    from study.trainable import TuneMlflowReporter, trial_params, trial_tags

    _local.trial = i
    rng = random.Random(i)
    out: dict[str, Any] = {"trial": i, "epoch_s": [], "error": "", "key": f"load-{i:04d}", "begin": time.time()}
    scratch = Path(tempfile.mkdtemp(prefix="dpl-load-"))
    try:
        _local.phase = "start"
        time.sleep(rng.uniform(0, args["epoch_s"]))  # trials start over one epoch's time, as Tune starts them
        config = _config(i)
        c = tracking.client(study["tracking_uri"], retry_s=args["retry_s"])
        run_id = tracking.attach_trial_run(c, study["experiment_id"], out["key"], f"load trial {i}",
                                           trial_tags(config, study))
        tracking.log_params_once(c, run_id, trial_params(config, "0" * 40))
        reporter = TuneMlflowReporter(c, run_id, scratch, mode="mlflow")
        reporter.set_info(info)
        metrics: dict[str, float] = {}
        for epoch in range(1, args["epochs"] + 1):
            _local.phase = "train"
            time.sleep(args["epoch_s"] * rng.uniform(0.8, 1.2))
            stage = scratch / f"stage-{epoch}"
            stage.mkdir()
            os.link(blob, stage / "state.pt")  # the same bytes each epoch: the upload reads them, nothing copies
            metrics = {k: rng.random() for k in EPOCH_METRICS}
            _local.phase = "epoch"
            started = time.perf_counter()
            reporter.record(epoch, metrics, stage)
            out["epoch_s"].append(time.perf_counter() - started)
        _local.phase = "end"
        final = {k: rng.random() for k in FINAL_METRICS}
        reporter.log_metrics(args["epochs"], final)
        png = scratch / "sample.png"
        png.write_bytes(os.urandom(20_000))
        for _ in range(args["samples"]):
            reporter.log_artifact(png, "samples")
        reporter.set_info({"sr_best_epoch": args["epochs"]})
        tracking.drop_empty_duplicates(c, study["experiment_id"], out["key"], run_id)
        tracking.describe_trial_run(c, run_id, config, final, "test/set5/psnr", {"test/set5/psnr": "max"})
        tracking.finish_run(c, run_id, tracking.FINISHED)
    except Exception as exc:  # noqa: BLE001 - counted as an error of this trial
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        out["end"] = time.time()
    return out


def _worker(job: tuple[list[int], dict[str, Any], dict[str, Any], dict[str, Any], str]) -> tuple[list[dict], list]:
    """One client process: its share of the trials, one thread each."""
    trials, args, study, info, blob = job
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(args["request_timeout"])
    from study.driver import STUDY_ENV  # what a trial's process has (no run URL printed, no get_run for it)

    os.environ.update(STUDY_ENV)
    _instrument()
    with ThreadPoolExecutor(max_workers=len(trials)) as pool:
        results = list(pool.map(lambda i: simulated_trial(i, args, study, info, Path(blob)), trials))
    return results, list(_records)


# ------------------------------------------------------------------------------------ one load run


def provenance_info() -> dict[str, Any]:
    """What a superres trial's `set_info` records before training (the real function, computed once)."""
    from trainables.trial import prepare, provenance

    return provenance(prepare(_config(0)))


def run_load(url: str, n: int, args: argparse.Namespace, label: str, info: dict[str, Any]) -> dict[str, Any]:
    from study import tracking

    name = f"load-{label}-n{n}-{time.strftime('%H%M%S')}"
    root = Path(tempfile.mkdtemp(prefix="dpl-load-"))
    c = tracking.client(url, retry_s=args.retry_s)
    experiment_id = c.create_experiment(name)
    parent = tracking.parent_run(c, experiment_id, name)
    study = {"name": name, "tracking_uri": url, "experiment_id": experiment_id, "parent_run_id": parent}
    blob = root / "checkpoint.bin"
    blob.write_bytes(os.urandom(int(args.checkpoint_mb * 1e6)))
    job_args = {k: getattr(args, k) for k in ("epochs", "epoch_s", "retry_s", "samples", "request_timeout")}
    procs = max(1, min(args.procs, n))
    shares = [list(range(p, n, procs)) for p in range(procs)]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(procs) as pool:
        pending = pool.map_async(_worker, [(s, job_args, study, info, str(blob)) for s in shares])
        try:
            parts = pending.get(timeout=args.max_s)
            timed_out = False
        except mp.TimeoutError:
            pool.terminate()
            parts, timed_out = [], True
    wall = time.perf_counter() - started
    trials = [t for res, _ in parts for t in res]
    records = [r for _, recs in parts for r in recs]
    check = read_back(c, experiment_id, n, args.epochs, args.samples)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    epoch_lat = sorted(x for t in trials for x in t["epoch_s"])
    req_lat = sorted(r[3] for r in records)
    per_epoch = Counter(r[2] for r in records if r[1] == "epoch")
    epochs_done = len(epoch_lat)
    errors = [t["error"] for t in trials if t["error"]] + (["timed out"] * (n - len(trials)))
    # throughput over the trials' own time (first start to last end), not the client processes' start-up
    window = (max(t["end"] for t in trials) - min(t["begin"] for t in trials)) if trials else wall
    row = {
        "label": label, "n": n, "wall_s": wall, "window_s": window, "timed_out": timed_out, "epochs": epochs_done,
        "epochs_per_s": epochs_done / window, "requests": len(records), "requests_per_s": len(records) / window,
        "requests_per_epoch": sum(per_epoch.values()) / max(1, epochs_done),
        "per_epoch": {k: v / max(1, epochs_done) for k, v in per_epoch.most_common()},
        "failed_requests": sum(not r[4] for r in records),
        "epoch_p50_s": _pct(epoch_lat, 50), "epoch_p99_s": _pct(epoch_lat, 99),
        "request_p50_ms": 1000 * _pct(req_lat, 50), "request_p99_ms": 1000 * _pct(req_lat, 99),
        "errors": len(errors), "error_examples": sorted(set(errors))[:3], **check,
    }
    row["holds"] = (row["errors"] == 0 and row["duplicates"] == 0 and row["losses"] == 0
                    and row["epoch_p99_s"] <= args.p99_target_s)
    return row


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def read_back(c: Any, experiment_id: str, n: int, epochs: int, samples: int) -> dict[str, int]:
    """What the server holds afterwards: runs per key, statuses, every (metric, step) counted."""
    from study import artifact_checkpoints as ac
    from study import tracking

    runs = tracking.find_runs(c, experiment_id, f"tags.`{tracking.KIND_TAG}` = 'trial'")
    keys = Counter(r.data.tags.get(tracking.KEY_TAG) for r in runs)
    expected = {**{k: list(range(1, epochs + 1)) for k in EPOCH_METRICS}, **{k: [epochs] for k in FINAL_METRICS},
                "attempt/start_epoch": [1]}

    def check(run: Any) -> tuple[int, int, bool]:
        dup = lost = 0
        for key, steps in expected.items():
            held = Counter(m.step for m in c.get_metric_history(run.info.run_id, key))
            dup += sum(v - 1 for v in held.values() if v > 1)
            lost += sum(1 for s in steps if s not in held)
        pointer_ok = run.data.tags.get(ac.POINTER_TAG) == ac.version_path(epochs)
        return dup, lost, pointer_ok

    with ThreadPoolExecutor(max_workers=8) as pool:
        checked = list(pool.map(check, runs))
    finished = sum(r.info.status == tracking.FINISHED for r in runs)
    extra_runs = sum(v - 1 for v in keys.values() if v > 1)
    return {
        "runs": len(runs), "finished": finished, "extra_runs": extra_runs,
        "extra_runs_empty": sum(not r.data.metrics and not r.data.params for r in runs) if extra_runs else 0,
        "duplicates": extra_runs + sum(d for d, _, _ in checked),
        "losses": (n - len(keys)) + sum(lost for _, lost, _ in checked) + (len(runs) - finished),
        "pointer_wrong": sum(not ok for _, _, ok in checked),
    }


# ------------------------------------------------------------------------------------------- servers


def serve(backend: str, workers: int, root: Path, pg: Any) -> Any:
    from _servers import MlflowServer

    store = root / f"{backend}-w{workers}"
    if backend == "postgres":
        return MlflowServer(store, pg.create_database(f"load_w{workers}"), pg.env(), workers=workers).start()
    return MlflowServer(store, workers=workers).start()


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| server | N | epochs/s | requests/s | requests per epoch | epoch p50 / p99 s | request p50 / p99 ms "
            "| failed requests | errors | duplicates | losses | holds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['n']} | {r['epochs_per_s']:.2f} | {r['requests_per_s']:.0f} | "
                     f"{r['requests_per_epoch']:.1f} | {r['epoch_p50_s']:.2f} / {r['epoch_p99_s']:.2f} | "
                     f"{r['request_p50_ms']:.0f} / {r['request_p99_ms']:.0f} | {r['failed_requests']} | {r['errors']} | "
                     f"{r['duplicates']} | {r['losses']} | {'yes' if r['holds'] else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[16, 64, 256], help="concurrent trials (default 16 64 256)")
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="MLflow server workers (uvicorn processes)")
    ap.add_argument("--server-url", help="measure this running server instead of starting private ones")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--epoch-s", type=float, default=2.0, help="simulated training time per epoch (default 2 s)")
    ap.add_argument("--checkpoint-mb", type=float, default=6.5, help="checkpoint size (default: superres, 6.5 MB)")
    ap.add_argument("--samples", type=int, default=6, help="sample images logged at the end (20 kB each)")
    ap.add_argument("--procs", type=int, default=4, help="client processes the trials' threads are spread over")
    ap.add_argument("--retry-s", type=float, default=120, help="the trials' tracking_retry_s (default 120)")
    ap.add_argument("--request-timeout", type=int, default=60, help="MLFLOW_HTTP_REQUEST_TIMEOUT of the trials")
    ap.add_argument("--max-s", type=float, default=900, help="bound on one (server, N) run; then it counts as failed")
    ap.add_argument("--p99-target-s", type=float, default=10.0, help="p99 epoch-record time that still holds")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    print(f"load before: {os.getloadavg()[0]:.1f} (1-min load average, {os.cpu_count()} CPUs)", flush=True)
    print(f"command: python bench/tracking_load.py {' '.join(sys.argv[1:])}", flush=True)
    info = provenance_info()
    rows: list[dict[str, Any]] = []
    configs = [(f"given {args.server_url}", None, 0)] if args.server_url else [
        (f"{b}, {w} worker{'s' if w > 1 else ''}", b, w) for b in args.backends for w in args.workers]
    root = Path(tempfile.mkdtemp(prefix="dpl-load-servers-", dir="/tmp"))
    pg = None
    try:
        if any(b == "postgres" for _, b, _ in configs):
            from _servers import Postgres

            pg = Postgres(durable=True).start()
        for label, backend, workers in configs:
            server = serve(backend, workers, root, pg) if backend else None
            url = server.url if server else args.server_url
            try:
                for n in args.n:
                    row = run_load(url, n, args, label, info)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if not row["holds"] and row["errors"] and n != args.n[-1]:
                        print(f"{label}: stops holding at N={n}; larger N skipped", flush=True)
                        break
            finally:
                if server is not None:
                    server.stop()
    finally:
        if pg is not None:
            pg.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{table(rows)}\n")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r["duplicates"] or (r["losses"] and not r["errors"])]  # a failed trial may lose
    for r in rows:
        print(f"{'PASS' if r['holds'] else 'MISS'} {r['label']} N={r['n']}: errors {r['errors']}, duplicates "
              f"{r['duplicates']}, losses {r['losses']}, epoch p99 {r['epoch_p99_s']:.2f} s (target <= {args.p99_target_s} s)")
    for r in bad:
        lost = f", {r['losses']} lost with no trial failing" if r["losses"] and not r["errors"] else ""
        print(f"FAIL {r['label']} N={r['n']}: {r['duplicates']} duplicated{lost}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
