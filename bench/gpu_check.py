"""GPU check: CUDA correctness, loss-network throughput (fp32 vs bf16 autocast), and study trials/hour at
1, 2 and 4 trials per GPU with peak GPU memory per trial. Run it through bench/gpu_check.sh, which finds
or makes a Python environment first; everything goes to stdout.

Exit status: 0 = every check that could run passed (CUDA parts are skipped, with a message, where there
is no CUDA device); 1 = a correctness failure (a distance or gradient on CUDA differs from the CPU one, or
our distance differs from the lpips package); 2 = the environment is unusable (no torch).

    python bench/gpu_check.py                # what gpu_check.sh runs
    python bench/gpu_check.py --quick        # fewer networks, one study fraction
    python bench/gpu_check.py --budget-s 300 # stop starting new sections after 300 s

Order: CUDA correctness, then the study at 1, 4 and 2 trials per GPU (what sizes a trial's GPU share), then
throughput with whatever is left of the budget (each network is skipped, with a line, once it has run out).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

T0 = time.perf_counter()
FAILURES: list[str] = []


def say(msg: str = "") -> None:
    print(msg, flush=True)


def section(title: str) -> None:
    say(f"\n## [{time.perf_counter() - T0:5.0f} s] {title}")


def check(ok: bool, what: str, detail: str) -> bool:
    say(f"{'PASS' if ok else 'FAIL':<5} {what}: {detail}")
    if not ok:
        FAILURES.append(what)
    return ok


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------ environment


def environment() -> Any:
    try:
        import torch
        import torchvision
    except ImportError as exc:
        say(f"FAIL  torch/torchvision not importable ({exc}); run bench/gpu_check.sh, which sets up an environment")
        sys.exit(2)
    section("environment")
    say(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, cpu count {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    for mod in ("ray", "mlflow", "lpips", "skimage"):
        say(f"  {mod}: {'yes' if have(mod) else 'MISSING'}")
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        p = torch.cuda.get_device_properties(dev)
        say(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} device(s); "
            f"using {p.name} (capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB)")
        return dev
    say("SKIP  no CUDA device (torch.cuda.is_available() is False): the CUDA correctness, GPU throughput and GPU "
        "study sections are skipped; only the CPU reference check runs")
    return None


# ------------------------------------------------------------------------------------------ correctness


def cpu_reference_check() -> None:
    """Our distance equals the lpips package on CPU (the reference the CUDA check builds on)."""
    import torch

    section("CPU reference: our lpips distance vs the lpips package (alex, lin), CPU")
    if not have("lpips"):
        say("SKIP  the lpips package is not installed")
        return
    from lossnet_throughput import check_equal, lpips_pair

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 4, 3, 64, 64, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = lpips_pair("alex", True, Path(tmp), torch.device("cpu"))
        ok, rel = check_equal(ref, ours, a, b, rtol=1e-5, atol=1e-7)
    check(ok, "CPU: our distance == lpips package (alex lin, 5 layers)", f"max rel diff {rel:.1e}")


def cuda_correctness(dev: Any, networks: tuple[str, ...]) -> None:
    """Distances (lpips, mse; every point) and input gradients on CUDA equal the CPU ones; TF32 off."""
    import torch

    from trainables.distances import PerceptualDistance
    from trainables.loss_networks import build_loss_network

    section("CUDA correctness: distances and gradients, CUDA vs CPU (fp32, TF32 off, rtol 1e-3); bf16 error reported")
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.rand(2, 4, 3, 64, 64, generator=g)
    say(f"{'network':<18}{'distance':<9}{'max rel diff':>13}{'grad rel diff':>14}{'bf16 rel err':>13}")
    try:
        for name in networks:
            for kind in ("lpips", "mse"):
                # two builds, same seed = same weights. Not copy.deepcopy: a deep-copied torch.fx GraphModule comes
                # back in training mode, so BatchNorm would use batch statistics (torch 2.14.1).
                # resize auto: the fixed-size networks (ViT, MaxViT) see the 64 px pair resized to 224 px
                d_cpu = PerceptualDistance(build_loss_network(name, "all", weights="random", seed=0, resize="auto"),
                                           kind).eval()
                d_gpu = PerceptualDistance(build_loss_network(name, "all", weights="random", seed=0, resize="auto"),
                                           kind).to(dev).eval()
                a, b = x0.clone().requires_grad_(True), x1.clone()
                ag, bg = x0.to(dev, copy=True).requires_grad_(True), x1.to(dev, copy=True)
                out_c, out_g = d_cpu(a, b), d_gpu(ag, bg)
                out_c["total"].sum().backward()
                out_g["total"].sum().backward()
                ok = all(torch.allclose(out_g[k].cpu(), out_c[k], rtol=1e-3, atol=1e-7) for k in out_c)
                rel = max(float(((out_g[k].cpu() - out_c[k]).abs() / out_c[k].abs().clamp_min(1e-12)).max()) for k in out_c)
                scale = float(a.grad.abs().max()) or 1.0
                gerr = float((ag.grad.cpu() - a.grad).abs().max()) / scale
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                    bf = d_gpu(ag.detach(), bg)["total"].float().cpu()
                bf_err = float(((bf - out_c["total"].detach()).abs() / out_c["total"].detach().abs()).max())
                say(f"{name:<18}{kind:<9}{rel:>13.1e}{gerr:>14.1e}{bf_err:>13.1e}")
                check(ok and gerr <= 1e-3 and bool(torch.isfinite(bf).all()),
                      f"CUDA == CPU: {name} {kind} (4 points + total, input gradient)",
                      f"rel {rel:.1e}, grad {gerr:.1e}")
        if have("lpips"):
            from lossnet_throughput import check_equal, lpips_pair

            a, b = x0.to(dev), x1.to(dev)
            with tempfile.TemporaryDirectory() as tmp:
                for net_name in ("alex", "squeeze", "vgg"):
                    ref, ours = lpips_pair(net_name, True, Path(tmp), dev)
                    ok, rel = check_equal(ref, ours, a, b, rtol=1e-4, atol=1e-7)
                    check(ok, f"CUDA: our distance == lpips package ({net_name} lin)", f"max rel diff {rel:.1e}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


# ------------------------------------------------------------------------------------------- throughput


def throughput(dev: Any, networks: tuple[str, ...], batch: int, size: int, deadline: float = float("inf")) -> None:
    import torch

    from lossnet_throughput import print_network_table, network_rows

    torch.backends.cudnn.benchmark = True
    n = 8192 if dev.type == "cuda" else 512
    summary = []
    for autocast in ("off", "bf16"):
        section(f"loss-network throughput on {dev.type}: batch {batch} @ {size} px, autocast {autocast}, torch default "
                f"TF32 settings, vs a {n}x{n} {'float32' if autocast == 'off' else 'bf16'} matmul")
        for name in networks:
            left = deadline - time.perf_counter()
            if left < 15:
                say(f"SKIP  {name} (autocast {autocast}): {left:.0f} s left of the time budget")
                continue
            rows = network_rows(name, batch, size, dev, rounds=2, min_time=0.2, matmul_n=n, autocast=autocast,
                                prefix_check=False)
            print_network_table(rows)
            summary.extend({**r, "autocast": autocast} for r in rows)
    section("bf16 autocast speedup (img/s bf16 / img/s fp32, same point)")
    fp32 = {(r["network"], r["point"]): r for r in summary if r["autocast"] == "off"}
    for r in summary:
        if r["autocast"] == "bf16" and r["point"] != "all 4" and (r["network"], r["point"]) in fp32:
            base = fp32[(r["network"], r["point"])]
            say(f"{r['network']:<18}{r['point']:<22}{base['img_s']:>10.0f} img/s fp32{r['img_s']:>10.0f} img/s bf16"
                f"{r['img_s'] / base['img_s']:>8.2f}x")


# ------------------------------------------------------------------------------------------------ study


class GpuMemorySampler:
    """Peak memory per process and in total, from nvidia-smi every 0.5 s (None where there is no nvidia-smi)."""

    def __init__(self) -> None:
        self.peak_pid: dict[str, int] = {}
        self.peak_total = 0
        self.ok = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "GpuMemorySampler":
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.ok:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            total = 0
            for line in out.strip().splitlines():
                try:
                    pid, mib = (s.strip() for s in line.split(","))
                    total += int(mib)
                    self.peak_pid[pid] = max(self.peak_pid.get(pid, 0), int(mib))
                except ValueError:
                    continue
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(0.5)


def trial_memory(dev: Any, spec_path: Path, workdir: Path) -> float:
    """Peak GPU memory of each trial of the study, run in-process on CUDA (allocator peak)."""
    import torch

    from study.plan import expand
    from study.spec import load_spec
    from trainables.reporting import LocalReporter
    from trainables.trial import run_trial

    section("peak GPU memory per trial (each trial in-process on CUDA; allocated / reserved by torch's allocator; "
            "a process adds its CUDA context: peak MiB/proc in the trials/hour table)")
    spec = load_spec(spec_path, storage=workdir / "memory-study")
    worst = 0.0
    say(f"{'trial':<48}{'seconds':>9}{'allocated MiB':>15}{'reserved MiB':>14}")
    cuda = dev.type == "cuda"
    for i, t in enumerate(expand(spec)):
        config = t.config.replace(device=dev.type)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        run_trial(config, LocalReporter(workdir / "memory" / str(i), echo=False))
        if cuda:
            torch.cuda.synchronize(dev)
        alloc = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else 0.0
        reserved = torch.cuda.max_memory_reserved(dev) / 2**20 if cuda else 0.0
        worst = max(worst, reserved)
        c = t.config
        say(f"{c.task + ':' + c.network + ':' + (c.point or 'pixel'):<48}{time.perf_counter() - start:>9.1f}"
            f"{alloc:>15.0f}{reserved:>14.0f}")
    return worst


def study_runs(dev: Any, fractions: tuple[float, ...], deadline: float, workdir: Path,
               trial_memory_first: bool = True) -> None:
    """`dpl run` of the smoke study at each GPU fraction: trials/hour and peak GPU memory per worker."""
    import torch

    from study import tracking
    from study_overhead import preset_spec, write_spec

    section("study: the smoke preset (8 trials, all 4 tasks, synthetic data) with `dpl run --gpus-per-trial F`")
    raw = preset_spec("smoke", workdir)
    cpus = max(1, (os.cpu_count() or 4) // (2 * max(int(round(1 / f)) for f in fractions)))
    if dev.type != "cuda":  # dry run: declare one (fake) GPU to Ray so that fractional requests schedule
        raw["ray"] = {"num_gpus": 1, "num_cpus": os.cpu_count() or 2}
        cpus = 1
    spec_path = write_spec(raw, workdir / "gpu-smoke.yaml", 0, None)
    worst_reserved = trial_memory(dev, spec_path, workdir) if trial_memory_first else 0.0
    total_mib = torch.cuda.get_device_properties(dev).total_memory / 2**20 if dev.type == "cuda" else 0.0
    rows = []
    for f in fractions:
        left = deadline - time.perf_counter()
        if left < 60:
            say(f"SKIP  --gpus-per-trial {f}: {left:.0f} s left of the time budget")
            continue
        storage = workdir / f"study-gpu-{f}"
        cmd = [sys.executable, "-m", "study.cli", "run", str(spec_path), "--storage", str(storage),
               "--gpus-per-trial", str(f), "--cpus-per-trial", str(cpus), "--max-concurrent", "0"]
        say(f"$ dpl {' '.join(cmd[3:])}")
        log = workdir / f"study-gpu-{f}.log"
        start = time.perf_counter()
        with GpuMemorySampler() as sampler, open(log, "w") as out:
            try:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT), env=os.environ.copy(),
                                      timeout=max(30, left - 20))
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        wall = time.perf_counter() - start
        c = tracking.client(tracking.default_tracking_uri(storage))
        exp = c.get_experiment_by_name(raw["name"])
        runs = tracking.find_runs(c, exp.experiment_id, f"tags.`{tracking.KIND_TAG}` = 'trial'") if exp else []
        done = [r for r in runs if r.info.status == "FINISHED" and r.info.end_time]
        if code != 0 or not done:
            say(f"study at {f} GPU per trial ended with {code}; last lines of {log}:")
            say("\n".join(log.read_text().splitlines()[-15:]))
        steady = (max(r.info.end_time for r in done) - min(r.info.start_time for r in done)) / 1000 if done else 0
        spans = [(r.info.start_time, r.info.end_time) for r in done]
        overlap = max((sum(1 for s, e in spans if s <= t < e) for t, _ in spans), default=0)
        per_pid = sorted(sampler.peak_pid.values(), reverse=True)
        rows.append({"fraction": f, "per_gpu": int(round(1 / f)), "done": len(done), "wall": wall,
                     "tph": len(done) / wall * 3600 if wall else 0,
                     "tph_steady": len(done) / steady * 3600 if steady else 0, "overlap": overlap,
                     "peak_proc": per_pid[0] if per_pid else None, "peak_total": sampler.peak_total if sampler.ok else None})
    section("trials/hour by trials per GPU (wall = whole `dpl run` incl. Ray start; steady = first trial start to "
            "last trial end)")
    say(f"{'gpus/trial':>10}{'per GPU':>8}{'done':>6}{'max at once':>12}{'wall s':>8}{'trials/h':>10}{'steady/h':>10}"
        f"{'peak MiB/proc':>14}{'peak MiB total':>15}")
    base = rows[0]["tph_steady"] if rows and rows[0]["tph_steady"] else None
    for r in rows:
        say(f"{r['fraction']:>10g}{r['per_gpu']:>8}{r['done']:>6}{r['overlap']:>12}{r['wall']:>8.0f}{r['tph']:>10.0f}"
            f"{r['tph_steady']:>10.0f}{r['peak_proc'] if r['peak_proc'] is not None else 'n/a':>14}"
            f"{r['peak_total'] if r['peak_total'] is not None else 'n/a':>15}"
            + (f"   {r['tph_steady'] / base:.2f}x steady vs {rows[0]['fraction']:g} GPU per trial" if base else ""))
    if worst_reserved:  # not with --skip trial-memory: nothing to size by
        fits = int(total_mib // (worst_reserved + 600)) if total_mib else 0
        say(f"sizing: the largest trial reserved {worst_reserved:.0f} MiB in-process, plus a CUDA context of a few "
            f"hundred MiB per process (peak MiB/proc above); by memory alone a {total_mib / 1024:.0f} GiB GPU holds "
            f"about {fits} such trials at once; trials/hour usually stops growing earlier (compare steady/h across "
            f"fractions)")
    for r in rows:
        if r["done"] < 8:
            say(f"WARN  only {r['done']} of 8 trials finished at {r['fraction']} GPU per trial")


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 networks, one study fraction (0.25)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 420)),
                    help="no new study run starts after this many seconds (default 420; the .sh has its own limit)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--skip", nargs="+", default=[], choices=("correctness", "throughput", "study", "trial-memory"))
    ap.add_argument("--fractions", nargs="+", type=float, help="GPU per trial of the study runs, in this order "
                                                                "(default 1 0.25 0.5; --quick: 0.25)")
    ap.add_argument("--dry-run-on-cpu", action="store_true",
                    help="without CUDA, run the CUDA sections on the CPU at tiny sizes (tests this script itself; "
                         "its numbers mean nothing)")
    args = ap.parse_args(argv)
    deadline = T0 + args.budget_s
    # the repository for `dpl run` children and Ray workers, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    dev = environment()
    cpu_reference_check()
    if dev is None and args.dry_run_on_cpu:
        import torch

        say("DRY RUN: the CUDA sections run on the CPU at tiny sizes to test this script; their numbers mean nothing")
        dev = torch.device("cpu")
        args.batch_size, args.size = min(args.batch_size, 2), min(args.size, 64)
    # the paper's networks and today's (the extended preset: ConvNeXt, Swin, EfficientNetV2, RegNet, ViT, MaxViT)
    correctness_nets = ("alexnet", "squeezenet1_1", "resnet50", "convnext_tiny", "vit_b_16") if args.quick else \
        ("alexnet", "vgg16", "squeezenet1_1", "resnet50", "efficientnet_b0", "densenet121", "convnext_tiny", "swin_t",
         "efficientnet_v2_s", "regnet_y_1_6gf", "vit_b_16", "maxvit_t")
    throughput_nets = ("vgg16", "resnet50") if args.quick else ("alexnet", "vgg16", "squeezenet1_1", "resnet50",
                                                                "efficientnet_b0", "convnext_tiny", "swin_t",
                                                                "vit_b_16")
    fractions = tuple(args.fractions or ((0.25,) if args.quick else (1.0, 0.25, 0.5)))
    if dev is not None:
        # correctness first, then trials per GPU (what sizes a study's GPU share), then throughput in what is left
        if "correctness" not in args.skip:
            cuda_correctness(dev, correctness_nets)
        if "study" not in args.skip:
            if not (have("ray") and have("mlflow")):
                say("SKIP  study section: ray and/or mlflow are not installed (gpu_check.sh tries to install them)")
            else:
                with tempfile.TemporaryDirectory(prefix="dpl-gpu-check-") as tmp:
                    study_runs(dev, fractions, deadline, Path(tmp), "trial-memory" not in args.skip)
        if "throughput" not in args.skip:
            throughput(dev, throughput_nets, args.batch_size, args.size, deadline + 30)
    else:
        section("CUDA sections")
        say("SKIP  CUDA correctness, throughput (fp32 / bf16 autocast) and the study at 1, 2 and 4 trials per GPU: "
            "no CUDA device here")
    section("result")
    if FAILURES:
        say(f"FAIL  {len(FAILURES)} correctness check(s) failed: {', '.join(FAILURES)}")
        return 1
    say("PASS  every check that ran passed" + ("" if dev is not None and dev.type == "cuda" else
                                                " (no CUDA device: CUDA parts skipped or dry-run on CPU)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
