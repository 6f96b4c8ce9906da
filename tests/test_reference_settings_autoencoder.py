"""The autoencoder's reference-emulation settings (issue 15) against formulas written here.

- `probe_loss=mse_onehot`: MSE to one-hot targets, element by element, vs the cross-entropy default;
- `probe_standardise=false`: the probes see the raw codes; `true` z-scores them with the probe-train part's
  mean and (n-1) standard deviation;
- a smoke trial under every reference setting (and the pixel-loss baseline) hands exactly those settings to
  the probes and records the baseline.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainables import loss_networks as ln
from trainables.config import TrialConfig
from trainables.data import svhn
from trainables.metrics import probes
from trainables.reporting import LocalReporter
from trainables.tasks import autoencoder as ae
from trainables.trial import run_trial


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return svhn.synthesize(tmp_path_factory.mktemp("svhn"), seed=0, size="smoke")


def test_mse_onehot_and_ce_probe_losses_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 3, 7])
    sq, ce = 0.0, 0.0
    for i in range(5):
        for c in range(10):
            target = 1.0 if c == labels[i] else 0.0
            sq += (float(logits[i, c]) - target) ** 2
        ce += -float(logits[i, labels[i]]) + math.log(sum(math.exp(float(v)) for v in logits[i]))
    assert float(probes.probe_loss(logits, labels, "mse_onehot")) == pytest.approx(sq / 50, rel=1e-12)
    assert float(probes.probe_loss(logits, labels, "ce")) == pytest.approx(ce / 5, rel=1e-12)
    with pytest.raises(ValueError, match="probe_loss 'mse'"):
        probes.probe_loss(logits, labels, "mse")


@pytest.mark.parametrize("standardise", [False, True])
def test_probes_see_raw_or_standardised_codes(monkeypatch: pytest.MonkeyPatch, standardise: bool) -> None:
    seen: list[dict[str, Any]] = []

    def spy(hidden: tuple[int, ...], train: Any, val: Any, test: Any, **kw: Any) -> probes.ProbeResult:
        seen.append(dict(train=train, val=val, test=test, **kw))
        return probes.ProbeResult(hidden, 1, 0.0, 0.5, 0.5)

    monkeypatch.setattr(probes, "train_probe", spy)
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(40, 6, generator=g, dtype=torch.float64) * 7 + 3
    test_codes = torch.randn(9, 6, generator=g, dtype=torch.float64) * 7 + 3
    labels, test_labels = torch.arange(40) % 10, torch.arange(9)
    probes.evaluate_probes(codes, labels, test_codes, test_labels, seed=3, epochs=1, patience=1, batch_size=8,
                           lr=1e-3, loss="mse_onehot", standardise=standardise)
    tr, va = probes.seeded_split(40, 3)
    raw = codes.numpy()
    mean, std = raw[tr.numpy()].mean(0), raw[tr.numpy()].std(0, ddof=1)
    expect = (lambda x: x) if not standardise else (lambda x: (x - mean) / std)
    for call in seen:
        assert call["loss"] == "mse_onehot"
        np.testing.assert_allclose(call["train"][0].numpy(), expect(raw[tr.numpy()]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(call["val"][0].numpy(), expect(raw[va.numpy()]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(call["test"][0].numpy(), expect(test_codes.numpy()), rtol=1e-10, atol=1e-12)
    assert len(seen) == len(probes.HIDDEN)


def _config(root: Path, **kw: Any) -> TrialConfig:
    base = dict(task="autoencoder", network="resnet18", points=("layer1",), dataset="svhn", variant="default",
                weights="random", budget="smoke", data_root=str(root), device="cpu",
                params=dict(epochs=1, ae_train_images=64, probe_epochs=3, probe_patience=2))
    return TrialConfig(**{**base, **kw})  # type: ignore[arg-type]


def _spy_on_probes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real = probes.evaluate_probes

    def spy(*a: Any, **kw: Any) -> Any:
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(probes, "evaluate_probes", spy)
    return calls


def test_reference_settings_smoke_trial(svhn_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The authors' protocol: MSE-to-one-hot probes on raw codes, no input normalisation, train-mode loss net."""
    calls = _spy_on_probes(monkeypatch)
    params = {**_config(svhn_root).params, "probe_loss": "mse_onehot", "probe_standardise": False}
    cfg = _config(svhn_root, params=params, normalisation="none", mode="train")
    final = run_trial(cfg, LocalReporter(tmp_path / "out", echo=False))
    assert [(c["loss"], c["standardise"]) for c in calls] == [("mse_onehot", False)]
    assert set(ae.METRICS) <= set(final) and all(0 <= final[k] <= 1 for k in ae.METRICS)
    assert (ae.BUDGETS["paper"]["probe_loss"], ae.BUDGETS["paper"]["probe_standardise"]) == ("ce", True)


def test_pixel_baseline_records_itself_and_builds_no_loss_network(
    svhn_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_loss_net(*a: object, **k: object) -> None:
        raise AssertionError("the pixel baseline must not build a loss network")

    monkeypatch.setattr(ln, "build_from_config", no_loss_net)
    rep = LocalReporter(tmp_path / "out", echo=False)
    run_trial(_config(svhn_root, network="none", points=()), rep)
    assert rep.info["baseline"] == "pixel"
    assert "feature_shape" not in rep.info
