#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Golden files for tests/test_reference_parity.cpp.

An independent PyTorch re-implementation, written from docs/method.md §2-7, of the TRAINING
forward pass of the reference deconvolution layers (conv and fully-connected):

  sampled patch rows (docs/method.md §2) -> block reshape (docs/method.md §3) -> mean, Cov = Xc^T Xc / n + eps I (docs/method.md §4)
  -> D = coupled Newton-Schulz with Frobenius scaling, n_iter steps (docs/method.md §5)
  -> W' = fold(W, D), b' = b - W' mu (docs/method.md §6) -> y = conv2d / linear with (W', b').

Everything is computed in float64 from inputs whose values are exactly float32, so the files do
not depend on the machine beyond float64 BLAS rounding (far below the 1e-10 check tolerance).

Inputs are built from integers drawn with a seeded torch.Generator (torch.randint: exact on every
CPU, unlike the SIMD-dependent float32 randn path), mixed with a few element-wise float64 operations
to give the patches correlated features and non-zero means, then rounded to float32.

Usage:
  generate_goldens.py            write tests/reference/goldens/<case>.txt (removes stale *.txt)
  generate_goldens.py --check    regenerate in memory and compare with the files; exit 1 on any
                                 difference (missing/extra case, header, input, or an output array
                                 with relative error ||a-b||/||b|| > 1e-10)

File format (whitespace-separated tokens, parsed by the C++ test without dependencies):
  header lines   `<key> <value>`
  array blocks   `array <name> <count>` followed by <count> values, one per line, '%.17g'
