"""Benchmark 4: dimensionality reduction with perceptual-loss autoencoders (Pihlgren et al. 2020).

A deterministic convolutional autoencoder (the reference's FourLayerCVAE with gamma = 0) is trained with
the feature MSE at the loss-network point (or pixel MSE for network "none") on unlabelled images: SVHN
`extra`, 32x32 reflect-padded to 64x64, or STL-10 `unlabeled` at 96x96. Its codes of the labelled
`train` split then train seven MLP probes (trainables.metrics.probes); their accuracy on the `test` split
is the score. Unlike the reference, every split and initialisation is seeded, the loss network stays in
eval mode unless `mode=train` asks otherwise, and its input is ImageNet-normalised unless
`normalisation=none` (the reference's behaviour).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from trainables import distances, loss_networks
from trainables.config import ConfigError, TrialConfig
from trainables.data import stl10, svhn
from trainables.errors import DataError
from trainables.images import save_rgb
from trainables.metrics import probes
from trainables.reporting import Reporter, load_checkpoint, staged_checkpoint
from trainables.tasks import TrainingStep
from trainables.trial import NO_NETWORK, pick_device

DATASETS = ("svhn", "stl10")
VARIANTS = ("default",)
METRICS = {"probe/best_val_test_acc": "max", "probe/mean_test_acc": "max", "probe/max_test_acc": "max"}
PRIMARY_METRIC = "probe/best_val_test_acc"
#: The loss network is used with the feature MSE, logged as param `distance`.
DISTANCE = "mse"
#: The autoencoder's own validation loss is the feature MSE of its loss network, whose scale differs from
#: network to network, so it cannot rank loss networks; the probes' accuracy that does is known only after
#: the last epoch. So every epoch fits a linear probe in closed form (ridge regression to one-hot labels, on
#: standardised codes) on a seeded subset of the labelled *train* split and reports its accuracy on a held-out
#: 20 % of that subset: `val/linear_probe_acc`. The test split is never touched; the cost is encoding
#: EPOCH_PROBE_IMAGES images and one z x z solve per epoch.
EPOCH_METRIC = ("val/linear_probe_acc", "max")
EPOCH_PROBE_IMAGES = 2000
#: Ridge penalty of the per-epoch probe, relative to the number of codes it is fitted on (codes are z-scored).
EPOCH_PROBE_RIDGE = 1e-2
#: Wall time relative to a similarity trial (smoke, 2 cores: 4.5 s vs ~1 s); see study.plan.longest_first.
RELATIVE_COST = 4.0
#: network "none" = the pixel-MSE baseline autoencoder (no loss network is built).
NETWORKLESS_OK = (NO_NETWORK,)
#: SVHN's 32x32 crops are reflect-padded by this much on each side, to 64x64 (as the reference does).
SVHN_PAD = 16
SIZES = {"svhn": 32 + 2 * SVHN_PAD, "stl10": stl10.SIZE}

#: probe_standardise: z-score the codes before probing (see probes.evaluate_probes; False = the reference)
_COMMON: dict[str, Any] = dict(lr=1e-3, z_dim=64, probe_lr=1e-3, probe_loss="ce", probe_standardise=True)
#: Subset sizes of 0 mean "the whole split". Subsets are seeded random draws, not the first N images.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(_COMMON, epochs=2, batch_size=32, patience=2, ae_train_images=256, probe_train_images=0,
                  test_images=0, probe_epochs=40, probe_patience=5, probe_batch_size=256, num_workers=0),
    "quick": dict(_COMMON, epochs=10, batch_size=256, patience=3, ae_train_images=50_000, probe_train_images=0,
                  test_images=0, probe_epochs=200, probe_patience=10, probe_batch_size=256, num_workers=2),
    # the reference: 50 epochs, patience max(10, 50/20); probes 500 epochs, patience max(10, 500/20)
    "paper": dict(_COMMON, epochs=50, batch_size=256, patience=10, ae_train_images=0, probe_train_images=0,
                  test_images=0, probe_epochs=500, probe_patience=25, probe_batch_size=256, num_workers=4),
}
#: (unlabelled split the autoencoder learns from, labelled split the probes learn from, test split)
SPLITS = {"svhn": ("extra", "train", "test"), "stl10": ("unlabeled", "train", "test")}
SAMPLES = 8


def input_size(config: TrialConfig) -> int:
    return SIZES[config.dataset or DATASETS[0]]


# -------------------------------------------------------------------------------------------- model


class ConvAutoencoder(nn.Module):
    """The reference's FourLayerCVAE without the variational part (gamma = 0: the code is the mean).

    Encoder: 4 x [conv k4 s2 + BN + ReLU], 3 -> 32 -> 64 -> 128 -> 256, linear to z. Decoder: linear to
    1024 x g x g (g = (size - 64) / 16 + 1), ReLU, transposed convs k5, k5, k6, k6 (stride 2) back to
    3 x size x size with a sigmoid; spatially 1 -> 5 -> 13 -> 30 -> 64 or 3 -> 9 -> 21 -> 46 -> 96.
    """

    def __init__(self, size: int, z_dim: int = 64) -> None:
        super().__init__()
        if size < 64 or (size - 64) % 16:
            raise ConfigError(f"autoencoder input size {size}: must be 64 + 16n (64, 80, 96, ...)")
        layers: list[nn.Module] = []
        for cin, cout in ((3, 32), (32, 64), (64, 128), (128, 256)):
            layers += [nn.Conv2d(cin, cout, 4, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        enc = size
        for _ in range(4):
            enc = (enc - 4) // 2 + 1
        self.to_code = nn.Linear(256 * enc * enc, z_dim)
        self.g = (size - 64) // 16 + 1
        self.from_code = nn.Sequential(nn.Linear(z_dim, 1024 * self.g * self.g), nn.ReLU(inplace=True))
        layers = []
        for cin, cout, k in ((1024, 128, 5), (128, 64, 5), (64, 32, 6)):
            layers += [nn.ConvTranspose2d(cin, cout, k, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*layers, nn.ConvTranspose2d(32, 3, 6, 2), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.from_code(z).view(len(z), 1024, self.g, self.g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    """uint8 images (N, 3, h, w) on the CPU, kept as uint8 (4x less memory than float) and converted per
    batch on the device; int64 labels 0..9. `ae` is the unlabelled split the autoencoder learns from."""

    ae: torch.Tensor
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def _subset(images: np.ndarray, labels: np.ndarray | None, limit: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A seeded random draw of `limit` images (0 = all), in file order; reads only those from a memmap."""
    n = len(images)
    idx = np.arange(n) if limit <= 0 or limit >= n else np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    x = torch.from_numpy(np.ascontiguousarray(images[idx]))
    return x, (None if labels is None else torch.from_numpy(np.asarray(labels)[idx]).long())


