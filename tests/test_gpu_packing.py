"""`resources: {gpu: auto}` on Ray's logical GPUs: a Ray started with num_gpus=2 on this CPU machine (a trial
with a fractional GPU sees CUDA_VISIBLE_DEVICES, no CUDA), toy trials whose memory estimate is what they
declare (tests/plugins/toy_task.py `memory_gib`), and each attempt's start, end or kill time and GPU logged by
the trial itself. Checked: the fraction each trial asked for (against the formula written here), that the
observed concurrency follows the fractions, that no GPU is ever holding more than its whole at any instant,
and that a relaunch after a kill asks for the same fractions (the saved spec, as `dpl resume` reads it)."""
from __future__ import annotations

import json
import math
import os

import pytest

from study import tracking
from study.spec import load_saved_spec, load_spec
from test_study import PLUGINS, toy_task, trial_runs  # noqa: F401 - fixture

GPU_GIB = 80
#: declared memory (GiB) -> the fraction the formula gives: smallest k/8 with k/8 x 80 >= 1.25 x m + 1
MEMORY = [1, 10, 30]
EXPECTED = {m: max(1, math.ceil((1.25 * m + 1) / (GPU_GIB / 8))) / 8 for m in MEMORY}


@pytest.fixture(scope="module")
def two_gpu_ray():
    """Ray with two logical GPUs, started once for this module with the toy plugin in its environment."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPL_TASKS", "toy=toy_task")
        mp.setenv("PYTHONPATH", os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
        ray.shutdown()  # an in-process Ray another test left running (bench/halving_sim.py keeps its own)
        ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def _intervals(data) -> list[dict]:
    """One interval per attempt, [start, end or kill], with the GPU it saw and its declared memory."""
    lines = [json.loads(x) for x in (data / "timeline.jsonl").read_text().splitlines()]
    out, open_ = [], {}
    for line in sorted(lines, key=lambda x: x["t"]):
        who = (line["seed"], line["memory_gib"])
        if line["event"] == "start":
            open_[who] = line
        else:
            start = open_.pop(who)
            out.append({"who": who, "start": start["t"], "end": line["t"], "gpus": start["gpus"],
                        "fraction": EXPECTED[line["memory_gib"]], "event": line["event"]})
    assert not open_, f"attempts that never ended: {open_}"
    return out


def _running_at(intervals: list[dict], t: float) -> list[dict]:
    return [i for i in intervals if i["start"] <= t < i["end"]]


@pytest.mark.slow  # 95 s on 2 free cores (9 min at load average 30): ray.init, 9 trials of ~8 s, a relaunch of 3
def test_auto_fractions_pack_two_logical_gpus_and_a_relaunch_asks_the_same(tmp_path, two_gpu_ray, capsys) -> None:
    from study.driver import run_study

    data = tmp_path / "data"
    data.mkdir()
    spec_file = tmp_path / "pack.yaml"
    spec_file.write_text(json.dumps({
        "name": "pack", "weights": "random", "networks": ["none"], "seeds": [0, 1, 2], "max_failures": 0,
        # the seed-2 trials kill their own worker in epoch 1 (max_failures 0: recorded FAILED, rerun by a relaunch)
        "tasks": {"toy": {"data": str(data), "params": {"epochs": 2, "sleep_s": 4.0, "memory_gib": MEMORY,
                                                         "log_times": True, "kill_at_epoch": 1, "kill_seed": 2}}},
        "resources": {"cpu": 0.25, "gpu": "auto"},
    }))
    study_dir = tmp_path / "study"
    assert run_study(load_spec(spec_file, storage=study_dir), gpu_memory=GPU_GIB) == 1  # the 3 killed ones
    intervals = _intervals(data)
    assert len(intervals) == 9 and sum(i["event"] == "kill" for i in intervals) == 3
    assert {i["gpus"] for i in intervals} == {"0", "1"}, "every trial sees the one logical GPU it was given"
    instants = sorted(i["start"] for i in intervals)
    concurrency = max(len(_running_at(intervals, t)) for t in instants)
    # with one trial per GPU at most 2 would run at once; the fractions let small trials join large ones
    assert concurrency >= 3, intervals
    for t in instants:  # the shares the trials need never add up to more than a whole GPU on either GPU
        for gpu in ("0", "1"):
            held = sum(i["fraction"] for i in _running_at(intervals, t) if i["gpus"] == gpu)
            assert held <= 1.0 + 1e-9, (t, gpu, _running_at(intervals, t))
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    runs = {rid: c.get_run(rid) for _, _, rid in trial_runs(study_dir, "pack")}
    assert len(runs) == 9
    # each trial asked for the smallest eighth holding its estimate + margin: three sizes, three fractions
    for run in runs.values():
        assert float(run.data.params["gpu_fraction"]) == EXPECTED[float(run.data.params["hp.memory_gib"])]
    assert len({r.data.params["gpu_fraction"] for r in runs.values()}) == 3

    # relaunch from the saved spec alone (what `dpl resume` reads): the killed trials ask for the same shares
    assert run_study(load_saved_spec(study_dir)) == 0, capsys.readouterr().err[-3000:]
    assert {s for _, s, _ in trial_runs(study_dir, "pack")} == {"FINISHED"}
    for rid, run in runs.items():
        history = sorted((m.step, m.value) for m in c.get_metric_history(rid, "attempt/gpu_fraction"))
        expected = EXPECTED[float(run.data.params["hp.memory_gib"])]
        attempts = 2 if run.data.params["seed"] == "2" else 1
        assert history == [(a, expected) for a in range(1, attempts + 1)], (run.data.params, history)
    relaunched = [i for i in _intervals(data) if i not in intervals]
    assert sorted(i["who"] for i in relaunched) == [(2, m) for m in MEMORY]
