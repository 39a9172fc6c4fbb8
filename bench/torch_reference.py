#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Timed statistics path of the PyTorch reference conv layer (float32, CPU), for bench/.

The training-forward statistics of the reference deconvolution conv layer (Ye et al.), written
from docs/method.md §2-6 as tests/reference/generate_goldens.py does, in float32 as the layer runs:
  unfold with stride S (sampled patches) -> interleaved block reshape -> mean, centred
  Cov = Xc^T Xc / n + eps I (addmm) -> 5 coupled Newton-Schulz steps (15 products) -> fold W D, b - W' mu.

With --backward, the same path runs with x, W and b requiring gradients and is followed by
autograd's backward from fixed upstream dL/dW', dL/db' (what training through the reference layer
computes): the time is forward + backward.

Prints one line: `TORCH_JSON {"stats_s": median, "times": [...], "threads": t, "blas": path}`.
Refuses to run (exit 3) unless the BLAS library mapped into the process is OpenBLAS.

  torch_reference.py --shape H W Cin Cout blocks k S --batch 16 --threads 2 --reps 5 [--backward]
"""

import argparse
import json
import os
import statistics
import sys
import time


def blas_libraries():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "blas" in line or "lapack" in line})


def isqrt_newton_schulz(A, n_iter):
    """Coupled Newton-Schulz, Frobenius scaling, exactly n_iter steps (docs/method.md §5)."""
    import torch
    norm = A.norm()
    Y = A / norm
    I = torch.eye(A.shape[0], dtype=A.dtype)
    Z = torch.eye(A.shape[0], dtype=A.dtype)
    for _ in range(n_iter):
        T = 0.5 * (3.0 * I - Z @ Y)
        Y = Y @ T
        Z = T @ Z
    return Z / torch.sqrt(norm)


def reference_statistics(x, weight, bias, k, S, blocks, eps, n_iter):
    """(W', b', mu, D) of the reference conv layer's training step on x (N, C, H, W), stride 1,
    padding k // 2, `blocks` interleaved-shared blocks, every S-th patch (docs/method.md §2-6)."""
    import torch
    import torch.nn.functional as Fn
    C, Cout = x.shape[1], weight.shape[0]
    G = blocks
    F = k * k * (C // blocks)
    X = Fn.unfold(x, k, dilation=1, padding=k // 2, stride=S).transpose(1, 2).contiguous()
    X = X.view(-1, C * k * k)
    X = X.view(-1, F, G).transpose(1, 2).contiguous().view(-1, F)
    mu = X.mean(0)
    Xc = X - mu.unsqueeze(0)
    cov = torch.addmm(torch.eye(F, dtype=x.dtype), Xc.t(), Xc, beta=eps, alpha=1.0 / Xc.shape[0])
    D = isqrt_newton_schulz(cov, n_iter)
    w = weight.view(Cout, F, G).transpose(1, 2).contiguous().view(-1, F) @ D
    b = bias - (w @ mu.unsqueeze(1)).view(Cout, -1).sum(1)
    w = w.view(Cout, G, F).transpose(1, 2).contiguous().view(weight.shape)
    return w, b, mu, D


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=7, required=True, metavar=("H", "W", "Cin", "Cout", "blocks", "k", "S"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n-iter", type=int, default=5)
    ap.add_argument("--backward", action="store_true", help="time forward + autograd backward")
    args = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    H, W, C, Cout, blocks, k, S = args.shape
    # a matmul first, so that the BLAS library is loaded and can be checked
    torch.ones(64, 64) @ torch.ones(64, 64)
    libs = blas_libraries()
    if not any("openblas" in lib for lib in libs):
        print("torch_reference.py: PyTorch's BLAS is not OpenBLAS: %s" % libs, file=sys.stderr)
        sys.exit(3)

    eps = 1e-5
    x = torch.randn(args.batch, C, H, W) + 0.5
    weight = torch.randn(Cout, C, k, k) / (C * k * k) ** 0.5
    bias = torch.randn(Cout)
    grad_w = torch.randn(Cout, C, k, k)
    grad_b = torch.randn(Cout)
    for t in (x, weight, bias):
        t.requires_grad_(args.backward)

    def statistics_path():
        return reference_statistics(x, weight, bias, k, S, blocks, eps, args.n_iter)[:2]

    def forward_backward():
        for t in (x, weight, bias):
            t.grad = None
        w, b = statistics_path()
        torch.autograd.backward((w, b), (grad_w, grad_b))

    run = forward_backward if args.backward else statistics_path
    with torch.set_grad_enabled(args.backward):
        run()  # warm-up
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    print("TORCH_JSON " + json.dumps({"stats_s": statistics.median(times), "times": times, "threads": torch.get_num_threads(),
                                      "blas": [lib for lib in libs if "openblas" in lib][0], "torch": torch.__version__}))


if __name__ == "__main__":
    main()
