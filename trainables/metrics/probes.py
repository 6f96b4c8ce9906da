"""MLP probes on frozen codes: how much class information an autoencoder's latent space keeps.

Pihlgren et al. (2020) train seven small MLPs on the codes of the labelled train split and report test
accuracy. Their code never says how seven accuracies become one number, so this module reports the three
candidates, all chosen without looking at test labels except the mean/max: the test accuracy of the probe
with the best *validation* accuracy (the primary metric), the mean and the max over probes, and each
probe's own accuracy. Splits and initialisations are seeded (the reference's were not).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

#: Hidden-layer widths of the seven probes (the reference's `predictors.FullyConnected` set).
HIDDEN: tuple[tuple[int, ...], ...] = ((), (32,), (64,), (32, 32), (64, 32), (64, 64), (128, 128))
#: `ce`: cross-entropy (default); `mse_onehot`: MSE to one-hot targets, as the reference trained them.
PROBE_LOSSES = ("ce", "mse_onehot")
VAL_FRACTION = 0.2


def probe_name(hidden: tuple[int, ...]) -> str:
    """Metric-name-safe label ('linear', '32', '64-32'); MLflow refuses brackets and commas in names."""
    return "-".join(map(str, hidden)) if hidden else "linear"


def build_probe(in_dim: int, hidden: tuple[int, ...], classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.LeakyReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, classes))  # logits; no output activation, as in the reference
    return nn.Sequential(*layers)


def seeded_split(n: int, seed: int, fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a seeded random `fraction` of range(n) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def probe_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    if kind == "mse_onehot":
        return F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))
    raise ValueError(f"probe_loss {kind!r}: use one of {', '.join(PROBE_LOSSES)}")


@contextmanager
def cpu_single_threaded(device: torch.device) -> Iterator[None]:
    """One intra-op thread while probes train on the CPU, restored afterwards.

    A probe step is a few tiny matrix products: threading them buys nothing, and on a shared machine
    waiting for a descheduled sibling thread made each step 30x slower (2 ms -> 66 ms measured on 2 busy
    cores). Process-wide, hence restored on exit; a no-op on accelerators.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, batch: int) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole set, batched to bound memory."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        loss += float(probe_loss(logits, y[i : i + batch], kind)) * len(logits)
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return loss / len(x), correct / len(x)


@dataclass
class ProbeResult:
    hidden: tuple[int, ...]
    epochs: int
    val_loss: float
    val_acc: float
    test_acc: float


def train_probe(
    hidden: tuple[int, ...],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    loss: str,
    classes: int = 10,
) -> ProbeResult:
    """Adam on `train` until `patience` epochs without a lower validation loss; the best-val-loss weights are
    the probe (the reference's ModelCheckpoint + EarlyStopping on val_loss)."""
    x, y = train
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_probe(x.shape[1], hidden, classes).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best_loss, best_state, bad, epoch = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).to(x.device).split(batch_size):
            opt.zero_grad(set_to_none=True)
            probe_loss(model(x[idx]), y[idx], loss).backward()
            opt.step()
        val_loss, _ = _evaluate(model, *val, loss, 4096)
        if val_loss < best_loss:
            best_loss, best_state, bad = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    _, val_acc = _evaluate(model, *val, loss, 4096)
    _, test_acc = _evaluate(model, *test, loss, 4096)
    return ProbeResult(hidden, epoch, best_loss, val_acc, test_acc)


def evaluate_probes(
    codes: torch.Tensor,
    labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    loss: str = "ce",
    classes: int = 10,
    hidden_sets: tuple[tuple[int, ...], ...] = HIDDEN,
    standardise: bool = True,
) -> tuple[dict[str, float], list[ProbeResult]]:
    """Train every probe on a seeded 80/20 split of (codes, labels); return the metrics and the results.

    Metrics: `probe/best_val_test_acc` (test accuracy of the probe with the highest validation accuracy;
    ties go to the smaller probe, listed first), `probe/mean_test_acc`, `probe/max_test_acc`, and per probe
    `probe/<name>/test_acc` and `probe/<name>/val_acc`.

    `standardise` z-scores every code dimension with the probe-train part's statistics. A deterministic
    autoencoder's code scale is arbitrary (the decoder's first linear layer undoes any rescaling), yet with
    a fixed learning rate it decides how far a probe gets before early stopping; the reference did not
    standardise (False reproduces it).
    """
    if loss not in PROBE_LOSSES:
        raise ValueError(f"probe_loss {loss!r}: use one of {', '.join(PROBE_LOSSES)}")
    tr, va = seeded_split(len(codes), seed)
    tr, va = tr.to(codes.device), va.to(codes.device)
    if standardise:
        mean, std = codes[tr].mean(0), codes[tr].std(0).clamp_min(1e-8)
        codes, test_codes = (codes - mean) / std, (test_codes - mean) / std
    sets = dict(train=(codes[tr], labels[tr]), val=(codes[va], labels[va]), test=(test_codes, test_labels))
    with cpu_single_threaded(codes.device):
        results = [
            train_probe(h, **sets, seed=seed + k, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                        loss=loss, classes=classes)
            for k, h in enumerate(hidden_sets)
        ]
    chosen = max(results, key=lambda r: r.val_acc)  # max() keeps the first of equals
    accs = [r.test_acc for r in results]
    metrics = {
        "probe/best_val_test_acc": chosen.test_acc,
        "probe/mean_test_acc": sum(accs) / len(accs),
        "probe/max_test_acc": max(accs),
    }
    for r in results:
        metrics[f"probe/{probe_name(r.hidden)}/test_acc"] = r.test_acc
        metrics[f"probe/{probe_name(r.hidden)}/val_acc"] = r.val_acc
    return metrics, results
