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


# --- the launch glue, checked on the CPU: every launch's arguments against its kernel's C signature -----------------
_PARAM = re.compile(r"(const\s+)?(T|int|long long)\s*(\*)?\s*(\w+)$")


def _signatures(dtype: str) -> dict:
    """name -> [(is_pointer, is_const, C type with T resolved)] of every kernel."""
    t = {"float32": "float", "float64": "double"}[dtype]
    out = {}
    for src in ck.SOURCES.values():
        for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', src):
            sig = []
            for p in " ".join(params.split()).split(","):
                m = _PARAM.match(p.strip())
                assert m, (name, p)
                sig.append((bool(m.group(3)), bool(m.group(1)), t if m.group(2) == "T" else m.group(2)))
            out[name] = sig
    return out


_SCALAR_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64}


class _CheckingModule:
    """Stands in for cupy.RawModule: each launch checks its arguments against the C signature, then zeroes the
    arrays the kernel may write (so the net goes on with finite numbers), and is recorded."""

    launched: set = set()

    def __init__(self, code: str, options=()) -> None:
        self.dtype = "float64" if "typedef double T;" in code else "float32"
        self.sigs = _signatures(self.dtype)

    def get_function(self, name: str):
        from tests.fake_cupy import DeviceArray

        sig = self.sigs[name]

        def launch(grid, block, args):
            assert all(isinstance(v, int) and v > 0 for v in grid + block), (name, grid, block)
            assert len(args) == len(sig), "%s: %d arguments, the kernel takes %d" % (name, len(args), len(sig))
            for i, (arg, (pointer, const, ctype)) in enumerate(zip(args, sig)):
                if pointer:
                    assert isinstance(arg, DeviceArray), (name, i, type(arg))
                    want = {"int": np.int32, "float": np.float32, "double": np.float64}[ctype]
                    assert arg.dtype == want, "%s argument %d: %s array for %s*" % (name, i, arg.dtype, ctype)
                    assert arg.flags.c_contiguous, "%s argument %d is not contiguous" % (name, i)
                else:
                    assert type(arg) is _SCALAR_TYPES[ctype], "%s argument %d: %s for %s" % (name, i, type(arg),
                                                                                              ctype)
            for arg, (pointer, const, _) in zip(args, sig):
                if pointer and not const:
                    arg._a[...] = 0
            _CheckingModule.launched.add(name)

        return launch


@pytest.fixture
def checking_device(monkeypatch):
    from pycaffe_norm import random as pcn_random
    from tests import fake_cupy

    fake = fake_cupy.module()
    fake.RawModule = _CheckingModule
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(ck, "_cache", {})
    import pycaffe_norm as caffe

    caffe.set_device(0)
    caffe.set_mode_gpu()
    pcn_random.set_random_seed(3)
    assert ck.enabled(fake)
    yield fake
    caffe.set_mode_cpu()


def test_every_kernel_launch_matches_its_signature(checking_device, tmp_path):
    """The reference cases' nets and solvers run in GPU mode on the checking device: every kernel is launched with
    arguments of its C signature (count, array dtypes, contiguity, scalar widths)."""
    import pycaffe_norm as caffe
    from tests.reference_check import load
    from tests.test_reference import CASES, items, kind

    _CheckingModule.launched = set()
    for d in CASES:
        meta, A = load(d)
        if kind(d) == "solver":
            sp = tmp_path / "solver.prototxt"
            sp.write_text('net: "%s"\nsnapshot_prefix: "%s"\n' % (d / "net.prototxt", tmp_path / "snap")
                          + (d / "solver.prototxt").read_text())
            solver = caffe.get_solver(str(sp))
            solver.allow_nan = True
            for b in meta["inputs"]:
                solver.net.blobs[b].data[...] = A["in/%s/0" % b]
            solver.step(2)
            continue
        net = caffe.Net(str(d / "net.prototxt"), getattr(caffe, meta["phase"]))
        for k, layer, i in items(A, "param/"):
            net.params[layer][i].data[...] = A[k]
        for b in meta["inputs"]:
            net.blobs[b].data[...] = A["in/" + b]
        net.forward()
        if meta["backward"]:
            net.backward()
    drop = tmp_path / "dropout.prototxt"     # no reference case runs Dropout in TRAIN
    drop.write_text('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    'layer { name: "d" type: "Dropout" bottom: "x" top: "y" }\nforce_backward: true\n')
    net = caffe.Net(str(drop), caffe.TRAIN)
    net.forward()
    net.backward()
    never = {n for names in ck.KERNEL_NAMES.values() for n in names} - _CheckingModule.launched
    assert not never, "kernels no case launched: %s" % sorted(never)


# --- the kernels' arithmetic, on the CPU: the reference cases with every kernel compiled for the host ----------------
@pytest.fixture
def emulated_device(monkeypatch):
    from tests import cuda_emulator, fake_cupy

    if cuda_emulator.COMPILER is None:
        pytest.skip("needs a C++ compiler (g++, c++ or clang++) to run the kernels on the CPU")
    fake = fake_cupy.module()
    fake.RawModule = cuda_emulator.EmulatedModule
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(ck, "_cache", {})
    import pycaffe_norm as caffe

    caffe.set_device(0)
    caffe.set_mode_gpu()
    caffe.set_random_seed(1701)
    assert ck.enabled(fake)
    yield cuda_emulator.EmulatedModule
    caffe.set_mode_cpu()


def _cases(solver: bool):
    from tests.test_reference import CASES, kind

    return [d for d in CASES if (kind(d) == "solver") == solver]


@pytest.mark.parametrize("d", _cases(False), ids=lambda d: d.name)
def test_reference_case_with_emulated_kernels(d, emulated_device):
    from tests.test_fake_device import run_reference_case

    run_reference_case(d)


@pytest.mark.parametrize("d", _cases(True), ids=lambda d: d.name)
def test_solver_case_with_emulated_kernels(d, emulated_device, tmp_path):
    from tests.test_fake_device import run_solver_case

    run_solver_case(d, tmp_path)


def test_dropout_kernel_emulated(emulated_device):
    import pycaffe_norm as caffe
    from pycaffe_norm.blob import Blob
    from pycaffe_norm.layers.neuron import DropoutLayer
    from pycaffe_norm.proto import caffe_pb2

    lp = caffe_pb2.LayerParameter(name="drop", type="Dropout")
    lp.dropout_param.dropout_ratio = 0.25
    layer = DropoutLayer(lp, caffe.TRAIN)
    x, y = Blob((64, 1000)), Blob((64, 1000))
    x.data[...] = np.float32(2)
    layer.initialize([x], [y])
    layer.forward([x], [y])
    out = backend.to_numpy(y.data)
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out[kept], 2 / 0.75, rtol=1e-6)
    y.diff[...] = np.float32(1)
    layer.backward([y], [True], [x])
    np.testing.assert_allclose(backend.to_numpy(x.diff), out / 2, rtol=1e-6)
    assert "dropout_forward" in emulated_device.launched
