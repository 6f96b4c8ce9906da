"""Checkpoints kept in the trial's MLflow run (mode `mlflow`): the pointer tag moves only after a complete
upload, a kill mid-upload leaves the previous checkpoint in force, a resume downloads what the tag names,
and synthetic data regenerated on another node is checked against the plan's hash.

Runs against a SQLite store with a local artifact root (the same MlflowClient calls a server takes).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from _kill_points import killed_at
from study import artifact_checkpoints as ac
from study import tracking
from trainables.errors import UserError
from trainables.reporting import CHECKPOINT_FILE, START_EPOCH_METRIC, load_checkpoint

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def run(tmp_path):
    """(client, run id) of a fresh trial run in a SQLite store."""
    uri = tracking.default_tracking_uri(tmp_path)
    exp = tracking.init_experiment(uri, "ckpt", tmp_path)
    c = tracking.client(uri)
    return c, tracking.attach_trial_run(c, exp, "k1", "k1", {})


def checkpoint(tmp_path: Path, epoch: int, extra: int = 0) -> Path:
    """A checkpoint directory as a task stages it: state.pt (+ `extra` more files)."""
    d = tmp_path / f"stage-{epoch}"
    d.mkdir()
    torch.save({"epoch": epoch, "w": torch.full((3,), float(epoch))}, d / CHECKPOINT_FILE)
    for i in range(extra):
        (d / f"part{i}.bin").write_bytes(bytes([epoch]) * 1000)
    return d


def versions(c, run_id: str) -> list[str]:
    return sorted(a.path for a in c.list_artifacts(run_id, ac.ARTIFACT_ROOT))


def test_each_upload_is_a_new_version_and_the_tag_names_the_newest(tmp_path, run) -> None:
    c, run_id = run
    assert ac.pointer(c, run_id) is None and ac.download(c, run_id, tmp_path / "dl") is None
    for epoch in (1, 2, 3):
        assert ac.upload(c, run_id, checkpoint(tmp_path, epoch)) == f"checkpoint/v{epoch:06d}"
    assert c.get_run(run_id).data.tags[ac.POINTER_TAG] == "checkpoint/v000003"
    assert versions(c, run_id) == ["checkpoint/v000003"]  # the older ones were deleted after the switch
    got = ac.download(c, run_id, tmp_path / "dl")
    assert load_checkpoint(got)["epoch"] == 3 and str(got).startswith(str(tmp_path / "dl"))


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it in the upload runs."""


