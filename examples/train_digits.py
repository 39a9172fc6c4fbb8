# SPDX-License-Identifier: MIT
"""Train a small CNN on scikit-learn's digits three ways: BatchNorm, network deconvolution, neither.

The same CNN for the 8x8 grey images (1797 of them, 10 classes) is trained with

- ``batchnorm``: Conv2d + BatchNorm2d + ReLU for each conv, a plain Linear classifier;
- ``deconv``: Deconv2d + ReLU for each conv (the first one too, as Ye et al. do; no BatchNorm) and a
  DeconvLinear classifier;
- ``plain``: Conv2d + ReLU, a plain Linear classifier.

Network: conv 1->16, conv 16->32, 2x2 max pool, conv 32->32 (all 3x3, padding 1, with a bias), a
global average pool and a 32->10 classifier. At a given seed the three variants start from the same
weights (the deconvolution layers are Conv2d/Linear subclasses, initialised the same way) and see the
same batches. Training: SGD, momentum 0.9, no weight decay, batch 64 (21 full batches an epoch; the 3
images left over are dropped), cross entropy, float32, no augmentation, on a fixed stratified split
(seed 0) of 1347 training and 450 test images, pixels standardised with the training set's mean and
standard deviation. Train loss and accuracy are the averages over the epoch's batches (train mode,
while the weights change); the test loss and accuracy are measured after each epoch in eval() mode, so
BatchNorm's and deconvolution's running statistics are the ones used. ``seconds`` is the wall time of
an epoch's training pass, ``eval_seconds`` that of the test evaluation.

No data set is downloaded: load_digits reads the copy inside the scikit-learn package. No installed
package (this venv and /usr/lib/python3/dist-packages: scikit-learn, scipy, matplotlib, torch without
torchvision) ships a larger labelled image data set: scikit-learn's other image sets (Olivetti faces,
LFW) and torchvision's MNIST/CIFAR are downloads, scipy.misc's face/ascent and scikit-learn's
china/flower are single unlabelled photographs. So digits is the only data set here.

Run (from the repository root)::

    .venv/bin/python examples/train_digits.py            # the default run: 3 methods x 3 lrs x 3 seeds
    .venv/bin/python examples/train_digits.py --quick    # smoke test: 1 seed, 2 epochs, lr 0.05

Options: --epochs, --lrs, --seeds, --threads (torch and netdeconv threads, default 2), --out (default
demo-output/train_digits/, demo-output/train_digits_quick/ with --quick). Output in --out:
``history.csv`` (one row per method, lr, seed and epoch), ``curves.png`` (train loss and test accuracy
per epoch, one panel per lr, mean over the seeds with a min-max band), ``summary.txt`` (the table
printed at the end) and ``run.json`` (CPU model, versions, threads, arguments).

What it showed (default run: 15 epochs, lrs 0.01 0.05 0.2, seeds 0 1 2, 2 threads, AMD EPYC (2 cores),
torch 1.13, netdeconv 0.1.0 avx2; its output is in bench/results/training/)::

    method       lr   final test acc  best epoch (acc) mean s/ep median s/ep median/BN
    batchnorm  0.01    0.9911±0.0036       14 (0.9926)     3.008       0.132      1.00
    deconv     0.01    0.9904±0.0028       13 (0.9948)    10.681       0.895      6.78
    plain      0.01    0.6874±0.0540       15 (0.6874)     0.100       0.097      0.74
    batchnorm  0.05    0.9926±0.0028       14 (0.9956)     0.122       0.119      1.00
    deconv     0.05    0.9963±0.0010       14 (0.9970)     0.794       0.770      6.45
    plain      0.05    0.9793±0.0028       14 (0.9793)     0.088       0.082      0.69
    batchnorm   0.2    0.9956±0.0018       10 (0.9956)     0.096       0.092      1.00
    deconv      0.2    0.9933±0.0031        6 (0.9963)     0.696       0.676      7.38
    plain       0.2    0.9563±0.0448       12 (0.9696)     0.073       0.072      0.79

- Early epochs: deconvolution learns much faster. Mean test accuracy after epoch 1 / 3 is 0.92 / 0.98
  (deconv), 0.37 / 0.83 (BatchNorm), 0.10 / 0.11 (plain) at lr 0.01; 0.95 / 0.99, 0.64 / 0.97,
  0.13 / 0.31 at lr 0.05; 0.72 / 0.97, 0.66 / 0.91, 0.19 / 0.29 at lr 0.2.
- After 15 epochs deconvolution and BatchNorm are level: 0.990 against 0.991 (lr 0.01), 0.996 against
  0.993 (lr 0.05), 0.993 against 0.996 (lr 0.2). The differences are one or two of the 450 test images,
  within the spread over the seeds. BatchNorm reaches a lower training loss, from epoch 5 at lr 0.05
  and 0.2 and epoch 11 at lr 0.01 (at epoch 15, 6e-4 against 6e-3 at lr 0.2), with no better test
  accuracy. Without either, the net is slow at lr 0.01 (0.69 after 15 epochs) and still behind at 0.05
  and 0.2 (0.979, 0.956, the latter with a wide spread).
- Cost: a deconvolution epoch takes 6.5 to 7.4 times as long as a BatchNorm one (median seconds). Most
  of it is the third conv, whose 32 input channels give one 288x288 patch covariance and inverse square
  root per batch. BatchNorm costs 1.3 to 1.45 times the plain net.
- With the 3 leftover images kept as a last batch (tried once), BatchNorm's final test accuracy at
  lr 0.05 and 0.2 fell to 0.959 and 0.940: that batch's statistics go into the running ones just
  before each evaluation. Deconvolution stayed at 0.988 and 0.987.
- Wall time: the run took 714 s because other jobs were using the machine; for its first 8 minutes
  every method's epochs were 50 to 80 times slower than usual (so the means at lr 0.01 are off). From
  the median epoch times an idle machine takes about 150 s for the whole default run, and about 6 s
  for --quick. On a busy machine --threads 1 may do better (not measured).
"""
import argparse
import csv
import json
import platform
import subprocess
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import netdeconv
from netdeconv.torch import Deconv2d, DeconvLinear

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

