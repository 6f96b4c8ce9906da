"""Loss-network forward throughput vs a matmul on the same machine, and our distance vs the `lpips` package.

Every figure is a ratio of two things measured side by side in this one run: each case is timed in rounds
that interleave it call by call with its reference (a square float32 matmul, or the `lpips` package on the
same inputs), and the fastest call of each is kept (the one least disturbed by other processes).

Sections (each prints a table; at the end one line per target: PASS, MISS (a speed target not met) or
FAIL (a correctness check failed: exit status 1)):

1. networks: img/s and GFLOP/s at each of the paper's 4 points (FLOPs from
   `trainables.loss_networks.point_metadata`, 2 per multiply-add) vs matmul GFLOP/s; the cost of each
   point as a share of the deepest point's cost next to its FLOP share; each point's extractor vs a
   hand-made nn.Sequential of exactly the layers up to it (an early point must not pay for later layers);
   one extractor of all 4 points vs the deepest alone (the prefix is shared).
   Targets: vgg16 features.29 >= 0.8 x matmul GFLOP/s; cost share <= 1.5 x FLOP share at every point;
   extractor parameters == those of its plain prefix, and time <= 1.15 x (timing noise here: +-10%).
2. probes: the library's layout (channels_last weights, NCHW input) against NCHW (its layout before)
   and against other options (torch.inference_mode, channels_last input too); --grad adds
   forward+backward to the input.
3. lpips: `PerceptualDistance(..., "lpips")` vs `lpips.LPIPS` (alex, squeeze, vgg; baseline lpips=False
   and lin) at lpips' own 5/7 layers with lpips' random trunk copied into a torchvision state dict (as
   tests/test_distances.py does). Outputs are checked equal (per layer and total) before anything is
   timed; a mismatch is a FAIL and the exit status is 1. Target: lpips time / our time >= 1.2. Ours is
   timed as the library builds it and built NCHW (`memory_format="contiguous"`).
4. profile: torch.profiler top ops of vgg16 up to features.29 (what limits it).

    python bench/lossnet_throughput.py                 # default (~3 min on 2 CPU cores)
    python bench/lossnet_throughput.py --quick         # vgg16 + lpips alex only (~50 s)
    python bench/lossnet_throughput.py --networks all  # the paper's 14 networks
    python bench/lossnet_throughput.py --memory-format contiguous --skip probes lpips profile   # section 1, NCHW
    python bench/lossnet_throughput.py --device cuda --batch-size 64 --autocast bf16
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", category=UserWarning)  # lpips' torchvision `pretrained=` deprecation

import torch  # noqa: E402

from trainables import loss_networks as ln  # noqa: E402
from trainables.distances import PerceptualDistance  # noqa: E402

DEFAULT_NETWORKS = ("alexnet", "vgg16", "squeezenet1_1", "resnet50", "efficientnet_b0")
QUICK_NETWORKS = ("vgg16",)
PROBE_CASES = ("vgg16:features.29", "resnet50:layer4", "squeezenet1_1:features.12")
QUICK_PROBES = ("vgg16:features.29",)
#: lpips' slices end at these torchvision `features` indices (lpips/pretrained_networks.py).
LPIPS_POINTS = {
    "alex": ("alexnet", ("features.1", "features.4", "features.7", "features.9", "features.11")),
    "squeeze": ("squeezenet1_1", ("features.1", "features.4", "features.7", "features.9", "features.10",
                                  "features.11", "features.12")),
    "vgg": ("vgg16", ("features.3", "features.8", "features.15", "features.22", "features.29")),
}
TARGET_MATMUL_RATIO = 0.8
TARGET_SHARE_RATIO = 1.5
#: Timing noise between repeated runs on the shared 2-core machine was about +-10%.
TARGET_PREFIX_RATIO = 1.15
TARGET_LPIPS_SPEEDUP = 1.2


# ------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
                 min_time: float) -> dict[str, float]:
    """Fastest single call (seconds) of each fn, the calls interleaved one by one (A B C A B C ...) for at least
    `rounds` calls each and about `rounds x min_time` seconds per fn, after one warm-up call each. On a machine
    shared with other processes the fastest call is the one least disturbed by them, and interleaving
    exposes every fn to the same load."""
    for fn in fns.values():
        fn()
    sync(device)
    best = {k: float("inf") for k in fns}
    budget = rounds * min_time * len(fns)
    start, n = time.perf_counter(), 0
    while n < rounds or time.perf_counter() - start < budget:
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
        n += 1
    return best


def matmul_fn(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], Any], float]:
    """A square n x n matmul and its FLOPs (2 n^3)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def autocast_ctx(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    if autocast == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[autocast])


