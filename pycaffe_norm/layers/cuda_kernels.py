"""CUDA kernels of the GPU backend: the CuPy twins of the hot layers' generic array code.

Every kernel is CUDA C kept here as a source string (``SOURCES``), written once for a float type ``T`` and compiled
by CuPy's NVRTC for float32 or float64 the first time it runs (``_function``), then cached per (group, dtype). The
layers select them with one small branch, ``if cuda_kernels.enabled(xp): ...``, next to their generic NumPy/CuPy
code; everything else (the GEMMs of convolution and inner product, element-wise arithmetic) stays CuPy's own.

The kernels follow BVLC Caffe's ``.cu`` files (im2col, pooling, LRN, softmax loss, the solvers' updates), so the
GPU numbers agree with the CPU path within float32 rounding; ``benchmarks/gpu_check.py`` checks that on a device,
and ``tests/test_cuda_kernels.py`` compiles every source to PTX without one.
"""
from __future__ import annotations

import threading
from typing import Dict, Tuple

import numpy as np

from .. import backend

# Tests and benchmarks set this to False to run the generic CuPy code on a GPU (the kernels' CPU twin).
USE_KERNELS = True
# Threads per block of the element-wise kernels, and the most blocks one launch asks for (grid-stride loops).
THREADS = 256
MAX_BLOCKS = 65535
# Column buffers of the convolution larger than this many elements are built for a chunk of the batch at a time.
MAX_COL_ELEMENTS = 1 << 26

_PRELUDE = """
typedef %(T)s T;
#define T_LOWEST (%(lowest)s)
#define T_TINY (%(tiny)s)
#define KERNEL_LOOP(i, n) \\
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \\
       i += (long long)blockDim.x * gridDim.x)
"""

_TYPES = {
    "float32": {"T": "float", "lowest": "-3.402823466e+38f", "tiny": "1.175494351e-38f"},
    # Caffe clips probabilities at FLT_MIN whatever the blob type: T_TINY stays float's
    "float64": {"T": "double", "lowest": "-1.7976931348623157e+308", "tiny": "1.175494351e-38"},
}

SOURCES: Dict[str, str] = {}

# --- im2col / col2im: columns (C, KH, KW, N, OH, OW), the layout of im2col.py's batch-first path ----------------
SOURCES["im2col"] = r"""
extern "C" __global__ void im2col(const T* x, T* col, long long total, int N, int C, int H, int W,
    int KH, int KW, int PH, int PW, int SH, int SW, int DH, int DW, int OH, int OW) {
  KERNEL_LOOP(i, total) {
    long long r = i;
    int ow = r % OW; r /= OW;
    int oh = r % OH; r /= OH;
    int n = r % N; r /= N;
    int kw = r % KW; r /= KW;
    int kh = r % KH;
    int c = r / KH;
    int h = oh * SH - PH + kh * DH;
    int w = ow * SW - PW + kw * DW;
    col[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(((long long)n * C + c) * H + h) * W + w] : (T)0;
  }
}

extern "C" __global__ void col2im(const T* col, T* x, long long total, int N, int C, int H, int W,
    int KH, int KW, int PH, int PW, int SH, int SW, int DH, int DW, int OH, int OW) {
  // one thread per input element gathers every column entry that reads it: no atomics, as Caffe's col2im
  KERNEL_LOOP(i, total) {
    long long r = i;
    int w = r % W; r /= W;
    int h = r % H; r /= H;
    int c = r % C;
    int n = r / C;
    T sum = 0;
    for (int kh = 0; kh < KH; ++kh) {
      int hs = h + PH - kh * DH;
      if (hs < 0 || hs % SH) continue;
      int oh = hs / SH;
      if (oh >= OH) continue;
      for (int kw = 0; kw < KW; ++kw) {
        int ws = w + PW - kw * DW;
        if (ws < 0 || ws % SW) continue;
        int ow = ws / SW;
        if (ow >= OW) continue;
        sum += col[(((((long long)c * KH + kh) * KW + kw) * N + n) * OH + oh) * OW + ow];
      }
    }
    x[i] = sum;
  }
}
"""

