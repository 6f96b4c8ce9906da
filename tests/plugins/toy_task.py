"""A tiny task for testing the study engine (plugged in with DPL_TASKS=toy=toy_task).

It fits a per-channel colour gain under the feature-MSE loss of the configured loss network, so it runs
the real loss-network path in about a second per epoch, and it can be told to fail or to kill its own
worker once (fault injection). For GPU-packing tests its memory estimate is whatever `memory_gib` says
(`training_step` holds an input of that size; nothing of it is allocated when the trial runs), and with
`log_times` each attempt appends its start and end (or kill) time and the GPU Ray gave it to
`<data>/timeline.jsonl`.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import torchvision

from trainables.distances import feature_mse
from trainables.loss_networks import build_from_config
from trainables.reporting import load_checkpoint, staged_checkpoint
from trainables.tasks import TrainingStep

#: tests/test_weights_offline.py::urls_for_child_processes: seeded weight files under the URLs the test gave
for _key, _url in json.loads(os.environ.get("DPL_TEST_WEIGHT_URLS", "{}")).items():
    _network, _weights = _key.split("/")
    torchvision.models.get_model_weights(_network)[_weights].value.url = _url  # type: ignore[misc]

DATASETS = ("noise",)
VARIANTS = ("default",)
METRICS = {"score": "max", "final_loss": "min"}
PRIMARY_METRIC = "score"
#: reported every epoch: minus the loss (what a halving search stops on)
EPOCH_METRIC = ("val/score", "max")
# kill_seed: with kill_at_epoch, only the trial of this seed kills its worker (-1: every trial)
_BASE = {"epochs": 2, "sleep_s": 0.0, "fail": False, "kill_at_epoch": 0, "kill_seed": -1, "lr": 0.1,
         "memory_gib": 0.0, "log_times": False}
BUDGETS = {"smoke": dict(_BASE), "quick": dict(_BASE), "paper": dict(_BASE, epochs=5)}
NETWORKLESS_OK = ("none",)


def input_size(config) -> int:
    return 32


def training_step(config, device) -> TrainingStep:
    """A step whose peak memory is `memory_gib` GiB (an input of that size) plus a few bytes."""
    gain = torch.zeros(1, 3, 1, 1, requires_grad=True, device=device)
    opt = torch.optim.SGD([gain], lr=config.params["lr"])
    block = torch.empty(int(config.params["memory_gib"] * 2**30) // 4, device=device)

    def step() -> torch.Tensor:
        loss = (gain * 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return TrainingStep(step, (), (block,), opt)


def _log_time(config, event: str) -> None:
    if config.params["log_times"] and config.data_root:
        line = {"event": event, "t": time.time(), "seed": config.seed, "memory_gib": config.params["memory_gib"],
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "pid": os.getpid()}
        with open(Path(config.data_root) / "timeline.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def run(config, reporter):
    p = config.params
    if p["fail"]:
        raise ValueError("toy task asked to fail (fail=true)")
    _log_time(config, "start")
    g = torch.Generator().manual_seed(config.seed)
    target = torch.rand(4, 3, 32, 32, generator=g)
    gain = torch.zeros(1, 3, 1, 1, requires_grad=True)
    opt = torch.optim.SGD([gain], lr=p["lr"])
    net = build_from_config(config) if config.points else None
    start = 1
    state = load_checkpoint(reporter.resume_dir())
    if state is not None:
        gain.data.copy_(state["gain"])
        start = state["epoch"] + 1
    loss = torch.tensor(0.0)
    for epoch in range(start, p["epochs"] + 1):
        out = target * torch.exp(gain)
        loss = feature_mse(net, out, target * 0.5) if net is not None else ((out - target * 0.5) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(p["sleep_s"])
        suffix = f"-{p['memory_gib']:g}" if p["memory_gib"] else ""
        marker = Path(config.data_root) / f"killed-{os.environ.get('DPL_TOY_TAG', '')}{config.seed}-{config.point}{suffix}"
        chosen = p["kill_seed"] < 0 or p["kill_seed"] == config.seed
        if p["kill_at_epoch"] == epoch and chosen and config.data_root and not marker.exists():
            marker.write_text("x")
            _log_time(config, "kill")
            os.kill(os.getpid(), signal.SIGKILL)
        metrics = {"train/loss": float(loss.detach()), "val/score": -float(loss.detach())}
        if epoch == p["epochs"]:
            metrics.update(score=-float(loss), final_loss=float(loss))
        with staged_checkpoint({"gain": gain.detach().clone(), "epoch": epoch}) as d:
            reporter.report(epoch, metrics, checkpoint_dir=d)
    _log_time(config, "end")
    return {"score": -float(loss), "final_loss": float(loss)}
