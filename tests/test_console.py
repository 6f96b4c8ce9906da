"""What a person reads on the console: `dpl run`'s trial lines, `dpl status --watch`, progress bars.

The real CLI runs in subprocesses: the smoke preset as `make demo` runs it (its whole console must stay
under 60 lines, one `started` and one `finished` line per trial, no Ray Tune table), a toy study whose
trials fail, die and resume (one line each; `dpl status` lists the failures; the dead worker's trial resumed
into its own run), and `--verbose` (tests/test_study.py's 64-trial launch) still shows Ray Tune's tables. The
smoke launch is the first step of the session's shared smoke study (tests/_smoke_study.py). The console's
arithmetic (counts, ETA) is checked against independent formulas with a fake clock.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from _smoke_study import PLUGINS, dpl, toy_env
from study import tracking
from study.console import TrialConsole, eta_seconds, fmt_duration, one_line, total_epochs

#: Text only Ray Tune's own reporters print (status/config/result tables and the experiment header).
TUNE_TABLE_TEXT = ("Trial status", "╭", "Configuration for experiment", "View detailed results here")
STAMP = r"\[\d+:\d\d\]"  # each console line starts with the launch's elapsed time
PROGRESS = re.compile(STAMP + r" progress  (\d+)/(\d+) finished, (\d+) running, (\d+) failed, (\d+) pending \| "
                      r"elapsed \d+:\d\d, (ETA ~\d+:\d\d|ETA after the first trial|done)$")


def events(lines: list[str], kind: str) -> list[str]:
    """The rest of each `[m:ss] KIND ...` line."""
    pat = re.compile(STAMP + rf" {re.escape(kind)}\s+(.*)$")
    return [m.group(1) for line in lines if (m := pat.match(line))]


# ------------------------------------------------------------------ the smoke study, as `make demo` runs it


@pytest.fixture(scope="module")
def smoke(smoke_study):
    """`dpl run --preset smoke` into a fresh study dir, the first launch of the session's shared smoke study
    (tests/_smoke_study.py): (completed process, console lines, study dir, its trial runs then, its plan)."""
    demo = smoke_study.demo
    return demo["result"], demo["lines"], smoke_study.study_dir, demo["trials"], demo["plan"]


@pytest.mark.slow
def test_smoke_console_is_short_and_has_one_start_and_finish_line_per_trial(smoke) -> None:
    result, lines, _, trials, _ = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(lines) < 60, "\n".join(lines)
    assert not [t for t in TUNE_TABLE_TEXT if t in result.stderr + result.stdout], result.stdout[:3000]
    assert "(run_config_trial pid=" not in result.stderr  # workers' own output stays in Ray's logs
    runs = {t["run_name"]: (t["status"], t["primary"], t["metrics"]) for t in trials.values()}
    assert len(runs) == 8 and {s for s, _, _ in runs.values()} == {"FINISHED"}
    started, finished = events(lines, "started"), events(lines, "finished")
    assert sorted(started) == sorted(runs), (started, sorted(runs))
    assert len(finished) == 8
    for name, (_, primary, metrics) in runs.items():
        line = [f for f in finished if f.startswith(name + "  ")]
        assert len(line) == 1, (name, finished)
        m = re.search(re.escape(primary) + r"=(-?[\d.]+) \((higher|lower) is better\) in \d+:\d\d$", line[0])
        assert m and float(m.group(1)) == pytest.approx(metrics[primary], abs=5e-5), (line[0], metrics[primary])


@pytest.mark.slow
def test_smoke_epoch_lines_count_k_of_n_and_progress_adds_up(smoke) -> None:
    result, lines, _, _, plan_list = smoke
    epochs = [re.match(r"(\d+)/(\d+) (.+?)  (\S+)=(\S+)$", e) for e in events(lines, "epoch")]
    assert epochs and all(epochs), events(lines, "epoch")
    plan = {p["trial_key"]: p for p in plan_list}
    assert plan
    # superres smoke: 60 iterations, an epoch every 20 -> 3; the autoencoder's and delineation's: 2
    assert {(m.group(3).split()[0], int(m.group(2))) for m in epochs} >= {("superres/coco", 3), ("autoencoder/svhn", 2)}
    assert all(1 <= int(m.group(1)) < int(m.group(2)) for m in epochs)  # the last epoch is the `finished` line
    progress = [PROGRESS.match(line) for line in lines if " progress  " in line]
    assert len(progress) == 8 and all(progress), [line for line in lines if "progress" in line]
    for m in progress:
        finished, planned, running, failed, pending = (int(m.group(i)) for i in range(1, 6))
        assert planned == len(plan) == finished + running + failed + pending
    assert [int(m.group(1)) for m in progress] == list(range(1, 9)) and progress[-1].group(6) == "done"
    assert "dpl: done: 8/8 finished, 0 failed, 0 running, 0 pending" in lines


# ------------------------------------------------------------------ faults: failed, died, resumed


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy study: one trial that raises, one whose worker dies at epoch 2 (Ray restarts it once, and it
    resumes from its epoch-1 checkpoint), one that just runs; (result, lines, study dir)."""
    root = tmp_path_factory.mktemp("toy-console")
    data = root / "data"
    data.mkdir()
    spec = {"name": "toyconsole", "weights": "random", "networks": ["none"], "seeds": [0],
            "tasks": {"toy": {"data": str(data), "params": {"epochs": 3, "fail": [False, True], "kill_at_epoch": [0, 2]}}},
            "resources": {"cpu": 1}, "max_concurrent": 2, "max_failures": 1, "ray": {"num_cpus": 2}}
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    study_dir = root / "study"
    result = dpl("run", str(path), "--storage", str(study_dir), env=toy_env())
    return result, result.stderr.splitlines(), study_dir


