"""The registry and extractor against torchvision itself (seeded weights, nothing downloaded)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torchvision

from _reference import assert_matches_reference, quiet_init, run_to_points, seed_batchnorms
from trainables import loss_networks as ln

# The reference implementation runs these children of these containers in order (reference_impl.md 1.1).
CONTAINER = {"alexnet": "features", "vgg11": "features", "vgg16": "features", "vgg16_bn": "features",
             "vgg19": "features", "densenet121": "features", "squeezenet1_1": "features",
             "efficientnet_b0": "features", "efficientnet_b7": "features"}


def sequential_children(model: torch.nn.Module, name: str, indices: tuple[int, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """The paper's extraction: run the ordered children and keep the outputs at `indices`."""
    container = getattr(model, CONTAINER[name]) if name in CONTAINER else model
    children = list(container.children())
    outs = []
    for i, child in enumerate(children[: max(indices) + 1]):
        x = child(x)
        if i in indices:
            outs.append(x)
    return outs


def test_registry_is_the_papers_table() -> None:
    assert len(ln.REGISTRY) == 14
    assert sum(len(e.points) for e in ln.REGISTRY.values()) == 56
    top1 = {n: ln.imagenet_top1(n)[ln.PAPER_WEIGHTS] for n in ln.REGISTRY}
    assert top1["alexnet"] == pytest.approx(56.522)
    assert top1["efficientnet_b7"] == pytest.approx(84.122)
    assert ln.imagenet_top1("resnet50")["IMAGENET1K_V2"] == pytest.approx(80.858)


# ------------------------------------------------------------- all 56 points, against torchvision itself


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny inputs: one thread is as fast, and on a busy 2-core machine two OpenMP threads waiting on each
    other make a small forward 10-30x slower (efficientnet_b7 at 32 px: 0.2 s vs 6 s, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def input_size(name: str) -> int:
    """The registry's minimum input size, but at least 32 px: resnet/efficientnet's minimum is 1 px, where
    every 3x3 convolution would only ever use its centre tap."""
    return max(ln.min_size(name), 32)


@dataclass
class Seeded:
    """One network with seeded weights and BatchNorms: torchvision's own outputs at the paper's points,
    and the same weights as a state-dict file for our builder."""

    name: str
    model: torch.nn.Module
    x: torch.Tensor
    reference: dict[str, torch.Tensor]
    weights: str
    unfolded: ln.LossNetwork


@pytest.fixture(scope="module", params=list(ln.REGISTRY))
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """Built once per network for all tests of this module (pytest keeps one parameter alive at a time)."""
    name = request.param
    points = ln.REGISTRY[name].points
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = torchvision.models.get_model(name, weights=None, **quiet_init(name)).eval()
    size = input_size(name)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(12))
    seed_batchnorms(model, x, points, seed=13)
    reference = run_to_points(model, points, x)
    path = tmp_path_factory.mktemp(name) / "weights.pth"
    torch.save(model.state_dict(), path)
    unfolded = ln.build_loss_network(name, "all", weights=str(path), normalisation="none", fold_batchnorm=False)
    yield Seeded(name, model, x, reference, str(path), unfolded)
    path.unlink()


@pytest.mark.parametrize("fold", [False, True], ids=["bn-kept", "bn-folded"])
def test_all_56_points_equal_torchvision_with_seeded_batchnorm(seeded: Seeded, fold: bool) -> None:
    """Our pruned FX extractor, with and without BatchNorm folding (torch.fx `fuse` for resnets, VGG-BN,
    DenseNet, GoogLeNet, Inception; the Conv2dNormActivation pass for EfficientNet), gives torchvision's own
    activations at every point."""
    if fold:
        net = ln.build_loss_network(seeded.name, "all", weights=seeded.weights, normalisation="none")
        if batchnorms(seeded.unfolded.body):
            assert batchnorms(net.body) < batchnorms(seeded.unfolded.body), "nothing was folded"
    else:
        net = seeded.unfolded
    assert net.points == ln.REGISTRY[seeded.name].points
    with torch.no_grad():
        ours = net(seeded.x)
    assert_matches_reference(ours, seeded.reference, f"{seeded.name} ({'folded' if fold else 'BN kept'})")


