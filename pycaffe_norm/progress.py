"""``pcn train``'s progress line: iteration, iterations per second and time left, redrawn in place at the bottom
of a terminal. Log lines still print in full above it; when stderr is not a terminal (a file, a pipe) nothing
changes, so logs stay plain for parse-log and Caffe's tools.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

_CLEAR = "\r\x1b[K"  # carriage return, erase to the end of the line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return "%dh%02dm%02ds" % (hours, minutes, seconds) if hours else "%dm%02ds" % (minutes, seconds)


def progress_text(done: int, total: int, elapsed: float, start_iter: int = 0) -> str:
    """``Iteration 120/10000  35.2 iter/s  ETA 4m41s`` (rate over the iterations run in this session)."""
    run = done - start_iter
    if run <= 0 or elapsed <= 0:
        return "Iteration %d/%d" % (done, total)
    rate = run / elapsed
    eta = (total - done) / rate if rate > 0 else 0.0
    return "Iteration %d/%d  %.3g iter/s  ETA %s" % (done, total, rate, _duration(max(eta, 0.0)))


class ProgressLine(logging.Filter):
    """Wraps the solver's ``action_request`` (polled once per iteration) to redraw the line, and clears it before
    each log record of the ``pycaffe_norm`` logger's handlers. Does nothing unless ``stream`` is a terminal."""

    def __init__(self, solver, stream: Optional[TextIO] = None, interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.solver = solver
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.clock = clock
        self.active = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        self._clear()
        return True

    def _clear(self) -> None:
        if self.shown:
            self.stream.write(_CLEAR)
            self.shown = False

    def _poll(self) -> str:
        request = self.previous() if self.previous is not None else "none"
        now = self.clock()
        if self.start_iter is None:  # the first poll: after a resume's restore, before any timed iteration
            self.start_iter = self.last_iter = self.solver.iter
            self.started = self.last_draw = now
        elif self.solver.iter != self.last_iter and (now - self.last_draw >= self.interval or
                                                     self.solver.iter >= self.solver.param.max_iter):
            self.last_iter, self.last_draw = self.solver.iter, now
            self.stream.write(_CLEAR + progress_text(self.solver.iter, int(self.solver.param.max_iter),
                                                     now - self.started, self.start_iter))
            self.stream.flush()
            self.shown = True
        return request

    def __enter__(self):
        if not self.active:
            return self
        self.previous = self.solver.action_request
        self.start_iter: Optional[int] = None
        self.solver.action_request = self._poll
        self.handlers = list(logging.getLogger("pycaffe_norm").handlers)
        for handler in self.handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        self._clear()
        self.stream.flush()
        for handler in self.handlers:
            handler.removeFilter(self)
        self.solver.action_request = self.previous
