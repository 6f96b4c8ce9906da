"""Benchmark 4 (autoencoders + MLP probes on SVHN / STL-10): formats, model, probes, and whole trials.

The readers are checked against files written independently of our writers (scipy.io.savemat, raw numpy
bytes in MATLAB's column-major order); the probes' losses against hand computations; the trials for
above-chance accuracy, determinism, resumption after a kill, and the pixel baseline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import scipy.io
import torch

from trainables.config import TrialConfig
from trainables.data import stl10, svhn
from trainables.errors import DataError
from trainables.metrics import probes
from trainables.reporting import LocalReporter
from trainables.tasks import autoencoder as ae
from trainables.trial import SYNTHETIC_MARKER, run_trial
from _dying_reporter import KillAfter, Killed


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return svhn.synthesize(tmp_path_factory.mktemp("svhn"), seed=0, size="smoke")


@pytest.fixture(scope="module")
def stl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stl10.synthesize(tmp_path_factory.mktemp("stl10"), seed=0, size="smoke")


def _asymmetric(n: int, size: int) -> np.ndarray:
    """Images whose transpose or channel swap differ from themselves: a bar along the top row of channel 0,
    a bar down the left column of channel 2, and a per-image value in the corner."""
    x = np.zeros((n, 3, size, size), dtype=np.uint8)
    x[:, 0, 0, : size // 2] = 200
    x[:, 2, : size // 3, 0] = 100
    x[:, 1, -1, -1] = np.arange(n, dtype=np.uint8) + 1
    return x


# ------------------------------------------------------------------------------------------ formats


def test_svhn_reader_reads_an_official_layout_file_written_by_scipy(tmp_path: Path) -> None:
    imgs, digits = _asymmetric(5, 32), np.array([0, 1, 9, 0, 5])
    # the official layout, built here by hand: X is H x W x C x N, y is N x 1 with 10 standing for 0
    scipy.io.savemat(tmp_path / "train_32x32.mat",
                     {"X": imgs.transpose(2, 3, 1, 0), "y": np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)})
    x, y = svhn.read(tmp_path, "train")
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, digits)


def test_svhn_writer_produces_the_official_layout(tmp_path: Path) -> None:
    imgs, digits = _asymmetric(4, 32), np.array([0, 3, 7, 0])
    svhn.write(tmp_path / "test_32x32.mat", imgs, digits)
    mat = scipy.io.loadmat(tmp_path / "test_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 4) and mat["X"].dtype == np.uint8
    assert mat["X"][0, 5, 0, 2] == 200 and mat["X"][5, 0, 0, 2] == 0  # row 0 of channel 0 holds the bar
    np.testing.assert_array_equal(mat["y"].ravel(), [10, 3, 7, 10])


def test_stl10_bytes_are_column_major_and_round_trip(tmp_path: Path) -> None:
    imgs, labels = _asymmetric(3, 96), np.array([0, 4, 9])
    stl10.write(tmp_path / stl10.FOLDER, "train", imgs, labels)
    raw = np.fromfile(tmp_path / stl10.FOLDER / "train_X.bin", dtype=np.uint8)
    # independent reference: MATLAB writes each channel column by column (Fortran order)
    expected = np.concatenate([imgs[i, c].ravel(order="F") for i in range(3) for c in range(3)])
    np.testing.assert_array_equal(raw, expected)
    np.testing.assert_array_equal(np.fromfile(tmp_path / stl10.FOLDER / "train_y.bin", dtype=np.uint8), [1, 5, 10])
    x, y = stl10.read(tmp_path, "train")
    np.testing.assert_array_equal(x, imgs)  # the top-row bar is still a top-row bar
    np.testing.assert_array_equal(y, labels)


def test_synthetic_data_is_in_the_real_format_with_marker(svhn_root: Path, stl_root: Path) -> None:
    for root, gen in ((svhn_root, "svhn"), (stl_root, "stl10")):
        marker = json.loads((root / SYNTHETIC_MARKER).read_text())
        assert marker["seed"] == 0 and marker["size"] == "smoke" and gen in marker["generator"]
    mat = scipy.io.loadmat(svhn_root / "extra_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, svhn.SYNTH_SIZES["smoke"]["extra"])
    assert set(np.unique(mat["y"])) == set(range(1, 11))
    n = stl10.SYNTH_SIZES["smoke"]["unlabeled"]
    assert (stl_root / "stl10_binary" / "unlabeled_X.bin").stat().st_size == n * 3 * 96 * 96
    x, y = stl10.read(stl_root, "test")
    assert y is not None and set(np.unique(y)) == set(range(10)) and x.shape[1:] == (3, 96, 96)


def test_truncated_files_give_a_data_error_naming_the_file(tmp_path: Path, svhn_root: Path) -> None:
    blob = (svhn_root / "test_32x32.mat").read_bytes()
    (tmp_path / "test_32x32.mat").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="test_32x32.mat"):
        svhn.read(tmp_path, "test")
    folder = tmp_path / stl10.FOLDER
    stl10.write(folder, "test", _asymmetric(2, 96), np.array([1, 2]))
    with open(folder / "test_X.bin", "r+b") as f:
        f.truncate(3 * 96 * 96 + 100)
    with pytest.raises(DataError, match="test_X.bin"):
        stl10.read(tmp_path, "test")
    with pytest.raises(DataError, match="train_X.bin"):
        stl10.read(tmp_path, "train")  # missing altogether


# ------------------------------------------------------------------------------------ model, probes


@pytest.mark.parametrize("size,flat", [(64, 1024), (96, 4096)])
def test_autoencoder_shapes_match_the_reference(size: int, flat: int) -> None:
    model = ae.ConvAutoencoder(size, z_dim=64).eval()
    x = torch.rand(2, 3, size, size)
    assert model.encoder(x).shape == (2, flat)  # the reference's flat sizes 256*2*2 and 256*4*4
    assert model.encode(x).shape == (2, 64)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_probe_losses_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1])
    z = logits.numpy()
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert float(probes.probe_loss(logits, labels, "ce")) == pytest.approx(-(logp[0, 0] + logp[1, 1]) / 2, rel=1e-6)
    onehot = np.eye(3)[[0, 1]]
    assert float(probes.probe_loss(logits, labels, "mse_onehot")) == pytest.approx(((z - onehot) ** 2).mean(), rel=1e-6)


def test_probes_separate_separable_codes_and_pick_by_validation() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=gen) * 4
    y = torch.randint(0, 10, (600,), generator=gen)
    x = centres[y] + torch.randn(600, 16, generator=gen)
    metrics, results = probes.evaluate_probes(x[:400], y[:400], x[400:], y[400:], seed=0, epochs=40, patience=5,
                                              batch_size=100, lr=1e-2, hidden_sets=((), (32,)))
    assert metrics["probe/linear/test_acc"] > 0.9
    assert [r.hidden for r in results] == [(), (32,)]
    # the metrics are the results' numbers, each probe scored on the 200 test codes (accuracies are k/200)
    for r in results:
        assert metrics[f"probe/{probes.probe_name(r.hidden)}/test_acc"] == r.test_acc
        assert metrics[f"probe/{probes.probe_name(r.hidden)}/val_acc"] == r.val_acc
        assert r.test_acc * 200 == pytest.approx(round(r.test_acc * 200))  # counted over all 200 test codes
        assert r.val_acc * 80 == pytest.approx(round(r.val_acc * 80))  # and the 80 held out (20% of 400)
    tr, va = probes.seeded_split(600, seed=3)
    assert len(va) == 120 and not set(tr.tolist()) & set(va.tolist()) and len(tr) + len(va) == 600


def test_probe_choice_by_validation_with_ties_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice rule on results made by hand (training replaced), not on a copy of the production rule.

    Probes in HIDDEN order: linear (val 0.80, test 0.50), 32 (val 0.90, test 0.61), 64 (val 0.90, test 0.73),
    32-32 (val 0.70, test 0.95). Highest validation accuracy: 0.90, tied by 32 and 64; the tie goes to the
    smaller probe, listed first: 32, so best_val_test_acc = 0.61 (not 0.73: tie reversed; not 0.95: chosen by
    test accuracy; not 0.50: the first probe). mean = (0.50 + 0.61 + 0.73 + 0.95) / 4 = 2.79 / 4 = 0.6975;
    max = 0.95.
    """
    table = {(): (0.80, 0.50), (32,): (0.90, 0.61), (64,): (0.90, 0.73), (32, 32): (0.70, 0.95)}

    def fake_train(hidden: tuple[int, ...], *args: object, **kwargs: object) -> probes.ProbeResult:
        val, test = table[hidden]
        return probes.ProbeResult(hidden, 1, 0.0, val, test)

    monkeypatch.setattr(probes, "train_probe", fake_train)
    codes, labels = torch.randn(20, 4), torch.arange(20) % 10
    metrics, _ = probes.evaluate_probes(codes, labels, codes, labels, seed=0, epochs=1, patience=1, batch_size=4,
                                        lr=1e-3, hidden_sets=tuple(table))
    assert metrics["probe/best_val_test_acc"] == 0.61
    assert metrics["probe/mean_test_acc"] == pytest.approx(0.6975, abs=1e-12)
    assert metrics["probe/max_test_acc"] == 0.95
    assert metrics["probe/64/val_acc"] == 0.90 and metrics["probe/32-32/test_acc"] == 0.95


