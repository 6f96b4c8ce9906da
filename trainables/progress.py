"""Progress of long loops outside a trial (downloads, `dpl data synth`) on stderr.

On a terminal a live bar (tqdm's: already installed as a dependency of optuna and lpips); in a log or
pipe a plain line at most every `every_s` seconds, and a last line only when the loop took that long,
so a fast loop adds nothing to a log while an hour-long download still shows it is alive. Loops report
through a plain callback `progress(done, total)`, so the data modules need neither this module's class
nor a terminal to run.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

#: What a loop calls with (items or bytes done so far, total; 0 = unknown).
ProgressFn = Callable[[int, int], None]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns at GB


class Progress:
    """A progress display for one loop: `bar(done, total)` as often as convenient, `bar.close()` at the end.

    `unit="B"` shows sizes (downloads); anything else counts items. `tty` overrides the stream's own
    answer and `clock` the time source, for tests.
    """

    def __init__(self, label: str, unit: str = "files", stream: TextIO | None = None, tty: bool | None = None,
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.unit, self.every_s, self.clock = label, unit, every_s, clock
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.done, self.total = 0, 0
        self.t0 = self._last = clock()
        self._bar: Any = None

    def __call__(self, done: int, total: int = 0) -> None:
        self.done, self.total = done, total or self.total
        if self.tty:
            self._draw_bar()
        elif self.clock() - self._last >= self.every_s:
            self._line()

    def close(self) -> None:
        """Finish the bar; in a log, one last line if the loop was long enough to have printed any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not self.tty and self.clock() - self.t0 >= self.every_s:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _amount(self, n: float) -> str:
        return human_bytes(n) if self.unit == "B" else f"{int(n)}"

    def text(self) -> str:
        """`download x.tgz: 12.0 MB / 48.0 MB (25%), 0:42` (the line a log gets)."""
        elapsed = int(self.clock() - self.t0)
        of = f" / {self._amount(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        unit = "" if self.unit == "B" else f" {self.unit}"
        return f"{self.label}: {self._amount(self.done)}{of}{unit}, {elapsed // 60}:{elapsed % 60:02d}"

    def _line(self) -> None:
        self.stream.write(self.text() + "\n")
        self.stream.flush()
        self._last = self.clock()

    def _draw_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            scale = self.unit == "B"
            self._bar = tqdm(total=self.total or None, desc=self.label, unit=self.unit, unit_scale=scale,
                             unit_divisor=1000, file=self.stream, dynamic_ncols=True, leave=True)
        if self.total and self._bar.total != self.total:
            self._bar.total = self.total
        self._bar.update(self.done - self._bar.n)


class Ticker:
    """Counts the items a loop has done across its phases and tells `progress` (None: only counts).

    What the data modules use: `tick = Ticker(progress, total)`, then `tick.add()` per item written, or
    `tick.chunks(render, labels)` for a vectorised renderer (rendered in slices, in order, so the output
    and the random stream are the same as in one call).
    """

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    def chunks(self, fn: Callable[[Any], Any], items: Any, size: int = 256) -> Any:
        import numpy as np

        parts = []
        for i in range(0, len(items), size):
            parts.append(fn(items[i : i + size]))
            self.add(len(items[i : i + size]))
        return np.concatenate(parts) if parts else fn(items)