# --- pooling: Caffe's MaxPoolForward/Backward (argmax mask = h * W + w) and AvePoolForward/Backward -------------
SOURCES["pool"] = r"""
extern "C" __global__ void maxpool_argmax(const T* x, T* y, int* mask, long long total, int C, int H, int W,
    int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  KERNEL_LOOP(i, total) {
    int pw = i % OW;
    int ph = (i / OW) % OH;
    long long nc = i / ((long long)OW * OH);
    int hstart = ph * SH - PH, wstart = pw * SW - PW;
    int hend = min(hstart + KH, H), wend = min(wstart + KW, W);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    const T* xs = x + nc * H * W;
    T best = T_LOWEST;
    int arg = -1;
    for (int h = hstart; h < hend; ++h)
      for (int w = wstart; w < wend; ++w)
        if (xs[h * W + w] > best || arg < 0) {  // strict: the first maximum in scan order wins, as in Caffe
          arg = h * W + w;
          best = xs[arg];
        }
    y[i] = best;
    mask[i] = arg;
  }
}

extern "C" __global__ void maxpool_backward(const T* dy, const int* mask, T* dx, long long total, int C, int H,
    int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  KERNEL_LOOP(i, total) {
    int w = i % W;
    int h = (i / W) % H;
    long long nc = i / ((long long)W * H);
    int phstart = (h + PH < KH) ? 0 : (h + PH - KH) / SH + 1;
    int phend = min((h + PH) / SH + 1, OH);
    int pwstart = (w + PW < KW) ? 0 : (w + PW - KW) / SW + 1;
    int pwend = min((w + PW) / SW + 1, OW);
    const T* d = dy + nc * OH * OW;
    const int* m = mask + nc * OH * OW;
    T g = 0;
    for (int ph = phstart; ph < phend; ++ph)
      for (int pw = pwstart; pw < pwend; ++pw)
        if (m[ph * OW + pw] == h * W + w) g += d[ph * OW + pw];
    dx[i] = g;
  }
}

extern "C" __global__ void avepool_forward(const T* x, T* y, long long total, int C, int H, int W, int OH, int OW,
    int KH, int KW, int SH, int SW, int PH, int PW) {
  KERNEL_LOOP(i, total) {
    int pw = i % OW;
    int ph = (i / OW) % OH;
    long long nc = i / ((long long)OW * OH);
    int hstart = ph * SH - PH, wstart = pw * SW - PW;
    int hend = min(hstart + KH, H + PH), wend = min(wstart + KW, W + PW);
    int area = max((hend - hstart) * (wend - wstart), 1);  // the padding counts, as in Caffe
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    hend = min(hend, H);
    wend = min(wend, W);
    const T* xs = x + nc * H * W;
    T s = 0;
    for (int h = hstart; h < hend; ++h)
      for (int w = wstart; w < wend; ++w) s += xs[h * W + w];
    y[i] = s / area;
  }
}

extern "C" __global__ void avepool_backward(const T* dy, T* dx, long long total, int C, int H, int W, int OH,
    int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  KERNEL_LOOP(i, total) {
    int w = i % W + PW;
    int h = (i / W) % H + PH;
    long long nc = i / ((long long)W * H);
    int phstart = (h < KH) ? 0 : (h - KH) / SH + 1;
    int phend = min(h / SH + 1, OH);
    int pwstart = (w < KW) ? 0 : (w - KW) / SW + 1;
    int pwend = min(w / SW + 1, OW);
    const T* d = dy + nc * OH * OW;
    T g = 0;
    for (int ph = phstart; ph < phend; ++ph)
      for (int pw = pwstart; pw < pwend; ++pw) {
        int hstart = ph * SH - PH, wstart = pw * SW - PW;
        int hend = min(hstart + KH, H + PH), wend = min(wstart + KW, W + PW);
        g += d[ph * OW + pw] / max((hend - hstart) * (wend - wstart), 1);
      }
    dx[i] = g;
  }
}
"""

