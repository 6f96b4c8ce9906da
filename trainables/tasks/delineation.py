"""Benchmark 3: topology-aware road delineation (Mosinska et al., 2018) on Massachusetts Roads.

A small U-Net refines its own prediction K times (input = [image, previous prediction], starting from
zeros): `k_train` passes in training and validation, `k_test` at test. Loss = sum_k k*BCE(p_k, y)/sum_k k
+ mu * sum_k k*featureMSE(p_k x3, y x3)/sum_k k. Trained on random crops with flips; the epoch with the
best validation score (`select_on`: pooled quality, or the reference's BCE of the last pass; never the
total loss, whose feature term's scale depends on the loss network) is scored on the `test` tiles with
correctness / completeness / quality at a tolerance buffer, pooled and as per-tile means.
`network: none` is the pixel-loss baseline: BCE only, no loss network.

Departures from the reference code (background/reference_impl.md section 4), each deliberate:
- every loss network works (FX feature extraction instead of `.features[:i]`), and a point that cannot run
  at the crop size fails up front with a clear message;
- the U-Net's activations are what its flags intended (LeakyReLU 0.2 down, ReLU up; the reference's
  inverted branch gave ReLU everywhere) and its last layer has a bias and no BatchNorm on the single
  output channel (BN there forces the logits to zero mean per batch);
- the label's features are computed once per step, without grad;
- the loss network stays in eval mode unless `mode=train` (the reference's train-mode BN confound);
- testing uses `test` (not `val`), full tiles (`test_resize=224`: the reference's resize), the U-Net in
  eval mode, one model at a time, K = 3 in training and test (`k_train=1 k_test=3`: the reference's),
  a tolerance buffer (`tolerance=0`: the reference's pixel-exact counts), and ratios safe on empty tiles;
- training crops are drawn from a generator seeded by (seed, epoch, item), so a resumed trial trains on the
  same crops as an uninterrupted one.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainables import loss_networks as ln
from trainables.config import ConfigError, TrialConfig
from trainables.data import roads
from trainables.errors import DataError
from trainables.images import save_rgb
from trainables.metrics import ccq
from trainables.reporting import Reporter, load_checkpoint, staged_checkpoint
from trainables.tasks import TrainingStep
from trainables.trial import NO_NETWORK, pick_device

DATASETS = ("mass_roads",)
VARIANTS = ("default",)
METRICS = {
    **{f"test/{r}": "max" for r in ("quality", "correctness", "completeness")},  # pooled over the test tiles
    **{f"test/tile_mean/{r}": "max" for r in ("quality", "correctness", "completeness")},  # the reference's
}
PRIMARY_METRIC = "test/quality"
#: The loss network is used with the feature MSE, logged as param `distance`.
DISTANCE = "mse"
#: Reported every epoch on the validation tiles (the default `select_on`; `select_on: val_bce` changes which
#: epoch's model is tested, not what a halving search ranks on).
EPOCH_METRIC = ("val/quality", "max")
#: network "none" = the pixel-loss baseline (BCE only; no loss network is built).
NETWORKLESS_OK = (NO_NETWORK,)
#: `select_on` -> (validation metric, direction) that picks the tested epoch. The total loss is not one:
#: mu x feature MSE differs by orders of magnitude between loss networks, so it would select each network
#: by a different rule.
SELECT_ON = {"val_quality": ("val/quality", "max"), "val_bce": ("val/bce_last", "min")}
RENAMED_SETTINGS = {"K": "use k_train (refinement passes in training and validation) and k_test (at test), "
                         "e.g. --set k_train=3 --set k_test=3"}
#: Wall time relative to a similarity trial (smoke, 2 cores: 0.9 s vs ~1 s); see study.plan.longest_first.
RELATIVE_COST = 1.0

_COMMON: dict[str, Any] = {
    "lr": 1e-3,
    "mu": 0.01,
    "tolerance": 3.0,
    "threshold": 0.3,
    "flips": True,
    "test_resize": 0,  # 0 = full tiles; reference: 224 (validation and test tiles resized to 224 x 224)
    "select_on": "val_quality",  # reference: val_bce
}
BUDGETS: dict[str, dict[str, Any]] = {
    # one trial in about a minute on 2 CPU cores (synthetic 128 px tiles, random weights); the higher lr
    # lets 40 steps learn more than "everything is road" (test quality 0.56 / 0.66 at seeds 0 / 1; with 20
    # steps 0.13 / 0.09, no better than predicting road everywhere, 0.12); 80 px is the smallest multiple
    # of 16 that inception_v3 takes (75)
    "smoke": {**_COMMON, "lr": 3e-3, "epochs": 2, "batch_size": 4, "crop_size": 80, "k_train": 2, "k_test": 2,
              "steps_per_epoch": 20,
              "max_train_tiles": 0, "max_val_tiles": 0, "max_test_tiles": 0, "num_workers": 0, "n_overlays": 2},
    "quick": {**_COMMON, "epochs": 10, "batch_size": 8, "crop_size": 224, "k_train": 3, "k_test": 3,
              "steps_per_epoch": 100,
              "max_train_tiles": 200, "max_val_tiles": 0, "max_test_tiles": 0, "num_workers": 4, "n_overlays": 3},
    # steps_per_epoch 139 = one random crop per train tile (1108 / 8), the reference's epoch
    "paper": {**_COMMON, "epochs": 100, "batch_size": 8, "crop_size": 224, "k_train": 3, "k_test": 3,
              "steps_per_epoch": 139,
              "max_train_tiles": 0, "max_val_tiles": 0, "max_test_tiles": 0, "num_workers": 8, "n_overlays": 3},
}


def input_size(config: TrialConfig) -> int:
    return int(config.params.get("crop_size", BUDGETS[config.budget]["crop_size"]))


# ----------------------------------------------------------------------------------------------- model


class UNet(nn.Module):
    """The reference's small U-Net: 4x4 stride-2 convs 4->8->16->32->32 (3 skip levels + bottleneck), mirrored
    by transposed convs with skip concatenations; ~65k parameters. Returns logits (B, 1, H, W); H and W must
    be multiples of `multiple` (16).
    """

    def __init__(self, in_ch: int = 4, widths: tuple[int, ...] = (8, 16, 32, 32), slope_down: float = 0.2) -> None:
        super().__init__()
        n = len(widths)
        self.multiple = 2**n
        self.downs = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip((in_ch, *widths[:-1]), widths)):
            act = [] if i == 0 else [nn.LeakyReLU(slope_down)]  # pix2pix: no activation on the raw input
            self.downs.append(nn.Sequential(*act, nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout)))
        self.ups = nn.ModuleList()
        for j in range(n - 1, -1, -1):
            cin = widths[j] if j == n - 1 else 2 * widths[j]
            if j > 0:
                conv = nn.ConvTranspose2d(cin, widths[j - 1], 4, 2, 1, bias=False)
                self.ups.append(nn.Sequential(nn.ReLU(), conv, nn.BatchNorm2d(widths[j - 1])))
            else:
                self.ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, 1, 4, 2, 1, bias=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[0](skips[-1])
        for up, skip in zip(self.ups[1:], reversed(skips[:-1])):
            x = up(torch.cat([x, skip], dim=1))
        return x


class Refiner(nn.Module):
    """K passes of one U-Net, each fed the image and the previous pass's probabilities (zeros at first).

    Gradients flow through the fed-back predictions (the unrolled recurrence of Mosinska et al.).
    """

    def __init__(self, K: int) -> None:
        super().__init__()
        if K < 1:
            raise ConfigError(f"K: {K} refinement steps; use K >= 1")
        self.K = K
        self.unet = UNet(in_ch=4)

    def forward(self, image: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        """Logits of every pass; `steps` passes (default K): the reference tested with more than it trained."""
        steps = self.K if steps is None else steps
        if steps < 1:
            raise ConfigError(f"refinement steps: {steps}; use at least 1")
        prob = image.new_zeros(image.shape[0], 1, *image.shape[2:])
        logits = []
        for _ in range(steps):
            out = self.unet(torch.cat([image, prob], dim=1))
            prob = torch.sigmoid(out)
            logits.append(out)
        return logits

    def forward_any_size(self, images: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
        """forward() for any H, W (the U-Net is fully convolutional): reflect-pad to a multiple of 16, run,
        crop back. Used for whole-tile inference."""
        h, w = images.shape[2:]
        m = self.unet.multiple
        padded = F.pad(images, (0, -w % m, 0, -h % m), mode="reflect")
        return [z[..., :h, :w] for z in self(padded, steps)]

    @torch.no_grad()
    def predict_tile(self, image: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """(3, H, W) -> (H, W) road probability of the last pass."""
        return torch.sigmoid(self.forward_any_size(image[None], steps)[-1])[0, 0]


def step_weights(K: int) -> list[float]:
    """k / sum(k): later refinement steps count more."""
    return [k / (K * (K + 1) / 2) for k in range(1, K + 1)]


def delineation_loss(
    logits: list[torch.Tensor], label: torch.Tensor, loss_net: nn.Module | None, mu: float
) -> dict[str, torch.Tensor]:
    """{'loss', 'bce', 'feature', 'bce_last'}: k-weighted BCE plus mu x k-weighted feature MSE on
    3x-replicated maps; `bce_last` is the last pass's BCE alone (what the reference selected on)."""
    ws = step_weights(len(logits))
    last = F.binary_cross_entropy_with_logits(logits[-1], label)
    bce = sum(w * F.binary_cross_entropy_with_logits(z, label) for w, z in zip(ws, logits))
    feature = torch.zeros((), device=label.device)
    if loss_net is not None and mu != 0:
        with torch.no_grad():  # the label's features: a constant of the step, computed once
            target = loss_net(label.expand(-1, 3, -1, -1))
        for w, z in zip(ws, logits):
            out = loss_net(torch.sigmoid(z).expand(-1, 3, -1, -1))
            feature = feature + w * sum(F.mse_loss(out[p], target[p]) for p in out) / len(out)
    return {"loss": bce + mu * feature, "bce": bce, "feature": feature, "bce_last": last}