Arrays: x, weight, bias (only when bias 1), mean (all statistics concatenated), D (all statistics
concatenated, each row-major), weight_folded (weight's shape, row-major), bias_folded (Cout;
present also without bias: then b = 0), y (conv: N x Cout x Ho x Wo, linear: rows x Cout), and the
backward: grad_weight_folded and grad_bias_folded (upstream dL/dW', dL/db', exact values k/4096),
grad_x, grad_weight and grad_bias (only when bias 1) by autograd of <dL/dW', W'> + <dL/db', b'>.
"""

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as Fn

import golden_files

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
CHECK_RTOL = 1e-10
INPUT_KEYS = ("x", "weight", "bias")


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

def conv_case(name, N, C, H, W, Cout, k, stride=1, padding=0, dilation=1, groups=1, block=64,
              sampling_stride=3, eps=1e-5, n_iter=5, bias=True, seed=0, channel_scale_exp=None):
    """channel_scale_exp: {channel: e} multiplies that input channel by 2^-e (exact), to make the
    covariance ill-conditioned enough that Newton-Schulz is still moving at step n_iter."""
    return dict(kind="conv", name=name, N=N, C=C, H=H, W=W, Cout=Cout, kernel=k, stride=stride,
                padding=padding, dilation=dilation, groups=groups, block=block,
                sampling_stride=sampling_stride, eps=eps, n_iter=n_iter, bias=bias, seed=seed,
                channel_scale_exp=channel_scale_exp or {})


def linear_case(name, rows, Fin, Cout, block=512, eps=1e-5, n_iter=5, bias=True, seed=0):
    return dict(kind="linear", name=name, rows=rows, Fin=Fin, Cout=Cout, block=block, eps=eps,
                n_iter=n_iter, bias=bias, seed=seed)


CASES = [
    # k = 3, one block (B = C), no sampling
    conv_case("conv_k3_basic", 2, 4, 9, 9, 6, 3, padding=1, sampling_stride=1, seed=1),
    # stride 2 with padding: statistics on im2col with stride S*s = 2
    conv_case("conv_k3_stride2_pad1", 2, 3, 11, 11, 5, 3, stride=2, padding=1, sampling_stride=1, seed=2),
    # k = 1: every (S*s)^2 = 4th pixel in (n, y, x) raster order; no bias
    conv_case("conv_k1_S2_nobias", 2, 8, 8, 8, 6, 1, sampling_stride=2, bias=False, seed=3),
    # k = 1, stride 2, S = 3: every 36th pixel; block 2 -> G = 3 interleaved rows per pixel
    conv_case("conv_k1_stride2_S3_block2", 2, 6, 11, 11, 4, 1, stride=2, block=2, sampling_stride=3, seed=4),
    # k = 5, padding 2
    conv_case("conv_k5_pad2", 2, 3, 11, 11, 4, 5, padding=2, sampling_stride=1, seed=5),
    # dilation 2, sampling stride 2, block 2 of C = 4 (G = 2)
    conv_case("conv_k3_dilation2_S2_block2", 2, 4, 11, 11, 5, 3, padding=2, dilation=2, block=2,
              sampling_stride=2, seed=6),
    # C / B = 2: interleaved-shared statistic
    conv_case("conv_k3_interleave_C8_B4", 2, 8, 10, 10, 6, 3, padding=1, block=4, sampling_stride=1, seed=7),
    # C = 6, block 4 -> gcd -> B = 2, G = 3; no bias
    conv_case("conv_k3_gcd_C6_B4_nobias", 2, 6, 9, 9, 5, 3, padding=1, block=4, sampling_stride=2,
              bias=False, seed=8),
    # grouped: groups 2 -> B = C/groups = 3, one D per group
    conv_case("conv_k3_groups2", 2, 6, 10, 10, 4, 3, padding=1, groups=2, sampling_stride=1, seed=9),
    # depthwise with channel multiplier 2, stride 2
    conv_case("conv_k3_depthwise_stride2", 2, 4, 11, 11, 8, 3, stride=2, padding=1, groups=4,
              sampling_stride=1, seed=10),
    # grouped, sampling stride 3, no bias
    conv_case("conv_k3_groups2_S3_nobias", 2, 4, 11, 11, 6, 3, padding=1, groups=2, sampling_stride=3,
              bias=False, seed=11),
    # sampling stride 3 (the reference default), block 1 -> G = 3
    conv_case("conv_k3_S3_block1", 2, 3, 11, 11, 4, 3, padding=1, block=1, sampling_stride=3, seed=12),
    # 15 Newton-Schulz steps (the paper's first-layer setting); channel 3 scaled by 2^-7 gives
    # cond(Cov) ~ 3e4, so D after 14, 15 and 16 steps differ by > 1e-2 (the step count is tested)
    conv_case("conv_k3_niter15", 2, 4, 9, 9, 5, 3, padding=1, block=2, sampling_stride=1, n_iter=15, seed=13,
              channel_scale_exp={3: 7}),
    # fully-connected: block 4 < Fin = 12 (3 chunks per row)
    linear_case("linear_block4", 16, 12, 5, block=4, seed=14),
    # Fin = 10, block 4 -> gcd -> B = 2; no bias
    linear_case("linear_gcd_F10_B4_nobias", 12, 10, 3, block=4, bias=False, seed=15),
    # block 512 > Fin -> B = Fin
    linear_case("linear_full_block", 40, 6, 4, seed=16),
]


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def _uniform(gen, shape):
    """float64 values k/4096, k uniform in [-4096, 4096): exact, machine independent."""
    return torch.randint(-4096, 4096, shape, generator=gen, dtype=torch.int64).double() / 4096.0


def make_inputs(case):
    gen = torch.Generator().manual_seed(1000 + case["seed"])
    if case["kind"] == "conv":
        N, C, H, W = case["N"], case["C"], case["H"], case["W"]
        u = _uniform(gen, (N, C, H, W))
        offset = _uniform(gen, (1, C, 1, 1))
        # element-wise only (no reductions): neighbouring pixels and channels correlate
        x = (1.5 * u + 0.8 * torch.roll(u, 1, dims=3) + 0.5 * torch.roll(u, 1, dims=2)
             + 0.6 * torch.roll(u, 1, dims=1) + offset)
        for c, e in case["channel_scale_exp"].items():
            x[:, c] *= 2.0 ** -e
        wshape = (case["Cout"], C // case["groups"], case["kernel"], case["kernel"])
        fan_in = wshape[1] * wshape[2] * wshape[3]
    else:
        rows, Fin = case["rows"], case["Fin"]
        u = _uniform(gen, (rows, Fin))
        offset = _uniform(gen, (1, Fin))
        x = 1.5 * u + 0.7 * torch.roll(u, 1, dims=1) + offset
        wshape = (case["Cout"], Fin)
        fan_in = Fin
    weight = _uniform(gen, wshape) / math.sqrt(fan_in)
    bias = _uniform(gen, (case["Cout"],)) * 0.5 if case["bias"] else None
    to32 = lambda t: None if t is None else t.float().double()  # noqa: E731  (exactly float32 values)
    return to32(x), to32(weight), to32(bias)


# ----------------------------------------------------------------------------------------------
# The reference training forward (docs/method.md §2-7), float64
# ----------------------------------------------------------------------------------------------

def adjust_block(block, C, groups=1):
    """docs/method.md §3: B = min(B, C); gcd(B, C) if B does not divide C; C/groups for grouped convs."""
    B = min(block, C)
    if C % B != 0:
        B = math.gcd(B, C)
    if groups > 1:
        B = C // groups
    return B


def sampled_patches(x, k, stride, padding, dilation, S):
    """docs/method.md §2: rows of the statistics' patch matrix, (rows, C*k*k) in unfold column order."""
    N, C, H, W = x.shape
    es = S * stride
    if k > 1:
        cols = Fn.unfold(x, kernel_size=k, dilation=dilation, padding=padding, stride=es)
        return cols.transpose(1, 2).reshape(-1, C * k * k)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, C)  # (n, y, x) raster
    return pixels[:: es * es]