# --- LRN: window sums of x^2 (scale), y = x * scale^-beta, and Caffe's LRNComputeDiff ---------------------------
# ACROSS_CHANNELS: x viewed as (N, C, S), the window runs over C; WITHIN_CHANNEL: (N*C, H, W), a size x size
# square. Each window is summed directly (no running sum: no cancellation). pow(scale, -beta) as in Caffe.
SOURCES["lrn"] = r"""
extern "C" __global__ void lrn_scale_across(const T* x, T* scale, long long total, int C, int S, int size,
    T alpha_over_n, T k) {
  KERNEL_LOOP(i, total) {
    int s = i % S;
    int c = (i / S) % C;
    long long n = i / ((long long)S * C);
    int pre = (size - 1) / 2;
    int c0 = max(c - pre, 0), c1 = min(c + size - pre, C);
    const T* xs = x + n * C * S + s;
    T acc = 0;
    for (int j = c0; j < c1; ++j) acc += xs[(long long)j * S] * xs[(long long)j * S];
    scale[i] = k + acc * alpha_over_n;
  }
}

extern "C" __global__ void lrn_scale_within(const T* x, T* scale, long long total, int H, int W, int size,
    T alpha_over_n, T k) {
  KERNEL_LOOP(i, total) {
    int w = i % W;
    int h = (i / W) % H;
    long long nc = i / ((long long)W * H);
    int pre = (size - 1) / 2;
    int h0 = max(h - pre, 0), h1 = min(h + size - pre, H);
    int w0 = max(w - pre, 0), w1 = min(w + size - pre, W);
    const T* xs = x + nc * H * W;
    T acc = 0;
    for (int a = h0; a < h1; ++a)
      for (int b = w0; b < w1; ++b) acc += xs[a * W + b] * xs[a * W + b];
    scale[i] = k + acc * alpha_over_n;
  }
}

extern "C" __global__ void lrn_output(const T* x, const T* scale, T* y, long long total, T neg_beta) {
  KERNEL_LOOP(i, total) y[i] = x[i] * pow(scale[i], neg_beta);
}

extern "C" __global__ void lrn_backward_across(const T* x, const T* y, const T* scale, const T* dy, T* dx,
    long long total, int C, int S, int size, T neg_beta, T cache_ratio) {
  KERNEL_LOOP(i, total) {
    int s = i % S;
    int c = (i / S) % C;
    long long base = (i / ((long long)S * C)) * C * S + s;
    int pre = (size - 1) / 2;
    int c0 = max(c - pre, 0), c1 = min(c + size - pre, C);
    T acc = 0;
    for (int j = c0; j < c1; ++j) {
      long long o = base + (long long)j * S;
      acc += dy[o] * y[o] / scale[o];
    }
    dx[i] = dy[i] * pow(scale[i], neg_beta) - cache_ratio * x[i] * acc;
  }
}

extern "C" __global__ void lrn_backward_within(const T* x, const T* y, const T* scale, const T* dy, T* dx,
    long long total, int H, int W, int size, T neg_beta, T cache_ratio) {
  KERNEL_LOOP(i, total) {
    int w = i % W;
    int h = (i / W) % H;
    long long base = (i / ((long long)W * H)) * H * W;
    int pre = (size - 1) / 2;
    int h0 = max(h - pre, 0), h1 = min(h + size - pre, H);
    int w0 = max(w - pre, 0), w1 = min(w + size - pre, W);
    T acc = 0;
    for (int a = h0; a < h1; ++a)
      for (int b = w0; b < w1; ++b) {
        long long o = base + a * W + b;
        acc += dy[o] * y[o] / scale[o];
      }
    dx[i] = dy[i] * pow(scale[i], neg_beta) - cache_ratio * x[i] * acc;
  }
}
"""

# --- per-channel sums of BatchNorm: sum over N and S of a (or a * b) for (N, C, S) arrays, one block a channel ---
SOURCES["bn"] = r"""
extern "C" __global__ void chan_dot(const T* a, const T* b, T* out, int N, int C, int S, int use_b) {
  __shared__ T part[256];
  int c = blockIdx.x;
  long long m = (long long)N * S;
  T acc = 0;
  for (long long j = threadIdx.x; j < m; j += blockDim.x) {
    long long o = ((j / S) * C + c) * S + j % S;
    acc += use_b ? a[o] * b[o] : a[o];
  }
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[c] = part[0];
}

extern "C" __global__ void row_dot(const T* a, const T* b, T* out, long long D, int mode) {
  // per row of a (R, D) array: mode 0 sum(a*b), 1 sum(|a|); one block a row
  __shared__ T part[256];
  const T* ar = a + blockIdx.x * D;
  const T* br = b + blockIdx.x * D;
  T acc = 0;
  for (long long j = threadIdx.x; j < D; j += blockDim.x) acc += mode ? fabs(ar[j]) : ar[j] * br[j];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int step = blockDim.x / 2; step > 0; step >>= 1) {
    if (threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}
"""

