#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Soak test of the PyTorch modules (issue 14), the counterpart of bench/soak.cpp: a small model
trained for --steps steps on random batches, its resident memory sampled, and a run resumed from a
checkpoint compared exactly with the uninterrupted one. A benchmark-style script, not a test.

Model (float32, batch 8 of 3 x 8 x 8 images; the architecture of soak.cpp):
  Deconv2d(3, 10, 3, padding=1, block=3) -> ChannelDeconv(4, channels=10) -> AdaptiveAvgPool2d(1)
  -> Flatten -> DeconvLinear(10, 4, block=5), mean squared error against a random target,
  torch.optim.SGD(lr=0.01, momentum=0.9) (momentum, so that the optimizer has state to resume).
The batch and target of step k come from a generator seeded with k. torch and netdeconv run on
--threads threads.

Run A trains steps [0, steps) and samples RSS (/proc/self/statm) every --every steps; before step
steps/2 it saves torch.save({model, optimizer state_dict}) into an in-memory buffer. Run B, a model
initialised from another seed, loads that buffer and trains steps [steps/2, steps). Their final
parameters, buffers (running statistics, counters) and momentum buffers must be torch.equal, and
every loss after the resume equal.

RSS growth is measured from the sample at --warmup to the last one; the threshold
(--max-growth-kib, 2048 by default) is allocator noise, not a leak: besides glibc's arenas (see
soak.cpp), CPython's object allocator takes memory in 1 MiB arenas and frees an arena only when
all of its objects are gone, so one arena can stay resident for a few surviving objects. A leak of
one 256-byte object per step over the 9,000 steps after the warm-up (2.2 MiB) exceeds it.

Prints `soak-torch: steps=... threads=... rss_first_kib=... rss_start_kib=... rss_end_kib=...
rss_max_kib=... growth_kib=... threshold_kib=... resume_equal=0|1 seconds=...` and writes --csv
(step,rss_kib). Exits 1 if the resumed run differs or RSS grew beyond the threshold.
  soak.py [--steps 10000] [--threads 2] [--every 100] [--warmup 1000] [--max-growth-kib 2048] [--csv FILE]
"""
import argparse
import io
import os
import sys
import time

import torch

import netdeconv
import netdeconv.torch as ndt


def rss_kib():
    """Resident set size in KiB: the second field of /proc/self/statm (pages) times the page size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def make_model(seed):
    """The soak model and its optimizer, weights initialised from seed."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(ndt.Deconv2d(3, 10, 3, padding=1, block=3), ndt.ChannelDeconv(4, channels=10),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), ndt.DeconvLinear(10, 4, block=5))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def batch(k):
    """Batch k: x ~ N(0, 1) (8, 3, 8, 8) and target ~ N(0, 1) (8, 4), from a generator seeded with k."""
    g = torch.Generator().manual_seed(k)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 4, generator=g)


def train_step(model, optimizer, k):
    """One training step on batch k; returns its loss (a 0-d tensor)."""
    x, target = batch(k)
    loss = torch.nn.functional.mse_loss(model(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def state_of(model, optimizer):
    """Name -> tensor: the model's parameters and buffers and the optimizer's momentum buffers."""
    state = dict(model.state_dict())
    for i, s in optimizer.state_dict()["state"].items():
        state[f"momentum_buffer.{i}"] = s["momentum_buffer"]
    return state


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--max-growth-kib", type=int, default=2048)
    p.add_argument("--csv")
    args = p.parse_args()
    if args.steps < 2 or args.every < 1 or args.threads < 1 or not 0 <= args.warmup < args.steps:
        p.error("need steps >= 2, every >= 1, threads >= 1 and 0 <= warmup < steps")
    torch.set_num_threads(args.threads)
    netdeconv.set_num_threads(args.threads)
    resume_at = args.steps // 2
    t0 = time.perf_counter()

    # Run A: uninterrupted, RSS sampled, checkpoint before step resume_at. The losses go into a
    # tensor allocated up front, so that keeping them does not grow the process.
    samples = [(0, rss_kib())]
    losses = torch.empty(args.steps)
    model, optimizer = make_model(1)
    checkpoint = io.BytesIO()
    for k in range(args.steps):
        if k == resume_at:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
        losses[k] = train_step(model, optimizer, k)
        if (k + 1) % args.every == 0 or k + 1 == args.steps:
            samples.append((k + 1, rss_kib()))

    # Run B: a model from another seed, restored from the checkpoint, to the same end.
    resumed, resumed_optimizer = make_model(2)
    checkpoint.seek(0)
    saved = torch.load(checkpoint)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_losses = torch.stack([train_step(resumed, resumed_optimizer, k) for k in range(resume_at, args.steps)])
    final, final_resumed = state_of(model, optimizer), state_of(resumed, resumed_optimizer)
    differing = [name for name in final
                 if name not in final_resumed or not torch.equal(final[name], final_resumed[name])]
    for name in differing:
        print(f"soak: resumed run differs in {name}")
    losses_equal = torch.equal(losses[resume_at:], resumed_losses)
    if not losses_equal:
        print("soak: resumed run's losses differ")
    resume_equal = losses_equal and not differing and final.keys() == final_resumed.keys()
    seconds = time.perf_counter() - t0

    start = [kib for step, kib in samples if step <= args.warmup][-1]
    peak = max(kib for step, kib in samples if step >= args.warmup)
    end = samples[-1][1]
    growth = end - start
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("step,rss_kib\n")
            f.writelines(f"{step},{kib}\n" for step, kib in samples)
    window = min(100, resume_at)
    print(f"soak-torch: mean loss of the first {window} steps {losses[:window].mean():.4f}, of the last {window} "
          f"{losses[-window:].mean():.4f}; resumed at step {resume_at}; {len(final)} tensors compared")
    print(f"soak-torch: steps={args.steps} threads={args.threads} warmup={args.warmup} rss_first_kib={samples[0][1]} "
          f"rss_start_kib={start} rss_end_kib={end} rss_max_kib={peak} growth_kib={growth} "
          f"threshold_kib={args.max_growth_kib} resume_equal={int(resume_equal)} seconds={seconds:.1f}")
    return 0 if resume_equal and growth <= args.max_growth_kib else 1


if __name__ == "__main__":
    sys.exit(main())