def load_data(config: TrialConfig) -> Data:
    p = config.params
    if not config.data_root:
        raise DataError(f"no data folder given: pass --data-root (the {config.dataset} folder; `dpl data synth "
                        f"{config.dataset}` makes a small synthetic one)")
    reader: Callable[[str, str], tuple[np.ndarray, np.ndarray | None]] = (
        svhn.read if config.dataset == "svhn" else stl10.read
    )
    ae_split, train_split, test_split = SPLITS[config.dataset]
    ae, _ = _subset(*reader(config.data_root, ae_split), p["ae_train_images"], config.seed)
    train = _subset(*reader(config.data_root, train_split), p["probe_train_images"], config.seed + 1)
    test = _subset(*reader(config.data_root, test_split), p["test_images"], config.seed + 2)
    return Data(ae, train, test)  # type: ignore[arg-type]


class _Batches(Dataset):
    """Map-style dataset indexed by a whole batch of positions in `index`: one gather per batch instead of
    N item reads, and no copy of the images per split (the paper's STL-10 set alone is 2.7 GB)."""

    def __init__(self, images: torch.Tensor, index: torch.Tensor | None = None) -> None:
        self.images = images
        self.index = torch.arange(len(images)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, positions: list[int]) -> torch.Tensor:
        return self.images[self.index[positions]]


def batches(images: torch.Tensor, batch_size: int, device: torch.device, num_workers: int,
            index: torch.Tensor | None = None, shuffle_seed: int | None = None) -> DataLoader:
    """uint8 batches of `images[index]`, shuffled with a generator seeded per epoch (so that a resumed
    trial sees the same order as an uninterrupted one)."""
    data = _Batches(images, index)
    sampler = (SequentialSampler(range(len(data))) if shuffle_seed is None else
               RandomSampler(range(len(data)), generator=torch.Generator().manual_seed(shuffle_seed)))
    return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                      num_workers=num_workers, pin_memory=device.type == "cuda")