# ------------------------------------------------------------------------------------------- trials


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Whole trials with one intra-op thread, restored afterwards: on 2 shared, busy cores the second
    thread made a smoke trial twice as slow (27 s vs 14 s measured), which this file's time budget can't pay."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(root: Path, **kw: object) -> TrialConfig:
    base = dict(task="autoencoder", network="resnet18", points=("layer1",), dataset="svhn", variant="default",
                weights="random", budget="smoke", data_root=str(root), device="cpu")
    return TrialConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def svhn_trial(svhn_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], LocalReporter]:
    """One whole SVHN smoke trial (one thread), its final metrics and what it reported; shared by the tests
    that read it."""
    full = LocalReporter(tmp_path_factory.mktemp("svhn-trial") / "full", echo=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_trial(_config(svhn_root), full), full
    finally:
        torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_svhn_trial_beats_chance_is_deterministic_and_resumes(svhn_root: Path, svhn_trial, tmp_path: Path) -> None:
    metrics, full = svhn_trial
    assert metrics["probe/best_val_test_acc"] > 0.25  # chance is 0.1
    last = full.history[-1]
    assert last["epoch"] == 2 and {"train/loss", "val/loss", *ae.METRICS} <= set(last)
    assert all(k not in row for row in full.history[:-1] for k in ae.METRICS)
    assert any(p.name == "reconstructions.png" for p in full.artifacts)
    assert full.info["ae_train_images"] + full.info["ae_val_images"] == 256

    with pytest.raises(Killed):
        run_trial(_config(svhn_root), KillAfter(tmp_path / "killed", last=1))
    resumed = LocalReporter(tmp_path / "killed", echo=False)
    again = run_trial(_config(svhn_root), resumed)
    assert [row["epoch"] for row in resumed.history] == [2]  # continued, not restarted
    # same seed, once straight through and once killed and resumed: identical numbers
    assert again == metrics
    assert resumed.history[-1]["train/loss"] == last["train/loss"]
    assert run_trial(_config(svhn_root), LocalReporter(tmp_path / "killed", echo=False)) == metrics  # done


@pytest.mark.usefixtures("one_thread")
def test_pixel_baseline_on_stl10_runs_the_same_path(stl_root: Path, tmp_path: Path) -> None:
    rep = LocalReporter(tmp_path / "px", echo=False)
    metrics = run_trial(_config(stl_root, network="none", points=(), dataset="stl10"), rep)
    assert set(ae.METRICS) <= set(metrics) and metrics["probe/best_val_test_acc"] > 0.25
    assert rep.info["synthetic_data"] is True and "feature_shape" not in rep.info
    assert rep.history[-1]["train/loss"] < 0.1  # pixel MSE of images in [0, 1]


def test_epoch_probe_is_sklearns_ridge_on_standardised_codes(svhn_root: Path) -> None:
    """The per-epoch selection metric (`val/linear_probe_acc`) equals scikit-learn's Ridge (alpha = penalty x
    fitted codes, intercept unpenalised) on StandardScaler'd codes of the same images, scored by argmax on the
    held-out part; and it is the task's EPOCH_METRIC, reported at every epoch."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from trainables.trial import prepare

    config = prepare(_config(svhn_root))
    data = ae.load_data(config)
    torch.manual_seed(0)
    model = ae.ConvAutoencoder(64).eval()
    got = ae.epoch_probe(model, data, config, torch.device("cpu"))

    images, labels = data.train
    n = min(len(images), ae.EPOCH_PROBE_IMAGES)
    pick = np.sort(torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))[:n].numpy())
    with torch.no_grad():
        codes = model.encode(ae.to_input(images[pick], "svhn", torch.device("cpu"))).double().numpy()
    y = labels[pick].numpy()
    fit, held = (i.numpy() for i in probes.seeded_split(n, config.seed))
    scaler = StandardScaler().fit(codes[fit])
    ridge = Ridge(alpha=ae.EPOCH_PROBE_RIDGE * len(fit)).fit(scaler.transform(codes[fit]), np.eye(10)[y[fit]])
    expected = float(np.mean(ridge.predict(scaler.transform(codes[held])).argmax(1) == y[held]))
    assert got == pytest.approx(expected, abs=1e-12) and 0 < len(held) < n
    assert ae.EPOCH_METRIC == ("val/linear_probe_acc", "max")


def test_every_epoch_reports_the_epoch_metric(svhn_trial) -> None:
    _, rep = svhn_trial
    assert [row["epoch"] for row in rep.history if ae.EPOCH_METRIC[0] in row] == [1, 2]
