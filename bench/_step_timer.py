"""Shared by the per-task training-step benches: warm up, time N steps, read CUDA's peak memory."""
from __future__ import annotations

import time
from typing import Callable

import torch


def time_steps(step: Callable[[], None], steps: int, device: torch.device, warmup: int = 1) -> tuple[float, float]:
    """(seconds for `steps` calls of `step` after `warmup` untimed ones, CUDA peak bytes or nan on CPU).

    The warm-up absorbs cuDNN autotuning and allocator growth; CUDA is synchronised around the timed calls
    so that queued kernels are counted, and the peak is reset after the warm-up so it is the steps' own.
    """
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return elapsed, float(torch.cuda.max_memory_allocated(device)) if cuda else float("nan")
