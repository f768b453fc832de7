"""pcn train's progress line (pycaffe_norm.progress): drawn only on a terminal, cleared before every log line."""
from __future__ import annotations

import io
import logging

from pycaffe_norm.progress import ProgressLine, progress_text
from pycaffe_norm.proto import caffe_pb2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeSolver:
    def __init__(self, max_iter: int):
        self.param = caffe_pb2.SolverParameter(max_iter=max_iter)
        self.iter = 0
        self.action_request = lambda: "none"


def test_progress_text():
    assert progress_text(0, 100, 0.0) == "Iteration 0/100"
    assert progress_text(50, 100, 10.0) == "Iteration 50/100  5 iter/s  ETA 0m10s"
    assert progress_text(1050, 10000, 100.0, start_iter=1000) == "Iteration 1050/10000  0.5 iter/s  ETA 4h58m20s"


def test_line_is_drawn_on_a_terminal_and_cleared_before_log_records():
    stream, now = Terminal(), [0.0]
    solver = FakeSolver(max_iter=40)
    requests = []
    solver.action_request = lambda: requests.append(1) or "snapshot"
    logger = logging.getLogger("pycaffe_norm")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with ProgressLine(solver, stream, interval=0.0, clock=lambda: now[0]) as line:
            assert solver.action_request() == "snapshot"  # the first poll starts the clock; requests pass through
            for _ in range(10):
                solver.iter += 1
                now[0] += 0.5
                solver.action_request()
            assert stream.getvalue().endswith("\r\x1b[KIteration 10/40  2 iter/s  ETA 0m15s")
            logger.info("Iteration 10, loss = 1")
            assert stream.getvalue().endswith("\r\x1b[KIteration 10, loss = 1\n")  # the line gave way
            assert not line.shown
        assert len(requests) == 11
        assert solver.action_request() == "snapshot" and len(requests) == 12  # the solver's own function is back
        assert line not in handler.filters
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_nothing_changes_when_stderr_is_not_a_terminal():
    stream, solver = io.StringIO(), FakeSolver(max_iter=5)
    original = solver.action_request
    with ProgressLine(solver, stream):
        assert solver.action_request is original
        solver.iter = 3
        solver.action_request()
    assert stream.getvalue() == ""
