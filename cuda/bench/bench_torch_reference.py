#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""PyTorch baseline for bench_cuda_statistics, in the same run: for each docs/method.md §9 row, time the
reference layer's covariance (F.unfold of the sampled input + torch.addmm of the blocked patch
matrix) on the GPU, run the netdeconv binary on the same shape and print the ratio.

    python3 cuda/bench/bench_torch_reference.py build-cuda/cuda/bench_cuda_statistics [batch=8] [reps=20]
"""
import re
import subprocess
import sys

import torch
import torch.nn.functional as F

ROWS = [(256, 256, 3, 64, 1, 3, 3), (128, 128, 64, 128, 1, 3, 3), (64, 64, 128, 256, 2, 3, 3),
        (32, 32, 256, 512, 4, 3, 3), (16, 16, 512, 512, 8, 3, 3), (128, 128, 64, 128, 64, 3, 3),
        (64, 64, 128, 256, 128, 3, 3), (32, 32, 256, 512, 256, 3, 3), (16, 16, 512, 512, 512, 3, 3),
        (128, 128, 64, 128, 32, 3, 3), (256, 256, 3, 64, 1, 3, 5), (128, 128, 64, 128, 1, 3, 5),
        (256, 256, 3, 64, 1, 7, 3), (256, 256, 3, 64, 1, 7, 5), (256, 256, 3, 64, 1, 11, 3)]


def torch_cov_ms(N, H, W, C, blocks, k, S, reps):
    x = torch.randn(N, C, H, W, device="cuda")
    B = C // blocks

    def step():
        # the reference layer: unfold with stride S, view as (-1, F) blocks, centre, addmm
        X = F.unfold(x, k, padding=k // 2, stride=S).transpose(1, 2).reshape(-1, C * k * k)
        X = X.reshape(-1, k * k * B) if blocks > 1 else X
        mean = X.mean(0)
        Xc = X - mean
        cov = torch.addmm(torch.eye(Xc.shape[1], device="cuda") * 1e-5, Xc.t(), Xc, alpha=1.0 / Xc.shape[0])
        return cov

    step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    binary = sys.argv[1]
    N = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, batch {N}")
    print(f"{'row':28s} {'torch ms':>10s} {'netdeconv ms':>12s} {'speed-up':>9s}")
    for i, (H, W, C, Cout, blocks, k, S) in enumerate(ROWS):
        t_torch = torch_cov_ms(N, H, W, C, blocks, k, S, reps)
        out = subprocess.run([binary, str(N), str(reps), str(i)], capture_output=True, text=True, check=True).stdout
        t_nd = float(re.search(r"bench_row \d+ cov_ms ([0-9.]+)", out).group(1))
        print(f"{str((H, W, C, Cout, blocks, k, S)):28s} {t_torch:10.3f} {t_nd:12.3f} {t_torch / t_nd:9.2f}")


if __name__ == "__main__":
    main()
