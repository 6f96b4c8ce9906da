"""What `dpl run` prints while a study runs: one line per trial event and one progress line.

Ray Tune's own console output (a status table every few seconds, a config table per trial start, a
result table per trial end) runs to hundreds of lines for the 8-trial smoke study; it stays available
under `dpl run --verbose`. Without it the driver gets a `TrialConsole` (as a Tune callback) that prints

    [0:12] started   superres/coco squeezenet1_1@features.1 seed0
    [0:31] epoch 2/3 superres/coco squeezenet1_1@features.1 seed0  val.psnr=21.3046
    [0:44] finished  superres/coco squeezenet1_1@features.1 seed0  test/set5/psnr=22.4112 (higher is better) in 32s
    [0:44] FAILED    autoencoder/stl10 squeezenet1_1@features.1 seed0  DataError: ... (one line)
    [0:47] stopped   toy/noise alexnet@features.4 seed0  early, at epoch 3/9  val.score=0.51 (halving)
    [0:50] resumed   toy/noise squeezenet1_1@features.1 seed0  from its epoch-1 checkpoint
    [0:44] progress  3/8 finished, 2 running, 1 failed, 2 pending | elapsed 0:44, ETA ~1:05

Trials are named as their MLflow runs are (`study.tracking.trial_run_name`), so a line can be looked
up in the UI; trials that share a run name get the task settings that differ added. An epoch line shows
the primary metric when reported, else a validation metric, else the training loss; a long trial prints
every k-th epoch only (at most `EPOCH_LINES` lines), and its last epoch is left to the `finished` line. On a terminal the progress line stays at the bottom and is redrawn in place (as pip and
cargo do); in a log file or pipe it is printed after each trial ends, so the log stays short. The
trainable (`study.trainable`) reports `epoch` and its metrics with '/' replaced by '.', and a last
result with `dpl_done=1` (final metrics) or `dpl_failed=1` (`error`: one line); a trial whose last result is
an epoch's was stopped there by a halving search. This module reads only those, plus the trial's config for
its name and epoch count.
"""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from study import tracking
from trainables.config import TrialConfig, trial_key

#: How often (seconds) a terminal's progress line is redrawn while nothing else happens.
REDRAW_S = 1.0
#: At most this many epoch lines per trial: a 100-epoch trial prints every 10th epoch.
EPOCH_LINES = 10


def fmt_duration(seconds: float | None) -> str:
    """`0:07`, `12:30`, `2:05:09`: short enough for a progress line, unambiguous unlike `1m`."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(durations: list[float], running_ages: list[float], pending: int, concurrency: int) -> float | None:
    """Time left, from the mean duration of the trials finished so far (None before the first one).

    Each pending trial costs one mean duration, each running one what is left of its mean duration
    (never below 0); `concurrency` trials run at once. Trials of different tasks differ in cost, so it is
    an estimate that improves as trials finish, which is what the `~` in the progress line says.
    """
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = pending * mean + sum(max(mean - age, 0.0) for age in running_ages)
    return work / max(1, concurrency)


def total_epochs(params: dict[str, Any]) -> int | None:
    """The epoch count a trial's resolved settings imply: `epochs`, or superres' iterations / eval_every."""
    if isinstance(params.get("epochs"), int):
        return params["epochs"]
    if isinstance(params.get("iterations"), int) and isinstance(params.get("eval_every"), int) and params["eval_every"] > 0:
        return max(1, math.ceil(params["iterations"] / params["eval_every"]))
    return None


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of an error, cut to `limit` characters."""
    first = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."


@dataclass
class _Trial:
    """What the console remembers of one trial of this launch."""

    name: str
    primary: str | None
    directions: dict[str, str]
    epochs: int | None
    state: str = "running"  # running | finished | failed
    started: float = 0.0
    last_epoch: int = 0
    first_result: bool = True


def display_names(configs: list[TrialConfig]) -> dict[str, str]:
    """trial key -> the name its lines use: the MLflow run name, plus the task settings that tell apart
    trials sharing one (a grid over `params`, e.g. lr=[1e-3, 1e-4], gives runs of the same name)."""
    groups: dict[str, list[TrialConfig]] = defaultdict(list)
    for c in configs:
        groups[tracking.trial_run_name(c)].append(c)
    names = {}
    for name, group in groups.items():
        keys = sorted(set().union(*(c.params for c in group)))
        varying = [k for k in keys if len({repr(c.params.get(k)) for c in group}) > 1]
        for c in group:
            extra = " ".join(f"{k}={c.params.get(k)}" for k in varying) if len(group) > 1 else ""
            if len(group) > 1 and not extra:
                extra = f"[{trial_key(c)[:8]}]"  # identical settings cannot happen in a plan; be safe
            names[trial_key(c)] = f"{name} {extra}" if extra else name
    return names


