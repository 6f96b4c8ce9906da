"""One form for every feature map: (B, C, H, W), whatever layout the network itself uses.

The distances (and every task) read dim 1 as channels and the rest as positions. torchvision's classifiers
hand out five forms: CNNs (B, C, H, W); Swin, and ConvNeXt after its internal permutes, (B, H, W, C); ViT's
encoder (B, T, C) tokens, T = extra tokens (the class token) + the patch grid; ViT's patch projection
flattened channels-first (B, C, T); and vectors (B, C) after global pooling. A (B, 7, 7, 768) Swin map
and a (B, 768, 7, 7) ResNet map differ only in which dimensions are positions, so the layout is never read
off the shape. It is decided per graph node by running the network's traced graph on the meta device
(shapes only, no data, no weights) at two input sizes, a and 2a, and seeing which dimensions follow the
image:

- 4-d, dims 2 and 3 follow: NCHW (kept as it is); dims 1 and 2 follow: NHWC (permuted to NCHW).
- 4-d, no dim follows (an adaptive pool's constant-size output, e.g. VGG's 7x7 `avgpool` or ConvNeXt's
  `classifier.0.permute` of a 1x1 map): the producing ops decide. The layout is carried back along the
  chain of single-input ops to the nearest node that follows the image, composing any permute/transpose on
  the way; a reshape on the way, or no such node, and the node is no point.
- 3-d, dim 1 follows: tokens (B, T, C). T = e + h*w with h = w = a/stride; the two sizes give the grid
  (T(2a) - T(a) = 3 h*w) and the number e of extra tokens. Where the extras sit (before or after the
  grid) is read from the `cat` that joined them to the patch tokens; they are dropped (the class token,
  register tokens: they describe no position), and the patch tokens are laid on their h x w grid.
- 3-d, dim 2 follows: channels-first tokens (B, C, h*w), laid on the grid the same way.
- 2-d, dim 1 constant: a vector (B, C), read as a 1x1 map.
- Anything else (the input placeholder, sizes and other integers, tuples, attention windows whose first
  dim is not the batch, 5-d partitions) cannot be a point, with the reason stated.

Every conversion is a view (permute, slice, transpose, unflatten): no copy, measured in
bench/layout_overhead.py. The layout string (`NCHW`, `NHWC`, `tokens:1+14x14`, `NCL:14x14`, `vector`) is
recorded in `point_metadata`, `dpl networks` and the MLflow param `feature_layout`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torchvision.models import feature_extraction
from torchvision.ops.misc import Permute

#: The layouts a point can have (FeatureLayout.kind).
KINDS = ("NCHW", "NHWC", "tokens", "NCL", "vector")
#: Roles of the dimensions of the two 4-d layouts (N batch, C channels, H/W positions).
_ROLES = {"NCHW": ("N", "C", "H", "W"), "NHWC": ("N", "H", "W", "C")}
#: Ops whose output reorders or regroups elements: a constant-size map behind one has no known layout.
_REGROUPING = ("reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "repeat", "roll",
               "pixel_shuffle", "channel_shuffle", "narrow", "split", "chunk", "getitem")


@dataclass(frozen=True)
class FeatureLayout:
    """How one point's output is laid out, and how to view it as (B, C, H, W).

    `lead`/`trail`: extra tokens before/after the patch grid (`tokens` only); `stride`: image pixels per
    token along each side (`tokens`/`NCL`), so the grid follows the input actually given.
    """

    kind: str
    lead: int = 0
    trail: int = 0
    stride: int = 0

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.stride, width // self.stride

    def describe(self, height: int, width: int | None = None) -> str:
        """The short string recorded everywhere, with the token grid at this input size."""
        if self.kind not in ("tokens", "NCL"):
            return self.kind
        h, w = self.grid(height, height if width is None else width)
        grid = f"{h}x{w}"
        if self.kind == "NCL":
            return f"NCL:{grid}"
        return "tokens:" + (f"{self.lead}+" if self.lead else "") + grid + (f"+{self.trail}" if self.trail else "")

    def to_nchw(self, f: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The (B, C, H, W) view of a point's output for an input of `height` x `width` pixels."""
        if self.kind == "NCHW":
            return f
        if self.kind == "NHWC":
            return f.permute(0, 3, 1, 2)
        if self.kind == "vector":
            return f[:, :, None, None]
        h, w = self.grid(height, width)
        if self.kind == "tokens":
            f = f[:, self.lead : f.shape[1] - self.trail].transpose(1, 2)
        if f.shape[2] != h * w:
            raise ValueError(f"{f.shape[2]} patch tokens do not fill the {h}x{w} grid of a {height}x{width} input")
        return f.unflatten(2, (h, w))


@dataclass(frozen=True)
class GraphLayouts:
    """Every node of a network's eval-mode graph (execution order), split into points and non-points."""

    nodes: tuple[str, ...]
    layouts: dict[str, FeatureLayout] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    #: the trace at the first size, reused to run the graph at other sizes
    traced: Trace | None = field(default=None, repr=False, compare=False)


