"""Perceptual similarity (BAPPS): scoring vs. the lpips package, the reader, synthetic data, the trial."""
from __future__ import annotations

import io
import json
from pathlib import Path

import lpips
import lpips.trainer
import numpy as np
import pytest
import skimage.data
import skimage.filters
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from trainables.config import TrialConfig
from trainables.data import bapps
from trainables.errors import DataError, UserError
from trainables.metrics import similarity_scores as sc
from trainables.reporting import LocalReporter
from trainables.tasks import similarity
from trainables.trial import SYNTHETIC_MARKER, prepare, run_trial

ALEX_RELUS = ("features.1", "features.4", "features.7", "features.9", "features.11")


class FakeLoader:
    """What lpips' scoring functions iterate: `.load_data()` yielding batch dicts."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def load_data(self) -> list[dict[str, torch.Tensor]]:
        return self.batches


def _lpips_2afc(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> float:
    """lpips' own 2AFC score on given distances: the 'images' are indices, func looks the distance up."""
    idx = torch.arange(len(d0))
    table = {0: torch.tensor(d0), 1: torch.tensor(d1)}
    batches = [{"ref": idx[i:i + 7], "p0": torch.zeros(len(idx[i:i + 7]), dtype=torch.long),
                "p1": torch.ones(len(idx[i:i + 7]), dtype=torch.long), "judge": torch.tensor(judge[i:i + 7])}
               for i in range(0, len(d0), 7)]
    return lpips.trainer.score_2afc_dataset(FakeLoader(batches), lambda a, b: table[int(b[0])][a])[0]


def _lpips_jnd(d: np.ndarray, same: np.ndarray) -> float:
    idx = torch.arange(len(d))
    dt = torch.tensor(d)
    batches = [{"p0": idx[i:i + 5], "p1": idx[i:i + 5], "same": torch.tensor(same[i:i + 5])} for i in range(0, len(d), 5)]
    return lpips.trainer.score_jnd_dataset(FakeLoader(batches), lambda a, b: dt[a])[0]


# ------------------------------------------------------------------------------------------ scoring