@pytest.mark.slow
def test_failed_trial_is_one_line_with_its_error(toy) -> None:
    result, lines, study_dir = toy
    assert result.returncode == 1, result.stderr[-3000:]  # two trials fail on purpose
    failed = events(lines, "FAILED")
    assert len(failed) == 2, result.stderr[-3000:]
    for line in failed:
        assert line.endswith("  ValueError: toy task asked to fail (fail=true)"), line
    assert "Traceback" not in result.stderr and "(run_config_trial pid=" not in result.stderr
    assert not [t for t in TUNE_TABLE_TEXT if t in result.stderr + result.stdout], result.stdout[:3000]
    # the four runs share one MLflow name: the lines add the task settings that tell them apart
    assert sorted(f.split("  ")[0] for f in failed) == [
        "toy/noise none@pixel weights=random seed0 fail=True kill_at_epoch=0",
        "toy/noise none@pixel weights=random seed0 fail=True kill_at_epoch=2"]
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    runs = tracking.find_runs(c, c.get_experiment_by_name("toyconsole").experiment_id, "tags.`dpl.kind` = 'trial'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    # and the MLflow runs carry the same distinct names (the runs table tells them apart too)
    base = "toy/noise none@pixel weights=random seed0"
    assert sorted(r.info.run_name for r in runs) == [f"{base} fail={f} kill_at_epoch={k}"
                                                      for f in (False, True) for k in (0, 2)]
    assert len(events(lines, "started")) == 4 and len(events(lines, "finished")) == 2
    last = [m for line in lines if (m := PROGRESS.match(line))][-1]
    assert [int(last.group(i)) for i in range(1, 6)] == [2, 4, 0, 2, 0]
    assert "rerun with --verbose" in result.stderr
    assert "2 trial(s) failed" in result.stderr  # the study went on past them and says so


@pytest.mark.slow
def test_status_lists_each_failed_trial_with_its_error(toy) -> None:
    _, _, study_dir = toy
    status = dpl("status", str(study_dir), env=toy_env())
    assert status.returncode == 0, status.stderr
    failed = [line for line in status.stdout.splitlines() if "FAILED toy " in line]
    assert len(failed) == 2 and all("asked to fail" in line for line in failed), status.stdout


@pytest.mark.slow
def test_status_imports_neither_torch_nor_ray(toy) -> None:
    """`dpl status` only reads the store: torch and torchvision (3 s of imports) and Ray stay out, so it
    answers in about 2 s (it took 5-6 s when the saved spec's check imported the task modules)."""
    _, _, study_dir = toy
    probe = ("import io, contextlib, sys\nfrom study.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    assert main(['status', {str(study_dir)!r}]) == 0\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **toy_env()})
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_status_into_a_pipe_closed_early_prints_no_traceback(toy) -> None:
    _, _, study_dir = toy
    """`dpl status | head`: the reader stops reading; dpl stops quietly. `true` as the reader closes the pipe
    before dpl (2 s of imports) writes a byte."""
    out = subprocess.run(f"{sys.executable} -m study.cli status {study_dir} | true; exit ${{PIPESTATUS[0]}}",
                         shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
                         env={**os.environ, **toy_env()})
    assert (out.returncode, out.stderr) == (141, ""), out


@pytest.mark.slow
def test_killed_worker_resumed_its_run_from_the_checkpoint(toy) -> None:
    """The trial whose worker died at epoch 2: Ray restarted it within the launch, into the same MLflow run, from
    its epoch-1 checkpoint (a restart from scratch would log attempt 2 at epoch 1)."""
    from test_study import attempts, checkpointed_epoch

    _, _, study_dir = toy
    assert list((study_dir.parent / "data").glob("killed-*")), "the worker was never killed"
    c = tracking.client(tracking.default_tracking_uri(study_dir))
    runs = tracking.find_runs(c, c.get_experiment_by_name("toyconsole").experiment_id,
                              "tags.`dpl.kind` = 'trial' and attributes.run_name LIKE '%fail=False kill_at_epoch=2'")
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert attempts(c, run.info.run_id) == (2, [(1, 1), (2, 2)])
    assert checkpointed_epoch(study_dir, run.data.tags[tracking.KEY_TAG]) == 3


@pytest.mark.slow
def test_worker_death_shows_restart_and_resume_from_checkpoint(toy) -> None:
    result, lines, _ = toy
    restart, resumed = events(lines, "restart"), events(lines, "resumed")
    assert len(restart) == 1 and "restarting from its checkpoint" in restart[0], result.stderr[-3000:]
    assert len(resumed) == 1 and resumed[0].endswith("  from its epoch-1 checkpoint"), resumed
    name = resumed[0].split("  ")[0]
    assert name == "toy/noise none@pixel weights=random seed0 fail=False kill_at_epoch=2"
    assert restart[0].startswith(name + "  ")
    after = lines[[i for i, line in enumerate(lines) if " resumed " in line][0]:]
    assert any(re.search(r" epoch 2/3 " + re.escape(name) + "  ", line) for line in after)
    assert sum(1 for s in events(lines, "started") if s == name) == 1  # Ray's second start is no new line


# ------------------------------------------------------------------ dpl status --watch


@pytest.mark.slow
def test_watch_on_a_finished_study_prints_once_and_exits_0(toy) -> None:
    _, _, study_dir = toy
    result = dpl("status", str(study_dir), "--watch", "--interval", "0.2", env=toy_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("study toyconsole (") == 1, result.stdout
    assert "driver not running" in result.stdout and "done watching" in result.stdout
    assert "\033[" not in result.stdout  # not a terminal: plain blocks


def hold_lock(study_dir: Path, seconds: float) -> subprocess.Popen:
    """A stand-in driver: a process holding the study's `driver.lock` (flock) for `seconds`."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(study_dir / "driver.lock"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_watch_refreshes_while_a_driver_holds_the_lock_and_ends_when_released(toy) -> None:
    _, _, study_dir = toy
    holder = hold_lock(study_dir, 600.0)
    watch = subprocess.Popen([sys.executable, "-m", "study.cli", "status", str(study_dir), "--watch", "--interval",
                              "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **toy_env()})
    try:
        seen = []
        while sum("driver running" in line for line in seen) < 3:  # three refreshes while the lock is held
            line = watch.stdout.readline()
            assert line, (seen, watch.stderr.read())
            seen.append(line)
        assert watch.poll() is None, "watch ended while a driver held the lock"
        holder.kill()  # the driver goes away: its flock is released
        holder.wait()
        rest, err = watch.communicate(timeout=60)
    finally:
        holder.kill()
        watch.kill()
    assert watch.returncode == 0, err
    assert "driver not running" in rest and rest.rstrip().endswith("done watching"), rest
    assert "driver running" not in rest.split("driver not running")[-1]
    assert "\033[" not in "".join(seen) + rest  # not a terminal: plain blocks, one after another


@pytest.mark.slow
def test_watch_exits_0_on_ctrl_c(toy) -> None:
    _, _, study_dir = toy
    holder = hold_lock(study_dir, 120.0)
    try:
        watch = subprocess.Popen([sys.executable, "-m", "study.cli", "status", str(study_dir), "--watch",
                                  "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, **toy_env()})
        assert "study toyconsole (" in watch.stdout.readline()
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert watch.returncode == 0, err


@pytest.mark.slow
def test_watch_on_a_terminal_redraws_in_place(toy, monkeypatch) -> None:
    from study import status

    _, _, study_dir = toy
    for k, v in toy_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(PLUGINS)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    calls = iter([True, True, False])
    real = status.study_status

    def fake_status(*a, **k):  # a driver for two refreshes, then gone
        st = real(*a, **k)
        st["driver_running"] = next(calls)
        return st

    monkeypatch.setattr(status, "study_status", fake_status)
    out = Tty()
    assert status.watch_status(study_dir, interval=0.01, stream=out, sleep=lambda s: None) == 0
    assert out.getvalue().count("\033[H\033[2J") == 3 and out.getvalue().count("study toyconsole (") == 3


# ------------------------------------------------------------------ the console's arithmetic, fake clock


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def toy_config(seed: int, epochs: int = 3) -> dict:
    return {"trial": {"task": "similarity", "network": "alexnet", "points": ["features.1"], "dataset": "bapps",
                      "variant": "baseline", "seed": seed, "weights": "random", "budget": "smoke",
                      "params": {"epochs": epochs}}}


def test_eta_is_mean_duration_times_remaining_work_over_concurrency() -> None:
    assert eta_seconds([], [5.0], 3, 2) is None
    # mean 20 s; 3 pending = 60 s; running for 5 s and 30 s -> 15 s and 0 s left; 2 at once
    assert eta_seconds([10.0, 30.0], [5.0, 30.0], 3, 2) == pytest.approx((3 * 20 + 15 + 0) / 2)
    assert eta_seconds([12.0], [], 0, 4) == 0.0
    assert [fmt_duration(s) for s in (0, 59.6, 61, 3600 + 62, None)] == ["0:00", "1:00", "1:01", "1:01:02", "?"]
    assert total_epochs({"epochs": 4}) == 4 and total_epochs({"iterations": 60, "eval_every": 20}) == 3
    assert total_epochs({"iterations": 61, "eval_every": 20}) == 4 and total_epochs({}) is None
    assert one_line("\n  KeyError: 'x'\n  more\n") == "KeyError: 'x'" and len(one_line("y" * 999)) == 300


def test_console_lines_counts_and_eta_with_a_fake_clock() -> None:
    clock, out = Clock(), io.StringIO()
    con = TrialConsole(planned=5, launch=4, already_finished=1, concurrency=2, stream=out, clock=clock, tty=False)
    con.started("a", toy_config(0))
    con.started("b", toy_config(1))
    clock.t += 10
    con.result("a", {"epoch": 1, "train.loss": 0.5, "val.loss": 0.25, "time_this_iter_s": 3.0})
    con.result("a", {"epoch": 1, "train.loss": 0.5})  # a repeated epoch: no second line
    clock.t += 10
    con.result("a", {"epoch": 3, "2afc.mean": 0.7})  # the last epoch with the primary: `finished` says it
    con.result("a", {"dpl_done": 1, "2afc.mean": 0.71234})
    con.result("b", {"dpl_failed": 1, "error": "DataError: no file x\nsecond line"})
    con.completed("b", {"dpl_failed": 1, "error": "DataError: no file x"})  # already reported: no line
    lines = out.getvalue().splitlines()
    name = "similarity/bapps alexnet@features.1 baseline weights=random seed0"
    assert lines == [
        f"[0:00] started   {name}",
        f"[0:00] started   {name.replace('seed0', 'seed1')}",
        f"[0:10] epoch 1/3 {name}  val.loss=0.25",
        f"[0:20] finished  {name}  2afc/mean=0.7123 (higher is better) in 0:20",
        # mean 20 s; 2 never started (40 s) + b, running for 20 s (0 s left); 2 at once: 20 s
        "[0:20] progress  2/5 finished, 1 running, 0 failed, 2 pending | elapsed 0:20, ETA ~0:20",
        f"[0:20] FAILED    {name.replace('seed0', 'seed1')}  DataError: no file x",
        "[0:20] progress  2/5 finished, 0 running, 1 failed, 2 pending | elapsed 0:20, ETA ~0:20",
    ]
    assert sum(con.counts()[k] for k in ("finished", "running", "failed", "pending")) == 5


def test_console_resume_restart_and_worker_death() -> None:
    clock, out = Clock(), io.StringIO()
    con = TrialConsole(planned=1, launch=1, stream=out, clock=clock, tty=False)
    con.started("a", toy_config(0, epochs=4))
    con.result("a", {"epoch": 2, "train.loss": 1.0})  # first result at epoch 2: resumed from epoch 1
    con.restarting("a", "ActorDiedError: The actor died unexpectedly\n  details")
    con.started("a", toy_config(0, epochs=4))  # Ray's restart: no second `started`
    con.result("a", {"epoch": 3, "train.loss": 0.9})
    con.errored("a", "ActorDiedError: died again")
    text = out.getvalue()
    assert "resumed   similarity/bapps alexnet@features.1 baseline weights=random seed0  from its epoch-1 checkpoint" in text
    assert text.count("from its epoch-2 checkpoint") == 1 and text.count("started") == 1
    assert "worker died (ActorDiedError: The actor died unexpectedly); restarting" in text
    assert "FAILED    similarity/bapps alexnet@features.1 baseline weights=random seed0  ActorDiedError: died again" in text


def test_console_on_a_terminal_keeps_one_progress_line_redrawn() -> None:
    clock, out = Clock(), io.StringIO()
    con = TrialConsole(planned=2, launch=2, stream=out, clock=clock, tty=True)
    con.started("a", toy_config(0))
    clock.t += 5
    con.tick()  # redraw: elapsed moved on
    con.completed("a", {"dpl_done": 1, "2afc.mean": 0.5})
    con.close()
    text = out.getvalue()
    assert text.count("\r\033[K[0:05] progress  0/2 finished, 1 running") == 1
    assert text.endswith("progress  1/2 finished, 0 running, 0 failed, 1 pending | elapsed 0:05, ETA ~0:05\n")
    assert text.count("\n") == 3  # started, finished, and the last progress line: redraws add no lines


# ------------------------------------------------------------------ progress of synth and downloads


def test_synth_progress_reaches_the_total_and_chunked_rendering_keeps_the_bytes(tmp_path) -> None:
    from trainables.data import svhn
    from trainables.progress import Ticker

    calls: list[tuple[int, int]] = []
    svhn.synthesize(tmp_path / "svhn", progress=lambda d, t: calls.append((d, t)))
    total = sum(svhn.SYNTH_SIZES["smoke"].values())
    assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) > 3
    labels = np.random.default_rng(3).integers(0, 10, 300)
    whole = svhn.render_digits(labels, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    parts = Ticker(None, 300).chunks(lambda part: svhn.render_digits(part, rng), labels, size=64)
    assert np.array_equal(whole, parts)


def test_download_progress_in_a_log_is_throttled_lines(tmp_path, monkeypatch) -> None:
    from trainables.data import download
    from trainables.progress import Progress

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 5))
    clock, out = Clock(), io.StringIO()

    def slow_clock() -> float:  # each reading is 4 s later: a line every 10 s = every third chunk or so
        clock.t += 4
        return clock.t

    monkeypatch.setattr(download, "Progress", lambda label, unit: Progress(label, unit, stream=out, tty=False,
                                                                            clock=slow_clock))
    download.fetch(src.as_uri(), tmp_path / "dest" / "big.bin")
    lines = out.getvalue().splitlines()
    assert (tmp_path / "dest" / "big.bin").read_bytes() == src.read_bytes()
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("download big.bin: 3.1 MB / 3.1 MB (100%)"), lines


def test_display_names_tell_apart_trials_that_share_a_run_name() -> None:
    from study.console import display_names
    from trainables.config import TrialConfig, trial_key

    a, b, c = (TrialConfig.from_dict(toy_config(0)["trial"] | {"params": {"epochs": 3, "lr": lr}}) for lr in (0.1, 0.01, 0.1))
    c = c.replace(seed=1)
    names = display_names([a, b, c])
    base = "similarity/bapps alexnet@features.1 baseline weights=random"
    assert names == {trial_key(a): f"{base} seed0 lr=0.1", trial_key(b): f"{base} seed0 lr=0.01",
                     trial_key(c): f"{base} seed1"}


def test_a_long_trial_prints_every_kth_epoch_only() -> None:
    out = io.StringIO()
    con = TrialConsole(planned=1, launch=1, stream=out, clock=Clock(), tty=False)
    con.started("a", toy_config(0, epochs=95))  # ceil(95 / 10) = every 10th epoch
    for epoch in range(1, 96):
        con.result("a", {"epoch": epoch, "train.loss": 1.0 / epoch})
    shown = [int(m) for m in re.findall(r"epoch (\d+)/95 ", out.getvalue())]
    assert shown == list(range(10, 95, 10)), shown  # 95 itself is the `finished` line's to tell


def test_a_trial_ending_on_an_epoch_result_was_stopped_by_the_halving_search() -> None:
    """Tune ends a stopped trial on its last epoch's result (no `dpl_done`): `stopped`, not `finished`, and
    the progress line counts it apart from the finished ones and the failures."""
    clock, out = Clock(), io.StringIO()
    con = TrialConsole(planned=2, launch=2, stream=out, clock=clock, tty=False)
    con.started("a", toy_config(0, epochs=9))
    con.started("b", toy_config(1, epochs=9))
    clock.t += 5
    con.result("a", {"epoch": 1, "val.2afc": 0.61})
    con.completed("a", {"epoch": 1, "val.2afc": 0.61})
    lines = out.getvalue().splitlines()
    name = "similarity/bapps alexnet@features.1 baseline weights=random seed0"
    assert lines[-2:] == [f"[0:05] stopped   {name}  early, at epoch 1/9  val.2afc=0.61 (halving)",
                          "[0:05] progress  0/2 finished, 1 stopped early, 1 running, 0 failed, 0 pending | "
                          "elapsed 0:05, ETA ~0:00"]  # stopped trials' durations count: most trials stop
    assert con.counts()["stopped"] == 1 and con.counts()["failed"] == 0
