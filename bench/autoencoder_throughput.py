"""Training-step throughput and peak memory of the autoencoder task, per loss network and input size.

One step = autoencoder forward, loss (pixel MSE or feature MSE at the point, target features without
a graph), backward, Adam step: exactly what `trainables.tasks.autoencoder` runs. Random loss-network
weights (nothing is downloaded; speed does not depend on the weights). Peak memory is the CUDA allocator's
peak per configuration; on the CPU it is not measured.

    python bench/autoencoder_throughput.py --device cpu --batch-size 32 --steps 5
    python bench/autoencoder_throughput.py --device cuda --batch-size 256 --steps 30 --out docs/benchmarks/ae.md
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from torch.nn import functional as F

from trainables import distances
from trainables.loss_networks import build_loss_network
from trainables.tasks.autoencoder import SIZES, ConvAutoencoder

from _step_timer import time_steps

#: (network, point): the pixel baseline, the paper's best family (VGG, an early and a late point), a
#: BatchNorm ResNet and the largest network of the study.
DEFAULT_CASES = ("none:", "vgg16:features.8", "vgg16:features.29", "resnet50:layer2", "efficientnet_b7:features.4")


def measure(network: str, point: str, size: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = ConvAutoencoder(size).to(device).train()
    net = None if network == "none" else build_loss_network(network, (point,), weights="random").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size, device=device)

    def step() -> None:
        out = model(x)
        loss = F.mse_loss(out, x) if net is None else distances.feature_mse(net, out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    elapsed, peak_bytes = time_steps(step, steps, device, warmup=2)
    peak = peak_bytes / 2**30
    return {"images_per_s": steps * batch / elapsed, "ms_per_step": 1e3 * elapsed / steps, "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", nargs="*", default=list(DEFAULT_CASES), help="network:point, 'none:' = pixel loss")
    ap.add_argument("--datasets", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--out", type=Path, help="also append the Markdown table to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"device: {where}; torch {torch.__version__}; python {platform.python_version()}; "
        f"batch {args.batch_size}; {args.steps} timed steps after 2 warm-up steps",
        "",
        "| dataset | input | network | point | images/s | ms/step | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for dataset in args.datasets:
        for case in args.cases:
            network, _, point = case.partition(":")
            r = measure(network, point, SIZES[dataset], args.batch_size, args.steps, device)
            row = (f"| {dataset} | {SIZES[dataset]} | {network} | {point or '(pixel MSE)'} | "
                   f"{r['images_per_s']:.1f} | {r['ms_per_step']:.1f} | {r['peak_gib']:.2f} |")
            lines.append(row)
            print(row, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