METHODS = ("batchnorm", "deconv", "plain")
COLUMNS = ("method", "lr", "seed", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
           "eval_seconds")
BATCH = 64


def load_data():
    """Fixed stratified split: x (N, 1, 8, 8) float32 standardised with the training set, y (N,) int64."""
    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target.astype(np.int64)  # (1797, 8, 8), (1797,)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = ((torch.from_numpy(a)[:, None] - mean) / std for a in (x_train, x_test))
    return x_train, torch.from_numpy(y_train), x_test, torch.from_numpy(y_test)


def conv_block(method, cin, cout):
    """(N, cin, H, W) -> (N, cout, H, W)."""
    if method == "deconv":
        return nn.Sequential(Deconv2d(cin, cout, 3, padding=1), nn.ReLU())
    if method == "batchnorm":
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


def make_model(method):
    """x (N, 1, 8, 8) -> logits (N, 10)."""
    classifier = DeconvLinear(32, 10) if method == "deconv" else nn.Linear(32, 10)
    return nn.Sequential(
        conv_block(method, 1, 16),   # (N, 1, 8, 8) -> (N, 16, 8, 8)
        conv_block(method, 16, 32),  # -> (N, 32, 8, 8)
        nn.MaxPool2d(2),             # -> (N, 32, 4, 4)
        conv_block(method, 32, 32),  # -> (N, 32, 4, 4)
        nn.AdaptiveAvgPool2d(1),     # -> (N, 32, 1, 1)
        nn.Flatten(),                # -> (N, 32)
        classifier,                  # -> (N, 10) logits
    )


def train_epoch(model, optimizer, x, y, generator):
    """One pass over x (N, 1, 8, 8) in shuffled full batches (the last partial one is dropped):
    (mean loss, accuracy, seconds)."""
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=generator)
    batches = len(x) // BATCH
    loss_sum, correct = 0.0, 0
    for i in range(batches):
        idx = order[i * BATCH:(i + 1) * BATCH]
        logits = model(x[idx])  # (BATCH, 10)
        loss = Fn.cross_entropy(logits, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        correct += (logits.argmax(1) == y[idx]).sum().item()
    return loss_sum / batches, correct / (batches * BATCH), time.perf_counter() - start


@torch.no_grad()
def evaluate(model, x, y):
    """(loss, accuracy, seconds) on the whole of x (N, 1, 8, 8) in eval mode."""
    model.eval()
    start = time.perf_counter()
    logits = model(x)  # (N, 10)
    loss = Fn.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).float().mean().item(), time.perf_counter() - start


