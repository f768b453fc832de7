"""Training logs of pcn or Caffe, as tables and charts: ``pcn parse-log`` (the CSV files of Caffe's
tools/extra/parse_log.py) and ``pcn plot`` (loss, accuracy and learning rate against iterations or seconds, the
charts of Caffe's plot_training_log.py, several logs in one figure).

A log is read as Caffe's parse_log reads it: glog's ``MMDD hh:mm:ss.micro`` time on each line, seconds counted from
the ``Solving`` line, the iteration from the latest ``Iteration N``, rows from ``Train net output #k: name = v``
and ``Test net output #k: name = v`` lines, and the learning rate from the latest ``lr = x`` line (so a row
carries the rate printed before it; the first row takes the second row's rate, as parse_log fixes it).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import re
from typing import Dict, List, Sequence, Tuple

from .errors import PcnError
from .prototxt import atomic_write

Row = Dict[str, float]

_ITERATION = re.compile(r"Iteration (\d+)")
_OUTPUT = {kind: re.compile(r"%s net output #\d+: (\S+) = ([.\deE+-]+)" % kind.capitalize())
           for kind in ("train", "test")}
_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
_GLOG_TIME = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)")
FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")


def _line_time(line: str, year: int):
    m = _GLOG_TIME.match(line)
    if not m:
        return None
    month, day, hour, minute, second, micro = (int(g) for g in m.groups())
    try:
        return datetime.datetime(year, month, day, hour, minute, second, int(str(micro)[:6].ljust(6, "0")))
    except ValueError:
        return None


def parse_log(path: str) -> Tuple[List[Row], List[Row]]:
    """The (train rows, test rows) of a training log; each row is NumIters, Seconds, LearningRate and the net's
    outputs at that iteration."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        year = datetime.datetime.fromtimestamp(os.path.getmtime(path)).year
    except OSError as e:
        raise PcnError("cannot read the log %s: %s" % (path, e.strerror or e)) from None
    # glog lines carry no year: take the file's, and count a month that goes backwards as a new year.
    start = None
    for line in lines:
        if "Solving" in line:
            start = _line_time(line, year)
            if start is not None:
                break
    if start is None:
        raise PcnError("%s: no 'Solving' line with a glog time stamp: not a pcn or Caffe training log" % path)
    rows: Dict[str, List[Row]] = {"train": [], "test": []}
    iteration = None
    learning_rate = math.nan
    last = start
    for line in lines:
        m = _ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration is None:
            continue
        when = _line_time(line, year)
        if when is None:  # a line without glog's prefix (a resumed solver's output, a traceback)
            continue
        if when.month < last.month:
            year += 1
            when = _line_time(line, year)
        last = when
        m = _LEARNING_RATE.search(line)
        if m:
            learning_rate = float(m.group(1))
        for kind, pattern in _OUTPUT.items():
            m = pattern.search(line)
            if not m:
                continue
            table = rows[kind]
            if not table or table[-1]["NumIters"] != iteration:
                table.append({"NumIters": iteration, "Seconds": (when - start).total_seconds(),
                              "LearningRate": learning_rate})
            table[-1][m.group(1)] = float(m.group(2))
    for table in rows.values():
        if len(table) > 1:
            table[0]["LearningRate"] = table[1]["LearningRate"]
    return rows["train"], rows["test"]


def csv_text(rows: Sequence[Row], delimiter: str = ",") -> str:
    """The rows as CSV with a header: the fixed columns, then the outputs in the order they first appear."""
    columns = list(FIXED_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, delimiter=delimiter, lineterminator="\r\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def save_csv_files(log_path: str, out_dir: str, train: Sequence[Row], test: Sequence[Row],
                   delimiter: str = ",") -> List[str]:
    """Writes ``<log name>.train`` and ``<log name>.test`` into ``out_dir`` (a table without rows is not written,
    as in parse_log); returns the paths written."""
    written = []
    for suffix, rows in (("train", train), ("test", test)):
        if rows:
            path = os.path.join(out_dir, "%s.%s" % (os.path.basename(log_path), suffix))
            atomic_write(path, csv_text(rows, delimiter).encode())
            written.append(path)
    return written


# The charts: (title, table, column chosen from the table).
SERIES = {"loss": (("train loss", "train", "loss"), ("test loss", "test", "loss")),
          "accuracy": (("test accuracy", "test", "accuracy"),),
          "lr": (("learning rate", "train", "LearningRate"),)}


