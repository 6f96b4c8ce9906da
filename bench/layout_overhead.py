"""What putting each point's map in (B, C, H, W) form costs, next to the forward pass that made it.

For every default point (the paper's 56 and the extended set's), one pruned loss network is built (random
weights) and timed side by side, interleaved call by call, fastest call kept (bench/lossnet_throughput.py's
`side_by_side`):

- forward: the network body up to the point (`net.body` on the normalised input: what the point costs);
- layout: `FeatureLayout.to_nchw` of that output (the permute, class-token slice, transpose or unflatten;
  a view for every layout, no copy);
- for the layouts that are not NCHW already, the lpips distance of two such maps on the view against the
  same on a contiguous copy (does the strided view slow what reads it?), and the copy itself (what a
  copying conversion would have cost).

Target: layout <= 5 % of the forward at every point (`PASS`/`MISS` at the end; a map that differs from
the network's raw output read by hand is a `FAIL`, exit status 1).

    python bench/layout_overhead.py                       # all default points, batch 4 at 64 px (ViT/MaxViT: 224)
    python bench/layout_overhead.py --networks extended   # the modern set only
    python bench/layout_overhead.py --networks swin_t vit_b_16 --size 224 --batch-size 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from lossnet_throughput import load_line, side_by_side  # noqa: E402

from trainables import loss_networks as ln  # noqa: E402
from trainables.distances import lpips_point  # noqa: E402

TARGET_SHARE = 0.05


def undo_by_hand(raw: torch.Tensor, layout: ln.FeatureLayout, height: int, width: int) -> torch.Tensor:
    """The same map read off the raw output with a copy, as a check of the view."""
    if layout.kind == "NHWC":
        return raw.permute(0, 3, 1, 2).contiguous()
    if layout.kind == "tokens":
        h, w = height // layout.stride, width // layout.stride
        patches = raw[:, layout.lead : layout.lead + h * w]
        return patches.reshape(raw.shape[0], h, w, raw.shape[2]).permute(0, 3, 1, 2).contiguous()
    if layout.kind == "vector":
        return raw.reshape(*raw.shape, 1, 1)
    return raw


def point_row(network: str, point: str, batch: int, size: int, device: torch.device, rounds: int,
              min_time: float) -> dict[str, Any]:
    seen = ln.network_input_size(network, "random", size, "auto")
    net = ln.build_loss_network(network, (point,), weights="random").to(device)
    layout = net.layouts[point]
    x = torch.rand(batch, 3, seen, seen, device=device, generator=torch.Generator().manual_seed(0))
    xn = (x - net.mean) / net.std
    with torch.no_grad():
        raw = net.body(xn)[point]
        view = layout.to_nchw(raw, seen, seen)
    ok = torch.equal(view, undo_by_hand(raw, layout, seen, seen))

    def forward() -> Any:
        with torch.no_grad():
            return net.body(xn)

    fns = {"forward": forward, "layout": lambda: layout.to_nchw(raw, seen, seen)}
    half = batch // 2 or 1
    if layout.kind != "NCHW" and batch > 1:
        copy = view.contiguous()
        fns["copy"] = lambda: view.contiguous()
        fns["lpips on view"] = lambda: lpips_point(view[:half], view[half:])
        fns["lpips on copy"] = lambda: lpips_point(copy[:half], copy[half:])
    best = side_by_side(fns, device, rounds, min_time)
    row = {"network": network, "point": point, "layout": layout.describe(seen), "size": seen, "ok": ok,
           "forward_ms": best["forward"] * 1e3, "layout_us": best["layout"] * 1e6,
           "share": best["layout"] / best["forward"]}
    if "copy" in best:
        row.update(copy_share=best["copy"] / best["forward"], view_vs_copy=best["lpips on view"] / best["lpips on copy"])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["all", "extended"],
                        help="network names, `all` (the paper's 14) and/or `extended` (default: both)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="input side (fixed-size networks: their own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per case per round, at least")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(load_line())
    print(f"## layout vs forward: batch {args.batch_size} at {args.size} px (ViT/MaxViT at their own size), "
          f"{args.device}, {args.threads} threads; fastest of interleaved calls (>= {args.rounds} each)")
    print("share = layout time / forward time; copy share = a contiguous copy / forward; view/copy = lpips on "
          "the strided view / lpips on a contiguous copy")
    header = (f"{'network':<19} {'point':<32} {'layout':<15} {'px':>4} {'forward ms':>10} {'layout us':>9} "
              f"{'share':>7} {'copy sh':>7} {'view/copy':>9}")
    print(header)
    rows = []
    for network in ln.expand_networks(args.networks):
        for point in ln.default_points(network):
            r = point_row(network, point, args.batch_size, args.size, device, args.rounds, args.min_time)
            rows.append(r)
            extra = (f"{r['copy_share']:>7.2%} {r['view_vs_copy']:>9.2f}" if "copy_share" in r else f"{'-':>7} {'-':>9}")
            print(f"{network:<19} {point:<32} {r['layout']:<15} {r['size']:>4} {r['forward_ms']:>10.2f} "
                  f"{r['layout_us']:>9.1f} {r['share']:>7.3%} {extra}" + ("" if r["ok"] else "  FAIL"), flush=True)
    print(load_line())
    worst = max(rows, key=lambda r: r["share"])
    failed = [f"{r['network']}:{r['point']}" for r in rows if not r["ok"]]
    verdict = "PASS" if worst["share"] <= TARGET_SHARE else "MISS"
    print(f"{verdict} layout <= {TARGET_SHARE:.0%} of the forward at every point ({len(rows)} points; worst "
          f"{worst['share']:.3%} at {worst['network']}:{worst['point']}, {worst['layout']})")
    if failed:
        print(f"FAIL maps differ from the raw output read by hand at {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
