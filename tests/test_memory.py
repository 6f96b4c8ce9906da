"""Memory estimates of trials (trainables.memory) against the CPU allocator, and the GPU shares made of them
(study.resources): fractions, refusals, the cache, the spec and command-line keys."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from study.resources import GPU_STEPS, fraction_for, resource_table, trial_resources
from study.spec import StudySpec, validate
from trainables import memory
from trainables.config import ConfigError, TrialConfig, trial_key
from trainables.errors import UserError
from trainables.trial import prepare

from test_study import toy_task  # noqa: F401 - fixture (DPL_TASKS=toy=toy_task)

GIB = 2**30

#: (task, network, point, dataset, variant, mode, settings): one trial of each task (the similarity baseline is
#: an evaluation forward, the others training steps, delineation's with its whole-tile validation), and the three
#: largest trials of the paper grid (`dpl plan --preset paper --json --gpu-memory 40`: efficientnet_b7 in the
#: autoencoders at batch 256, loss network in train mode: 24.2, 17.8 and 11.0 GiB) at batch 2. Small batches
#: and crops keep the CPU steps to seconds.
CASES = {
    "similarity-baseline": ("similarity", "alexnet", "features.11", "bapps", "baseline", "eval", {"eval_batch_size": 16}),
    "similarity-tune": ("similarity", "squeezenet1_1", "features.5", "bapps", "tune", "eval",
                        {"batch_size": 4, "eval_batch_size": 4}),
    "superres": ("superres", "vgg16", "features.8", "coco", "default", "eval", {"crop_size": 96, "batch_size": 2}),
    "delineation": ("delineation", "resnet50", "layer2", "mass_roads", "default", "train",
                    {"crop_size": 96, "batch_size": 2, "k_train": 2, "test_resize": 160}),
    "autoencoder-pixel": ("autoencoder", "none", None, "svhn", "default", "eval", {"batch_size": 16}),
    "largest-1": ("autoencoder", "efficientnet_b7", "features.7", "stl10", "default", "train", {"batch_size": 2}),
    "largest-2": ("autoencoder", "efficientnet_b7", "features.4", "stl10", "default", "train", {"batch_size": 2}),
    "largest-3": ("autoencoder", "efficientnet_b7", "features.7", "svhn", "default", "train", {"batch_size": 2}),
}


def config(task: str, network: str, point: str | None, dataset: str, variant: str, mode: str,
           params: dict, budget: str = "paper") -> TrialConfig:
    return prepare(TrialConfig(task=task, network=network, points=(point,) if point else (), dataset=dataset,
                               variant=variant, mode=mode, budget=budget, params=dict(params)))


@pytest.mark.slow  # ~60-100 s on 2 free cores (the three efficientnet_b7 steps are most of it)
@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_within_25_percent_of_the_cpu_allocator_peak(case: str) -> None:
    """The meta-device estimate against the same step on real CPU tensors, measured by the CPU allocator
    (torch profiler memory events) plus the bytes of the parameters and inputs built before it."""
    c = config(*CASES[case])
    est = memory.estimate_uncached(c)
    measured = memory.measure_cpu_peak(c)
    ratio = est["total_bytes"] / measured["total_bytes"]
    assert 0.75 <= ratio <= 1.25, (case, ratio, est, measured)
    # the parts add up, and what is not a parameter is most of it: the check is not won by the weights alone
    assert sum(est[k] for k in memory.CATEGORIES) == est["total_bytes"]
    assert est["activations"] + est["gradients"] + est["optimizer"] > 0.25 * measured["total_bytes"], est


def test_estimate_grows_with_the_batch_and_counts_what_a_step_keeps() -> None:
    """Categories against arithmetic: parameters of the networks, Adam's two moments (+ step counters) of
    the trained ones, the batch; activations proportional to the batch."""
    small = config("superres", "alexnet", "features.4", "coco", "default", "eval", {"crop_size": 64, "batch_size": 2})
    large = small.replace(params={**small.params, "batch_size": 4})
    a, b = memory.estimate_uncached(small), memory.estimate_uncached(large)
    from trainables.loss_networks import build_from_config
    from trainables.tasks.superres import TransformNet

    sr = TransformNet(4, "batch")
    lossnet = build_from_config(memory.estimation_config(small))
    net_bytes = sum(t.numel() * t.element_size() for m in (sr, lossnet) for t in (*m.parameters(), *m.buffers()))
    sr_params = sum(p.numel() * 4 for p in sr.parameters())
    assert a["params"] == net_bytes
    assert a["optimizer"] == 2 * sr_params + 4 * len(list(sr.parameters()))  # exp_avg, exp_avg_sq, step
    assert a["inputs"] == 2 * 3 * 64 * 64 * 4 and b["inputs"] == 2 * a["inputs"]
    assert b["activations"] == pytest.approx(2 * a["activations"], rel=0.05)
    # at the peak (backward starting), what autograd saved in the forward is alive: counted by autograd's
    # own saved-tensor hooks on a real CPU step (parameters and the batch aside, they have their categories)
    step = memory.training_step(small, "cpu")
    own = {t.untyped_storage().data_ptr() for m in memory._modules(step) for t in (*m.parameters(), *m.buffers())}
    own |= {t.untyped_storage().data_ptr() for t in step.inputs}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step.run()
    assert sum(saved.values()) > 1e6 and a["activations"] >= 0.9 * sum(saved.values()), (a, sum(saved.values()))
    assert a["with_margin_bytes"] == int(a["total_bytes"] * memory.MARGIN_FACTOR + memory.MARGIN_FIXED_GIB * GIB)


def test_estimates_are_cached_on_disk_and_keyed_by_what_changes_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DPL_CACHE_DIR", str(tmp_path))
    c = config("autoencoder", "none", None, "svhn", "default", "eval", {"batch_size": 8})
    first = memory.estimate_trial_memory(c)
    assert json.loads((tmp_path / "memory_estimates.json").read_text())["entries"]
    calls = []
    real = memory.estimate_uncached
    monkeypatch.setattr(memory, "estimate_uncached", lambda cfg: calls.append(cfg) or real(cfg))
    assert memory.estimate_trial_memory(c.replace(seed=3, weights="imagenet")) == first  # same shapes: cached
    assert calls == []
    memory.estimate_trial_memory(c.replace(params={**c.params, "batch_size": 16}))  # another batch: computed
    assert len(calls) == 1
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")  # another torch: everything computed again
    memory.estimate_trial_memory(c)
    assert len(calls) == 2


@pytest.mark.parametrize("need_gib, size, expected", [
    (0.1, 40, 0.125), (5.0, 40, 0.125), (5.01, 40, 0.25), (20.0, 40, 0.5), (39.0, 40, 1.0), (40.5, 40, None),
    (2.9, 24, 1 / 8), (3.1, 24, 2 / 8), (23.9, 24, 1.0),
])
def test_fraction_is_the_smallest_eighth_that_holds_the_need(need_gib: float, size: float, expected) -> None:
    assert fraction_for(need_gib * GIB, size) == expected
    if expected is not None:  # the formula, written out: ceil(need / (size / 8)) / 8
        assert expected == max(1, math.ceil(need_gib / (size / GPU_STEPS))) / GPU_STEPS


def _spec(tmp_path, resources: dict, **toy) -> StudySpec:
    raw = validate({"name": "mem", "networks": ["none"], "weights": "random", "seeds": [0],
                    "tasks": {"toy": {"data": str(tmp_path), "params": toy}}, "resources": resources})
    return StudySpec("mem", raw, tmp_path / "study")


def test_auto_gives_each_trial_its_share_and_fixed_shares_still_work(tmp_path, toy_task) -> None:
    from study.plan import expand

    spec = _spec(tmp_path, {"cpu": 1, "gpu": "auto", "gpu_memory_gb": 80}, memory_gib=[1, 10, 30])
    trials = expand(spec)
    table = resource_table(spec, [t.config for t in trials])
    by_memory = {t.config.params["memory_gib"]: table[trial_key(t.config)]["gpu"] for t in trials}
    # need = memory x 1.25 + 1 GiB; one eighth of 80 GiB = 10 GiB
    assert by_memory == {1: 0.125, 10: 0.25, 30: 0.5}
    assert trial_resources(spec, trials[0].config) == {"cpu": 1, "gpu": 0.125}
    fixed = _spec(tmp_path, {"cpu": 2, "gpu": 0.25}, memory_gib=[1, 30])
    assert {r["gpu"] for r in resource_table(fixed, [t.config for t in expand(fixed)]).values()} == {0.25}


def test_a_trial_that_fits_no_gpu_is_refused_in_one_line_saying_what_fits(tmp_path, toy_task) -> None:
    from study.plan import expand

    spec = _spec(tmp_path, {"gpu": "auto", "gpu_memory_gb": 24}, memory_gib=[1, 30])
    with pytest.raises(UserError) as err:
        resource_table(spec, [t.config for t in expand(spec)])
    message = str(err.value)
    assert "\n" not in message and "toy:noise:none:pixel" in message and "24 GiB GPU" in message
    assert "38.5 GiB" in message and "--gpu-memory 39" in message  # 30 x 1.25 + 1


def test_a_task_setting_that_would_fit_is_named(tmp_path) -> None:
    """The pixel-loss autoencoder at batch 256 needs ~1.37 GiB with the margin (128: ~1.22, 64: ~1.15): on a
    1.2 GiB GPU the message names the largest halved batch that fits, which fits while twice it does not."""
    raw = validate({"name": "m", "tasks": {"autoencoder": {}}, "resources": {"gpu": "auto", "gpu_memory_gb": 1.2}})
    spec = StudySpec("m", raw, tmp_path)
    c = config("autoencoder", "none", None, "svhn", "default", "eval", {"batch_size": 256})
    with pytest.raises(UserError) as err:
        trial_resources(spec, c)
    message = str(err.value)
    assert "\n" not in message and "--set tasks.autoencoder.batch_size=" in message
    fitting = int(message.split("--set tasks.autoencoder.batch_size=")[1].split()[0])

    def fits(batch: int) -> bool:
        est = memory.estimate_trial_memory(c.replace(params={**c.params, "batch_size": batch}))
        return fraction_for(est["with_margin_bytes"], 1.2) is not None

    assert fitting < 256 and fits(fitting) and not fits(fitting * 2)


def test_spec_and_command_line_keys(tmp_path) -> None:
    from study.resources import gpu_memory_gb, use_gpu_memory

    with pytest.raises(ConfigError, match="resources.gpu"):
        validate({"name": "m", "tasks": {"autoencoder": {}}, "resources": {"gpu": "half"}})
    with pytest.raises(ConfigError, match="resources.gpu_memory_gb"):
        validate({"name": "m", "tasks": {"autoencoder": {}}, "resources": {"gpu": "auto", "gpu_memory_gb": -4}})
    spec = StudySpec("m", validate({"name": "m", "tasks": {"autoencoder": {}}, "resources": {"gpu": "auto"}}), tmp_path)
    with pytest.raises(ConfigError, match="--gpu-memory 40"):
        gpu_memory_gb(spec)
    use_gpu_memory(spec, 40)
    assert spec.raw["resources"]["gpu"] == "auto" and gpu_memory_gb(spec) == 40
    with pytest.raises(UserError, match="not both"):
        use_gpu_memory(spec, 40, gpus_per_trial=0.5)


def test_dpl_plan_gives_every_trial_an_estimate_and_a_fraction(tmp_path, capsys, monkeypatch) -> None:
    from study.cli import main

    monkeypatch.setattr(sys, "argv", ["dpl"])
    args = ["plan", "--preset", "smoke", "--storage", str(tmp_path / "s"), "--gpu-memory", "4", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["trials"]
    assert rows and all(r["memory"]["total_bytes"] > 0 and r["memory"]["gpu_fraction"] in (0.375, 0.5) for r in rows)
    packing = report["memory"]["per_task"]
    assert sum(c["trials"] for d in packing.values() for c in d.values()) == len(rows)
    for task, per_ds in packing.items():
        for ds, cell in per_ds.items():
            values = [r["memory"]["total_bytes"] / GIB for r in rows if (r["task"], r["dataset"]) == (task, ds)]
            assert cell["estimate_gib"]["max"] == pytest.approx(max(values))
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert "GPU packing on 4 GiB GPUs" in text and "/GPU)" in text


def test_dpl_run_refuses_a_trial_no_gpu_holds_before_anything_runs(tmp_path, capsys) -> None:
    """`dpl run --gpu-memory 24` with a trial needing 38.5 GiB: one line, exit 2, no store, no Ray."""
    from study.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"name": "big", "networks": ["none"], "weights": "random",
                                "tasks": {"toy": {"data": str(tmp_path), "params": {"memory_gib": [1, 30]}}}}))
    study = tmp_path / "study"
    assert main(["run", str(spec), "--storage", str(study), "--gpu-memory", "24"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpl: error: trial toy:noise:none:pixel needs 38.5 GiB") and "\n" not in err
    assert not (study / "mlflow.db").exists() and not (study / "ray").exists()
    assert main(["run", str(spec), "--storage", str(study), "--gpu-memory", "24", "--gpus-per-trial", "0.5"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_relaunch_with_another_share_is_recorded_not_refused(tmp_path) -> None:
    """MLflow refuses a param re-logged with another value: the first attempt's share stays the param, every
    attempt's is the metric at step = attempt (what `run_config_trial` calls with Tune's granted share)."""
    from study import tracking
    from study.trainable import record_gpu_share

    uri = tracking.default_tracking_uri(tmp_path)
    c = tracking.client(uri)
    run_id = c.create_run(c.create_experiment("relaunch")).info.run_id
    record_gpu_share(c, run_id, 0.25, attempt=1)
    record_gpu_share(c, run_id, 0.5, attempt=2)  # e.g. `dpl run --gpu-memory 40` after a launch with 80
    assert c.get_run(run_id).data.params["gpu_fraction"] == "0.25"
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "attempt/gpu_fraction")] == [(1, 0.25), (2, 0.5)]