# --- L2 normalisation across channels at each (n, s): GRN and Normalize (across_spatial: false) -----------------
SOURCES["l2norm"] = r"""
extern "C" __global__ void l2norm_channels(const T* x, T* y, T* norm, const T* scale, long long total, int C,
    int S, T eps, int safe, int scale_mode) {
  // norm = sqrt(sum_c x^2 + eps); y = x / norm * scale (scale_mode 0: none, 1: one scalar, 2: per channel);
  // safe: an all-zero column gives 0 (GRN); norm keeps 1/norm when safe, norm otherwise (what backward divides by)
  KERNEL_LOOP(i, total) {
    int s = i % S;
    long long base = (i / S) * C * S + s;
    T acc = 0;
    for (int c = 0; c < C; ++c) acc += x[base + (long long)c * S] * x[base + (long long)c * S];
    T nrm = sqrt(acc + eps);
    T inv = (safe && nrm == 0) ? (T)0 : (T)1 / nrm;
    norm[i] = safe ? inv : nrm;
    for (int c = 0; c < C; ++c) {
      T f = scale_mode == 0 ? (T)1 : scale[scale_mode == 1 ? 0 : c];
      y[base + (long long)c * S] = safe ? x[base + (long long)c * S] * inv * f : x[base + (long long)c * S] / nrm * f;
    }
  }
}

extern "C" __global__ void l2norm_channels_backward(const T* dy, const T* yhat, const T* norm, const T* scale,
    T* dx, long long total, int C, int S, int safe, int scale_mode) {
  // g = dy * scale; dx = (g - yhat * sum_c(g * yhat)) / norm   (safe: * inv)
  KERNEL_LOOP(i, total) {
    int s = i % S;
    long long base = (i / S) * C * S + s;
    T dot = 0;
    for (int c = 0; c < C; ++c) {
      long long o = base + (long long)c * S;
      T f = scale_mode == 0 ? (T)1 : scale[scale_mode == 1 ? 0 : c];
      dot += dy[o] * f * yhat[o];
    }
    for (int c = 0; c < C; ++c) {
      long long o = base + (long long)c * S;
      T f = scale_mode == 0 ? (T)1 : scale[scale_mode == 1 ? 0 : c];
      T g = dy[o] * f - yhat[o] * dot;
      dx[o] = safe ? g * norm[i] : g / norm[i];
    }
  }
}
"""

# --- SoftmaxWithLoss: Caffe's SoftmaxLossForwardGPU and SoftmaxLossBackwardGPU ----------------------------------
SOURCES["softmax_loss"] = r"""
extern "C" __global__ void softmax_loss_forward(const T* prob, const T* label, T* loss, T* valid, long long total,
    int C, int inner, int has_ignore, int ignore_label) {
  // an out-of-range label gives a NaN loss (pcn train stops at it, naming the layer), with no host round trip
  KERNEL_LOOP(i, total) {
    int lab = (int)label[i];
    long long o = i / inner, s = i % inner;
    if (has_ignore && lab == ignore_label) {
      loss[i] = 0;
      valid[i] = 0;
    } else if (lab < 0 || lab >= C) {
      loss[i] = (T)nan("");
      valid[i] = 1;
    } else {
      loss[i] = -log(max(prob[(o * C + lab) * inner + s], (T)T_TINY));
      valid[i] = 1;
    }
  }
}

extern "C" __global__ void softmax_loss_backward(const T* prob, const T* label, const T* factor, T* dx,
    long long total, int C, int inner, int has_ignore, int ignore_label) {
  // dx = (prob - onehot(label)) * factor[0], zero for ignored positions; factor = loss weight / normaliser
  KERNEL_LOOP(i, total) {
    long long s = i % inner;
    int c = (i / inner) % C;
    long long o = i / ((long long)inner * C);
    int lab = (int)label[o * inner + s];
    T v = prob[i] - (c == lab ? (T)1 : (T)0);
    dx[i] = (has_ignore && lab == ignore_label) ? (T)0 : v * factor[0];
  }
}
"""

# --- Dropout: the mask from uniforms drawn on the device -------------------------------------------------------
SOURCES["dropout"] = r"""
extern "C" __global__ void dropout_forward(const T* x, const T* u, T* y, T* mask, long long total, T ratio,
    T scale) {
  KERNEL_LOOP(i, total) {
    T m = u[i] >= ratio ? scale : (T)0;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}
"""

