"""A trial's memory estimate (trainables.memory: its step on the meta device) against the measured peak.

Measured, for the same step (`task.training_step`: 2 training steps, then its evaluation phase if any):
- CPU: the CPU allocator's peak while the steps run (torch profiler memory events), plus the bytes of the
  parameters, buffers and inputs built before them;
- CUDA (`--device cuda`): torch.cuda.max_memory_allocated (what the estimate models), max_memory_reserved
  (plus the caching allocator's rounding and fragmentation) and the device's used memory at the end
  (plus the CUDA context): what the margin (`trainables.memory.with_margin`) has to cover.
Each case runs in its own subprocess (a fresh allocator and CUDA context). Cases: one trial of each task,
and the three largest trials of the paper grid (by estimate at their own batch; computing the grid's
estimates costs ~5 CPU-minutes once, then they are cached) at `--batch` (default 2 on a CPU) or at their
own batch (`--full-batch`, for a GPU).

    python bench/memory_estimate.py                         # CPU, ~3-5 min on 2 free cores
    python bench/memory_estimate.py --device cuda --full-batch
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GIB, MIB = 2**30, 2**20

#: label -> (task, network, point, dataset, variant, mode, settings on top of the paper budget), small enough
#: for a CPU; with --full-batch the batch settings are dropped (the paper budget's own).
PER_TASK = {
    "similarity baseline (eval batch 64)": ("similarity", "alexnet", "features.11", "bapps", "baseline", "eval",
                                            {"eval_batch_size": 64}),
    "similarity tune (batch 8)": ("similarity", "squeezenet1_1", "features.5", "bapps", "tune", "eval",
                                  {"batch_size": 8, "eval_batch_size": 8}),
    "superres (crop 96, batch 2)": ("superres", "vgg16", "features.8", "coco", "default", "eval",
                                    {"crop_size": 96, "batch_size": 2}),
    "superres pixel (crop 288, batch 1)": ("superres", "none", None, "coco", "default", "eval", {"batch_size": 1}),
    "delineation (crop 96, batch 2, K 2)": ("delineation", "resnet50", "layer2", "mass_roads", "default", "train",
                                            {"crop_size": 96, "batch_size": 2, "k_train": 2, "test_resize": 160}),
    "autoencoder svhn (batch 16)": ("autoencoder", "vgg16", "features.8", "svhn", "default", "train", {"batch_size": 16}),
    "autoencoder stl10 pixel (batch 32)": ("autoencoder", "none", None, "stl10", "default", "eval", {"batch_size": 32}),
}
BATCH_KEYS = ("batch_size", "eval_batch_size")


def _config(task, network, point, dataset, variant, mode, params):
    from trainables.config import TrialConfig
    from trainables.trial import prepare

    return prepare(TrialConfig(task=task, network=network, points=(point,) if point else (), dataset=dataset,
                               variant=variant, mode=mode, budget="paper", params=params))


def one(case: list, device: str) -> dict:
    """Estimate and measurement of one case (run in a subprocess)."""
    import torch

    from trainables import memory

    config = _config(*case)
    t0 = time.perf_counter()
    est = memory.estimate_uncached(config)
    out = {"estimate": est, "estimate_s": time.perf_counter() - t0}
    if device == "cpu":
        out["measured"] = memory.measure_cpu_peak(config)["total_bytes"]
        return out
    step = memory.training_step(config, device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step.run()
    if step.evaluation is not None:
        step.evaluation()
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    out.update(measured=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved(),
               device_used=total - free, device_name=torch.cuda.get_device_name())
    return out


def largest(n: int) -> list[tuple[str, tuple]]:
    """The n largest trials of the paper grid by estimate (at their own batch), as cases."""
    from study.plan import expand
    from study.spec import load_spec
    from trainables.memory import estimate_many

    trials = [t.config for t in expand(load_spec(preset="paper", storage="/tmp/dpl-bench-memory"))]
    sized = sorted(zip(estimate_many(trials), trials), key=lambda x: -x[0]["total_bytes"])[:n]
    return [(f"paper #{i + 1}: {c.task} {c.dataset} {c.network}:{c.point} ({e['total_bytes'] / GIB:.1f} GiB at batch "
             f"{c.params.get(e['batch_setting'])})",
             (c.task, c.network, c.point or None, c.dataset, c.variant, c.mode, {}))
            for i, (e, c) in enumerate(sized)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=2, help="batch of the paper grid's largest trials (not with --full-batch)")
    ap.add_argument("--full-batch", action="store_true", help="every case at the paper budget's own batch (a GPU)")
    ap.add_argument("--largest", type=int, default=3, help="how many of the paper grid's largest trials")
    ap.add_argument("--only", nargs="+", help="only the cases whose label contains one of these (e.g. autoencoder)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one), args.device)))
        return
    cases = dict(PER_TASK)
    for label, case in (largest(args.largest) if args.largest else []):
        cases[label] = (*case[:6], {} if args.full_batch else {"batch_size": args.batch})
    if args.full_batch:
        cases = {k.split(" (")[0]: (*c[:6], {k2: v for k2, v in c[6].items() if k2 not in BATCH_KEYS})
                 for k, c in cases.items()}
    if args.only:
        cases = {k: c for k, c in cases.items() if any(word in k for word in args.only)}
    print(f"# load average before: {os.getloadavg()}; device {args.device}")
    head = f"| case | estimate MiB | measured MiB | estimate / measured | activations share |"
    if args.device == "cuda":
        head += " reserved MiB | device used MiB | estimate + margin MiB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ratios = []
    for label, case in cases.items():
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--one", json.dumps(case)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"| {label} | FAIL: {proc.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        e, m = r["estimate"], r["measured"]
        ratios.append(e["total_bytes"] / m)
        row = (f"| {label} | {e['total_bytes'] / MIB:.1f} | {m / MIB:.1f} | {e['total_bytes'] / m:.3f} | "
               f"{e['activations'] / e['total_bytes']:.2f} |")
        if args.device == "cuda":
            row += f" {r['reserved'] / MIB:.1f} | {r['device_used'] / MIB:.1f} | {e['with_margin_bytes'] / MIB:.1f} |"
        print(row, flush=True)
    print(f"# load average after: {os.getloadavg()}")
    if not ratios:
        print("MISS: no case ran")
        return
    inside = all(0.75 <= x <= 1.25 for x in ratios)
    print(f"{'PASS' if inside else 'MISS'}: estimate / measured within 0.75-1.25 for {len(ratios)} cases "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