# ------------------------------------------------------------------------------------------------ data


class RandomCrops(Dataset):
    """`length` random crops (tile, position and flips drawn per item), read lazily from disk so that the
    1108 full-size tiles never have to sit in memory. Item i of an epoch is drawn from a generator seeded
    by (seed, epoch, i): the same crops whatever the worker count, and after a resume."""

    def __init__(self, tiles: list[roads.Tile], crop: int, length: int, flips: bool, seed: int = 0,
                 epoch: int = 0) -> None:
        self.tiles, self.crop, self.length, self.flips = tiles, crop, length, flips
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        tile = self.tiles[int(rng.integers(len(self.tiles)))]
        img, label = roads.read_pair(tile)
        h, w = img.shape[1:]
        if h < self.crop or w < self.crop:
            raise DataError(f"{tile.sat} is {h}x{w}, smaller than crop_size {self.crop}; lower crop_size")
        y, x = (int(rng.integers(n - self.crop + 1)) for n in (h, w))
        pair = torch.cat([img, label])[:, y : y + self.crop, x : x + self.crop]
        if self.flips:
            for dim in (1, 2):  # aerial images have no canonical orientation: both flips are valid
                if rng.random() < 0.5:
                    pair = pair.flip(dim)
        return pair[:3], pair[3:]