def test_points_are_the_reference_implementations_children(seeded: Seeded) -> None:
    """The registry's node names are the children the reference implementation runs in order
    (reference_impl.md 1.1), on the same seeded model (transform_input off, as torchvision's default)."""
    entry = ln.REGISTRY[seeded.name]
    assert getattr(seeded.model, "transform_input", False) is False
    with torch.no_grad():
        children = sequential_children(seeded.model, seeded.name, entry.reference_indices, seeded.x)
    for point, out in zip(entry.points, children):
        torch.testing.assert_close(out, seeded.reference[point], rtol=0, atol=0)


@pytest.mark.parametrize("name", ln.TRANSFORM_INPUT_NETWORKS)
def test_transform_input_difference_is_explicit(name: str, tmp_path) -> None:
    """The reference skips GoogLeNet/Inception's input re-scaling: `off` reproduces it, `on` does not."""
    entry = ln.REGISTRY[name]
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    reference = ln.build_classifier(name, "random", seed=5).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    w = str(tmp_path / "w.pth")
    with torch.no_grad():
        theirs = sequential_children(reference, name, entry.reference_indices, x)
        off = ln.build_loss_network(name, "all", w, "none", transform_input="off")(x)
        on = ln.build_loss_network(name, "all", w, "none", transform_input="on")(x)
    for point, expected in zip(entry.points, theirs):
        scale = max(1.0, expected.abs().max().item())  # channels_last float32 noise, as above
        torch.testing.assert_close(off[point], expected, rtol=1e-5, atol=1e-5 * scale)
        # random-init activations are tiny here, so compare relative to their scale
        assert (on[point] - expected).abs().max() > 1e-2 * expected.abs().max()
    assert ln.uses_transform_input(name, "imagenet", "auto") is True  # what torchvision does with its weights
    assert ln.uses_transform_input(name, "random", "auto") is False


def test_any_torchvision_model_and_module_prefix() -> None:
    net = ln.build_loss_network("resnet34", ["layer3", "layer1.0.relu"], weights="random")
    out = net(torch.rand(1, 3, 64, 64))
    assert out["layer3"].shape == (1, 256, 4, 4)
    assert out["layer1.0.relu"].shape[1] == 64


def test_graph_is_pruned_after_deepest_point() -> None:
    net = ln.build_loss_network("vgg16", ["features.3"], weights="random")
    modules = dict(net.body.named_modules())
    assert "features.3" in modules and "features.4" not in modules and "classifier.0" not in modules


