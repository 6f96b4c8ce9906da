"""Loss networks: a name -> extraction points table, and a builder for frozen, pruned feature extractors.

The 14 networks and 4 points per network of Pihlgren et al. are one data table (`REGISTRY`); any other
torchvision classification model and any node of its FX graph works too. Points are
`torchvision.models.feature_extraction` node names, so `create_feature_extractor` prunes the graph after
the deepest requested node: an early point never pays for the later layers.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import zlib
import functools
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction

from trainables.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The weight set the paper used (torchvision's DEFAULT is V2 for resnet50 and resnext50_32x4d).
PAPER_WEIGHTS = "IMAGENET1K_V1"
#: Networks whose forward() re-scales its input when built with Google's weights.
TRANSFORM_INPUT_NETWORKS = ("googlenet", "inception_v3")


class LossNetworkError(UserError, ValueError):
    """Bad network, point or weights; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class NetworkEntry:
    """One row of the paper's table: the 4 points (node names) and the reference's child indices."""

    name: str
    points: tuple[str, str, str, str]
    reference_indices: tuple[int, int, int, int]
    family: str


def _vgg(name: str, idx: tuple[int, int, int, int]) -> NetworkEntry:
    return NetworkEntry(name, tuple(f"features.{i}" for i in idx), idx, "vgg")  # type: ignore[arg-type]


_RESNET_POINTS = ("relu", "layer1", "layer2", "layer4")
_EFFNET_POINTS = ("features.0", "features.1", "features.4", "features.7")

REGISTRY: dict[str, NetworkEntry] = {
    e.name: e
    for e in (
        NetworkEntry("alexnet", ("features.1", "features.4", "features.7", "features.11"), (1, 4, 7, 11), "alexnet"),
        _vgg("vgg11", (1, 4, 9, 19)),
        _vgg("vgg16", (3, 8, 15, 29)),
        _vgg("vgg16_bn", (5, 12, 22, 42)),
        _vgg("vgg19", (3, 8, 17, 35)),
        NetworkEntry("resnet18", _RESNET_POINTS, (2, 4, 5, 7), "resnet"),
        NetworkEntry("resnet50", _RESNET_POINTS, (2, 4, 5, 7), "resnet"),
        NetworkEntry("resnext50_32x4d", _RESNET_POINTS, (2, 4, 5, 7), "resnet"),
        NetworkEntry(
            "densenet121",
            ("features.relu0", "features.denseblock1", "features.denseblock2", "features.denseblock4"),
            (2, 4, 6, 10),
            "densenet",
        ),
        NetworkEntry("googlenet", ("conv1", "inception3a", "inception4a", "inception5b"), (0, 5, 8, 15), "googlenet"),
        NetworkEntry(
            "inception_v3", ("Conv2d_2b_3x3", "Mixed_5b", "Mixed_5d", "Mixed_6e"), (2, 7, 9, 14), "inception"
        ),
        NetworkEntry(
            "squeezenet1_1", ("features.1", "features.3", "features.7", "features.12"), (1, 3, 7, 12), "squeezenet"
        ),
        NetworkEntry("efficientnet_b0", _EFFNET_POINTS, (0, 1, 4, 7), "efficientnet"),
        NetworkEntry("efficientnet_b7", _EFFNET_POINTS, (0, 1, 4, 7), "efficientnet"),
    )
}


# --------------------------------------------------------------------------------------------- names


@functools.cache
def classification_models() -> tuple[str, ...]:
    """Every torchvision ImageNet classification builder (not detection/segmentation/video/quantized)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def check_network(name: str) -> str:
    """`name` if torchvision can build it as a classifier, else an error naming the closest names."""
    if name in classification_models():
        return name
    close = difflib.get_close_matches(name, classification_models(), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `dpl networks --all` for the list"
    raise LossNetworkError(f"unknown network {name!r}: {hint}")


def family_of(name: str) -> str:
    if name in REGISTRY:
        return REGISTRY[name].family
    stem = name.split("_")[0].rstrip("0123456789")
    return {"wide": "resnet", "resnext": "resnet", "vit": "vit"}.get(stem, stem)


def default_points(name: str) -> tuple[str, ...]:
    """The paper's 4 points; for other networks there is no default and the user must name nodes."""
    if name in REGISTRY:
        return REGISTRY[name].points
    raise LossNetworkError(
        f"{name} is not one of the paper's 14 networks, so it has no default points: name nodes with "
        f"--layer (list them with `dpl networks --nodes {name}`)"
    )


