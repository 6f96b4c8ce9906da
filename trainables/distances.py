"""Perceptual distances between two images, computed on a LossNetwork's feature maps.

`mse` is the feature reconstruction loss of Johnson et al. (the three training tasks); `lpips` is the
distance of Zhang et al.: unit-normalise each spatial feature vector over channels, square the difference,
sum over channels (or weight them with non-negative learned 1x1 `lin` weights), average over space, sum
over points. Both are batched and differentiable.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from trainables.errors import UserError

DISTANCES = ("lpips", "mse")
#: lpips' own epsilon in normalize_tensor; F.normalize's 1e-12 gives different numbers on dead channels.
EPS = 1e-10


class LinWeightsError(UserError, ValueError):
    """A lin-weights file that is missing, unreadable or does not fit the points; the message says which."""


def unit_normalise(f: torch.Tensor) -> torch.Tensor:
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + EPS)


def lpips_point(f0: torch.Tensor, f1: torch.Tensor, lin: nn.Conv2d | None = None) -> torch.Tensor:
    """Per-image lpips distance at one point: (B, C, H, W) x 2 -> (B,)."""
    d = (unit_normalise(f0) - unit_normalise(f1)) ** 2
    d = lin(d) if lin is not None else d.sum(dim=1, keepdim=True)
    return d.mean(dim=(1, 2, 3))


def mse_point(f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared feature difference: (B, ...) x 2 -> (B,)."""
    return ((f0 - f1) ** 2).flatten(1).mean(dim=1)


def feature_mse(net: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scalar feature-reconstruction loss averaged over points, for training image-to-image models.

    The target's features are computed without a graph: they are a constant of the step, and skipping
    their autograd bookkeeping is free speed.
    """
    with torch.no_grad():
        ft = net(target)
    fo = net(output)
    return sum(nn.functional.mse_loss(fo[p], ft[p]) for p in fo) / len(fo)


class PerceptualDistance(nn.Module):
    """d(x0, x1) per point and in total, for a LossNetwork; optional lin weights for `lpips`."""

    def __init__(self, net: nn.Module, kind: str = "lpips", lin: bool = False, channels: dict[str, int] | None = None):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"distance {kind!r}: use one of {', '.join(DISTANCES)}")
        if lin and kind != "lpips":
            raise ValueError("lin weights only apply to the lpips distance")
        self.net = net
        self.kind = kind
        self.lin = nn.ModuleDict()
        if lin:
            channels = channels or feature_channels(net)
            for p, c in channels.items():
                self.lin[_safe(p)] = nn.Conv2d(c, 1, kernel_size=1, bias=False)
                nn.init.constant_(self.lin[_safe(p)].weight, 1.0)  # starts equal to the channel sum

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> dict[str, torch.Tensor]:
        if x0.shape != x1.shape:
            raise ValueError(f"images differ in size: {tuple(x0.shape)} vs {tuple(x1.shape)}; use --size to resize both")
        feats0, feats1 = self._features(x0, x1)
        out: dict[str, torch.Tensor] = {}
        for p in feats0:
            f0, f1 = feats0[p], feats1[p]
            if self.kind == "mse":
                out[p] = mse_point(f0, f1)
            else:
                out[p] = lpips_point(f0, f1, self.lin[_safe(p)] if _safe(p) in self.lin else None)
        out["total"] = torch.stack([out[p] for p in feats0]).sum(0)
        return out

    def _features(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both inputs' features: one concatenated pass (better batching), except for the loss use.

        When only one input needs a gradient (an output against a fixed target) and the network is frozen,
        the other runs under no_grad, so backward never walks the target's half: forward+backward went
        from 0.66-0.90x the `lpips` package to 0.86-1.05x (bench/lossnet_throughput.py, section 3).
        """
        if torch.is_grad_enabled() and x0.requires_grad != x1.requires_grad and not any(
            p.requires_grad for p in self.net.parameters()
        ):
            grad_first = x0.requires_grad
            with torch.no_grad():
                fixed = self.net(x1 if grad_first else x0)
            tracked = self.net(x0 if grad_first else x1)
            return (tracked, fixed) if grad_first else (fixed, tracked)
        n = x0.shape[0]
        both = self.net(torch.cat([x0, x1]))
        return {p: f[:n] for p, f in both.items()}, {p: f[n:] for p, f in both.items()}

    def clamp_lin(self) -> None:
        """Keep lin weights non-negative (a distance must not reward a feature difference)."""
        with torch.no_grad():
            for conv in self.lin.values():
                conv.weight.clamp_(min=0)

    def load_lpips_lin(self, path: str | Path) -> None:
        """Load lin weights saved in the `lpips` package's format (`lin{k}.model.{0|1}.weight`).

        The k-th lin layer of the file goes to the k-th point of this network, in the order given.
        """
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:  # missing, truncated, not torch
            raise LinWeightsError(f"lin file {path} cannot be read ({type(exc).__name__}); give the lpips "
                                  f"package's lin weights, e.g. lpips/weights/v0.1/alex.pth") from exc
        layers = sorted({k.split(".")[0] for k in state if k.startswith("lin")}, key=lambda s: int(s[3:]))
        points = list(self.net.points)
        if len(layers) != len(points):
            raise LinWeightsError(f"lin file {path} has {len(layers)} layers but {len(points)} points were "
                                  f"requested: give one point per layer, in the file's order")
        if not self.lin:
            for p in points:
                self.lin[_safe(p)] = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        for layer, p in zip(layers, points):
            (w,) = [v for k, v in state.items() if k.startswith(layer + ".") and k.endswith("weight")]
            self.lin[_safe(p)] = nn.Conv2d(w.shape[1], 1, kernel_size=1, bias=False)
            self.lin[_safe(p)].weight.data.copy_(w)


def _safe(point: str) -> str:
    """ModuleDict keys may not contain dots."""
    return point.replace(".", "__")


@torch.no_grad()
def feature_channels(net: nn.Module, size: int = 128) -> dict[str, int]:
    was_training = net.training
    net.eval()
    size = getattr(net, "fixed_size", None) or size  # ViT/MaxViT take one size only
    probe = torch.zeros(1, 3, size, size, device=next(iter(net.buffers())).device)
    out = {p: f.shape[1] for p, f in net(probe).items()}
    net.train(was_training)
    return out