def test_frozen_and_eval_mode_survives_parent_train() -> None:
    net = ln.build_loss_network("resnet18", ["layer1"], weights="random")
    parent = torch.nn.Sequential(net)
    parent.train()
    assert not any(p.requires_grad for p in net.parameters())
    assert not any(m.training for m in net.body.modules())
    train_net = ln.build_loss_network("resnet18", ["layer1"], weights="random", mode="train")
    torch.nn.Sequential(train_net).train()
    assert any(m.training for m in train_net.body.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_memory_format_auto_is_channels_last_only_where_safe() -> None:
    x = torch.rand(2, 3, 64, 64)
    fast = ln.build_loss_network("resnet18", ["layer1", "layer2"], weights="random")
    plain = ln.build_loss_network("resnet18", ["layer1", "layer2"], weights="random", memory_format="contiguous")
    assert fast.body.get_submodule("conv1").weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.body.get_submodule("conv1").weight.is_contiguous()
    with torch.no_grad():
        a, b = fast(x), plain(x)
    for p in a:
        torch.testing.assert_close(a[p], b[p], rtol=1e-5, atol=1e-5 * max(1.0, b[p].abs().max().item()))
    assert ln.uses_channels_last("resnet101") and ln.uses_channels_last("vgg13_bn")  # same families
    # ShuffleNet's channel shuffle `.view`s activations: auto keeps it NCHW, and it runs
    shuffle = ln.build_loss_network("shufflenet_v2_x0_5", ["stage2"], weights="random")
    assert not ln.uses_channels_last("shufflenet_v2_x0_5")
    assert shuffle(x)["stage2"].shape[1] == 48
    with pytest.raises(ln.LossNetworkError, match="memory format 'nhwc'"):
        ln.build_loss_network("resnet18", ["layer1"], weights="random", memory_format="nhwc")


def test_batchnorm_folded_only_for_a_frozen_eval_trunk(tmp_path) -> None:
    """Eval mode folds Conv->BN pairs (equal outputs at every point are checked against torchvision in
    test_all_56_points_equal_torchvision_with_seeded_batchnorm); train mode and a trunk to be trained keep them."""
    def bns(net: ln.LossNetwork) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.body.modules())

    assert bns(ln.build_loss_network("efficientnet_b0", "all", weights="random")) == 0  # inside leaf blocks too
    # resnet18 up to layer4 holds all 20 of its BatchNorms (bn1, 2 per basic block x 8, 3 downsample)
    assert bns(ln.build_loss_network("resnet18", "all", weights="random", mode="train")) == 20
    assert bns(ln.build_loss_network("resnet18", "all", weights="random", fold_batchnorm=False)) == 20
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial statistics, so that BN is far from the identity
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
        model.bn1.weight.uniform_(0.5, 2)
        model.bn1.bias.uniform_(-1, 1)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    w = str(tmp_path / "r18.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = ln.build_loss_network("resnet18", ["conv1", "bn1"], weights=w, fold_batchnorm=False)(x)
        folded = ln.build_loss_network("resnet18", ["bn1"], weights=w)
        assert bns(folded) == 0
        kept = ln.build_loss_network("resnet18", ["conv1", "bn1"], weights=w)
        assert bns(kept) == 1  # conv1 is itself a point: its output must stay the raw convolution
        got = {**kept(x), "folded bn1": folded(x)["bn1"]}
    for p, ref in (("conv1", "conv1"), ("bn1", "bn1"), ("folded bn1", "bn1")):
        expected = plain[ref]
        torch.testing.assert_close(got[p], expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))
    assert not torch.allclose(plain["conv1"], plain["bn1"], atol=1e-2)


def test_eval_mode_survives_deepcopy() -> None:
    """copy.deepcopy of an FX GraphModule comes back in training mode; the copy must still use running
    BatchNorm statistics (same output as the original, running stats untouched)."""
    import copy

    net = ln.build_loss_network("resnet18", ["layer1"], weights="random", fold_batchnorm=False)
    twin = copy.deepcopy(net)
    x = torch.rand(2, 3, 64, 64)
    before = twin.body.get_submodule("bn1").running_mean.clone()
    torch.testing.assert_close(twin(x)["layer1"], net(x)["layer1"])
    torch.testing.assert_close(twin.body.get_submodule("bn1").running_mean, before)


