"""`dpl eval superres|roads` wiring: the CLI scores folders with the tasks' metric code."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from study.cli import main


def test_eval_superres_cli(tmp_path, photos, capsys) -> None:
    from skimage.metrics import structural_similarity

    (tmp_path / "hr").mkdir()
    (tmp_path / "sr").mkdir()
    rng = np.random.default_rng(0)
    hr = np.asarray(Image.open(photos["coffee"]).convert("RGB"))[:124, :124]  # a multiple of the scale
    sr = np.clip(hr.astype(int) + rng.integers(-3, 4, hr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(hr).save(tmp_path / "hr" / "coffee.png")
    Image.fromarray(sr).save(tmp_path / "sr" / "coffee.png")
    assert main(["eval", "superres", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--scale", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)

    def y(img):  # BT.601 on 8-bit RGB, rounded half up like MATLAB's rgb2ycbcr (exact in 1/255000), shaved by 4
        r, g, b = (img[..., c].astype(np.int64) for c in range(3))
        return np.floor((4_080_000 + 65481 * r + 128553 * g + 24966 * b) / 255000 + 0.5)[4:-4, 4:-4]

    psnr = 10 * np.log10(255**2 / np.mean((y(hr) - y(sr)) ** 2))  # the definition, peak 255
    assert out["n"] == 1 and set(out["images"]) == {"coffee"}
    assert out["psnr"] == pytest.approx(psnr, abs=1e-9, rel=0)
    assert out["images"]["coffee"]["psnr"] == out["psnr"]
    ssim = structural_similarity(y(hr), y(sr), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255)  # the formula itself is checked in test_superres.py
    assert out["ssim"] == pytest.approx(ssim, abs=1e-9, rel=0)


def test_eval_roads_cli(tmp_path, capsys) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    label = np.zeros((32, 32), np.uint8)
    label[10, 4:28] = 255
    pred = np.zeros((32, 32), np.uint8)
    pred[12, 4:28] = 255  # shifted 2 px: matched at tolerance 3, not at 0
    Image.fromarray(label).save(tmp_path / "label" / "t.png")
    Image.fromarray(pred).save(tmp_path / "pred" / "t.png")
    args = ["eval", "roads", "--pred", str(tmp_path / "pred"), "--label", str(tmp_path / "label"), "--json"]
    assert main(args + ["--tolerance", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"] == 1.0
    assert main(args + ["--tolerance", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"] == 0.0
    (tmp_path / "pred" / "t.png").rename(tmp_path / "pred" / "u.png")
    assert main(args) == 2
    assert "no label" in capsys.readouterr().err


def test_eval_superres_identical_images_is_strict_json(tmp_path, photos, capsys) -> None:
    """PSNR of identical images is infinite (as in scikit-image); --json must stay parseable by strict
    parsers, so it prints "inf" rather than Python's bare Infinity token."""
    hr = np.asarray(Image.open(photos["coffee"]).convert("RGB"))[:64, :64]
    for d in ("hr", "sr"):
        (tmp_path / d).mkdir()
        Image.fromarray(hr).save(tmp_path / d / "coffee.png")
    assert main(["eval", "superres", "--sr", str(tmp_path / "sr"), "--hr", str(tmp_path / "hr"), "--scale", "4",
                 "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"non-strict token {c}")))
    assert out["psnr"] == "inf" and out["images"]["coffee"]["psnr"] == "inf"
    assert out["ssim"] == 1.0 and out["n"] == 1