def _describe(config: dict[str, Any], names: dict[str, str]) -> tuple[str, str | None, dict[str, str], int | None]:
    """(display name, primary metric, metric directions, epoch count) of a trial from its Tune config."""
    trial = TrialConfig.from_dict(config["trial"])
    name = names.get(trial_key(trial)) if names else None
    try:
        from trainables.tasks import task_module

        module = task_module(trial.task)
        primary, directions = module.PRIMARY_METRIC, dict(module.METRICS)
    except Exception:  # noqa: BLE001 - a name is still worth printing; the trial reports its own error
        primary, directions = None, {}
    return name or tracking.trial_run_name(trial), primary, directions, total_epochs(trial.params)


#: Keys of a result that are Ray's bookkeeping or the trainable's protocol, never a metric to show.
_NOT_METRICS = {"epoch", "dpl_done", "dpl_failed", "error", "done", "training_iteration", "trial_id", "date",
                "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "config",
                "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "should_checkpoint"}


def _epoch_metric(result: dict[str, Any], primary: str | None) -> tuple[str, float] | None:
    """The one metric an epoch line shows: the primary when reported, else validation, else train loss."""
    keys = [k for k in result if k not in _NOT_METRICS and isinstance(result[k], (int, float))]
    want = primary.replace("/", ".") if primary else None
    ranked = ([want] if want in keys else []) + [k for k in keys if k.startswith("val.")] + \
        [k for k in keys if k == "train.loss"]
    return (ranked[0], float(result[ranked[0]])) if ranked else None


class TrialConsole:
    """The event lines and the progress line of one `dpl run` launch (see the module docstring).

    `planned` counts the study's trials, `already_finished` those skipped because MLflow holds them
    FINISHED, `launch` those this launch runs; finished/running/failed/pending add up to `planned`.
    Time comes from `clock` and the stream's TTY-ness decides in-place redraws, so tests can drive it.
    `names`: trial key -> display name (`display_names` of the launch's trials; else the run name).
    """

    def __init__(self, planned: int, launch: int, already_finished: int = 0, concurrency: int = 1,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 tty: bool | None = None, names: dict[str, str] | None = None) -> None:
        self.planned, self.launch, self.already = planned, launch, already_finished
        self.names = names or {}
        self.concurrency = max(1, concurrency)
        self._stream = stream  # None: whatever sys.stderr is when a line is written (see `stream`)
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.t0 = clock()
        self.trials: dict[str, _Trial] = {}
        self.durations: list[float] = []
        self._drawn = False  # a terminal's progress line is on screen (no newline after it yet)
        self._last_draw = 0.0

    @property
    def stream(self) -> TextIO:
        """The given stream, else the current sys.stderr: not held, because Tune pickles its callbacks with the
        run config, and a captured stderr (pytest's, a notebook's) cannot be pickled."""
        return self._stream or sys.stderr

    # ------------------------------------------------------------------ counts and lines

    def counts(self) -> dict[str, int]:
        states = [t.state for t in self.trials.values()]
        started = len(self.trials)
        return {"planned": self.planned, "finished": self.already + states.count("finished"),
                "stopped": states.count("stopped"), "running": states.count("running"),
                "failed": states.count("failed"), "pending": max(0, self.launch - started)}

    def progress_line(self) -> str:
        c = self.counts()
        now = self.clock()
        ages = [now - t.started for t in self.trials.values() if t.state == "running"]
        eta = eta_seconds(self.durations, ages, c["pending"], min(self.concurrency, max(1, c["pending"] + c["running"])))
        left = c["pending"] + c["running"]
        eta_text = "done" if not left else (f"ETA ~{fmt_duration(eta)}" if eta is not None else "ETA after the first trial")
        stopped = f"{c['stopped']} stopped early, " if c["stopped"] else ""
        return (f"progress  {c['finished']}/{c['planned']} finished, {stopped}{c['running']} running, "
                f"{c['failed']} failed, {c['pending']} pending | elapsed {fmt_duration(now - self.t0)}, {eta_text}")

    def _stamp(self) -> str:
        return f"[{fmt_duration(self.clock() - self.t0)}]"

    def _write(self, text: str) -> None:
        """One event line; on a terminal the progress line is wiped first and drawn again below it."""
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self._stamp()} {text}\n")
        if self.tty:
            self._draw()
        self.stream.flush()

    def _draw(self) -> None:
        self.stream.write(f"\r\033[K{self._stamp()} {self.progress_line()}")
        self.stream.flush()
        self._drawn, self._last_draw = True, self.clock()

    def _trial_ended(self) -> None:
        """A pipe or log gets the progress line after each trial's end (a terminal has it redrawn)."""
        if not self.tty:
            self.stream.write(f"{self._stamp()} {self.progress_line()}\n")
            self.stream.flush()

    # ------------------------------------------------------------------ events (Tune-independent)

    def started(self, trial_id: str, config: dict[str, Any]) -> None:
        if trial_id in self.trials:
            return  # Ray starting it again after a worker death: the `restart` line said so
        name, primary, directions, epochs = _describe(config, self.names)
        self.trials[trial_id] = _Trial(name, primary, directions, epochs, started=self.clock())
        self._write(f"started   {name}")

    def restarting(self, trial_id: str, error: str) -> None:
        """Ray restarts a trial whose worker died (FailureConfig.max_failures); it resumes from its checkpoint."""
        t = self.trials.get(trial_id)
        if t is None:
            return
        t.first_result = True
        self._write(f"restart   {t.name}  worker died ({one_line(error, 120)}); restarting from its checkpoint")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        t = self.trials.get(trial_id)
        if t is None or t.state != "running":
            return
        if result.get("dpl_failed"):
            self._fail(t, str(result.get("error", "")))
            return
        if result.get("dpl_done"):
            self._finish(t, result)
            return
        epoch = result.get("epoch")
        if not isinstance(epoch, int):
            return
        if t.first_result and epoch > 1:
            self._write(f"resumed   {t.name}  from its epoch-{epoch - 1} checkpoint")
        t.first_result = False
        if epoch <= t.last_epoch:
            return  # a task's final report repeats its last epoch
        t.last_epoch = epoch
        if epoch == t.epochs and t.primary and t.primary.replace("/", ".") in result:
            return  # the last epoch with the final metric: the `finished` line right after says it
        if t.epochs and epoch % max(1, math.ceil(t.epochs / EPOCH_LINES)):
            return  # a long trial: every k-th epoch only, so it stays at most EPOCH_LINES lines
        shown = _epoch_metric(result, t.primary)
        of = f"/{t.epochs}" if t.epochs else ""
        metric = f"  {shown[0]}={shown[1]:.4g}" if shown else ""
        self._write(f"epoch {epoch}{of} {t.name}{metric}")

    def completed(self, trial_id: str, last_result: dict[str, Any] | None) -> None:
        t = self.trials.get(trial_id)
        if t is None or t.state != "running":
            return
        last = last_result or {}
        if last.get("dpl_failed"):
            self._fail(t, str(last.get("error", "")))
        elif not last.get("dpl_done") and isinstance(last.get("epoch"), int):
            self._stop(t, last)  # ended on an epoch's report: a halving search stopped it there
        else:
            self._finish(t, last)

    def errored(self, trial_id: str, error: str) -> None:
        """Ray gave up on the trial (its worker died more often than max_failures allows)."""
        t = self.trials.get(trial_id)
        if t is not None and t.state == "running":
            self._fail(t, error or "worker died; rerun to resume")

    def tick(self) -> None:
        """Redraw a terminal's progress line (elapsed time and ETA move on between events)."""
        if self.tty and self.clock() - self._last_draw >= REDRAW_S:
            self._draw()

    def close(self) -> None:
        """End the launch's output: a terminal keeps its last progress line, a log gets the final one."""
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self._drawn = False
        elif not self.trials or any(t.state == "running" for t in self.trials.values()):
            self.stream.write(f"{self._stamp()} {self.progress_line()}\n")  # interrupted: say where it stopped
        self.stream.flush()

    # ------------------------------------------------------------------ endings

    def _finish(self, t: _Trial, result: dict[str, Any]) -> None:
        t.state = "finished"
        took = self.clock() - t.started
        self.durations.append(took)
        value = result.get(t.primary.replace("/", ".")) if t.primary else None
        better = {"max": " (higher is better)", "min": " (lower is better)"}.get(t.directions.get(t.primary or ""), "")
        metric = f"  {t.primary}={float(value):.4f}{better}" if isinstance(value, (int, float)) else ""
        self._write(f"finished  {t.name}{metric} in {fmt_duration(took)}")
        self._trial_ended()

    def _stop(self, t: _Trial, result: dict[str, Any]) -> None:
        t.state = "stopped"
        self.durations.append(self.clock() - t.started)
        shown = _epoch_metric(result, t.primary)
        of = f"/{t.epochs}" if t.epochs else ""
        metric = f"  {shown[0]}={shown[1]:.4g}" if shown else ""
        self._write(f"stopped   {t.name}  early, at epoch {result['epoch']}{of}{metric} (halving)")
        self._trial_ended()

    def _fail(self, t: _Trial, error: str) -> None:
        t.state = "failed"
        self._write(f"FAILED    {t.name}  {one_line(error) or 'no error message'}")
        self._trial_ended()


def error_text(trial: Any) -> str:
    """A Ray trial's error as one line `Type: message` (as `close_orphans` records it in MLflow)."""
    try:
        exc = trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - unreadable error file: fall back to the text trace
        exc = None
    if exc is not None:
        return f"{type(exc).__name__}: {one_line(str(exc))}"
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001
        text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def tune_callback(console: TrialConsole) -> Any:
    """A `ray.tune.Callback` feeding Tune's trial events to `console` (built here: Ray is imported late)."""
    from ray import tune

    class ConsoleCallback(tune.Callback):
        """Forwards trial start/result/complete/recover/error to the console; keys by Ray's trial id,
        which is stable within one launch (the only span a console covers)."""

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            console.started(trial.trial_id, trial.config)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            console.result(trial.trial_id, result)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            console.completed(trial.trial_id, trial.last_result)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            console.restarting(trial.trial_id, error_text(trial))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            console.errored(trial.trial_id, error_text(trial))

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            console.tick()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            console.close()

    return ConsoleCallback()
