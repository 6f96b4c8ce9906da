"""`dpl`: the command line. Parses, dispatches, and turns user errors into one line and exit code 2.

Heavy imports (torch, ray, mlflow) happen inside the commands, so `dpl --help` and bad-flag errors are
instant.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_USER_ERROR = 2


def _print_json(obj: Any) -> None:
    """Strict JSON (jq, JavaScript): a non-finite number, e.g. the PSNR of identical images, becomes the
    string "inf"/"-inf"/"nan" instead of Python's bare Infinity/NaN tokens."""
    print(json.dumps(_json_safe(obj), indent=2, default=str, allow_nan=False))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ networks


def _top1_text(top1: dict[str, float]) -> str:
    """Every weight set's ImageNet top-1, short: `V1 76.13, V2 80.86, SWAG_E2E_V1 85.30`."""
    return ", ".join(f"{k.removeprefix('IMAGENET1K_')} {v:.2f}" for k, v in top1.items())


def cmd_networks(args: argparse.Namespace) -> int:
    from trainables import loss_networks as ln

    if args.nodes:
        return _list_nodes(ln, args.nodes, args.size, args.json)
    if args.all:
        names = ln.classification_models()
        rows = [ln.network_metadata(n) for n in names]
        if args.json:
            _print_json(rows)
        else:
            shown = [{**r, "table": "paper" if r["paper"] else "extended" if r["extended"] else "",
                      "fixed_size": r["fixed_size"] or "", "top1": _top1_text(r["imagenet_top1"])} for r in rows]
            print(_table(shown, ["network", "family", "table", "fixed_size", "top1"]))
        return 0
    names = ln.expand_networks(args.network or ["all"])
    rows, notes = [], []
    for name in names:
        ln.check_network(name)
        size = ln.network_input_size(name, "random", args.size, "auto")  # a fixed-size network at its own size
        if size != args.size:
            notes.append(f"{name} takes {size} px input only: shown at {size} px (resize: auto)")
        for point in ln.resolve_points(name, args.layer or ["all"]):
            rows.append(ln.cached_point_metadata(name, point, size))
    if args.json:
        _print_json(rows)
    else:
        shown = [{**r, "top1": _top1_text(r["imagenet_top1"]), "shape": "x".join(map(str, r["feature_shape"])),
                  "layout": r["feature_layout"], "size": r["input_size"]} for r in rows]
        print(_table(shown, ["network", "point", "position", "family", "batch_norm", "relative_depth",
                             "params_to_point", "gflops_to_point", "size", "shape", "layout", "top1"]))
        for note in notes:
            print(f"note: {note}")
    return 0


