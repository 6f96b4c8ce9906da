"""Perceptual distances against the `lpips` package, given the same trunk weights (random, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import lpips
import pytest
import torch
import torchvision

from study.cli import main
from trainables import loss_networks as ln
from trainables.distances import PerceptualDistance, feature_mse, lpips_point, mse_point
from trainables.images import read_rgb

# lpips' slices end at these torchvision `features` indices (lpips/pretrained_networks.py)
LPIPS_POINTS = {
    "alex": ("alexnet", ["features.1", "features.4", "features.7", "features.9", "features.11"]),
    "vgg": ("vgg16", ["features.3", "features.8", "features.15", "features.22", "features.29"]),
    "squeeze": ("squeezenet1_1", ["features.1", "features.4", "features.7", "features.9", "features.10",
                                  "features.11", "features.12"]),
}
LIN_FILE = Path(lpips.__file__).parent / "weights" / "v0.1"


def lpips_trunk_as_torchvision(ref: lpips.LPIPS, tv_name: str, path: Path) -> Path:
    """Save a full torchvision state dict whose trunk is lpips' (its slices keep `features` indices)."""
    model = torchvision.models.get_model(tv_name, weights=None)
    state = model.state_dict()
    for key, value in ref.net.state_dict().items():  # slice3.7.weight -> features.7.weight
        state["features." + key.split(".", 1)[1]] = value
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def pairs(photos) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.stack([read_rgb(photos[n], 64) for n in ("astronaut", "chelsea", "coffee")])
    b = torch.stack([read_rgb(photos[n], 64) for n in ("rocket", "astronaut", "chelsea")])
    b[1] = b[1].flip(-1)  # a mirrored photograph: close in content, far in pixels
    return a, b


@pytest.mark.parametrize("net_name", ["alex", "squeeze", "vgg"])
@pytest.mark.parametrize("use_lin", [False, True])
def test_lpips_parity_per_point(tmp_path, pairs, net_name: str, use_lin: bool) -> None:
    tv_name, points = LPIPS_POINTS[net_name]
    torch.manual_seed(0)
    ref = lpips.LPIPS(net=net_name, pnet_rand=True, lpips=use_lin, verbose=False).eval()
    weights = lpips_trunk_as_torchvision(ref, tv_name, tmp_path / f"{tv_name}.pth")
    net = ln.build_loss_network(tv_name, points, weights=str(weights))
    ours = PerceptualDistance(net, "lpips")
    if use_lin:
        ours.load_lpips_lin(LIN_FILE / f"{net_name}.pth")
    a, b = pairs
    with torch.no_grad():
        total, per_layer = ref(a, b, retPerLayer=True, normalize=True)
        got = ours(a, b)
    for point, expected in zip(points, per_layer):
        torch.testing.assert_close(got[point], expected.flatten(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["total"], total.flatten(), rtol=1e-5, atol=1e-7)


def test_distance_cli_on_photographs_equals_lpips(tmp_path, photos, capsys) -> None:
    torch.manual_seed(1)
    ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    weights = lpips_trunk_as_torchvision(ref, "alexnet", tmp_path / "alex.pth")
    layers = sum((["--layer", p] for p in LPIPS_POINTS["alex"][1]), [])
    code = main(["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "alexnet", *layers,
                 "--weights", str(weights), "--lin", str(LIN_FILE / "alex.pth"), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    a, b = read_rgb(photos["astronaut"])[None], read_rgb(photos["chelsea"])[None]
    with torch.no_grad():
        expected = float(ref(a, b, normalize=True))
    assert out["total"] == pytest.approx(expected, rel=1e-5)
    assert set(out["points"]) == set(LPIPS_POINTS["alex"][1])


@pytest.mark.parametrize("grad_input", [0, 1])
def test_loss_use_value_and_gradient_equal_lpips(tmp_path, pairs, grad_input: int) -> None:
    """As a loss (one input tracked, the other a fixed target) the target runs without a graph; value and
    input gradient must still equal the lpips package's, whichever side is tracked."""
    torch.manual_seed(0)
    ref = lpips.LPIPS(net="alex", pnet_rand=True, lpips=True, verbose=False).eval()
    tv_name, points = LPIPS_POINTS["alex"]
    net = ln.build_loss_network(tv_name, points, weights=str(lpips_trunk_as_torchvision(ref, tv_name, tmp_path / "a.pth")))
    ours = PerceptualDistance(net, "lpips")
    ours.load_lpips_lin(LIN_FILE / "alex.pth")
    a, b = pairs
    inputs_ref = [a.clone(), b.clone()]
    inputs_ours = [a.clone(), b.clone()]
    inputs_ref[grad_input].requires_grad_(True)
    inputs_ours[grad_input].requires_grad_(True)
    expected = ref(*inputs_ref, normalize=True).sum()
    got = ours(*inputs_ours)["total"].sum()
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    g_ref, g_ours = inputs_ref[grad_input].grad, inputs_ours[grad_input].grad
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


def test_mse_and_identity_and_gradients() -> None:
    net = ln.build_loss_network("squeezenet1_1", ["features.1", "features.3"], weights="random")
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32)
    mse = PerceptualDistance(net, "mse")(x, y)
    feats_x, feats_y = net(x), net(y)
    for p in net.points:
        expected = ((feats_x[p] - feats_y[p]) ** 2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(mse[p], expected)
    assert torch.all(PerceptualDistance(net)(x, x)["total"] == 0)
    # feature_mse = the mean over points of the elementwise MSE, value and input gradient; the gradient is
    # checked against autograd of that formula written here (the target side carries no gradient)
    x.requires_grad_(True)
    loss = feature_mse(net, x, y)
    (grad,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    fx2 = net(x2)
    formula = sum(((fx2[p] - feats_y[p].detach()) ** 2).mean() for p in net.points) / len(net.points)
    (grad_ref,) = torch.autograd.grad(formula, x2)
    torch.testing.assert_close(loss, formula, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6 * grad_ref.abs().max().item())
    # lpips_point by hand: unit-normalise over channels (eps 1e-10 as lpips), squared difference, channel sum,
    # spatial mean
    fa, fb = feats_x["features.1"], feats_y["features.1"]
    na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    torch.testing.assert_close(lpips_point(fa, fb), ((na - nb) ** 2).sum(1).mean(dim=(1, 2)), rtol=1e-5, atol=1e-7)
    assert mse_point(feats_x["features.1"], feats_x["features.1"]).tolist() == [0.0, 0.0]


def test_lin_weights_clamp_non_negative() -> None:
    net = ln.build_loss_network("alexnet", ["features.1"], weights="random")
    dist = PerceptualDistance(net, "lpips", lin=True)
    before = {}
    for name, conv in dist.lin.items():
        conv.weight.data.copy_(torch.linspace(-1, 1, conv.weight.numel()).view_as(conv.weight))  # half negative
        before[name] = conv.weight.detach().clone()
    dist.clamp_lin()
    for name, conv in dist.lin.items():  # negatives become 0, the rest untouched
        torch.testing.assert_close(conv.weight.detach(), before[name].clamp(min=0), rtol=0, atol=0)


def test_size_mismatch_is_a_clear_cli_error(tmp_path, photos, capsys) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "small.png")
    code = main(["distance", str(photos["astronaut"]), str(tmp_path / "small.png"), "--network", "alexnet",
                 "--layer", "features.1", "--weights", "random"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("dpl: error: images differ in size") and "--size" in err[-1]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code = main(["distance", str(photos["astronaut"]), str(tmp_path / "broken.png"), "--network", "alexnet",
                 "--weights", "random"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "broken.png" in err[-1]