def resize_tile(img: torch.Tensor, label: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's evaluation resize (`test_resize`): (3, H, W) image and (1, H, W) label to side x side,
    bilinear without antialiasing (torchvision's tensor Resize as the reference ran it), the label
    thresholded at 0.5 again. `side` 0 returns both unchanged (full resolution)."""
    if side <= 0:
        return img, label
    size = [side, side]
    img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    lab = F.interpolate(label[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    return img, (lab > 0.5).float()


def _limit(tiles: list[roads.Tile], n: int) -> list[roads.Tile]:
    return tiles[:n] if n > 0 else tiles


# ------------------------------------------------------------------------------------------ evaluation


def tile_forward(model: Refiner, loss_net: nn.Module | None, img: torch.Tensor, label: torch.Tensor, mu: float,
                 steps: int | None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Logits of every pass and the loss terms for one whole (3, H, W) tile and its (1, H, W) label."""
    logits = model.forward_any_size(img[None], steps)
    return logits, delineation_loss(logits, label[None], loss_net, mu)


@torch.no_grad()
def evaluate(
    model: Refiner,
    loss_net: nn.Module | None,
    tiles: list[roads.Tile],
    params: dict[str, Any],
    device: torch.device,
    prefix: str,
    overlay_dir: Path | None = None,
    steps: int | None = None,
) -> dict[str, float]:
    """Whole-tile loss and correctness/completeness/quality (pooled and per-tile means) over `tiles` with
    `steps` refinement passes, in eval mode; tiles resized to `test_resize` first when it is > 0. Overlays
    of the first `n_overlays` tiles are written to `overlay_dir` when given."""
    model.eval()
    if loss_net is not None:
        loss_net.eval()
    losses: dict[str, list[float]] = {"loss": [], "bce": [], "feature": [], "bce_last": []}
    counts = []
    for i, tile in enumerate(tiles):
        img, label = resize_tile(*roads.read_pair(tile), params["test_resize"])
        img, label = img.to(device), label.to(device)
        logits, terms = tile_forward(model, loss_net, img, label, params["mu"], steps)
        for k, v in terms.items():
            losses[k].append(float(v))
        prob = torch.sigmoid(logits[-1])[0, 0].cpu()
        label_np = label[0].bool().cpu().numpy()
        counts.append(ccq.tile_counts(prob.numpy() > params["threshold"], label_np, params["tolerance"]))
        if overlay_dir is not None and i < params["n_overlays"]:
            save_overlay(img.cpu(), label_np, prob, params["threshold"], params["tolerance"], overlay_dir / f"{tile.stem}.png")
    out = {f"{prefix}/{k}": float(np.mean(v)) for k, v in losses.items()}
    out.update(ccq.summarise(counts, prefix=f"{prefix}/"))
    return out


def save_overlay(img: torch.Tensor, label: np.ndarray, prob: torch.Tensor, threshold: float, tolerance: float, path: Path) -> Path:
    """Image | label | probability | match map (green: matched prediction, red: unmatched prediction, blue:
    missed label), side by side, downscaled to at most 512 px high."""
    pred = prob.numpy() > threshold
    hit_pred = pred & ccq.within(label, tolerance)
    missed = label & ~ccq.within(pred, tolerance)
    match = np.stack([pred & ~hit_pred, hit_pred, missed]).astype(np.float32)
    panels = torch.cat(
        [img, torch.from_numpy(label).float().expand(3, -1, -1), prob.expand(3, -1, -1), torch.from_numpy(match)], dim=2
    )
    scale = min(1.0, 512 / panels.shape[1])
    if scale < 1:
        panels = F.interpolate(panels[None], scale_factor=scale, mode="area")[0]
    return save_rgb(panels, path)


# ----------------------------------------------------------------------------------------------- trial


def check_crop(loss_net: nn.Module | None, config: TrialConfig, crop: int, device: torch.device) -> None:
    """Fail before training when the U-Net or the loss network cannot take `crop` x `crop` inputs."""
    if crop % 16:
        raise ConfigError(f"crop_size: {crop} must be a multiple of 16 (the U-Net halves it 4 times), e.g. {crop - crop % 16 or 16}")
    if loss_net is None:
        return
    try:
        with torch.no_grad():
            loss_net(torch.zeros(1, 3, crop, crop, device=device))
    except RuntimeError as exc:
        raise ConfigError(
            f"{config.network}:{config.point} cannot run at crop_size {crop} px ({str(exc).splitlines()[0]}); "
            f"use a larger crop_size (at least {max(ln.min_size(config.network), 16)}, a multiple of 16) or an earlier point"
        ) from exc


def check_params(p: dict[str, Any]) -> None:
    """One-line errors for settings a trial cannot run with."""
    for key in ("epochs", "steps_per_epoch", "batch_size", "k_train", "k_test"):
        if p[key] < 1:
            raise ConfigError(f"{key}: {p[key]} must be >= 1")
    if p["select_on"] not in SELECT_ON:
        raise ConfigError(f"select_on: {p['select_on']!r} is not one of {', '.join(SELECT_ON)} "
                          f"(the total loss is not offered: its feature term's scale depends on the loss network)")
    if p["test_resize"] and p["test_resize"] % 16:
        raise ConfigError(f"test_resize: {p['test_resize']} must be 0 (full tiles) or a multiple of 16, e.g. 224")


def build_model(p: dict[str, Any], device: torch.device) -> tuple[Refiner, torch.optim.Optimizer]:
    """The refining U-Net (`k_train` passes) and its optimizer, as every trial starts them."""
    model = Refiner(p["k_train"]).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=p["lr"])


def build_lossnet(config: TrialConfig, device: torch.device) -> nn.Module | None:
    """The frozen loss network (None for the pixel-loss baseline)."""
    return None if config.network == NO_NETWORK else ln.build_from_config(config).to(device)


def train_step(model: Refiner, loss_net: nn.Module | None, optimizer: torch.optim.Optimizer, img: torch.Tensor,
               label: torch.Tensor, mu: float) -> dict[str, torch.Tensor]:
    """One training step on a batch of crops on the device: K passes, loss, backward, Adam; the loss terms."""
    terms = delineation_loss(model(img), label, loss_net, mu)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return terms


def training_step(config: TrialConfig, device: torch.device) -> TrainingStep:
    """`train_step` on a batch of the trial's crops, then validation's whole-tile forward (`tile_forward`
    on a tile of `test_resize` px, else a full 1500 px Massachusetts tile, with the most passes any phase
    runs): a full tile through the loss network can hold more than a training step (`trainables.memory`)."""
    p = config.params
    loss_net = build_lossnet(config, device)
    model, optimizer = build_model(p, device)
    crop, side = p["crop_size"], p["test_resize"] or roads.TILE_SIZE
    img, label = torch.rand(p["batch_size"], 3, crop, crop, device=device), torch.rand(p["batch_size"], 1, crop, crop, device=device)

    def train() -> dict[str, torch.Tensor]:
        model.train()
        if loss_net is not None:
            loss_net.train()  # as `run`: a no-op unless mode=train
        return train_step(model, loss_net, optimizer, img, label, p["mu"])

    @torch.no_grad()
    def validate() -> dict[str, torch.Tensor]:  # a tile is loaded after training: made (and counted) here
        model.eval()
        if loss_net is not None:
            loss_net.eval()
        tile, tile_label = torch.rand(3, side, side, device=device), torch.rand(1, side, side, device=device)
        return tile_forward(model, loss_net, tile, tile_label, p["mu"], max(p["k_train"], p["k_test"]))[1]

    return TrainingStep(train, (model, loss_net), (img, label), optimizer, evaluation=validate)


def is_better(value: float, best: float, direction: str) -> bool:
    """Strictly better, so that the first of equal epochs is kept."""
    return value > best if direction == "max" else value < best


def run(config: TrialConfig, reporter: Reporter) -> dict[str, float]:
    p = config.params
    check_params(p)
    device = pick_device(config.device)
    splits = {s: roads.list_tiles(config.data_root, s) for s in roads.SPLITS}
    train_tiles = _limit(splits["train"], p["max_train_tiles"])
    val_tiles, test_tiles = _limit(splits["valid"], p["max_val_tiles"]), _limit(splits["test"], p["max_test_tiles"])

    loss_net = build_lossnet(config, device)
    check_crop(loss_net, config, p["crop_size"], device)
    model, optimizer = build_model(p, device)
    select_metric, direction = SELECT_ON[p["select_on"]]
    reporter.set_info({
        "unet_params": sum(q.numel() for q in model.parameters()),
        "tiles_train": len(train_tiles), "tiles_valid": len(val_tiles), "tiles_test": len(test_tiles),
        "select_metric": select_metric,
    })

    start, best_epoch, best_model, last = 0, 0, None, {}
    best_score = -float("inf") if direction == "max" else float("inf")
    state = load_checkpoint(reporter.resume_dir())
    if state is not None:
        if "final" in state:  # the trial had already finished; nothing left to do
            return dict(state["final"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_score, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        best_model, last = state["best_model"], dict(state["last_metrics"])

    for epoch in range(start + 1, p["epochs"] + 1):
        loader = DataLoader(
            RandomCrops(train_tiles, p["crop_size"], p["steps_per_epoch"] * p["batch_size"], p["flips"],
                        seed=config.seed, epoch=epoch),
            batch_size=p["batch_size"], num_workers=p["num_workers"], drop_last=True, pin_memory=device.type == "cuda",
        )
        model.train()
        if loss_net is not None:
            loss_net.train()  # a no-op unless mode=train (the reference's behaviour, on purpose)
        sums = {"loss": 0.0, "bce": 0.0, "feature": 0.0}
        for img, label in loader:
            img, label = img.to(device, non_blocking=True), label.to(device, non_blocking=True)
            terms = train_step(model, loss_net, optimizer, img, label, p["mu"])
            for k in sums:
                sums[k] += terms[k].item()
        last = {f"train/{k}": v / len(loader) for k, v in sums.items()}
        last.update(evaluate(model, loss_net, val_tiles, p, device, "val", steps=p["k_train"]))
        if is_better(last[select_metric], best_score, direction):
            best_score, best_epoch = last[select_metric], epoch
            best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        last["val/best_score"] = best_score
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "best_score": best_score, "best_epoch": best_epoch, "best_model": best_model, "last_metrics": last}
        if epoch < p["epochs"]:
            with staged_checkpoint(state) as d:
                reporter.report(epoch, last, checkpoint_dir=d)

    # test the best-by-validation model on the test tiles, with k_test passes
    if best_model is not None:
        model.load_state_dict(best_model)
    with tempfile.TemporaryDirectory(prefix="dpl-roads-") as tmp:
        final = evaluate(model, loss_net, test_tiles, p, device, "test", overlay_dir=Path(tmp), steps=p["k_test"])
        for png in sorted(Path(tmp).glob("*.png")):
            reporter.log_artifact(png, subdir="samples")
    final["test/best_epoch"] = float(best_epoch)
    state = {**state, "final": final}
    with staged_checkpoint(state) as d:
        reporter.report(p["epochs"], {**last, **final}, checkpoint_dir=d)
    return final