def resolve_points(name: str, points: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """'all' -> the paper's 4; 'p1'..'p4' -> the paper's point at that position; node names pass through."""
    if isinstance(points, str):
        points = (points,)
    out: list[str] = []
    for p in points:
        if p == "all":
            out.extend(default_points(name))
        elif len(p) == 2 and p[0] == "p" and p[1] in "1234" and name in REGISTRY:
            out.append(REGISTRY[name].points[int(p[1]) - 1])
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


def weights_enum_name(name: str, weights: str) -> str | None:
    """The torchvision weight-set name a `weights` setting refers to (None for random or a file)."""
    if weights == "random" or _is_path(weights):
        return None
    sets = weight_sets(name)
    wanted = PAPER_WEIGHTS if weights == "imagenet" else weights
    if wanted not in sets:
        raise LossNetworkError(
            f"weights {weights!r} not available for {name}: use random, imagenet ({PAPER_WEIGHTS}), "
            f"a state-dict file, or one of {', '.join(sets) or '(none)'}"
        )
    return wanted


def _is_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))


def _download_state_dict(name: str, enum_name: str) -> dict[str, torch.Tensor]:
    """torchvision's weights from the torch hub cache (`$TORCH_HOME/hub/checkpoints/<file of Weights.url>`),
    downloaded first if the file is not there, and unpickled as tensors only.

    Not through torchvision's `Weights.get_state_dict`: it loads with `weights_only=False`, so a file put
    in the cache could run code when a trial loads it. And torch checks the sha256 prefix in the file's
    name only when it downloads; a cached file is checked here (`_check_cached_hash`), so a truncated or
    substituted file is refused rather than loaded as ImageNet weights.
    """
    weights = torchvision.models.get_model_weights(name)[enum_name]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    fname = weights.url.rsplit("/", 1)[-1]
    cached = (hub / fname).is_file()
    if cached:
        _check_cached_hash(hub / fname, weights.url)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, model_dir=str(hub), map_location="cpu",
                                                  progress=False, check_hash=True, weights_only=True)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        if cached:  # e.g. a truncated copy put there by hand: not an offline problem, and no traceback
            raise LossNetworkError(
                f"cached ImageNet weights {hub / fname} cannot be read ({reason}); delete it to download "
                f"again, or replace it with a complete copy of {weights.url}"
            ) from exc
        if not isinstance(exc, (urllib.error.URLError, OSError, RuntimeError)):
            raise
        raise LossNetworkError(
            f"cannot get ImageNet weights {name}.{enum_name} ({reason}); this machine may be "
            f"offline: put {fname} from {weights.url} into {hub} (set TORCH_HOME to move it) or use --weights random"
        ) from exc


