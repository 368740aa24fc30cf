"""Progress of a method's stages (VIPaint's fit and refinement, a peer's sampling loop), in a terminal or a log.

Methods report through the hook `progress(done, total, values=None)` of a `Progress` made per stage. In a
terminal it is a rich bar, nested under Lightning's (rich) batch bar when there is one, with `values`
(e.g. {"elbo": -95.1}) after it. When stderr is not a terminal (a log file, CI) it writes plain lines

    [vipaint] batch 2/3 · VIPaint fit 25/50 · elbo -95.1 · 41 s

at most every `interval` seconds and at the end of each stage, so a long run shows progress in its log.
The "batch 2/3" part is the label of the enclosing `progress_label` block (the Lightning module opens one
per batch); the time is the stage's elapsed time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

__all__ = ["Progress", "format_line", "progress_label"]

# the label of the current `progress_label` block (a context variable: per thread / task, not a registry)
_LABEL: ContextVar[str] = ContextVar("vipaint_progress_label", default="")


@contextmanager
def progress_label(label: str) -> Iterator[None]:
    """Prefix the progress lines of the stages run inside the block with `label` (e.g. "batch 2/3")."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def _number(v: object) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def format_line(desc: str, done: int, total: int, values: Mapping[str, object] | None, elapsed: float,
                label: str = "") -> str:
    """One log line: "[vipaint] batch 2/3 · VIPaint fit 25/50 · elbo -95.1 · 41 s"."""
    parts = ([label] if label else []) + [f"{desc} {done}/{total}"]
    parts += [f"{k} {_number(v)}" for k, v in (values or {}).items()]
    parts.append(f"{elapsed:.0f} s")
    return "[vipaint] " + " · ".join(parts)


class Progress:
    """The progress hook of one stage: `progress(done, total, values=None)`.

    Args:
        desc: the stage's name, e.g. "VIPaint fit".
        enabled: False makes every call a no-op (e.g. on ranks other than 0).
        tty: bars (True) or log lines (False); None: whether `stream` (default stderr) is a terminal.
        stream: where log lines go (default: sys.stderr at the time of the call).
        clock: seconds, monotonic (tests pass a fake clock).
        interval: least number of seconds between two log lines of the stage, except its last line.
    """

    def __init__(self, desc: str, enabled: bool = True, *, tty: bool | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = 30.0) -> None:
        self.desc, self.enabled, self.stream, self.clock, self.interval = desc, bool(enabled), stream, clock, interval
        self.tty = tty
        self.bar, self.task = None, None   # the rich display and its task, while a terminal bar is shown
        self.start = self.last_line = clock() if self.enabled else 0.0

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _is_tty(self) -> bool:
        if self.tty is None:
            isatty = getattr(self._stream(), "isatty", None)
            self.tty = bool(isatty()) if isatty is not None else False
        return self.tty

    def __call__(self, done: int, total: int, values: Mapping[str, object] | None = None) -> None:
        if not self.enabled:
            return
        if self._is_tty():
            self._bar(done, total, values)
        else:
            self._line(done, total, values)

    def _bar(self, done: int, total: int, values: Mapping[str, object] | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        now = self.clock()
        if self.bar is None:
            # a rich display started inside Lightning's RichProgressBar nests under its batch bar (rich's
            # nested Live); a tqdm bar there would be swallowed by rich's redirection of stderr
            label = _LABEL.get()
            console = None
            if self.stream is not None:
                from rich.console import Console

                console = Console(file=self.stream, force_terminal=True)
            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TextColumn("{task.fields[postfix]}"), console=console,
                                    transient=True, auto_refresh=False)
            self.bar.start()
            self.task = self.bar.add_task(f"{label} · {self.desc}" if label else self.desc, total=total, postfix="")
            self.last_line = float("-inf")
        postfix = " · ".join(f"{k} {_number(v)}" for k, v in (values or {}).items())
        self.bar.update(self.task, completed=done, total=total, postfix=postfix)
        if done >= total:
            self.bar.refresh()
            self.bar.stop()
            self.bar = None
        elif now - self.last_line >= 0.1:       # at most 10 redraws a second
            self.last_line = now
            self.bar.refresh()

    def _line(self, done: int, total: int, values: Mapping[str, object] | None) -> None:
        now = self.clock()
        if done < total and now - self.last_line < self.interval:
            return
        self.last_line = now
        stream = self._stream()
        stream.write(format_line(self.desc, done, total, values, now - self.start, _LABEL.get()) + "\n")
        stream.flush()
