#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Sequence golden files for tests/test_layer_parity.cpp.

An independent float64 PyTorch model, written from docs/method.md §2-7, of the reference layers'
LIFE CYCLE in reference-compatible mode: a number of training steps on different batches, then
evaluation with the running statistics. Three layer kinds:

  conv     sampled patches (docs/method.md §2) -> interleaved-shared or grouped blocks (docs/method.md §3) -> mean and
           biased covariance + eps I (docs/method.md §4) -> coupled Newton-Schulz, Frobenius scaling, exactly
           n_iter steps (docs/method.md §5) -> W' = fold(W, D), b' = b - W' mu (docs/method.md §6) -> y = conv2d(x, W', b')
  linear   the same with contiguous-shared blocks and no sampling
  channel  channel-only deconvolution with the reference quirks (docs/method.md §7, last bullet): first-step
           copy, UNcentred B x B second moment of the sampled columns, every S^2-th column only when
           H >= S and W >= S, remaining C - c channels standardised with one scalar mean and one
           unbiased variance of their sampled values (x[:, c:] flattened per image, every S^2-th)

State (docs/method.md §7): running mean 0 and running D = I at the start; after a step that computes
statistics, r <- (1 - m) r + m value (m = 0.1) for the mean and D (channel: r <- value on the first
step, for mean1, D, mean2 and var). Freeze (conv): frozen = freeze and c > freeze_iter, checked
before c <- (c + 1) mod (10 freeze_iter), on every training step; a frozen step folds the running
statistics and changes nothing else. Evaluation folds (conv/linear) or applies (channel) the running
statistics.

Inputs are integers from a seeded torch.Generator (torch.randint, exact on every CPU) combined with
dyadic coefficients, so every input is a short exact dyadic number, exactly representable in float32
(and printed exactly). The outputs are float64; their only machine dependence is float64 BLAS
rounding, far below the check tolerance.

Usage:
  generate_sequence_goldens.py          write tests/reference/sequence_goldens/<case>.txt (removes
                                        stale *.txt there)
  generate_sequence_goldens.py --check  regenerate in memory and compare with the files; exit 1 on
                                        any difference (missing/extra case, header, an input, or an
                                        output array with relative error ||a-b||/||b|| > 1e-10)

File format (whitespace-separated tokens, as tests/reference/generate_goldens.py):
  header lines  `<key> <value>`
  array blocks  `array <name> <count>` then <count> values, one per line; inputs exactly ('%.17g'),
                outputs with OUTPUT_DIGITS = 13 significant digits (relative rounding <= 5e-13)
