"""How fast is this machine, in the units the test suite spends: one line to read a CI time against.

A "2-core machine" is not one speed: the same `bench/launch_cpu.py` run took 18.6 CPU-s on one session's
machine and 30.3 on another's (docs/BENCHMARKS.md, "CI time"), so a CI time means little without the
machine it ran on. The suite's CPU goes mostly into Python start-up and imports (~80 Ray workers and ~30
drivers, each importing torch, torchvision, MLflow and Tune) and small tensor work, so this times exactly those:

- a pure-Python loop (10 million additions, best of 3),
- a fresh interpreter importing torch, torchvision, mlflow and ray.tune (best of 2, so the files are cached),
- a float32 1024 x 1024 matmul on one thread (GFLOP/s, best of 5).

    python bench/machine_probe.py          # ~15 s; `.ci/run` prints it after the CI time
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

IMPORTS = "import torch, torchvision, mlflow, ray.tune"


def python_loop_s(n: int = 10_000_000) -> float:
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for i in range(n):
            total += i
        best = min(best, time.perf_counter() - start)
    return best


def import_s() -> float:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 1024) -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main() -> None:
    load = os.getloadavg()[0]
    loop, imports = python_loop_s(), import_s()
    print(f"machine probe: python loop {loop:.2f} s, imports ({IMPORTS[7:]}) {imports:.2f} s, "
          f"matmul {matmul_gflops():.1f} GFLOP/s on 1 thread; {os.cpu_count()} cores, load {load:.2f} before")


if __name__ == "__main__":
    main()
