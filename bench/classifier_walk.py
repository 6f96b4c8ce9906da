"""Every torchvision classifier as a loss network, against torchvision's own feature extractor.

For each model in `torchvision.models.list_models(module=torchvision.models)`: torchvision's seeded init
with LayerScale lifted to U(0.5, 1.5) and seeded, non-trivial BatchNorm statistics
(tests/_reference.py), saved as a state-dict file; three nodes (early, middle, last feature stage, per
family below); torchvision's `create_feature_extractor` on the unmodified model as the reference, with the
layout undone here by hand (Swin: permute; ViT: drop the class token, reshape to the patch grid). Then:

- file: our loss network built from the file (BatchNorm folded) gives the reference's maps (max-abs error
  <= 1e-4 of the reference's max-abs) and the same lpips (the `lpips` package's normalisation) and mse
  distances between two real photographs (1e-4 relative);
- random: `weights="random"` builds and runs at the same nodes, with finite maps of the same shape;
- no traceback: anything raised is caught and printed as one line in the table (status FAIL).

    python bench/classifier_walk.py                  # all 80 classifiers (~20 min on 2 idle cores)
    python bench/classifier_walk.py --models swin_t vit_b_16 regnet_y_400mf
    python bench/classifier_walk.py --size 96         # input side for the networks that take any size
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import lpips  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from _reference import seed_batchnorms  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from trainables import loss_networks as ln  # noqa: E402
from trainables.distances import lpips_point, mse_point  # noqa: E402


def _seq(attr: str, early: int, last_from_end: int) -> Callable[[torch.nn.Module], tuple[str, str, str]]:
    """Nodes in a Sequential trunk `attr`: index `early`, the middle, and `last_from_end` from its end."""
    def nodes(model: torch.nn.Module) -> tuple[str, str, str]:
        n = len(getattr(model, attr))
        return f"{attr}.{early}", f"{attr}.{n // 2}", f"{attr}.{n - last_from_end}"
    return nodes


def _fixed(*nodes: str) -> Callable[[torch.nn.Module], tuple[str, ...]]:
    return lambda model: nodes


def _vit(model: torch.nn.Module) -> tuple[str, str, str]:
    n = len(model.encoder.layers)
    return tuple(f"encoder.layers.encoder_layer_{i}" for i in (0, n // 2 - 1, n - 1))  # type: ignore[return-value]


#: family -> (the three nodes of a model, the layout of the network's own output there)
FAMILY_NODES: dict[str, tuple[Callable[[torch.nn.Module], tuple[str, ...]], str]] = {
    "alexnet": (_seq("features", 1, 2), "NCHW"),  # the last ReLU before the last max-pool
    "vgg": (_seq("features", 1, 2), "NCHW"),
    "squeezenet": (_seq("features", 1, 1), "NCHW"),
    "densenet": (_fixed("features.relu0", "features.denseblock2", "features.denseblock4"), "NCHW"),
    "resnet": (_fixed("relu", "layer2", "layer4"), "NCHW"),
    "googlenet": (_fixed("conv1", "inception4a", "inception5b"), "NCHW"),
    "inception": (_fixed("Conv2d_2b_3x3", "Mixed_5d", "Mixed_7c"), "NCHW"),
    "efficientnet": (_seq("features", 0, 2), "NCHW"),  # features[-1] is the final 1x1 convolution
    "efficientnet_v2": (_seq("features", 0, 2), "NCHW"),
    "mobilenet": (_seq("features", 1, 2), "NCHW"),
    "mnasnet": (_seq("layers", 3, 4), "NCHW"),  # layers[-3:] = final 1x1 convolution, BN, ReLU
    "shufflenet": (_fixed("conv1", "stage3", "stage4"), "NCHW"),
    "regnet": (_fixed("stem", "trunk_output.block2", "trunk_output.block4"), "NCHW"),
    "convnext": (_fixed("features.0", "features.3", "features.7"), "NCHW"),
    "swin": (_fixed("features.0", "features.3", "features.7"), "NHWC"),
    "maxvit": (_fixed("stem", "blocks.1", "blocks.3"), "NCHW"),
    "vit": (_vit, "tokens"),
}


def family(name: str) -> str:
    return "efficientnet_v2" if name.startswith("efficientnet_v2") else ln.family_of(name)


def by_hand(raw: torch.Tensor, layout: str, grid: int) -> torch.Tensor:
    if layout == "NHWC":
        return raw.permute(0, 3, 1, 2)
    if layout == "tokens":
        return raw[:, 1:, :].reshape(raw.shape[0], grid, grid, raw.shape[2]).permute(0, 3, 1, 2)
    return raw


def photographs(size: int) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        crop = Image.fromarray(img[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]).resize((size, size))
        out.append(np.asarray(crop, dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def walk_one(name: str, size: int, tmp: Path) -> dict[str, Any]:
    fam = family(name)
    side = ln.network_input_size(name, "random", max(size, ln.min_size(name)), "auto")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(31)
        kwargs = {"init_weights": True, "aux_logits": False} if name in ln.TRANSFORM_INPUT_NETWORKS else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "layer_scale" in pname:
                    p.uniform_(0.5, 1.5)
    nodes_of, layout = FAMILY_NODES[fam]
    nodes = tuple(nodes_of(model))
    x = photographs(side)
    seed_batchnorms(model, x, nodes, seed=32)
    with torch.no_grad():
        raw = create_feature_extractor(model, return_nodes=list(nodes))(x)
    grid = side // int(name.rsplit("_", 1)[1]) if layout == "tokens" else 0
    reference = {p: by_hand(raw[p], layout, grid) for p in nodes}
    path = tmp / f"{name}.pth"
    torch.save(model.state_dict(), path)
    del model, raw
    try:
        net = ln.build_loss_network(name, nodes, weights=str(path), normalisation="none")
        with torch.no_grad():
            ours = net(x)
        del net
    finally:
        path.unlink()
    worst_map = max(rel_err(ours[p], reference[p]) for p in nodes)
    worst_d = 0.0
    for p in nodes:
        ref = reference[p]
        ref_lpips = lpips.spatial_average(((lpips.normalize_tensor(ref[:1]) - lpips.normalize_tensor(ref[1:])) ** 2)
                                          .sum(1, keepdim=True)).flatten()
        ref_mse = ((ref[:1] - ref[1:]) ** 2).mean()
        worst_d = max(worst_d, rel_err(lpips_point(ours[p][:1], ours[p][1:]), ref_lpips),
                      rel_err(mse_point(ours[p][:1], ours[p][1:]), ref_mse))
    random_net = ln.build_loss_network(name, nodes, weights="random", seed=1)
    with torch.no_grad():
        rand = random_net(x)
    random_ok = all(rand[p].shape == ours[p].shape and bool(torch.isfinite(rand[p]).all()) for p in nodes)
    ok = worst_map <= 1e-4 and worst_d <= 1e-4 and random_ok
    return {"status": "PASS" if ok else "FAIL", "nodes": nodes, "layouts": sorted({ln.point_layout(name, p).kind for p in nodes}),
            "side": side, "map_err": worst_map, "dist_err": worst_d, "random": "ok" if random_ok else "BAD"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every torchvision classifier")
    parser.add_argument("--size", type=int, default=64, help="input side (fixed-size networks: their own)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models or list(ln.classification_models())
    print(f"load average: {os.getloadavg()}")
    print(f"{'model':<19} {'status':<6} {'px':>4} {'layouts':<14} {'map err':>8} {'dist err':>8} {'random':<6} "
          f"{'s':>5}  nodes")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="dpl-walk-") as tmp:
        for name in models:
            start = time.perf_counter()
            try:
                r = walk_one(name, args.size, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - the table shows it as one line, never a traceback
                where = traceback.extract_tb(exc.__traceback__)[-1]
                r = {"status": "FAIL", "nodes": (), "layouts": [], "side": 0, "map_err": float("nan"),
                     "dist_err": float("nan"),
                     "random": f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]} "
                               f"({Path(where.filename).name}:{where.lineno})"}
            failures += r["status"] != "PASS"
            print(f"{name:<19} {r['status']:<6} {r['side']:>4} {'/'.join(r['layouts']):<14} {r['map_err']:>8.1e} "
                  f"{r['dist_err']:>8.1e} {r['random']:<6} {time.perf_counter() - start:>5.1f}  {', '.join(r['nodes'])}",
                  flush=True)
    print(f"load average: {os.getloadavg()}")
    print(f"{'PASS' if not failures else 'FAIL'} {len(models) - failures} of {len(models)} classifiers equal "
          f"torchvision's extractor at 3 nodes (maps and lpips/mse to 1e-4), from a file and with random weights")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
