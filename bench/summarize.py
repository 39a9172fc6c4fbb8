#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Markdown tables of the issue's targets from the benchmark outputs in a results folder.
  summarize.py bench/results"""
import json
import math
import os
import sys

d = sys.argv[1]


def lines(name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return []
    return [json.loads(l[len("BENCH_JSON "):]) for l in open(path) if l.startswith("BENCH_JSON ")]


rows = lines("statistics_step.txt")
if rows:
    at = "at batch %d" % rows[0]["memory_batch"] if rows[0]["memory_batch"] > 0 else "at --memory-batch (not run)"
    print("| shape (H,W,C,Co,blk,k,S) | F | G | cov GFLOP/s | %% sgemm peak | syrk/ours | min(gemm,syrk)/ours | x read GB/s | isqrt / 15 sgemm | torch/ours stats | peak extra MiB (batch %d) | %s |"
          % (rows[0]["batch"], at))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for r in rows:
    s = ",".join(str(v) for v in r["shape"])
    torch = r["torch_ref_stats_s"]
    ratio = torch / r["ours_stats_s"] if torch else float("nan")
    if torch:
        ratios.append(ratio)
    mb = r["peak_extra_bytes_memory_batch"]
    print("| (%s) | %d | %d | %.1f | %.0f %% | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %s |" % (
        s, r["F"], r["G"], r["useful_gflops_cov"], 100 * r["useful_gflops_cov"] / r["sgemm_peak_gflops"],
        r["openblas_syrk_s"] / r["ours_cov_s"], min(r["openblas_syrk_s"], r["openblas_gemm_s"]) / r["ours_cov_s"],
        r["x_read_gbps"], r["ours_isqrt_s"] / r["openblas_isqrt15_s"], ratio, r["peak_extra_bytes"] / 2**20,
        "%.1f" % (mb / 2**20) if mb >= 0 else "-"))
if rows:
    print()
    print("sgemm peak (same run): %.1f GFLOP/s; memory read bandwidth: %.1f GB/s; geometric mean torch/ours: %.2f"
          % (rows[0]["sgemm_peak_gflops"], rows[0]["mem_read_gbps"], math.exp(sum(map(math.log, ratios)) / len(ratios))))
bw = lines("statistics_step_vjp.txt")
if bw:
    print()
    print("Forward + backward (batch %d, %d threads): ours = conv_statistics_step + conv_statistics_step_vjp (par); "
          "the backward's parts; PyTorch autograd through the reference statistics; peak extra heap memory."
          % (bw[0]["batch"], bw[0]["threads"]))
    print()
    print("Columns marked ' are the same step from the public pieces with the forward's covariance kept for the backward.")
    print()
    print("| shape (H,W,C,Co,blk,k,S) | F | G | fwd s | bwd s | bwd: moments | isqrt vjp | weight | scatter | fwd' s | bwd' s | torch s | torch/ours | torch/ours' | fwd MiB | bwd MiB | bwd/fwd memory | bwd'/fwd memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    xs, xss = [], []
    for r in bw:
        torch = r["torch_ref_fwd_bwd_s"]
        x = torch / (r["ours_forward_s"] + r["ours_backward_s"]) if torch else float("nan")
        xsv = torch / (r["ours_saved_forward_s"] + r["ours_saved_backward_s"]) if torch else float("nan")
        if torch:
            xs.append(x)
            xss.append(xsv)
        fwd = max(1, r["peak_extra_forward_bytes"])
        print("| (%s) | %d | %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.2f | %.2f | %.1f | %.1f | %.2f | %.2f |" % (
            ",".join(str(v) for v in r["shape"]), r["F"], r["G"], r["ours_forward_s"], r["ours_backward_s"],
            r["ours_bwd_moments_s"], r["ours_bwd_isqrt_s"], r["ours_bwd_weight_s"], r["ours_bwd_scatter_s"],
            r["ours_saved_forward_s"], r["ours_saved_backward_s"], torch or float("nan"), x, xsv,
            r["peak_extra_forward_bytes"] / 2**20, r["peak_extra_backward_bytes"] / 2**20,
            r["peak_extra_backward_bytes"] / fwd, r["peak_extra_saved_backward_bytes"] / fwd))
    if xs:
        print()
        print("geometric mean torch/ours (forward + backward): %.2f, smallest %.2f; with the covariance kept: %.2f, smallest %.2f" % (
            math.exp(sum(map(math.log, xs)) / len(xs)), min(xs), math.exp(sum(map(math.log, xss)) / len(xss)), min(xss)))
iq = lines("inverse_sqrt.txt")
if iq:
    print()
    print("| F | steps | threads | ours s | without final residual s | seq s | 3n OpenBLAS sgemm s | ours / sgemms | without residual / sgemms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in iq:
        print("| %d | %d | %d | %.5f | %.5f | %.5f | %.5f | %.2f | %.2f |" % (
            r["F"], r["iterations"], r["threads"], r["ours_s"], r["ours_no_residual_s"], r["seq_s"],
            r["openblas_gemms_s"], r["ratio"], r["ratio_no_residual"]))
cv = lines("covariance.txt")
if cv:
    print()
    print("| shape | GFLOP | 1 thread s | %d threads s | speedup |" % cv[0]["threads"])
    print("|---|---|---|---|---|")
    for r in cv:
        print("| (%s) | %.1f | %.4f | %.4f | %.2f |" % (",".join(str(v) for v in r["shape"]), r["gflop"], r["t1_s"], r["tN_s"], r["speedup"]))
