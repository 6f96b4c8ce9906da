"""Similarity's reference settings (issue 15) and the pixel-loss baseline's admission rules.

- trained variants take the authors' optimiser settings (`lr=1e-3`, `batch_size=256`) next to LPIPS'
  defaults (1e-4, 50): the optimiser and the loader really use them;
- `network: none` exists for the three training tasks only; similarity refuses it in one line, and a
  near-miss spelling ("None") is refused everywhere instead of being taken for a network or the baseline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.config import ConfigError, TrialConfig
from trainables.data import bapps
from trainables.reporting import LocalReporter
from trainables.tasks import similarity as S
from trainables.trial import BASELINE_INFO, NO_NETWORK, prepare, provenance, run_trial


@pytest.fixture(scope="module")
def bapps_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bapps.synthesize(tmp_path_factory.mktemp("bapps"), seed=0, size="smoke")


def test_lpips_optimiser_settings_are_the_default() -> None:
    for budget in ("quick", "paper"):
        assert (S.BUDGETS[budget]["lr"], S.BUDGETS[budget]["batch_size"]) == (1e-4, 50)


def test_authors_lr_and_batch_reach_the_optimiser_and_loader(
    bapps_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lrs: list[float] = []
    batches: list[int] = []
    real_adam, real_epoch = torch.optim.Adam, S.train_epoch

    def adam(params: Any, lr: float, **kw: Any) -> torch.optim.Optimizer:
        lrs.append(lr)
        return real_adam(params, lr=lr, **kw)

    def epoch(dist: Any, head: Any, opt: torch.optim.Optimizer, loader: Any, device: Any) -> dict[str, float]:
        batches.append(loader.batch_size)
        lrs.append(opt.param_groups[0]["lr"])
        return real_epoch(dist, head, opt, loader, device)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    monkeypatch.setattr(S, "train_epoch", epoch)
    cfg = TrialConfig(task="similarity", network="alexnet", points=("features.1",), variant="lin", weights="random",
                      budget="smoke", data_root=str(bapps_root), params=dict(lr=1e-3, batch_size=256))
    rep = LocalReporter(tmp_path / "out", echo=False)
    final = run_trial(cfg, rep)
    assert lrs == [1e-3, 1e-3] and batches == [256]
    assert rep.history[-1]["train/lr"] == 1e-3
    assert set(S.METRICS) <= set(final)


# ------------------------------------------------------------------------------------ baseline


def _bare(task: str, network: str = NO_NETWORK, dataset: str = "") -> TrialConfig:
    return TrialConfig(task=task, network=network, points=(), dataset=dataset, weights="random", budget="smoke")


@pytest.mark.parametrize("task", ["superres", "delineation", "autoencoder"])
def test_pixel_baseline_is_accepted_by_the_training_tasks(task: str) -> None:
    cfg = prepare(_bare(task))
    assert cfg.network == "none" and cfg.points == ()
    assert provenance(cfg)["baseline"] == BASELINE_INFO["baseline"] == "pixel"
    assert "baseline" not in provenance(prepare(cfg.replace(network="alexnet", points=("features.1",))))


def test_similarity_refuses_the_pixel_baseline_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        prepare(_bare("similarity"))
    msg = str(err.value)
    assert "\n" not in msg and "similarity" in msg
    assert all(t in msg for t in ("superres", "delineation", "autoencoder"))


@pytest.mark.parametrize("typo", ["None", "NONE", " none", "none ", "pixel"])
def test_near_misses_of_none_are_refused(typo: str) -> None:
    with pytest.raises(ConfigError, match="spelled exactly 'none'"):
        prepare(_bare("autoencoder", typo))