class DiesMidUpload:
    """A client whose `log_artifacts` uploads the first file of the directory, then the process 'dies'."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        first = sorted(Path(local_dir).iterdir())[0]
        self.real.log_artifact(run_id, str(first), artifact_path=artifact_path)
        raise Killed


def test_kill_mid_upload_leaves_the_previous_checkpoint_in_force(tmp_path, run) -> None:
    c, run_id = run
    ac.upload(c, run_id, checkpoint(tmp_path, 1, extra=2))
    with pytest.raises(Killed):
        ac.upload(DiesMidUpload(c), run_id, checkpoint(tmp_path, 2, extra=2))
    assert versions(c, run_id) == ["checkpoint/v000001", "checkpoint/v000002"]  # v2 is there, partial
    assert ac.pointer(c, run_id) == "checkpoint/v000001"
    got = ac.download(c, run_id, tmp_path / "dl")
    assert load_checkpoint(got)["epoch"] == 1 and sorted(p.name for p in got.iterdir()) == [
        "part0.bin", "part1.bin", CHECKPOINT_FILE]
    # the next upload never lands in the partial folder, and clears both old versions once it is in force
    assert ac.upload(c, run_id, checkpoint(tmp_path, 3)) == "checkpoint/v000003"
    assert versions(c, run_id) == ["checkpoint/v000003"]
    assert load_checkpoint(ac.download(c, run_id, tmp_path / "dl2"))["epoch"] == 3


def test_a_store_that_cannot_delete_keeps_old_versions_but_stays_correct(tmp_path, run, monkeypatch) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    def refuse(self, artifact_path=None):
        raise NotImplementedError

    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", refuse)
    c, run_id = run
    ac.upload(c, run_id, checkpoint(tmp_path, 1))
    ac.upload(c, run_id, checkpoint(tmp_path, 2))
    assert versions(c, run_id) == ["checkpoint/v000001", "checkpoint/v000002"]
    assert load_checkpoint(ac.download(c, run_id, tmp_path / "dl"))["epoch"] == 2


@pytest.fixture
def toy_trials(monkeypatch) -> list:
    """The toy task importable (as its plugin would be) and Ray's `tune.report` recorded, so a trial runs
    in-process through the real TuneMlflowReporter; returns the checkpoints handed to `tune.report`."""
    import ray.tune

    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.setenv("DPL_TASKS", "toy=toy_task")
    reported: list = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: reported.append(checkpoint))
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)  # (no Ray session: Ray keeps no copy)
    return reported


#: A 4-epoch toy trial on no loss network (the pixel loss): seconds.
TOY_CONFIG = {"task": "toy", "network": "none", "points": (), "weights": "random", "params": {"epochs": 4}}


def stopped_after_epoch_2(c, run_id: str, checkpoint_dir: Path, mode: str) -> None:
    """Attempt 1 of the toy trial, stopped (as by a kill) right after its epoch-2 checkpoint was stored."""
    from study.trainable import TuneMlflowReporter
    from trainables.config import TrialConfig
    from trainables.trial import run_trial

    class StopsAfterEpoch2(TuneMlflowReporter):
        def report(self, epoch, metrics, checkpoint_dir=None):
            super().report(epoch, metrics, checkpoint_dir)
            if epoch == 2:
                raise Killed

    with pytest.raises(Killed):
        run_trial(TrialConfig(**TOY_CONFIG), StopsAfterEpoch2(c, run_id, checkpoint_dir, mode=mode))


def resumed(c, run_id: str, checkpoint_dir: Path, mode: str) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """The next attempt of the toy trial: (its final metrics, [(attempt, epoch it started at)] of the run)."""
    from study.trainable import TuneMlflowReporter
    from trainables.config import TrialConfig
    from trainables.trial import run_trial

    final = run_trial(TrialConfig(**TOY_CONFIG), TuneMlflowReporter(c, run_id, checkpoint_dir, mode=mode))
    return final, [(m.step, int(m.value)) for m in c.get_metric_history(run_id, START_EPOCH_METRIC)]


def test_a_trial_in_mlflow_mode_resumes_from_its_run_not_the_study_dir(tmp_path, run, toy_trials) -> None:
    """The toy task through the real reporter: attempt 1 stops after epoch 2 (checkpoint uploaded), attempt 2
    with a fresh scratch folder resumes at epoch 3 from the run; nothing is written to a checkpoints dir."""
    c, run_id = run
    stopped_after_epoch_2(c, run_id, tmp_path / "node1", "mlflow")
    assert ac.pointer(c, run_id) == "checkpoint/v000002"
    final, history = resumed(c, run_id, tmp_path / "node2", "mlflow")
    assert history == [(1, 1), (2, 3)]  # attempt 2 began right after the checkpointed epoch
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]
    assert load_checkpoint(ac.download(c, run_id, tmp_path / "dl"))["epoch"] == 4 and "score" in final
    assert toy_trials == [None] * 4  # Ray got no checkpoint: it needs no shared storage for one
    assert not list(tmp_path.glob("**/checkpoints"))


def test_an_attempt_removes_the_scratch_folders_its_trial_left_on_this_node_when_killed(tmp_path, monkeypatch) -> None:
    """A killed attempt cannot remove its local checkpoint folder (mode mlflow); the next attempt of the same
    trial removes it, but never the folder of a live process (another study may run the same key) nor another
    trial's."""
    import os
    import subprocess
    import sys
    import tempfile

    from study.trainable import scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = {}
    for name, key, pid in (("killed", "k1", dead.pid), ("live", "k1", os.getppid()), ("other", "k2", dead.pid)):
        left[name] = tmp_path / f"dpl-{key}-{pid}-x{name}"
        left[name].mkdir()
        (left[name] / "v000003").mkdir()
        (left[name] / "v000003" / CHECKPOINT_FILE).write_bytes(b"half a checkpoint")
    new = scratch_dir("k1")
    assert not left["killed"].exists()
    assert left["live"].is_dir() and left["other"].is_dir()
    assert new.is_dir() and new.parent == tmp_path and new.name.startswith(f"dpl-k1-{os.getpid()}-")
    assert not any(new.iterdir())