def test_random_weights_are_seeded_per_layer() -> None:
    a = ln.build_loss_network("resnet18", ["relu"], weights="random", seed=7)
    b = ln.build_loss_network("resnet18", ["relu"], weights="random", seed=7)
    c = ln.build_loss_network("resnet18", ["relu"], weights="random", seed=8)
    wa, wb, wc = (next(n.parameters()) for n in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    deeper = ln.build_loss_network("resnet18", ["relu", "layer2"], weights="random", seed=7)
    assert torch.equal(next(deeper.parameters()), wa)  # a layer's weights do not depend on the other points
    w = wa.detach()
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(float(w.std()) - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5  # kaiming-normal, fan-out


def test_imagenet_normalisation() -> None:
    net = ln.build_loss_network("alexnet", ["features.1"], weights="random")
    raw = ln.build_loss_network("alexnet", ["features.1"], weights="random", normalisation="none")
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(ln.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ln.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(net(x)["features.1"], raw((x - mean) / std)["features.1"])


def test_state_dict_file_loads_and_wrong_architecture_is_refused(tmp_path) -> None:
    model = torchvision.models.alexnet(weights=None)
    torch.save(model.state_dict(), tmp_path / "alex.pth")
    net = ln.build_loss_network("alexnet", ["features.1"], weights=str(tmp_path / "alex.pth"))
    torch.testing.assert_close(net.body.get_submodule("features.0").weight, model.features[0].weight)
    with pytest.raises(ln.LossNetworkError, match="do not fit vgg11"):
        ln.build_loss_network("vgg11", ["features.1"], weights=str(tmp_path / "alex.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ln.LossNetworkError, match="not a loadable state dict"):
        ln.build_loss_network("alexnet", ["features.1"], weights=str(tmp_path / "junk.pth"))


def test_bad_names_list_close_matches() -> None:
    with pytest.raises(ln.LossNetworkError, match="resnet50"):
        ln.check_network("resnet5O")
    with pytest.raises(ln.LossNetworkError, match="layer4"):
        ln.check_points("resnet18", ("layer5",))
    with pytest.raises(ln.LossNetworkError, match="IMAGENET1K_V1"):
        ln.weights_enum_name("alexnet", "IMAGENET1K_V9")


def test_point_metadata() -> None:
    meta = ln.point_metadata("vgg16", "features.29", 64)
    assert meta["feature_shape"] == [512, 4, 4]
    assert meta["position"] == 4 and meta["batch_norm"] is False
    # params up to relu5_3: all 13 conv layers of VGG16 (14.71M), none of the classifier
    assert meta["params_to_point"] == 14_714_688
    early = ln.point_metadata("vgg16", "features.3", 64)
    assert early["gflops_to_point"] < meta["gflops_to_point"] and early["relative_depth"] < meta["relative_depth"]
    assert ln.point_metadata("vgg16_bn", "features.5", 64)["batch_norm"] is True
    with pytest.raises(ln.LossNetworkError, match="75"):
        ln.point_metadata("inception_v3", "Mixed_6e", 32)


def test_networks_command_lists_56_points_with_metadata(capsys) -> None:
    import json

    from study.cli import main

    assert main(["networks", "--json", "--size", "96"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 56 and len({(r["network"], r["point"]) for r in rows}) == 56
    for r in rows:
        assert r["imagenet_top1"]["IMAGENET1K_V1"] > 50 and 0 < r["relative_depth"] < 1
        assert r["position"] in (1, 2, 3, 4) and r["params_to_point"] > 0 and r["gflops_to_point"] > 0
        assert len(r["feature_shape"]) == 3
    by = {(r["network"], r["point"]): r for r in rows}
    for (net, _), r in by.items():  # top-1 exactly as torchvision's weight metadata states it
        meta = torchvision.models.get_model_weights(net).IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]
        assert r["imagenet_top1"]["IMAGENET1K_V1"] == pytest.approx(meta["acc@1"])
    # VGG16's 13 convolutions, written out: params and FLOPs (2 per multiply-add) at 96 px
    convs, size, params, flops = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256),
                                  (256, 256), "M", (256, 512), (512, 512), (512, 512), "M", (512, 512),
                                  (512, 512), (512, 512)], 96, 0, 0
    for c in convs:
        if c == "M":
            size //= 2
            continue
        params += 9 * c[0] * c[1] + c[1]
        flops += 2 * 9 * c[0] * c[1] * size * size
    assert by[("vgg16", "features.29")]["params_to_point"] == params == 14_714_688
    assert by[("vgg16", "features.29")]["gflops_to_point"] == pytest.approx(flops / 1e9, abs=1e-4)
    assert by[("resnet50", "layer4")]["params_to_point"] == 25_557_032 - (2048 * 1000 + 1000)  # all but fc
    assert by[("resnet50", "layer4")]["feature_shape"] == [2048, 3, 3]
    assert by[("vgg16", "features.29")]["batch_norm"] is False and by[("vgg16_bn", "features.42")]["batch_norm"]
    assert main(["networks", "--nodes", "resnet18"]) == 0
    assert "layer4.1.relu_1" in capsys.readouterr().out.split()
