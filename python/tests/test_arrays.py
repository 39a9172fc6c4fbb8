# SPDX-License-Identifier: MIT
"""Arrays in place: no copies, outputs in caller arrays, results in the caller's framework, inputs
never written; and every class of bad input gets a Python exception with the values."""
import array

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import netdeconv as nd
from conftest import framework_of


def address(a):
    if isinstance(a, np.ndarray):
        return a.__array_interface__["data"][0]
    if isinstance(a, torch.Tensor):
        return a.data_ptr()
    return a.unsafe_buffer_pointer()


@pytest.mark.parametrize("make", [
    lambda: np.arange(24.0).reshape(4, 6),
    lambda: np.arange(48.0).reshape(4, 12)[:, ::2],                 # strided view
    lambda: torch.arange(24.0).reshape(4, 6).t(),                   # transposed
    lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    lambda: jnp.arange(24.0).reshape(4, 6),
], ids=["numpy", "numpy-strided", "torch-transposed", "torch-channels-last", "jax"])
def test_inputs_are_read_in_place(make):
    a = make()
    ptr, strides = nd._core._array_info(a)
    assert ptr == address(a)
    if isinstance(a, torch.Tensor):
        assert tuple(strides) == a.stride()
    elif isinstance(a, np.ndarray):
        assert tuple(strides) == tuple(s // a.itemsize for s in a.strides)


def test_buffer_protocol_input():
    buf = array.array("d", np.arange(12.0))
    m = memoryview(buf).cast("B").cast("d", (4, 3))
    w = nd.whiten(m, eps=1e-3)
    assert framework_of(w.data) == "numpy" and w.data.shape == (4, 3)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_outputs_written_into_caller_arrays(rng, framework):
    x = rng.standard_normal((50, 6))
    out = np.empty_like(x) if framework == "numpy" else torch.empty(50, 6, dtype=torch.float64)
    w = nd.whiten(torch.from_numpy(x) if framework == "torch" else x, out=out)
    assert w.data is out
    np.testing.assert_array_equal(np.asarray(out), nd.whiten(x).data)
    # A strided output view: the base array sees the values where the view points.
    base = np.zeros((50, 12))
    nd.apply_whitening(x, w.mean, w.D, out=base[:, ::2])
    np.testing.assert_array_equal(base[:, ::2], np.asarray(out))
    assert not base[:, 1::2].any()
    # The statistics step's outputs too.
    X = rng.standard_normal((2, 3, 6, 6))
    W = rng.standard_normal((4, 3, 3, 3))
    cfg = nd.ConvConfig(3)
    S, F = nd.conv_statistics_plan(3, cfg)
    outs = (np.empty_like(W), np.empty(4), np.empty((S, F)), np.empty((S, F, F)))
    step = nd.conv_statistics_step(X, W, None, cfg, out=outs)
    assert all(a is b for a, b in zip(step[:4], outs))
    np.testing.assert_array_equal(outs[0], nd.conv_statistics_step(X, W, None, cfg).weight)


def test_inputs_are_never_written(rng):
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((3, 4, 3, 3))
    b = rng.standard_normal(3)
    ro = [a.copy() for a in (x, w, b)]
    for a in ro:
        a.flags.writeable = False  # read-only memory is accepted as input
    cfg = nd.ConvConfig(3, padding=1)
    step = nd.conv_statistics_step(*ro, cfg)
    nd.conv_statistics_step_vjp(*ro, cfg, step.mean, step.D, np.ones_like(w), np.ones(3))
    nd.whiten(ro[0].reshape(-1, 6))
    layer = nd.ChannelDeconvLayer(4, nd.ChannelConfig(block=2), dtype="float64")
    layer.train_step(ro[0])
    for a, orig in zip(ro, (x, w, b)):
        np.testing.assert_array_equal(a, orig)


def test_channel_layer_in_place_output(rng):
    x = rng.standard_normal((2, 4, 6, 6))
    layer = nd.ChannelDeconvLayer(4, nd.ChannelConfig(block=2), dtype="float64")
    ref = nd.ChannelDeconvLayer(4, nd.ChannelConfig(block=2), dtype="float64").train_step(x).y
    y = x.copy()
    step = layer.train_step(y, out=y)  # documented: out may be x itself
    assert step.y is y
    np.testing.assert_array_equal(y, ref)


# ---- bad input -------------------------------------------------------------------------------

def test_wrong_dtype_is_a_type_error():
    for bad in (np.zeros((4, 3), np.int32), np.zeros((4, 3), np.float16), torch.zeros(4, 3, dtype=torch.bfloat16),
                np.zeros((4, 3), np.complex128)):
        with pytest.raises(TypeError, match="expected float32 or float64"):
            nd.whiten(bad)
    with pytest.raises(TypeError, match="dtype float32, expected float64"):
        nd.apply_whitening(np.zeros((4, 3)), np.zeros((1, 3), np.float32), np.zeros((1, 3, 3)))
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nd.covariance(nd.moments(np.random.rand(5, 2)), dtype="int8")


def test_wrong_device_is_a_type_error():
    with pytest.raises(TypeError, match="x is on device meta"):
        nd.whiten(torch.zeros(4, 3, device="meta"))


def test_not_an_array_is_a_type_error():
    for bad in ([[1.0, 2.0], [3.0, 4.0]], "text", 3.0, object()):
        with pytest.raises(TypeError, match="must be an array"):
            nd.whiten(bad)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        nd.whiten(None)
    with pytest.raises(TypeError, match="Moments"):
        nd.merge((1, 2), nd.moments(np.random.rand(5, 2)))


def test_shape_errors_are_value_errors_with_the_values():
    with pytest.raises(ValueError, match=r"x must have 2 dimensions \(n, F\), got 3 with shape \(2, 3, 4\)"):
        nd.whiten(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"must have 4 dimensions \(N, C, H, W\), got 2"):
        nd.conv_statistics_step(np.zeros((4, 4)), np.zeros((2, 4, 3, 3)), None, nd.ConvConfig(3))
    with pytest.raises(ValueError, match="weight kernel 1x1 does not match the plan's kernel area 9"):
        nd.conv_statistics_step(np.zeros((2, 4, 6, 6)), np.zeros((2, 4, 1, 1)), None, nd.ConvConfig(3))
    with pytest.raises(ValueError, match=r"out must have shape \(10, 3\), got \(10, 4\)"):
        nd.whiten(np.random.rand(10, 3), out=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="x has 6 features; mean and D are 1 blocks of 4"):
        nd.apply_whitening(np.zeros((5, 6)), np.zeros((1, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="groups"):
        nd.conv_statistics_step(np.zeros((2, 6, 6, 6)), np.zeros((4, 3, 3, 3)), None, nd.ConvConfig(3, groups=4))


def test_zero_size_and_empty_batches_are_value_errors():
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        nd.whiten(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 1"):
        nd.whiten(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="x has no features"):
        nd.whiten(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        nd.conv_statistics_step(np.zeros((0, 3, 6, 6)), np.zeros((2, 3, 3, 3)), None, nd.ConvConfig(3))


def test_configuration_errors_are_value_errors():
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        nd.whiten(np.random.rand(10, 3), eps=-1)
    with pytest.raises(ValueError, match="block must be >= 0, got -2"):
        nd.moments(np.random.rand(10, 3), block=-2)
    with pytest.raises(ValueError, match="threads must be in"):
        nd.set_num_threads(-1)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0x0"):
        nd.conv_moments(np.zeros((1, 2, 5, 5)), nd.ConvConfig(3, stride=0))


def test_unwritable_outputs_are_refused():
    x = np.random.rand(10, 3)
    ro = np.zeros((10, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nd.whiten(x, out=ro)
    with pytest.raises(TypeError, match="JAX array, which is immutable"):
        nd.whiten(x, out=jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match="requires grad"):
        nd.whiten(torch.from_numpy(x), out=torch.zeros(10, 3, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="out overlaps x"):
        nd.whiten(x, out=x)


def test_non_finite_data_is_a_numerical_error():
    x = np.random.rand(20, 3)
    x[3, 1] = np.nan
    with pytest.raises(nd.NumericalError, match="non_finite"):
        nd.whiten(x)
    w = nd.whiten(x, check=False)
    assert w.reports[0].status == nd.IsqrtStatus.non_finite
    with pytest.raises(nd.NumericalError):
        nd.conv_statistics_step(np.full((2, 3, 6, 6), np.inf), np.zeros((2, 3, 3, 3)), None, nd.ConvConfig(3))


def test_torch_inputs_that_require_grad_are_read():
    x = torch.rand(30, 4, dtype=torch.float64, requires_grad=True)
    w = nd.whiten(x)
    assert not w.data.requires_grad
    np.testing.assert_array_equal(w.data.numpy(), nd.whiten(x.detach().numpy()).data)