# ------------------------------------------------------------------------------------------- tracing


@dataclass
class Trace:
    """One traced graph (torchvision's feature-extraction tracer: its node names) and each node's output,
    and optionally the FLOPs of each node, on a meta input of `batch` x 3 x size x size."""

    size: int
    batch: int
    module: fx.GraphModule
    qualname: dict[fx.Node, str]
    values: dict[str, Any]
    flops: dict[str, int]
    #: Why the run stopped early, at a node too small for what is left of the input (AlexNet's last pool
    #: at 32 px): `values` holds every node before it, so an earlier point is still measured.
    stopped: str | None = None

    @property
    def root(self) -> nn.Module:
        return self.module

    def node(self, name: str) -> fx.Node:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {q: n for n, q in self.qualname.items()}


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, count_flops: bool) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.outputs: dict[fx.Node, Any] = {}
        self.flops: dict[fx.Node, int] = {}
        self.count_flops = count_flops

    def run_node(self, n: fx.Node) -> Any:
        if not self.count_flops:
            out = super().run_node(n)
        else:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                out = super().run_node(n)
            self.flops[n] = int(counter.get_total_flops())
        self.outputs[n] = out
        return out


def trace(model: nn.Module, size: int, batch: int, count_flops: bool = False) -> Trace:
    """The graph `create_feature_extractor` would build (same tracer, same node names), run on meta."""
    tracer = feature_extraction.NodePathTracer(**feature_extraction._set_default_tracer_kwargs(None))
    model.eval()
    graph = tracer.trace(model)
    return rerun(Trace(size, batch, fx.GraphModule(tracer.root, graph), dict(tracer.node_to_qualname), {}, {}),
                 size, batch, count_flops)


def rerun(traced: Trace, size: int, batch: int, count_flops: bool = False) -> Trace:
    """The same graph run on another meta input (a network that takes any size needs no second trace)."""
    recorder, stopped = _Recorder(traced.module, count_flops), None
    with torch.no_grad():
        try:
            recorder.run(torch.zeros(batch, 3, size, size, device="meta"))
        except (RuntimeError, ValueError) as exc:  # nodes run in graph order: all before this one are kept
            stopped = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    named = traced.qualname
    return Trace(size, batch, traced.module, named,
                 {named[n]: v for n, v in recorder.outputs.items() if n in named},
                 {named[n]: f for n, f in recorder.flops.items() if n in named}, stopped)


def analyse(model_a: nn.Module, model_b: nn.Module, size: int) -> GraphLayouts:
    """Layouts of every node, from `model_a` traced at `size` and `model_b` (the same network; a second
    copy built for 2*size where the network is fixed-size) traced at 2*size."""
    a = trace(model_a, size, batch=2)
    b = trace(model_b, 2 * size, batch=3)
    for t in (a, b):
        if t.stopped:
            raise RuntimeError(f"the graph does not run at {t.size} px: {t.stopped}")
    nodes = tuple(a.qualname.values())
    missing = [n for n in nodes if n not in b.values]
    if missing:
        raise RuntimeError(f"the graphs at {size} and {2 * size} px differ (e.g. {missing[0]})")
    out = GraphLayouts(nodes, traced=a)
    for name in nodes:
        try:
            out.layouts[name] = _classify(name, a, b, out.layouts)
        except _NotAPoint as why:
            out.refused[name] = str(why)
    return out


class _NotAPoint(Exception):
    """Why a node cannot be an extraction point (its message is shown to the user)."""