def test_scores_match_lpips_functions() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 13, 200):
        d0, d1 = rng.random(n), rng.random(n)
        d1[: n // 4] = d0[: n // 4]  # ties score 0.5
        judge = rng.integers(0, 6, n) / 5
        assert sc.twoafc_score(d0, d1, judge) == pytest.approx(_lpips_2afc(d0, d1, judge), abs=1e-12)
        d = np.round(rng.random(n), 2)  # rounding creates distance ties
        same = rng.integers(0, 4, n) / 3
        same[0] = 1.0
        assert sc.jnd_map(d, same) == pytest.approx(_lpips_jnd(d, same), abs=1e-12)
        rec, prec = np.sort(rng.random(n)), rng.random(n)
        assert sc.voc_ap(rec, prec) == pytest.approx(lpips.voc_ap(rec, prec), abs=1e-12)


def test_scores_hand_values_and_summary() -> None:
    # d0<d1 -> 1-j, d1<d0 -> j, tie -> 0.5
    assert sc.twoafc_scores([1, 3, 2], [2, 1, 2], [0.2, 0.6, 0.9]).tolist() == pytest.approx([0.8, 0.6, 0.5])
    # perfect ranking of binary labels: AP 1; negative first: precisions 1/2, 2/3 at recalls 1/2, 1, and the
    # envelope lifts the first to 2/3 -> AP 2/3 (not the uninterpolated 7/12)
    assert sc.jnd_map([0.1, 0.2, 0.9], [1, 1, 0]) == pytest.approx(1.0)
    assert sc.jnd_map([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(2 / 3)
    out = sc.summarise({"a": ([0], [1], [0]), "b": ([1], [0], [0])}, {"x": ([0.1, 0.5], [1, 0]), "y": ([0.2], [0])})
    assert out["2afc/a"] == 1 and out["2afc/b"] == 0 and out["2afc/mean"] == 0.5
    assert out["jnd/pooled"] == pytest.approx(_lpips_jnd(np.array([0.1, 0.5, 0.2]), np.array([1.0, 0, 0])))


def test_logit_head_and_schedule_match_lpips() -> None:
    ref = lpips.Dist2LogitLayer()
    ours = similarity.LogitHead()
    ours.load_state_dict(ref.state_dict())  # same layer layout, same keys
    d0, d1 = torch.rand(9), torch.rand(9)
    expected = ref(d0.view(-1, 1, 1, 1), d1.view(-1, 1, 1, 1)).view(-1)
    torch.testing.assert_close(ours(d0, d1), expected)
    # lpips train.py: constant for nepoch(5) epochs, then lr -= lr/nepoch_decay after each later epoch
    p = {"lr": 1e-4, "epochs": 10, "decay_epochs": 5}
    lrs, lr = [], 1e-4
    for epoch in range(1, 11):
        lrs.append(lr)
        if epoch > 5:
            lr -= 1e-4 / 5
    assert [similarity.lr_at(e, p) for e in range(1, 11)] == pytest.approx(lrs)


# ------------------------------------------------------------------------------------ photographs


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _distortions(patch: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    f = patch / 255.0
    outs = [
        skimage.filters.gaussian(f, sigma=rng.uniform(0.5, 2.5), channel_axis=-1),
        f + rng.normal(0, rng.uniform(0.02, 0.15), f.shape),
        f + rng.uniform(-0.15, 0.15, 3),
        _jpeg(patch, int(rng.integers(5, 60))) / 255.0,
    ]
    return [(np.clip(o, 0, 1) * 255).round().astype(np.uint8) for o in outs]


def _write_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write_npy(value: float, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([value], dtype=np.float32))


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BAPPS-layout folder from real photographs cut into 64x64 patches with real distortions."""
    root = tmp_path_factory.mktemp("bapps_photo")
    rng = np.random.default_rng(1)
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]

    def patch() -> np.ndarray:
        img = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, img.shape[0] - 64), rng.integers(0, img.shape[1] - 64)
        return np.ascontiguousarray(img[y:y + 64, x:x + 64])

    for split, subsets, n in (("train", bapps.TRAIN_SUBSETS, 4), ("val", bapps.VAL_SUBSETS, 6)):
        for s in subsets:
            for i in range(n):
                ref = patch()
                dist = _distortions(ref, rng)
                a, b = rng.choice(len(dist), 2, replace=False)
                d = root / "2afc" / split / s
                _write_png(ref, d / "ref" / f"{i:06d}.png")
                _write_png(dist[a], d / "p0" / f"{i:06d}.png")
                _write_png(dist[b], d / "p1" / f"{i:06d}.png")
                _write_npy(rng.integers(0, 6) / 5, d / "judge" / f"{i:06d}.npy")
    for s in bapps.JND_SUBSETS:
        for i in range(8):
            ref = patch()
            other = ref if i % 4 == 0 else _distortions(ref, rng)[rng.integers(4)]
            d = root / "jnd" / "val" / s
            _write_png(ref, d / "p0" / f"{i:06d}.png")
            _write_png(other, d / "p1" / f"{i:06d}.png")
            _write_npy(rng.integers(0, 4) / 3 if i else 1.0, d / "same" / f"{i:06d}.npy")
    return root


def _read(path: Path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _reference_batches(d: Path, images: tuple[str, ...], label: str) -> list[dict[str, torch.Tensor]]:
    stems = sorted(p.stem for p in (d / label).glob("*.npy"))
    batch = {k: torch.stack([_read(d / k / f"{s}.png") for s in stems]) for k in images}
    batch[label] = torch.tensor(np.stack([np.load(d / label / f"{s}.npy") for s in stems]))
    return [{k: v[i:i + 4] for k, v in batch.items()} for i in range(0, len(stems), 4)]


def test_trial_matches_lpips_package_on_photographs(photo_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    ref_model = lpips.LPIPS(net="alex", pnet_rand=True, lpips=False, verbose=False).eval()
    # lpips' slices keep torchvision's `features` child indices: slice2.3.weight -> features.3.weight
    with torch.device("meta"):  # only the key names and shapes are needed; the classifier is never used
        shapes = torchvision.models.alexnet().state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    for k, v in ref_model.net.state_dict().items():
        state["features." + k.split(".", 1)[1]] = v.clone()
    weights = tmp_path / "alex_from_lpips.pt"
    torch.save(state, weights)

    config = TrialConfig(task="similarity", network="alexnet", points=ALEX_RELUS, weights=str(weights),
                         budget="smoke", params={"max_eval_pairs": 0}, data_root=str(photo_root), device="cpu")
    rep = LocalReporter(tmp_path / "out", echo=False)
    got = run_trial(config, rep)

    def func(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return ref_model(a, b, normalize=True).view(-1)

    expected: dict[str, float] = {}
    for s in bapps.VAL_SUBSETS:
        batches = _reference_batches(photo_root / "2afc" / "val" / s, ("ref", "p0", "p1"), "judge")
        expected[f"2afc/{s}"] = lpips.trainer.score_2afc_dataset(FakeLoader(batches), func)[0]
    expected["2afc/mean"] = float(np.mean([expected[f"2afc/{s}"] for s in bapps.VAL_SUBSETS]))
    pooled: list[dict[str, torch.Tensor]] = []
    for s in bapps.JND_SUBSETS:
        batches = _reference_batches(photo_root / "jnd" / "val" / s, ("p0", "p1"), "same")
        expected[f"jnd/{s}"] = lpips.trainer.score_jnd_dataset(FakeLoader(batches), func)[0]
        pooled += batches
    expected["jnd/pooled"] = lpips.trainer.score_jnd_dataset(FakeLoader(pooled), func)[0]

    assert set(got) == set(similarity.METRICS)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    # the scores can only agree by chance on a few triplets; the distances themselves must agree too
    dist, _ = similarity.build_metric(prepare(config))
    ds = bapps.open_subset(photo_root, "2afc", "val", "cnn")
    d0, d1, _ = similarity.collect_2afc(dist, DataLoader(ds, batch_size=4), torch.device("cpu"))
    batches = _reference_batches(photo_root / "2afc" / "val" / "cnn", ("ref", "p0", "p1"), "judge")
    np.testing.assert_allclose(d0, torch.cat([func(b["ref"], b["p0"]) for b in batches]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(d1, torch.cat([func(b["ref"], b["p1"]) for b in batches]).numpy(), rtol=1e-5)
    last = rep.history[-1]
    assert last["epoch"] == 1 and all(k in last for k in similarity.METRICS)
    assert (tmp_path / "out" / "artifacts" / "samples" / "triplets.png").is_file()


# -------------------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bapps.synthesize(tmp_path_factory.mktemp("bapps_syn"), seed=0, size="smoke")


def test_synthetic_layout(synth_root: Path) -> None:
    marker = json.loads((synth_root / SYNTHETIC_MARKER).read_text())
    assert marker["seed"] == 0 and marker["size"] == "smoke"
    for split, subsets in (("train", bapps.TRAIN_SUBSETS), ("val", bapps.VAL_SUBSETS)):
        for s in subsets:
            ds = bapps.open_subset(synth_root, "2afc", split, s)
            item, d = ds[0], synth_root / "2afc" / split / s
            judge = np.load(d / "judge" / "000000.npy")
            assert judge.shape == (1,) and float(item["judge"]) == float(judge[0])  # the file's value, as read
            for k in ("ref", "p0", "p1"):  # the images as PIL decodes them, / 255
                pil = np.asarray(Image.open(d / k / "000000.png").convert("RGB"), np.float32) / 255
                np.testing.assert_array_equal(item[k].permute(1, 2, 0).numpy(), pil)
    for s in bapps.JND_SUBSETS:
        assert len(bapps.open_subset(synth_root, "jnd", "val", s)) == bapps.SYNTH_SIZES["smoke"][2]


def test_synthetic_separates_sensible_from_random(synth_root: Path) -> None:
    scores_l2, scores_rand = [], []
    rng = np.random.default_rng(0)
    pairs = [("train", s) for s in bapps.TRAIN_SUBSETS] + [("val", s) for s in bapps.VAL_SUBSETS]
    for split, s in pairs:
        ds = bapps.open_subset(synth_root, "2afc", split, s)
        items = [ds[i] for i in range(len(ds))]
        ref, p0, p1 = (torch.stack([it[k] for it in items]) for k in ("ref", "p0", "p1"))
        j = ds.labels.numpy()
        l2 = lambda a, b: ((a - b) ** 2).flatten(1).mean(1).numpy()  # noqa: E731
        scores_l2.append(sc.twoafc_scores(l2(ref, p0), l2(ref, p1), j))
        scores_rand.append(sc.twoafc_scores(rng.random(len(j)), rng.random(len(j)), j))
    assert np.mean(np.concatenate(scores_l2)) > 0.7
    assert abs(np.mean(np.concatenate(scores_rand)) - 0.5) < 0.08


def test_baseline_on_synthetic_is_above_chance(synth_root: Path, tmp_path: Path) -> None:
    got = run_trial(TrialConfig(task="similarity", network="squeezenet1_1", points=("features.3",), weights="random",
                                budget="smoke", params={"max_eval_pairs": 0}, data_root=str(synth_root)),
                    LocalReporter(tmp_path / "o", echo=False))
    assert got["2afc/mean"] > 0.65 and got["jnd/pooled"] > 0.6


# ------------------------------------------------------------------------------- training, resume


def _trial(root: Path, variant: str, epochs: int, **params: object) -> TrialConfig:
    # squeezenet: the cheapest network to construct (trials build the whole classifier before pruning)
    return TrialConfig(task="similarity", network="squeezenet1_1", points=("features.3",), weights="random",
                       variant=variant, budget="smoke", params={"epochs": epochs, **params}, data_root=str(root),
                       device="cpu")


@pytest.mark.parametrize("variant", ["lin", "tune", "scratch"])
def test_variants_train_and_resume(synth_root: Path, tmp_path: Path, variant: str) -> None:
    params = {"lr": 1e-2, "max_eval_pairs": 4}  # a large lr so that one smoke epoch visibly moves the weights
    out = tmp_path / "out"
    run_trial(_trial(synth_root, variant, 1, **params), LocalReporter(out, echo=False))
    state1 = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state1["epoch"] == 1 and ("trunk" in state1) == (variant != "lin")
    rep = LocalReporter(out, echo=False)
    final = run_trial(_trial(synth_root, variant, 2, **params), rep)
    assert [h["epoch"] for h in rep.history] == [2]
    assert rep.info["resumed_from_epoch"] == 1
    last = rep.history[-1]
    assert {"train/loss", "train/2afc", *similarity.METRICS} <= set(last)
    assert all(last[k] == final[k] for k in similarity.METRICS)
    state2 = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state2["epoch"] == 2
    # training moved the head and kept lin weights non-negative
    assert any(not torch.equal(state1["head"][k], state2["head"][k]) for k in state1["head"])
    assert all((w >= 0).all() for w in state2["lin"].values())
    if variant != "lin":
        assert any(not torch.equal(state1["trunk"][k], state2["trunk"][k]) for k in state1["trunk"])
        return
    # a killed-and-resumed trial ends where an uninterrupted one does (same data order, restored Adam state)
    straight = LocalReporter(tmp_path / "straight", echo=False)
    run_trial(_trial(synth_root, variant, 2, **params), straight)
    state_s = torch.load(tmp_path / "straight" / "checkpoint" / "state.pt", weights_only=True)
    for k in state_s["lin"]:
        torch.testing.assert_close(state_s["lin"][k], state2["lin"][k])
    assert straight.history[-1]["train/loss"] == pytest.approx(last["train/loss"], rel=1e-5)
    # and a checkpoint of another trial is refused with a clear message, not a state-dict traceback
    other = _trial(synth_root, variant, 3, **params).replace(points=("features.1",))
    with pytest.raises(UserError, match="belongs to another trial"):
        run_trial(other, LocalReporter(out, echo=False))


def test_scratch_ignores_imagenet_weights_setting(synth_root: Path) -> None:
    from trainables.trial import prepare

    config = prepare(_trial(synth_root, "scratch", 1).replace(weights="imagenet"))  # must not try to download
    assert config.weights == "random"  # pinned in the config, so key, params and provenance agree
    dist, trunk = similarity.build_metric(config)
    assert trunk and all(p.requires_grad for p in dist.net.body.parameters())
    base, _ = similarity.build_metric(_trial(synth_root, "baseline", 1))
    assert not any(p.requires_grad for p in base.net.body.parameters()) and len(base.lin) == 0


# -------------------------------------------------------------------------------------- bad data


def _copy_subset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_data_names_the_file(synth_root: Path, tmp_path: Path) -> None:
    d = _copy_subset(synth_root / "2afc" / "val" / "cnn", tmp_path / "cnn")
    (d / "p1" / "000003.png").unlink()
    with pytest.raises(DataError, match=r"p1/000003\.png"):
        bapps.BappsSubset(d, "2afc")

    d = _copy_subset(synth_root / "2afc" / "val" / "cnn", tmp_path / "cnn2")
    np.save(d / "judge" / "000002.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match=r"judge/000002\.npy.*shape"):
        bapps.BappsSubset(d, "2afc")

    d = _copy_subset(synth_root / "2afc" / "val" / "cnn", tmp_path / "cnn3")
    (d / "judge" / "000001.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"judge/000001\.npy"):
        bapps.BappsSubset(d, "2afc")

    d = _copy_subset(synth_root / "2afc" / "val" / "cnn", tmp_path / "cnn4")
    (d / "ref" / "000004.png").write_bytes(b"\x89PNG truncated")
    ds = bapps.BappsSubset(d, "2afc")
    with pytest.raises(DataError, match=r"ref/000004\.png"):
        ds[4]

    with pytest.raises(DataError, match=r"nowhere"):
        bapps.open_subset(tmp_path / "nowhere", "jnd", "val", "cnn")


def test_trial_reports_missing_subset(synth_root: Path, tmp_path: Path) -> None:
    root = _copy_subset(synth_root, tmp_path / "root")
    import shutil

    shutil.rmtree(root / "2afc" / "val" / "deblur" / "p0")
    with pytest.raises(DataError, match=r"deblur/p0"):
        run_trial(_trial(root, "baseline", 1), LocalReporter(tmp_path / "o", echo=False))


def test_images_resized_only_when_needed(synth_root: Path, tmp_path: Path) -> None:
    d = _copy_subset(synth_root / "2afc" / "val" / "color", tmp_path / "color")
    original = bapps.BappsSubset(d, "2afc")[0]["p0"]
    Image.open(d / "p0" / "000000.png").resize((32, 32)).save(d / "p0" / "000000.png")
    item = bapps.BappsSubset(d, "2afc", image_size=64)[0]
    assert item["p0"].shape == (3, 64, 64)
    torch.testing.assert_close(item["ref"], torch.from_numpy(np.asarray(Image.open(d / "ref" / "000000.png"),
                                                                         np.float32) / 255).permute(2, 0, 1))
    assert not torch.equal(item["p0"], original)  # it really was re-read from the 32x32 file


def test_download_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def offline(url: str, dest: Path, checksum: str | None = None) -> Path:
        seen.append(url)
        raise DataError(f"cannot download {url}; this machine may be offline")

    monkeypatch.setattr(bapps, "fetch", offline)
    with pytest.raises(DataError, match="offline"):
        bapps.download(tmp_path)
    assert seen[0].startswith("https://people.eecs.berkeley.edu/~rich.zhang/projects/2018_perceptual/dataset/")


def test_trained_trunk_keeps_its_batchnorms(tmp_path: Path) -> None:
    """Folding BN into convolutions is for frozen trunks: `tune` trains the trunk as torchvision built it."""
    def bns(variant: str) -> int:
        cfg = TrialConfig(task="similarity", network="resnet18", points=("layer1",), weights="random",
                          variant=variant, budget="smoke", params={}, data_root=str(tmp_path), device="cpu")
        dist, _ = similarity.build_metric(cfg)
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in dist.net.body.modules())

    # torchvision's resnet18 up to layer1: bn1 + 2 BasicBlocks x 2 BatchNorms = 5, all kept for training
    tv = torchvision.models.resnet18(weights=None)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in (tv.bn1, *tv.layer1.modules())) == 5
    assert bns("tune") == 5 and bns("lin") == 0
