"""Road delineation: CCQ metrics vs. hand counts and brute force, the dataset, the model, and whole trials."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import cdist

from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig
from trainables.data import roads
from trainables.errors import DataError
from trainables.metrics import ccq
from trainables.reporting import LocalReporter
from trainables.tasks import delineation as D
from trainables.trial import SYNTHETIC_MARKER, run_trial
from _dying_reporter import KillAfter, Killed


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return roads.synthesize(tmp_path_factory.mktemp("roads"), seed=0, size="smoke")


# ------------------------------------------------------------------------------------------- metrics


def _line(shape: tuple[int, int], row: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[row, c0:c1] = True
    return m


@pytest.mark.parametrize("tol, expected", [(3.0, 1.0), (2.0, 1.0), (1.5, 0.0), (0.0, 0.0)])
def test_shifted_line_matches_only_within_tolerance(tol: float, expected: float) -> None:
    label = _line((32, 32), 10, 5, 25)
    pred = _line((32, 32), 12, 5, 25)  # 2 px below the label
    r = ccq.tile_counts(pred, label, tol).ratios()
    assert r == {"correctness": expected, "completeness": expected, "quality": expected}


def test_partial_match_hand_counts() -> None:
    label = _line((40, 40), 20, 0, 20)  # 20 label pixels
    pred = _line((40, 40), 20, 0, 10) | _line((40, 40), 5, 30, 35)  # 10 on the road, 5 far away
    c = ccq.tile_counts(pred, label, 0.0)
    assert c == ccq.Counts(pred=15, label=20, matched_pred=10, matched_label=10)
    assert c.ratios() == pytest.approx({"correctness": 10 / 15, "completeness": 10 / 20, "quality": 10 / (15 + 10)})
    # at T=3 the pixels (20, 10..12) of the label are within 3 px of the prediction's end (20, 9): 13 matched
    c3 = ccq.tile_counts(pred, label, 3.0)
    assert c3 == ccq.Counts(pred=15, label=20, matched_pred=10, matched_label=13)
    assert c3.ratios()["quality"] == pytest.approx(10 / (15 + 7))


def test_empty_tiles() -> None:
    empty, road = np.zeros((8, 8), bool), _line((8, 8), 3, 0, 8)
    assert ccq.tile_counts(empty, empty).ratios() == {"correctness": 1.0, "completeness": 1.0, "quality": 1.0}
    assert ccq.tile_counts(empty, road).ratios() == {"correctness": 1.0, "completeness": 0.0, "quality": 0.0}
    assert ccq.tile_counts(road, empty).ratios() == {"correctness": 0.0, "completeness": 1.0, "quality": 0.0}


@pytest.mark.parametrize("tol", [0.0, 1.0, 1.5, 3.0])
def test_counts_equal_brute_force_distances(tol: float) -> None:
    rng = np.random.default_rng(int(tol * 10))
    pred, label = rng.random((2, 30, 25)) < 0.04
    pp, lp = np.argwhere(pred), np.argwhere(label)
    d = cdist(pp, lp)  # all pairwise Euclidean distances: an independent reference
    want = ccq.Counts(len(pp), len(lp), int((d.min(1) <= tol).sum()), int((d.min(0) <= tol).sum()))
    assert ccq.tile_counts(pred, label, tol) == want


def test_pooled_and_tile_means() -> None:
    a = ccq.Counts(pred=10, label=10, matched_pred=5, matched_label=5)  # q = 5 / 15
    b = ccq.Counts(pred=0, label=0, matched_pred=0, matched_label=0)  # empty & empty: q = 1
    out = ccq.summarise([a, b], prefix="test/")
    assert out["test/quality"] == pytest.approx(5 / 15)  # pooled: b adds nothing
    assert out["test/tile_mean/quality"] == pytest.approx((5 / 15 + 1) / 2)
    assert out["test/tile_mean/correctness"] == pytest.approx((0.5 + 1) / 2)


def test_evaluate_folders(tmp_path: Path) -> None:
    label = _line((20, 20), 10, 2, 18)
    prob = np.zeros((20, 20), np.float32)
    prob[11, 2:18] = 0.9  # 1 px off: matched at T=3 only
    prob[0, 0:4] = 0.2  # below the 0.3 threshold
    (tmp_path / "p").mkdir(), (tmp_path / "l").mkdir()
    Image.fromarray((label * 255).astype(np.uint8)).save(tmp_path / "l" / "a.tif")
    Image.fromarray((prob * 255).round().astype(np.uint8)).save(tmp_path / "p" / "a.png")
    np.save(tmp_path / "l" / "b.npy", label)
    np.save(tmp_path / "p" / "b.npy", prob)
    out = ccq.evaluate_folders(tmp_path / "p", tmp_path / "l", tolerance=3)
    assert out["quality"] == 1.0 and out["n_tiles"] == 2
    assert ccq.evaluate_folders(tmp_path / "p", tmp_path / "l", tolerance=0)["quality"] == 0.0
    assert ccq.evaluate_folders(tmp_path / "p", tmp_path / "l", threshold=0.95)["correctness"] == 1.0  # nothing predicted
    np.save(tmp_path / "p" / "c.npy", prob)
    with pytest.raises(DataError, match="no label .* for prediction.*c"):
        ccq.evaluate_folders(tmp_path / "p", tmp_path / "l")


# ---------------------------------------------------------------------------------------------- data


def test_synthesize_layout_and_reader(synth_root: Path, tmp_path: Path) -> None:
    assert json.loads((synth_root / SYNTHETIC_MARKER).read_text())["generator"] == "trainables.data.roads"
    for split in roads.SPLITS:
        tiles = roads.list_tiles(synth_root, split)
        assert tiles and all(t.sat.suffix == ".tiff" and t.map.suffix == ".tif" for t in tiles)
    tile = roads.list_tiles(synth_root, "train")[0]
    img, label = roads.read_pair(tile)
    assert img.shape == (3, 128, 128) and label.shape == (1, 128, 128)
    # the reader against PIL's own decoding of the files: 0/255 map -> {0, 1}, 8-bit RGB / 255
    np.testing.assert_array_equal(label[0].numpy(), (np.asarray(Image.open(tile.map)) == 255).astype(np.float32))
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(),
                                  np.asarray(Image.open(tile.sat).convert("RGB"), dtype=np.float32) / 255)
    assert 0.01 < label.mean() < 0.3  # a property of the generator: roads are a minority of the pixels
    with Image.open(roads.list_tiles(synth_root, "train")[0].map) as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) == {0, 255}
    # same seed -> same bytes; a missing label is named
    again = roads.synthesize(tmp_path / "again", seed=0)
    assert (again / "test/sat/synth_test_0000.tiff").read_bytes() == (synth_root / "test/sat/synth_test_0000.tiff").read_bytes()
    (again / "test/map/synth_test_0001.tif").unlink()
    with pytest.raises(DataError, match="synth_test_0001.tif is missing"):
        roads.list_tiles(again, "test")


def test_download_reads_index_pages_and_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[str] = []

    def fake_fetch(url: str, dest: Path, checksum: str | None = None) -> Path:
        requested.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if url.endswith("index.html"):
            ext = "tiff" if "/sat/" in url else "tif"
            dest.write_text(f'<a href="1_15.{ext}">x</a> <a href="{url.rsplit("/", 1)[0]}/2_15.{ext}">y</a> <a href="../">up</a>')
        else:
            dest.write_bytes(b"")
        return dest

    monkeypatch.setattr(roads, "fetch", fake_fetch)
    out = roads.download(tmp_path / "mr")
    assert f"{roads.BASE_URL}test/map/2_15.tif" in requested and f"{roads.BASE_URL}train/sat/1_15.tiff" in requested
    assert [t.stem for t in roads.list_tiles(out, "valid")] == ["1_15", "2_15"]
    monkeypatch.undo()

    def offline(*a: object, **k: object) -> None:
        raise urllib.error.URLError("no route")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match="offline"):
        roads.download(tmp_path / "offline")


# --------------------------------------------------------------------------------------------- model


def test_unet_whole_tile_inference_any_size() -> None:
    torch.manual_seed(0)
    model = D.Refiner(K=3).eval()
    assert sum(p.numel() for p in model.parameters()) == 64_545  # the reference's 64,546 less the output BN, plus a bias
    assert model.predict_tile(torch.rand(3, 37, 50)).shape == (37, 50)


def test_loss_is_k_weighted_and_label_features_computed_once() -> None:
    torch.manual_seed(0)
    net = ln.build_loss_network("alexnet", ("features.1",), weights="random")
    calls: list[bool] = []
    net.register_forward_pre_hook(lambda m, a: calls.append(torch.is_grad_enabled()))
    logits = [torch.randn(2, 1, 32, 32, requires_grad=True) for _ in range(3)]
    y = (torch.rand(2, 1, 32, 32) > 0.8).float()
    got = D.delineation_loss(logits, y, net, mu=0.5)
    assert calls == [False, True, True, True]  # label once without grad, then one pass per step
    w = np.array([1, 2, 3]) / 6
    bce = sum(wk * F.binary_cross_entropy(torch.sigmoid(z), y) for wk, z in zip(w, logits))
    ft = net(y.repeat(1, 3, 1, 1))["features.1"]
    feat = sum(wk * ((net(torch.sigmoid(z).repeat(1, 3, 1, 1))["features.1"] - ft) ** 2).mean() for wk, z in zip(w, logits))
    assert got["bce"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert got["loss"].item() == pytest.approx((bce + 0.5 * feat).item(), rel=1e-5)
    got["loss"].backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in logits)


def test_crop_size_errors_are_clear() -> None:
    cfg = TrialConfig(task="delineation", network="inception_v3", points=("Mixed_6e",), weights="random", variant="default")
    net = ln.build_loss_network("inception_v3", ("Mixed_6e",), weights="random")
    with pytest.raises(ConfigError, match="cannot run at crop_size 32.*at least 75"):
        D.check_crop(net, cfg, 32, torch.device("cpu"))
    with pytest.raises(ConfigError, match="multiple of 16"):
        D.check_crop(net, cfg, 90, torch.device("cpu"))
    D.check_crop(net, cfg, D.BUDGETS["smoke"]["crop_size"], torch.device("cpu"))


@pytest.mark.parametrize("network", sorted(ln.REGISTRY))
def test_every_paper_network_trains_one_step_at_smoke_crop(network: str) -> None:
    """The deepest paper point of every network at the smoke crop: the hardest case for small inputs."""
    torch.manual_seed(0)
    point = ln.REGISTRY[network].points[-1]
    net = ln.build_loss_network(network, (point,), weights="random")
    crop = D.BUDGETS["smoke"]["crop_size"]
    cfg = TrialConfig(task="delineation", network=network, points=(point,), weights="random", variant="default")
    D.check_crop(net, cfg, crop, torch.device("cpu"))
    model = D.Refiner(K=1)
    x, y = torch.rand(1, 3, crop, crop), (torch.rand(1, 1, crop, crop) > 0.9).float()
    net.train()  # mode=eval: must stay in eval (BatchNorm statistics untouched)
    assert not any(m.training for m in net.body.modules())
    logits = model(x)
    loss = D.delineation_loss(logits, y, net, mu=0.01)
    with torch.no_grad():  # K = 1: weight 1; the formula written out, on the same trunk
        p = torch.sigmoid(logits[0])
        feat = ((net(p.repeat(1, 3, 1, 1))[point] - net(y.repeat(1, 3, 1, 1))[point]) ** 2).mean()
        bce = F.binary_cross_entropy(p, y)
    assert feat.item() > 0
    assert loss["feature"].item() == pytest.approx(feat.item(), rel=1e-4, abs=0)
    assert loss["loss"].item() == pytest.approx((bce + 0.01 * feat).item(), rel=1e-5, abs=0)
    loss["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


# -------------------------------------------------------------------------------------------- trials


def _config(root: Path, **params: object) -> TrialConfig:
    return TrialConfig(task="delineation", network="vgg16", points=("features.3",), weights="random", variant="default",
                       budget="smoke", data_root=str(root), params=dict(params))


def test_smoke_trial_beats_trivial_predictors(synth_root: Path, tmp_path: Path) -> None:
    reporter = LocalReporter(tmp_path / "out", echo=False)
    final = run_trial(_config(synth_root), reporter)
    labels = [roads.read_label(t.map) for t in roads.list_tiles(synth_root, "test")]
    background = ccq.score_tiles([np.zeros(y.shape) for y in labels], labels)["quality"]
    everything = ccq.score_tiles([np.ones(y.shape) for y in labels], labels)["quality"]
    assert background == 0.0
    assert final["test/quality"] > max(background, everything) + 0.05
    last = reporter.history[-1]
    assert last["epoch"] == D.BUDGETS["smoke"]["epochs"] and "train/loss" in last
    assert set(D.METRICS) <= set(last) and all(last[k] == pytest.approx(final[k]) for k in D.METRICS)
    assert len([a for a in reporter.artifacts if a.parent.name == "samples"]) == D.BUDGETS["smoke"]["n_overlays"]


def test_resume_after_kill_continues_from_checkpoint(synth_root: Path, tmp_path: Path) -> None:
    cfg = _config(synth_root, epochs=3, steps_per_epoch=2, mu=0.0)
    with pytest.raises(Killed):
        run_trial(cfg, KillAfter(tmp_path / "out"))
    saved = torch.load(tmp_path / "out" / "checkpoint" / "state.pt", weights_only=True)
    assert saved["epoch"] == 1
    reporter = LocalReporter(tmp_path / "out", echo=False)
    run_trial(cfg, reporter)
    assert [r["epoch"] for r in reporter.history] == [2, 3]  # continued, not restarted
    final_state = torch.load(tmp_path / "out" / "checkpoint" / "state.pt", weights_only=True)
    adam_steps = next(iter(final_state["optimizer"]["state"].values()))["step"]
    assert int(adam_steps) == 3 * 2  # the optimiser's step count carried over
    assert run_trial(cfg, LocalReporter(tmp_path / "out", echo=False)) == pytest.approx(final_state["final"])
