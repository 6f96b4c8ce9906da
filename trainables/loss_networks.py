"""Loss networks: frozen, pruned feature extractors of any torchvision classifier, one (B, C, H, W) map per point.

Which networks and points a study can name is data (`trainables.network_registry`: the paper's 14 x 4,
the extended modern set, any other node of any classifier's FX graph). Points are
`torchvision.models.feature_extraction` node names, so `create_feature_extractor` prunes the graph after
the deepest requested node: an early point never pays for the later layers. Every point's output is put in
(B, C, H, W) form by the layout that `trainables.feature_layout` reads off the traced graph (Swin's NHWC,
ViT's tokens, vectors), so distances and tasks need not know the network.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import os
import threading
import urllib.error
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction

from trainables import feature_layout
from trainables.config import resize_setting
from trainables.feature_layout import FeatureLayout, GraphLayouts
from trainables.network_registry import (  # noqa: F401 - the registry's names are part of this module's API
    EXTENDED,
    NETWORK_GROUPS,
    PAPER_WEIGHTS,
    REGISTRY,
    LossNetworkError,
    NetworkEntry,
    check_network,
    classification_models,
    default_points,
    entry,
    expand_networks,
    family_of,
    imagenet_top1,
    resolve_points,
    weight_sets,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Networks whose forward() re-scales its input when built with Google's weights.
TRANSFORM_INPUT_NETWORKS = ("googlenet", "inception_v3")
#: Networks built for one input size, by family, with their builder's keyword for it: ViT asserts the image
#: size (its position embedding has one entry per patch), MaxViT sizes its attention partitions at
#: construction. Their weight sets fix the size (`min_size` of torchvision's metadata: 224, 384 or 518 for
#: ViT's SWAG sets); random weights use the builder's default, 224.
FIXED_SIZE_KEYWORD = {"vit": "image_size", "maxvit": "input_size"}
DEFAULT_FIXED_SIZE = 224
RESIZE_HINT = "pass --resize auto (`resize: auto` in a study) to resize the input to {size} px before the network"
#: The families of the paper's networks. Their graphs up to any point are convolutions, norms, pools,
#: concatenations and additions, so they run unchanged on channels_last activations (tested against NCHW at
#: every point); and torchvision initialises them as `seeded_init` does, so their random weights take the
#: fast meta-device path. Others (ShuffleNet's channel shuffle and ViT/Swin reshapes `.view` activations)
#: stay NCHW under "auto" and are built with torchvision's own initialisation.
PAPER_FAMILIES = frozenset({e.family for e in REGISTRY.values()})
CHANNELS_LAST_FAMILIES = PAPER_FAMILIES
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


# ---------------------------------------------------------------------------------------- input size


def fixed_input_size(name: str, weights: str = "random") -> int | None:
    """The one input side a fixed-size network (ViT, MaxViT) takes with these weights; None for the others."""
    if family_of(name) not in FIXED_SIZE_KEYWORD:
        return None
    enum_name = weights_enum_name(name, weights)
    if enum_name is not None:
        return int(weight_sets(name)[enum_name]["min_size"][0])
    if weights != "random" and family_of(name) == "vit":
        return _vit_file_size(name, weights)
    return DEFAULT_FIXED_SIZE


def _vit_file_size(name: str, path: str) -> int:
    """The image side a ViT state dict was trained at: its position embedding has 1 + (side/patch)^2 rows."""
    state = _load_file_state_dict(path, mmap=True)
    rows = state.get("encoder.pos_embedding")
    if rows is None:
        return DEFAULT_FIXED_SIZE  # the load itself will name what is missing
    return math.isqrt(int(rows.shape[1]) - 1) * int(name.rsplit("_", 1)[1])


def network_input_size(name: str, weights: str, size: int | tuple[int, int], resize: str = "off") -> int:
    """The side the network sees for a `size` px (or (height, width)) input under `resize`; a one-line
    error, before anything is built or run, when a fixed-size network would get another size."""
    resize = resize_setting(resize)
    fixed = fixed_input_size(name, weights)
    height, width = (size, size) if isinstance(size, int) else size
    if resize != "off":
        height = width = fixed or height if resize == "auto" else int(resize)
    if fixed is not None and (height, width) != (fixed, fixed):
        raise LossNetworkError(
            f"{name} with weights {weights} takes {fixed}x{fixed} px input only, not {height}x{width}: "
            f"{RESIZE_HINT.format(size=fixed) if resize != 'auto' else f'give {fixed} px input'}"
        )
    return height


def min_size(name: str, weights: str | None = None) -> int:
    """The smallest input side torchvision states for these weights (for any of its weight sets: the
    smallest of them); 1 when it states none."""
    sets = weight_sets(name)
    if weights is not None and weights_enum_name(name, weights) is not None:
        sets = {k: v for k, v in sets.items() if k == weights_enum_name(name, weights)}
    sizes = [m.get("min_size", (1, 1))[0] for m in sets.values()]
    return min(sizes) if sizes else 1


# ------------------------------------------------------------------------------------------ weights


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


def _load_file_state_dict(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise LossNetworkError(f"weights file {p} does not exist: give a state-dict file, imagenet or random")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
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


_META_LOCK = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter created inside goes to the meta device as it is registered; everything else (the
    shape arithmetic of a builder, buffers such as Swin's position index) stays on the CPU.

    `with torch.device("meta")` puts every tensor there, and builders that compute with tensors break:
    RegNet's widths come from `torch.pow(...).tolist()` ("Cannot copy out of meta tensor"). Parameters are
    what costs time and memory to initialise; the init code that follows in `__init__` runs on meta.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    with _META_LOCK:
        nn.Module.register_parameter = register  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.register_parameter = original  # type: ignore[method-assign]


def _construct(name: str, pretrained_layout: bool, size: int | None = None) -> nn.Module:
    """torchvision's builder without weights; `size` for a fixed-size network (FIXED_SIZE_KEYWORD)."""
    kwargs: dict[str, Any] = {}
    if name in TRANSFORM_INPUT_NETWORKS:
        # Auxiliary heads are never extraction points; building them only costs memory and time.
        kwargs.update(aux_logits=False, init_weights=not pretrained_layout)
    keyword = FIXED_SIZE_KEYWORD.get(family_of(name))
    if keyword is not None and size is not None:
        kwargs[keyword] = size if keyword == "image_size" else (size, size)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def build_classifier(name: str, weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """The full torchvision model with the requested weights (seeded init for `random`); a fixed-size
    network is built for the size its weights were trained at."""
    check_network(name)
    enum_name = weights_enum_name(name, weights)
    size = fixed_input_size(name, weights)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _construct(name, pretrained_layout=False, size=size)
    state = _load_file_state_dict(weights) if enum_name is None else _download_state_dict(name, enum_name)
    kept = OrderedDict((k, v) for k, v in state.items() if not k.startswith(("AuxLogits.", "aux1.", "aux2.")))
    if hasattr(state, "_metadata"):  # the module versions `state_dict()` records: MNASNet refuses a dict without
        kept._metadata = state._metadata  # type: ignore[attr-defined]
    state = kept
    # Loaded weights replace every parameter, so skip the random init (seconds for VGG's classifier).
    with _parameters_on_meta():
        model = _construct(name, pretrained_layout=True, size=size)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise LossNetworkError(f"weights {weights} do not fit {name}: {first}") from exc
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise LossNetworkError(f"weights {weights} for {name} lack {', '.join(left[:3])}; give a complete state dict")
    return model


def _meta_model(name: str, size: int | None = None) -> nn.Module:
    """The network on the meta device (shapes only), for tracing and counting; `size` for fixed-size ones."""
    with _parameters_on_meta():
        model = _construct(name, pretrained_layout=True, size=size)
    return model.to("meta").eval()


# ------------------------------------------------------------------------------------------- points


@functools.cache
def graph_layouts(name: str) -> GraphLayouts:
    """Every node of `name`'s eval-mode graph and, for those that can be points, their layout
    (`trainables.feature_layout`: traced on meta at 224 and 448 px, a second copy built for 448 where the
    network is fixed-size). Layouts do not depend on the weights."""
    check_network(name)
    size = DEFAULT_FIXED_SIZE
    model = _meta_model(name, size)
    other = _meta_model(name, 2 * size) if family_of(name) in FIXED_SIZE_KEYWORD else model
    if name in TRANSFORM_INPUT_NETWORKS:
        model.transform_input = other.transform_input = False
    return feature_layout.analyse(model, other, size)


def graph_nodes(name: str) -> tuple[str, ...]:
    """The eval-mode FX graph node names of `name`, in execution order (`get_graph_node_names`' list)."""
    return graph_layouts(name).nodes


def point_nodes(name: str) -> dict[str, FeatureLayout]:
    """The nodes that can be extraction points, with their layouts, in execution order."""
    return graph_layouts(name).layouts


def check_points(name: str, points: tuple[str, ...]) -> tuple[str, ...]:
    """`points` if each names a node (or module prefix) whose output is a feature map, else one line."""
    if not points:
        raise LossNetworkError("no extraction point given: pass --layer NODE (see `dpl networks --nodes NETWORK`)")
    nodes = graph_nodes(name)
    for p in points:
        node = resolve_node(name, p)
        if node is None:
            prefixes = {n.rsplit(".", k)[0] for n in nodes for k in range(1, n.count(".") + 1)}
            close = difflib.get_close_matches(p, sorted(prefixes) + list(point_nodes(name)), n=6, cutoff=0.4)
            suggestion = ", ".join(close) if close else ", ".join(default_points(name) if entry(name) else nodes[1:9])
            raise LossNetworkError(
                f"{name} has no node {p!r}; close valid nodes: {suggestion} (all: `dpl networks --nodes {name}`)"
            )
        if node not in point_nodes(name):
            shown = p if node == p else f"{p!r} (its last node {node})"
            raise LossNetworkError(
                f"{name} node {shown} cannot be a point: {graph_layouts(name).refused[node]}; pick a feature map "
                f"(`dpl networks --nodes {name}` lists them)"
            )
    return points


def point_layout(name: str, point: str) -> FeatureLayout:
    """The layout of a (checked) point's output."""
    return point_nodes(name)[resolve_node(name, point)]  # type: ignore[index]


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
    """A frozen feature extractor: image in [0, 1] -> {point: (B, C, H, W) feature map}.

    Each point's output is viewed in (B, C, H, W) form by its `layouts` entry (NHWC permuted, tokens on
    their grid without the class token, vectors as 1x1 maps: `trainables.feature_layout`). `resize_to`
    resizes the input first (bilinear, antialiased); `fixed_size` is the one side a fixed-size network takes,
    checked before the network runs. `mode='eval'` pins BatchNorm/Dropout to inference behaviour even when a
    parent module calls `.train()` (the reference implementation let its trainers flip it, a confound);
    `mode='train'` follows the parent, to reproduce that behaviour on purpose.
    """

    def __init__(
        self, name: str, points: tuple[str, ...], body: nn.Module, normalisation: str, mode: str,
        channels_last: bool = False, layouts: dict[str, FeatureLayout] | None = None,
        resize_to: int | None = None, fixed_size: int | None = None,
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
        self.layouts = layouts or {p: FeatureLayout("NCHW") for p in points}
        self.resize_to = resize_to
        self.fixed_size = fixed_size
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
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = nn.functional.interpolate(x, size=(self.resize_to,) * 2, mode="bilinear", align_corners=False,
                                          antialias=True)
        height, width = x.shape[-2:]
        if self.fixed_size is not None and (height, width) != (self.fixed_size, self.fixed_size):
            raise LossNetworkError(
                f"{self.name} takes {self.fixed_size}x{self.fixed_size} px input only, not {height}x{width}: "
                + RESIZE_HINT.format(size=self.fixed_size)
            )
        if self.normalisation == "imagenet":
            x = (x - self.mean) / self.std
        out = self.body(x)
        return {p: self.layouts[p].to_nchw(out[p], height, width) for p in self.points}


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
    resize: str = "off",
) -> LossNetwork:
    """Frozen extractor of `points` of `name`, pruned after the deepest one, each point in (B, C, H, W).

    `memory_format`: "auto" (channels_last for the paper's convolutional families, NCHW otherwise),
    "channels_last" or "contiguous". `fold_batchnorm` (default: when `mode="eval"`): fold each eval-mode
    BatchNorm into the convolution before it; same function, one memory pass less per BN layer. Pass
    False when the trunk itself will be trained (the fold changes its parametrisation). `resize`: `off`,
    `auto` (a fixed-size network's own side) or a side in pixels the input is resized to.
    """
    check_network(name)
    pts = check_points(name, resolve_points(name, points))
    resize = resize_setting(resize)
    fixed = fixed_input_size(name, weights)
    resize_to = int(resize) if resize.isdigit() else fixed if resize == "auto" else None
    if fixed is not None and resize_to not in (None, fixed):
        network_input_size(name, weights, resize_to, resize)  # the one-line error, before building anything
    if weights == "random":
        body = _random_extractor(name, pts, seed, uses_transform_input(name, weights, transform_input))
    else:
        model = build_classifier(name, weights, seed)
        if name in TRANSFORM_INPUT_NETWORKS:
            model.transform_input = uses_transform_input(name, weights, transform_input)
        model.eval()
        body = extractor(model, pts)
    if mode == "eval" if fold_batchnorm is None else fold_batchnorm:
        body = fold_batchnorms(body)
    return LossNetwork(name, pts, body, normalisation, mode, channels_last=uses_channels_last(name, memory_format),
                       layouts={p: point_layout(name, p) for p in pts}, resize_to=resize_to, fixed_size=fixed)


def extractor(model: nn.Module, points: tuple[str, ...]) -> feature_extraction.DualGraphModule:
    """torchvision's feature extractor of `points`, pruned after the deepest one, shape asserts included.

    `create_feature_extractor` keeps every `torch._assert` node (FX treats it as a side effect), and with it
    everything it reads: ViT asserts each encoder block's input rank, so a point in block 3 paid for all 12
    blocks. The asserts check shapes the input-size check (`network_input_size`) has already fixed; without
    them dead-code elimination prunes as for any other network.
    """
    body = feature_extraction.create_feature_extractor(model, return_nodes={p: p for p in points})
    asserts = [n for g in (body.train_graph, body.eval_graph) for n in g.nodes
               if n.op == "call_function" and n.target is torch._assert]
    if not asserts:
        return body
    for node in asserts:
        node.graph.erase_node(node)
    for graph in (body.train_graph, body.eval_graph):
        graph.eliminate_dead_code()
    pruned = feature_extraction.DualGraphModule(model, body.train_graph, body.eval_graph, type(body).__name__)
    return pruned.train(body.training)


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


def _random_extractor(name: str, points: tuple[str, ...], seed: int, transform_input: bool) -> nn.Module:
    """A randomly initialised extractor.

    The paper's families: only the kept layers are ever allocated and initialised (`seeded_init`, the
    scheme torchvision uses for them). Initialising a whole VGG (120M classifier weights that pruning
    throws away) takes seconds; building on the meta device, pruning, then initialising the rest takes
    milliseconds. Each module's draw is seeded by (seed, module name), so a layer gets the same weights
    whichever points are requested. Other families (LayerScale, class tokens, position tables, computed
    buffers) get torchvision's own initialisation, seeded, of the whole network.
    """
    if family_of(name) not in PAPER_FAMILIES:
        model = build_classifier(name, "random", seed).eval()
        return extractor(model, points)
    model = _meta_model(name)
    if name in TRANSFORM_INPUT_NETWORKS:
        model.transform_input = transform_input
    body = extractor(model, points)
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
        resize=getattr(config, "resize", "off"),
    )


