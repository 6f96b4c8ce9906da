"""Bad input: one line `dpl: error: ...` that says what and how to fix it, exit code 2, nothing lost.

Every case runs the real CLI (in-process, so it is fast) and checks the message and the exit code; the
study-level cases also check that an existing study's MLflow store and checkpoints are untouched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from study.cli import main

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture(scope="module")
def bapps_root(tmp_path_factory) -> Path:
    from trainables.data import bapps

    return bapps.synthesize(tmp_path_factory.mktemp("bapps") / "bapps", seed=0, size="smoke")


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def expect_error(capsys, args: list[str], *needles: str) -> str:
    code, line = run_cli(capsys, *args)
    assert code == 2, (code, line)
    assert line.startswith("dpl: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def trial_args(root: Path, *extra: str, network: str = "squeezenet1_1", layer: str = "features.1") -> list[str]:
    return ["trial", "similarity", "--network", network, "--layer", layer, "--weights", "random",
            "--data", str(root), *extra]


# ---------------------------------------------------------------------------------- loss networks


def test_unknown_network(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, network="vgg61"), "unknown network 'vgg61'", "vgg16")


def test_unknown_node(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, layer="features.99"), "has no node 'features.99'", "dpl networks --nodes")


def test_point_not_reachable_at_input_size(capsys) -> None:
    expect_error(capsys, ["networks", "--network", "inception_v3", "--layer", "Mixed_6e", "--size", "32"],
                 "cannot run at 32x32", "75")


def test_weights_file_for_another_architecture(capsys, tmp_path, bapps_root) -> None:
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    expect_error(capsys, trial_args(bapps_root, "--weights", str(tmp_path / "alexnet.pth")),
                 "do not fit squeezenet1_1")


def test_unknown_weight_set(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--weights", "IMAGENET1K_V7"), "IMAGENET1K_V1")


# -------------------------------------------------------------------------------------- settings


def test_unknown_task(capsys, bapps_root) -> None:
    expect_error(capsys, ["trial", "similarty", "--network", "alexnet", "--data", str(bapps_root)],
                 "unknown task 'similarty'", "similarity")


def test_unknown_variant(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--variant", "fancy"), "variant: 'fancy'", "baseline, lin")


def test_unknown_dataset_for_task(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--dataset", "svhn"), "dataset: 'svhn'", "bapps")


def test_unknown_task_setting(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--set", "epoch=3"), "unknown task setting(s) epoch", "epochs")


def test_negative_budget(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--set", "epochs=-2"), "epochs: -2 must not be negative")


def test_wrong_type_setting(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--set", "epochs=many"), "epochs: 'many' should be of type int")


def test_set_without_equals(capsys, bapps_root) -> None:
    expect_error(capsys, trial_args(bapps_root, "--set", "epochs"), "expected key=value")


# ------------------------------------------------------------------------------------------- data


def test_missing_dataset_folder(capsys, tmp_path) -> None:
    expect_error(capsys, trial_args(tmp_path / "nowhere"), "nowhere")


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "bapps"))


def test_truncated_png(capsys, tmp_path, bapps_root) -> None:
    root = _copy(bapps_root, tmp_path)
    victim = root / "2afc" / "val" / "cnn" / "p0" / "000001.png"
    victim.write_bytes(victim.read_bytes()[:40])
    expect_error(capsys, trial_args(root), "000001.png")


def test_wrong_image_mode(capsys, tmp_path, bapps_root) -> None:
    root = _copy(bapps_root, tmp_path)
    victim = root / "2afc" / "val" / "cnn" / "ref" / "000000.png"
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(victim)  # 16-bit grey
    expect_error(capsys, trial_args(root), "000000.png", "mode")


def test_judge_file_of_wrong_shape(capsys, tmp_path, bapps_root) -> None:
    root = _copy(bapps_root, tmp_path)
    np.save(root / "2afc" / "val" / "color" / "judge" / "000002.npy", np.zeros((3, 2), np.float32))
    expect_error(capsys, trial_args(root), "000002.npy")


def test_mismatched_pair_counts(capsys, tmp_path, bapps_root) -> None:
    root = _copy(bapps_root, tmp_path)
    (root / "jnd" / "val" / "cnn" / "p1" / "000003.png").unlink()
    expect_error(capsys, trial_args(root), "000003")


def test_corrupt_checkpoint(capsys, tmp_path, bapps_root) -> None:
    out = tmp_path / "trial"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "state.pt").write_bytes(b"garbage, not a checkpoint")
    expect_error(capsys, trial_args(bapps_root, "--variant", "lin", "--out", str(out)), "state.pt", "corrupt")


def test_distance_unreadable_file(capsys, tmp_path) -> None:
    (tmp_path / "a.png").write_text("hello")
    expect_error(capsys, ["distance", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--network", "alexnet",
                          "--weights", "random"], "a.png")


# ------------------------------------------------------------------------------------------ study


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Iterator[Path]:
    """A small finished study whose store must survive every bad command below unchanged. The toy plugin
    is known (DPL_TASKS, PYTHONPATH, sys.path) to this module's tests only."""
    from study.driver import run_study
    from study.spec import load_spec

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPL_TASKS", "toy=toy_task")
        mp.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
        mp.syspath_prepend(PLUGINS)
        base = tmp_path_factory.mktemp("study")
        (base / "data").mkdir()
        spec = {"name": "guarded", "weights": "random", "networks": ["squeezenet1_1"], "points": ["p1"],
                "seeds": [0], "tasks": {"toy": {"data": str(base / "data"), "params": {"epochs": 1}}},
                "ray": {"num_cpus": 2}}
        (base / "spec.yaml").write_text(yaml.safe_dump(spec))
        assert run_study(load_spec(base / "spec.yaml", storage=base / "study")) == 0
        yield base


