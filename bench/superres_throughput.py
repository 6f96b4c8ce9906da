"""Training-step throughput (HR images/s) and peak memory of the super-resolution task.

One full training step as `trainables.tasks.superres.run` does it: degrade the HR batch on the device,
TransformNet forward, feature MSE at the point, backward, Adam. Random loss-network weights (same cost as
ImageNet ones, no download). Each (network, point, crop) runs in a fresh subprocess so that peak memory
(ru_maxrss on CPU, torch.cuda.max_memory_allocated on CUDA) belongs to that configuration alone.

    python bench/superres_throughput.py                      # default matrix, markdown table
    python bench/superres_throughput.py --device cuda --steps 20 --crops 64 288
    python bench/superres_throughput.py --one vgg16 features.8 288 --device cpu --steps 3
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT = [("vgg16", "features.8"), ("resnet50", "layer1"), ("efficientnet_b0", "features.4")]


def one(network: str, point: str, crop: int, device_name: str, steps: int, batch: int, scale: int) -> dict:
    import torch

    from trainables.data.superres import degrade
    from trainables.distances import feature_mse
    from trainables.loss_networks import build_loss_network
    from trainables.tasks.superres import TransformNet
    from trainables.trial import pick_device

    device = pick_device(device_name)
    torch.manual_seed(0)
    model = TransformNet(scale).to(device)
    net = build_loss_network(network, (point,), weights="random").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hr = torch.rand(batch, 3, crop, crop, device=device)

    def step() -> None:
        with torch.no_grad():
            lr = degrade(hr, scale)
        loss = feature_mse(net, model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, cudnn autotuning, lazy init
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    return {"network": network, "point": point, "crop": crop, "device": str(device), "batch": batch,
            "threads": torch.get_num_threads(), "img_per_s": steps * batch / dt, "s_per_step": dt / steps,
            "peak_mib": peak / 2**20, "peak_kind": "cuda allocated" if device.type == "cuda" else "process maxrss"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", nargs=3, metavar=("NETWORK", "POINT", "CROP"), help="run one configuration, print JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--crops", type=int, nargs="+", default=[64, 288], help="smoke and paper crop sizes")
    args = ap.parse_args()
    if args.one:
        net, point, crop = args.one
        print(json.dumps(one(net, point, int(crop), args.device, args.steps, args.batch, args.scale)))
        return
    print("| network | point | crop | device | threads | img/s | s/step | peak MiB (kind) |")
    print("|---|---|---|---|---|---|---|---|")
    for net, point in DEFAULT:
        for crop in args.crops:
            cmd = [sys.executable, __file__, "--one", net, point, str(crop), "--device", args.device,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--scale", str(args.scale)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"| {net} | {point} | {crop} | {r['device']} | {r['threads']} | {r['img_per_s']:.2f} | "
                  f"{r['s_per_step']:.3f} | {r['peak_mib']:.0f} ({r['peak_kind']}) |", flush=True)


if __name__ == "__main__":
    main()