def forward_fn(net: torch.nn.Module, x: torch.Tensor, device: torch.device, autocast: str = "off",
               inference: bool = False) -> Callable[[], Any]:
    grad_ctx = torch.inference_mode if inference else torch.no_grad

    def run() -> Any:
        with grad_ctx(), autocast_ctx(device, autocast):
            return net(x)

    return run


def load_line() -> str:
    try:
        return "load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average: unknown"


# ----------------------------------------------------------------------------------------- networks


_RESNET_PREFIX = {"relu": 3, "layer1": 5, "layer2": 6, "layer3": 7, "layer4": 8}


def plain_prefix(network: str, point: str, device: torch.device) -> torch.nn.Module | None:
    """The layers up to `point` as a hand-made nn.Sequential (normalisation first; BatchNorms folded as the
    library folds them), or None where the network has no sequential spine. The reference for "an early
    point pays only for its own prefix"."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.get_model(network, weights=None).eval()
    if (point.startswith("features.") and point.split(".", 1)[1].isdigit()
            and isinstance(getattr(model, "features", None), torch.nn.Sequential)):
        layers = list(model.features)[: int(point.split(".")[1]) + 1]
    elif point in _RESNET_PREFIX and hasattr(model, "layer4"):
        spine = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4]
        layers = spine[: _RESNET_PREFIX[point]]
    else:
        return None
    body = torch.nn.Sequential(*layers).to_empty(device=device)
    ln.seeded_init(body, 0)
    mean = torch.tensor(ln.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ln.IMAGENET_STD, device=device).view(1, 3, 1, 1)

    class Prefix(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body((x - mean) / std)

    # the same layers as the library runs them: Conv->BN folded (frozen, eval mode)
    return ln.fold_batchnorms(torch.fx.symbolic_trace(Prefix()))


def network_rows(network: str, batch: int, size: int, device: torch.device, rounds: int, min_time: float,
                 matmul_n: int, autocast: str = "off", memory_format: str = "auto",
                 prefix_check: bool = True, matmul_dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """One row per paper point (+ an `all 4` row), each timed side by side with the matmul reference
    (float32; under autocast, a matmul in the autocast dtype unless `matmul_dtype` says otherwise)."""
    points = ln.default_points(network)
    flops = {p: ln.point_metadata(network, p, size)["gflops_to_point"] for p in points}
    x = torch.rand(batch, 3, size, size, device=device)  # NCHW input, as the tasks pass it
    fmt = torch.channels_last if ln.uses_channels_last(network, memory_format) else torch.contiguous_format

    def build(pts: tuple[str, ...]) -> torch.nn.Module:
        return ln.build_loss_network(network, pts, weights="random", memory_format=memory_format).to(device)

    nets = {p: build((p,)) for p in points}
    fns: dict[str, Callable[[], Any]] = {p: forward_fn(nets[p], x, device, autocast) for p in points}
    fns["all 4"] = forward_fn(build(points), x, device, autocast)
    same_params: dict[str, bool] = {}
    if prefix_check:
        for p in points:
            ref = plain_prefix(network, p, device)
            if ref is not None:
                fns[f"prefix {p}"] = forward_fn(ref.to(memory_format=fmt), x, device, autocast)
                count = lambda m: sum(t.numel() for t in m.parameters())  # noqa: E731
                same_params[p] = count(nets[p]) == count(ref)
    if matmul_dtype is None:
        matmul_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast, torch.float32)
    mm, mm_flops = matmul_fn(matmul_n, device, matmul_dtype)
    fns["matmul"] = mm
    best = side_by_side(fns, device, rounds, min_time)
    mm_gflops = mm_flops / best["matmul"] / 1e9
    deepest = points[-1]
    rows = []
    for p in (*points, "all 4"):
        gf = flops[deepest] if p == "all 4" else flops[p]
        t = best[p]
        rows.append({
            "network": network, "point": p, "gflop_img": gf, "ms_batch": t * 1e3, "img_s": batch / t,
            "gflop_s": gf * batch / t, "matmul_gflop_s": mm_gflops, "ratio": gf * batch / t / mm_gflops,
            "cost_share": t / best[deepest], "flop_share": gf / flops[deepest],
            "sum_separate_ms": sum(best[q] for q in points) * 1e3,
            "vs_prefix": t / best[f"prefix {p}"] if f"prefix {p}" in best else float("nan"),
            "same_params": same_params.get(p),
        })
    return rows


def print_network_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'network':<16}{'point':<22}{'GFLOP/img':>10}{'ms/batch':>10}{'img/s':>9}{'GFLOP/s':>9}"
          f"{'matmul':>9}{'ratio':>7}{'cost sh':>9}{'FLOP sh':>9}{'cost/FLOP':>10}{'vs prefix':>10}")
    for r in rows:
        share = r["cost_share"] / r["flop_share"]
        print(f"{r['network']:<16}{r['point']:<22}{r['gflop_img']:>10.3f}{r['ms_batch']:>10.1f}{r['img_s']:>9.1f}"
              f"{r['gflop_s']:>9.1f}{r['matmul_gflop_s']:>9.1f}{r['ratio']:>7.2f}{r['cost_share']:>9.3f}"
              f"{r['flop_share']:>9.3f}{share:>10.2f}{r['vs_prefix']:>10.2f}")


# ------------------------------------------------------------------------------------------- probes


def probe_rows(cases: tuple[str, ...], batch: int, size: int, device: torch.device, rounds: int,
               min_time: float, grad: bool = False) -> list[dict[str, Any]]:
    """NCHW no_grad (the layout before) vs the library (channels_last weights, NCHW input) vs other
    options, same inputs, side by side; with `grad`, also forward + backward to the input."""
    rows = []
    for case in cases:
        network, point = case.split(":", 1)
        net = ln.build_loss_network(network, (point,), weights="random", memory_format="contiguous").to(device)
        net_cl = ln.build_loss_network(network, (point,), weights="random", memory_format="channels_last").to(device)
        x = torch.rand(batch, 3, size, size, device=device)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = net(x)[point]
            got = net_cl(x)[point]
        err = float(((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
        fns = {
            "no_grad NCHW": forward_fn(net, x, device),
            "inference_mode NCHW": forward_fn(net, x, device, inference=True),
            "library (cl weights)": forward_fn(net_cl, x, device),
            "cl weights + cl input": forward_fn(net_cl, x_cl, device),
        }
        if grad:
            fns["fwd+bwd NCHW"] = _backward_fn(net, x, point)
            fns["fwd+bwd library"] = _backward_fn(net_cl, x, point)
        best = side_by_side(fns, device, rounds, min_time)
        for k, t in best.items():
            base = best["fwd+bwd NCHW"] if k.startswith("fwd+bwd") else best["no_grad NCHW"]
            rows.append({"case": case, "variant": k, "ms_batch": t * 1e3, "speedup": base / t,
                         "max_rel_err": 0.0 if "NCHW" in k else err})
    return rows


def _backward_fn(net: torch.nn.Module, x: torch.Tensor, point: str) -> Callable[[], Any]:
    xg = x.clone().requires_grad_(True)

    def run() -> Any:
        xg.grad = None
        net(xg)[point].square().mean().backward()

    return run


# -------------------------------------------------------------------------------------------- lpips


def lpips_trunk_as_torchvision(ref: Any, tv_name: str, path: Path) -> Path:
    """A full torchvision state dict whose trunk is lpips' (lpips' slices keep the `features` indices)."""
    import torchvision

    state = torchvision.models.get_model(tv_name, weights=None).state_dict()
    for key, value in ref.net.state_dict().items():  # slice3.7.weight -> features.7.weight
        state["features." + key.split(".", 1)[1]] = value
    torch.save(state, path)
    return path


def lpips_pair(net_name: str, use_lin: bool, workdir: Path, device: torch.device,
               memory_format: str = "auto") -> tuple[Any, PerceptualDistance]:
    """(lpips.LPIPS, our PerceptualDistance) with the same random trunk and the same lin weights."""
    import lpips

    tv_name, points = LPIPS_POINTS[net_name]
    torch.manual_seed(0)
    ref = lpips.LPIPS(net=net_name, pnet_rand=True, lpips=use_lin, verbose=False).eval()
    weights = lpips_trunk_as_torchvision(ref, tv_name, workdir / f"{tv_name}.pth")
    net = ln.build_loss_network(tv_name, points, weights=str(weights), memory_format=memory_format)
    ours = PerceptualDistance(net, "lpips")
    if use_lin:
        ours.load_lpips_lin(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net_name}.pth")
    return ref.to(device), ours.to(device).eval()


def check_equal(ref: Any, ours: PerceptualDistance, a: torch.Tensor, b: torch.Tensor, rtol: float,
                atol: float) -> tuple[bool, float]:
    """Per-layer and total outputs equal within tolerance; returns (ok, max relative difference)."""
    points = ours.net.points
    with torch.no_grad():
        total, per_layer = ref(a, b, retPerLayer=True, normalize=True)
        got = ours(a, b)
    pairs = [(got[p], e.flatten()) for p, e in zip(points, per_layer)] + [(got["total"], total.flatten())]
    ok = all(torch.allclose(g.float(), e.float(), rtol=rtol, atol=atol) for g, e in pairs)
    rel = max(float(((g - e).abs() / e.abs().clamp_min(1e-12)).max()) for g, e in pairs)
    return ok, rel


def lpips_rows(nets: tuple[str, ...], batch: int, size: int, device: torch.device, rounds: int,
               min_time: float, grad: bool) -> tuple[list[dict[str, Any]], bool]:
    """lpips vs ours as the library builds it (channels_last; the fixed input of fwd+bwd without a graph),
    and vs ours built NCHW (`memory_format="contiguous"`, the layout before channels_last became the default)."""
    rows, all_equal = [], True
    g = torch.Generator().manual_seed(0)
    a = torch.rand(batch, 3, size, size, generator=g).to(device)
    b = torch.rand(batch, 3, size, size, generator=g).to(device)
    with tempfile.TemporaryDirectory(prefix="dpl-bench-lpips-") as tmp:
        for net_name in nets:
            for use_lin in (False, True):
                ref, ours = lpips_pair(net_name, use_lin, Path(tmp), device)
                ok, rel = check_equal(ref, ours, a, b, rtol=1e-4, atol=1e-6)
                nchw = lpips_pair(net_name, use_lin, Path(tmp), device, memory_format="contiguous")[1]
                config = f"{net_name} {'lin' if use_lin else 'baseline'}"
                row: dict[str, Any] = {"config": config, "layers": len(ours.net.points), "equal": ok,
                                       "max_rel_diff": rel}
                all_equal &= ok
                if not ok:
                    print(f"FAIL  {config}: our distance differs from lpips (max rel diff {rel:.2e}); not timed",
                          flush=True)
                    rows.append(row)
                    continue
                modes = [("no_grad", False)] + ([("fwd+bwd", True)] if grad else [])
                for mode, with_grad in modes:
                    fns = {"lpips": _distance_fn(lambda x0, x1: ref(x0, x1, normalize=True), a, b, with_grad),
                           "ours": _distance_fn(lambda x0, x1: ours(x0, x1)["total"], a, b, with_grad),
                           "nchw": _distance_fn(lambda x0, x1: nchw(x0, x1)["total"], a, b, with_grad)}
                    best = side_by_side(fns, device, rounds, min_time)
                    rows.append({**row, "mode": mode, "lpips_ms": best["lpips"] * 1e3, "ours_ms": best["ours"] * 1e3,
                                 "speedup": best["lpips"] / best["ours"], "nchw_ms": best["nchw"] * 1e3,
                                 "speedup_nchw": best["lpips"] / best["nchw"]})
    return rows, all_equal


def _distance_fn(dist: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                 with_grad: bool) -> Callable[[], Any]:
    if not with_grad:
        def run() -> Any:
            with torch.no_grad():
                return dist(a, b)
        return run
    x0 = a.clone().requires_grad_(True)

    def run_grad() -> Any:
        x0.grad = None
        d = dist(x0, b)
        d.sum().backward()
        return d

    return run_grad


def print_lpips_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'config':<18}{'layers':>7}{'equal (max rel diff)':>22}{'mode':>9}{'lpips ms':>10}{'ours ms':>9}"
          f"{'speedup':>9}{'NCHW ms':>9}{'spd NCHW':>9}")
    for r in rows:
        eq = f"{'yes' if r['equal'] else 'NO'} ({r['max_rel_diff']:.1e})"
        if "mode" not in r:
            print(f"{r['config']:<18}{r['layers']:>7}{eq:>22}  (not timed)")
            continue
        print(f"{r['config']:<18}{r['layers']:>7}{eq:>22}{r['mode']:>9}{r['lpips_ms']:>10.1f}{r['ours_ms']:>9.1f}"
              f"{r['speedup']:>9.2f}{r['nchw_ms']:>9.1f}{r['speedup_nchw']:>9.2f}")


# ------------------------------------------------------------------------------------------ profile


def profile_top(network: str, point: str, batch: int, size: int, device: torch.device, channels_last: bool,
                top: int = 8) -> str:
    from torch.profiler import ProfilerActivity, profile

    layout = "channels_last" if channels_last else "contiguous"
    net = ln.build_loss_network(network, (point,), weights="random", memory_format=layout).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    fn = forward_fn(net, x, device)
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    by_op = prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=32)
    # per layer: the same op on different input shapes, so early (wide, high-resolution) layers show up
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=top,
                                                                  max_name_column_width=26, max_shapes_column_width=60)
    return by_op + "\n" + by_shape


# --------------------------------------------------------------------------------------------- main


def header(args: argparse.Namespace, device: torch.device) -> None:
    print(f"# {Path(__file__).name}: python {platform.python_version()}, torch {torch.__version__}, "
          f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"# command: python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"# {load_line()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="vgg16 only, lpips alex only, fewer rounds")
    ap.add_argument("--networks", nargs="+", help="networks for section 1 ('all' = the paper's 14)")
    ap.add_argument("--batch-size", type=int, default=4, help="images per forward in sections 1, 2, 4")
    ap.add_argument("--size", type=int, default=224, help="input size in sections 1, 2, 4")
    ap.add_argument("--lpips-nets", nargs="+", choices=tuple(LPIPS_POINTS), help="default: alex squeeze vgg")
    ap.add_argument("--lpips-batch", type=int, default=16, help="image pairs per call in section 3")
    ap.add_argument("--lpips-size", type=int, default=64, help="input size in section 3 (BAPPS patches: 64)")
    ap.add_argument("--grad", action="store_true",
                    help="sections 2 and 3 also time forward+backward to the input (the network/distance as a loss)")
    ap.add_argument("--rounds", type=int, default=3, help="minimum calls per case (the fastest is kept)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per case and round")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the square float32 matmul reference")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off", help="section 1 only")
    ap.add_argument("--memory-format", choices=ln.MEMORY_FORMATS, default="auto",
                    help="section 1: the networks' layout (auto = what the library does: channels_last for the paper's families)")
    ap.add_argument("--skip", nargs="+", default=[], choices=("networks", "probes", "lpips", "profile"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.batch_size = min(args.batch_size, 4)
        args.min_time = min(args.min_time, 0.2)
    networks = args.networks or (QUICK_NETWORKS if args.quick else DEFAULT_NETWORKS)
    if networks == ["all"]:
        networks = tuple(ln.REGISTRY)
    header(args, device)
    results: list[tuple[str, str, str, bool]] = []  # (word on failure, target, measured, met)
    exit_code = 0

    started = time.perf_counter()
    if "networks" not in args.skip:
        print(f"\n## 1. forward throughput per point: batch {args.batch_size} @ {args.size} px, "
              f"autocast {args.autocast}, memory format {args.memory_format}, vs a {args.matmul_n}x{args.matmul_n} "
              f"{'float32' if args.autocast == 'off' else args.autocast} matmul "
              f"(fastest of interleaved calls, >= {args.rounds} each)")
        print("ratio = GFLOP/s / matmul GFLOP/s; cost sh = time / time of the deepest point; "
              "FLOP sh = FLOPs / FLOPs of the deepest point;\nvs prefix = time / time of a hand-made "
              "nn.Sequential of the layers up to the point (1.00 = pays for nothing after it)")
        all_rows = []
        for network in networks:
            rows = network_rows(network, args.batch_size, args.size, device, args.rounds, args.min_time,
                                args.matmul_n, args.autocast, args.memory_format)
            all_rows.extend(rows)
            print_network_table(rows)
            print(flush=True)
        vgg = [r for r in all_rows if r["network"] == "vgg16" and r["point"] == "features.29"]
        if vgg:
            v = vgg[0]["ratio"]
            results.append(("MISS", f"vgg16 up to features.29: GFLOP/s >= {TARGET_MATMUL_RATIO} x matmul GFLOP/s",
                            f"{v:.2f}", v >= TARGET_MATMUL_RATIO))
        shares = [r for r in all_rows if r["point"] != "all 4"]
        worst = max(shares, key=lambda r: r["cost_share"] / r["flop_share"])
        w = worst["cost_share"] / worst["flop_share"]
        results.append(("MISS", f"cost of a point proportional to its FLOPs: cost share <= {TARGET_SHARE_RATIO} x FLOP "
                        f"share at every point", f"worst {w:.2f} ({worst['network']} {worst['point']})",
                        w <= TARGET_SHARE_RATIO))
        checked = [r for r in shares if r["vs_prefix"] == r["vs_prefix"]]
        if checked:
            extra = [f"{r['network']} {r['point']}" for r in checked if not r["same_params"]]
            results.append(("FAIL", "an early point holds only its prefix: extractor parameters == those of a hand-made "
                            "nn.Sequential of the layers up to it", f"{len(checked) - len(extra)} of {len(checked)} "
                            f"points equal{'; differ: ' + ', '.join(extra) if extra else ''}", not extra))
            worst = max(checked, key=lambda r: r["vs_prefix"])
            results.append(("MISS", f"an early point pays only for its prefix: extractor time <= {TARGET_PREFIX_RATIO} x "
                            f"a hand-made nn.Sequential of the same layers", f"worst {worst['vs_prefix']:.2f} "
                            f"({worst['network']} {worst['point']}; {len(checked)} points)",
                            worst["vs_prefix"] <= TARGET_PREFIX_RATIO))
        shared = max(r["ms_batch"] / all_rows[i - 1]["ms_batch"] for i, r in enumerate(all_rows) if r["point"] == "all 4")
        print(f"all 4 points from one extractor / deepest point alone: worst {shared:.2f} "
              f"(sharing the prefix; 4 separate extractors would cost the sum of the 4 rows)")

    if "probes" not in args.skip:
        cases = QUICK_PROBES if args.quick else PROBE_CASES
        print(f"\n## 2. probes: batch {args.batch_size} @ {args.size} px, speedup vs no_grad NCHW "
              f"(the layout before; 'library' = what LossNetwork does now)")
        rows = probe_rows(cases, args.batch_size, args.size, device, args.rounds, args.min_time, args.grad)
        print(f"{'case':<28}{'variant':<28}{'ms/batch':>10}{'speedup':>9}{'max rel err':>13}")
        for r in rows:
            print(f"{r['case']:<28}{r['variant']:<28}{r['ms_batch']:>10.1f}{r['speedup']:>9.2f}{r['max_rel_err']:>13.1e}")
        sys.stdout.flush()

    if "lpips" not in args.skip:
        nets = tuple(args.lpips_nets or (("alex",) if args.quick else tuple(LPIPS_POINTS)))
        print(f"\n## 3. our lpips distance vs the lpips package: {args.lpips_batch} pairs @ {args.lpips_size} px, "
              f"same random trunk, outputs checked equal first (rtol 1e-4, atol 1e-6)")
        print("speedup = lpips ms / ours ms (ours = the library: channels_last, and in fwd+bwd the fixed input without "
              "a graph); NCHW = ours built with memory_format='contiguous'")
        rows, equal = lpips_rows(nets, args.lpips_batch, args.lpips_size, device, args.rounds, args.min_time,
                                 args.grad)
        print_lpips_table(rows)
        results.append(("FAIL", "outputs equal to the lpips package before timing", "all equal" if equal else "MISMATCH",
                        equal))
        timed = [r for r in rows if "speedup" in r]
        if timed:
            worst = min(timed, key=lambda r: r["speedup"])
            results.append(("MISS", f"our distance >= {TARGET_LPIPS_SPEEDUP}x the lpips package at equal output",
                            f"worst {worst['speedup']:.2f} ({worst['config']}, {worst['mode']})",
                            worst["speedup"] >= TARGET_LPIPS_SPEEDUP))
        if not equal:
            exit_code = 1

    if "profile" not in args.skip and not args.quick:
        for cl in (False, True):
            print(f"\n## 4. profile: vgg16 up to features.29, batch {args.batch_size} @ {args.size} px, "
                  f"{'channels_last (as the library runs it)' if cl else 'NCHW'}")
            print(profile_top("vgg16", "features.29", args.batch_size, args.size, device, cl, top=10))

    print(f"\n## targets  ({load_line()}; {time.perf_counter() - started:.0f} s)")
    for failure, name, value, ok in results:
        print(f"{'PASS' if ok else failure:<5} {name}: {value}")
    if any(failure == "FAIL" and not ok for failure, _, _, ok in results):
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