# ---------------------------------------------------------------------------------------- metadata


@functools.lru_cache(maxsize=8)
def _sized_run(name: str, size: int) -> feature_layout.Trace:
    """The whole graph run once on a meta image of `size` px, with each node's output and FLOPs (torch's
    FlopCounterMode: 2 per multiply-add, convolutions and matmuls); a fixed-size network is built for it."""
    layouts = graph_layouts(name)
    if family_of(name) not in FIXED_SIZE_KEYWORD or size == layouts.traced.size:
        return feature_layout.rerun(layouts.traced, size, 1, count_flops=True)
    try:  # shapes, params and FLOPs need no weights
        model = _meta_model(name, size)
    except (AssertionError, ValueError) as exc:
        raise LossNetworkError(f"{name} cannot be built for {size} px input ({exc}); use 224") from exc
    return feature_layout.trace(model, size, 1, count_flops=True)


def _cost_to(run: feature_layout.Trace, node_name: str) -> tuple[int, int]:
    """(parameters, FLOPs) of the graph pruned after `node_name`: the node and its ancestors, which is what
    dead-code elimination keeps once the shape asserts are gone (`extractor`)."""
    seen, stack, flops, params = set(), [run.node(node_name)], 0, {}
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        flops += run.flops.get(run.qualname.get(node, ""), 0)
        if node.op == "call_module":
            params.update({id(p): p.numel() for p in run.module.get_submodule(node.target).parameters()})
        elif node.op == "get_attr":
            attr = functools.reduce(getattr, node.target.split("."), run.module)
            if isinstance(attr, nn.Parameter):
                params[id(attr)] = attr.numel()
        stack.extend(node.all_input_nodes)
    return sum(params.values()), flops