# --- the solvers: one fused update per type (history and diff in place, as Caffe's *_update_gpu) --------------
SOURCES["solver"] = r"""
extern "C" __global__ void sgd_update(T* g, T* h, long long n, T momentum, T rate) {
  KERNEL_LOOP(i, n) g[i] = h[i] = momentum * h[i] + rate * g[i];
}

extern "C" __global__ void nesterov_update(T* g, T* h, long long n, T momentum, T rate) {
  KERNEL_LOOP(i, n) {
    T previous = h[i];
    T hi = h[i] = momentum * h[i] + rate * g[i];
    g[i] = (1 + momentum) * hi - momentum * previous;
  }
}

extern "C" __global__ void adagrad_update(T* g, T* h, long long n, T delta, T rate) {
  KERNEL_LOOP(i, n) {
    T gi = g[i];
    T hi = h[i] = h[i] + gi * gi;
    g[i] = rate * gi / (sqrt(hi) + delta);
  }
}

extern "C" __global__ void rmsprop_update(T* g, T* h, long long n, T decay, T delta, T rate) {
  KERNEL_LOOP(i, n) {
    T gi = g[i];
    T hi = h[i] = decay * h[i] + (1 - decay) * gi * gi;
    g[i] = rate * gi / (sqrt(hi) + delta);
  }
}

extern "C" __global__ void adadelta_update(T* g, T* g2, T* u2, long long n, T momentum, T delta, T rate) {
  KERNEL_LOOP(i, n) {
    T gi = g[i];
    T gs = g2[i] = momentum * g2[i] + (1 - momentum) * gi * gi;
    T ui = gi * sqrt((u2[i] + delta) / (gs + delta));
    u2[i] = momentum * u2[i] + (1 - momentum) * ui * ui;
    g[i] = rate * ui;
  }
}

extern "C" __global__ void adam_update(T* g, T* m, T* v, long long n, T beta1, T beta2, T delta, T rate) {
  KERNEL_LOOP(i, n) {
    T gi = g[i];
    T mi = m[i] = beta1 * m[i] + (1 - beta1) * gi;
    T vi = v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
    g[i] = rate * mi / (sqrt(vi) + delta);
  }
}
"""

# the kernel names of each source (extern "C" functions), for the cache and the compile test
KERNEL_NAMES: Dict[str, Tuple[str, ...]] = {
    "im2col": ("im2col", "col2im"),
    "pool": ("maxpool_argmax", "maxpool_backward", "avepool_forward", "avepool_backward"),
    "lrn": ("lrn_scale_across", "lrn_scale_within", "lrn_output", "lrn_backward_across", "lrn_backward_within"),
    "bn": ("chan_dot", "row_dot"),
    "l2norm": ("l2norm_channels", "l2norm_channels_backward"),
    "softmax_loss": ("softmax_loss_forward", "softmax_loss_backward"),
    "dropout": ("dropout_forward",),
    "solver": ("sgd_update", "nesterov_update", "adagrad_update", "rmsprop_update", "adadelta_update",
               "adam_update"),
}


def source(group: str, dtype) -> str:
    """The complete CUDA C of a kernel group for ``dtype`` (float32 or float64), as NVRTC compiles it."""
    return _PRELUDE % _TYPES[np.dtype(dtype).name] + SOURCES[group]


def enabled(xp) -> bool:
    """Whether ``xp`` is CuPy proper (a device is there to run kernels) and the kernels are switched on."""
    return USE_KERNELS and xp is not np and xp is backend.cupy_module() and hasattr(xp, "RawModule")


_cache: Dict[tuple, object] = {}
_lock = threading.Lock()


def _function(group: str, name: str, dtype):
    """The compiled kernel ``name`` of ``group`` for ``dtype``: compiled on first use, then cached per device."""
    cp = backend.cupy_module()
    dt = np.dtype(dtype)
    if dt.name not in _TYPES:
        raise TypeError("CUDA kernel %s: no %s version (float32 and float64 only)" % (name, dt.name))
    key = (group, dt.name, cp.cuda.Device().id)
    with _lock:
        module = _cache.get(key)
        if module is None:
            module = _cache[key] = cp.RawModule(code=source(group, dt), options=("--std=c++14",))
    return module.get_function(name)


