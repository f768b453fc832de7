#!/usr/bin/env python
"""Builds the PyTorch reference for pcn's modern normalization layers and stores it in
tests/reference_modern_norm/<case>.npz (run once; needs torch, e.g. ``pip install torch==2.13.0`` CPU).

Every case is one layer (its prototxt text in CASES), a float64 input, initial parameter blobs, a top diff, and
what PyTorch's CPU float64 implementation gives for them: the output, the input gradient, the parameter
gradients and, where the layer has them, the running statistics after the forward pass.
tests/layers/test_modern_normalization.py imports this file: it recomputes the reference with torch when torch
is importable and reads the stored arrays otherwise.

Usage: python tools/make_modern_norm_reference.py [--out tests/reference_modern_norm]
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "reference_modern_norm"

# name -> (layer text without name, input shape). Shapes include N = 1 and 1x1 spatial for every layer.
CASES = {
    "layernorm_mycaffe": ('type: "LayerNorm" layer_norm_param { epsilon: 1e-5 }', (2, 3, 5, 4)),
    "layernorm_mycaffe_2d": ('type: "LayerNorm"', (3, 7)),
    "layernorm_affine_axis1": ('type: "LayerNorm" layer_norm_param { axis: 1 elementwise_affine: true '
                               'epsilon: 1e-5 }', (2, 4, 3, 3)),
    "layernorm_affine_n1": ('type: "LayerNorm" layer_norm_param { axis: -1 elementwise_affine: true '
                            'epsilon: 1e-5 }', (1, 6, 8)),
    "layernorm_affine_nobias_1x1": ('type: "LayerNorm" layer_norm_param { axis: 1 elementwise_affine: true '
                                    'bias_term: false epsilon: 1e-5 }', (3, 5, 1, 1)),
    "groupnorm_g2": ('type: "GroupNorm" group_norm_param { num_groups: 2 }', (2, 6, 4, 3)),
    "groupnorm_g1_n1": ('type: "GroupNorm" group_norm_param { num_groups: 1 }', (1, 4, 3, 5)),
    "groupnorm_g2_1x1": ('type: "GroupNorm" group_norm_param { num_groups: 2 }', (4, 6, 1, 1)),
    "groupnorm_noaffine": ('type: "GroupNorm" group_norm_param { num_groups: 4 affine: false }', (2, 8, 3, 3)),
    "instancenorm": ('type: "InstanceNorm"', (2, 3, 4, 5)),
    "instancenorm_affine_track": ('type: "InstanceNorm" instance_norm_param { affine: true '
                                  'track_running_stats: true momentum: 0.2 }', (3, 4, 3, 3)),
    "instancenorm_affine_track_n1": ('type: "InstanceNorm" instance_norm_param { affine: true '
                                     'track_running_stats: true }', (1, 3, 2, 5)),
    "instancenorm_affine_1x1": ('type: "InstanceNorm" instance_norm_param { affine: true }', (2, 5, 1, 1)),
    "instancenorm_global": ('type: "InstanceNorm" instance_norm_param { affine: true track_running_stats: true '
                            'use_global_stats: true }', (2, 4, 3, 2)),
    "rmsnorm_mycaffe": ('type: "RMSNorm"', (2, 5, 8)),
    "rmsnorm_axis1_n1": ('type: "RMSNorm" rms_norm_param { axis: 1 epsilon: 1e-6 }', (1, 4, 3, 3)),
    "rmsnorm_noweights_1x1": ('type: "RMSNorm" rms_norm_param { axis: 1 enable_weights: false }', (3, 6, 1, 1)),
    "convnext_grn": ('type: "ConvNeXtGRN"', (2, 6, 4, 4)),
    "convnext_grn_n1": ('type: "ConvNeXtGRN"', (1, 4, 3, 5)),
    "convnext_grn_1x1": ('type: "ConvNeXtGRN" convnext_grn_param { eps: 1e-3 }', (3, 5, 1, 1)),
    "batchrenorm": ('type: "BatchNorm" batch_norm_param { renorm: true r_max: 1.5 d_max: 0.5 '
                    'moving_average_fraction: 0.9 }', (4, 3, 3, 2)),
    "batchrenorm_n1_unclipped": ('type: "BatchNorm" batch_norm_param { renorm: true r_max: 10 d_max: 10 }',
                                 (1, 5, 4, 3)),
    "batchrenorm_scale_bias_1x1": ('type: "BatchNorm" batch_norm_param { renorm: true r_max: 2 d_max: 1 '
                                   'scale_bias: true }', (6, 4, 1, 1)),
}


def _layer_kind(text: str) -> str:
    return text.split('"')[1]


def make_inputs(name: str) -> dict:
    """The case's float64 inputs, initial parameter blobs (as pcn orders them) and top diff, from a fixed seed."""
    text, shape = CASES[name]
    kind = _layer_kind(text)
    rng = np.random.RandomState(sum(map(ord, name)))
    x = rng.randn(*shape) * 1.5 + 0.5
    arrays = {"x": x, "dy": rng.uniform(-1, 1, shape)}
    params = []
    c = shape[1]
    if kind == "LayerNorm" and "elementwise_affine: true" in text:
        axis = 1 if "axis: 1" in text else len(shape) - 1
        params.append(rng.uniform(0.5, 1.5, shape[axis:]))
        if "bias_term: false" not in text:
            params.append(rng.uniform(-0.5, 0.5, shape[axis:]))
    elif kind == "RMSNorm" and "enable_weights: false" not in text:
        axis = 1 if "axis: 1" in text else 2
        params.append(rng.uniform(0.5, 1.5, shape[axis:]))
    elif kind == "GroupNorm" and "affine: false" not in text:
        params += [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)]
    elif kind == "InstanceNorm":
        if "track_running_stats: true" in text:
            params += [rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 2.0, c)]
        if "affine: true" in text:
            params += [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)]
    elif kind == "ConvNeXtGRN":
        params += [rng.uniform(-1, 1, c), rng.uniform(-0.5, 0.5, c)]
    elif kind == "BatchNorm":
        s = 2.5                                 # Caffe's decayed sums: mean_running = blobs[0] / S
        params += [rng.uniform(-0.6, 0.6, c) * s + 0.5 * s, rng.uniform(0.5, 4.0, c) * s, np.array([s])]
        if "scale_bias: true" in text:
            params += [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)]
        params.append(np.array([0.0]))         # the iteration counter
    for i, p in enumerate(params):
        arrays["param%d" % i] = np.asarray(p, dtype=np.float64)
    return arrays