def _fingerprint(study_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(study_dir.rglob("*")):
        if p.is_file() and p.name not in ("driver.lock",) and "ray" not in p.relative_to(study_dir).parts[:1]:
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def _bad_spec(base: Path, **changes) -> Path:
    raw = yaml.safe_load((base / "spec.yaml").read_text())
    raw.update(changes)
    path = base / "bad.yaml"
    path.write_text(yaml.safe_dump(raw) if changes else "name: guarded\ntasks: {toy: [1,\n")
    return path


@pytest.mark.parametrize(
    "changes, needles",
    [
        ({}, ("not valid YAML at line",)),
        ({"colour": "red"}, ("colour: unknown key", "allowed")),
        ({"seeds": "zero"}, ("seeds",)),
        ({"networks": ["alexnot"]}, ("unknown network 'alexnot'", "alexnet")),
        ({"resources": {"cpu": 1, "gpu": 2.5}}, ("resources.gpu",)),
    ],
)
def test_bad_study_specs_leave_results_untouched(capsys, finished_study, changes, needles) -> None:
    before = _fingerprint(finished_study / "study")
    expect_error(capsys, ["run", str(_bad_spec(finished_study, **changes)), "--storage",
                          str(finished_study / "study")], *needles)
    assert _fingerprint(finished_study / "study") == before


def test_fractional_gpu_over_one_from_cli(capsys, finished_study) -> None:
    before = _fingerprint(finished_study / "study")
    expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(finished_study / "study"),
                          "--gpus-per-trial", "1.5"], "resources.gpu")
    assert _fingerprint(finished_study / "study") == before


def test_unreachable_tracking_server_refused_before_any_trial(capsys, finished_study) -> None:
    before = _fingerprint(finished_study / "study")
    expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(finished_study / "study"),
                          "--tracking-uri", "http://127.0.0.1:9"], "not reachable", "--tracking-uri")
    assert _fingerprint(finished_study / "study") == before


def test_unreachable_tracking_server_at_launch_writes_nothing(capsys, finished_study, tmp_path) -> None:
    """A new study (a --storage that does not exist yet): refused before its directory is made."""
    new = tmp_path / "new-study"
    expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(new),
                          "--tracking-uri", "http://127.0.0.1:9"], "not reachable")
    assert not new.exists()


def test_password_in_tracking_uri_refused_and_not_echoed(capsys, finished_study) -> None:
    before = _fingerprint(finished_study / "study")
    line = expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(finished_study / "study"),
                                 "--tracking-uri", "http://alice:hunter2@127.0.0.1:9"], "MLFLOW_TRACKING_PASSWORD")
    assert "hunter2" not in line
    assert _fingerprint(finished_study / "study") == before


def test_mlflow_credentials_reach_workers_through_the_runtime_env(monkeypatch, tmp_path) -> None:
    """Credentials travel in Ray's runtime env, not in the trial config that Tune writes to disk."""
    import ray

    from study import driver
    from study.spec import load_spec

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\ntasks: {similarity: {}}\n")
    assert driver._init_ray(load_spec(spec_file, storage=tmp_path / "study"), None) is True
    env = seen["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "hunter2"


@pytest.mark.parametrize("err", ["EROFS", "ENOSPC"])
def test_read_only_or_full_disk(capsys, finished_study, tmp_path, monkeypatch, err) -> None:
    """CI runs as root, where permissions do not stop writes: inject the kernel's error instead."""
    import errno

    def refuse(self, *args, **kwargs):
        code = getattr(errno, err)
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(tmp_path / "study")],
                 "cannot write to the study directory", os.strerror(getattr(errno, err)))


def test_study_dir_on_full_or_unwritable_disk(capsys, finished_study, tmp_path) -> None:
    """/dev/full-like failures and files in the way both surface as one line, not a traceback."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the study directory should be")
    expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(blocker / "study")],
                 "blocked")


def test_second_driver_on_the_same_study_is_refused(capsys, finished_study) -> None:
    """While one driver holds the study's lock, a second `dpl run` stops with one line and changes nothing."""
    from study.lock import study_lock

    before = _fingerprint(finished_study / "study")
    with study_lock(finished_study / "study"):  # flock: a second open file description conflicts, same process too
        expect_error(capsys, ["run", str(finished_study / "spec.yaml"), "--storage", str(finished_study / "study")],
                     f"another driver is running this study (pid {os.getpid()})")
    assert _fingerprint(finished_study / "study") == before


def test_resume_of_a_non_study_dir(capsys, tmp_path) -> None:
    expect_error(capsys, ["resume", str(tmp_path)], "is not a study directory", "dpl run")


def test_analyze_unknown_experiment(capsys, finished_study) -> None:
    expect_error(capsys, ["analyze", "--study-dir", str(finished_study / "study"), "--experiment", "nope",
                          "--out", str(finished_study / "report")], "nope", "guarded")