# --------------------------------------------------------------------- a kill at every step of upload

#: Where the child may die: before every database session (with NullPool each MlflowClient call opens one:
#: reading the run, listing its versions, moving the tag), before the new version's folder and each of its
#: files, and before each delete of a file or folder: every gap between upload, tag and delete.
KILL_EVENTS = frozenset({"sqlite3.connect", "os.mkdir", "shutil.copyfile", "shutil.rmtree", "os.remove", "os.rmdir"})


def tree(path: Path | None) -> dict[str, bytes] | None:
    return None if path is None else {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}


def _fresh(c, run_id: str, tmp: Path) -> dict[str, bytes] | None:
    """The trial's first checkpoint: nothing uploaded yet. Returns what a resume finds before the upload."""
    return None


def _partial_left(c, run_id: str, tmp: Path) -> dict[str, bytes] | None:
    """Epoch 1 in force, and the partial upload of an attempt killed mid-upload (v000002, unreferenced): the
    upload under test writes v000003 and then has two older versions to delete."""
    previous = checkpoint(tmp, 1, extra=1)
    ac.upload(c, run_id, previous)
    with pytest.raises(Killed):
        ac.upload(DiesMidUpload(c), run_id, checkpoint(tmp, 9, extra=1))
    return tree(previous)


INITIAL = {"fresh": _fresh, "partial_left": _partial_left}


@pytest.fixture(scope="module")
def forkable_store(tmp_path_factory):
    """(client, experiment id) of a SQLite store whose engine keeps no connection open (NullPool), so a
    forked child opens its own instead of sharing the parent's across fork. One store for the module's
    kill tests (creating one costs seconds); each kill point gets a run of its own."""
    root = tmp_path_factory.mktemp("kills")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        uri = tracking.default_tracking_uri(root)
        exp = tracking.init_experiment(uri, "kills", root)
        c = tracking.client(uri)
        warm = tracking.attach_trial_run(c, exp, "warm", "warm", {})
        for epoch in (10, 11):  # MLflow's lazy imports happen here, not in a child: each round has the same kill points
            ac.upload(c, warm, checkpoint(root, epoch, extra=1))
        ac.download(c, warm, root / "warm")
        yield c, exp


@pytest.mark.parametrize("initial", list(INITIAL))
def test_kill_at_every_step_of_upload_tag_and_delete_leaves_a_complete_checkpoint(tmp_path, forkable_store,
                                                                                   initial) -> None:
    """`upload` killed before each of its operations (writing the new version file by file, moving the
    `dpl.checkpoint` tag, deleting the older versions): the run's tag always names a complete checkpoint
    the next attempt downloads, the previous one or the new one, never a deleted or partial version and
    never an older one; it switches once, at the tag; and the next upload leaves only its own version."""
    c, exp = forkable_store
    new = checkpoint(tmp_path, 2, extra=1)
    nxt = checkpoint(tmp_path, 3)
    seen: list[str] = []
    for n in range(1, 300):
        run_id = tracking.attach_trial_run(c, exp, f"k{n}", f"k{n}", {})
        (tmp_path / f"setup{n}").mkdir()
        before = INITIAL[initial](c, run_id, tmp_path / f"setup{n}")
        killed = killed_at(n, lambda: ac.upload(c, run_id, new), KILL_EVENTS)
        found = tree(ac.download(c, run_id, tmp_path / f"resume{n}"))
        assert found in (before, tree(new)), f"kill point {n} ({initial}): resumed from {found and sorted(found)}"
        seen.append("new" if found == tree(new) else "old")
        # the next attempt goes on from there: its checkpoint is the only version left, and the one resumed
        ac.upload(c, run_id, nxt)
        assert versions(c, run_id) == [ac.pointer(c, run_id)], f"kill point {n} ({initial})"
        assert tree(ac.download(c, run_id, tmp_path / f"next{n}")) == tree(nxt)
        if not killed:
            break
    else:
        raise AssertionError("the upload never completed")
    assert n > 10, f"only {n} kill points: the audit hook did not see the upload's operations"
    assert seen == sorted(seen, key=["old", "new"].index) and seen[-1] == "new", seen


