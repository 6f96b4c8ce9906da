"""What one trial does: loss networks, distances, tasks and their data. Knows nothing of Ray or MLflow.

`from trainables import PerceptualLoss` gives the chosen loss network as a training loss
(`trainables.perceptual_loss`); it is imported on first use, so `import trainables.errors` and the CLI's
fast paths do not pay for torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PerceptualLoss"]


def __getattr__(name: str) -> Any:
    if name == "PerceptualLoss":
        from trainables.perceptual_loss import PerceptualLoss

        return PerceptualLoss
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
