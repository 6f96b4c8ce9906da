"""A Ray cluster needs no shared filesystem when the trials keep their checkpoints in MLflow.

On this one machine: the session's MLflow server on loopback (SQLite backend, artifacts proxied by the server), a
Ray head with no CPUs (so no trial runs there) and a worker node in its own mount namespace, where an
empty tmpfs covers the head's study directory, data root and cache: the worker cannot read a byte the
head wrote there. A small study (synthetic data, which the worker regenerates and checks against the
plan's hash) runs on the worker; mid-trial the worker node's whole process group is killed, a new worker
node is started the same way, and the interrupted trial must resume on it from the checkpoint in its
MLflow run. Every process this test starts is in a process group it kills at the end; Ray gets a private
temp dir, so no `ray stop` is needed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _servers import BIN, REPO, free_port, process_groups, start, wait_for

from study import artifact_checkpoints as ac
from study import tracking
from study.trainable import ATTEMPTS_TAG
from trainables.reporting import START_EPOCH_METRIC, load_checkpoint

pytestmark = pytest.mark.slow
#: Ray declares a node dead after failure_threshold missed health checks (defaults: 5 x 3 s); faster here.
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "4", "RAY_health_check_initial_delay_ms": "1000"}

#: A task for this test: checks the generated data is on the node, records where each attempt ran (mount
#: node: the name its worker wrote into its own tmpfs) and what data it read, then trains as the toy task does.
PLUGIN = '''
import hashlib, os
from pathlib import Path

import toy_task
from trainables.data.manifest import tree_sha256
from trainables.errors import DataError

DATASETS = ("coco",)
VARIANTS, METRICS, PRIMARY_METRIC, BUDGETS = toy_task.VARIANTS, toy_task.METRICS, toy_task.PRIMARY_METRIC, toy_task.BUDGETS
NETWORKLESS_OK = toy_task.NETWORKLESS_OK
input_size = toy_task.input_size


def run(config, reporter):
    root = Path(config.data_root)
    if not any(root.rglob("*.png")):
        raise DataError(f"no images under {root}")
    n = reporter.attempt
    node = (Path(os.environ["DPL_CACHE_DIR"]) / "node-name").read_text().strip()  # in the node's own tmpfs
    for key, value in {f"test.node.{n}": node, f"test.data_root.{n}": str(root),
                       f"test.data_sha256.{n}": tree_sha256(root),
                       f"test.scratch.{n}": str(reporter.checkpoint_dir)}.items():
        reporter.client.set_tag(reporter.run_id, key, value)
    return toy_task.run(config, reporter)
'''


def kill_other_namespace(p: subprocess.Popen) -> None:
    """A worker node started into its own mount namespace: its Ray workers are in groups of their own."""
    if os.readlink(f"/proc/{p.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
        kill_node(p.pid)


def in_namespace(pid: int, *cmd: str) -> str:
    """Run `cmd` in the mount namespace of process `pid` (what that node sees of the filesystem)."""
    out = subprocess.run(["nsenter", f"--target={pid}", "--mount", "--", *cmd], capture_output=True, text=True,
                         timeout=30)
    return out.stdout


def kill_node(pid: int) -> int:
    """SIGKILL every process in the mount namespace of `pid` (the whole node: `ray start`, raylet, and the
    Ray workers, which the raylet starts in process groups of their own); returns how many."""
    ns = os.readlink(f"/proc/{pid}/ns/mnt")
    victims = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    victims.append(int(entry.name))
    for v in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(v, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return len(victims)


def files_seen(pid: int, *dirs: Path) -> list[str]:
    return in_namespace(pid, "find", *map(str, dirs), "-mindepth", "1").split()


def test_two_nodes_without_shared_fs_resume_a_killed_trial_from_mlflow(tmp_path, monkeypatch, tracking_servers) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        if os.environ.get("CI"):
            pytest.fail("this test needs root with unshare/nsenter (CI runs as root)")
        pytest.skip("needs root with unshare and nsenter for the worker's own mount namespace")
    study, data_root, cache = tmp_path / "study", tmp_path / "data", tmp_path / "cache"
    plugins, logs = tmp_path / "plugins", tmp_path / "logs"
    for d in (study, data_root, cache, plugins, logs):
        d.mkdir()
    (plugins / "toysynth.py").write_text(PLUGIN)
    ray_tmp = Path(tempfile.mkdtemp(prefix="dplr", dir="/tmp"))  # short: Ray's socket paths are length-limited
    ray_address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, **FAST_HEALTH, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DPL_TASKS": "toysynth=toysynth", "DPL_CACHE_DIR": str(cache), "DPL_DATA_ROOT": str(data_root),
           "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO / "tests" / "plugins"), str(REPO)])}
    spec = tmp_path / "nofs.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "nofs", "weights": "random", "networks": ["none"], "seeds": [0, 1], "max_concurrent": 1,
        "max_failures": 3, "resources": {"cpu": 1},
        "tasks": {"toysynth": {"data": "synthetic", "params": {"epochs": 5, "sleep_s": 1.5}}}}))

    def worker_cmd(name: str) -> list[str]:
        """A worker node in its own mount namespace: empty tmpfs over the study dir, data root and cache."""
        return ["unshare", "--mount", "--propagation", "private", "bash", "-c",
                " && ".join(f"mount -t tmpfs tmpfs {d}" for d in (study, data_root, cache))
                + f" && echo {name} > {cache}/node-name"
                + f" && exec ray start --address={ray_address} --num-cpus=1 --temp-dir={ray_tmp} --block"]
    all_logs = sorted(logs.glob("*"))

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # this test's client: fail fast, never hang
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        with process_groups(before_kill=kill_other_namespace) as procs:
            uri = tracking_servers.get("sqlite").url  # the session's server (SQLite, artifacts proxied)
            start(procs, [str(BIN / "ray"), "start", "--head", f"--port={ray_address.split(':')[1]}", "--num-cpus=0",
                          "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}",
                          "--disable-usage-stats", "--block"], env, logs / "head.log")
            time.sleep(3)  # let the head's GCS come up before a worker tries to join
            worker1 = start(procs, worker_cmd("worker1"), env, logs / "worker1.log")
            driver = start(procs, [sys.executable, "-m", "study.cli", "run", str(spec), "--storage", str(study),
                                   "--tracking-uri", uri, "--address", ray_address], env, logs / "driver.log")
            all_logs = sorted(logs.glob("*"))
            c = tracking.client(uri)

            def victim():
                """A trial RUNNING on worker 1 with two epochs checkpointed in its run."""
                exp = c.get_experiment_by_name("nofs")
                if exp is None:
                    return None
                for r in tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'"):
                    if r.info.status == "RUNNING" and r.data.tags.get(ac.POINTER_TAG, "") >= "checkpoint/v000002":
                        return r
                return None

            run = wait_for("a trial with 2 checkpointed epochs", victim, 180, all_logs, driver)
            # what worker 1 sees: none of the head's files (plan, spec, store, generated data), and it wrote
            # nothing into its own study dir or data root (its regenerated data is in its cache)
            assert (study / "plan.json").is_file() and (study / "data" / "coco").is_dir()
            assert files_seen(worker1.pid, study, data_root) == []
            assert any("/synthetic/coco-" in f for f in files_seen(worker1.pid, cache))
            assert not (cache / "node-name").exists()  # and the head does not see the worker's files either

            assert kill_node(worker1.pid) >= 3  # the whole node, mid-trial: ray start, raylet, the trial's worker
            worker1.wait(timeout=30)
            killed_at = load_checkpoint(ac.download(c, run.info.run_id, tmp_path / "at-kill"))["epoch"]
            worker2 = start(procs, worker_cmd("worker2"), env, logs / "worker2.log")
            wait_for("the study to finish", lambda: driver.poll() is not None, 200, all_logs)
            driver_log = (logs / "driver.log").read_text(errors="replace")
            assert driver.returncode == 0, driver_log[-4000:]
            assert files_seen(worker2.pid, study, data_root) == [], "the new worker wrote into the study dir"

            # (checked while the MLflow server still runs)
            # every trial FINISHED exactly once, in one run each
            exp = c.get_experiment_by_name("nofs")
            runs = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'trial'")
            assert len(runs) == len({r.data.tags[tracking.KEY_TAG] for r in runs}) == 2, runs
            assert {r.info.status for r in runs} == {"FINISHED"}
            # the interrupted trial: attempt 1 on worker 1, attempt 2 on the new node, from the checkpointed epoch
            victim_run = c.get_run(run.info.run_id)
            tags = victim_run.data.tags
            history = [(m.step, int(m.value)) for m in c.get_metric_history(run.info.run_id, START_EPOCH_METRIC)]
            assert 2 <= killed_at < 5 and int(tags[ATTEMPTS_TAG]) == 2
            assert history == [(1, 1), (2, killed_at + 1)], (history, killed_at)
            assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
            assert (tags["test.node.1"], tags["test.node.2"]) == ("worker1", "worker2")
            # the killed attempt could not remove its local checkpoint folder (same /tmp on both nodes here):
            # the resumed attempt did, and then its own when it finished
            assert Path(tags["test.scratch.1"]).name.startswith(f"dpl-{tags[tracking.KEY_TAG]}-")
            assert not Path(tags["test.scratch.1"]).exists() and not Path(tags["test.scratch.2"]).exists()
            # both nodes read their own regenerated copy of the data, with the hash the plan recorded
            plan = json.loads((study / "plan.json").read_text())
            planned_sha = {row["synthetic_data"]["sha256"] for row in plan}
            assert len(planned_sha) == 1
            for r in runs:
                attempts = int(c.get_run(r.info.run_id).data.tags[ATTEMPTS_TAG])
                for n in range(1, attempts + 1):
                    t = c.get_run(r.info.run_id).data.tags
                    assert t[f"test.data_sha256.{n}"] in planned_sha
                    assert t[f"test.data_root.{n}"].startswith(str(cache / "synthetic" / "coco-"))
                    assert t[f"test.node.{n}"] in ("worker1", "worker2")
                # the final checkpoint is the only version left in the run, and it is the last epoch's
                versions = [a.path for a in c.list_artifacts(r.info.run_id, ac.ARTIFACT_ROOT)]
                assert versions == [c.get_run(r.info.run_id).data.tags[ac.POINTER_TAG]]
                assert load_checkpoint(ac.download(c, r.info.run_id, tmp_path / r.info.run_id))["epoch"] == 5
            # the head's study dir holds no checkpoints, and the study run records the mode
            assert not (study / "checkpoints").exists() and not list(study.glob("**/state.pt"))
            parent = tracking.find_runs(c, exp.experiment_id, "tags.`dpl.kind` = 'study'")[0]
            assert parent.data.params["checkpoints"] == "mlflow"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)  # Ray's temp dir: no `ray stop` needed