def run_one(method, lr, seed, epochs, data, writer):
    """Train one model; write and print a row per epoch; returns the rows."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(method)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for epoch in range(1, epochs + 1):
        train_loss, train_acc, seconds = train_epoch(model, optimizer, x_train, y_train, generator)
        test_loss, test_acc, eval_seconds = evaluate(model, x_test, y_test)
        row = dict(method=method, lr=lr, seed=seed, epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                   test_loss=test_loss, test_acc=test_acc, seconds=seconds, eval_seconds=eval_seconds)
        writer.writerow(row)
        rows.append(row)
        print(f"{method:9s} lr={lr:<5g} seed={seed} epoch={epoch:3d} loss={train_loss:.4f} "
              f"test_acc={test_acc:.4f} {seconds:.2f}s", flush=True)
    return rows


def curves(rows, method, lr, key):
    """(seeds, epochs) array of one column."""
    runs = {}
    for r in rows:
        if r["method"] == method and r["lr"] == lr:
            runs.setdefault(r["seed"], []).append(r[key])
    return np.array([runs[s] for s in sorted(runs)])


def plot(rows, lrs, path):
    """Train loss (top) and test accuracy (bottom), a column per lr: mean over seeds, min-max band."""
    fig, axes = plt.subplots(2, len(lrs), figsize=(max(6.0, 4.5 * len(lrs)), 7), squeeze=False, sharex=True)
    for col, lr in enumerate(lrs):
        for method in METHODS:
            for ax, key in zip(axes[:, col], ("train_loss", "test_acc")):
                values = curves(rows, method, lr, key)  # (seeds, epochs)
                epochs = np.arange(1, values.shape[1] + 1)
                line, = ax.plot(epochs, values.mean(0), label=method)
                ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        axes[0, col].set(title=f"lr {lr:g}", yscale="log", ylabel="train loss")
        axes[1, col].set(xlabel="epoch", ylabel="test accuracy")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend()
    fig.suptitle("digits, SGD momentum 0.9: mean over seeds, min-max band")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(rows, lrs):
    """The table: final test accuracy mean±std over seeds, the epoch of the best mean test accuracy, the
    mean and median training seconds per epoch, and the median's ratio to BatchNorm's (the median is
    not thrown off by epochs slowed by other work on the machine)."""
    lines = [f"{'method':9s} {'lr':>5s} {'final test acc':>16s} {'best epoch (acc)':>17s} {'mean s/ep':>9s} "
             f"{'median s/ep':>11s} {'median/BN':>9s}"]
    for lr in lrs:
        median = {m: np.median(curves(rows, m, lr, "seconds")) for m in METHODS}
        for method in METHODS:
            acc = curves(rows, method, lr, "test_acc")  # (seeds, epochs)
            mean = acc.mean(0)
            best = int(mean.argmax())
            final = f"{acc[:, -1].mean():.4f}±{acc[:, -1].std():.4f}"
            lines.append(f"{method:9s} {lr:5g} {final:>16s} {f'{best + 1} ({mean[best]:.4f})':>17s} "
                         f"{curves(rows, method, lr, 'seconds').mean():9.3f} {median[method]:11.3f} "
                         f"{median[method] / median['batchnorm']:9.2f}")
    return "\n".join(lines)


def cpu_model():
    """lscpu's model name."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="output directory (default demo-output/train_digits/, "
                        "train_digits_quick/ with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, lr 0.05")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.lrs, args.seeds = 2, [0.05], [0]
    if args.out is None:
        args.out = Path(__file__).resolve().parent.parent / "demo-output" / (
            "train_digits_quick" if args.quick else "train_digits")
    args.out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    netdeconv.set_num_threads(args.threads)
    info = dict(cpu=cpu_model(), torch=torch.__version__, netdeconv=netdeconv.__version__,
                netdeconv_build=netdeconv.build_info(), threads=args.threads,
                torch_threads=torch.get_num_threads(), netdeconv_threads=netdeconv.get_num_threads(),
                epochs=args.epochs, lrs=args.lrs, seeds=args.seeds, batch=BATCH)
    (args.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))

    data = load_data()
    rows = []
    start = time.perf_counter()
    with open(args.out / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for lr in args.lrs:
            for seed in args.seeds:
                for method in METHODS:
                    rows += run_one(method, lr, seed, args.epochs, data, writer)
    total = time.perf_counter() - start

    plot(rows, args.lrs, args.out / "curves.png")
    table = summary(rows, args.lrs)
    (args.out / "summary.txt").write_text(table + "\n")
    print(table)
    print(f"total {total:.1f} s; output in {args.out}")


if __name__ == "__main__":
    main()