def _list_nodes(ln: Any, name: str, size: int, as_json: bool) -> int:
    """The nodes of a network that can be points, with their layout; the others (sizes, tuples, the input,
    attention windows) only by count here and with the reason in --json."""
    ln.check_network(name)
    size = ln.network_input_size(name, "random", size, "auto")
    graph = ln.graph_layouts(name)
    points = [{"node": n, "layout": layout.describe(size)} for n, layout in graph.layouts.items()]
    if as_json:
        _print_json({"network": name, "input_size": size, "points": points,
                     "not_points": [{"node": n, "why": why} for n, why in graph.refused.items()]})
        return 0
    print(_table(points, ["node", "layout"]))
    if graph.refused:
        print(f"({len(graph.refused)} other graph nodes cannot be points, e.g. {next(iter(graph.refused))}: "
              f"{next(iter(graph.refused.values()))}; --json lists them with the reason)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ distance


def cmd_distance(args: argparse.Namespace) -> int:
    import torch

    from trainables import loss_networks as ln
    from trainables.distances import PerceptualDistance
    from trainables.images import read_rgb

    img0 = read_rgb(args.img0, args.size)
    img1 = read_rgb(args.img1, args.size)
    if img0.shape != img1.shape:
        from trainables.errors import UserError

        raise UserError(
            f"images differ in size ({args.img0}: {tuple(img0.shape[1:])}, {args.img1}: {tuple(img1.shape[1:])}); "
            f"pass --size S to resize both"
        )
    ln.check_network(args.network)
    ln.network_input_size(args.network, args.weights, tuple(img0.shape[1:]), args.resize)  # before building
    net = ln.build_loss_network(
        args.network, args.layer or ["all"], weights=args.weights, normalisation=args.normalisation,
        transform_input=args.transform_input, seed=args.seed, resize=args.resize,
    )
    if args.weights == "random":
        print("note: random loss-network weights (--weights random): distances are not ImageNet-calibrated",
              file=sys.stderr)
    dist = PerceptualDistance(net, args.distance)
    if args.lin:
        if args.distance != "lpips":
            from trainables.errors import UserError

            raise UserError("--lin applies to --distance lpips only")
        dist.load_lpips_lin(args.lin)
    with torch.no_grad():
        out = dist(img0[None], img1[None])
    result = {k: float(v[0]) for k, v in out.items()}
    if args.json:
        _print_json({"network": args.network, "distance": args.distance, "weights": args.weights,
                     "points": {k: v for k, v in result.items() if k != "total"}, "total": result["total"]})
    else:
        for k, v in result.items():
            print(f"{k}\t{v:.6f}")
    return 0


# ---------------------------------------------------------------------------------------------- data


def cmd_data(args: argparse.Namespace) -> int:
    """One dataset into --out, or `all` of them into --out/<folder> (the layout the presets read)."""
    from trainables.data import ROOT_DIRS, dataset_module

    if args.name == "all":
        targets = [(name, Path(args.out) / folder) for name, folder in ROOT_DIRS.items()]
    else:
        targets = [(args.name, Path(args.out))]
    for name, root in targets:
        module = dataset_module(name)
        if args.action == "synth":
            from trainables.progress import Progress

            with Progress(f"synth {name}", unit="files" if name in ("superres", "roads") else "images") as bar:
                out = module.synthesize(root, seed=args.seed, size=args.size, progress=bar)
            print(f"wrote synthetic {name} data ({args.size}, seed {args.seed}) to {out}")
        else:
            out = module.download(root)
            print(f"{name} is ready in {out}")
    if args.name == "all":
        print(f"use it with --data-root {args.out} (or DPL_DATA_ROOT={args.out})")
    return 0


# --------------------------------------------------------------------------------------------- trial


def _trial_config(args: argparse.Namespace) -> Any:
    from trainables.config import TrialConfig, parse_assignments

    return TrialConfig(
        task=args.task,
        network=args.network,
        points=tuple(args.layer or ()),
        dataset=args.dataset or "",
        variant=args.variant or _default_variant(args.task),
        seed=args.seed,
        weights=args.weights,
        normalisation=args.normalisation,
        mode=args.mode,
        transform_input=args.transform_input,
        resize=args.resize,
        budget=args.budget,
        params=parse_assignments(args.set),
        data_root=str(Path(args.data).resolve()) if args.data else "",
        device=args.device,
    )


def _default_variant(task: str) -> str:
    from trainables.tasks import task_module

    return task_module(task).VARIANTS[0]


def cmd_trial(args: argparse.Namespace) -> int:
    from trainables.config import trial_key
    from trainables.errors import UserError
    from trainables.reporting import LocalReporter
    from trainables.trial import prepare, run_trial

    config = prepare(_trial_config(args))
    if not config.data_root:
        raise UserError(f"--data DIR is required (make synthetic data with `dpl data synth ...`)")
    key = trial_key(config)
    out = Path(args.out) if args.out else Path("runs") / f"{config.task}-{config.network}-{key}"
    if config.weights == "random":
        print("note: random loss-network weights (--weights random); results say nothing about ImageNet features",
              file=sys.stderr)
    print(f"trial {key} -> {out}", file=sys.stderr)
    metrics = run_trial(config, LocalReporter(out, echo=not args.json))
    result = {"trial_key": key, "task": config.task, "dataset": config.dataset, "network": config.network,
              "point": config.point, "variant": config.variant, "weights": config.weights, "metrics": metrics}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    if args.json:
        _print_json(result)
    else:
        for k, v in metrics.items():
            print(f"{k}\t{v:.6g}")
    return 0


# ---------------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    if args.kind == "superres":
        from trainables.metrics.sr_metrics import evaluate_folders

        result = evaluate_folders(Path(args.sr), Path(args.hr), args.scale, protocol=args.protocol)
    else:
        from trainables.metrics.ccq import evaluate_folders

        result = evaluate_folders(Path(args.pred), Path(args.label), tolerance=args.tolerance, threshold=args.threshold)
    if args.json:
        _print_json(result)
    else:
        for k, v in result.items():
            if not isinstance(v, (dict, list)):
                print(f"{k}\t{v}")
    return 0


# --------------------------------------------------------------------------------------------- study


def cmd_run(args: argparse.Namespace) -> int:
    from study.driver import run_study
    from study.spec import load_spec

    spec = load_spec(args.spec, preset=args.preset, overrides=args.set, storage=args.storage, data_root=args.data_root)
    return run_study(
        spec,
        tracking_uri=args.tracking_uri,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent,
        ray_address=args.address,
        checkpoints=args.checkpoints,
        verbose=args.verbose,
        gpu_memory=args.gpu_memory,
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from study.driver import run_study
    from study.spec import load_saved_spec

    spec = load_saved_spec(Path(args.study_dir), data_root=args.data_root)
    return run_study(spec, tracking_uri=args.tracking_uri, max_concurrent=args.max_concurrent,
                     ray_address=args.address, checkpoints=args.checkpoints, verbose=args.verbose)


def cmd_plan(args: argparse.Namespace) -> int:
    """The resolved trials, counts and compute of a study, without Ray, MLflow or writing anything."""
    from study.plan import expand, format_report, plan_report
    from study.resources import use_gpu_memory
    from study.spec import load_spec

    spec = load_spec(args.spec, preset=args.preset, overrides=args.set, storage=args.storage, data_root=args.data_root)
    use_gpu_memory(spec, args.gpu_memory)
    trials = expand(spec)
    report = plan_report(spec, compute=not args.no_compute, gpu_tflops=args.gpu_tflops, trials=trials)
    if spec.raw["search"]["type"] == "halving":  # its rungs and compute (imports Ray Tune's scheduler: seconds)
        from study.halving import plan_section

        report["search"] = plan_section(spec, trials, report.get("compute", {}).get("total_gflops"))
    _print_json(report) if args.json else print(format_report(report))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from study.status import print_status

    if args.watch:
        from study.status import watch_status

        return watch_status(Path(args.study_dir), tracking_uri=args.tracking_uri, interval=args.interval,
                            as_json=args.json)
    return print_status(Path(args.study_dir), tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import analyze

    tracking_uri = args.tracking_uri
    if args.study_dir and not tracking_uri:
        from study.tracking import default_tracking_uri

        tracking_uri = default_tracking_uri(Path(args.study_dir))
    from trainables.errors import UserError

    problems: list[str] = []
    try:
        out = analyze(tracking_uri, args.experiment, Path(args.out), problems=problems, compare=args.compare,
                      figures=not args.no_figures)
    except LookupError as exc:  # unknown experiment: the message lists the available ones
        raise UserError(str(exc).strip("'\"")) from exc
    for line in problems:  # e.g. an unreadable plan.json: coverage may be incomplete, say so
        print(f"dpl: warning: {line}", file=sys.stderr)
    from study.tracking import refresh_study_description

    refresh_study_description(tracking_uri, args.experiment)  # the study run's report link names this analysis
    print(f"report written to {out}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from analysis.recommend import format_text, recommend
    from trainables.errors import UserError

    tracking_uri = args.tracking_uri
    if args.study_dir and not tracking_uri:
        from study.tracking import default_tracking_uri

        tracking_uri = default_tracking_uri(Path(args.study_dir))
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    try:
        answer = recommend(tracking_uri, args.experiment, args.task, dataset=args.dataset, top=args.top)
    except LookupError as exc:  # unknown study / task / dataset: the message lists what exists
        raise UserError(str(exc).strip("'\"")) from exc
    if args.json:
        _print_json(answer)
    else:
        print(format_text(answer))
    return 0


# ---------------------------------------------------------------------------------------------- parser


def _add_network_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--network", required=required, help="torchvision model name, e.g. vgg16 (`dpl networks --all`)")
    p.add_argument("--layer", action="append", metavar="NODE",
                   help="extraction point: FX node name (features.3, layer1), p1..p4 or all; repeatable")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (IMAGENET1K_V1, downloaded to TORCH_HOME), random (seeded), a weight-set name "
                        "(IMAGENET1K_V2) or a state-dict file")
    p.add_argument("--normalisation", choices=("imagenet", "none"), default="imagenet",
                   help="input normalisation before the loss network (none = the reference's SR/AE behaviour)")
    p.add_argument("--transform-input", dest="transform_input", choices=("auto", "on", "off"), default="auto",
                   help="GoogLeNet/Inception input re-scaling: auto = as torchvision does for these weights; "
                        "off = the reference implementation")
    p.add_argument("--resize", default="off", metavar="off|auto|SIZE",
                   help="resize the loss network's input: off (default), auto (a fixed-size network such as "
                        "ViT or MaxViT gets its own size, others the input as given) or SIZE x SIZE px")
    p.add_argument("--seed", type=int, default=0)


#: `dpl run --verbose` / `dpl resume --verbose`
VERBOSE_HELP = ("also show Ray's own log lines, Ray Tune's status tables and the trials' own output (tracebacks "
                "included); default: one line per trial event and a progress line")

GPU_MEMORY_HELP = ("memory of one GPU in GiB (e.g. 24, 40, 80): each trial asks for the smallest 1/8 of it that holds "
                   "its memory estimate plus margin (resources.gpu: auto)")
#: = study.spec.PRESETS, spelled out so that parsing stays import-free
PRESETS = ("smoke", "quick", "paper", "corrected", "extended")


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    """A study spec (file or preset) and its overrides: shared by `run` and `plan`."""
    p.add_argument("spec", nargs="?", help="study YAML file")
    p.add_argument("--preset", choices=PRESETS, help="a built-in study (paper: the authors' protocol; corrected: "
                                                     "the same grid, corrected; see docs/REPRODUCTION.md; "
                                                     "extended: today's networks and recipes, corrected)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec key (dotted: tasks.superres.mode=train; lists: mode=[eval,train]); repeatable")
    p.add_argument("--storage", help="study directory (default studies/<name>)")
    p.add_argument("--data-root", help="where relative data paths point (default $DPL_DATA_ROOT, else datasets/); "
                                       "`dpl data fetch all --out DIR` fills it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpl", description="Deep perceptual loss study (Pihlgren et al.)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("networks", help="the loss-network registry with metadata")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="every torchvision classification model")
    p.add_argument("--nodes", metavar="NETWORK", help="list the nodes of NETWORK that can be points, with "
                                                      "their feature layout")
    p.add_argument("--network", action="append", help="only these networks; `all` = the paper's 14 (default), "
                                                      "`extended` = the modern set; repeatable")
    p.add_argument("--layer", action="append", help="only these points (default: each network's 4)")
    p.add_argument("--size", type=int, default=224, help="input size for feature shapes and FLOPs (a fixed-size "
                                                         "network is shown at its own size)")
    p.set_defaults(func=cmd_networks)

    p = sub.add_parser("distance", help="perceptual distance between two images")
    p.add_argument("img0")
    p.add_argument("img1")
    _add_network_flags(p)
    p.add_argument("--distance", choices=("lpips", "mse"), default="lpips")
    p.add_argument("--lin", help="lin weights in the lpips package's format (e.g. lpips/weights/v0.1/vgg.pth)")
    p.add_argument("--size", type=int, help="resize both images to SIZE x SIZE (default: no resizing)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_distance)

    p = sub.add_parser("data", help="make synthetic data or download a dataset")
    p.add_argument("action", choices=("synth", "fetch"))
    p.add_argument("name", help="bapps, superres, roads, svhn, stl10, or all (each into OUT/<folder>: "
                                "bapps, superres, mass_roads, svhn, stl10 = what the presets read)")
    p.add_argument("--out", required=True, help="dataset root to write (for all: the data root)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("smoke", "small"), default="smoke",
                   help="synthetic data size: smoke (seconds, the smoke preset) or small (a quick-budget study)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("trial", help="run one trial in-process and print its metrics")
    p.add_argument("task", help="similarity, superres, delineation or autoencoder")
    _add_network_flags(p)
    p.add_argument("--data", help="dataset root")
    p.add_argument("--dataset", help="dataset name when a task has several (autoencoder: svhn|stl10)")
    p.add_argument("--variant", help="task variant (similarity: baseline|lin|tune|scratch)")
    p.add_argument("--budget", choices=("smoke", "quick", "paper"), default="smoke")
    p.add_argument("--mode", choices=("eval", "train"), default="eval", help="loss-network BatchNorm/Dropout mode")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a task setting; repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--out", help="trial directory (default runs/<task>-<network>-<key>); rerun to resume")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trial)

    p = sub.add_parser("eval", help="score existing outputs against ground truth")
    esub = p.add_subparsers(dest="kind", required=True)
    e = esub.add_parser("superres", help="PSNR/SSIM on the Y channel of SR images vs HR images (paired by name)")
    e.add_argument("--sr", required=True)
    e.add_argument("--hr", required=True)
    e.add_argument("--scale", type=int, required=True)
    e.add_argument("--protocol", choices=("full", "center288"), default="full")
    e.add_argument("--json", action="store_true")
    e = esub.add_parser("roads", help="correctness/completeness/quality of road probability maps")
    e.add_argument("--pred", required=True)
    e.add_argument("--label", required=True)
    e.add_argument("--tolerance", type=float, default=3.0, help="buffer in pixels (0 = pixel-exact)")
    e.add_argument("--threshold", type=float, default=0.3)
    e.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="run (or continue) a study on Ray Tune with MLflow tracking")
    _add_spec_flags(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite store inside the study directory)")
    p.add_argument("--gpus-per-trial", type=float, help="fraction of a GPU per trial (0.25 = 4 trials per GPU)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help=GPU_MEMORY_HELP)
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--max-concurrent", type=int, help="at most N trials at once")
    p.add_argument("--address", help="Ray cluster to run on: HOST:PORT, or auto (the cluster `ray start` started "
                                     "on this machine, or $RAY_ADDRESS); default: a private local Ray that dpl "
                                     "starts and stops, even when another Ray runs here")
    p.add_argument("--checkpoints", choices=("auto", "shared", "mlflow"), default=None,
                   help="where trials keep checkpoints (default: the spec's `checkpoints`, auto): auto = mlflow for an http(s) tracking URI, shared otherwise; "
                        "mlflow = in the trial's MLflow run (no shared filesystem needed), shared = <study>/checkpoints")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="the resolved trials, counts per task and a compute estimate (runs nothing)")
    _add_spec_flags(p)
    p.add_argument("--no-compute", action="store_true", help="skip the compute estimate (it builds each network once)")
    p.add_argument("--gpu-memory", type=float, metavar="GIB", help=GPU_MEMORY_HELP + "; shows each trial's memory "
                   "estimate and fraction, trials per GPU and GPU-hours per task")
    p.add_argument("--gpu-tflops", type=float, metavar="TFLOPS", help="dense FP32 peak of the GPU for the GPU-hours "
                   "(default 19.5, an A100; times each task's measured efficiency)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("resume", help="continue the study saved in a study directory")
    p.add_argument("study_dir")
    p.add_argument("--data-root", help="read the study's relative data paths from here from now on")
    p.add_argument("--tracking-uri")
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--address", help="as for `dpl run`")
    p.add_argument("--checkpoints", choices=("auto", "shared", "mlflow"), default=None,
                   help="as for `dpl run`")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="coverage of a study: planned / finished / running / failed / pending")
    p.add_argument("study_dir")
    p.add_argument("--tracking-uri")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true",
                   help="refresh until the study ends (no driver holds its lock and no trial is running); Ctrl-C stops")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch (default 5)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("analyze", help="tables, convention tests, figures and a report from MLflow")
    p.add_argument("--experiment", required=True, help="MLflow experiment (= study name)")
    p.add_argument("--out", required=True)
    p.add_argument("--tracking-uri")
    p.add_argument("--study-dir", help="use the study directory's embedded MLflow store")
    p.add_argument("--compare", metavar="EXPERIMENT",
                   help="a second study of the same grid (e.g. paper vs corrected): verdicts side by side, "
                        "rank correlation per benchmark, the networks that move most")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures (much faster)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("recommend", help="the best (network, point) for a task from a finished study")
    p.add_argument("--experiment", required=True, help="MLflow experiment (= study name)")
    p.add_argument("--task", required=True)
    p.add_argument("--dataset", help="needed when the task ran on several datasets")
    p.add_argument("--top", type=int, default=10, help="how many candidates to list (default 10)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tracking-uri")
    p.add_argument("--study-dir", help="use the study directory's embedded MLflow store")
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # MLflow draws a bar per artifact download (plan.json, histories): dozens of lines in a log, none useful
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = build_parser().parse_args(argv)
    from trainables.errors import UserError

    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader that closed the pipe shows here (below), not in Python's exit
        return code
    except UserError as exc:
        print(f"dpl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("dpl: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dpl status | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit flush would raise again
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped


if __name__ == "__main__":
    sys.exit(main())
