"""The CUDA kernels of pycaffe_norm/layers/cuda_kernels.py: every source compiles to PTX for a fixed architecture
with NVRTC, without a GPU or a driver (CI installs cupy-cuda12x and nvidia-cuda-nvrtc-cu12; elsewhere those tests
skip), and the module's bookkeeping holds on any machine. Running them is benchmarks/gpu_check.py's job."""
from __future__ import annotations

import re

import numpy as np
import pytest

from pycaffe_norm import backend
from pycaffe_norm.layers import cuda_kernels as ck

ARCH = "compute_90"  # Hopper; PTX for it compiles on NVRTC 12.x without a device
DTYPES = ("float32", "float64")


def nvrtc():
    """CuPy's NVRTC binding with a loadable libnvrtc (cupy-cuda12x's CuPy 14 compile_using_nvrtc asks the driver
    for its version, so the program is built with the binding directly)."""
    lib = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="needs cupy-cuda12x (the gpu extra)")
    try:
        lib.getVersion()
    except Exception as e:  # noqa: BLE001 - no libnvrtc: nvidia-cuda-nvrtc-cu12 not installed
        pytest.skip("NVRTC library not loadable (pip install nvidia-cuda-nvrtc-cu12): %s" % e)
    return lib


def compile_ptx(group: str, dtype: str) -> str:
    lib = nvrtc()
    prog = lib.createProgram(ck.source(group, dtype), group + ".cu", [], [])
    try:
        lib.compileProgram(prog, ["-arch=" + ARCH, "--std=c++14"])
    except Exception as e:  # noqa: BLE001 - NVRTCError: the log names the line
        pytest.fail("%s (%s) does not compile: %s\n%s" % (group, dtype, e, lib.getProgramLog(prog)))
    log = lib.getProgramLog(prog).strip()
    assert not log, "%s (%s) compiles with warnings:\n%s" % (group, dtype, log)
    return lib.getPTX(prog).decode()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", sorted(ck.SOURCES))
def test_kernels_compile_to_ptx_without_a_device(group, dtype):
    ptx = compile_ptx(group, dtype)
    for name in ck.KERNEL_NAMES[group]:
        assert ".entry %s(" % name in ptx, "%s: no kernel %s in the PTX" % (group, name)
    if dtype == "float32":  # no silent promotion to double (a double literal or function in float code)
        assert ".f64" not in ptx, "%s: float32 kernels compute in double" % group


def test_kernel_names_match_the_sources():
    for group, src in ck.SOURCES.items():
        declared = set(re.findall(r'extern "C" __global__ void (\w+)\(', src))
        assert declared == set(ck.KERNEL_NAMES[group]), group
    module_text = open(ck.__file__).read()
    glue = module_text.split("KERNEL_NAMES: Dict", 1)[1]
    for group, names in ck.KERNEL_NAMES.items():
        for name in names:
            launched = '"%s"' % name in glue or ("_update" in name and '"_update"' in glue)
            assert launched, "kernel %s of %s is never launched" % (name, group)


def test_sources_are_per_dtype():
    assert "typedef float T;" in ck.source("pool", np.float32)
    assert "typedef double T;" in ck.source("pool", "float64")
    with pytest.raises(KeyError):
        ck.source("pool", np.float16)


def test_kernels_are_off_without_cupy():
    assert not ck.enabled(np)
    if backend.cupy_module() is not None:
        old = ck.USE_KERNELS
        ck.USE_KERNELS = False
        try:
            assert not ck.enabled(backend.cupy_module())
        finally:
            ck.USE_KERNELS = old
