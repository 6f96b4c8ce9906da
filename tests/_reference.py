"""Independent references shared by the loss-network tests: torchvision's own forward (hooks), seeded
BatchNorm statistics far from the identity, and a relative max-abs comparison."""
from __future__ import annotations

import torch

from trainables import loss_networks as ln


class _Reached(Exception):
    """Raised by the hook of the deepest point: the layers after it (VGG's classifier) never run."""


def run_to_points(model: torch.nn.Module, points: tuple[str, ...], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the modules named `points` in the unmodified model's own forward (forward hooks):
    a reference that shares nothing with our FX extractor."""
    modules = dict(model.named_modules())
    missing = [p for p in points if p not in modules]
    assert not missing, f"points that are no module of {type(model).__name__}: {missing}"
    out: dict[str, torch.Tensor] = {}

    def keep(point: str):
        def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
            out[point] = output.clone()  # later in-place ops must not change what was seen
            if len(out) == len(points):
                raise _Reached
        return hook

    hooks = [modules[p].register_forward_hook(keep(p)) for p in points]
    try:
        with torch.no_grad():
            model(x)
    except _Reached:
        pass
    finally:
        for h in hooks:
            h.remove()
    return out


def seed_batchnorms(model: torch.nn.Module, x: torch.Tensor, points: tuple[str, ...], seed: int) -> int:
    """Give every BatchNorm seeded affine parameters and running statistics far from 0/1, on the scale of
    the activations it actually sees (torchvision's init leaves efficientnet's deep activations at 1e-7 to
    1e-14, and 0/1 statistics make a BatchNorm nearly the identity, so deleting it would pass).

    One forward in eval mode sets each layer's statistics from its real input just before it runs:
    running_mean = r * N(0, 0.5) and running_var = r^2 * U(0.5, 2) per channel, with r the RMS of that
    input (one number per layer, so that no near-constant channel is blown up into float noise).
    """
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def set_statistics(bn: torch.nn.modules.batchnorm._BatchNorm, args: tuple[torch.Tensor, ...]) -> None:
        r = args[0].pow(2).mean().sqrt()
        bn.running_mean.copy_(r * 0.5 * torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(r**2 * torch.empty(bn.num_features).uniform_(0.5, 2.0, generator=g))

    with torch.no_grad():
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(0.0, 0.2, generator=g)
    model.eval()
    hooks = [bn.register_forward_pre_hook(set_statistics) for bn in norms]
    try:
        run_to_points(model, points, x)
    finally:
        for h in hooks:
            h.remove()
    return len(norms)


def quiet_init(name: str) -> dict[str, bool]:
    """GoogLeNet/Inception warn unless told which init to use; PyTorch's default one is quick."""
    return {"init_weights": False} if name in ln.TRANSFORM_INPUT_NETWORKS else {}


def assert_matches_reference(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], what: str) -> None:
    """Max-abs error relative to the reference's own max-abs value <= 1e-4 (float32 summation order:
    channels_last, folded weights; measured <= 3e-6 over the 56 points), and the reference must be far from 0."""
    for point, ref in reference.items():
        scale = ref.abs().max().item()
        assert scale > 1e-2 and ref.std().item() > 1e-3, f"{what} {point}: reference ~0 ({scale:.3g})"
        assert ours[point].shape == ref.shape, f"{what} {point}"
        err = (ours[point] - ref).abs().max().item() / scale
        assert err <= 1e-4, f"{what} {point}: max-abs error {err:.3g} of the reference's max-abs {scale:.3g}"
