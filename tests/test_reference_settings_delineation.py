"""Delineation's reference-emulation settings (issue 15), each against an independent reference.

- `test_resize=224`: evaluation tiles resized as the reference did, vs torchvision's tensor Resize;
- `k_train` / `k_test`: passes counted in a real trial; the old `K` is refused naming both;
- `tolerance=0` and the per-tile means `test/tile_mean/...` vs hand counts on a two-tile case;
- `select_on`: scripted validation scores where the total loss, the BCE and the quality each pick a
  different epoch; the tested weights are the chosen epoch's, also after a resume;
- the pixel-loss baseline (`network: none`: BCE only, no loss network);
- a smoke trial under every reference setting, killed and resumed, equal to an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig
from trainables.data import roads
from trainables.metrics import ccq
from trainables.reporting import LocalReporter
from trainables.tasks import delineation as D
from trainables.trial import prepare, run_trial
from _dying_reporter import KillAfter, Killed


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return roads.synthesize(tmp_path_factory.mktemp("roads"), seed=0, size="smoke")


def _config(root: Path, network: str = "vgg16", **params: Any) -> TrialConfig:
    points = ("features.3",) if network != "none" else ()
    return TrialConfig(task="delineation", network=network, points=points, weights="random", variant="default",
                       budget="smoke", data_root=str(root), params=dict(params))


def _write_tile(root: Path, split: str, stem: str, img: np.ndarray, label: np.ndarray) -> None:
    for kind in ("sat", "map"):
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / split / "sat" / f"{stem}{roads.SAT_SUFFIX}")
    Image.fromarray(label).save(root / split / "map" / f"{stem}{roads.MAP_SUFFIX}")


class _ImageIsTheAnswer:
    """A stand-in model whose logits are a fixed function of the image's red channel, so that the expected
    prediction can be computed outside the task."""

    def eval(self) -> None:
        pass

    def forward_any_size(self, images: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        return [20 * (images[:, :1] - 0.5)] * (steps or 1)


_PARAMS = dict(D.BUDGETS["smoke"], n_overlays=0, mu=0.0)


# ------------------------------------------------------------------------------------ resize


def test_resize_tile_equals_torchvision_tensor_resize() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 150, 150, generator=g)
    label = (torch.rand(1, 150, 150, generator=g) > 0.7).float()
    got_img, got_label = D.resize_tile(img, label, 224)
    bil = TF.InterpolationMode.BILINEAR
    assert torch.allclose(got_img, TF.resize(img, [224, 224], bil, antialias=False), atol=1e-6)
    assert torch.equal(got_label, (TF.resize(label, [224, 224], bil, antialias=False) > 0.5).float())
    assert set(got_label.unique().tolist()) <= {0.0, 1.0}
    same_img, same_label = D.resize_tile(img, label, 0)
    assert same_img is img and same_label is label


def test_test_resize_scores_the_resized_tile(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sat = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    label = ((rng.random((96, 96)) > 0.6) * 255).astype(np.uint8)
    _write_tile(tmp_path, "test", "a", sat, label)
    tiles = roads.list_tiles(tmp_path, "test")
    img, lab = roads.read_pair(tiles[0])
    for side in (0, 224):
        params = {**_PARAMS, "test_resize": side, "tolerance": 0.0}
        got = D.evaluate(_ImageIsTheAnswer(), None, tiles, params, torch.device("cpu"), "test")
        if side:
            bil = TF.InterpolationMode.BILINEAR
            x = TF.resize(img, [side, side], bil, antialias=False)
            y = TF.resize(lab, [side, side], bil, antialias=False)[0] > 0.5
        else:
            x, y = img, lab[0] > 0.5
        pred = torch.sigmoid(20 * (x[0] - 0.5)) > params["threshold"]
        expected = ccq.summarise([ccq.tile_counts(pred.numpy(), y.numpy(), 0.0)], prefix="test/")
        for k, v in expected.items():
            assert got[k] == pytest.approx(v), (side, k)


# ------------------------------------------------------------------- tolerance 0, tile means


def test_tile_mean_and_pooled_by_hand_at_tolerance_zero(tmp_path: Path) -> None:
    """Tile A: 4 predicted pixels, all on its 4 label pixels (every ratio 1). Tile B: 2 predicted pixels
    off its 6 label pixels (every ratio 0). Pooled: correctness 4/6, completeness 4/10, quality
    4/(6 + 6); per-tile means 1/2 each. One pixel off the label still matches at tolerance 1."""
    a_img, a_lab = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
    a_img[5, 5:9] = 255
    a_lab[5, 5:9] = 255
    b_img, b_lab = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
    b_img[20, 3:5] = 255
    b_lab[10, 10:16] = 255
    _write_tile(tmp_path, "test", "a", a_img, a_lab)
    _write_tile(tmp_path, "test", "b", b_img, b_lab)
    tiles = roads.list_tiles(tmp_path, "test")
    got = D.evaluate(_ImageIsTheAnswer(), None, tiles, {**_PARAMS, "tolerance": 0.0, "test_resize": 0},
                     torch.device("cpu"), "test")
    assert got["test/correctness"] == pytest.approx(4 / 6)
    assert got["test/completeness"] == pytest.approx(4 / 10)
    assert got["test/quality"] == pytest.approx(4 / 12)
    for r in ("correctness", "completeness", "quality"):
        assert got[f"test/tile_mean/{r}"] == pytest.approx(0.5)
        assert D.METRICS[f"test/tile_mean/{r}"] == "max"
    # shift tile A's prediction by one row: nothing matches pixel-exactly, everything within 1 px
    a_img[5], a_img[6] = 0, a_img[5]
    a_img[6, 5:9] = 255
    _write_tile(tmp_path, "test", "a", a_img, a_lab)
    exact = D.evaluate(_ImageIsTheAnswer(), None, tiles, {**_PARAMS, "tolerance": 0.0, "test_resize": 0},
                       torch.device("cpu"), "test")
    loose = D.evaluate(_ImageIsTheAnswer(), None, tiles, {**_PARAMS, "tolerance": 1.0, "test_resize": 0},
                       torch.device("cpu"), "test")
    assert exact["test/quality"] == 0.0 and loose["test/quality"] == pytest.approx(4 / 12)
    assert D.BUDGETS["paper"]["tolerance"] == 3.0


# ------------------------------------------------------------------------------ k_train / k_test


def test_k_train_and_k_test_are_the_passes_run(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[tuple[bool, int]] = []
    real_forward = D.Refiner.forward

    def counting(self: D.Refiner, image: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        out = real_forward(self, image, steps)
        passes.append((self.training, len(out)))
        return out

    monkeypatch.setattr(D.Refiner, "forward", counting)
    cfg = _config(synth_root, epochs=1, steps_per_epoch=2, k_train=1, k_test=3, max_val_tiles=1, max_test_tiles=1)
    final = run_trial(cfg, LocalReporter(tmp_path / "out", echo=False))
    train = [n for training, n in passes if training]
    evals = [n for training, n in passes if not training]
    assert train == [1, 1]  # two training steps, one pass each
    assert evals == [1, 3]  # validation with k_train (the reference's), then the test tile with k_test
    assert np.isfinite(final["test/quality"])


def test_old_K_is_refused_naming_its_replacements(synth_root: Path) -> None:
    with pytest.raises(ConfigError, match="K: .*k_train.*k_test"):
        prepare(_config(synth_root, K=3))
    with pytest.raises(ConfigError, match="k_test: 0 must be >= 1"):
        D.check_params({**D.BUDGETS["smoke"], "k_test": 0})
    assert (D.BUDGETS["paper"]["k_train"], D.BUDGETS["paper"]["k_test"]) == (3, 3)


# ------------------------------------------------------------------------------------ select_on

#: per epoch: the total loss is lowest at 1, the last pass's BCE at 2, the quality highest at 3
_SCRIPT = {1: {"loss": 0.1, "bce_last": 0.5, "quality": 0.2}, 2: {"loss": 0.3, "bce_last": 0.2, "quality": 0.3},
           3: {"loss": 0.5, "bce_last": 0.4, "quality": 0.6}}


class _Scripted:
    """Replaces D.evaluate: validation returns _SCRIPT's scores for the epoch; every call records a
    fingerprint of the weights it was given, so the test can tell which epoch's weights were tested."""

    def __init__(self) -> None:
        self.val_calls = 0
        self.seen: dict[str, list[float]] = {"val": [], "test": []}

    def __call__(self, model: D.Refiner, loss_net: Any, tiles: Any, params: Any, device: Any, prefix: str,
                 overlay_dir: Any = None, steps: Any = None) -> dict[str, float]:
        self.seen[prefix].append(float(sum(p.double().sum() for p in model.state_dict().values())))
        if prefix == "val":
            self.val_calls += 1
            s = _SCRIPT[self.val_calls]
            return {"val/loss": s["loss"], "val/bce": s["bce_last"], "val/bce_last": s["bce_last"],
                    "val/feature": 0.0, "val/quality": s["quality"]}
        return {k: 0.5 for k in D.METRICS}


