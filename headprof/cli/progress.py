"""Progress on stderr for long steps: a rich bar or spinner on a terminal, plain lines otherwise (`PlainProgress`).

Off a terminal (CI logs, `nohup`, a pipe) a line comes every tenth of the work and after 30 s without one, so
a log shows the run is alive without filling with redraws.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from headprof.cli.render import err


def _clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Progress as plain lines, for a stderr that is not a terminal (CI logs, `nohup`, a pipe).

    With a total: `<what>: <done>/<total> (<pct>%), <elapsed> elapsed, eta <left>` whenever another tenth
    is done and after `interval` seconds without a line. Without a total (loading a model): `<what>:
    <elapsed> elapsed` every `interval` seconds, then a closing `done in` line if any was printed and the
    step did not fail. Nothing is printed before the first tenth or the first interval, so a quick step
    (or one that fails at once, whose error line must stand alone) stays silent. A daemon thread calls
    `tick`, so a slow item still gets its line every `interval` seconds.
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        stream: TextIO,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = total
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.started = self.last_line = clock()
        self.lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlainProgress:
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.total is None and self.lines and exc_type is None:  # a failure ends with its error line instead
            self._write(f"{self.description}: done in {_clock(self.clock() - self.started)}")

    def advance(self, steps: int = 1) -> None:
        """`steps` more items done; a line when this crosses a tenth of the total (or finishes it)."""
        with self._lock:
            before, self.done = self.done, self.done + steps
            if self.total and (self.done * 10 // self.total > before * 10 // self.total):
                self._write()

    def tick(self) -> None:
        """A line if `interval` seconds went by without one."""
        with self._lock:
            if self.clock() - self.last_line >= self.interval:
                self._write()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            self.tick()

    def _write(self, text: str | None = None) -> None:
        now = self.clock()
        elapsed = now - self.started
        if text is None and self.total is None:
            text = f"{self.description}: {_clock(elapsed)} elapsed"
        elif text is None:
            total = max(self.total or 0, 1)
            eta = _clock(elapsed / self.done * (total - self.done)) if self.done else "-"
            text = (
                f"{self.description}: {self.done}/{self.total} ({self.done * 100 // total}%), "
                f"{_clock(elapsed)} elapsed, eta {eta}"
            )
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_line, self.lines = now, self.lines + 1


def _terminal(stream: TextIO | None) -> bool:
    """A rich bar or spinner only on the console's own terminal; any other stream gets plain lines."""
    return stream is None and err.is_terminal


@contextmanager
def bar(description: str, total: int, stream: TextIO | None = None) -> Iterator[Callable[[], None]]:
    """A long step of `total` items on stderr (or `stream`); yields the function to call once per item."""
    if _terminal(stream):
        columns = (
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)
        return
    with PlainProgress(description, total, stream or sys.stderr) as plain:
        yield plain.advance


@contextmanager
def status(message: str, stream: TextIO | None = None) -> Iterator[None]:
    """A step without a count (loading a model): a spinner on a terminal, else a line every 30 s."""
    if _terminal(stream):
        with err.status(Text(f"{message} ...")):
            yield
        return
    with PlainProgress(message, None, stream or sys.stderr):
        yield