@pytest.mark.parametrize("first, then", [("mlflow", "shared"), ("shared", "mlflow")])
def test_a_relaunch_in_the_other_mode_resumes_where_the_first_mode_left_the_checkpoint(
        tmp_path, run, toy_trials, first, then) -> None:
    """Attempt 1 in mode `first` stops after epoch 2; the driver of a relaunch in mode `then` carries the
    checkpoint over (`carry_over`), and attempt 2 in mode `then` resumes at epoch 3 instead of restarting;
    the first mode's place is left empty, so a later carry-over moves nothing."""
    c, run_id = run
    study = tmp_path / "study"

    def where(mode: str, node: str) -> Path:  # a trial's checkpoint folder, as run_config_trial picks it
        return ac.shared_dir(study, "k1") if mode == "shared" else tmp_path / node

    stopped_after_epoch_2(c, run_id, where(first, "node1"), first)
    assert ac.carry_over(c, {"k1": c.get_run(run_id)}, study, then) == 1
    # only the new mode's place holds it now
    assert (ac.pointer(c, run_id) is None) == (then == "shared")
    assert (ac.shared_dir(study, "k1").exists()) == (then == "shared")
    assert versions(c, run_id) == ([] if then == "shared" else ["checkpoint/v000001"])
    assert ac.carry_over(c, {"k1": c.get_run(run_id)}, study, then) == 0
    _, history = resumed(c, run_id, where(then, "node2"), then)
    assert history == [(1, 1), (2, 3)]  # resumed after the checkpointed epoch, not restarted at 1
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4]


@pytest.mark.parametrize("uri, requested, mode", [
    ("http://127.0.0.1:5000", "auto", "mlflow"), ("HTTPS://mlflow.internal", None, "mlflow"),
    ("sqlite:////tmp/x/mlflow.db", "auto", "shared"), ("file:///tmp/mlruns", "auto", "shared"),
    ("http://127.0.0.1:5000", "shared", "shared"), ("sqlite:////tmp/x/mlflow.db", "mlflow", "mlflow"),
])
def test_mode_selection(uri, requested, mode) -> None:
    assert ac.resolve_mode(requested, uri) == mode


def test_unknown_mode_is_one_line() -> None:
    with pytest.raises(UserError, match=r"--checkpoints 's3': use one of auto, shared, mlflow") as info:
        ac.resolve_mode("s3", "http://127.0.0.1:5000")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ synthetic data


def independent_hash(root: Path) -> str:
    """The manifest hash written out again: sorted relative paths, NUL, sha256 of each file's bytes."""
    d = hashlib.sha256()
    for rel in sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()):
        d.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
    return d.hexdigest()


def test_plan_records_the_synthetic_data_hash_and_a_node_regenerates_the_same_bytes(tmp_path) -> None:
    from study.plan import ensure_synthetic_data, expand, planned_synthetic, save_plan
    from study.spec import load_spec
    from trainables.data.manifest import local_copy, tree_sha256

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "syn", "weights": "random", "networks": ["squeezenet1_1"],
                                         "points": ["p1"], "tasks": {"superres": {"data": "synthetic"}}}))
    spec = load_spec(spec_path, storage=tmp_path / "study")
    ensure_synthetic_data(spec)
    save_plan(spec, expand(spec))
    root = tmp_path / "study" / "data" / "coco"
    rows = json.loads((tmp_path / "study" / "plan.json").read_text())
    assert rows and all(r["synthetic_data"]["sha256"] == independent_hash(root) for r in rows)
    entry = planned_synthetic(tmp_path / "study")["coco"]
    assert (entry["generator"], entry["seed"], entry["size"]) == ("superres", 0, "smoke")
    local = local_copy("coco", entry["generator"], entry["seed"], entry["size"], entry["sha256"], tmp_path / "node")
    assert local.parent == tmp_path / "node" / "synthetic" and tree_sha256(local) == entry["sha256"]
    assert local_copy("coco", "superres", 0, "smoke", entry["sha256"], tmp_path / "node") == local  # reused
    with pytest.raises(UserError, match="generated on this node .* differs from the driver's") as info:
        local_copy("coco", "superres", 1, "smoke", entry["sha256"], tmp_path / "node2")  # other seed
    assert "\n" not in str(info.value) and not list((tmp_path / "node2" / "synthetic").iterdir())


