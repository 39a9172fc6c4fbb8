#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""One training step (forward + backward) of a conv layer in PyTorch, three ways, in one run:

  bn         nn.Conv2d + nn.BatchNorm2d (training mode), what a user swaps out
  reference  the reference deconvolution layer in pure PyTorch (ReferenceDeconv2d below: the
             statistics of bench/torch_reference.py, the running averages, conv2d with W', b')
  netdeconv  netdeconv.torch.Deconv2d (native statistics step and backward)
  conv       nn.Conv2d alone (--floor): the conv that all three run, a floor under each

on the layer shapes of docs/method.md §9 (H, W, Cin, Cout, blocks, k, S), float32, stride 1,
padding k // 2. A step is y = layer(x), then autograd's backward of sum(y * g) into x, W and b (x
requires grad, as in a middle layer). Each repetition runs the three in a rotating order; the
table gives medians, and the ratios reference / netdeconv and netdeconv / bn. Peak memory: a fresh
subprocess per (shape, batch, method) builds the layer and the data and reports how far the peak
resident set rises above that during one step (VmHWM, reset before it).

Threads: torch.set_num_threads and netdeconv.set_num_threads (--threads, default 2); PyTorch's
BLAS is whatever it links (printed). Prints a table per batch and `RESULT {json}` per case.

  .venv/bin/python bench/bench_torch.py [--batches 16 128] [--shapes all|I,J,..] [--reps 3] [--no-peak] [--floor]
  .venv/bin/python bench/bench_torch.py --plot OUT.png RESULTS.txt   # step times and peak memory of a run