def _check_cached_hash(path: Path, url: str) -> None:
    """Refuse a cached weights file whose sha256 does not start with the hex digits its name carries
    (torchvision names each file `<name>-<sha256 prefix>.pth`, torch's `HASH_REGEX`). The prefix is 8+ hex
    digits: it catches a damaged or swapped file; that nothing but tensors is unpickled is the safety."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    got, expected = digest.hexdigest(), match.group(1)
    if not got.startswith(expected):
        raise LossNetworkError(
            f"cached ImageNet weights {path} are not the file published at {url} (sha256 {got[:len(expected)]}..., "
            f"its name says {expected}...): delete it to download again; weights of your own go in with "
            f"--weights PATH (the spec's `weights: PATH`)"
        )


def _load_file_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LossNetworkError(f"weights file {p} does not exist: give a state-dict file, imagenet or random")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise LossNetworkError(
            f"weights file {p} is not a loadable state dict ({type(exc).__name__}); save one with "
            f"torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LossNetworkError(f"weights file {p} holds a {type(state).__name__}, not a state dict")
    return state


def _construct(name: str, pretrained_layout: bool) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if name in TRANSFORM_INPUT_NETWORKS:
        # Auxiliary heads are never extraction points; building them only costs memory and time.
        kwargs.update(aux_logits=False, init_weights=not pretrained_layout)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def build_classifier(name: str, weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """The full torchvision model with the requested weights (seeded init for `random`)."""
    check_network(name)
    enum_name = weights_enum_name(name, weights)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _construct(name, pretrained_layout=False)
    state = _load_file_state_dict(weights) if enum_name is None else _download_state_dict(name, enum_name)
    state = {k: v for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2."))}
    # Loaded weights replace every tensor, so skip the random init (seconds for VGG's classifier).
    with torch.device("meta"):
        model = _construct(name, pretrained_layout=True)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise LossNetworkError(f"weights {weights} do not fit {name}: {first}") from exc
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise LossNetworkError(f"weights {weights} for {name} lack {', '.join(left[:3])}; give a complete state dict")
    return model


# ------------------------------------------------------------------------------------------- points


@functools.cache
def graph_nodes(name: str) -> tuple[str, ...]:
    """The eval-mode FX graph node names of `name` (the valid points), in execution order."""
    model = _meta_model(check_network(name))  # tracing needs no weights
    _, eval_nodes = feature_extraction.get_graph_node_names(model)
    return tuple(eval_nodes)


def check_points(name: str, points: tuple[str, ...]) -> tuple[str, ...]:
    if not points:
        raise LossNetworkError("no extraction point given: pass --layer NODE (see `dpl networks --nodes NETWORK`)")
    nodes = graph_nodes(name)
    for p in points:
        if resolve_node(name, p) is None:
            prefixes = {n.rsplit(".", k)[0] for n in nodes for k in range(1, n.count(".") + 1)}
            close = difflib.get_close_matches(p, sorted(prefixes) + list(nodes), n=6, cutoff=0.4)
            suggestion = ", ".join(close) if close else ", ".join(default_points(name) if name in REGISTRY else nodes[:8])
            raise LossNetworkError(
                f"{name} has no node {p!r}; close valid nodes: {suggestion} (all: `dpl networks --nodes {name}`)"
            )
    return points


def resolve_node(name: str, point: str) -> str | None:
    """The graph node a point stands for: itself, or for a module prefix (`layer1`) its last node.

    This is `create_feature_extractor`'s own rule for prefixes, so the metadata describes the tensor
    that is actually returned.
    """
    nodes = graph_nodes(name)
    if point in nodes:
        return point
    inside = [n for n in nodes if n.startswith(point + ".")]
    return inside[-1] if inside else None


def relative_depth(name: str, point: str) -> float:
    """Position of the point's node in the network's execution order, 0 (input) to 1 (logits)."""
    nodes = graph_nodes(name)
    node = resolve_node(name, point)
    if node is None:
        raise LossNetworkError(f"{name} has no node {point!r}")
    return nodes.index(node) / max(len(nodes) - 1, 1)


def uses_transform_input(name: str, weights: str, setting: str) -> bool:
    """Whether GoogLeNet/Inception re-scale their input: `auto` does what torchvision does for these weights."""
    if name not in TRANSFORM_INPUT_NETWORKS:
        return False
    if setting == "auto":
        return weights_enum_name(name, weights) is not None
    return setting == "on"


# ------------------------------------------------------------------------------------------ module


class LossNetwork(nn.Module):
    """A frozen feature extractor: image in [0, 1] -> {point: feature map}.

    `mode='eval'` pins BatchNorm/Dropout to inference behaviour even when a parent module calls
    `.train()` (the reference implementation let its trainers flip it, a confound); `mode='train'` follows
    the parent, to reproduce that behaviour on purpose.
    """

    def __init__(
        self, name: str, points: tuple[str, ...], body: nn.Module, normalisation: str, mode: str,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.points = points
        # channels_last weights make oneDNN (CPU) and cuDNN run these convolutions in NHWC end to end
        # (inputs stay NCHW; the first convolution converts): vgg16 forward 1.1-1.3x, squeezenet 2.1-2.3x,
        # pools nearly free on CPU (bench/lossnet_throughput.py). Only for networks known to have no
        # `.view` on activations before the points (see CHANNELS_LAST_FAMILIES).
        self.body = body.to(memory_format=torch.channels_last) if channels_last else body
        self.mode = mode
        self.normalisation = normalisation
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "LossNetwork":
        super().train(mode)
        if self.mode == "eval":
            self.body.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mode == "eval" and self.body.training:
            # `train()` is not the only way in: copy.deepcopy of an FX GraphModule comes back in training
            # mode, and so would any other path that rebuilds the body; the pin must hold for all of them.
            self.body.eval()
        if self.normalisation == "imagenet":
            x = (x - self.mean) / self.std
        out = self.body(x)
        return {p: out[p] for p in self.points}


#: Families whose graphs up to any point are convolutions, norms, pools, concatenations and additions,
#: so they run unchanged on channels_last activations (tested against NCHW at every point). Others (e.g.
#: ShuffleNet's channel shuffle, ViT/Swin reshapes) `.view` activations and stay NCHW under "auto".
CHANNELS_LAST_FAMILIES = frozenset({e.family for e in REGISTRY.values()})
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def uses_channels_last(name: str, memory_format: str = "auto") -> bool:
    if memory_format not in MEMORY_FORMATS:
        raise LossNetworkError(f"memory format {memory_format!r}: use one of {', '.join(MEMORY_FORMATS)}")
    if memory_format == "auto":
        return family_of(name) in CHANNELS_LAST_FAMILIES
    return memory_format == "channels_last"


def build_loss_network(
    name: str,
    points: tuple[str, ...] | list[str] | str,
    weights: str = "imagenet",
    normalisation: str = "imagenet",
    mode: str = "eval",
    transform_input: str = "auto",
    seed: int = 0,
    memory_format: str = "auto",
    fold_batchnorm: bool | None = None,
) -> LossNetwork:
    """Frozen extractor of `points` of `name`, pruned after the deepest one.

    `memory_format`: "auto" (channels_last for the paper's convolutional families, NCHW otherwise),
    "channels_last" or "contiguous". `fold_batchnorm` (default: when `mode="eval"`): fold each eval-mode
    BatchNorm into the convolution before it; same function, one memory pass less per BN layer. Pass
    False when the trunk itself will be trained (the fold changes its parametrisation).
    """
    check_network(name)
    pts = check_points(name, resolve_points(name, points))
    if weights == "random":
        body = _random_extractor(name, pts, seed, uses_transform_input(name, weights, transform_input))
    else:
        model = build_classifier(name, weights, seed)
        if name in TRANSFORM_INPUT_NETWORKS:
            model.transform_input = uses_transform_input(name, weights, transform_input)
        model.eval()
        body = feature_extraction.create_feature_extractor(model, return_nodes={p: p for p in pts})
    if mode == "eval" if fold_batchnorm is None else fold_batchnorm:
        body = fold_batchnorms(body)
    return LossNetwork(name, pts, body, normalisation, mode, channels_last=uses_channels_last(name, memory_format))


def fold_batchnorms(body: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Conv -> BatchNorm pairs folded into one convolution with the BN's running statistics (torch.fx's
    own `fuse`). Eval-mode BN is an affine map, so the function is unchanged (float32 rounding aside);
    what goes is a full read and write of the activation per BN layer, which at the early, high-resolution
    points is a large share of the time (efficientnet_b0 up to features.1: BN 29 % of the forward, profiled
    in docs/benchmarks/lossnet.md). A conv whose output is itself a point (or feeds anything else) is
    left alone, so every requested feature map keeps its meaning."""
    from torch.fx.experimental.optimization import fuse
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    body.eval()
    body = fuse(body, inplace=True, no_trace=True)
    # torchvision's Conv2dNormActivation is a leaf of the feature extractor's graph: fold inside it too
    for seq in body.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                conv, bn = seq[i], seq[i + 1]
                if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return body


#: Buffers a meta-built model may hold for the fast random path; any other buffer (Swin's relative
#: position index, say) is computed in __init__ and would be lost by `to_empty`.
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return _construct(name, pretrained_layout=True).eval()


def _random_extractor(name: str, points: tuple[str, ...], seed: int, transform_input: bool) -> nn.Module:
    """A randomly initialised extractor that only ever allocates and initialises the kept layers.

    Initialising a whole VGG (120M classifier weights that pruning throws away) takes seconds; building on
    the meta device, pruning, then initialising the rest takes milliseconds. Each module's draw is seeded
    by (seed, module name), so a layer gets the same weights whichever points are requested.
    """
    model = _meta_model(name)
    if any(n.rsplit(".", 1)[-1] not in _NORM_STATS for n, _ in model.named_buffers()):
        model = build_classifier(name, "random", seed).eval()  # computed buffers: take the slow, safe path
        if name in TRANSFORM_INPUT_NETWORKS:
            model.transform_input = transform_input
        return feature_extraction.create_feature_extractor(model, return_nodes={p: p for p in points})
    if name in TRANSFORM_INPUT_NETWORKS:
        model.transform_input = transform_input
    body = feature_extraction.create_feature_extractor(model, return_nodes={p: p for p in points})
    body.to_empty(device="cpu")
    seeded_init(body, seed)
    return body


def seeded_init(module: nn.Module, seed: int) -> None:
    """Kaiming-normal (fan-out) convolutions, N(0, 0.01) linear layers, unit norms, zero biases, as
    torchvision initialises its CNNs; other parameters N(0, 0.02)."""
    for name, m in module.named_modules():
        if not list(m.parameters(recurse=False)) and not list(m.buffers(recurse=False)):
            continue
        g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        with torch.no_grad():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=g)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()  # norms: weight 1, bias 0, running statistics reset
            else:
                for p in m.parameters(recurse=False):
                    nn.init.normal_(p, 0.0, 0.02, generator=g)
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor) and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                nn.init.zeros_(bias)


