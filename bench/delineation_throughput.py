"""Training-step throughput and peak memory of the delineation task (U-Net x K + loss network).

Each (network, point, crop) runs in a fresh subprocess so that its peak memory is its own (CPU: the
process's max RSS; CUDA: torch's peak allocation). Inputs are random tensors: this measures the model and
loss, not disk reading. Random loss-network weights (same cost as ImageNet weights).

    python bench/delineation_throughput.py                      # smoke (80) and paper (224) crops, CPU/auto
    python bench/delineation_throughput.py --device cuda --steps 20 --batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

DEFAULT_CASES = ("vgg16:features.3", "resnet50:layer2", "efficientnet_b0:features.4")


def one(network: str, point: str, crop: int, batch: int, K: int, steps: int, device: str) -> dict[str, float]:
    import torch

    from trainables import loss_networks as ln
    from trainables.tasks.delineation import Refiner, delineation_loss
    from trainables.trial import pick_device

    from _step_timer import time_steps

    dev = pick_device(device)
    torch.manual_seed(0)
    net = ln.build_loss_network(network, (point,), weights="random").to(dev)
    model = Refiner(K).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, crop, crop, device=dev)
    y = (torch.rand(batch, 1, crop, crop, device=dev) > 0.9).float()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        loss = delineation_loss(model(x), y, net, 0.01)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dt, peak_bytes = time_steps(step, steps, dev, warmup=1)
    peak = (
        peak_bytes / 2**20
        if dev.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB on Linux
    )
    return {"steps_per_s": steps / dt, "crops_per_s": steps * batch / dt, "peak_mib": peak, "device": str(dev)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="network:point")
    ap.add_argument("--crops", nargs="+", type=int, default=[80, 224], help="smoke and paper crop sizes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--K", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", nargs=3, metavar=("NETWORK", "POINT", "CROP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], int(a.one[2]), a.batch, a.K, a.steps, a.device)))
        return
    print(f"batch {a.batch}, K {a.K}, {a.steps} timed steps, load average {os.getloadavg()[0]:.1f}")
    print("| network:point | crop | device | steps/s | crops/s | peak MiB (CPU: RSS growth) |")
    print("|---|---|---|---|---|---|")
    for case in a.cases:
        network, point = case.split(":")
        for crop in a.crops:
            cmd = [sys.executable, __file__, "--one", network, point, str(crop), "--batch", str(a.batch),
                   "--K", str(a.K), "--steps", str(a.steps), "--device", a.device]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            print(f"| {case} | {crop} | {r['device']} | {r['steps_per_s']:.2f} | {r['crops_per_s']:.1f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