def _describe_value(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return "x".join(map(str, v.shape))
    if isinstance(v, (int, float, torch.Size)):
        return "a size or flag"
    if isinstance(v, (tuple, list)):
        return f"a {type(v).__name__} of {len(v)}"
    if v is None:
        return "nothing (a check)"
    return f"a {type(v).__name__}"


def _classify(name: str, a: Trace, b: Trace, known: dict[str, FeatureLayout]) -> FeatureLayout:
    node = a.node(name)
    if node.op == "placeholder":
        raise _NotAPoint("the input image itself, not a feature map")
    if node.op == "get_attr":
        raise _NotAPoint("a weight of the network (a parameter or buffer), not a feature map")
    va, vb = a.values[name], b.values[name]
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
        raise _NotAPoint(f"gives {_describe_value(va)}, not a feature map")
    sa, sb = tuple(va.shape), tuple(vb.shape)
    if len(sa) < 2 or sa[0] != a.batch or sb[0] != b.batch:
        raise _NotAPoint(f"its output ({_describe_value(va)} for a batch of {a.batch}) has no batch dimension first")
    follows = tuple(i for i in range(1, len(sa)) if sa[i] != sb[i])
    shape = f"a (B, {', '.join(map(str, sa[1:]))}) tensor"
    if len(sa) == 2 and not follows:
        return FeatureLayout("vector")
    if len(sa) == 4 and follows == (2, 3):
        return FeatureLayout("NCHW")
    if len(sa) == 4 and follows == (1, 2):
        return FeatureLayout("NHWC")
    if len(sa) == 4 and not follows:
        return _from_producer(name, a, known, shape)
    if len(sa) == 3 and follows in ((1,), (2,)):
        return _tokens(name, a, b, sa, sb, follows[0], shape)
    raise _NotAPoint(f"gives {shape} whose image-dependent dims are {list(follows) or 'none'}, not a feature map")


def _from_producer(name: str, a: Trace, known: dict[str, FeatureLayout], shape: str) -> FeatureLayout:
    """A constant-size 4-d output: the layout of the nearest image-following node up the chain of
    single-input ops, through any permutes on the way."""
    node, perm = a.node(name), (0, 1, 2, 3)  # output dim i = dim perm[i] of the current node's output
    while True:
        target = node.target if node.op != "call_module" else type(a.root.get_submodule(node.target)).__name__
        dims = _permutation(node, a.root)
        if dims is not None:
            perm = tuple(dims[i] for i in perm)
        elif any(word in str(target).lower() for word in _REGROUPING):
            raise _NotAPoint(f"gives {shape} of constant size made by {target}: its channels cannot be told apart")
        parents = [p for p in node.all_input_nodes if isinstance(a.values.get(a.qualname.get(p, "")), torch.Tensor)]
        parent = parents[0] if parents else None
        pname = a.qualname.get(parent) if parent is not None else None
        if pname is None or a.values[pname].dim() != 4:
            raise _NotAPoint(f"gives {shape} of constant size with no feature map behind it to take its layout from")
        if pname in known and known[pname].kind in _ROLES:
            roles = _ROLES[known[pname].kind]
            mine = "".join(roles[i] for i in perm)
            if mine not in _ROLES:
                raise _NotAPoint(f"gives {shape} laid out {mine}, not a feature map")
            return FeatureLayout(mine)
        node = parent


def _permutation(node: fx.Node, root: nn.Module) -> tuple[int, ...] | None:
    """The dims of a permute/transpose node (output dim i = input dim dims[i]), else None."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        return tuple(module.dims) if isinstance(module, Permute) else None
    name = getattr(node.target, "__name__", str(node.target))
    args = list(node.args[1:]) + list(node.kwargs.values())
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return tuple(d % 4 for d in dims)
    if name in ("transpose", "swapaxes", "swapdims"):
        i, j = (d % 4 for d in args[:2])
        dims = [0, 1, 2, 3]
        dims[i], dims[j] = j, i
        return tuple(dims)
    return None


def _tokens(name: str, a: Trace, b: Trace, sa: tuple[int, ...], sb: tuple[int, ...], dim: int,
            shape: str) -> FeatureLayout:
    """(B, T, C) or (B, C, T) tokens: grid size and extra tokens from the two traces, their place from
    the `cat` that joined them to the patch tokens."""
    grew = sb[dim] - sa[dim]
    grid = grew // 3
    h = math.isqrt(grid) if grid > 0 else 0
    extra = sa[dim] - grid
    if grew % 3 or h * h != grid or extra < 0 or a.size % h:
        raise _NotAPoint(f"gives {shape} whose dim {dim} is no square patch grid plus extra tokens")
    stride = a.size // h
    if dim == 2:
        if extra:
            raise _NotAPoint(f"gives {shape}: channels-first tokens with {extra} extra tokens")
        return FeatureLayout("NCL", stride=stride)
    lead = trail = 0
    if extra:
        lead, trail = _extra_tokens(a.node(name), a, b, sa[1], grid)
    return FeatureLayout("tokens", lead=lead, trail=trail, stride=stride)


def _extra_tokens(node: fx.Node, a: Trace, b: Trace, tokens: int, grid: int) -> tuple[int, int]:
    """(before, after): the extra tokens on each side of the patch grid, read from the nearest `cat`
    along the token dim, among the node's ancestors, that made a sequence of this length."""
    seen, queue = set(), [node]
    while queue:
        n = queue.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if getattr(n.target, "__name__", "") == "cat" and _cat_dim(n) == 1:
            parts = n.args[0]
            qa = [a.values[a.qualname[p]] for p in parts]
            qb = [b.values[a.qualname[p]] for p in parts]
            sizes = [t.shape[1] for t in qa]
            if sum(sizes) == tokens:
                growing = [i for i, (ta, tb) in enumerate(zip(qa, qb)) if ta.shape[1] != tb.shape[1]]
                if len(growing) == 1 and sizes[growing[0]] == grid:
                    i = growing[0]
                    return sum(sizes[:i]), sum(sizes[i + 1 :])
        queue.extend(n.all_input_nodes)
    extra = tokens - grid
    raise _NotAPoint(f"has {extra} extra token(s) besides its {grid} patch tokens, and where they sit is not known")


def _cat_dim(node: fx.Node) -> int:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim % 3 if isinstance(dim, int) else -1
