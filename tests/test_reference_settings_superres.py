"""Super-resolution's reference-emulation settings (issue 15), each against an independent reference.

- `eval_protocol=center288`: the authors' test scoring (288 centre crop, Y' without offset or rounding,
  2 px shave, scikit-image's default 7x7 uniform SSIM) vs scikit-image called here on hand-made Y';
- `train_crop=resize_center`: the authors' crops vs PIL with hand-computed sizes and torchvision's
  Resize + CenterCrop;
- the pixel-loss baseline (`network: none`): the first step's loss is the pixel MSE, no loss network;
- smoke trials under the reference settings, whose bicubic baseline is recomputed here from scratch, and a
  resumed trial that ends where an uninterrupted one does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from skimage import data as skdata
from skimage.metrics import structural_similarity

from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig
from trainables.data import superres as srdata
from trainables.images import read_rgb
from trainables.metrics import sr_metrics
from trainables.reporting import LocalReporter
from trainables.tasks import superres as SR
from trainables.trial import prepare, run_trial
from _dying_reporter import KillAfter, Killed


@pytest.fixture(scope="module")
def wide_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real, non-square photographs (landscape, portrait, smaller than 288) as PNGs."""
    out = tmp_path_factory.mktemp("wide")
    chelsea = skdata.chelsea()  # 300 x 451
    images = {"landscape": chelsea, "portrait": skdata.rocket()[:, 100:380], "small": chelsea[40:240:2, 60:420:2]}
    paths = {}
    for name, img in images.items():
        paths[name] = out / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(img)).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def sr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return srdata.synthesize(tmp_path_factory.mktemp("srdata"), seed=0, size="smoke")


# ------------------------------------------------------------------------------------- crops