def test_svhn_files_hold_no_timestamp(tmp_path, monkeypatch) -> None:
    """scipy stamps the time into a .mat header; the writer fixes it, so regenerated data hashes equal."""
    import time

    from trainables.data import svhn

    images, labels = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8).numpy(), [1, 0]
    for name, stamp in (("test", "Mon Jan  1 00:00:00 2024"), ("train", "Tue Dec  1 23:59:59 2026")):
        monkeypatch.setattr(time, "asctime", lambda *a, stamp=stamp: stamp)
        svhn.write(tmp_path / svhn.file_name(name), images, labels)
    assert (tmp_path / "test_32x32.mat").read_bytes() == (tmp_path / "train_32x32.mat").read_bytes()
    x, y = svhn.read(tmp_path, "test")
    assert (x == images).all() and y.tolist() == labels  # still a valid SVHN file


def test_cli_passes_the_checkpoint_mode_to_run_and_resume(monkeypatch) -> None:
    import study.driver
    from study.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["run", "--preset", "smoke"]).checkpoints is None  # the spec's `checkpoints` decides
    assert parser.parse_args(["resume", "somewhere", "--checkpoints", "shared"]).checkpoints == "shared"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["run", "--preset", "smoke", "--checkpoints", "s3"])
    assert info.value.code == 2
    seen = {}
    monkeypatch.setattr(study.driver, "run_study", lambda spec, **kw: seen.update(kw) or 0)
    assert main(["run", "--preset", "smoke", "--checkpoints", "mlflow"]) == 0
    assert seen["checkpoints"] == "mlflow"


def test_spec_sets_the_checkpoint_mode_and_rays_storage(tmp_path) -> None:
    """`checkpoints` and `ray_storage` in a study file: a bad value is one line, a path is where Tune writes."""
    from study.batch import ray_storage_path
    from study.spec import load_spec

    def spec(**extra):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "tasks": {"superres": {}}, **extra}))
        return load_spec(path, storage=tmp_path / "study")

    assert spec().raw["checkpoints"] == "auto"
    assert ac.resolve_mode(None or spec(checkpoints="mlflow").raw["checkpoints"], "sqlite:////x.db") == "mlflow"
    with pytest.raises(UserError, match=r"checkpoints: 's3'.*allowed: auto \| shared \| mlflow") as info:
        spec(checkpoints="s3")
    assert "\n" not in str(info.value)
    assert ray_storage_path(spec()) == str(tmp_path / "study" / "ray") and (tmp_path / "study" / "ray").is_dir()
    assert ray_storage_path(spec(ray_storage=str(tmp_path / "head-only"))) == str(tmp_path / "head-only")
    assert ray_storage_path(spec(ray_storage="s3://bucket/dpl")) == "s3://bucket/dpl"
    with pytest.raises(UserError, match="ray_storage"):
        spec(ray_storage=3)


def test_a_node_reads_real_data_from_its_own_data_root(tmp_path) -> None:
    """No shared mount: the driver's data root is /driver-side (absent here); a worker started with its own
    DPL_DATA_ROOT that holds the same layout reads from there; the key stays the driver's."""
    from study.trainable import node_data
    from trainables.config import TrialConfig, trial_key

    driver_root, node_root = tmp_path / "driver-datasets", tmp_path / "node-datasets"
    (node_root / "svhn").mkdir(parents=True)
    config = TrialConfig(task="autoencoder", network="vgg16", points=("features.3",), dataset="svhn",
                         data_root=str(driver_root / "svhn"))
    local = node_data(config, str(driver_root), str(node_root))
    assert local.data_root == str(node_root / "svhn") and trial_key(local) == trial_key(config)
    # nothing to map: no node root, a node root without that dataset, a path outside the driver's root, synthetic
    assert node_data(config, str(driver_root), None) is config
    assert node_data(TrialConfig(**{**config.to_dict(), "dataset": "stl10", "data_root": str(driver_root / "stl10")}),
                     str(driver_root), str(node_root)).data_root == str(driver_root / "stl10")
    outside = TrialConfig(**{**config.to_dict(), "data_root": str(tmp_path / "elsewhere" / "svhn")})
    assert node_data(outside, str(driver_root), str(node_root)) is outside
    synthetic = TrialConfig(**{**config.to_dict(), "data_root": "synthetic"})
    assert node_data(synthetic, str(driver_root), str(node_root)) is synthetic