def newton_schulz_isqrt(A, n_iter):
    """docs/method.md §5: coupled Newton-Schulz, Frobenius scaling, exactly n_iter steps."""
    F = A.shape[0]
    I = torch.eye(F, dtype=A.dtype)
    s = torch.linalg.norm(A)  # Frobenius
    Y = A / s
    Z = I.clone()
    for _ in range(n_iter):
        T = 0.5 * (3.0 * I - Z @ Y)
        Y = Y @ T
        Z = T @ Z
    return Z / torch.sqrt(s)


def moments_and_isqrt(X, eps, n_iter):
    """docs/method.md §4-5: column mean, Cov = Xc^T Xc / n + eps I (biased), D ~ Cov^(-1/2)."""
    n, F = X.shape
    mu = X.mean(dim=0)
    Xc = X - mu
    cov = Xc.t() @ Xc / n + eps * torch.eye(F, dtype=X.dtype)
    return mu, newton_schulz_isqrt(cov, n_iter), n


def _assert_close(case, what, a, b, rtol=1e-12):
    err = (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()
    if not err <= rtol:
        raise AssertionError("%s: %s fails, relative error %.3g" % (case["name"], what, err))


def conv_forward(case, x, weight, bias):
    C, k, groups, Cout = case["C"], case["kernel"], case["groups"], case["Cout"]
    B = adjust_block(case["block"], C, groups)
    K = k * k
    F = K * B
    X = sampled_patches(x, k, case["stride"], case["padding"], case["dilation"], case["sampling_stride"])
    b = bias if bias is not None else torch.zeros(Cout, dtype=torch.float64)
    if groups == 1:
        # interleaved-shared: column j -> block j mod G, feature j div G; one shared statistic
        G = C // B
        Xb = X.reshape(-1, F, G).transpose(1, 2).reshape(-1, F)
        mu, D, n = moments_and_isqrt(Xb, case["eps"], case["n_iter"])
        Wr = weight.reshape(Cout, F, G).transpose(1, 2)  # (Cout, G, F)
        Wf = Wr @ D                                       # each length-F row times D
        bf = b - (Wf @ mu).sum(dim=1)
        Wf = Wf.transpose(1, 2).reshape(weight.shape).contiguous()
        means, Ds = [mu], [D]
    else:
        # grouped: group g owns channels [g*C/groups, (g+1)*C/groups) -> columns [g*F, (g+1)*F)
        og = Cout // groups
        W2 = weight.reshape(Cout, F)
        Wfs, bfs, means, Ds = [], [], [], []
        for g in range(groups):
            mu, D, n = moments_and_isqrt(X[:, g * F:(g + 1) * F], case["eps"], case["n_iter"])
            rows = slice(g * og, (g + 1) * og)
            Wfs.append(W2[rows] @ D)
            bfs.append(b[rows] - Wfs[-1] @ mu)
            means.append(mu)
            Ds.append(D)
        Wf = torch.cat(Wfs).reshape(weight.shape).contiguous()
        bf = torch.cat(bfs)
    y = Fn.conv2d(x, Wf, bf, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                  groups=groups)
    # docs/method.md §6 check: the folded conv equals the unfolded layer applied to explicitly whitened patches
    P = Fn.unfold(x, kernel_size=k, dilation=case["dilation"], padding=case["padding"], stride=case["stride"])
    P = P.transpose(1, 2).reshape(-1, C * K)
    if groups == 1:
        G = C // B
        Pw = ((P.reshape(-1, F, G).transpose(1, 2) - means[0]) @ Ds[0]).transpose(1, 2).reshape(-1, C * K)
        explicit = Pw @ weight.reshape(Cout, C * K).t() + b
    else:
        og = Cout // groups
        explicit = torch.cat([((P[:, g * F:(g + 1) * F] - means[g]) @ Ds[g]) @ W2[g * og:(g + 1) * og].t()
                              + b[g * og:(g + 1) * og] for g in range(groups)], dim=1)
    implicit = y.permute(0, 2, 3, 1).reshape(-1, Cout)
    _assert_close(case, "implicit == explicit deconvolution", implicit, explicit)
    info = dict(block_adjusted=B, statistics=len(Ds), features=F, samples=n)
    return info, means, Ds, Wf, bf, y


def linear_forward(case, x, weight, bias):
    Fin, Cout = case["Fin"], case["Cout"]
    B = adjust_block(case["block"], Fin)
    # contiguous-shared: each row cut into Fin/B consecutive chunks, stacked as rows
    X = x.reshape(-1, B)
    mu, D, n = moments_and_isqrt(X, case["eps"], case["n_iter"])
    b = bias if bias is not None else torch.zeros(Cout, dtype=torch.float64)
    Wf = (weight.reshape(-1, B) @ D).reshape(Cout, Fin)
    bf = b - (Wf.reshape(Cout, Fin // B, B) @ mu).sum(dim=1)
    y = Fn.linear(x, Wf, bf)
    explicit = ((x.reshape(-1, Fin // B, B) - mu) @ D).reshape(-1, Fin) @ weight.t() + b
    _assert_close(case, "implicit == explicit deconvolution", y, explicit)
    info = dict(block_adjusted=B, statistics=1, features=B, samples=n)
    return info, [mu], [D], Wf, bf, y


# ----------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------

def fmt(v):
    return "%.17g" % v


def build(case):
    """(header: list of (key, str)), arrays: list of (name, flat float64 list)) for one case."""
    x, weight, bias = make_inputs(case)
    leaves = [t.requires_grad_(True) for t in (x, weight, bias) if t is not None]
    fwd = conv_forward if case["kind"] == "conv" else linear_forward
    info, means, Ds, Wf, bf, y = fwd(case, x, weight, bias)
    # The backward (docs/method.md §6): autograd of L = <G, W'> + <g, b'> for exact upstream
    # gradients G, g; dL/dx flows only through mu and Cov (W' and b' see x through nothing else).
    gen = torch.Generator().manual_seed(2000 + case["seed"])
    grad_wf, grad_bf = _uniform(gen, Wf.shape), _uniform(gen, bf.shape)
    grads = torch.autograd.grad((Wf * grad_wf).sum() + (bf * grad_bf).sum(), leaves)
    x, weight, bias = (None if t is None else t.detach() for t in (x, weight, bias))
    means, Ds, Wf, bf, y = [m.detach() for m in means], [D.detach() for D in Ds], Wf.detach(), bf.detach(), y.detach()
    if case["kind"] == "conv":
        keys = ["kind", "name", "N", "C", "H", "W", "Cout", "kernel", "stride", "padding", "dilation",
                "groups", "block"]
    else:
        keys = ["kind", "name", "rows", "Fin", "Cout", "block"]
    header = [(key, str(case[key])) for key in keys]
    if case["kind"] == "conv":
        header.append(("sampling_stride", str(case["sampling_stride"])))
    header += [("eps", fmt(case["eps"])), ("n_iter", str(case["n_iter"])), ("bias", "1" if case["bias"] else "0")]
    header += [(key, str(info[key])) for key in ("block_adjusted", "statistics", "features", "samples")]
    flat = lambda t: [float(v) for v in t.reshape(-1).tolist()]  # noqa: E731
    arrays = [("x", flat(x)), ("weight", flat(weight))]
    if bias is not None:
        arrays.append(("bias", flat(bias)))
    arrays += [("mean", flat(torch.cat(means))), ("D", flat(torch.cat([D.reshape(-1) for D in Ds]))),
               ("weight_folded", flat(Wf)), ("bias_folded", flat(bf)), ("y", flat(y)),
               ("grad_weight_folded", flat(grad_wf)), ("grad_bias_folded", flat(grad_bf)),
               ("grad_x", flat(grads[0])), ("grad_weight", flat(grads[1]))]
    if bias is not None:
        arrays.append(("grad_bias", flat(grads[2])))
    return header, arrays


def render(header, arrays):
    lines = ["%s %s" % kv for kv in header]
    for name, values in arrays:
        lines.append("array %s %d" % (name, len(values)))
        lines += [fmt(v) for v in values]
    return "\n".join(lines) + "\n"


def write_all(directory):
    os.makedirs(directory, exist_ok=True)
    names = {case["name"] for case in CASES}
    for stale in sorted(os.listdir(directory)):
        if stale.endswith(".txt") and stale[:-4] not in names:
            os.remove(os.path.join(directory, stale))
    for case in CASES:
        header, arrays = build(case)
        path = os.path.join(directory, case["name"] + ".txt")
        with open(path, "w") as f:
            f.write(render(header, arrays))
        info = dict(header)
        print("wrote %-40s B=%s F=%s n=%s statistics=%s" % (
            os.path.relpath(path), info["block_adjusted"], info["features"], info["samples"], info["statistics"]))


def check_all(directory):
    def expected(case):
        header, arrays = build(case)
        return header, arrays, sum(1 for n, _ in arrays if n in INPUT_KEYS)
    return golden_files.check_all(directory, CASES, expected, "goldens", CHECK_RTOL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    parser.add_argument("--dir", default=GOLDEN_DIR, help="goldens directory (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check:
        return check_all(args.dir)
    write_all(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