def _launch(group: str, name: str, total: int, dtype, args) -> None:
    if total <= 0:
        return
    blocks = min((int(total) + THREADS - 1) // THREADS, MAX_BLOCKS)
    _function(group, name, dtype)((blocks,), (THREADS,), args)


def _i(v) -> np.int32:
    return np.int32(v)


def _n(v) -> np.int64:
    return np.int64(v)


# --- convolution: im2col + cuBLAS GEMM (im2col.py's batch-first column layout) -------------------------------
def conv_applies(geom, x) -> bool:
    """The kernels handle 2-D convolutions of float arrays; other geometries take the generic path."""
    return len(geom.kernel) == 2 and np.dtype(x.dtype).name in _TYPES


def _geom_args(geom, n: int, c: int):
    (h, w), (kh, kw), (ph, pw) = geom.in_shape, geom.kernel, geom.pad
    (sh, sw), (dh, dw), (oh, ow) = geom.stride, geom.dilation, geom.out_shape
    return (_i(n), _i(c), _i(h), _i(w), _i(kh), _i(kw), _i(ph), _i(pw), _i(sh), _i(sw), _i(dh), _i(dw), _i(oh),
            _i(ow))


def im2col(x, geom, ws, key: str = "col"):
    """``x`` (N, C, H, W) -> columns ``(C * KH * KW, N * OH * OW)`` in one launch."""
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    col = ws.get(key, (c * geom.kernel_count, n * geom.out_count), x.dtype, cp)
    _launch("im2col", "im2col", col.size, x.dtype, (x, col, _n(col.size)) + _geom_args(geom, n, c))
    return col


def col2im(col, dx, geom) -> None:
    """Columns ``(C * KH * KW, N * OH * OW)`` -> ``dx`` (N, C, H, W), overlaps summed, in one launch."""
    n, c = dx.shape[0], dx.shape[1]
    _launch("im2col", "col2im", dx.size, dx.dtype, (col, dx, _n(dx.size)) + _geom_args(geom, n, c))


def _chunks(n: int, per_image: int):
    step = max(1, MAX_COL_ELEMENTS // max(per_image, 1))
    for n0 in range(0, n, step):
        yield n0, min(n, n0 + step)


def conv_forward(x, w, bias, y, geom, group: int, ws) -> None:
    """As im2col.conv_forward: one im2col launch and one batched GEMM per chunk of images."""
    from . import im2col as ic
    cp = backend.cupy_module()
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    wg = w.reshape(group, m // group, -1)
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        col = im2col(x[n0:n1], geom, ws)
        rows = cp.matmul(wg, col.reshape(group, -1, col.shape[1]))
        ic.from_rows(rows.reshape(m, -1), y[n0:n1], False, bias)


def conv_weight_grad(x, dy, dw, geom, group: int, ws) -> None:
    from . import im2col as ic
    cp = backend.cupy_module()
    n, c, m = x.shape[0], x.shape[1], dw.shape[0]
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        col = im2col(x[n0:n1], geom, ws)
        rows = ic.to_rows(dy[n0:n1], False, ws, "rows").reshape(group, m // group, -1)
        dw += cp.matmul(rows, col.reshape(group, -1, col.shape[1]).transpose(0, 2, 1)).reshape(dw.shape)


def conv_data_grad(dy, w, dx, geom, group: int, ws) -> None:
    from . import im2col as ic
    cp = backend.cupy_module()
    n, c, m = dx.shape[0], dx.shape[1], w.shape[0]
    wg = w.reshape(group, m // group, -1)
    for n0, n1 in _chunks(n, c * geom.kernel_count * geom.out_count):
        rows = ic.to_rows(dy[n0:n1], False, ws, "rows").reshape(group, m // group, -1)
        dcol = cp.matmul(wg.transpose(0, 2, 1), rows)
        out = dx[n0:n1]
        if out.flags.c_contiguous:
            col2im(dcol.reshape(-1, rows.shape[2]), out, geom)
        else:
            tmp = cp.empty(out.shape, dtype=out.dtype)
            col2im(dcol.reshape(-1, rows.shape[2]), tmp, geom)
            out[...] = tmp


# --- pooling ---------------------------------------------------------------------------------------------------
def _pool_args(layer, c: int, h: int, w: int):
    (oh, ow), (kh, kw), (sh, sw), (ph, pw) = layer.out, layer.kernel, layer.stride, layer.pad
    return (_i(c), _i(h), _i(w), _i(oh), _i(ow), _i(kh), _i(kw), _i(sh), _i(sw), _i(ph), _i(pw))


def pool_forward(layer, bottom, top) -> None:
    """Pooling forward in one launch; MAX keeps the argmax (h * W + w) for backward and top[1]."""
    from .vision import _PP
    cp = backend.cupy_module()
    x, y = cp.ascontiguousarray(bottom[0].data), top[0].data
    n, c, h, w = x.shape
    args = _pool_args(layer, c, h, w)
    if layer.method == _PP.MAX:
        mask = layer._ws.get("gpu_mask", y.shape, np.int32, cp)
        _launch("pool", "maxpool_argmax", y.size, x.dtype, (x, y, mask, _n(y.size)) + args)
        layer._gpu_mask = mask
        if len(top) > 1:
            top[1].data[...] = mask
    else:
        _launch("pool", "avepool_forward", y.size, x.dtype, (x, y, _n(y.size)) + args)


def pool_backward(layer, top, bottom) -> None:
    from .vision import _PP
    cp = backend.cupy_module()
    dy, dx = cp.ascontiguousarray(top[0].diff), bottom[0].diff
    n, c, h, w = dx.shape
    args = _pool_args(layer, c, h, w)
    if layer.method == _PP.MAX:
        _launch("pool", "maxpool_backward", dx.size, dx.dtype, (dy, layer._gpu_mask, dx, _n(dx.size)) + args)
    else:
        _launch("pool", "avepool_backward", dx.size, dx.dtype, (dy, dx, _n(dx.size)) + args)


# --- LRN -------------------------------------------------------------------------------------------------------
def lrn_forward(layer, bottom, top) -> None:
    """Window sums into ``layer._scale``, then y = x * scale^-beta (two launches: the top may be the bottom)."""
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(bottom[0].data)
    dt = x.dtype.type
    shape = x.shape
    scale = cp.empty(shape, dtype=x.dtype)
    if layer.within:
        n, c, h, w = shape
        _launch("lrn", "lrn_scale_within", x.size, x.dtype,
                (x, scale, _n(x.size), _i(h), _i(w), _i(layer.size), dt(layer.alpha / (layer.size * layer.size)),
                 dt(1)))
    else:
        c, s = shape[1], x.size // (shape[0] * shape[1])
        _launch("lrn", "lrn_scale_across", x.size, x.dtype,
                (x, scale, _n(x.size), _i(c), _i(s), _i(layer.size), dt(layer.alpha / layer.size), dt(layer.k)))
    layer._scale = scale
    layer._pw = None
    layer._x_saved = x.copy() if top[0] is bottom[0] else None
    _launch("lrn", "lrn_output", x.size, x.dtype, (x, scale, top[0].data, _n(x.size), dt(-layer.beta)))


def lrn_backward(layer, top, bottom) -> None:
    cp = backend.cupy_module()
    x = layer._x_saved if layer._x_saved is not None else bottom[0].data
    dy, y = cp.ascontiguousarray(top[0].diff), top[0].data
    dt = x.dtype.type
    n_win = layer.size * layer.size if layer.within else layer.size
    ratio = dt(2.0 * layer.alpha * layer.beta / n_win)
    # in place, bottom diff is top diff: every output reads its neighbours' dy, so write aside first
    dx = cp.empty(x.shape, dtype=x.dtype) if top[0] is bottom[0] else bottom[0].diff
    if layer.within:
        h, w = x.shape[2], x.shape[3]
        _launch("lrn", "lrn_backward_within", x.size, x.dtype,
                (x, y, layer._scale, dy, dx, _n(x.size), _i(h), _i(w), _i(layer.size), dt(-layer.beta), ratio))
    else:
        c, s = x.shape[1], x.size // (x.shape[0] * x.shape[1])
        _launch("lrn", "lrn_backward_across", x.size, x.dtype,
                (x, y, layer._scale, dy, dx, _n(x.size), _i(c), _i(s), _i(layer.size), dt(-layer.beta), ratio))
    if dx is not bottom[0].diff:
        bottom[0].diff[...] = dx


# --- BatchNorm's statistics and the per-sample sums of Normalization1 -------------------------------------------
def chan_dot(a, b=None):
    """Sum over axes 0 and 2 of ``a`` (or ``a * b``) for (N, C, S) arrays -> (C,), one block per channel."""
    cp = backend.cupy_module()
    a = cp.ascontiguousarray(a)
    b = None if b is None else cp.ascontiguousarray(b)
    n, c, s = a.shape
    out = cp.empty((c,), dtype=a.dtype)
    if c:
        _function("bn", "chan_dot", a.dtype)((c,), (THREADS,), (a, a if b is None else b, out, _i(n), _i(c), _i(s),
                                                               _i(b is not None)))
    return out


def row_dot(a, b=None, absolute: bool = False):
    """Per row of a 2-D array: sum(a * b), or sum(|a|) with ``absolute``; one block per row."""
    cp = backend.cupy_module()
    a = cp.ascontiguousarray(a)
    b = None if b is None else cp.ascontiguousarray(b)
    out = cp.empty((a.shape[0],), dtype=a.dtype)
    if a.shape[0]:
        _function("bn", "row_dot", a.dtype)((a.shape[0],), (THREADS,),
                                              (a, a if b is None else b, out, _n(a.shape[1]), _i(1 if absolute else 0)))
    return out


# --- GRN and Normalize (across channels) ---------------------------------------------------------------------------
def l2norm_forward(layer, bottom, top, eps: float, safe: bool, scale=None) -> None:
    """y = x / sqrt(sum_c x^2 + eps) (* scale) at every (n, s), one launch; GRN (safe) keeps 1/norm in
    ``layer._inv``, Normalize keeps the norm in ``layer._norm`` and x / norm in ``layer._xhat``."""
    cp = backend.cupy_module()
    x = cp.ascontiguousarray(bottom[0].data)
    n, c = x.shape[0], x.shape[1] if x.ndim > 1 else 1
    s = x.size // max(n * c, 1)
    dt = x.dtype.type
    norm = cp.empty((n, 1, s), dtype=x.dtype)
    if safe:  # each thread reads its whole column before writing it: in place is safe
        _launch("l2norm", "l2norm_channels", n * s, x.dtype,
                (x, top[0].data, norm, x, _n(n * s), _i(c), _i(s), dt(eps), _i(1), _i(0)))
        layer._inv = norm
        return
    xhat = cp.empty((n, c, s), dtype=x.dtype)
    _launch("l2norm", "l2norm_channels", n * s, x.dtype,
            (x, xhat, norm, x, _n(n * s), _i(c), _i(s), dt(eps), _i(0), _i(0)))
    layer._norm, layer._xhat = norm, xhat
    cp.multiply(xhat, scale, out=top[0].data.reshape(xhat.shape))


def l2norm_backward(layer, top, bottom, safe: bool, scale=None, channel_shared: bool = False) -> None:
    """dx = (g - yhat * sum_c(g * yhat)) / norm with g = dy (* scale), one launch."""
    cp = backend.cupy_module()
    dy = cp.ascontiguousarray(top[0].diff)
    n = dy.shape[0]
    c = dy.shape[1] if dy.ndim > 1 else 1
    s = dy.size // max(n * c, 1)
    if safe:
        yhat, norm, mode, sc = cp.ascontiguousarray(top[0].data), layer._inv, 0, dy
    else:
        yhat, norm, mode, sc = layer._xhat, layer._norm, 1 if channel_shared else 2, scale
    dx = cp.empty(dy.shape, dtype=dy.dtype)
    _launch("l2norm", "l2norm_channels_backward", n * s, dy.dtype,
            (dy, yhat, norm, cp.ascontiguousarray(sc), dx, _n(n * s), _i(c), _i(s), _i(1 if safe else 0), _i(mode)))
    bottom[0].diff[...] = dx


# --- SoftmaxWithLoss ---------------------------------------------------------------------------------------------
def softmax_loss_forward(layer, bottom, top) -> None:
    """Softmax (CuPy), then the per-position losses and validity in one launch and their sums: no host sync."""
    from .loss import softmax_into
    cp = backend.cupy_module()
    outer, channels, inner = layer.dims
    prob3 = layer.prob.data.reshape(layer.dims)
    softmax_into(bottom[0].data.reshape(layer.dims), prob3, cp)
    label = cp.ascontiguousarray(bottom[1].data.reshape(-1)).astype(prob3.dtype, copy=False)
    loss = cp.empty((outer * inner,), dtype=prob3.dtype)
    valid = cp.empty((outer * inner,), dtype=prob3.dtype)
    _launch("softmax_loss", "softmax_loss_forward", loss.size, prob3.dtype,
            (prob3, label, loss, valid, _n(loss.size), _i(channels), _i(inner), _i(layer.has_ignore_label),
             _i(layer.ignore_label)))
    layer._gpu_label = label
    layer._valid = valid.reshape(outer, inner).astype(bool)
    layer.set_loss(top, loss.sum(dtype=prob3.dtype))


def softmax_loss_backward(layer, top, bottom) -> None:
    cp = backend.cupy_module()
    prob = layer.prob.data
    factor = cp.asarray(top[0].diff / layer._normalizer, dtype=prob.dtype).reshape(1)
    dx = bottom[0].diff
    outer, channels, inner = layer.dims
    _launch("softmax_loss", "softmax_loss_backward", dx.size, dx.dtype,
            (prob, layer._gpu_label, factor, dx, _n(dx.size), _i(channels), _i(inner), _i(layer.has_ignore_label),
             _i(layer.ignore_label)))


# --- Dropout -----------------------------------------------------------------------------------------------------
def dropout_forward(layer, bottom, top) -> None:
    """Uniforms from CuPy's generator (seeded by set_random_seed), mask and product in one launch."""
    cp = backend.cupy_module()
    x = bottom[0].data
    u = cp.random.random_sample(x.shape, dtype=x.dtype)
    mask = cp.empty(x.shape, dtype=x.dtype)
    factor = layer.scale if layer.scale_train else 1.0
    _launch("dropout", "dropout_forward", x.size, x.dtype,
            (x, u, top[0].data, mask, _n(x.size), x.dtype.type(layer.ratio), x.dtype.type(factor)))
    layer.mask = mask


# --- the solvers' updates ------------------------------------------------------------------------------------------
def update(kind: str, diff, histories, *scalars) -> None:
    """One fused launch of ``<kind>_update`` over a parameter's diff and its history blobs (all contiguous)."""
    t = diff.dtype.type
    _launch("solver", kind + "_update", diff.size, diff.dtype,
            (diff,) + tuple(histories) + (_n(diff.size),) + tuple(t(s) for s in scalars))