@functools.cache
def point_metadata(name: str, point: str, input_size: int = 224) -> dict[str, Any]:
    """Derived facts about one extraction point (random weights; nothing downloaded).

    FLOPs count multiply-adds as 2 (torch's FlopCounterMode convention) for one image at `input_size`
    (a fixed-size network is built for that size). `feature_shape` is (C, H, W) of the map the distances
    see, `feature_layout` how the network itself lays it out (`trainables.feature_layout`).
    """
    check_network(name)
    check_points(name, (point,))
    layout = point_layout(name, point)
    try:
        run = _sized_run(name, input_size)
        if resolve_node(name, point) not in run.values:
            raise RuntimeError(run.stopped or "the point was not reached")
        params, flops = _cost_to(run, resolve_node(name, point))  # type: ignore[arg-type]
        shape = tuple(layout.to_nchw(run.values[resolve_node(name, point)], input_size, input_size).shape[1:])
    except (RuntimeError, ValueError) as exc:
        raise LossNetworkError(
            f"{name}:{point} cannot run at {input_size}x{input_size} px ({str(exc).splitlines()[0]}); "
            f"use a larger input (minimum for {name}: {min_size(name)} px)"
        ) from exc
    row = entry(name)
    return {
        "network": name,
        "point": point,
        "position": row.points.index(point) + 1 if row and point in row.points else None,
        "family": family_of(name),
        "batch_norm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in run.module.modules()),
        "relative_depth": round(relative_depth(name, point), 4),
        "params_to_point": params,
        "gflops_to_point": round(flops / 1e9, 4),
        "input_size": input_size,
        "feature_shape": list(shape),
        "feature_layout": layout.describe(input_size),
        "imagenet_top1": imagenet_top1(name),
        "min_size": min_size(name),
    }


def network_metadata(name: str) -> dict[str, Any]:
    row = entry(name)
    return {
        "network": name,
        "family": family_of(name),
        "paper": name in REGISTRY,
        "extended": name in EXTENDED,
        "points": list(row.points) if row else [],
        "reference_indices": list(row.reference_indices) if row and row.reference_indices else [],
        "imagenet_top1": imagenet_top1(name),
        "min_size": min_size(name),
        "fixed_size": fixed_input_size(name, "random"),
        "transform_input": name in TRANSFORM_INPUT_NETWORKS,
    }


#: Part of the metadata cache's file name: bumped when what `point_metadata` returns changes (2: the
#: (C, H, W) `feature_shape` of every layout and `feature_layout`), so no stale entry is ever read.
METADATA_VERSION = 2


def _metadata_cache_file() -> Path:
    root = Path(os.environ.get("DPL_CACHE_DIR", Path.home() / ".cache" / "dpl"))
    return root / f"point_metadata-v{METADATA_VERSION}-tv{torchvision.__version__}.json"


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