def build_from_config(config: Any, fold_batchnorm: bool | None = None) -> LossNetwork:
    """The loss network a TrialConfig asks for (`fold_batchnorm=False` for a trunk that will be trained)."""
    return build_loss_network(
        config.network,
        config.points,
        weights=config.weights,
        normalisation=config.normalisation,
        mode=config.mode,
        transform_input=config.transform_input,
        seed=config.seed,
        fold_batchnorm=fold_batchnorm,
    )


# ---------------------------------------------------------------------------------------- metadata


def _count_flops(module: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return int(counter.get_total_flops())


@functools.cache
def point_metadata(name: str, point: str, input_size: int = 224) -> dict[str, Any]:
    """Derived facts about one extraction point (random weights; nothing downloaded).

    FLOPs count multiply-adds as 2 (torch's FlopCounterMode convention) for one image at `input_size`.
    """
    check_network(name)
    check_points(name, (point,))
    model = _meta_model(name)  # shapes, parameter counts and FLOPs need no real weights
    if name in TRANSFORM_INPUT_NETWORKS:
        model.transform_input = False
    body = feature_extraction.create_feature_extractor(model, return_nodes={point: point})
    x = torch.zeros(1, 3, input_size, input_size, device="meta")
    try:
        with torch.no_grad():
            shape = tuple(body(x)[point].shape[1:])
        flops = _count_flops(body, x)
    except RuntimeError as exc:
        raise LossNetworkError(
            f"{name}:{point} cannot run at {input_size}x{input_size} px ({str(exc).splitlines()[0]}); "
            f"use a larger input (minimum for {name}: {min_size(name)} px)"
        ) from exc
    entry = REGISTRY.get(name)
    return {
        "network": name,
        "point": point,
        "position": entry.points.index(point) + 1 if entry and point in entry.points else None,
        "family": family_of(name),
        "batch_norm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
        "relative_depth": round(relative_depth(name, point), 4),
        "params_to_point": sum(p.numel() for p in body.parameters()),
        "gflops_to_point": round(flops / 1e9, 4),
        "input_size": input_size,
        "feature_shape": list(shape),
        "imagenet_top1": imagenet_top1(name),
        "min_size": min_size(name),
    }


def min_size(name: str) -> int:
    sizes = [m.get("min_size", (1, 1))[0] for m in weight_sets(name).values()]
    return max(sizes) if sizes else 1


def network_metadata(name: str) -> dict[str, Any]:
    entry = REGISTRY.get(name)
    return {
        "network": name,
        "family": family_of(name),
        "paper": entry is not None,
        "points": list(entry.points) if entry else [],
        "reference_indices": list(entry.reference_indices) if entry else [],
        "imagenet_top1": imagenet_top1(name),
        "min_size": min_size(name),
        "transform_input": name in TRANSFORM_INPUT_NETWORKS,
    }


def _metadata_cache_file() -> Path:
    root = Path(os.environ.get("DPL_CACHE_DIR", Path.home() / ".cache" / "dpl"))
    return root / f"point_metadata-tv{torchvision.__version__}.json"


def cached_point_metadata(name: str, point: str, input_size: int = 224) -> dict[str, Any]:
    """`point_metadata`, remembered on disk: it is deterministic for a torchvision version, and computing
    all 56 points (building and running 14 networks) takes half a minute on 2 cores."""
    path = _metadata_cache_file()
    key = f"{name}|{point}|{input_size}"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = point_metadata(name, point, input_size)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs recomputation
    return cache[key]
