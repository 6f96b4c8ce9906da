"""Which networks a study can name, and their default extraction points (data, not code).

`REGISTRY` is the paper's table (Pihlgren et al.: 14 networks x 4 points, with the reference's child
indices); `EXTENDED` holds today's architectures with 4 points each, chosen by the paper's rule; any other
torchvision classifier and any node of its graph works too, with points named by the user. In a spec,
`networks: all` is the paper's 14 and `networks: extended` the modern set (both may also appear inside a
list: `[extended, vgg16]`).

The paper's rule, read off its ResNet/DenseNet/EfficientNet points: p1 the stem, p2 the end of the first
stage, p3 the end of a middle stage, p4 the end of the last stage before the head (global pool,
classifier, or a final 1x1 convolution). For the modern networks (strides in brackets):

- ConvNeXt, Swin, Swin V2 (4 stages, their downsampling layers in between): `features.0` the patchify
  stem (4), `features.1` stage 1 (4), `features.3` stage 2 (8), `features.7` stage 4 (32): as ResNet's
  relu/layer1/layer2/layer4.
- RegNet: `stem` (2), `trunk_output.block1` (4), `.block2` (8), `.block4` (32); MaxViT: `stem` (2),
  `blocks.0` (4), `blocks.1` (8), `blocks.3` (32): the same.
- EfficientNetV2: the same indices as the paper's EfficientNet (stem, stage 1, stage 4 at stride 16, the
  last stage), so `features.0/1/4/6` for v2_s (6 stages) and `features.0/1/4/7` for v2_m (7 stages).
- MobileNetV3-Large: the ends of its stride-2, 4, 8 and 32 stages, `features.1/3/6/15` (before the final
  1x1 convolution `features.16`), as ResNet's.
- ViT has no stages (one resolution, 16 or 32 px patches throughout): the ends of the four quarters of its
  encoder blocks, blocks 3/6/9/12 of ViT-B and 6/12/18/24 of ViT-L (DPT's hooks, Ranftl et al. 2021).
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

import torchvision

from trainables.errors import UserError

#: The weight set the paper used (torchvision's DEFAULT is V2 for resnet50 and resnext50_32x4d).
PAPER_WEIGHTS = "IMAGENET1K_V1"


class LossNetworkError(UserError, ValueError):
    """Bad network, point or weights; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class NetworkEntry:
    """One row of a network table: the 4 default points (node names), the family, and for the paper's
    networks the reference implementation's child indices."""

    name: str
    points: tuple[str, str, str, str]
    family: str
    reference_indices: tuple[int, int, int, int] | None = None

    @property
    def paper(self) -> bool:
        return self.reference_indices is not None


def _vgg(name: str, idx: tuple[int, int, int, int]) -> NetworkEntry:
    return NetworkEntry(name, tuple(f"features.{i}" for i in idx), "vgg", idx)  # type: ignore[arg-type]


_RESNET_POINTS = ("relu", "layer1", "layer2", "layer4")
_EFFNET_POINTS = ("features.0", "features.1", "features.4", "features.7")

REGISTRY: dict[str, NetworkEntry] = {
    e.name: e
    for e in (
        NetworkEntry("alexnet", ("features.1", "features.4", "features.7", "features.11"), "alexnet", (1, 4, 7, 11)),
        _vgg("vgg11", (1, 4, 9, 19)),
        _vgg("vgg16", (3, 8, 15, 29)),
        _vgg("vgg16_bn", (5, 12, 22, 42)),
        _vgg("vgg19", (3, 8, 17, 35)),
        NetworkEntry("resnet18", _RESNET_POINTS, "resnet", (2, 4, 5, 7)),
        NetworkEntry("resnet50", _RESNET_POINTS, "resnet", (2, 4, 5, 7)),
        NetworkEntry("resnext50_32x4d", _RESNET_POINTS, "resnet", (2, 4, 5, 7)),
        NetworkEntry(
            "densenet121",
            ("features.relu0", "features.denseblock1", "features.denseblock2", "features.denseblock4"),
            "densenet",
            (2, 4, 6, 10),
        ),
        NetworkEntry("googlenet", ("conv1", "inception3a", "inception4a", "inception5b"), "googlenet", (0, 5, 8, 15)),
        NetworkEntry(
            "inception_v3", ("Conv2d_2b_3x3", "Mixed_5b", "Mixed_5d", "Mixed_6e"), "inception", (2, 7, 9, 14)
        ),
        NetworkEntry(
            "squeezenet1_1", ("features.1", "features.3", "features.7", "features.12"), "squeezenet", (1, 3, 7, 12)
        ),
        NetworkEntry("efficientnet_b0", _EFFNET_POINTS, "efficientnet", (0, 1, 4, 7)),
        NetworkEntry("efficientnet_b7", _EFFNET_POINTS, "efficientnet", (0, 1, 4, 7)),
    )
}

