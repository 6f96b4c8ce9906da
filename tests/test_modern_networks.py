"""The modern networks as loss networks: random weights, fixed input sizes and `resize`, `dpl distance` on
Swin and ViT end to end, the extended table in `dpl networks`, and the recorded `feature_layout`."""
from __future__ import annotations

import json
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

from study.cli import main
from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.distances import feature_channels
from trainables.network_registry import resolve_points


@pytest.mark.parametrize("name, points", [
    ("regnet_y_400mf", ("stem", "trunk_output.block3")),  # built on meta: "Cannot copy out of meta tensor" before
    ("swin_t", ("features.1",)),  # a buffer computed in __init__ (relative position index)
    ("convnext_tiny", ("features.3",)),  # LayerScale at 1e-6, not a plain normal draw
])
def test_random_weights_of_modern_families_are_torchvisions_own_seeded_init(name: str, points: tuple) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        reference = create_feature_extractor(torchvision.models.get_model(name).eval(), return_nodes=list(points))
    net = ln.build_loss_network(name, points, weights="random", seed=5, normalisation="none", fold_batchnorm=False)
    with torch.no_grad():
        expected, got = reference(x), net(x)
    for p in points:
        raw = expected[p].permute(0, 3, 1, 2) if name == "swin_t" else expected[p]
        torch.testing.assert_close(got[p], raw, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ fixed sizes and `resize`


def test_fixed_size_comes_from_the_weight_set_and_is_checked_before_building() -> None:
    """ViT takes the size its weights were trained at (torchvision's metadata, offline); any other size is
    one line naming the allowed one and the fix, before anything is built."""
    assert ln.fixed_input_size("vit_b_16", "IMAGENET1K_V1") == 224
    assert ln.fixed_input_size("vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == 384
    assert ln.fixed_input_size("vit_h_14", "IMAGENET1K_SWAG_E2E_V1") == 518
    assert ln.fixed_input_size("maxvit_t", "random") == 224
    assert ln.fixed_input_size("swin_t", "random") is None and ln.fixed_input_size("resnet50", "imagenet") is None
    assert ln.network_input_size("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 64, "auto") == 384
    assert ln.network_input_size("resnet50", "imagenet", 64, "auto") == 64
    assert ln.network_input_size("resnet50", "imagenet", 64, "96") == 96
    with pytest.raises(ln.LossNetworkError, match=r"maxvit_t with weights random takes 224x224 px input only, "
                                                  r"not 64x64: pass --resize auto"):
        ln.network_input_size("maxvit_t", "random", 64)
    with pytest.raises(ln.LossNetworkError, match="takes 224x224 px input only, not 96x96"):
        ln.build_loss_network("vit_b_32", ["encoder.ln"], weights="random", resize="96")
    with pytest.raises(ConfigError, match="resize: 'big' is not one of off | auto"):
        TrialConfig(task="similarity", network="vit_b_16", points=("p1",), resize="big")


def test_resize_auto_equals_resizing_the_images_first(tmp_path: Path) -> None:
    """`resize: auto` feeds a 64 px input to ViT as the same images resized to 224 px (bilinear,
    antialiased) would be; it is a recorded setting, so it changes the trial key, and `off` does not."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    big = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    auto = ln.build_loss_network("vit_b_32", ["p2"], weights="random", resize="auto")
    plain = ln.build_loss_network("vit_b_32", ["p2"], weights="random")
    with torch.no_grad():
        torch.testing.assert_close(auto(x)["encoder.layers.encoder_layer_5"], plain(big)["encoder.layers.encoder_layer_5"])
        with pytest.raises(ln.LossNetworkError, match="224x224 px input only, not 64x64"):
            plain(x)
    assert feature_channels(plain) == {"encoder.layers.encoder_layer_5": 768}  # lin layers: probed at 224 px
    base = TrialConfig(task="superres", network="vgg16", points=("features.22",))
    assert trial_key(base.replace(resize="auto")) != trial_key(base) == trial_key(base.replace(resize="off"))
    assert base.replace(resize=224).resize == "224"


def test_trial_keys_from_before_the_resize_setting_are_unchanged() -> None:
    """Keys computed at commit fe4aaf0, before `resize` existed: a config with the default keeps its key, so
    every existing study resumes instead of running again."""
    assert trial_key(TrialConfig(task="superres", network="vgg16", points=("features.22",)),
                     synthetic=False) == "f8dba5117c2534f1"
    assert trial_key(TrialConfig(task="similarity", network="resnet50", points=("layer4",), dataset="bapps",
                                 variant="lin", seed=3, weights="IMAGENET1K_V2", params={"lr": 0.001}, resize="off"),
                     synthetic=True) == "32316b3071443d87"


def test_a_vit_state_dict_trained_at_another_size_is_built_for_it(tmp_path: Path) -> None:
    """A ViT file saved at 64 px (4 patches + class token) is built for 64 px, as torchvision builds its
    SWAG weights for 384/512/518 px."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_32(image_size=64).eval()
    torch.save(model.state_dict(), tmp_path / "vit64.pth")
    w = str(tmp_path / "vit64.pth")
    assert ln.fixed_input_size("vit_b_32", w) == 64
    net = ln.build_loss_network("vit_b_32", ["encoder.layers.encoder_layer_1"], weights=w, normalisation="none")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = create_feature_extractor(model, ["encoder.layers.encoder_layer_1"])(x)["encoder.layers.encoder_layer_1"]
        got = net(x)["encoder.layers.encoder_layer_1"]
    torch.testing.assert_close(got, ref[:, 1:].reshape(1, 2, 2, 768).permute(0, 3, 1, 2))


# -------------------------------------------------------------------------- dpl distance, end to end


@pytest.fixture(scope="module")
def photo_pair(photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real photographs at 224 px (ViT's size, and Swin's)."""
    out = tmp_path_factory.mktemp("pair")
    paths = []
    for name in ("astronaut", "coffee"):
        paths.append(out / f"{name}.png")
        Image.open(photos[name]).convert("RGB").resize((224, 224), Image.BICUBIC).save(paths[-1])
    return paths[0], paths[1]


def load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255


@pytest.mark.parametrize("name, point, undo", [
    ("swin_t", "features.5", lambda f: f.permute(0, 3, 1, 2)),  # (B, 14, 14, 384) at 224 px
    ("vit_b_32", "encoder.layers.encoder_layer_5", lambda f: f[:, 1:].reshape(1, 7, 7, 768).permute(0, 3, 1, 2)),
])
def test_dpl_distance_on_swin_and_vit_equals_lpips_with_channels_on_dim_1(
        name: str, point: str, undo, photo_pair: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """The issue's case: `dpl distance` with a seeded weights file on two 224 px photographs gives the lpips
    distance of torchvision's own maps with the channels put on dim 1 by hand (before: 1.8x off for Swin,
    a traceback for ViT)."""
    torch.manual_seed(4)
    model = torchvision.models.get_model(name).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    mean = torch.tensor(ln.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ln.IMAGENET_STD).view(1, 3, 1, 1)
    extractor = create_feature_extractor(model, [point])
    with torch.no_grad():
        f0, f1 = (undo(extractor((load(p) - mean) / std)[point]) for p in photo_pair)
    expected = float(lpips.spatial_average(((lpips.normalize_tensor(f0) - lpips.normalize_tensor(f1)) ** 2)
                                           .sum(1, keepdim=True)))
    assert main(["distance", str(photo_pair[0]), str(photo_pair[1]), "--network", name, "--layer", point,
                 "--weights", str(tmp_path / "w.pth"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["points"][point] == pytest.approx(expected, rel=1e-4)


def test_dpl_distance_refuses_a_vit_at_another_size_in_one_line(photo_pair: tuple[Path, Path], capsys) -> None:
    code = main(["distance", str(photo_pair[0]), str(photo_pair[1]), "--network", "vit_b_32", "--layer", "p1",
                 "--weights", "random", "--size", "96"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("dpl: error: vit_b_32 with weights random takes 224x224 px input only")
    assert "Traceback" not in "\n".join(err)
    assert main(["distance", str(photo_pair[0]), str(photo_pair[1]), "--network", "vit_b_32", "--layer", "p1",
                 "--weights", "random", "--size", "96", "--resize", "auto"]) == 0


# ------------------------------------------------------------------------- the extended table, recorded


def test_networks_lists_the_extended_set_with_layouts_costs_and_every_weight_sets_top1(capsys) -> None:
    assert main(["networks", "--network", "extended", "--json", "--size", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["network"] for r in rows} == set(ln.EXTENDED) and len(rows) == 4 * len(ln.EXTENDED)
    for name, e in ln.EXTENDED.items():
        mine = [r for r in rows if r["network"] == name]
        assert [r["point"] for r in mine] == list(e.points) and [r["position"] for r in mine] == [1, 2, 3, 4]
        depths = [r["relative_depth"] for r in mine]
        assert depths == sorted(depths) and depths[-1] > 0.85, name  # spread, ending at the last stage
        flops, params = [r["gflops_to_point"] for r in mine], [r["params_to_point"] for r in mine]
        assert 0 < flops[0] < flops[-1] and 0 < params[0] < params[-1], name  # pruned after each point
        assert all(r["family"] == e.family for r in mine)
        assert all(r["input_size"] == (224 if name.startswith(("vit", "maxvit")) else 64) for r in mine)
        assert all(len(r["feature_shape"]) == 3 for r in mine)
        top1 = {w.name: w.meta["_metrics"]["ImageNet-1K"]["acc@1"] for w in torchvision.models.get_model_weights(name)}
        assert mine[0]["imagenet_top1"] == pytest.approx(top1)
    layout = {(r["network"], r["point"]): r["feature_layout"] for r in rows}
    assert layout[("swin_v2_b", "features.7")] == "NHWC" and layout[("convnext_base", "features.7")] == "NCHW"
    assert layout[("vit_l_16", "encoder.layers.encoder_layer_23")] == "tokens:1+14x14"
    assert layout[("vit_b_32", "encoder.layers.encoder_layer_2")] == "tokens:1+7x7"
    swin = {r["point"]: r["feature_shape"] for r in rows if r["network"] == "swin_v2_b"}
    assert swin["features.7"] == [1024, 2, 2]  # channels first, whatever the network's own layout
    assert ln.imagenet_top1("resnet50") == pytest.approx({"IMAGENET1K_V1": 76.13, "IMAGENET1K_V2": 80.858})


def test_vit_is_pruned_after_its_point() -> None:
    """torchvision's extractor keeps ViT's per-block shape asserts and with them every block; ours drops
    them, so p1 (block 3 of 12) holds the patch embedding and 3 blocks, as its metadata says."""
    (p1,) = resolve_points("vit_b_32", ["p1"])
    assert p1 == "encoder.layers.encoder_layer_2"
    meta = ln.point_metadata("vit_b_32", p1, 224)
    net = ln.build_loss_network("vit_b_32", [p1], weights="random")
    vit = torchvision.models.vit_b_32()
    by_hand = sum(t.numel() for m in (vit.conv_proj, *list(vit.encoder.layers)[:3]) for t in m.parameters())
    by_hand += vit.class_token.numel() + vit.encoder.pos_embedding.numel()
    assert sum(t.numel() for t in net.parameters()) == meta["params_to_point"] == by_hand


def test_feature_layout_is_recorded_with_every_trial(tmp_path: Path) -> None:
    """`provenance` (logged as MLflow params by both reporters) carries `feature_layout` at the size the
    network sees: NHWC for Swin, the token grid for ViT on BAPPS's 64 px patches resized to 224."""
    from trainables.trial import prepare, provenance

    def info(network: str, point: str, **kw) -> dict:
        config = prepare(TrialConfig(task="similarity", network=network, points=(point,), weights="random", **kw))
        return provenance(config)

    swin = info("swin_t", "p4")
    assert swin["feature_layout"] == "NHWC" and swin["feature_shape"] == "768x2x2" and swin["input_size"] == 64
    vit = info("vit_b_16", "p2", resize="auto")
    assert vit["feature_layout"] == "tokens:1+14x14" and vit["input_size"] == 224 and vit["position"] == 2
    assert info("vgg16", "p1")["feature_layout"] == "NCHW"
    with pytest.raises(ln.LossNetworkError, match="takes 224x224 px input only, not 64x64"):
        info("vit_b_16", "p2")


def test_an_early_point_is_measured_at_a_size_the_whole_network_cannot_take() -> None:
    """At 32 px AlexNet's last pool gets a 1x1 map and fails; features.1 (11x11 conv, stride 4, pad 2 on 32
    px: (32 + 4 - 11) // 4 + 1 = 7) comes before it and is still measured; features.12 is one line."""
    side = (32 + 4 - 11) // 4 + 1
    assert ln.point_metadata("alexnet", "features.1", 32)["feature_shape"] == [64, side, side]
    with pytest.raises(ln.LossNetworkError, match=r"alexnet:features.12 cannot run at 32x32 px.*minimum"):
        ln.point_metadata("alexnet", "features.12", 32)
