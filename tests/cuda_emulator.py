"""Runs pcn's CUDA kernels on the CPU: each source of ``cuda_kernels.SOURCES`` is compiled by the host C++ compiler
with CUDA's built-ins defined for one thread per block, and launched block by block through ctypes.

With one thread per block, every grid-stride loop (``KERNEL_LOOP``) visits each of its indices exactly once, and
the block reductions (``chan_dot``, ``row_dot``) reduce in their single thread, so each kernel computes what it
computes on a GPU, in sequence. What the emulation cannot show is a race between threads; the kernels are written
so that no thread reads what another writes in the same launch (see cuda_kernels.py). ``EmulatedModule`` stands in
for ``cupy.RawModule`` on tests/fake_cupy.py's device.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from pycaffe_norm.layers import cuda_kernels as ck

COMPILER = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")

_HOST_PRELUDE = r"""
#include <cmath>
#include <algorithm>
using std::min; using std::max; using std::sqrt; using std::pow; using std::log; using std::fabs; using std::nan;
struct pcn_dim3 { unsigned x, y, z; };
static pcn_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __shared__ static
#define __syncthreads()
extern "C" void pcn_set_block(unsigned block, unsigned grid) { blockIdx.x = block; gridDim.x = grid; }
"""

_CTYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float, "double": ctypes.c_double}
_libs: dict = {}


def _build(group: str, dtype: str) -> ctypes.CDLL:
    key = (group, dtype)
    if key in _libs:
        return _libs[key]
    source = _HOST_PRELUDE + ck.source(group, dtype)
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "pcn_cuda_emulator")
    os.makedirs(folder, exist_ok=True)
    lib = os.path.join(folder, "%s_%s_%s.so" % (group, dtype, digest))
    if not os.path.exists(lib):
        src = lib[:-3] + ".cpp"
        with open(src, "w") as f:
            f.write(source)
        tmp = lib + ".%d.tmp" % os.getpid()
        subprocess.run([COMPILER, "-O1", "-shared", "-fPIC", "-w", "-o", tmp, src], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, lib)
    _libs[key] = ctypes.CDLL(lib)
    return _libs[key]


class EmulatedModule:
    """cupy.RawModule on the CPU: ``get_function(name)((grid,), (block,), args)`` runs the kernel block by block."""

    launched: set = set()

    def __init__(self, code: str, options=()) -> None:
        self.dtype = "float64" if "typedef double T;" in code else "float32"
        self.group = next(g for g in ck.SOURCES if ck.SOURCES[g] in code)
        self.lib = _build(self.group, self.dtype)

    def get_function(self, name: str):
        fn = getattr(self.lib, name)
        fn.restype = None
        set_block = self.lib.pcn_set_block

        def launch(grid, block, args):
            from tests.fake_cupy import DeviceArray

            cargs = []
            for a in args:
                if isinstance(a, DeviceArray):
                    assert a.flags.c_contiguous, name
                    cargs.append(ctypes.c_void_p(a._a.ctypes.data))
                else:
                    cargs.append({np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float32: ctypes.c_float,
                                  np.float64: ctypes.c_double}[type(a)](a))
            for b in range(grid[0]):
                set_block(ctypes.c_uint(b), ctypes.c_uint(grid[0]))
                fn(*cargs)
            EmulatedModule.launched.add(name)

        return launch