def _columns(rows: Sequence[Row], wanted: str) -> List[str]:
    """The columns that ``wanted`` names: itself, or else every output whose name contains it (``loss`` finds
    GoogLeNet's ``loss1/loss1``, ``loss2/loss1`` and ``loss3/loss3``)."""
    names = []
    for row in rows:
        names += [k for k in row if k not in names and (k not in FIXED_COLUMNS or k == wanted)]
    return [wanted] if wanted in names else [k for k in names if wanted in k]


def plot_logs(paths: Sequence[str], out: str, x_axis: str = "iters", charts: Sequence[str] = ("loss", "accuracy",
                                                                                               "lr")) -> None:
    """One chart per name in ``charts`` (loss: train and test loss; accuracy: test accuracy; lr: learning rate),
    one line per log, against iterations (``iters``) or seconds; written as the image ``out`` names."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PcnError("pcn plot needs matplotlib: pip install 'pycaffe_norm[plot]'") from None
    ext = os.path.splitext(out)[1].lower().lstrip(".")
    if ext not in ("png", "svg", "pdf"):
        raise PcnError("pcn plot writes .png, .svg or .pdf, not %r" % out)
    tables = [(os.path.basename(p), parse_log(p)) for p in paths]
    x_key = {"iters": "NumIters", "seconds": "Seconds"}[x_axis]
    fig = Figure(figsize=(7, 3.2 * len(charts)), dpi=100)
    drawn = 0
    for i, chart in enumerate(charts):
        ax = fig.add_subplot(len(charts), 1, i + 1)
        for title, table_name, wanted in SERIES[chart]:
            for name, (train, test) in tables:
                rows = train if table_name == "train" else test
                columns = _columns(rows, wanted)
                for column in columns:
                    points = [(r[x_key], r[column]) for r in rows if column in r and not math.isnan(r[column])]
                    if not points:
                        continue
                    xs, ys = zip(*points)
                    label = title if len(columns) == 1 else "%s %s" % (title.split()[0], column)
                    label = label if len(tables) == 1 else "%s (%s)" % (label, name)
                    ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=label)
                    drawn += 1
        ax.set_ylabel(chart)
        ax.set_xlabel("iterations" if x_axis == "iters" else "seconds")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if not drawn:
        raise PcnError("nothing to plot: the logs have no %s values" % " / ".join(charts))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=ext)
    atomic_write(out, buffer.getvalue())


def cmd_parse_log(args: argparse.Namespace) -> int:
    train, test = parse_log(args.log)
    if not os.path.isdir(args.out_dir):
        raise PcnError("output folder not found: %s" % args.out_dir)
    for path in save_csv_files(args.log, args.out_dir, train, test, args.delimiter):
        print("Wrote %s" % path)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    charts = [c for c in args.charts.split(",") if c]
    unknown = [c for c in charts if c not in SERIES]
    if unknown or not charts:
        raise PcnError("--charts takes a comma-separated list of %s, not %r" % (", ".join(SERIES), args.charts))
    plot_logs(args.logs, args.output, args.x, charts)
    print("Wrote %s" % args.output)
    return 0


def register(sub) -> None:
    """Adds ``parse-log`` and ``plot`` to pcn's subcommands."""
    p = sub.add_parser("parse-log", help="a training log as CSV tables LOG.train and LOG.test (Caffe's parse_log.py)")
    p.add_argument("log", help="a pcn or Caffe training log (glog lines)")
    p.add_argument("out_dir", help="the folder for the CSV files")
    p.add_argument("--delimiter", default=",", help="column delimiter (default: '%(default)s')")
    p.set_defaults(func=cmd_parse_log)

    p = sub.add_parser("plot", help="chart loss, accuracy and learning rate of training logs (needs matplotlib)")
    p.add_argument("logs", nargs="+", metavar="LOG", help="pcn or Caffe training logs")
    p.add_argument("-o", "--output", required=True, help="the image to write: .png, .svg or .pdf")
    p.add_argument("--x", choices=("iters", "seconds"), default="iters",
                   help="the horizontal axis (default: %(default)s)")
    p.add_argument("--charts", default="loss,accuracy,lr",
                   help="comma-separated charts among loss, accuracy, lr (default: %(default)s)")
    p.set_defaults(func=cmd_plot)