def _pil_resize_center(path: Path, side: int) -> np.ndarray:
    """The reference crop from first principles: torchvision's size rule (shorter side = side, longer side
    truncated), PIL bilinear, then the centre window with torchvision's rounding of the offsets."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (side, int(side * h / w))
    else:
        size = (int(side * w / h), side)
    img = img.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - side) / 2.0)), int(round((size[1] - side) / 2.0))
    return np.array(img.crop((left, top, left + side, top + side)))


@pytest.mark.parametrize("side", [288, 64])
def test_resize_center_equals_pil_by_hand_and_torchvision(wide_photos: dict[str, Path], side: int) -> None:
    tv = T.Compose([T.Resize(side), T.CenterCrop(side), T.ToTensor()])
    for name, path in wide_photos.items():
        got = srdata.resize_center(read_rgb(path), side)
        assert got.shape == (3, side, side), name
        hand = torch.from_numpy(_pil_resize_center(path, side)).permute(2, 0, 1).float() / 255
        assert torch.equal(got, hand), name
        assert torch.equal(got, tv(Image.open(path).convert("RGB"))), name


def _is_window_of(img: torch.Tensor, crop: torch.Tensor) -> bool:
    """Whether `crop` (C, k, k) equals some k x k window of `img` (C, H, W), by exhaustive search: every
    position whose pixel equals the crop's top-left one is compared in full (all windows at once would be
    C * H * W * k * k comparisons, ~3 GB for one photo)."""
    k = crop.shape[-1]
    starts = (img[:, : img.shape[1] - k + 1, : img.shape[2] - k + 1] == crop[:, :1, :1]).all(0)
    return any(torch.equal(img[:, y : y + k, x : x + k], crop) for y, x in starts.nonzero().tolist())


def test_train_crop_setting_picks_the_crops(wide_photos: dict[str, Path]) -> None:
    files = sorted(wide_photos.values())
    ref = srdata.train_crops("resize_center", files, 64, seed=0, epoch=1, n=6)
    for i in range(len(ref)):  # every item is the file's one reference crop
        assert torch.equal(ref[i], torch.from_numpy(_pil_resize_center(files[ref.index[i]], 64)).permute(2, 0, 1) / 255)
    native = srdata.train_crops("random", files, 64, seed=0, epoch=1, n=6)
    for i in range(len(native)):  # a window of the unscaled image (all three are larger than 64)
        assert _is_window_of(read_rgb(files[native.index[i]]), native[i])
    val = srdata.center_crops(files, 64, "resize_center")
    assert torch.equal(val[0].float() / 255, torch.from_numpy(_pil_resize_center(files[0], 64)).permute(2, 0, 1) / 255)
    with pytest.raises(Exception, match="train_crop 'centre'"):
        srdata.train_crops("centre", files, 64, 0, 1, 2)


def test_center288_hr_is_the_reference_test_transform(wide_photos: dict[str, Path]) -> None:
    for path in wide_photos.values():
        hr = srdata.prepare_hr(read_rgb(path), 4, "center288")
        assert torch.equal(hr, torch.from_numpy(_pil_resize_center(path, 288)).permute(2, 0, 1) / 255)


# ------------------------------------------------------------------------------------- scores


def _hand_y(img: np.ndarray) -> np.ndarray:
    """The authors' test script: Y' = sum_c RGB_c / 255 * w_c / 256 (w = 65.738, 129.057, 25.064)."""
    x = img.astype(np.float64) / 255
    return x[..., 0] * 65.738 / 256 + x[..., 1] * 129.057 / 256 + x[..., 2] * 25.064 / 256


def _pair(path: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 288 HR crop and a distorted copy (noise everywhere, a strong stripe on the 2 outer rows and on
    rows 2-3, so that both the shave width and the window change the scores)."""
    hr = (srdata.resize_center(read_rgb(path), 288).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    sr = hr.astype(np.float64) + rng.normal(0, 6, hr.shape)
    sr[:2] += 60
    sr[2:4] -= 40
    return np.clip(sr, 0, 255).round().astype(np.uint8), hr


def test_center288_scores_equal_skimage_defaults(wide_photos: dict[str, Path]) -> None:
    for i, path in enumerate(wide_photos.values()):
        sr, hr = _pair(path, i)
        a, b = _hand_y(sr)[2:-2, 2:-2], _hand_y(hr)[2:-2, 2:-2]
        psnr = 10 * np.log10(1.0 / np.mean((a - b) ** 2))
        ssim = structural_similarity(b, a, data_range=1)  # defaults: 7x7 uniform window, sample covariance
        for scale in (4, 8):  # 2 px whatever the scale
            got = sr_metrics.psnr_ssim(sr, hr, scale, "center288")
            assert got == pytest.approx((psnr, ssim), abs=1e-9)
        # tensors in [0, 1] go through the same 8-bit path
        tensor = torch.from_numpy(sr).permute(2, 0, 1) / 255.0
        assert sr_metrics.psnr_ssim(tensor, hr, 4, "center288") == pytest.approx((psnr, ssim), abs=1e-9)
        # and the corrected protocol is a different measurement (Gaussian SSIM, offset + rounded Y, shave 4)
        full = sr_metrics.psnr_ssim(sr, hr, 4, "full")
        assert abs(full[1] - ssim) > 1e-3 and abs(full[0] - psnr) > 1e-2


def test_evaluate_folders_center288(wide_photos: dict[str, Path], tmp_path: Path) -> None:
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    hr_dir.mkdir(), sr_dir.mkdir()
    expected = []
    for i, (name, path) in enumerate(sorted(wide_photos.items())):
        Image.open(path).save(hr_dir / f"{name}.png")
        sr, hr = _pair(path, i)
        Image.fromarray(sr).save(sr_dir / f"{name}.png")
        a, b = _hand_y(sr)[2:-2, 2:-2], _hand_y(hr)[2:-2, 2:-2]
        expected.append((10 * np.log10(1 / np.mean((a - b) ** 2)), structural_similarity(b, a, data_range=1)))
    res = sr_metrics.evaluate_folders(sr_dir, hr_dir, 4, protocol="center288")
    assert res["psnr"] == pytest.approx(np.mean([e[0] for e in expected]), abs=1e-9)
    assert res["ssim"] == pytest.approx(np.mean([e[1] for e in expected]), abs=1e-9)


# ------------------------------------------------------------------------------------- trials


def _config(root: Path, network: str = "vgg16", **params: object) -> TrialConfig:
    points = ("features.3",) if network != "none" else ()
    base = dict(iterations=4, eval_every=2, val_images=2, n_samples=0)
    return TrialConfig(task="superres", network=network, points=points, weights="random", budget="smoke",
                       data_root=str(root), params={**base, **params})


def _bicubic_center288(root: Path, name: str) -> tuple[float, float]:
    """The bicubic baseline of a test set under center288, recomputed here from the files."""
    rows = []
    for f in srdata.test_files(root)[name]:
        hr = torch.from_numpy(_pil_resize_center(f, 288)).permute(2, 0, 1).float() / 255
        bic = srdata.upscale_bicubic(srdata.degrade(hr[None], 4, 1.0), 4)[0]
        b = (bic.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        h = (hr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ya, yb = _hand_y(b)[2:-2, 2:-2], _hand_y(h)[2:-2, 2:-2]
        rows.append((10 * np.log10(1 / np.mean((ya - yb) ** 2)), structural_similarity(yb, ya, data_range=1)))
    return tuple(np.mean(rows, axis=0))


def test_reference_settings_smoke_trial(sr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke trial under the authors' protocol: its crops are the reference's and its test scores are
    the reference's (the bicubic row is recomputed here from the files)."""
    kinds: list[str] = []
    real = srdata.train_crops
    monkeypatch.setattr(srdata, "train_crops", lambda kind, *a, **k: kinds.append(kind) or real(kind, *a, **k))
    cfg = _config(sr_root, eval_protocol="center288", train_crop="resize_center")
    rep = LocalReporter(tmp_path / "out", echo=False)
    final = run_trial(cfg, rep)
    assert kinds == ["resize_center", "resize_center"]  # both epochs
    for name in ("set5", "set14"):
        psnr, ssim = _bicubic_center288(sr_root, name)
        assert rep.history[-1][f"test/{name}/bicubic_psnr"] == pytest.approx(psnr, abs=1e-6)
        assert rep.history[-1][f"test/{name}/bicubic_ssim"] == pytest.approx(ssim, abs=1e-6)
    assert set(final) == set(SR.METRICS) and all(np.isfinite(v) for v in final.values())


def test_setting_values_are_checked(sr_root: Path) -> None:
    with pytest.raises(ConfigError, match="train_crop: 'center'"):
        SR.check_params({**SR.BUDGETS["smoke"], "train_crop": "center"})
    assert SR.BUDGETS["paper"]["train_crop"] == "random" and SR.BUDGETS["paper"]["eval_protocol"] == "full"


def test_resize_center_resumed_trial_equals_uninterrupted(sr_root: Path, tmp_path: Path) -> None:
    cfg = _config(sr_root, iterations=6, eval_every=2, train_crop="resize_center")
    whole = LocalReporter(tmp_path / "whole", echo=False)
    expected = run_trial(cfg, whole)
    with pytest.raises(Killed):
        run_trial(cfg, KillAfter(tmp_path / "resumed"))
    resumed = LocalReporter(tmp_path / "resumed", echo=False)
    got = run_trial(cfg, resumed)
    assert [r["epoch"] for r in resumed.history] == [2, 3]
    assert resumed.history[0]["train/loss"] == pytest.approx(whole.history[1]["train/loss"], rel=1e-6)
    assert got == pytest.approx(expected, rel=1e-6)


def test_pixel_baseline_trains_on_pixel_mse_without_a_loss_network(
    sr_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loss_net(*a: object, **k: object) -> None:
        raise AssertionError("the pixel baseline must not build a loss network")

    monkeypatch.setattr(ln, "build_from_config", no_loss_net)
    cfg = prepare(_config(sr_root, network="none", iterations=1, eval_every=1, pixel_weight=5.0))
    assert cfg.points == ()
    rep = LocalReporter(tmp_path / "out", echo=False)
    run_trial(cfg, rep)
    assert rep.info["baseline"] == "pixel"
    # the first (only) step's loss, recomputed: same seed, same net, same crops -> plain pixel MSE
    p = cfg.params
    torch.manual_seed(cfg.seed)
    model = SR.TransformNet(p["scale"], p["norm"])
    files = srdata.seeded_subset(srdata.list_images(sr_root / "train"), p["train_images"], cfg.seed)
    crops = srdata.train_crops(p["train_crop"], files, p["crop_size"], cfg.seed, 1, p["batch_size"])
    hr = torch.stack([crops[i] for i in range(len(crops))])
    expected = F.mse_loss(model(srdata.degrade(hr, p["scale"], p["blur_sigma"])), hr).item()
    assert rep.history[0]["train/loss"] == pytest.approx(expected, rel=1e-5)
