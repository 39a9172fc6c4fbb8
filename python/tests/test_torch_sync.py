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


def _model(sync):
    torch.manual_seed(5)
    return torch.nn.Sequential(
        ndt.Deconv2d(3, 6, 3, block=3, sampling_stride=2, sync=sync), torch.nn.ReLU(),
        ndt.Deconv2d(6, 4, 3, stride=2, groups=2, sampling_stride=1, sync=sync), torch.nn.Flatten(),
        ndt.DeconvLinear(4 * 3 * 3, 5, block=12, sync=sync)).double()


def _batches(total):
    gen = torch.Generator().manual_seed(11)
    return [(torch.rand(total, 3, 6, 6, generator=gen, dtype=torch.float64) + 0.5,
             torch.randn(total, 5, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model, batches, rows, lr):
    """STEPS SGD steps on rows of each batch (loss: sum of y * g): outputs, dL/dx, grads, buffers."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for x, g in batches:
        x = x[rows].clone().requires_grad_(True)
        y = model(x)
        (y * g[rows]).sum().backward()
        out.append(dict(y=y.detach(), dx=x.grad, grads=[p.grad.clone() for p in model.parameters()],
                        buffers={k: v.clone() for k, v in getattr(model, "module", model).state_dict().items()
                                 if "running" in k}))
        opt.step()
        opt.zero_grad()
    return out


def _worker(rank, world, port, shards, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import netdeconv
    netdeconv.set_num_threads(1)
    first = sum(shards[:rank])
    model = DistributedDataParallel(_model(sync=True))
    # DDP averages the parameter gradients over the processes: lr * world makes its SGD step the sum's
    out = _train(model, _batches(sum(shards)), slice(first, first + shards[rank]), lr=0.05 * world)
    torch.save(out, os.path.join(path, f"{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("shards", [[3, 5], [2, 0, 4, 1]], ids=["2-uneven", "4-with-empty"])
def test_ddp_with_sync_equals_one_process_on_the_whole_batch(tmp_path, shards):
    from conftest import rel
    world = len(shards)
    mp.spawn(_worker, args=(world, _free_port(), shards, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    whole = _train(_model(sync=False), _batches(sum(shards)), slice(None), lr=0.05)
    for step, ref in enumerate(whole):
        got = [r[step] for r in ranks]
        assert rel(torch.cat([g["y"] for g in got]), ref["y"]) <= 1e-10, step
        assert rel(torch.cat([g["dx"] for g in got]), ref["dx"]) <= 1e-10, step
        for r in got:
            for a, b in zip(r["grads"], ref["grads"]):
                assert rel(a * world, b) <= 1e-10, step
            for k, v in ref["buffers"].items():
                assert rel(r["buffers"][k], v) <= 1e-10, (step, k)


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
