"""`from trainables import PerceptualLoss`: the chosen loss network as a training loss.

References: finite differences (torch.autograd.gradcheck, float64), the `dpl distance` CLI run on the same
photographs and weights file, the `lpips` package with its shipped lin weights on the same trunk, and the
module's own parameters and modes.
"""
from __future__ import annotations

import json

import lpips
import pytest
import torch

from study.cli import main
from test_distances import LIN_FILE, LPIPS_POINTS, lpips_trunk_as_torchvision, pairs  # noqa: F401 - fixture
from test_weights_offline import _one_thread, checkpoints, seeded_state  # noqa: F401 - fixtures
from trainables import PerceptualLoss
from trainables.images import read_rgb


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> str:
    """A resnet18 state dict with seeded, non-trivial BatchNorm statistics (no initialiser makes these)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18-seeded.pth"
    torch.save(seeded_state("resnet18", 7), path)
    return str(path)


@pytest.mark.parametrize("distance", ["lpips", "mse"])
def test_gradient_reaches_the_input_and_matches_finite_differences(distance: str) -> None:
    """float64 on a tiny network: autograd's input gradient equals central finite differences, in the loss use
    (the output tracked, the target fixed, so the target's half runs without a graph)."""
    loss = PerceptualLoss("squeezenet1_1", points=["features.1", "features.3"], distance=distance,
                          weights="random").double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    (grad,) = torch.autograd.grad(loss(x, y, reduction="sum"), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_trunk_is_frozen_and_stays_in_eval_mode() -> None:
    """No parameter (trunk or loaded lin weights) takes a gradient; `.train()` on a parent leaves BatchNorm in
    eval mode, so the value does not change with the batch."""
    loss = PerceptualLoss("resnet18", points=["layer1"], weights="random", fold_batchnorm=False)
    lin = PerceptualLoss("alexnet", points=LPIPS_POINTS["alex"][1], weights="random", lin=LIN_FILE / "alex.pth")
    for module in (loss, lin):
        assert [n for n, p in module.named_parameters() if p.requires_grad] == []
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), loss)
    x, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    before = loss(x, y).detach()
    parent.train()
    assert loss.training and not any(m.training for m in loss.distance.net.body.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loss.distance.net.body.modules())
    torch.testing.assert_close(loss(x, y), before, rtol=0, atol=0)
    torch.testing.assert_close(loss(x[:1], y[:1]), before[:1], rtol=1e-6, atol=0)  # per image, batch-independent


def test_speed_defaults_are_kept() -> None:
    """BatchNorm folded into the convolutions, channels_last weights (resnet), and in the loss use the target's
    pass runs without a graph: the body is called twice, with grad mode on for the output only."""
    loss = PerceptualLoss("resnet18", points=["layer1"], weights="random")
    body = loss.distance.net.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    grad_modes: list[bool] = []
    body.register_forward_pre_hook(lambda m, i: grad_modes.append(torch.is_grad_enabled()))
    x, y = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    loss(x, y).sum().backward()
    assert sorted(grad_modes) == [False, True] and x.grad.abs().sum() > 0


@pytest.mark.parametrize("distance", ["lpips", "mse"])
def test_value_equals_dpl_distance(distance: str, photos, resnet18_file: str, capsys) -> None:
    """The same photographs, network, points and weights file: `dpl distance`'s total, per image in a batch,
    with or without a gradient, and the mean / sum reductions."""
    points = ["layer1", "layer2"]
    names = [("astronaut", "chelsea"), ("coffee", "rocket")]
    expected = []
    for a, b in names:
        argv = ["distance", str(photos[a]), str(photos[b]), "--network", "resnet18", "--weights", resnet18_file,
                "--distance", distance, "--json", *sum((["--layer", p] for p in points), [])]
        assert main(argv) == 0
        expected.append(json.loads(capsys.readouterr().out)["total"])
    loss = PerceptualLoss("resnet18", points=points, distance=distance, weights=resnet18_file)
    x0 = torch.stack([read_rgb(photos[a]) for a, _ in names])
    x1 = torch.stack([read_rgb(photos[b]) for _, b in names])
    with torch.no_grad():
        got = loss(x0, x1)
    assert got.shape == (2,) and got.tolist() == pytest.approx(expected, rel=1e-5)
    tracked = loss(x0.clone().requires_grad_(True), x1)  # the loss use: target without a graph
    assert tracked.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(loss(x0, x1, reduction="mean")) == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert float(PerceptualLoss("resnet18", points=points, distance=distance, weights=resnet18_file,
                                reduction="sum")(x0, x1)) == pytest.approx(sum(expected), rel=1e-5)