"""
import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as Fn

import netdeconv
import netdeconv.torch as ndt

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_reference import blas_libraries, reference_statistics  # noqa: E402

# docs/method.md §9: (H, W, Cin, Cout, channel blocks, k, S)
SHAPES = [(256, 256, 3, 64, 1, 3, 3), (128, 128, 64, 128, 1, 3, 3), (64, 64, 128, 256, 2, 3, 3),
          (32, 32, 256, 512, 4, 3, 3), (16, 16, 512, 512, 8, 3, 3), (128, 128, 64, 128, 64, 3, 3),
          (64, 64, 128, 256, 128, 3, 3), (32, 32, 256, 512, 256, 3, 3), (16, 16, 512, 512, 512, 3, 3),
          (128, 128, 64, 128, 32, 3, 3), (256, 256, 3, 64, 1, 3, 5), (128, 128, 64, 128, 1, 3, 5),
          (256, 256, 3, 64, 1, 7, 3), (256, 256, 3, 64, 1, 7, 5), (256, 256, 3, 64, 1, 11, 3)]
METHODS = ["bn", "reference", "netdeconv"]
FLOOR = "conv"


class ReferenceDeconv2d(torch.nn.Conv2d):
    """The reference layer's training forward in pure PyTorch (stride 1, padding k // 2, groups 1):
    reference_statistics, the running mean and D averaged with momentum 0.1, conv2d with W', b'."""

    def __init__(self, cin, cout, k, blocks, sampling_stride, eps=1e-5, n_iter=5):
        super().__init__(cin, cout, k, padding=k // 2)
        self.blocks, self.sampling_stride, self.eps, self.n_iter = blocks, sampling_stride, eps, n_iter
        F = k * k * (cin // blocks)
        self.register_buffer("running_mean", torch.zeros(F))
        self.register_buffer("running_deconv", torch.eye(F))

    def forward(self, x):
        w, b, mu, D = reference_statistics(x, self.weight, self.bias, self.kernel_size[0], self.sampling_stride,
                                           self.blocks, self.eps, self.n_iter)
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * mu)
            self.running_deconv.mul_(0.9).add_(0.1 * D)
        return Fn.conv2d(x, w, b, padding=self.padding)


def make(method, shape):
    H, W, cin, cout, blocks, k, S = shape
    torch.manual_seed(0)
    if method == "bn":
        return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, padding=k // 2), torch.nn.BatchNorm2d(cout))
    if method == FLOOR:
        return torch.nn.Conv2d(cin, cout, k, padding=k // 2)
    if method == "reference":
        return ReferenceDeconv2d(cin, cout, k, blocks, S)
    return ndt.Deconv2d(cin, cout, k, padding=k // 2, block=cin // blocks, sampling_stride=S)


def inputs(shape, batch):
    H, W, cin, cout, blocks, k, S = shape
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, cin, H, W, generator=gen) + 0.5).requires_grad_(True)
    g = torch.randn(batch, cout, H, W, generator=gen)
    return x, g


def step(layer, x, g):
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    (layer(x) * g).sum().backward()


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_mode(args):
    """One case in this fresh process: how far the first step's peak resident set (VmHWM, reset
    through /proc/self/clear_refs) rises above the resident set of the layer, x and g, in MiB. (A
    second step would reuse memory the allocator kept from the first and show less.)"""
    shape, method = SHAPES[args.peak_shape], args.peak_method
    torch.set_num_threads(args.threads)
    netdeconv.set_num_threads(args.threads)
    layer = make(method, shape)
    x, g = inputs(shape, args.peak_batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_kib("VmRSS")
    step(layer, x, g)
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - before) / 1024}))


def peak(args, index, batch, method):
    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--peak-shape", str(index),
                          "--peak-batch", str(batch), "--peak-method", method], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def plot(results, out):
    """Bars of the step times (left) and peak memory (right) per shape of a run's RESULT lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line[len("RESULT "):]) for line in open(results) if line.startswith("RESULT ")]
    labels = [f"{r['shape'][0]}x{r['shape'][2]}-{r['shape'][3]} b{r['shape'][4]} k{r['shape'][5]} S{r['shape'][6]}"
              for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 1.5), sharey=True)
    y = range(len(rows))
    for k, m in enumerate(METHODS):
        off = [v + (k - 1) * 0.27 for v in y]
        axes[0].barh(off, [r["median_s"][m] for r in rows], height=0.27, label=m)
        axes[1].barh(off, [r["peak_mib"][m] or 0 for r in rows], height=0.27, label=m)
    axes[0].set_yticks(list(y), labels)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("forward + backward step (s, median)")
    axes[1].set_xlabel("peak memory of a step (MiB)")
    axes[0].legend()
    fig.suptitle(f"one training step, batch {rows[0]['batch']}, float32, {rows[0]['threads']} threads")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[16])
    ap.add_argument("--shapes", default="all", help="'all' or comma-separated indices into SHAPES")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peak", action="store_true")
    ap.add_argument("--floor", action="store_true", help="also time nn.Conv2d alone (RESULT median_s.conv)")
    ap.add_argument("--plot", nargs=2, metavar=("OUT", "RESULTS"), help="plot a run's RESULT lines and exit")
    ap.add_argument("--peak-shape", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peak-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peak-method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_method:
        return peak_mode(args)
    if args.plot:
        return plot(args.plot[1], args.plot[0])
    torch.set_num_threads(args.threads)
    netdeconv.set_num_threads(args.threads)
    torch.ones(64, 64) @ torch.ones(64, 64)  # loads the BLAS library, for blas_libraries()
    indices = range(len(SHAPES)) if args.shapes == "all" else [int(i) for i in args.shapes.split(",")]
    methods = METHODS + [FLOOR] if args.floor else METHODS
    print(f"CPU: {cpu_model()} ({platform.machine()}); torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"netdeconv {netdeconv.build_info()['version']} ({netdeconv.build_info()['isa']}) with "
          f"{netdeconv.get_num_threads()} threads; BLAS: {', '.join(blas_libraries())}")
    for batch in args.batches:
        print(f"\nbatch {batch}: one forward + backward step, float32, median of {args.reps} (s); peak MiB")
        print(f"{'H W Cin Cout blocks k S':<30} {'bn':>8} {'reference':>10} {'netdeconv':>10} {'ref/nd':>7} {'nd/bn':>6}"
              f"  {'peak bn/ref/nd':>18}")
        for index in indices:
            shape = SHAPES[index]
            layers = {m: make(m, shape) for m in methods}
            x, g = inputs(shape, batch)
            times = {m: [] for m in methods}
            for m in methods:
                step(layers[m], x, g)  # warm-up
            for rep in range(args.reps):
                for m in methods[rep % len(methods):] + methods[:rep % len(methods)]:
                    t0 = time.perf_counter()
                    step(layers[m], x, g)
                    times[m].append(time.perf_counter() - t0)
            del layers, x, g
            med = {m: statistics.median(v) for m, v in times.items()}
            mem = {m: None for m in METHODS} if args.no_peak else {m: peak(args, index, batch, m) for m in METHODS}
            ratio_ref, ratio_bn = med["reference"] / med["netdeconv"], med["netdeconv"] / med["bn"]
            mems = "/".join("-" if v is None else f"{v:.0f}" for v in mem.values())
            floor = f"  conv {med[FLOOR]:.3f}" if FLOOR in med else ""
            print(f"{' '.join(map(str, shape)):<30} {med['bn']:8.3f} {med['reference']:10.3f} {med['netdeconv']:10.3f} "
                  f"{ratio_ref:7.2f} {ratio_bn:6.2f}  {mems:>18}{floor}", flush=True)
            print("RESULT " + json.dumps({"shape": shape, "batch": batch, "median_s": med, "times": times,
                                          "reference_over_netdeconv": ratio_ref, "netdeconv_over_bn": ratio_bn,
                                          "peak_mib": mem, "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