def _field(text: str, key: str, default: float) -> float:
    if key + ":" not in text:
        return default
    return float(text.split(key + ":")[1].split()[0])


def torch_reference(name: str, arrays: dict) -> dict:
    """PyTorch's float64 CPU results for the case: y, dx, dparam<i> (learned blobs), stat<i> (statistics blobs
    after the forward pass)."""
    import torch
    import torch.nn.functional as F

    text, shape = CASES[name]
    kind = _layer_kind(text)
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in arrays.items()}
    x = t["x"].clone().requires_grad_(True)
    nparam = len([k for k in arrays if k.startswith("param")])
    p = [t["param%d" % i].clone() for i in range(nparam)]
    learned = []
    stats = {}
    if kind == "LayerNorm":
        axis = int(_field(text, "axis", 1 if len(shape) <= 2 else 2)) % len(shape)
        for q in p:
            q.requires_grad_(True)
        learned = list(range(nparam))
        y = F.layer_norm(x, shape[axis:], p[0] if p else None, p[1] if len(p) > 1 else None,
                         _field(text, "epsilon", 1e-10))
    elif kind == "RMSNorm":
        axis = int(_field(text, "axis", 2))
        for q in p:
            q.requires_grad_(True)
        learned = list(range(nparam))
        y = F.rms_norm(x, list(shape[axis:]), p[0] if p else None, _field(text, "epsilon", 1e-5))
    elif kind == "GroupNorm":
        for q in p:
            q.requires_grad_(True)
        learned = list(range(nparam))
        y = F.group_norm(x, int(_field(text, "num_groups", 1)), p[0] if p else None, p[1] if p else None,
                         _field(text, "eps", 1e-5))
    elif kind == "InstanceNorm":
        track = "track_running_stats: true" in text
        affine = "affine: true" in text
        rm, rv = (p[0], p[1]) if track else (None, None)
        w, b = (p[-2], p[-1]) if affine else (None, None)
        if affine:
            w.requires_grad_(True)
            b.requires_grad_(True)
            learned = [nparam - 2, nparam - 1]
        use_input = "use_global_stats: true" not in text
        # torch.instance_norm (the op F.instance_norm calls) also takes 1x1 spatial input, which
        # F.instance_norm refuses in training
        y = torch.instance_norm(x, w, b, rm, rv, use_input, _field(text, "momentum", 0.1),
                                _field(text, "eps", 1e-5), False)
        if track:
            stats = {0: rm.detach().numpy().copy(), 1: rv.detach().numpy().copy()}
    elif kind == "ConvNeXtGRN":
        gamma, beta = p[0].requires_grad_(True), p[1].requires_grad_(True)
        learned = [0, 1]
        eps = _field(text, "eps", 1e-6)
        # ConvNeXt-V2's GRN (channels last there) written for (N, C, spatial)
        x3 = x.reshape(shape[0], shape[1], -1)
        gx = torch.norm(x3, p=2, dim=2, keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + eps)
        y = (gamma[None, :, None] * (x3 * nx) + beta[None, :, None] + x3).reshape(shape)
    elif kind == "BatchNorm":
        # Ioffe 2017, algorithm 1, with the running statistics as Caffe's decayed sums (blobs / S) and eps
        eps, maf = _field(text, "eps", 1e-5), _field(text, "moving_average_fraction", 0.999)
        r_max, d_max = _field(text, "r_max", 3), _field(text, "d_max", 5)
        s = float(p[2][0])
        mu_r, var_r = p[0] / s, p[1] / s
        dims = [0] + list(range(2, len(shape)))
        c = shape[1]
        view = (1, c) + (1,) * (len(shape) - 2)
        mu = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        sigma = torch.sqrt(var + eps)
        sigma_r = torch.sqrt(var_r + eps)
        r = torch.clamp((sigma / sigma_r).detach(), 1 / r_max, r_max)
        d = torch.clamp(((mu - mu_r) / sigma_r).detach(), -d_max, d_max)
        y = (x - mu.reshape(view)) / sigma.reshape(view) * r.reshape(view) + d.reshape(view)
        if "scale_bias: true" in text:
            p[3].requires_grad_(True)
            p[4].requires_grad_(True)
            learned = [3, 4]
            y = y * p[3].reshape(view) + p[4].reshape(view)
        m = x.numel() // c
        stats = {0: (mu.detach() + maf * p[0]).numpy(),
                 1: (var.detach() * (m / (m - 1) if m > 1 else 1) + maf * p[1]).numpy(),
                 2: (maf * p[2] + 1).numpy(), nparam - 1: np.array([1.0])}
    else:
        raise ValueError(kind)
    (y * t["dy"]).sum().backward()
    out = {"y": y.detach().numpy().copy(), "dx": x.grad.numpy().copy()}
    for i in learned:
        out["dparam%d" % i] = p[i].grad.numpy().copy()
    for i, v in stats.items():
        out["stat%d" % i] = np.asarray(v, dtype=np.float64).copy()
    return out


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        arrays = make_inputs(name)
        ref = torch_reference(name, arrays)
        np.savez_compressed(out / ("%s.npz" % name), **arrays, **{"ref_" + k: v for k, v in ref.items()})
    print("wrote %d cases to %s with torch %s" % (len(CASES), out, torch.__version__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