@pytest.mark.parametrize("input_range", [(0, 1), (-1, 1)])
def test_equals_the_lpips_package_with_its_shipped_lin_weights(tmp_path, pairs, input_range) -> None:  # noqa: F811
    """lpips.LPIPS(net="alex") with the lin weights it ships, on a seeded trunk saved as a torchvision file:
    value and input gradient, for images in [0, 1] (lpips' normalize=True) and in [-1, 1] (its default)."""
    torch.manual_seed(0)
    ref = lpips.LPIPS(net="alex", pnet_rand=True, lpips=True, verbose=False).eval()
    weights = lpips_trunk_as_torchvision(ref, "alexnet", tmp_path / "alex.pth")
    ours = PerceptualLoss("alexnet", points=LPIPS_POINTS["alex"][1], weights=str(weights),
                          lin=LIN_FILE / "alex.pth", input_range=input_range)
    a, b = pairs
    if input_range == (-1, 1):
        a, b = 2 * a - 1, 2 * b - 1
    x_ref, x_ours = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    expected = ref(x_ref, b, normalize=input_range == (0, 1)).flatten()
    got = ours(x_ours, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5 * x_ref.grad.abs().max().item())


def test_bad_arguments_say_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"input_range \(0, 255\): use \(0, 1\) or \(-1, 1\)"):
        PerceptualLoss("squeezenet1_1", points=["features.1"], weights="random", input_range=(0, 255))
    with pytest.raises(ValueError, match="lin weights only apply to distance='lpips'"):
        PerceptualLoss("squeezenet1_1", points=["features.1"], weights="random", distance="mse", lin="x.pth")
    loss = PerceptualLoss("squeezenet1_1", points=["features.1"], weights="random")
    with pytest.raises(ValueError, match="reduction 'avg': use one of none, mean, sum"):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), reduction="avg")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_equals_cpu(pairs) -> None:  # noqa: F811
    loss = PerceptualLoss("squeezenet1_1", points=["features.1", "features.3"], weights="random")
    a, b = pairs
    cpu = loss(a, b)
    cuda = loss.to("cuda")(a.cuda().requires_grad_(True), b.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu.detach(), rtol=1e-4, atol=1e-6)


def _run(task: str, network: str, point: str, value: float, **params: str) -> dict:
    """One finished trial record in the public schema (what `write_store` takes)."""
    metric = {"superres": "test/set5/psnr", "similarity": "2afc/mean"}[task]
    base = {"task": task, "dataset": {"superres": "coco", "similarity": "bapps"}[task], "network": network,
            "point": point, "variant": "default" if task == "superres" else "baseline", "seed": "0",
            "weights": "imagenet", "weights_set": "IMAGENET1K_V1", "imagenet_top1": "58.178",
            "normalisation": "imagenet", "mode": "eval", "transform_input": "auto", "budget": "smoke",
            "distance": "mse" if task == "superres" else "lpips", "gflops_to_point": "0.1"}
    tags = {"dpl.kind": "trial", "dpl.trial_key": f"{task}-{network}-{point}-{params.get('variant', '')}",
            "dpl.weights_random": "false", "dpl.synthetic_data": "false", "dpl.primary_metric": metric,
            "dpl.directions": json.dumps({metric: "max"})}
    return {"params": {**base, **params}, "tags": tags, "metrics": {metric: value}}


