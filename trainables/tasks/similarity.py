"""Benchmark 1: the loss network as a perceptual similarity metric on BAPPS (2AFC and JND).

Variants (Zhang et al. 2018): `baseline` scores the plain lpips distance at the point(s); `lin` learns
non-negative 1x1 channel weights on the frozen net; `tune` also fine-tunes the trunk; `scratch` trains
lin + trunk from a random initialisation. Trained variants fit a small logit head on (d0, d1) with BCE
against the human judgement on 2afc/train, as LPIPS does. Evaluation is always in eval mode, without
gradients, on all six 2afc/val subsets and both jnd/val subsets.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from trainables.config import TrialConfig
from trainables.data import bapps
from trainables.distances import PerceptualDistance
from trainables.errors import DataError, UserError
from trainables.images import to_uint8
from trainables.loss_networks import build_from_config
from trainables.metrics.similarity_scores import summarise, twoafc_score, twoafc_scores
from trainables.reporting import Reporter, load_checkpoint, staged_checkpoint
from trainables.tasks import TrainingStep
from trainables.trial import pick_device

DATASETS = ("bapps",)
VARIANTS = ("baseline", "lin", "tune", "scratch")
METRICS = {
    **{f"2afc/{s}": "max" for s in bapps.VAL_SUBSETS},
    "2afc/mean": "max",
    **{f"jnd/{s}": "max" for s in bapps.JND_SUBSETS},
    "jnd/pooled": "max",
}
PRIMARY_METRIC = "2afc/mean"
#: The perceptual distance the loss network is used with (logged as param `distance`; `dpl recommend`
#: prints it in its `PerceptualLoss(...)` line).
DISTANCE = "lpips"
#: The 2AFC score of the first `monitor_pairs` of each val subset, after every training epoch of a trained
#: variant. `baseline` trains nothing (it is scored once), and with `monitor_pairs: 0` (the paper budget:
#: BAPPS val is the test set) nothing is reported per epoch: `epochs` is 0 for both, so a halving search
#: refuses them.
EPOCH_METRIC = ("val/2afc", "max")

# epochs: total training epochs, of which the last `decay_epochs` decay the lr linearly (LPIPS: 5 + 5).
# max_train_pairs: 0 = all (seeded random choice over the pooled train subsets otherwise);
# max_eval_pairs: 0 = all (else the first N of each val subset, the same for every seed);
# monitor_pairs: first N of each 2afc/val subset scored after every epoch as `val/2afc` (0 = off;
# monitoring only, never used for selection since BAPPS val is the test set).
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(epochs=1, decay_epochs=0, batch_size=8, eval_batch_size=32, lr=1e-4, beta1=0.5,
                  max_train_pairs=16, max_eval_pairs=24, monitor_pairs=2, image_size=64, num_workers=0),
    "quick": dict(epochs=2, decay_epochs=1, batch_size=50, eval_batch_size=256, lr=1e-4, beta1=0.5,
                  max_train_pairs=5000, max_eval_pairs=500, monitor_pairs=100, image_size=64, num_workers=2),
    "paper": dict(epochs=10, decay_epochs=5, batch_size=50, eval_batch_size=256, lr=1e-4, beta1=0.5,
                  max_train_pairs=0, max_eval_pairs=0, monitor_pairs=0, image_size=64, num_workers=4),
}
#: sample triplets drawn in the artifact image
N_SAMPLES = 6


def epochs(config: TrialConfig) -> int:
    """Epochs that report `val/2afc`: the training epochs of a trained variant that monitors, else 0."""
    p = config.params
    return 0 if config.variant == "baseline" or not p["monitor_pairs"] else int(p["epochs"])


def input_size(config: TrialConfig) -> int:
    return int(config.params.get("image_size", BUDGETS["paper"]["image_size"]))


class LogitHead(nn.Module):
    """LPIPS' Dist2LogitLayer: P(p1 preferred) from [d0, d1, d0-d1, d0/(d1+eps), d1/(d0+eps)]."""

    def __init__(self, hidden: int = 32, eps: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.model = nn.Sequential(
            nn.Conv2d(5, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 1, 1), nn.Sigmoid(),
        )

    def forward(self, d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        e = self.eps
        x = torch.stack([d0, d1, d0 - d1, d0 / (d1 + e), d1 / (d0 + e)], dim=1)
        return self.model(x[:, :, None, None]).view(-1)


def triplet_distances(dist: PerceptualDistance, ref: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(ref, p0), d(ref, p1)) from one batched forward pass."""
    d = dist(torch.cat([ref, ref]), torch.cat([p0, p1]))["total"]
    n = ref.shape[0]
    return d[:n], d[n:]


def resolve_config(config: TrialConfig) -> TrialConfig:
    """`scratch` means a randomly initialised trunk: say so in the config itself, so the trial key, the
    `weights` param and the provenance all tell the truth before the trial starts."""
    return config.replace(weights="random") if config.variant == "scratch" else config


def build_metric(config: TrialConfig) -> tuple[PerceptualDistance, bool]:
    """The distance for the variant, and whether its trunk is trained.

    `scratch` always starts from random weights whatever `weights` says (that is the variant's meaning);
    `tune`/`scratch` re-enable gradients on the trunk that LossNetwork froze.
    """
    train_trunk = config.variant in ("tune", "scratch")
    # `scratch` configs carry weights=random (resolve_config); a trained trunk keeps its BatchNorms
    net = build_from_config(config, fold_batchnorm=False if train_trunk else None)
    if train_trunk:
        for p in net.body.parameters():
            p.requires_grad_(True)
    return PerceptualDistance(net, "lpips", lin=config.variant != "baseline"), train_trunk


def lr_at(epoch: int, p: dict[str, Any]) -> float:
    """LPIPS' schedule: constant, then the last `decay_epochs` step down by lr/decay_epochs per epoch."""
    if p["decay_epochs"] <= 0:
        return p["lr"]
    return p["lr"] * min(1.0, (p["epochs"] - epoch + 1) / p["decay_epochs"])


def _batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a loader, turning a DataError raised in a worker back into its one-line message."""
    try:
        yield from loader
    except DataError as exc:
        line = str(exc).strip().splitlines()[-1]
        raise DataError(line.split("DataError: ", 1)[-1]) from None


def _loader(ds: Dataset, p: dict[str, Any], device: torch.device, batch_size: int,
            generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=generator is not None, generator=generator,
                      num_workers=p["num_workers"], pin_memory=device.type == "cuda")


@torch.no_grad()
def collect_2afc(dist: PerceptualDistance, loader: DataLoader, device: torch.device
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dist.eval()
    d0s, d1s, js = [], [], []
    for b in _batches(loader):
        d0, d1 = triplet_distances(dist, *(b[k].to(device, non_blocking=True) for k in ("ref", "p0", "p1")))
        d0s.append(d0.double().cpu())
        d1s.append(d1.double().cpu())
        js.append(b["judge"].double())
    return torch.cat(d0s).numpy(), torch.cat(d1s).numpy(), torch.cat(js).numpy()


@torch.no_grad()
def collect_jnd(dist: PerceptualDistance, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    dist.eval()
    ds, ss = [], []
    for b in _batches(loader):
        ds.append(dist(b["p0"].to(device, non_blocking=True), b["p1"].to(device, non_blocking=True))["total"].double().cpu())
        ss.append(b["same"].double())
    return torch.cat(ds).numpy(), torch.cat(ss).numpy()


def _first(ds: bapps.BappsSubset, n: int) -> bapps.BappsSubset:
    return ds if not n or n >= len(ds) else ds.select(range(n))


def evaluate(dist: PerceptualDistance, val: dict[str, bapps.BappsSubset], jnd: dict[str, bapps.BappsSubset],
             p: dict[str, Any], device: torch.device) -> dict[str, float]:
    """All final metrics (see METRICS) on the given val/jnd subsets."""
    bs = p["eval_batch_size"]
    twoafc = {s: collect_2afc(dist, _loader(ds, p, device, bs), device) for s, ds in val.items()}
    jnds = {s: collect_jnd(dist, _loader(ds, p, device, bs), device) for s, ds in jnd.items()}
    return summarise(twoafc, jnds)


def train_step(dist: PerceptualDistance, head: LogitHead, opt: torch.optim.Optimizer, bce: nn.Module, ref: torch.Tensor,
               p0: torch.Tensor, p1: torch.Tensor, judge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step on a batch of triplets on the device: distances, logit head, BCE, backward, Adam, clamp;
    (loss, d0, d1)."""
    d0, d1 = triplet_distances(dist, ref, p0, p1)
    loss = bce(head(d0, d1), judge.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    dist.clamp_lin()
    return loss, d0, d1


def build_training(dist: PerceptualDistance, train_trunk: bool, p: dict[str, Any], device: torch.device
                   ) -> tuple[LogitHead, torch.optim.Optimizer]:
    """The logit head and Adam over what the variant trains: lin weights and head, and the trunk for tune/scratch."""
    head = LogitHead().to(device)
    params = [*dist.lin.parameters(), *head.parameters()]
    if train_trunk:
        params += [q for q in dist.net.body.parameters() if q.requires_grad]
    return head, torch.optim.Adam(params, lr=p["lr"], betas=(p["beta1"], 0.999))


def training_step(config: TrialConfig, device: torch.device) -> TrainingStep:
    """For `trainables.memory`: the baseline trains nothing, so its step is the evaluation forward of a batch
    of `eval_batch_size` triplets (no gradients, as `collect_2afc`); a trained variant's is `train_step` on
    `batch_size` triplets, followed by that evaluation forward."""
    p = config.params
    dist, train_trunk = build_metric(config)
    dist.to(device)

    def triplets(n: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.rand(n, 3, p["image_size"], p["image_size"], device=device) for _ in range(3))

    @torch.no_grad()
    def evaluate_batch(batch: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dist.eval()
        return triplet_distances(dist, *(batch or triplets(p["eval_batch_size"])))

    if config.variant == "baseline":
        batch = triplets(p["eval_batch_size"])
        return TrainingStep(lambda: evaluate_batch(batch), (dist,), batch, batch_setting="eval_batch_size")
    head, opt = build_training(dist, train_trunk, p, device)
    batch, judge = triplets(p["batch_size"]), torch.rand(p["batch_size"], device=device)
    bce = nn.BCELoss()

    def train() -> torch.Tensor:
        dist.train()
        head.train()
        return train_step(dist, head, opt, bce, *batch, judge)[0]

    # the evaluation batch is loaded after training, so it is made (and counted) in that phase
    return TrainingStep(train, (dist, head), (*batch, judge), opt, evaluation=evaluate_batch)


def train_epoch(dist: PerceptualDistance, head: LogitHead, opt: torch.optim.Optimizer, loader: DataLoader,
                device: torch.device) -> dict[str, float]:
    """One pass over the training triplets; returns `train/loss` (mean BCE) and `train/2afc`."""
    dist.train()
    head.train()
    bce = nn.BCELoss()
    loss_sum, score_sum, n = 0.0, 0.0, 0
    for b in _batches(loader):
        ref, p0, p1, judge = (b[k].to(device, non_blocking=True) for k in ("ref", "p0", "p1", "judge"))
        loss, d0, d1 = train_step(dist, head, opt, bce, ref, p0, p1, judge)
        k = ref.shape[0]
        loss_sum += loss.item() * k
        score_sum += float(twoafc_scores(d0.detach().cpu().numpy(), d1.detach().cpu().numpy(), judge.cpu().numpy()).sum())
        n += k
    if n == 0:
        raise DataError("BAPPS 2afc/train holds no triplets; check the data folder")
    return {"train/loss": loss_sum / n, "train/2afc": score_sum / n}


def training_set(root: Path, p: dict[str, Any], seed: int) -> Dataset:
    """All 2afc/train subsets pooled; `max_train_pairs` > 0 keeps a seeded random choice of the pool."""
    parts = [bapps.open_subset(root, "2afc", "train", s, p["image_size"]) for s in bapps.TRAIN_SUBSETS]
    total = sum(len(x) for x in parts)
    n = p["max_train_pairs"]
    if n and n < total:
        chosen = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
        offsets = np.cumsum([0] + [len(x) for x in parts])
        parts = [x.select((chosen[(chosen >= lo) & (chosen < hi)] - lo).tolist())
                 for x, lo, hi in zip(parts, offsets[:-1], offsets[1:])]
    return ConcatDataset([x for x in parts if len(x)])


@torch.no_grad()
def save_samples(dist: PerceptualDistance, ds: bapps.BappsSubset, device: torch.device, out: Path) -> Path:
    """A PNG with rows ref | p0 | p1 (x2) captioned with d0, d1 and the human judgement."""
    dist.eval()
    n = min(N_SAMPLES, len(ds))
    items = [ds[i] for i in range(n)]
    ref, p0, p1 = (torch.stack([it[k] for it in items]).to(device) for k in ("ref", "p0", "p1"))
    d0, d1 = triplet_distances(dist, ref, p0, p1)
    s = ds.image_size * 2
    canvas = Image.new("RGB", (3 * s + 190, n * (s + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, it in enumerate(items):
        for c, k in enumerate(("ref", "p0", "p1")):
            tile = Image.fromarray(to_uint8(it[k])).resize((s, s), Image.NEAREST)
            canvas.paste(tile, (c * s, r * (s + 4)))
        draw.text((3 * s + 6, r * (s + 4) + 8),
                  f"d0={float(d0[r]):.4f}\nd1={float(d1[r]):.4f}\nhumans p1: {float(it['judge']):.2f}", fill="black")
    canvas.save(out)
    return out


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def run(config: TrialConfig, reporter: Reporter) -> dict[str, float]:
    """One trial: (train the variant, resuming from the reporter's checkpoint, then) score on BAPPS val."""
    p = config.params
    if not config.data_root:
        raise UserError("data_root: give the BAPPS folder holding 2afc/ and jnd/ "
                        "(`dpl data fetch bapps` or `dpl data synth bapps`)")
    root = Path(config.data_root)
    device = pick_device(config.device)
    size = p["image_size"]
    val = {s: _first(bapps.open_subset(root, "2afc", "val", s, size), p["max_eval_pairs"]) for s in bapps.VAL_SUBSETS}
    jnd = {s: _first(bapps.open_subset(root, "jnd", "val", s, size), p["max_eval_pairs"]) for s in bapps.JND_SUBSETS}
    monitor = {s: _first(ds, p["monitor_pairs"]) for s, ds in val.items()} if p["monitor_pairs"] else {}

    dist, train_trunk = build_metric(config)
    dist.to(device)
    reporter.set_info({"similarity_trunk_trained": train_trunk, "similarity_lin": config.variant != "baseline"})

    train_metrics: dict[str, float] = {}
    epoch = 1
    if config.variant != "baseline":
        head, opt = build_training(dist, train_trunk, p, device)
        start = 1
        state = load_checkpoint(reporter.resume_dir())
        if state is not None:
            try:
                dist.lin.load_state_dict(state["lin"])
                head.load_state_dict(state["head"])
                if train_trunk:
                    dist.net.body.load_state_dict(state["trunk"])
                opt.load_state_dict(state["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"the checkpoint in {reporter.resume_dir()} belongs to another trial (network, point or variant "
                    f"differ: {str(exc).splitlines()[0]}); use a fresh output folder or delete that checkpoint"
                ) from exc
            start = int(state["epoch"]) + 1
            train_metrics = dict(state["train_metrics"])
            reporter.set_info({"resumed_from_epoch": int(state["epoch"])})
        train = training_set(root, p, config.seed)
        epoch = max(start - 1, 1)
        for epoch in range(start, p["epochs"] + 1):
            _set_lr(opt, lr_at(epoch, p))
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)  # same order after a resume
            train_metrics = {**train_epoch(dist, head, opt, _loader(train, p, device, p["batch_size"], gen), device),
                             "train/lr": lr_at(epoch, p)}
            metrics = dict(train_metrics)
            if monitor:
                metrics["val/2afc"] = float(np.mean([twoafc_score(*collect_2afc(
                    dist, _loader(ds, p, device, p["eval_batch_size"]), device)) for ds in monitor.values()]))
            final = evaluate(dist, val, jnd, p, device) if epoch == p["epochs"] else {}
            state = {
                "epoch": epoch,
                "lin": dist.lin.state_dict(),
                "head": head.state_dict(),
                "optimizer": opt.state_dict(),
                "train_metrics": train_metrics,
                **({"trunk": dist.net.body.state_dict()} if train_trunk else {}),
            }
            if final:
                _log_samples(dist, val, device, reporter)
            with staged_checkpoint(state) as d:
                reporter.report(epoch, {**metrics, **final}, checkpoint_dir=d)
            if final:
                return final
    # baseline, or a trained trial whose checkpoint is already past the last epoch: evaluate and report
    final = evaluate(dist, val, jnd, p, device)
    _log_samples(dist, val, device, reporter)
    reporter.report(epoch, {**train_metrics, **final})
    return final


def _log_samples(dist: PerceptualDistance, val: dict[str, bapps.BappsSubset], device: torch.device,
                 reporter: Reporter) -> None:
    with tempfile.TemporaryDirectory(prefix="dpl-sim-") as tmp:
        path = save_samples(dist, val[bapps.VAL_SUBSETS[0]], device, Path(tmp) / "triplets.png")
        reporter.log_artifact(path, subdir="samples")