def to_input(batch: torch.Tensor, dataset: str, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> float (B, 3, S, S) in [0, 1] on `device`; SVHN reflect-padded to 64x64."""
    x = batch.to(device, non_blocking=True).float().div_(255)
    return F.pad(x, (SVHN_PAD,) * 4, mode="reflect") if dataset == "svhn" else x


# ----------------------------------------------------------------------------------------- training


def _epoch(model: ConvAutoencoder, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], loader: DataLoader,
           dataset: str, device: torch.device, opt: torch.optim.Optimizer | None) -> float:
    """Mean loss over one pass; trains when `opt` is given, else evaluates without gradients."""
    total, n = 0.0, 0
    with torch.set_grad_enabled(opt is not None):
        for batch in loader:
            loss = train_step(model, loss_fn, opt, batch, dataset, device)
            total += float(loss.detach()) * len(batch)
            n += len(batch)
    return total / n


def train_step(model: ConvAutoencoder, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               opt: torch.optim.Optimizer | None, batch: torch.Tensor, dataset: str, device: torch.device) -> torch.Tensor:
    """The loss of one uint8 batch; with `opt`, also backward and an Adam step (a training step)."""
    x = to_input(batch, dataset, device)
    loss = loss_fn(model(x), x)
    if opt is not None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss


def build_training(config: TrialConfig, device: torch.device) -> tuple[
        ConvAutoencoder, nn.Module | None, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.optim.Optimizer]:
    """The autoencoder (seeded), the loss network (None: pixel MSE), the loss and Adam, as a trial starts them."""
    p = config.params
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ConvAutoencoder(SIZES[config.dataset or DATASETS[0]], p["z_dim"]).to(device)
    if config.network == NO_NETWORK:
        loss_net = None
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss
    else:
        loss_net = loss_networks.build_from_config(config).to(device)
        loss_fn = lambda out, target: distances.feature_mse(loss_net, out, target)  # noqa: E731
    return model, loss_net, loss_fn, torch.optim.Adam(model.parameters(), lr=p["lr"])


def training_step(config: TrialConfig, device: torch.device) -> TrainingStep:
    """`train_step` on a uint8 batch of the dataset's images, in training mode (`trainables.memory`);
    validation and encoding run the same network without gradients, at most 256 images at a time."""
    model, loss_net, loss_fn, opt = build_training(config, device)
    model.train()
    if loss_net is not None:
        loss_net.train()  # as `run`: a no-op unless mode=train
    dataset = config.dataset or DATASETS[0]
    side = SIZES[dataset] - (2 * SVHN_PAD if dataset == "svhn" else 0)  # SVHN is padded on the device
    batch = torch.randint(0, 256, (config.params["batch_size"], 3, side, side), dtype=torch.uint8, device=device)
    return TrainingStep(lambda: train_step(model, loss_fn, opt, batch, dataset, device), (model, loss_net), (batch,), opt)


@torch.no_grad()
def encode(model: ConvAutoencoder, images: torch.Tensor, dataset: str, device: torch.device, batch_size: int,
           num_workers: int) -> torch.Tensor:
    """Codes (N, z) on `device`, eval mode (BN running statistics), as the reference's encode_data."""
    model.eval()
    return torch.cat([model.encode(to_input(b, dataset, device))
                      for b in batches(images, batch_size, device, num_workers)])


@torch.no_grad()
def save_samples(model: ConvAutoencoder, images: torch.Tensor, dataset: str, device: torch.device,
                 reporter: Reporter) -> None:
    """A grid of test inputs (top row) and their reconstructions (bottom row) as a `samples` artifact."""
    model.eval()
    x = to_input(images[:SAMPLES], dataset, device)
    grid = torchvision.utils.make_grid(torch.cat([x, model(x)]).cpu(), nrow=len(x), padding=2, pad_value=1.0)
    with tempfile.TemporaryDirectory(prefix="dpl-ae-") as tmp:
        reporter.log_artifact(save_rgb(grid, Path(tmp) / "reconstructions.png"), subdir="samples")


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def check_params(p: dict[str, Any]) -> None:
    """One-line errors for settings a trial cannot run with (cheap, touches no data: `dpl plan` calls it)."""
    if p["probe_loss"] not in probes.PROBE_LOSSES:
        raise ConfigError(f"probe_loss: {p['probe_loss']!r} is not one of {', '.join(probes.PROBE_LOSSES)}")


def run(config: TrialConfig, reporter: Reporter) -> dict[str, float]:
    p = config.params
    check_params(p)
    state = load_checkpoint(reporter.resume_dir())
    if state is not None and "final" in state:  # finished before: nothing left to do
        return dict(state["final"])
    device = pick_device(config.device)
    dataset = config.dataset or DATASETS[0]
    data = load_data(config.replace(dataset=dataset))
    if len(data.ae) < 2 or len(data.train[0]) < 2:
        raise DataError(f"{config.data_root}: too few images for an autoencoder and probes ({len(data.ae)} unlabelled, "
                        f"{len(data.train[0])} labelled); use a larger subset or dataset")

    model, loss_net, loss_fn, opt = build_training(config.replace(dataset=dataset), device)
    ae_train, ae_val = probes.seeded_split(len(data.ae), config.seed)
    reporter.set_info({
        "ae_train_images": len(ae_train), "ae_val_images": len(ae_val),
        "probe_images": len(data.train[0]), "test_images": len(data.test[0]),
        "ae_params": sum(q.numel() for q in model.parameters()),
    })

    start, best_val, bad, best_state = 1, math.inf, 0, _cpu_state(model)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, best_val, bad = state["epoch"] + 1, state["best_val"], state["bad_epochs"]
        best_state = state["best_model"]
    if start > p["epochs"]:
        raise ConfigError(f"the checkpoint in {reporter.resume_dir()} is at epoch {start - 1}, past epochs="
                          f"{p['epochs']}; raise epochs or delete the checkpoint")

    nw = p["num_workers"]
    for epoch in range(start, p["epochs"] + 1):
        model.train()
        if loss_net is not None:
            loss_net.train()  # a no-op unless mode=train (the reference's BatchNorm behaviour)
        loader = batches(data.ae, p["batch_size"], device, nw, ae_train, shuffle_seed=config.seed * 100_003 + epoch)
        train_loss = _epoch(model, loss_fn, loader, dataset, device, opt)
        model.eval()
        if loss_net is not None:
            loss_net.eval()
        val_loss = _epoch(model, loss_fn, batches(data.ae, p["batch_size"], device, nw, ae_val), dataset, device, None)
        if val_loss < best_val:
            best_val, bad, best_state = val_loss, 0, _cpu_state(model)
        else:
            bad += 1
        metrics = {"train/loss": train_loss, "val/loss": val_loss, "val/best_loss": best_val,
                   "val/linear_probe_acc": epoch_probe(model, data, config, device)}
        state = {"epoch": epoch, "model": _cpu_state(model), "optimizer": opt.state_dict(), "best_val": best_val,
                 "bad_epochs": bad, "best_model": best_state}
        final: dict[str, float] | None = None
        if epoch == p["epochs"] or bad >= p["patience"]:
            model.load_state_dict(best_state)
            final = evaluate(model, data, config, device)
            save_samples(model, data.test[0], dataset, device, reporter)
            metrics.update(final)
            state["final"] = final
        with staged_checkpoint(state) as d:
            reporter.report(epoch, metrics, checkpoint_dir=d)
        if final is not None:
            return final
    raise AssertionError("unreachable: the last epoch always finishes the trial")


@torch.no_grad()
def epoch_probe(model: ConvAutoencoder, data: Data, config: TrialConfig, device: torch.device) -> float:
    """The EPOCH_METRIC: held-out accuracy of a ridge linear probe on the codes of a seeded subset of the
    labelled train split (see EPOCH_METRIC); the same images at every epoch and for every loss network."""
    images, labels = data.train
    n = min(len(images), EPOCH_PROBE_IMAGES)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))[:n].sort().values
    dataset = config.dataset or DATASETS[0]
    codes = encode(model, images[pick], dataset, device, max(config.params["batch_size"], 256), 0).double().cpu()
    y = labels[pick]
    fit, held = probes.seeded_split(n, config.seed)
    mean, std = codes[fit].mean(0), codes[fit].std(0, correction=0).clamp_min(1e-8)
    x = (codes - mean) / std  # z-scored on the fitted part, so the intercept is the targets' mean (unpenalised)
    target = F.one_hot(y[fit], int(labels.max()) + 1).to(x.dtype)
    bias = target.mean(0)
    gram = x[fit].T @ x[fit] + EPOCH_PROBE_RIDGE * len(fit) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x[fit].T @ (target - bias))
    return float(((x[held] @ weights + bias).argmax(1) == y[held]).double().mean())


def evaluate(model: ConvAutoencoder, data: Data, config: TrialConfig, device: torch.device) -> dict[str, float]:
    """Encode the labelled train and test splits, train the probes, return their metrics."""
    p, dataset = config.params, config.dataset or DATASETS[0]
    bs = max(p["batch_size"], 256)
    codes = encode(model, data.train[0], dataset, device, bs, p["num_workers"])
    test_codes = encode(model, data.test[0], dataset, device, bs, p["num_workers"])
    metrics, _ = probes.evaluate_probes(
        codes, data.train[1].to(device), test_codes, data.test[1].to(device), seed=config.seed,
        epochs=p["probe_epochs"], patience=p["probe_patience"], batch_size=p["probe_batch_size"], lr=p["probe_lr"],
        loss=p["probe_loss"], standardise=p["probe_standardise"],
    )
    return metrics