_STAGES_4 = ("features.0", "features.1", "features.3", "features.7")
_REGNET_POINTS = ("stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block4")


def _vit_blocks(n: int) -> tuple[str, str, str, str]:
    return tuple(f"encoder.layers.encoder_layer_{n * q // 4 - 1}" for q in (1, 2, 3, 4))  # type: ignore[return-value]


#: Today's architectures (the `extended` set), 4 points each by the paper's rule (module docstring).
EXTENDED: dict[str, NetworkEntry] = {
    e.name: e
    for e in (
        NetworkEntry("convnext_tiny", _STAGES_4, "convnext"),
        NetworkEntry("convnext_base", _STAGES_4, "convnext"),
        NetworkEntry("efficientnet_v2_s", ("features.0", "features.1", "features.4", "features.6"), "efficientnet_v2"),
        NetworkEntry("efficientnet_v2_m", _EFFNET_POINTS, "efficientnet_v2"),
        NetworkEntry("regnet_y_1_6gf", _REGNET_POINTS, "regnet"),
        NetworkEntry("regnet_y_16gf", _REGNET_POINTS, "regnet"),
        NetworkEntry("vit_b_16", _vit_blocks(12), "vit"),
        NetworkEntry("vit_b_32", _vit_blocks(12), "vit"),
        NetworkEntry("vit_l_16", _vit_blocks(24), "vit"),
        NetworkEntry("swin_t", _STAGES_4, "swin"),
        NetworkEntry("swin_v2_b", _STAGES_4, "swin"),
        NetworkEntry("maxvit_t", ("stem", "blocks.0", "blocks.1", "blocks.3"), "maxvit"),
        NetworkEntry("mobilenet_v3_large", ("features.1", "features.3", "features.6", "features.15"), "mobilenet"),
    )
}

#: Names a spec's `networks` may use for a whole table (alone or inside a list).
NETWORK_GROUPS: dict[str, tuple[str, ...]] = {"all": tuple(REGISTRY), "extended": tuple(EXTENDED)}
#: `p1`..`p4`: the default point at that position.
POSITIONS = ("p1", "p2", "p3", "p4")


def entry(name: str) -> NetworkEntry | None:
    """The table row of `name` (paper's or extended), None for any other torchvision classifier."""
    return REGISTRY.get(name) or EXTENDED.get(name)


def expand_networks(value: Any) -> list[str]:
    """A spec's `networks` value as network names: `all` (the paper's 14), `extended`, or a list that may
    hold these group names among network names (order kept, duplicates dropped)."""
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(NETWORK_GROUPS.get(item, (item,)) if isinstance(item, str) else (item,))
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------------------------- names


@functools.cache
def classification_models() -> tuple[str, ...]:
    """Every torchvision ImageNet classification builder (not detection/segmentation/video/quantized)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def check_network(name: str) -> str:
    """`name` if torchvision can build it as a classifier, else an error naming the closest names."""
    if name in classification_models():
        return name
    close = difflib.get_close_matches(str(name), classification_models(), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `dpl networks --all` for the list"
    raise LossNetworkError(f"unknown network {name!r}: {hint}")


def family_of(name: str) -> str:
    row = entry(name)
    if row is not None:
        return row.family
    stem = name.split("_")[0].rstrip("0123456789")
    return {"wide": "resnet", "resnext": "resnet"}.get(stem, stem)


def default_points(name: str) -> tuple[str, ...]:
    """The 4 points of a network in the paper's or the extended table; other networks have none."""
    row = entry(check_network(name))
    if row is not None:
        return row.points
    raise LossNetworkError(
        f"{name} is in neither the paper's 14 networks nor the extended set, so it has no default points: name "
        f"nodes with --layer (list them with `dpl networks --nodes {name}`)"
    )


def resolve_points(name: str, points: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """'all' -> the 4 default points; 'p1'..'p4' -> the default point at that position; node names pass."""
    if isinstance(points, str):
        points = (points,)
    out: list[str] = []
    for p in points:
        if p == "all":
            out.extend(default_points(name))
        elif p in POSITIONS:
            out.append(default_points(name)[POSITIONS.index(p)])
        else:
            out.append(p)
    return tuple(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------ weights


def weight_sets(name: str) -> dict[str, dict[str, Any]]:
    """The weight sets torchvision ships for `name`, with their metadata (offline: no download)."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return {}
    return {w.name: dict(w.meta) for w in enum}


def imagenet_top1(name: str) -> dict[str, float]:
    """ImageNet-1K top-1 accuracy of each weight set, from torchvision's own metadata."""
    return {
        k: float(m["_metrics"]["ImageNet-1K"]["acc@1"])
        for k, m in weight_sets(name).items()
        if "ImageNet-1K" in m.get("_metrics", {})
    }
