# SPDX-License-Identifier: MIT
"""netdeconv.torch: Deconv2d and DeconvLinear against the pure-PyTorch float64 model of the
reference layers in tests/reference/generate_goldens.py (outputs and autograd gradients of x, W
and b, 1e-10 relative), and their buffers in state_dict."""
import numpy as np
import pytest
import torch

import generate_goldens as ref
from conftest import rel

ndt = pytest.importorskip("netdeconv.torch")


@pytest.mark.parametrize("kernel,stride,padding,groups,block,sampling_stride,layout",
                         [(3, 1, 1, 1, 4, 3, "nchw"), (3, 2, 1, 1, 8, 2, "nhwc"), (1, 1, 0, 1, 64, 3, "nchw"),
                          (3, 1, 1, 2, 64, 1, "nchw")])
def test_deconv2d_forward_and_gradients_match_the_reference(rng, kernel, stride, padding, groups, block,
                                                            sampling_stride, layout):
    torch.manual_seed(0)
    N, C, H, W, cout = 2, 8, 9, 9, 6
    m = ndt.Deconv2d(C, cout, kernel, stride=stride, padding=padding, groups=groups, block=block,
                     sampling_stride=sampling_stride).double()
    x = torch.from_numpy(rng.standard_normal((N, C, H, W)) + 0.5)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = m(x)
    g = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    (y * g).sum().backward()
    case = ref.conv_case("t", N, C, H, W, cout, kernel, stride=stride, padding=padding, groups=groups, block=block,
                         sampling_stride=sampling_stride)
    xr = x.detach().clone().contiguous().requires_grad_(True)
    wr = m.weight.detach().clone().requires_grad_(True)
    br = m.bias.detach().clone().requires_grad_(True)
    *_, yr = ref.conv_forward(case, xr, wr, br)
    (yr * g).sum().backward()
    assert rel(y, yr) <= 1e-10
    assert rel(x.grad, xr.grad) <= 1e-10
    assert rel(m.weight.grad, wr.grad) <= 1e-10
    assert rel(m.bias.grad, br.grad) <= 1e-10


def test_deconv_linear_matches_the_reference(rng):
    m = ndt.DeconvLinear(12, 5, block=4).double()
    x = torch.from_numpy(rng.standard_normal((16, 12))).requires_grad_(True)
    y = m(x)
    y.pow(2).sum().backward()
    case = ref.linear_case("t", 16, 12, 5, block=4)
    xr = x.detach().clone().requires_grad_(True)
    wr, br = m.weight.detach().clone().requires_grad_(True), m.bias.detach().clone().requires_grad_(True)
    *_, yr = ref.linear_forward(case, xr, wr, br)
    yr.pow(2).sum().backward()
    assert rel(y, yr) <= 1e-10
    for a, b in ((x.grad, xr.grad), (m.weight.grad, wr.grad), (m.bias.grad, br.grad)):
        assert rel(a, b) <= 1e-10


def test_running_statistics_are_buffers_and_eval_folds_them(rng):
    m = ndt.Deconv2d(4, 3, 3, block=4, sampling_stride=1).double()
    xs = [torch.from_numpy(rng.standard_normal((2, 4, 6, 6))) for _ in range(3)]
    for x in xs[:2]:
        m(x)
    assert int(m.counters[0]) == 2 and not torch.equal(m.running_D[0], torch.eye(36, dtype=torch.float64))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m(xs[2])
    resumed = ndt.Deconv2d(4, 3, 3, block=4, sampling_stride=1).double()
    resumed.load_state_dict(state)
    resumed(xs[2])
    for k, v in m.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    m.eval()
    w = m.weight.detach().clone().requires_grad_(True)
    y = m(xs[0])
    mean, D = m.running_mean[0], m.running_D[0]
    Wf = (w.reshape(3, 36) @ D).reshape(w.shape)  # one block of all 36 patch features
    yr = torch.nn.functional.conv2d(xs[0], Wf, m.bias - Wf.reshape(3, 36) @ mean, padding=1)
    assert rel(y, yr) <= 1e-12
    y.sum().backward()
    yr.sum().backward()
    assert rel(m.weight.grad, w.grad) <= 1e-12


def test_dtype_and_device_errors():
    m = ndt.Deconv2d(4, 3, 3)
    with pytest.raises(TypeError, match="convert the module"):
        m(torch.zeros(2, 4, 6, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="x is on meta"):
        m(torch.zeros(2, 4, 6, 6, device="meta"))
