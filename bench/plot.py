#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Plot of bench_statistics_step's BENCH_JSON lines: per docs/method.md §9 shape, time of ours against the baselines.
  plot.py statistics_step.txt out.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(l[len("BENCH_JSON "):]) for l in open(sys.argv[1]) if l.startswith("BENCH_JSON ")]
labels = ["(%s)" % ",".join(str(v) for v in r["shape"]) for r in rows]
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 9), sharex=True)
x = range(len(rows))
w = 0.2
series1 = [("ours: fused im2col+covariance", "ours_cov_s"), ("OpenBLAS ssyrk (pre-built X)", "openblas_syrk_s"),
           ("OpenBLAS sgemm (pre-built X)", "openblas_gemm_s")]
for i, (name, key) in enumerate(series1):
    ax1.bar([v + (i - 1) * w for v in x], [r[key] for r in rows], w, label=name)
ax1.set_yscale("log")
ax1.set_ylabel("covariance time (s)")
ax1.legend(fontsize=8)
series2 = [("ours: whole statistics path", "ours_stats_s"), ("ours: inverse sqrt", "ours_isqrt_s"),
           ("OpenBLAS 15 sgemm (F^3)", "openblas_isqrt15_s"), ("PyTorch reference statistics path", "torch_ref_stats_s")]
for i, (name, key) in enumerate(series2):
    ax2.bar([v + (i - 1.5) * w for v in x], [r[key] or 0 for r in rows], w, label=name)
ax2.set_yscale("log")
ax2.set_ylabel("time (s)")
ax2.legend(fontsize=8)
ax2.set_xticks(list(x))
ax2.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
r0 = rows[0]
fig.suptitle("netdeconv statistics path vs baselines, batch %d, %d threads (shape = H,W,Cin,Cout,blocks,k,S)"
             % (r0["batch"], r0["threads"]))
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
