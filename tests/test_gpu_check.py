"""benchmarks/gpu_check.py, the GPU acceptance run, checked on the CPU: its dry run compares the CPU with the
fake device, and without a device it refuses to run in one line."""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

from pycaffe_norm import backend

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_reference_section(tmp_path, capsys):
    gpu_check = load()
    out = tmp_path / "report.json"
    assert gpu_check.main(["--dry-run", "--sections", "reference", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = {row["case"] for row in report["reference"]}
    assert names == set(gpu_check.DRY_RUN_CASES)
    for row in report["reference"]:
        assert row["cpu_vs_caffe"] == [] and row["fake_device_vs_caffe"] == [] and row["fake_device_vs_cpu"] == []
        if gpu_check.cuda_emulator.COMPILER:
            assert row["emulated_kernels_vs_caffe"] == [] and row["emulated_kernels_vs_cpu"] == []
    assert backend.mode() == "cpu" and "all checks passed" in capsys.readouterr().out


def test_compare_reports_a_mismatch():
    import numpy as np

    gpu_check = load()
    meta = {"tolerance": {}}
    assert gpu_check.compare({"out/y": np.ones(3)}, {"out/y": np.ones(3)}, meta, True) == []
    assert gpu_check.compare({"out/y": np.ones(3) * 1.01}, {"out/y": np.ones(3)}, meta, True)
    assert gpu_check.compare({}, {"out/y": np.ones(3)}, meta, False) == ["out/y: missing"]


@pytest.mark.skipif(backend.cupy_available(), reason="a GPU is present")
def test_refuses_to_run_without_a_device(capsys):
    assert load().main(["--sections", "reference"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_unknown_section():
    with pytest.raises(SystemExit):
        load().main(["--sections", "nope"])
