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


def test_pcn_train_on_a_terminal_shows_the_line(tmp_path):
    import os
    import pathlib
    import pty
    import re
    import subprocess
    import sys

    from tests.test_cli import TINY

    root = pathlib.Path(__file__).resolve().parent.parent
    (tmp_path / "net.prototxt").write_text(TINY % 3)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "%s"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1500\ndisplay: 500\n'
                      'snapshot_after_train: false\n' % (tmp_path / "net.prototxt"))
    controller, terminal = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "pycaffe_norm", "train", "--solver", str(solver)],
                            stderr=terminal, stdout=subprocess.DEVNULL, env=env)
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0
    os.close(controller)
    text = out.decode(errors="replace")
    # drawn at least every 0.2 s, and always at the last iteration
    assert re.search(r"\r\x1b\[KIteration 1500/1500  \S+ iter/s  ETA 0m00s", text), text[-2000:]
    assert "Optimization Done." in text
    assert "\r\x1b[KI" in text  # a log line replaced the progress line
