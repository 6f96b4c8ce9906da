"""`PerceptualLoss`: the loss network a study chose, as a drop-in training loss (in the spirit of `lpips.LPIPS`).

    from trainables import PerceptualLoss
    loss_fn = PerceptualLoss("vgg16", points=["features.8"], distance="mse", weights="IMAGENET1K_V1").to(device)
    loss = loss_fn(output, target, reduction="mean")   # images (B, 3, H, W) in [0, 1]
    loss.backward()                                    # the gradient reaches `output`; the trunk stays frozen

It is a thin wrapper: `loss_networks.build_loss_network` builds the frozen extractor (BatchNorm folded,
channels_last where it is safe, eval mode pinned) and `distances.PerceptualDistance` computes the distance
(the target's features without a graph when only one input needs a gradient). Both are the code that
`dpl distance` and the study's trials run, so the values are the ones the study measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.distances import PerceptualDistance
from trainables.loss_networks import build_loss_network

#: What `forward(..., reduction=)` accepts: per-image distances (B,), or their mean or sum (a scalar).
REDUCTIONS = ("none", "mean", "sum")
#: The input ranges accepted: images in [0, 1] (torchvision's, this project's), or [-1, 1] (the `lpips` package's).
INPUT_RANGES = ((0, 1), (-1, 1))


class PerceptualLoss(nn.Module):
    """d(x0, x1) between batches of RGB images on the features of a frozen ImageNet classifier.

    - `network`: any torchvision classifier name (`dpl networks --all`).
    - `points`: node names (`dpl networks --nodes NETWORK`), `p1`..`p4`, or `"all"` (the network's default four);
      the distance is summed over the points, as `dpl distance` reports its total.
    - `distance`: `"lpips"` (unit-normalised features, squared difference summed over channels or weighted by
      `lin`, averaged over space; Zhang et al. 2018) or `"mse"` (mean squared feature difference; Johnson et
      al. 2016, the loss of the study's training tasks).
    - `weights`: `"imagenet"` (= `IMAGENET1K_V1`), any weight-set name torchvision ships for the network (e.g.
      `"IMAGENET1K_V2"`), `"random"` (seeded, offline) or a state-dict file. Named sets are downloaded once into
      the torch hub cache (`$TORCH_HOME/hub/checkpoints`); offline, put the file there or pass a path.
    - `lin`: None, or an lpips lin-weights file (`lpips/weights/v0.1/alex.pth` of the `lpips` package); its k-th
      layer weights the k-th point, so give as many points as the file has layers. lpips distance only.
    - `input_range`: `(0, 1)` (default) or `(-1, 1)` (what `lpips.LPIPS` takes without `normalize=True`). Inputs
      are then normalised with ImageNet statistics, as the networks were trained.
    - `reduction`: `"none"` (per-image distances, shape (B,)), `"mean"` or `"sum"`; `forward` may override it.
    - `**network_options`: passed to `build_loss_network` (`normalisation`, `mode`, `transform_input`, `seed`,
      `memory_format`, `fold_batchnorm`), e.g. `normalisation="none"` to reproduce a study that ran so.

    The trunk never trains: no parameter requires a gradient and it stays in eval mode when a parent module
    calls `.train()` (unless built with `mode="train"`, the reference's BatchNorm behaviour). Loaded lin
    weights are frozen too. Move it like any module: `.to("cuda")`.
    """

    def __init__(self, network: str, points: str | list[str] | tuple[str, ...] = "all", distance: str = "lpips",
                 weights: str = "imagenet", lin: str | Path | None = None,
                 input_range: tuple[float, float] = (0, 1), reduction: str = "none", **network_options: Any) -> None:
        super().__init__()
        if tuple(input_range) not in INPUT_RANGES:
            raise ValueError(f"input_range {input_range!r}: use (0, 1) or (-1, 1)")
        if lin is not None and distance != "lpips":
            raise ValueError("lin weights only apply to distance='lpips'")
        self.input_range = tuple(input_range)
        self.reduction = _check_reduction(reduction)
        net = build_loss_network(network, points, weights=weights, **network_options)
        self.distance = PerceptualDistance(net, distance)
        if lin is not None:
            self.distance.load_lpips_lin(lin)
            self.distance.lin.requires_grad_(False)

    @property
    def points(self) -> tuple[str, ...]:
        return self.distance.net.points

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, reduction: str | None = None) -> torch.Tensor:
        """Distance between (B, 3, H, W) batches `x0` and `x1` (same shape); (B,) or a scalar by `reduction`."""
        if self.input_range == (-1, 1):
            x0, x1 = (x0 + 1) / 2, (x1 + 1) / 2
        d = self.distance(x0, x1)["total"]
        reduction = self.reduction if reduction is None else _check_reduction(reduction)
        return d if reduction == "none" else d.mean() if reduction == "mean" else d.sum()

    def extra_repr(self) -> str:
        return (f"network={self.distance.net.name!r}, points={list(self.points)}, distance={self.distance.kind!r}, "
                f"input_range={self.input_range}, reduction={self.reduction!r}")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r}: use one of {', '.join(REDUCTIONS)}")
    return reduction
