# SPDX-License-Identifier: MIT
"""netdeconv.torch with sync=True under DistributedDataParallel on the gloo backend (2 and 4
processes over localhost, uneven shards, a process with an empty batch): per step, the outputs,
dL/dx, the parameter gradients and the running statistics equal one process's on the whole batch,
1e-10 relative in float64 (the same float64 sums in another order), over two SGD steps."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

ndt = pytest.importorskip("netdeconv.torch")
STEPS = 2


def _model(sync, half=False):
    """float64 (float32 for bfloat16 inputs) deconvolution layers."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        ndt.Deconv2d(3, 6, 3, block=3, sampling_stride=2, sync=sync), torch.nn.ReLU(),
        ndt.Deconv2d(6, 4, 3, stride=2, groups=2, sampling_stride=1, sync=sync), torch.nn.Flatten(),
        ndt.DeconvLinear(4 * 3 * 3, 5, block=12, sync=sync))
    return model if half else model.double()


def _batches(total):
    gen = torch.Generator().manual_seed(11)
    return [(torch.rand(total, 3, 6, 6, generator=gen, dtype=torch.float64) + 0.5,
             torch.randn(total, 5, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model, batches, rows, lr, half=False):
    """STEPS SGD steps on rows of each batch (loss: sum of y * g): outputs, dL/dx, grads, buffers.
    half: x in bfloat16 and the forward under autocast."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for x, g in batches:
        x = (x[rows].bfloat16() if half else x[rows].clone()).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            y = model(x)
        (y.double() * g[rows]).sum().backward()
        out.append(dict(y=y.detach().double(), dx=x.grad.double(), grads=[p.grad.clone() for p in model.parameters()],
                        buffers={k: v.clone() for k, v in getattr(model, "module", model).state_dict().items()
                                 if "running" in k}))
        opt.step()
        opt.zero_grad()
    return out


def _worker(rank, world, port, shards, path, half):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import netdeconv
    netdeconv.set_num_threads(1)
    first = sum(shards[:rank])
    model = DistributedDataParallel(_model(sync=True, half=half))
    # DDP averages the parameter gradients over the processes: lr * world makes its SGD step the sum's
    out = _train(model, _batches(sum(shards)), slice(first, first + shards[rank]), lr=0.05 * world, half=half)
    torch.save(out, os.path.join(path, f"{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("shards,half", [([3, 5], False), ([2, 0, 4, 1], False), ([3, 0, 2], True)],
                         ids=["2-uneven", "4-with-empty", "3-bfloat16-with-empty"])
def test_ddp_with_sync_equals_one_process_on_the_whole_batch(tmp_path, shards, half):
    """float64: every step at 1e-10. bfloat16 under autocast (float32 statistics, bfloat16 convs):
    the first step only, since the shards' and the whole batch's bfloat16 products round differently
    (the shards' dL/dW partials are rounded to bfloat16 before they are summed) and the SGD step
    amplifies that; y is equal (seen: 0), dL/dx and dL/dW within 3e-2 (seen: 1.0e-2, 1.5e-2), the
    float32 running statistics within 1e-6 (seen: 1.1e-7)."""
    from conftest import rel
    world = len(shards)
    mp.spawn(_worker, args=(world, _free_port(), shards, str(tmp_path), half), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    whole = _train(_model(sync=False, half=half), _batches(sum(shards)), slice(None), lr=0.05, half=half)
    tol, state_tol = (3e-2, 1e-6) if half else (1e-10, 1e-10)
    for step, ref in enumerate(whole[:1] if half else whole):
        got = [r[step] for r in ranks]
        assert rel(torch.cat([g["y"] for g in got]), ref["y"]) <= tol, step
        assert rel(torch.cat([g["dx"] for g in got]), ref["dx"]) <= tol, step
        for r in got:
            for a, b in zip(r["grads"], ref["grads"]):
                assert rel(a * world, b) <= tol, step
            for k, v in ref["buffers"].items():
                assert rel(r["buffers"][k], v) <= state_tol, (step, k)


def test_sync_needs_an_initialised_process_group():
    m = ndt.Deconv2d(3, 4, 3, sync=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        m(torch.rand(2, 3, 6, 6))
    assert int(m.counters[0]) == 0  # the failed step changed nothing


def test_message_sizes():
    m = ndt.Deconv2d(64, 64, 3, sync=True)  # S = 1 statistic of F = 576 features
    S, F = m.running_mean.shape
    forward, backward = m._hook.message_elements(S, F)
    assert (forward, backward) == (1 + 576 + 576 * 577 // 2, 576 + 576 * 577 // 2)
