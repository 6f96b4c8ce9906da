"""Super-resolution benchmark: Y-channel metrics against scikit-image, the degradation against PIL, the
bicubic baseline on a real photograph, the network's size, and end-to-end smoke trials (training beats the
untrained network; a killed trial resumes where it stopped and ends exactly where an unbroken one does)."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import color, data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainables.config import ConfigError, TrialConfig
from trainables.data import superres as srdata
from trainables.errors import DataError
from trainables.images import read_rgb
from trainables.metrics import sr_metrics
from trainables.reporting import LocalReporter
from trainables.tasks import superres as task
from trainables.trial import SYNTHETIC_MARKER, run_trial


def _reference_y(img_u8: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr Y for uint8 input, via scikit-image's conversion plus MATLAB's rounding."""
    return np.round(color.rgb2ycbcr(img_u8)[..., 0])


def _reference_scores(sr_u8: np.ndarray, hr_u8: np.ndarray, shave: int) -> tuple[float, float, float]:
    a = _reference_y(sr_u8)[shave:-shave, shave:-shave]
    b = _reference_y(hr_u8)[shave:-shave, shave:-shave]
    hand_psnr = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    psnr = peak_signal_noise_ratio(b, a, data_range=255)
    ssim = structural_similarity(b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    return hand_psnr, psnr, ssim


def _distorted(hr: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(hr.astype(np.float64) + rng.normal(0, 6 + 4 * seed, hr.shape), 0, 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------- metrics


def test_y_channel_is_matlab_rgb2ycbcr_rounded(photos: dict[str, Path]) -> None:
    img = np.asarray(Image.open(photos["coffee"]).convert("RGB"))
    y = sr_metrics.rgb_to_y(img)
    np.testing.assert_array_equal(y, _reference_y(img))
    assert y.min() >= 16 and y.max() <= 235
    # the rounding is real: unrounded Y differs from it on most pixels
    assert np.mean(np.abs(color.rgb2ycbcr(img)[..., 0] - y) > 1e-6) > 0.5


@pytest.mark.parametrize("scale", [4, 8])
def test_psnr_ssim_equal_skimage_on_y(photos: dict[str, Path], tmp_path: Path, scale: int) -> None:
    """evaluate_folders (and psnr_ssim on tensors) = skimage on the rounded, shaved Y to 1e-4."""
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    hr_dir.mkdir(), sr_dir.mkdir()
    expected = {}
    for i, (name, path) in enumerate(sorted(photos.items())):
        hr = np.asarray(Image.open(path).convert("RGB"))[:125, :123]  # not multiples of the scale: modcrop
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
        hr_c = hr[: 125 - 125 % scale, : 123 - 123 % scale]
        sr = _distorted(hr_c, i)
        Image.fromarray(sr).save(sr_dir / f"{name}.png")
        hand, psnr, ssim = _reference_scores(sr, hr_c, scale)
        assert hand == pytest.approx(psnr, abs=1e-9)
        expected[name] = (psnr, ssim)
        got = sr_metrics.psnr_ssim(torch.from_numpy(sr).permute(2, 0, 1) / 255.0, hr_c, scale)
        assert got == pytest.approx((psnr, ssim), abs=1e-4)
    res = sr_metrics.evaluate_folders(sr_dir, hr_dir, scale)
    assert res["n"] == 4
    for name, (psnr, ssim) in expected.items():
        assert res["images"][name]["psnr"] == pytest.approx(psnr, abs=1e-4)
        assert res["images"][name]["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert res["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-4)
    assert res["ssim"] == pytest.approx(np.mean([v[1] for v in expected.values()]), abs=1e-4)


def test_evaluate_folders_refuses_unpaired_and_mismatched(photos: dict[str, Path], tmp_path: Path) -> None:
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    hr_dir.mkdir(), sr_dir.mkdir()
    img = Image.open(photos["rocket"]).convert("RGB")
    img.save(hr_dir / "a.png")
    img.save(sr_dir / "a.png")
    img.save(sr_dir / "b.png")
    with pytest.raises(DataError, match="b.png"):
        sr_metrics.evaluate_folders(sr_dir, hr_dir, 4)
    (sr_dir / "b.png").unlink()
    img.crop((0, 0, 120, 128)).save(sr_dir / "a.png")  # 120 wide: not the HR's 128
    with pytest.raises(DataError, match="a.png"):
        sr_metrics.evaluate_folders(sr_dir, hr_dir, 4)
    img.save(sr_dir / "a.png")
    assert sr_metrics.evaluate_folders(sr_dir, hr_dir, 4)["psnr"] == np.inf  # identical images


def test_center288_protocol(photos: dict[str, Path]) -> None:
    hr = srdata.prepare_hr(read_rgb(photos["chelsea"]), 4, "center288")
    assert hr.shape == (3, 288, 288)
    assert torch.equal(srdata.quantise(hr), hr)
    with pytest.raises(Exception, match="eval_protocol"):
        srdata.prepare_hr(hr, 4, "middle")


# ------------------------------------------------------------------------------------------ degradation


def _astronaut() -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut().copy()).permute(2, 0, 1).float() / 255


def _pil_bicubic(img: np.ndarray, size: int) -> np.ndarray:
    """PIL's BICUBIC per channel in float mode (its uint8 mode rounds between the two 1-D passes)."""
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32)).resize((size, size), Image.BICUBIC)) for c in range(3)]
    return np.stack(chans, -1)