def test_recommend_prints_the_line_that_builds_the_top_pick(tmp_path, checkpoints, capsys, monkeypatch) -> None:
    """`dpl recommend` names the top pick as a `PerceptualLoss(...)` line (text and JSON) that, exec'd, builds
    that very network, point, distance, weights and normalisation (seeded ImageNet file in the hub cache)."""
    from mlflow.tracking import MlflowClient

    from test_analysis_planted import write_store
    from test_weights_offline import put_in_cache

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("pick", artifact_location=(tmp_path / "art").as_uri())
    write_store(client, exp, [
        _run("superres", "squeezenet1_1", "features.1", 26.0, normalisation="none"),
        _run("superres", "squeezenet1_1", "features.3", 27.0, normalisation="none"),  # the top pick, between
        _run("superres", "squeezenet1_1", "features.4", 25.0, normalisation="none"),  # two others of its network
        _run("superres", "alexnet", "features.4", 26.5, normalisation="none"),
        _run("similarity", "squeezenet1_1", "features.1", 0.71, variant="lin", distance=""),
        _run("similarity", "alexnet", "features.1", 0.70),
    ])
    state = seeded_state("squeezenet1_1", 3)
    put_in_cache(checkpoints, "squeezenet1_1", "IMAGENET1K_V1", state, monkeypatch)

    assert main(["recommend", "--tracking-uri", uri, "--experiment", "pick", "--task", "superres"]) == 0
    text = capsys.readouterr().out
    line = text.splitlines()[-1]
    assert line == ('loss_fn = PerceptualLoss("squeezenet1_1", points=["features.3"], distance="mse", '
                    'weights="IMAGENET1K_V1", normalisation="none")')
    assert text.splitlines()[-2] == "from trainables import PerceptualLoss"
    assert main(["recommend", "--tracking-uri", uri, "--experiment", "pick", "--task", "superres", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "loss_fn = " + answer["python"] == line and answer["notes"] == []  # distance as logged, not assumed
    scope: dict = {}
    exec("\n".join(text.splitlines()[-2:]), scope)  # noqa: S102 - the line a user would paste
    built = scope["loss_fn"]
    assert isinstance(built, PerceptualLoss) and built.points == ("features.3",)
    assert built.distance.kind == "mse" and built.distance.net.normalisation == "none"
    assert built.distance.net.name == "squeezenet1_1"
    body = dict(built.distance.net.body.named_parameters())
    assert torch.equal(body["features.3.expand3x3.weight"], state["features.3.expand3x3.weight"])

    # similarity: lpips; the top pick trained lin weights in its trial (variant lin) and its runs predate the
    # `distance` param: both said, not hidden
    assert main(["recommend", "--tracking-uri", uri, "--experiment", "pick", "--task", "similarity", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["python"] == ('PerceptualLoss("squeezenet1_1", points=["features.1"], distance="lpips", '
                                'weights="IMAGENET1K_V1")')
    assert any("lin variant" in n for n in answer["notes"]) and any("assumed lpips" in n for n in answer["notes"])


def test_a_lin_file_that_does_not_fit_is_one_line(photos, tmp_path, capsys) -> None:
    """alexnet's default four points against lpips' five-layer lin file, and a file that is not one: a
    ValueError naming the file from Python, one `dpl: error:` line from the CLI."""
    with pytest.raises(ValueError, match=r"alex.pth has 5 layers but 4 points were requested"):
        PerceptualLoss("alexnet", weights="random", lin=LIN_FILE / "alex.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    for lin, says in ((LIN_FILE / "alex.pth", "has 5 layers but 4 points"), (tmp_path / "junk.pth", "cannot be read")):
        code = main(["distance", str(photos["astronaut"]), str(photos["chelsea"]), "--network", "alexnet",
                     "--weights", "random", "--lin", str(lin)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("dpl: error: lin file") and says in err[-1], err
        assert not any("Traceback" in line for line in err)
