"""Super-resolution benchmark: Y-channel PSNR and SSIM against the formulas (BT.601, Wang et al. 2004) written out
here, the degradation and bicubic baseline against scipy + PIL, the network's size, and end-to-end smoke trials
(every test score recomputed from the saved images; training beats the untrained network; a killed trial resumes
where it stopped and ends exactly where an unbroken one does)."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from trainables.config import ConfigError, TrialConfig
from trainables.data import superres as srdata
from trainables.errors import DataError
from trainables.images import read_rgb
from trainables.metrics import sr_metrics
from trainables.reporting import LocalReporter
from trainables.tasks import superres as task
from trainables.trial import SYNTHETIC_MARKER, run_trial
from _dying_reporter import KillAfter, Killed


def _reference_y(img_u8: np.ndarray) -> np.ndarray:
    """BT.601 luma of 8-bit RGB as MATLAB's rgb2ycbcr returns it for uint8 input (rounded half up), written out.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 is a multiple of 1/255000, so y = numerator / 255000 is
    exact to float precision and an exact .5 stays .5: floor(y + 0.5) rounds half up without float ties.
    """
    r, g, b = (img_u8[..., c].astype(np.int64) for c in range(3))
    return np.floor((4_080_000 + 65481 * r + 128553 * g + 24966 * b) / 255000 + 0.5)


def _reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """10 log10(255^2 / MSE): the definition, peak 255 on the 8-bit Y scale."""
    return float(10.0 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def _reference_ssim(a: np.ndarray, b: np.ndarray, window: str = "gaussian", peak: float = 255.0,
                    sample_cov: bool = False) -> float:
    """Mean SSIM of Wang, Bovik, Sheikh & Simoncelli (2004), eq. 13, written out from the paper.

    Local statistics under a normalised window w: mu = w*x, sigma^2 = w*x^2 - mu^2, sigma_xy = w*xy - mu_x mu_y
    (population, the weights sum to 1); C1 = (K1 L)^2, C2 = (K2 L)^2 with K1 = 0.01, K2 = 0.03, L = `peak`.
    `gaussian`: the paper's 11x11 window, sigma 1.5 (MATLAB fspecial('gaussian', 11, 1.5)); `uniform7`: a 7x7
    box, which with `sample_cov` (variances times N/(N-1), N = 49) is scikit-image's default, the authors'
    scoring. The map is kept only where the window lies inside the image (MATLAB's filter2 'valid').
    """
    if window == "gaussian":
        g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
        w = np.outer(g, g)
    else:
        w = np.ones((7, 7))
    w /= w.sum()
    r = w.shape[0] // 2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def local(x: np.ndarray) -> np.ndarray:
        return ndimage.correlate(x, w, mode="constant")[r:-r, r:-r]  # the 'valid' part: no padding counted

    n = w.size / (w.size - 1) if sample_cov else 1.0
    mu_a, mu_b = local(a), local(b)
    var_a, var_b = n * (local(a * a) - mu_a**2), n * (local(b * b) - mu_b**2)
    cov = n * (local(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _reference_scores(sr_u8: np.ndarray, hr_u8: np.ndarray, shave: int) -> tuple[float, float]:
    """(PSNR, SSIM) on the rounded Y channel with `shave` border pixels removed, from the formulas above."""
    a = _reference_y(sr_u8)[shave:-shave, shave:-shave]
    b = _reference_y(hr_u8)[shave:-shave, shave:-shave]
    return _reference_psnr(a, b), _reference_ssim(a, b)


def _distorted(hr: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(hr.astype(np.float64) + rng.normal(0, 6 + 4 * seed, hr.shape), 0, 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------- metrics


def test_y_channel_is_matlab_rgb2ycbcr_rounded(photos: dict[str, Path]) -> None:
    # by hand: 16 + 219 = 235 (white), 16 (black), 16 + 65.481 = 81.481 -> 81, 16 + 128.553 = 144.553 -> 145,
    # 16 + 24.966 = 40.966 -> 41, and grey 128: 16 + 219 * 128/255 = 125.93 -> 126; exact halves round up:
    # (2, 44, 141): 16 + (130.962 + 5656.332 + 3520.206) / 255 = 16 + 9307.5 / 255 = 52.5 -> 53 (half to even: 52),
    # (127, 143, 49): 16 + 27922.5 / 255 = 125.5 -> 126
    prim = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128],
                      [2, 44, 141], [127, 143, 49]]], np.uint8)
    np.testing.assert_array_equal(sr_metrics.rgb_to_y(prim), [[235, 16, 81, 145, 41, 126, 53, 126]])
    img = np.asarray(Image.open(photos["coffee"]).convert("RGB"))
    y = sr_metrics.rgb_to_y(img)
    np.testing.assert_array_equal(y, _reference_y(img))
    # the rounding is real: unrounded Y differs from it on most pixels
    rgb = img.astype(np.float64) / 255
    unrounded = 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]
    assert np.mean(np.abs(unrounded - y) > 1e-6) > 0.5


def _blurred(hr: np.ndarray, scale: int) -> np.ndarray:
    """A structural distortion (PIL bicubic down by `scale` and up again), so SSIM is far from 1."""
    h, w = hr.shape[:2]
    small = Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("scale", [4, 8])
def test_psnr_ssim_equal_wang_formula_on_y(photos: dict[str, Path], tmp_path: Path, scale: int) -> None:
    """evaluate_folders (and psnr_ssim on tensors) = PSNR and Wang et al.'s SSIM written out in this file, on the
    rounded, shaved Y of real photographs (noise and blur distortions), to 1e-9."""
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    hr_dir.mkdir(), sr_dir.mkdir()
    expected = {}
    for i, (name, path) in enumerate(sorted(photos.items())):
        hr = np.asarray(Image.open(path).convert("RGB"))[:125, :123]  # not multiples of the scale: modcrop
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
        hr_c = hr[: 125 - 125 % scale, : 123 - 123 % scale]
        sr = _distorted(hr_c, i) if i % 2 else _blurred(hr_c, scale)
        Image.fromarray(sr).save(sr_dir / f"{name}.png")
        expected[name] = _reference_scores(sr, hr_c, scale)
        got = sr_metrics.psnr_ssim(torch.tensor(sr).permute(2, 0, 1) / 255.0, hr_c, scale)
        assert got == pytest.approx(expected[name], abs=1e-9, rel=0)
    res = sr_metrics.evaluate_folders(sr_dir, hr_dir, scale)
    assert res["n"] == 4
    for name, (psnr, ssim) in expected.items():
        assert res["images"][name]["psnr"] == pytest.approx(psnr, abs=1e-9, rel=0)
        assert res["images"][name]["ssim"] == pytest.approx(ssim, abs=1e-9, rel=0)
    assert res["psnr"] == pytest.approx(np.mean([v[0] for v in expected.values()]), abs=1e-9, rel=0)
    assert res["ssim"] == pytest.approx(np.mean([v[1] for v in expected.values()]), abs=1e-9, rel=0)


def test_wang_reference_is_the_published_ssim() -> None:
    """The formula above is checked on cases solvable by hand, so that a test that agrees with it means something.

    Identical images: SSIM 1. A constant offset d on a flat image x = c: the variances and covariance are 0, so
    SSIM = (2c(c+d) + C1) / (c^2 + (c+d)^2 + C1), C1 = 2.55^2 = 6.5025; with c = 100, d = 10:
    (22000 + 6.5025) / (22100 + 6.5025) = 0.995476... A contrast flip of a +-50 checkerboard p about 128
    (a = 128 + p, b = 128 - p): the window-weighted mean of p is m = +-50 q^2 with q = sum_k g_k (-1)^k / sum_k g_k
    for the 1-D Gaussian g (the window is separable; same magnitude at every position), so mu = 128 +- m,
    var_a = var_b = 2500 - m^2 = v, cov = -v, and on every window SSIM =
    (2 (128^2 - m^2) + C1) / (2 (128^2 + m^2) + C1) * (C2 - 2 v) / (C2 + 2 v), C2 = 7.65^2 = 58.5225.
    PSNR: MSE 255^2 gives 0 dB; one pixel off by 51 in four gives MSE 51^2 / 4.
    """
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 40)).astype(np.float64)
    assert _reference_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    flat = np.full((30, 30), 100.0)
    assert _reference_ssim(flat, flat + 10) == pytest.approx((22000 + 6.5025) / (22100 + 6.5025), abs=1e-12)
    pattern = 50.0 * (np.indices((31, 31)).sum(0) % 2 * 2 - 1)
    g = np.exp(-(np.arange(-5, 6) ** 2) / 4.5)
    m = 50 * (np.sum(g * (-1.0) ** np.arange(11)) / g.sum()) ** 2
    v = 2500 - m**2
    by_hand = (2 * (128**2 - m**2) + 6.5025) / (2 * (128**2 + m**2) + 6.5025) * (58.5225 - 2 * v) / (58.5225 + 2 * v)
    assert _reference_ssim(128 + pattern, 128 - pattern) == pytest.approx(by_hand, abs=1e-12)  # about -0.98
    assert _reference_psnr(np.zeros(4), np.full(4, 255.0)) == pytest.approx(0.0)
    assert _reference_psnr(np.zeros(4), np.array([0, 0, 0, 51.0])) == pytest.approx(10 * np.log10(255**2 / (51**2 / 4)))


def test_center288_scores_as_the_authors_script(photos: dict[str, Path], tmp_path: Path) -> None:
    """`center288` scoring = the authors' test script written out (reference_impl.md 3.2): Y' = (65.738 R +
    129.057 G + 25.064 B) / 256 with RGB in [0, 1], no +16 and no rounding, 2 px shaved whatever the scale, PSNR
    with peak 1, SSIM with scikit-image's defaults (7x7 box, sample covariance, L = 1). On a real photograph it
    differs from the `full` Gaussian SSIM by far more than the 1e-9 agreement: the window is pinned."""
    hr = np.asarray(Image.open(photos["astronaut"]).convert("RGB"))
    sr = _blurred(hr, 4)

    def y(img: np.ndarray) -> np.ndarray:
        rgb = img.astype(np.float64) / 255
        return ((65.738 * rgb[..., 0] + 129.057 * rgb[..., 1] + 25.064 * rgb[..., 2]) / 256)[2:-2, 2:-2]

    a, b = y(sr), y(hr)
    expected = (float(10 * np.log10(1 / np.mean((a - b) ** 2))), _reference_ssim(a, b, "uniform7", 1.0, True))
    assert sr_metrics.psnr_ssim(sr, hr, 4, "center288") == pytest.approx(expected, abs=1e-9, rel=0)
    full = sr_metrics.psnr_ssim(sr, hr, 4)
    assert full[1] == pytest.approx(_reference_scores(sr, hr, 4)[1], abs=1e-9, rel=0)
    assert abs(full[1] - expected[1]) > 1e-3
    # and through evaluate_folders, whose HR goes through the 288 protocol first
    (tmp_path / "hr").mkdir(), (tmp_path / "sr").mkdir()
    Image.fromarray(hr).save(tmp_path / "hr" / "a.png")
    hr288 = (srdata.prepare_hr(read_rgb(tmp_path / "hr" / "a.png"), 4, "center288").permute(1, 2, 0) * 255)
    hr288 = hr288.round().byte().numpy()
    sr288 = _blurred(hr288, 4)
    Image.fromarray(sr288).save(tmp_path / "sr" / "a.png")
    a, b = y(sr288), y(hr288)
    got = sr_metrics.evaluate_folders(tmp_path / "sr", tmp_path / "hr", 4, "center288")["images"]["a"]
    assert got["psnr"] == pytest.approx(float(10 * np.log10(1 / np.mean((a - b) ** 2))), abs=1e-9, rel=0)
    assert got["ssim"] == pytest.approx(_reference_ssim(a, b, "uniform7", 1.0, True), abs=1e-9, rel=0)


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


def _pil_bicubic(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """PIL's BICUBIC per channel in float mode (its uint8 mode rounds between the two 1-D passes); size = side
    or (width, height)."""
    wh = (size, size) if isinstance(size, int) else size
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32)).resize(wh, Image.BICUBIC)) for c in range(3)]
    return np.stack(chans, -1)


def test_bicubic_matches_pil() -> None:
    """Our antialiased a=-0.5 bicubic = PIL's BICUBIC (MATLAB imresize's kernel), shrinking and enlarging."""
    a = skdata.astronaut()
    ours = srdata.bicubic(_astronaut()[None], (128, 128))[0].permute(1, 2, 0).numpy() * 255
    np.testing.assert_allclose(ours, _pil_bicubic(a, 128), atol=2e-4, rtol=0)  # measured 9.2e-5
    small = a[::4, ::4].copy()
    up = srdata.bicubic(torch.from_numpy(small).permute(2, 0, 1)[None] / 255.0, (512, 512))[0].permute(1, 2, 0) * 255
    np.testing.assert_allclose(up.numpy(), _pil_bicubic(small, 512), atol=2e-4, rtol=0)  # measured 6.1e-5


def _reference_bicubic_baseline(hr: np.ndarray, scale: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(LR, bicubic-upscaled) uint8 images built without our code: scipy's Gaussian blur (radius ceil(3 sigma),
    mirrored borders as torch's 'reflect' padding), PIL's float bicubic down, 8-bit rounding, PIL's bicubic up."""
    f = hr.astype(np.float64)
    if sigma > 0:
        f = np.stack([ndimage.gaussian_filter(f[..., c], sigma, truncate=3.0, mode="mirror") for c in range(3)], -1)
    h, w = hr.shape[:2]
    lr = np.clip(_pil_bicubic(f, (w // scale, h // scale)), 0, 255).round().astype(np.uint8)
    return lr, np.clip(_pil_bicubic(lr, (w, h)), 0, 255).round().astype(np.uint8)


def test_bicubic_baseline_on_a_photograph_equals_an_independent_pipeline() -> None:
    """Degradation + bicubic baseline + Y metrics = scipy/PIL/the formulas above, on the astronaut (512 px).

    Measured: 26.8405 dB / 0.84194 without blur, 26.3918 dB / 0.82888 with sigma 1 (equal to 1e-14), nearest
    neighbour 24.77 dB: the 1e-9 tolerance below is far tighter than any of these differences.
    """
    hr_u8 = skdata.astronaut()
    hr = _astronaut()[None]
    for sigma in (0.0, 1.0):
        lr = srdata.degrade(hr, 4, sigma)
        ref_lr, ref_up = _reference_bicubic_baseline(hr_u8, 4, sigma)
        np.testing.assert_array_equal((lr[0].permute(1, 2, 0) * 255).round().byte().numpy(), ref_lr)
        got = sr_metrics.psnr_ssim(srdata.upscale_bicubic(lr, 4)[0], hr[0], 4)
        assert got == pytest.approx(_reference_scores(ref_up, hr_u8, 4), abs=1e-9, rel=0)
        nearest = sr_metrics.psnr_ssim(F.interpolate(lr, scale_factor=4, mode="nearest")[0], hr[0], 4)
        ref_nearest = np.repeat(np.repeat(ref_lr, 4, 0), 4, 1)
        assert nearest == pytest.approx(_reference_scores(ref_nearest, hr_u8, 4), abs=1e-9, rel=0)


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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sr_e2e")
    root = srdata.synthesize(base / "data", seed=0)
    full = LocalReporter(base / "full", echo=False)
    final = run_trial(_config(root, n_samples=5), full)  # 5: every smoke test image saved, so all can be rescored
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
    # every test score recomputed without our code from the saved 8-bit images (all of them: n_samples covers
    # each smoke set) with the formulas above; the bicubic images also rebuilt from the HR files with scipy + PIL
    # (float64 there, float32 in torch: a value at a .5 tie may round the other way, measured <= 23 of ~24k)
    art = {p.name: p for p in full.artifacts}
    for s, files in srdata.test_files(smoke["root"]).items():
        sr_scores, bic_scores = [], []
        for f in files:
            hr = np.asarray(Image.open(f).convert("RGB"))
            hr = hr[: hr.shape[0] - hr.shape[0] % 4, : hr.shape[1] - hr.shape[1] % 4]  # modcrop by hand
            np.testing.assert_array_equal(np.asarray(Image.open(art[f"{s}_{f.stem}_hr.png"])), hr)
            bic = np.asarray(Image.open(art[f"{s}_{f.stem}_bicubic.png"]))
            off = np.abs(bic.astype(int) - _reference_bicubic_baseline(hr, 4, 1.0)[1])
            assert off.max() <= 1 and np.mean(off > 0) < 0.005, (s, f.name, off.max(), np.mean(off > 0))
            bic_scores.append(_reference_scores(bic, hr, 4))
            sr_scores.append(_reference_scores(np.asarray(Image.open(art[f"{s}_{f.stem}_sr.png"])), hr, 4))
        for key, scores in (("", sr_scores), ("bicubic_", bic_scores)):
            assert last[f"test/{s}/{key}psnr"] == pytest.approx(np.mean([x[0] for x in scores]), abs=1e-9, rel=0)
            assert last[f"test/{s}/{key}ssim"] == pytest.approx(np.mean([x[1] for x in scores]), abs=1e-9, rel=0)
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
    with pytest.raises(Killed):
        run_trial(_config(root, **_TINY), KillAfter(base / "killed"))
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