def test_bicubic_matches_pil() -> None:
    """Our antialiased a=-0.5 bicubic = PIL's BICUBIC (MATLAB imresize's kernel), shrinking and enlarging."""
    a = skdata.astronaut()
    ours = srdata.bicubic(_astronaut()[None], (128, 128))[0].permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(ours, _pil_bicubic(a, 128), atol=2e-3)
    small = a[::4, ::4].copy()
    up = srdata.bicubic(torch.from_numpy(small).permute(2, 0, 1)[None] / 255.0, (512, 512))[0].permute(1, 2, 0) * 255
    np.testing.assert_allclose(up.numpy(), _pil_bicubic(small, 512), atol=2e-3)


def test_bicubic_baseline_is_sane_on_a_photograph() -> None:
    hr = _astronaut()[None]
    bicubic = {}
    for sigma in (0.0, 1.0):
        lr = srdata.degrade(hr, 4, sigma)
        assert lr.shape == (1, 3, 128, 128) and torch.equal(srdata.quantise(lr), lr)
        bicubic[sigma], _ = sr_metrics.psnr_ssim(srdata.upscale_bicubic(lr, 4)[0], hr[0], 4)
        nearest, _ = sr_metrics.psnr_ssim(F.interpolate(lr, scale_factor=4, mode="nearest")[0], hr[0], 4)
        assert 20 < bicubic[sigma] < 35
        assert bicubic[sigma] > nearest + 0.5
    assert bicubic[1.0] < bicubic[0.0]  # the extra blur loses detail that bicubic does not restore


def test_transform_net_size_and_shapes() -> None:
    # hand count: conv9 3->64 (15552 + 64) + BN 128; 4 residual blocks x 2 x (36864 + 64 + 128);
    # 2 upsample convs (36864 + 64 + 128); conv9 64->3 (15552 + 3), no output BN
    x4 = 15552 + 64 + 128 + 4 * 2 * (36864 + 64 + 128) + 2 * (36864 + 64 + 128) + 15552 + 3
    assert x4 == 401_865 - 6  # the reference's count minus its output BatchNorm
    net = task.TransformNet(4)
    assert sum(p.numel() for p in net.parameters()) == x4
    net8 = task.TransformNet(8, "instance")
    assert sum(p.numel() for p in net8.parameters()) == x4 + 36864 + 64 + 128
    y = net8.eval()(torch.rand(2, 3, 5, 6))
    assert y.shape == (2, 3, 40, 48) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(ConfigError, match="scale"):
        task.TransformNet(3)


def test_total_variation_by_hand() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    # vertical differences are all 4, horizontal all 1
    assert task.total_variation(x).item() == pytest.approx(16 + 1)


# ----------------------------------------------------------------------------------------------- data


def test_synthetic_layout_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = srdata.synthesize(tmp_path / "sr", seed=3)
    marker = json.loads((root / SYNTHETIC_MARKER).read_text())
    assert marker["seed"] == 3 and marker["size"] == "smoke"
    counts, _ = srdata.SYNTH_SIZES["smoke"]
    assert len(srdata.list_images(root / "train")) == counts["train"]
    tests = srdata.test_files(root)
    assert {k: len(v) for k, v in tests.items()} == {k: counts[k] for k in srdata.TEST_SETS}
    assert all(f.suffix == ".png" for f in tests["set5"]) and all(f.suffix == ".jpg" for f in tests["bsd100"])
    img = read_rgb(tests["set5"][0])
    assert img.std() > 0.1  # not flat
    with pytest.raises(DataError, match="nowhere"):
        srdata.list_images(tmp_path / "nowhere")
    sub = srdata.seeded_subset(srdata.list_images(root / "train"), 5, seed=1)
    assert len(sub) == 5 and sub == srdata.seeded_subset(list(reversed(srdata.list_images(root / "train")))[::-1], 5, 1)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match="train2014.zip"):
        srdata.download(tmp_path / "real")


