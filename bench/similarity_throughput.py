"""Evaluation throughput of the similarity task: BAPPS 2AFC triplets per second through pruned networks.

Times exactly what the task's evaluation does per batch (`triplet_distances` under no_grad, eval mode,
64x64 inputs, baseline lpips distance), on random weights and random images, so it runs offline.
Data loading is excluded: it is the same for every network.

    python bench/similarity_throughput.py                       # default grid on CPU
    python bench/similarity_throughput.py --device cuda --batch-size 256
    python bench/similarity_throughput.py --case vgg16:features.29 --case resnet50:layer4
"""
from __future__ import annotations

import argparse
import time

import torch

from trainables.distances import PerceptualDistance
from trainables.loss_networks import build_loss_network
from trainables.tasks.similarity import triplet_distances
from trainables.trial import pick_device

DEFAULT_CASES = (
    "alexnet:features.1", "alexnet:features.11", "vgg16:features.3", "vgg16:features.29",
    "squeezenet1_1:features.12", "resnet18:layer4", "resnet50:layer4", "efficientnet_b0:features.7",
)


@torch.no_grad()
def measure(network: str, point: str, batch_size: int, device: torch.device, seconds: float, size: int = 64) -> float:
    """Triplets per second (each triplet = 4 images through the network, as the task batches them)."""
    dist = PerceptualDistance(build_loss_network(network, (point,), weights="random"), "lpips").to(device).eval()
    x = torch.rand(3, batch_size, 3, size, size, device=device)
    triplet_distances(dist, *x)  # warm-up (allocator, cudnn autotune)
    n, start = 0, time.perf_counter()
    while True:
        triplet_distances(dist, *x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        n += batch_size
        if (elapsed := time.perf_counter() - start) >= seconds:
            return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help="network:point (repeatable); default: a small grid")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed duration per case")
    args = ap.parse_args()
    device = pick_device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch_size} size=64 torch={torch.__version__}")
    print(f"{'network':<18}{'point':<14}{'triplets/s':>12}{'images/s':>12}")
    for case in args.case or DEFAULT_CASES:
        network, point = case.split(":", 1)
        rate = measure(network, point, args.batch_size, device, args.seconds)
        print(f"{network:<18}{point:<14}{rate:>12.1f}{4 * rate:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