@pytest.mark.parametrize("select_on, best", [("val_quality", 3), ("val_bce", 2)])
@pytest.mark.parametrize("kill_after", [0, 1, 2])
def test_select_on_picks_its_epoch_never_the_total_loss(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, select_on: str, best: int, kill_after: int
) -> None:
    cfg = _config(synth_root, epochs=3, steps_per_epoch=1, batch_size=2, k_train=1, k_test=1, select_on=select_on)
    script = _Scripted()
    monkeypatch.setattr(D, "evaluate", script)
    if kill_after:
        with pytest.raises(Killed):
            run_trial(cfg, KillAfter(tmp_path / "out", kill_after))
        script.val_calls = kill_after  # the resumed trial validates the remaining epochs
    final = run_trial(cfg, LocalReporter(tmp_path / "out", echo=False))
    assert final["test/best_epoch"] == best
    assert script.seen["test"] == [pytest.approx(script.seen["val"][best - 1])]  # the chosen epoch's weights


def test_total_loss_is_not_a_selection_rule() -> None:
    for bad in ("val_loss", "loss", "total"):
        with pytest.raises(ConfigError, match="select_on: .* total loss is not offered"):
            D.check_params({**D.BUDGETS["smoke"], "select_on": bad})
    assert D.BUDGETS["paper"]["select_on"] == "val_quality"