def test_random_crops_are_seeded_per_epoch(tmp_path: Path) -> None:
    files = srdata.list_images(srdata.synthesize(tmp_path / "sr") / "train")
    a = srdata.RandomCrops(files, 32, seed=0, epoch=2, n=30)
    b = srdata.RandomCrops(files, 32, seed=0, epoch=2, n=30)
    c = srdata.RandomCrops(files, 32, seed=0, epoch=3, n=30)
    assert torch.equal(a[7], b[7]) and a[7].shape == (3, 32, 32)
    assert not np.array_equal(a.index, c.index) or not np.array_equal(a.frac, c.frac)
    assert np.bincount(a.index[: len(files)], minlength=len(files)).max() == 1  # a pass uses each image once


# ------------------------------------------------------------------------------------------ end to end


def _config(root: Path, network: str = "vgg16", point: str = "features.3", **params) -> TrialConfig:
    return TrialConfig(task="superres", network=network, points=(point,), variant="default",
                       weights="random", budget="smoke", data_root=str(root), device="cpu", params=params)


#: a tiny trial for the resume check (the smallest loss network, 4 steps on 32 px crops)
_TINY = dict(network="squeezenet1_1", point="features.1", iterations=4, eval_every=2, crop_size=32, val_images=2)


#: a longer, cheaper run for the learning check: 200 steps on 32 px crops
_LEARN = dict(iterations=200, eval_every=50, crop_size=32)


class _Killed(Exception):
    pass


class _DyingReporter(LocalReporter):
    """Dies right after the first epoch's checkpoint is stored, like a trial killed mid-run."""

    def report(self, epoch, metrics, checkpoint_dir=None):
        super().report(epoch, metrics, checkpoint_dir)
        raise _Killed


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sr_e2e")
    root = srdata.synthesize(base / "data", seed=0)
    full = LocalReporter(base / "full", echo=False)
    final = run_trial(_config(root), full)
    # learning is judged on a longer run at 32 px (4x cheaper steps): the 60-step smoke budget exercises the
    # pipeline, but does not reliably beat the untrained net's val PSNR (see docs/tasks/superres.md)
    learn = LocalReporter(base / "learn", echo=False)
    run_trial(_config(root, **_LEARN), learn)
    untrained = LocalReporter(base / "untrained", echo=False)
    run_trial(_config(root, **{**_LEARN, "iterations": 0}), untrained)
    return {"root": root, "base": base, "final": final, "full": full, "learn": learn, "untrained": untrained}


def test_smoke_trial_learns_and_reports(smoke: dict) -> None:
    full, untrained = smoke["full"], smoke["untrained"]
    assert [r["epoch"] for r in full.history] == [1, 2, 3]
    last = full.history[-1]
    assert set(task.METRICS) <= set(last) and "train/loss" in last and "val/psnr" in last
    for s in srdata.TEST_SETS:
        assert 5 < last[f"test/{s}/bicubic_psnr"] < 50 and 0 < last[f"test/{s}/ssim"] <= 1
    assert smoke["final"] == {k: last[k] for k in task.METRICS}
    assert full.history[-1]["train/loss"] < full.history[0]["train/loss"]
    # training beats the untrained network of the same seed on the validation crops (by 2.5-4 dB in trials)
    learn = smoke["learn"].history
    assert learn[-1]["train/loss"] < learn[0]["train/loss"]
    assert untrained.history[-1]["val/psnr"] + 1.0 < learn[-1]["val/best_psnr"]
    names = {p.name for p in full.artifacts}
    assert {"set5_img_001_sr.png", "set5_img_001_bicubic.png", "set5_img_001_hr.png"} <= names
    assert full.info["sr_parameters"] == 401_859 and full.info["feature_shape"] == "64x64x64"


def test_killed_trial_resumes_where_it_stopped(smoke: dict) -> None:
    root, base = smoke["root"], smoke["base"]
    unbroken = run_trial(_config(root, **_TINY), LocalReporter(base / "unbroken", echo=False))
    with pytest.raises(_Killed):
        run_trial(_config(root, **_TINY), _DyingReporter(base / "killed", echo=False))
    again = LocalReporter(base / "killed", echo=False)
    final = run_trial(_config(root, **_TINY), again)
    assert [r["epoch"] for r in again.history] == [2]  # epoch 1 was not trained again
    # same data order and restored model/optimiser: the broken run ends where the unbroken one did
    for k, v in unbroken.items():
        assert final[k] == pytest.approx(v, abs=1e-3), k
    # a finished trial run again trains nothing and reports its result again
    third = LocalReporter(base / "killed", echo=False)
    assert run_trial(_config(root, **_TINY), third) == final and [r["epoch"] for r in third.history] == [2]


def test_bad_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="crop_size"):
        run_trial(_config(tmp_path, crop_size=66), LocalReporter(tmp_path / "o", echo=False))
    with pytest.raises(DataError, match="set5"):
        run_trial(_config(tmp_path), LocalReporter(tmp_path / "o", echo=False))
