"""Every family's points in (B, C, H, W) form, against torchvision's own feature extractor.

The reference is `create_feature_extractor` on the unmodified model with the same seeded weights and
seeded, non-trivial BatchNorm statistics; the layout rule is written here again, independently of
`trainables.feature_layout` (a permute for Swin, class-token slicing and a reshape for ViT), and the
distances are the `lpips` package's own normalisation and spatial mean, and a plain mean squared error.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
import torchvision
from _reference import assert_matches_reference, seed_batchnorms
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

from trainables import feature_layout as fl
from trainables import loss_networks as ln
from trainables.distances import lpips_point, mse_point

#: One network per family the paper's test does not cover: input side, three nodes (early, middle, last
#: feature stage) and how the network lays them out (the test's own knowledge of torchvision's code).
FAMILIES = {
    "convnext_tiny": (64, ("features.0", "features.3", "features.7"), "NCHW"),
    "swin_t": (64, ("features.0", "features.3", "features.7"), "NHWC"),
    "swin_v2_t": (64, ("features.1", "features.5", "features.7"), "NHWC"),
    "vit_b_32": (224, ("encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_5",
                       "encoder.layers.encoder_layer_11"), "tokens"),
    "maxvit_t": (224, ("stem", "blocks.1", "blocks.3"), "NCHW"),
    "regnet_y_400mf": (64, ("stem", "trunk_output.block2", "trunk_output.block4"), "NCHW"),
    "efficientnet_v2_s": (64, ("features.0", "features.4", "features.6"), "NCHW"),
    "mobilenet_v3_large": (64, ("features.1", "features.6", "features.15"), "NCHW"),
    "mnasnet0_5": (64, ("layers.3", "layers.10", "layers.13"), "NCHW"),
    "shufflenet_v2_x0_5": (64, ("conv1", "stage3", "stage4"), "NCHW"),
}


def reference_nchw(raw: torch.Tensor, layout: str, grid: int) -> torch.Tensor:
    """The test's own layout rule: Swin's (B, H, W, C) permuted; ViT's (B, 1 + grid^2, C) without its class
    token (index 0, torchvision's `torch.cat([class_token, x], dim=1)`), reshaped row-major to the grid."""
    if layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    if layout == "tokens":
        b, t, c = raw.shape
        assert t == 1 + grid * grid
        return raw[:, 1:, :].reshape(b, grid, grid, c).permute(0, 3, 1, 2)
    return raw


def reference_distances(f0: torch.Tensor, f1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lpips (the package's normalize_tensor + spatial_average, channel sum) and mse, per image."""
    d = ((lpips.normalize_tensor(f0) - lpips.normalize_tensor(f1)) ** 2).sum(dim=1, keepdim=True)
    return lpips.spatial_average(d).flatten(), ((f0 - f1) ** 2).flatten(1).mean(dim=1)


def photo_pair(photos: dict[str, Path], size: int) -> torch.Tensor:
    """Two real photographs at size x size in [0, 1]."""
    arrays = [np.asarray(Image.open(photos[k]).convert("RGB").resize((size, size), Image.BICUBIC))
              for k in ("astronaut", "chelsea")]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@dataclass
class Family:
    name: str
    nodes: tuple[str, ...]
    layout: str
    x: torch.Tensor
    weights: str
    reference: dict[str, torch.Tensor]
    batchnorms: int


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, photos: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Family]:
    """Built once per family for both tests (pytest keeps one parameter alive at a time)."""
    name = request.param
    size, nodes, layout = FAMILIES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(21)
        model = torchvision.models.get_model(name, weights=None).eval()
        with torch.no_grad():  # ConvNeXt's layer scale starts at 1e-6: make every block's branch count
            for pname, p in model.named_parameters():
                if "layer_scale" in pname:
                    p.uniform_(0.5, 1.5)
    x = photo_pair(photos, size)
    seed_batchnorms(model, x, nodes, seed=22)
    extractor = create_feature_extractor(model, return_nodes=list(nodes)).eval()
    with torch.no_grad():
        raw = extractor(x)
    grid = size // 32 if layout == "tokens" else 0
    reference = {p: reference_nchw(raw[p], layout, grid) for p in nodes}
    path = tmp_path_factory.mktemp(name) / "weights.pth"
    torch.save(model.state_dict(), path)
    del model, extractor
    yield Family(name, nodes, layout, x, str(path), reference, batchnorms(create_feature_extractor(
        ln._meta_model(name), return_nodes=list(nodes))))
    path.unlink()


def batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def assert_family_matches(family: Family, fold: bool) -> None:
    net = ln.build_loss_network(family.name, family.nodes, weights=family.weights, normalisation="none",
                                fold_batchnorm=fold)
    if fold and family.batchnorms:
        assert batchnorms(net.body) < family.batchnorms, "nothing was folded"
    with torch.no_grad():
        ours = net(family.x)
    assert_matches_reference(ours, family.reference, family.name)
    for p in family.nodes:
        ref_lpips, ref_mse = reference_distances(family.reference[p][:1], family.reference[p][1:])
        torch.testing.assert_close(lpips_point(ours[p][:1], ours[p][1:]), ref_lpips, rtol=1e-4, atol=0,
                                   msg=f"{family.name} {p} lpips")
        torch.testing.assert_close(mse_point(ours[p][:1], ours[p][1:]), ref_mse, rtol=1e-4, atol=0,
                                   msg=f"{family.name} {p} mse")
    assert {ln.point_layout(family.name, p).kind for p in family.nodes} == {family.layout}


def test_every_family_gives_torchvisions_maps_and_distances(family: Family) -> None:
    """Each family's early, middle and last feature stage, built (BatchNorm folded, the default) from a
    weights file, equals torchvision's own extractor with the layout undone by hand, and so do the lpips
    and mse distances between two real photographs (1e-4 relative)."""
    assert_family_matches(family, fold=True)


def test_every_family_unfolded(family: Family) -> None:
    """The same with BatchNorm kept (a trunk that will be trained), where the family has BatchNorm and the
    network takes a small input (MaxViT runs at 224 px only: its folded build above is the check)."""
    if not family.batchnorms or FAMILIES[family.name][0] > 64:
        pytest.skip(f"{family.name}: no BatchNorm, or too large an input for a second build")
    assert_family_matches(family, fold=False)


# ------------------------------------------------------------------ the layout rule, case by case


def test_layout_is_read_from_what_follows_the_image_not_from_the_shape() -> None:
    """Swin's patch embedding at 384 px is (B, 96, 96, 96) and ResNet's stem at 128 px is (B, 64, 64, 64):
    the shapes say nothing, so any rule that reads them must get one wrong. Traced at the two sizes, the
    first is NHWC and the second NCHW."""
    swin = ln._meta_model("swin_t")
    resnet = ln._meta_model("resnet18")
    at_384 = fl.analyse(swin, swin, 384)
    at_128 = fl.analyse(resnet, resnet, 128)
    assert fl.trace(swin, 384, 1).values["features.0.2"].shape == (1, 96, 96, 96)
    assert fl.trace(resnet, 128, 1).values["relu"].shape == (1, 64, 64, 64)
    assert at_384.layouts["features.0.2"].kind == "NHWC"
    assert at_128.layouts["relu"].kind == "NCHW"


def test_constant_size_maps_take_their_layout_from_the_producing_ops() -> None:
    """Adaptive pools give maps that do not follow the image: VGG's 7x7 `avgpool` is NCHW as its input;
    ConvNeXt's LayerNorm2d permutes a 1x1 map to channels-last and back."""
    assert ln.point_layout("vgg16", "avgpool").kind == "NCHW"
    assert ln.point_layout("convnext_tiny", "classifier.0.permute").kind == "NHWC"
    assert ln.point_layout("convnext_tiny", "classifier.0.layer_norm").kind == "NHWC"
    assert ln.point_layout("convnext_tiny", "classifier.0.permute_1").kind == "NCHW"
    assert ln.point_layout("maxvit_t", "classifier.2").kind == "vector"
    net = ln.build_loss_network("convnext_tiny", ["classifier.0.permute", "classifier.0.permute_1"],
                                weights="random")
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert out["classifier.0.permute"].shape == out["classifier.0.permute_1"].shape == (2, 768, 1, 1)


def test_vit_tokens_drop_the_class_token_and_lie_on_the_patch_grid() -> None:
    layouts = ln.point_nodes("vit_b_16")
    assert layouts["encoder.layers.encoder_layer_5.add_1"] == fl.FeatureLayout("tokens", lead=1, stride=16)
    assert layouts["encoder.layers.encoder_layer_5.add_1"].describe(224) == "tokens:1+14x14"
    assert layouts["permute"] == fl.FeatureLayout("tokens", stride=16)  # patches before the class token joins
    assert layouts["reshape"] == fl.FeatureLayout("NCL", stride=16)
    assert layouts["getitem_5"].kind == "vector"  # the class token alone, after the encoder
    assert ln.point_layout("vit_b_16", "encoder.layers.encoder_layer_5").describe(384) == "tokens:1+24x24"


class RegisterViT(torch.nn.Module):
    """A toy token network: a class token before the 4x4-px patches and 3 register tokens after them."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.registers = torch.nn.Parameter(torch.randn(1, 3, 8))
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch(x).flatten(2).transpose(1, 2)
        n = x.shape[0]
        tokens = torch.cat([self.cls.expand(n, -1, -1), p, self.registers.expand(n, -1, -1)], dim=1)
        return self.mix(tokens)


def test_extra_tokens_are_found_where_they_sit() -> None:
    """T = extra + grid: 1 class token before and 3 registers after a 6x6 grid are told from the two
    traces and the `cat` that joined them; the map is the patch tokens alone, row-major on the grid."""
    torch.manual_seed(0)
    toy = RegisterViT().eval()
    shapes_only = copy.deepcopy(toy).to("meta")
    layout = fl.analyse(shapes_only, shapes_only, 24).layouts["mix"]
    assert (layout.kind, layout.lead, layout.trail, layout.stride) == ("tokens", 1, 3, 4)
    assert layout.describe(24) == "tokens:1+6x6+3"
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        tokens = toy(x)
        patches = toy.mix(toy.patch(x).permute(0, 2, 3, 1))  # (B, 6, 6, 8): each patch's token, in place
    torch.testing.assert_close(layout.to_nchw(tokens, 24, 24), patches.permute(0, 3, 1, 2))


@pytest.mark.parametrize("name, node, reason", [
    ("vit_b_16", "x", "the input image"),
    ("vit_b_16", "getitem_2", "a size"),
    ("vit_b_16", "_assert", "nothing"),
    ("vit_b_16", "encoder.layers.encoder_layer_0.self_attention", "a tuple"),
    ("swin_t", "features.1.0.attn.features_1_0_attn_relative_position_bias_table", "a weight"),
    ("maxvit_t", "blocks.0.layers.0.layers.window_attention.partition_swap", "not a feature map"),
    ("shufflenet_v2_x0_5", "stage2.0.view", "not a feature map"),
])
def test_nodes_that_cannot_be_points_get_one_line(name: str, node: str, reason: str, capsys) -> None:
    from study.cli import main

    with pytest.raises(ln.LossNetworkError, match=f"cannot be a point: .*{reason}"):
        ln.check_points(name, (node,))
    assert main(["networks", "--nodes", name]) == 0
    listed = capsys.readouterr().out.split()
    assert node not in listed


def test_networks_nodes_lists_points_with_layouts_and_the_rest_with_reasons(capsys) -> None:
    import json

    from study.cli import main

    assert main(["networks", "--nodes", "swin_t", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    points = {r["node"]: r["layout"] for r in listing["points"]}
    refused = {r["node"]: r["why"] for r in listing["not_points"]}
    assert points["features.0.2"] == "NHWC" and points["features.0.0"] == "NCHW" and points["flatten"] == "vector"
    assert "x" in refused and not set(points) & set(refused)
    assert set(points) | set(refused) == set(ln.graph_nodes("swin_t"))
    assert main(["networks", "--nodes", "vit_b_16"]) == 0
    text = capsys.readouterr()
    rows = dict(line.split() for line in text.out.splitlines()[1:])
    assert rows["encoder.ln"] == "tokens:1+14x14" and "getitem_2" not in rows
    assert "cannot be points" in text.err