# ---------------------------------------------------------------------------------- baseline


def test_pixel_baseline_is_bce_only(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loss_net(*a: object, **k: object) -> None:
        raise AssertionError("the pixel baseline must not build a loss network")

    monkeypatch.setattr(ln, "build_from_config", no_loss_net)
    rep = LocalReporter(tmp_path / "out", echo=False)
    final = run_trial(_config(synth_root, "none", epochs=1, steps_per_epoch=2, mu=0.5), rep)
    assert rep.info["baseline"] == "pixel"
    assert final["test/feature"] == 0.0 and final["test/loss"] == final["test/bce"]
    assert rep.history[-1]["train/loss"] == pytest.approx(rep.history[-1]["train/bce"])


# -------------------------------------------------------------------------- reference smoke trial

_REFERENCE = dict(k_train=1, k_test=3, test_resize=224, tolerance=0.0, select_on="val_bce", epochs=3, steps_per_epoch=2)


def test_reference_settings_trial_resumes_to_the_uninterrupted_result(synth_root: Path, tmp_path: Path) -> None:
    """Every reference setting at once (and the reference's train-mode loss network); the crops are
    seeded by (seed, epoch, item), so a trial killed after epoch 1 ends exactly where an uninterrupted one
    does, selecting the same epoch."""
    cfg = _config(synth_root, **_REFERENCE).replace(mode="train")
    whole = LocalReporter(tmp_path / "whole", echo=False)
    expected = run_trial(cfg, whole)
    with pytest.raises(Killed):
        run_trial(cfg, KillAfter(tmp_path / "resumed", 1))
    resumed = LocalReporter(tmp_path / "resumed", echo=False)
    got = run_trial(cfg, resumed)
    assert [r["epoch"] for r in resumed.history] == [2, 3]
    assert got["test/best_epoch"] == expected["test/best_epoch"]
    assert resumed.history[0]["train/bce"] == pytest.approx(whole.history[1]["train/bce"], rel=1e-6)
    for k in ("test/quality", "test/tile_mean/quality", "test/bce", "test/correctness"):
        assert got[k] == pytest.approx(expected[k], rel=1e-6), k
    assert whole.info["select_metric"] == "val/bce_last"