Per case: steps T; inputs x.<t> (t = 0..T-1), x.eval, and for conv/linear weight and bias (weights
are the same at every step). After training step t (arrays suffixed .<t>):
  conv/linear  running_mean (all statistics concatenated), running_D (all statistics, each
               row-major), weight_folded (weight's shape), bias_folded (Cout), y (conv: N x Cout x
               Ho x Wo, linear: rows x Cout; the layer output with W', b' of that step);
               array `frozen` (T values 0/1) says which steps reused the running statistics. A
               frozen step leaves the running statistics exactly as they were, so its running_mean
               and running_D are not written (the C++ test checks them bit for bit against the
               previous step's instead; this keeps the files small)
  channel      running_mean1 (B), running_D (B x B), running_mean2 and running_var (1 value each,
               only when C - c > 0), y (N x C x H x W, the layer's training output)
Evaluation after the last step (on x.eval): eval.weight_folded, eval.bias_folded, eval.y
(conv/linear) or eval.y (channel).
"""

import argparse
import math
import os
import sys

import torch
import torch.nn.functional as Fn

import golden_files

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sequence_goldens")
CHECK_RTOL = 1e-10
OUTPUT_DIGITS = 13
MOMENTUM = 0.1


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

def conv(name, steps, N, C, H, W, Cout, k, stride=1, padding=0, dilation=1, groups=1, block=64,
         sampling_stride=3, eps=1e-5, n_iter=5, freeze=False, freeze_iter=100, seed=0):
    return dict(kind="conv", name=name, steps=steps, N=N, C=C, H=H, W=W, Cout=Cout, kernel=k,
                stride=stride, padding=padding, dilation=dilation, groups=groups, block=block,
                sampling_stride=sampling_stride, eps=eps, n_iter=n_iter, freeze=freeze,
                freeze_iter=freeze_iter, seed=seed)


def linear(name, steps, rows, Fin, Cout, block=512, eps=1e-5, n_iter=5, seed=0):
    return dict(kind="linear", name=name, steps=steps, rows=rows, Fin=Fin, Cout=Cout, block=block,
                eps=eps, n_iter=n_iter, seed=seed)


def channel(name, steps, N, C, H, W, block, sampling_stride=3, eps=1e-2, n_iter=5, seed=0):
    return dict(kind="channel", name=name, steps=steps, N=N, C=C, H=H, W=W, block=block,
                sampling_stride=sampling_stride, eps=eps, n_iter=n_iter, seed=seed)


CASES = [
    # First layer: C = 3, k = 3, one 27 x 27 statistic, 15 Newton-Schulz steps, freeze with
    # freeze_iter = 1 so that freezing AND the wrap-around at 10 * freeze_iter = 10 happen within
    # 13 steps: counter before step t (1-based) is (t - 1) mod 10, frozen when it is > 1:
    #   steps 1, 2 compute; 3..10 frozen; the counter wraps to 0; 11, 12 compute; 13 frozen.
    conv("conv_first_k3_freeze1_niter15", 13, 2, 3, 6, 6, 2, 3, sampling_stride=1, n_iter=15,
         freeze=True, freeze_iter=1, seed=1),
    # The setting, freeze_iter = 2 over 6 steps: steps 1..3 compute, 4..6 frozen. Sampling
    # stride 2 leaves 2 x 3 x 3 = 18 rows for 27 features: Cov is rank-deficient up to eps, cond ~5e5,
    # and 15 Newton-Schulz steps are half-way through converging its eps eigenvalues (the badly
    # conditioned float32 case; the moderately conditioned one above has cond ~4e3)
    conv("conv_first_k3_freeze2_niter15", 6, 2, 3, 5, 5, 2, 3, padding=1, sampling_stride=2,
         n_iter=15, freeze=True, freeze_iter=2, seed=2),
    # Middle layer, C / B = 2: interleaved-shared statistic (G = 2 rows per patch), sampling stride 2
    conv("conv_middle_C4_B2_interleaved", 6, 2, 4, 6, 6, 3, 3, padding=1, block=2, sampling_stride=2,
         seed=3),
    # Grouped: groups 2 -> B = C / groups = 2, one D per group; the reference sampling stride 3
    # (3 x 3 of the 7 x 7 positions per image, 27 rows for 18 features)
    conv("conv_grouped_C4_g2", 6, 3, 4, 7, 7, 2, 3, padding=1, groups=2, sampling_stride=3, seed=4),
    # Fully-connected: block 4 < Fin = 12 (3 chunks per row, one shared 4 x 4 statistic)
    linear("linear_F12_B4", 6, 16, 12, 3, block=4, seed=5),
    # Channel-only, C divisible by the block: c = C = 8, two channels per feature row; 4 x 4 >= S
    channel("channel_C8_B4", 6, 2, 8, 4, 4, 4, seed=6),
    # Channel-only, C not divisible: c = 8 whitened, 3 channels standardised
    channel("channel_C11_B4_remaining3", 6, 2, 11, 4, 4, 4, seed=7),
    # Channel-only with H < S: no sampling (all columns and all remaining values)
    channel("channel_C5_B2_unsampled", 6, 2, 5, 2, 3, 2, seed=8),
]


# ----------------------------------------------------------------------------------------------
# Inputs: short exact dyadic numbers
# ----------------------------------------------------------------------------------------------

def _ints(gen, shape, lo=-64, hi=64):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).double()


def image_batch(gen, N, C, H, W, spread):
    """Correlated pixels and channels with per-channel offsets; multiples of 1/128."""
    u = _ints(gen, (N, C, H, W))
    offset = _ints(gen, (1, C, 1, 1), 0, 128) * spread
    mixed = 3 * u + 2 * torch.roll(u, 1, dims=3) + torch.roll(u, 1, dims=2) + 2 * torch.roll(u, 1, dims=1)
    return (mixed + offset) / 128.0


def make_inputs(case):
    """[x_0, ..., x_{T-1}], x_eval, weight, bias (None for channel)."""
    gen = torch.Generator().manual_seed(7000 + case["seed"])
    T = case["steps"]
    if case["kind"] in ("conv", "channel"):
        shape = (case["N"], case["C"], case["H"], case["W"])
        xs = [image_batch(gen, *shape, spread=1.0 + 0.25 * (t % 3)) for t in range(T + 1)]
    else:
        xs = []
        for t in range(T + 1):
            u = _ints(gen, (case["rows"], case["Fin"]))
            offset = _ints(gen, (1, case["Fin"]), 0, 64)
            xs.append((3 * u + 2 * torch.roll(u, 1, dims=1) + offset) / 64.0)
    if case["kind"] == "channel":
        return xs[:T], xs[T], None, None
    if case["kind"] == "conv":
        wshape = (case["Cout"], case["C"] // case["groups"], case["kernel"], case["kernel"])
    else:
        wshape = (case["Cout"], case["Fin"])
    weight = _ints(gen, wshape) / 512.0
    bias = _ints(gen, (case["Cout"],)) / 64.0
    return xs[:T], xs[T], weight, bias


# ----------------------------------------------------------------------------------------------
# Numerics from docs/method.md §2-6, float64
# ----------------------------------------------------------------------------------------------

def block_size(block, C, groups=1):
    """docs/method.md §3."""
    if groups > 1:
        return C // groups
    B = min(block, C)
    return B if C % B == 0 else math.gcd(B, C)


def isqrt_ns(A, n_iter):
    """docs/method.md §5: coupled Newton-Schulz from Y = A/||A||_F, Z = I; exactly n_iter steps."""
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    norm = torch.sqrt((A * A).sum())
    Y, Z = A / norm, eye
    for _ in range(n_iter):
        T = (3 * eye - Z @ Y) / 2
        Y, Z = Y @ T, T @ Z
    return Z / torch.sqrt(norm)


def mean_and_D(rows, eps, n_iter, uncentred=False):
    """docs/method.md §4: mean of the rows and D = (M / n + eps I)^(-1/2), M = centred (or raw) scatter."""
    n, F = rows.shape
    mu = rows.sum(dim=0) / n
    R = rows if uncentred else rows - mu
    cov = R.t() @ R / n + eps * torch.eye(F, dtype=torch.float64)
    return mu, isqrt_ns(cov, n_iter)


def conv_statistics_rows(case, x):
    """docs/method.md §2: rows of the sampled patch matrix, columns in (c, ky, kx) order."""
    C, k = case["C"], case["kernel"]
    es = case["sampling_stride"] * case["stride"]
    if k == 1:
        return x.permute(0, 2, 3, 1).reshape(-1, C)[::es * es]
    cols = Fn.unfold(x, k, dilation=case["dilation"], padding=case["padding"], stride=es)  # (N, C k k, L)
    return cols.permute(0, 2, 1).reshape(-1, C * k * k)


def conv_blocks(case):
    """Per statistic s: the list of column-index tensors whose rows feed statistic s, with the
    output-channel rows of W that the statistic folds."""
    C, K, groups, Cout = case["C"], case["kernel"] ** 2, case["groups"], case["Cout"]
    B = block_size(case["block"], C, groups)
    F = K * B
    if groups == 1:
        G = C // B
        # column j -> block j mod G, feature j div G; all G blocks share the statistic
        cols = [torch.arange(g, C * K, G) for g in range(G)]
        return F, [(cols, torch.arange(Cout))]
    og = Cout // groups
    return F, [([torch.arange(g * F, (g + 1) * F)], torch.arange(g * og, (g + 1) * og)) for g in range(groups)]


def conv_batch_statistics(case, x):
    P = conv_statistics_rows(case, x)
    F, blocks = conv_blocks(case)
    stats = []
    for cols, _ in blocks:
        rows = torch.cat([P[:, c] for c in cols], dim=0)  # stack the G blocks as extra rows
        stats.append(mean_and_D(rows, case["eps"], case["n_iter"]))
    return stats


def conv_fold(case, weight, bias, stats):
    """docs/method.md §6 for conv weights (Cout, C/groups, k, k), returned with the same shape."""
    Cout = case["Cout"]
    W2 = weight.reshape(Cout, -1)
    Wf = torch.zeros_like(W2)
    bf = bias.clone()
    _, blocks = conv_blocks(case)
    for (cols, outs), (mu, D) in zip(blocks, stats):
        for c in cols:
            local = c if case["groups"] == 1 else c - c[0]  # grouped weights hold C/groups channels
            Wf[outs[:, None], local[None, :]] = W2[outs][:, local] @ D
            bf[outs] -= Wf[outs][:, local] @ mu
    return Wf.reshape(weight.shape), bf


def conv_output(case, x, Wf, bf):
    return Fn.conv2d(x, Wf, bf, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                     groups=case["groups"])


def conv_explicit_output(case, x, weight, bias, stats):
    """The unfolded layer on explicitly deconvolved patches, (N*Ho*Wo, Cout): checks the fold."""
    C, k, Cout = case["C"], case["kernel"], case["Cout"]
    P = Fn.unfold(x, k, dilation=case["dilation"], padding=case["padding"], stride=case["stride"])
    P = P.permute(0, 2, 1).reshape(-1, C * k * k)
    Pw = P.clone()
    _, blocks = conv_blocks(case)
    out = bias.repeat(P.shape[0], 1)
    W2 = weight.reshape(Cout, -1)
    for (cols, outs), (mu, D) in zip(blocks, stats):
        for c in cols:
            Pw[:, c] = (P[:, c] - mu) @ D
        for c in cols:
            local = c if case["groups"] == 1 else c - c[0]
            out[:, outs] += Pw[:, c] @ W2[outs][:, local].t()
    return out


def linear_batch_statistics(case, x):
    B = block_size(case["block"], case["Fin"])
    return [mean_and_D(x.reshape(-1, B), case["eps"], case["n_iter"])]


def linear_fold(case, weight, bias, stats):
    (mu, D), = stats
    B = D.shape[0]
    Wf = (weight.reshape(-1, B) @ D).reshape(weight.shape)
    bf = bias - (Wf.reshape(case["Cout"], -1, B) @ mu).sum(dim=1)
    return Wf, bf


def channel_split(case, x):
    """(B, c/B * N*H*W) feature rows of the first c channels, the remaining channels, c."""
    N, C, H, W, B = x.shape[0], case["C"], case["H"], case["W"], case["block"]
    c = (C // B) * B
    rows = x[:, :c].permute(1, 0, 2, 3).reshape(B, -1)  # row f: channels [f c/B, (f+1) c/B) in (n, y, x)
    return rows, x[:, c:], c


def channel_step_every(case):
    S = case["sampling_stride"]
    return S * S if S > 1 and case["H"] >= S and case["W"] >= S else 1


def channel_batch_statistics(case, x):
    rows, rest, c = channel_split(case, x)
    every = channel_step_every(case)
    sampled = rows[:, ::every].t()  # samples as rows
    mu1, D = mean_and_D(sampled, case["eps"], case["n_iter"], uncentred=True)
    if rest.shape[1] == 0:
        return mu1, D, None, None
    values = rest.reshape(rest.shape[0], -1)[:, ::every].reshape(-1)
    mean2 = values.mean()
    var = ((values - mean2) ** 2).sum() / (values.numel() - 1)
    return mu1, D, mean2, var


def channel_apply(case, x, mu1, D, mean2, var):
    rows, rest, c = channel_split(case, x)
    N, H, W = x.shape[0], case["H"], case["W"]
    white = (D @ (rows - mu1[:, None])).reshape(c, N, H, W).permute(1, 0, 2, 3)
    if rest.shape[1] == 0:
        return white
    return torch.cat([white, (rest - mean2) / torch.sqrt(var + case["eps"])], dim=1)


# ----------------------------------------------------------------------------------------------
# Sequences
# ----------------------------------------------------------------------------------------------

def average(running, value, copy):
    return value.clone() if copy else (1 - MOMENTUM) * running + MOMENTUM * value


def _check(case, what, a, b, rtol=1e-10):
    err = (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()
    if not err <= rtol:
        raise AssertionError("%s: %s fails, relative error %.3g" % (case["name"], what, err))


def run_folding(case, xs, x_eval, weight, bias):
    """conv / linear sequence in compatible mode (no first-step copy)."""
    is_conv = case["kind"] == "conv"
    batch_stats = conv_batch_statistics if is_conv else linear_batch_statistics
    fold = conv_fold if is_conv else linear_fold
    output = (lambda x, Wf, bf: conv_output(case, x, Wf, bf)) if is_conv else (lambda x, Wf, bf: Fn.linear(x, Wf, bf))
    F = (conv_blocks(case)[0] if is_conv else block_size(case["block"], case["Fin"]))
    count = len(conv_blocks(case)[1]) if is_conv else 1
    running = [(torch.zeros(F, dtype=torch.float64), torch.eye(F, dtype=torch.float64)) for _ in range(count)]
    freeze, freeze_iter = case.get("freeze", False), case.get("freeze_iter", 100)
    counter = 0
    arrays, frozen_flags = [], []
    for t, x in enumerate(xs):
        frozen = freeze and counter > freeze_iter
        counter = (counter + 1) % (10 * freeze_iter)
        if frozen:
            used = running
        else:
            used = batch_stats(case, x)
            running = [(average(rm, mu, False), average(rD, D, False)) for (rm, rD), (mu, D) in zip(running, used)]
        Wf, bf = fold(case, weight, bias, used)
        y = output(x, Wf, bf)
        if is_conv:
            explicit = conv_explicit_output(case, x, weight, bias, used)
            _check(case, "step %d: folded conv == explicit deconvolution" % t, y.permute(0, 2, 3, 1).reshape(-1, case["Cout"]), explicit)
        else:
            B = F
            explicit = ((x.reshape(x.shape[0], -1, B) - used[0][0]) @ used[0][1]).reshape(x.shape) @ weight.t() + bias
            _check(case, "step %d: folded linear == explicit deconvolution" % t, y, explicit)
        frozen_flags.append(1.0 if frozen else 0.0)
        if not frozen:  # a frozen step leaves them as they were: the test checks that bit for bit
            arrays += [("running_mean.%d" % t, torch.cat([m for m, _ in running])),
                       ("running_D.%d" % t, torch.cat([D.reshape(-1) for _, D in running]))]
        arrays += [("weight_folded.%d" % t, Wf), ("bias_folded.%d" % t, bf), ("y.%d" % t, y)]
    Wf, bf = fold(case, weight, bias, running)
    arrays += [("eval.weight_folded", Wf), ("eval.bias_folded", bf), ("eval.y", output(x_eval, Wf, bf))]
    info = dict(block_adjusted=(block_size(case["block"], case["C"], case["groups"]) if is_conv else F),
                statistics=count, features=F, frozen_steps=int(sum(frozen_flags)))
    return info, [("frozen", torch.tensor(frozen_flags, dtype=torch.float64))] + arrays


def run_channel(case, xs, x_eval):
    """channel-only sequence in compatible mode (first-step copy, uncentred second moment)."""
    B = case["block"]
    mu1_r, D_r = torch.zeros(B, dtype=torch.float64), torch.eye(B, dtype=torch.float64)
    mean2_r, var_r = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    arrays = []
    remaining = case["C"] % B != 0
    for t, x in enumerate(xs):
        mu1, D, mean2, var = channel_batch_statistics(case, x)
        first = t == 0
        mu1_r, D_r = average(mu1_r, mu1, first), average(D_r, D, first)
        if remaining:
            mean2_r, var_r = average(mean2_r, mean2, first), average(var_r, var, first)
        y = channel_apply(case, x, mu1, D, mean2, var)
        arrays += [("running_mean1.%d" % t, mu1_r), ("running_D.%d" % t, D_r)]
        if remaining:
            arrays += [("running_mean2.%d" % t, mean2_r), ("running_var.%d" % t, var_r)]
        arrays.append(("y.%d" % t, y))
    arrays.append(("eval.y", channel_apply(case, x_eval, mu1_r, D_r, mean2_r, var_r)))
    c = (case["C"] // B) * B
    every = channel_step_every(case)
    info = dict(whitened=c, sample_every=every,
                samples=len(range(0, (c // B) * case["N"] * case["H"] * case["W"], every)))
    return info, arrays


# ----------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------

HEADER_KEYS = {
    "conv": ["N", "C", "H", "W", "Cout", "kernel", "stride", "padding", "dilation", "groups", "block",
             "sampling_stride"],
    "linear": ["rows", "Fin", "Cout", "block"],
    "channel": ["N", "C", "H", "W", "block", "sampling_stride"],
}


def build(case):
    """(header: [(key, str)], inputs: [(name, tensor)], outputs: [(name, tensor)])."""
    xs, x_eval, weight, bias = make_inputs(case)
    if case["kind"] == "channel":
        info, outputs = run_channel(case, xs, x_eval)
    else:
        info, outputs = run_folding(case, xs, x_eval, weight, bias)
    header = [("kind", case["kind"]), ("name", case["name"]), ("steps", str(case["steps"]))]
    header += [(key, str(case[key])) for key in HEADER_KEYS[case["kind"]]]
    header += [("eps", "%.17g" % case["eps"]), ("n_iter", str(case["n_iter"]))]
    if case["kind"] == "conv":
        header += [("freeze", "1" if case["freeze"] else "0"), ("freeze_iter", str(case["freeze_iter"]))]
    header += [(key, str(value)) for key, value in info.items()]
    inputs = [("x.%d" % t, x) for t, x in enumerate(xs)] + [("x.eval", x_eval)]
    if weight is not None:
        inputs += [("weight", weight), ("bias", bias)]
    for name, v in inputs:
        if not torch.equal(v.float().double(), v):
            raise AssertionError("%s: input %s is not exactly float32" % (case["name"], name))
    return header, inputs, outputs


def flat(t):
    return [float(v) for v in t.reshape(-1).tolist()]


def render(header, inputs, outputs):
    lines = ["%s %s" % kv for kv in header]
    for arrays, form in ((inputs, "%.17g"), (outputs, "%%.%dg" % OUTPUT_DIGITS)):
        for name, t in arrays:
            values = flat(t)
            lines.append("array %s %d" % (name, len(values)))
            lines += [form % v for v in values]
    return "\n".join(lines) + "\n"


def write_all(directory):
    os.makedirs(directory, exist_ok=True)
    names = {case["name"] for case in CASES}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".txt") and entry[:-4] not in names:
            os.remove(os.path.join(directory, entry))
    total = 0
    for case in CASES:
        header, inputs, outputs = build(case)
        path = os.path.join(directory, case["name"] + ".txt")
        text = render(header, inputs, outputs)
        with open(path, "w") as f:
            f.write(text)
        total += len(text)
        print("wrote %-60s %7d bytes  %s" % (os.path.relpath(path), len(text),
                                              " ".join("%s=%s" % kv for kv in header[3:])))
    print("total %d bytes" % total)


def check_all(directory):
    def expected(case):
        header, inputs, outputs = build(case)
        return header, [(n, flat(t)) for n, t in inputs + outputs], len(inputs)
    return golden_files.check_all(directory, CASES, expected, "sequence goldens", CHECK_RTOL)


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
