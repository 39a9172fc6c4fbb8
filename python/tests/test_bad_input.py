# SPDX-License-Identifier: MIT
"""The bad-input census of issue 14 (docs/bad-input.md): the classes of bad input to the Python
package that test_arrays.py, test_layers.py and test_torch.py do not cover. Each either works (and
gives the result of the equivalent well-formed input) or is refused with a clear exception."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import as_strided

import netdeconv as nd
import netdeconv.torch as ndt
from conftest import rel


def unaligned(a):
    """A copy of a whose data starts one byte past an aligned address (a writable NumPy array)."""
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


# ---- arrays that must work -------------------------------------------------------------------

def test_negative_and_zero_strides_are_read_as_their_values(rng):
    x = rng.standard_normal((40, 5))
    flipped = x[::-1, ::-1]
    w = nd.whiten(flipped)
    ref = nd.whiten(np.ascontiguousarray(flipped))
    np.testing.assert_allclose(w.data, ref.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.D, ref.D, rtol=1e-12, atol=1e-12)
    # a broadcast batch (stride 0 on N) equals the explicit copy
    image = rng.standard_normal((1, 3, 6, 6))
    weight = rng.standard_normal((4, 3, 3, 3))
    cfg = nd.ConvConfig(3, padding=1, sampling_stride=1)
    shared = nd.conv_statistics_step(np.broadcast_to(image, (3, 3, 6, 6)), weight, None, cfg)
    copied = nd.conv_statistics_step(np.repeat(image, 3, axis=0), weight, None, cfg)
    assert rel(shared.D, copied.D) <= 1e-12 and rel(shared.weight, copied.weight) <= 1e-12


def test_arrays_off_their_element_alignment_are_refused(rng):
    # Reading a double through a pointer that is not 8-byte aligned is undefined behaviour in C++
    # (UBSan reported it, scripts/sanitize): such arrays are refused, as input and as out=.
    x = rng.standard_normal((50, 6))
    ux = unaligned(x)
    assert ux.ctypes.data % 8 != 0 and not ux.flags.aligned
    with pytest.raises(TypeError, match="x .* is not aligned to its 8-byte elements"):
        nd.whiten(ux)
    w = nd.whiten(x)
    with pytest.raises(TypeError, match="out .* is not aligned to its 8-byte elements"):
        nd.apply_whitening(x, w.mean, w.D, out=unaligned(np.zeros_like(x)))
    xf = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    wf = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="weight .* is not aligned to its 4-byte elements"):
        nd.conv_statistics_step(xf, unaligned(wf), None, nd.ConvConfig(3, padding=1, block=4))
    aligned = np.require(ux, requirements="A")
    np.testing.assert_array_equal(nd.whiten(aligned).data, w.data)


def test_non_contiguous_torch_inputs_to_the_layers_equal_contiguous_ones(rng):
    torch.manual_seed(0)
    big = torch.from_numpy(rng.standard_normal((2, 8, 18, 18)))
    sliced = big[:, :, ::2, 1::2]  # strides (2592, 324, 36, 2)
    assert not sliced.is_contiguous()
    a = ndt.Deconv2d(8, 4, 3, block=4).double()
    b = ndt.Deconv2d(8, 4, 3, block=4).double()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(sliced), b(sliced.contiguous()))
    assert torch.equal(a.running_D, b.running_D)
    rows = torch.from_numpy(rng.standard_normal((12, 30))).t()  # (30, 12) transposed
    la = ndt.DeconvLinear(12, 3, block=4).double()
    lb = ndt.DeconvLinear(12, 3, block=4).double()
    lb.load_state_dict(la.state_dict())
    assert rel(la(rows), lb(rows.contiguous())) <= 1e-12


# ---- arrays that are refused -----------------------------------------------------------------

def test_byte_swapped_arrays_are_refused(rng):
    x = rng.standard_normal((30, 4))
    for swapped in (x.astype(">f8"), x.astype(">f4")):
        with pytest.raises(TypeError, match="cannot be read in place: .* native byte order"):
            nd.whiten(swapped)  # neither DLPack nor nanobind reads them


def test_strides_that_are_not_a_multiple_of_the_itemsize_are_refused():
    records = np.zeros((10, 3), dtype=[("a", "f8"), ("b", "i1")])
    records["a"] = np.random.default_rng(0).standard_normal((10, 3))
    field = records["a"]  # float64 with byte strides (27, 9)
    assert field.strides == (27, 9)
    with pytest.raises(TypeError, match="cannot be read in place: .* strides are whole elements"):
        nd.whiten(field)


def test_output_arrays_of_another_dtype_rank_device_or_kind_are_refused(rng):
    x = rng.standard_normal((10, 3))
    with pytest.raises(TypeError, match="out has dtype float32, expected float64"):
        nd.whiten(x, out=np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(10, 3\), got \(30,\)"):
        nd.whiten(x, out=np.zeros(30))
    with pytest.raises(TypeError, match="out is on device meta"):
        nd.whiten(torch.from_numpy(x), out=torch.zeros(10, 3, dtype=torch.float64, device="meta"))
    with pytest.raises(TypeError, match="must be an array"):
        nd.whiten(x, out=[[0.0] * 3] * 10)
    shared = as_strided(np.zeros(3), shape=(10, 3), strides=(0, 8), writeable=True)  # every row the same memory
    with pytest.raises(ValueError, match="share memory"):
        nd.whiten(x, out=shared)
    X = rng.standard_normal((2, 3, 6, 6))
    W = rng.standard_normal((4, 3, 3, 3))
    cfg = nd.ConvConfig(3)
    S, F = nd.conv_statistics_plan(3, cfg)
    with pytest.raises(TypeError, match="out must be None or a sequence of 4 arrays"):
        nd.conv_statistics_step(X, W, None, cfg, out=(np.empty_like(W), np.empty(4)))
    D = np.empty((S, F, F))
    with pytest.raises(ValueError, match="overlaps"):  # out.mean inside out.D
        nd.conv_statistics_step(X, W, None, cfg, out=(np.empty_like(W), np.empty(4), D[:, 0, :], D))


def test_read_only_outputs_of_the_layers_are_refused(rng):
    x = rng.standard_normal((2, 4, 6, 6))
    layer = nd.ChannelDeconvLayer(4, nd.ChannelConfig(block=2), dtype="float64")
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        layer.train_step(x, out=ro)
    assert layer.steps == 0
    conv = nd.ConvDeconvLayer(4, nd.ConvConfig(3, padding=1, block=4), dtype="float64")
    w = rng.standard_normal((3, 4, 3, 3))
    S, F = conv.plan
    ro_w = np.zeros_like(w)
    ro_w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        conv.train_step(x, w, None, out=(ro_w, np.empty(3), np.empty((S, F)), np.empty((S, F, F))))
    assert conv.steps == 0


def test_wrong_rank_and_zero_size_arrays_are_value_errors():
    with pytest.raises(ValueError, match=r"got 1 with shape \(4,\)"):
        nd.inverse_sqrt(np.zeros(4), nd.IsqrtOptions.fixed(5))
    with pytest.raises(ValueError, match="at least 1x1, got 0x0"):
        nd.inverse_sqrt(np.zeros((0, 0)), nd.IsqrtOptions.fixed(5))
    D, reports = nd.inverse_sqrt(np.zeros((0, 3, 3)), nd.IsqrtOptions.fixed(5))  # an empty batch of matrices
    assert D.shape == (0, 3, 3) and reports == []
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        nd.conv_statistics_step(np.zeros((2, 3, 0, 0)), np.zeros((2, 3, 3, 3)), None, nd.ConvConfig(3))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        nd.linear_statistics_step(np.zeros((0, 4)), np.zeros((2, 4)), None, nd.LinearConfig(block=4))
    layer = nd.ConvDeconvLayer(3, nd.ConvConfig(3, block=3), dtype="float64")
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        layer.train_step(np.zeros((3, 6, 6)), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        layer.train_step(np.zeros((0, 3, 6, 6)), np.zeros((2, 3, 3, 3)))
    assert layer.steps == 0
    channel = nd.ChannelDeconvLayer(4, nd.ChannelConfig(block=2), dtype="float64")
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        channel.train_step(np.zeros((0, 4, 6, 6)))
    assert channel.steps == 0


def test_objects_that_are_not_arrays_are_type_errors_in_every_argument():
    x = np.zeros((2, 3, 6, 6))
    with pytest.raises(TypeError, match="weight must be an array"):
        nd.conv_statistics_step(x, "weights", None, nd.ConvConfig(3))
    with pytest.raises(TypeError, match="bias must be an array"):
        nd.conv_statistics_step(x, np.zeros((2, 3, 3, 3)), [0.0, 0.0], nd.ConvConfig(3))
    layer = nd.ConvDeconvLayer(3, nd.ConvConfig(3, block=3), dtype="float64")
    with pytest.raises(TypeError, match="must be an array"):
        layer.train_step(x.tolist(), np.zeros((2, 3, 3, 3)))
    with pytest.raises(TypeError):
        layer.load_state("not bytes")
    with pytest.raises(TypeError):
        nd.ConvConfig(3, block="64")
    # a JAX tracer (an eager function called inside jax.jit) is not an array with memory
    with pytest.raises(TypeError, match="inside jax.jit use netdeconv.jax"):
        jax.jit(lambda a: nd.whiten(a).data)(jnp.zeros((10, 3)))


def test_integer_arguments_near_2_63_are_refused():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(ValueError, match="overflows"):
        nd.conv_moments(x, nd.ConvConfig(3, padding=2 ** 62))
    with pytest.raises(ValueError, match="overflows"):
        nd.conv_statistics_plan(2, nd.ConvConfig(2 ** 32))
    for make in (lambda: nd.ConvConfig(3, block=2 ** 64), lambda: nd.ConvConfig(3, groups=2 ** 63),
                 lambda: nd.LinearConfig(block=2 ** 64), lambda: nd.IsqrtOptions.fixed(2 ** 64),
                 lambda: nd.moments(np.zeros((5, 3)), block=2 ** 64)):
        with pytest.raises(TypeError, match="incompatible function arguments"):  # no int64 holds them
            make()


def test_non_finite_scalar_arguments_are_refused():
    x = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="eps must be >= 0, got nan"):
        nd.whiten(x, eps=float("nan"))
    with pytest.raises(ValueError, match="tolerance must be >= 0, got nan"):
        nd.inverse_sqrt(np.eye(3), nd.IsqrtOptions.converged(float("nan")))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got nan"):
        nd.ConvDeconvLayer(4, nd.ConvConfig(3), nd.LayerOptions(momentum=float("nan")))
    # eps = +Inf passes the eps >= 0 check: Cov + Inf I is not finite, a numerical failure
    with pytest.raises(nd.NumericalError, match="non_finite"):
        nd.whiten(x, eps=float("inf"))
    assert nd.whiten(x, eps=float("inf"), check=False).reports[0].status == nd.IsqrtStatus.non_finite


# ---- the torch layers --------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [(lambda o: ndt.Deconv2d(4, 3, 3, block=4, options=o), (2, 4, 6, 6)),
                                        (lambda o: ndt.DeconvLinear(6, 3, block=6, options=o), (20, 6)),
                                        (lambda o: ndt.ChannelDeconv(2, channels=4, options=o), (2, 4, 6, 6))],
                         ids=["Deconv2d", "DeconvLinear", "ChannelDeconv"])
def test_torch_layers_nan_batch_follows_the_failure_policy(make, shape):
    torch.manual_seed(1)
    clean = torch.randn(*shape)
    bad = clean.clone()
    bad.view(-1)[0] = float("nan")  # x[0, 0, 0, 0]: in the first sampled patch (row) of every layer
    m = make(None)  # the reference options: throw_error
    m(clean)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(nd.NumericalError):
        m(bad)
    for k, v in m.state_dict().items():  # the buffers are as they were
        assert torch.equal(v, before[k]), k
    keep = make(nd.LayerOptions(on_failure=nd.FailurePolicy.keep_previous))
    keep(clean)
    kept = {k: v.clone() for k, v in keep.state_dict().items()}
    keep(bad)
    assert keep.counters.tolist()[0] == 2 and keep.counters.tolist()[2] == 1  # a step, and a failed one
    assert torch.equal(keep.running_D, kept["running_D"]) and torch.equal(keep.running_mean, kept["running_mean"])


def test_torch_layers_zero_size_and_wrong_rank_inputs():
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        ndt.DeconvLinear(6, 3, block=6)(torch.zeros(0, 6))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 1"):
        ndt.DeconvLinear(6, 3, block=6)(torch.zeros(6))
    with pytest.raises(ValueError, match=r"x must be \(N, C, H, W\)"):
        ndt.ChannelDeconv(2, channels=4)(torch.zeros(4, 6, 6))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        ndt.ChannelDeconv(2, channels=4)(torch.zeros(0, 4, 6, 6))
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        ndt.Deconv2d(4, 3, 3, padding=0, block=4)(torch.zeros(2, 4, 2, 2))
    with pytest.raises(TypeError, match="x is on meta"):
        ndt.ChannelDeconv(2, channels=4)(torch.zeros(2, 4, 6, 6, device="meta"))


def test_nan_outside_the_sampled_rows_is_not_seen_by_the_statistics(rng):
    """Only the sampled patches (every sampling_stride-th output position per axis) enter the
    statistics: NaN elsewhere leaves them as they are, and reaches the conv output as in any conv."""
    torch.manual_seed(2)
    x = torch.from_numpy(rng.standard_normal((2, 4, 6, 6)))
    bad = x.clone()
    bad[0, 0, 0, 5] = float("nan")  # sampled output columns are 0 and 3: their 3x3 patches span columns -1..4
    cfg = nd.ConvConfig(3, padding=1, block=4)  # the reference sampling stride 3
    np.testing.assert_array_equal(nd.conv_statistics_step(bad.numpy(), np.ones((3, 4, 3, 3)), None, cfg).D,
                                  nd.conv_statistics_step(x.numpy(), np.ones((3, 4, 3, 3)), None, cfg).D)
    a = ndt.Deconv2d(4, 3, 3, block=4).double()
    b = ndt.Deconv2d(4, 3, 3, block=4).double()
    b.load_state_dict(a.state_dict())
    y = a(bad)
    b(x)
    assert torch.equal(a.running_D, b.running_D) and int(a.counters[2]) == 0
    assert torch.isnan(y[0]).any() and not torch.isnan(y[1]).any()


# ---- regressions of the census ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(stride=2**63), dict(padding=-2**63 - 1), dict(dilation=2**64),
                                    dict(kernel_size=2**64), dict(kernel_size=(3, 2**64)), dict(stride=(1, 1.5))])
def test_conv_config_integers_beyond_64_bits_are_type_errors(kwargs):
    args = dict(kernel_size=3) | kwargs
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"{name} must be an int or a pair of ints of 64 bits"):
        nd.ConvConfig(args.pop("kernel_size"), **args)


@pytest.mark.parametrize("make", [lambda: ndt.Deconv2d(4, 3, 3), lambda: ndt.DeconvLinear(4, 3),
                                  lambda: ndt.ChannelDeconv(2)])
def test_torch_modules_given_a_non_tensor_raise_type_error(make):
    x = np.zeros((2, 4, 6, 6) if not isinstance(make(), ndt.DeconvLinear) else (2, 4), np.float32)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got numpy.ndarray"):
        make()(x)


@pytest.mark.parametrize("make", [lambda F: nd.LinearDeconvLayer(F, nd.LinearConfig(block=F)),
                                  lambda F: nd.ConvDeconvLayer(F, nd.ConvConfig(1, block=F)),
                                  lambda F: nd.ChannelDeconvLayer(F, nd.ChannelConfig(block=F))])
def test_layer_state_sizes_that_overflow_are_value_errors(make):
    # F*F + F wraps to 1028 modulo 2**64: the state's size was once computed unchecked (a crash).
    with pytest.raises(ValueError, match="overflows a 64-bit index"):
        make(1608798664583477108)


def test_backward_refuses_another_layers_exact_fallback_diagnostic(rng):
    cfg = nd.LinearConfig(layout=nd.BlockLayout.independent, block=2, isqrt=nd.IsqrtOptions.converged(1e-300, 1))
    other = nd.LinearDeconvLayer(16, cfg, nd.LayerOptions(on_failure=nd.FailurePolicy.exact_fallback), dtype="float64")
    x, w = rng.standard_normal((40, 16)), rng.standard_normal((2, 16))
    other.train_step(x, w)
    assert other.diagnostic.outcome == nd.StepOutcome.exact_fallback
    layer = nd.LinearDeconvLayer(16, nd.LinearConfig(), dtype="float64")
    s = layer.train_step(x, w)
    with pytest.raises(ValueError, match="names statistic .* pass this layer's own diagnostic"):
        layer.backward(x, w, None, s.mean, s.D, np.ones_like(w), np.ones(2), step=other.diagnostic)


@pytest.mark.parametrize("junk", [torch.Size([4, 3]), torch.float32, torch.device("cpu")])
def test_torch_objects_that_are_not_tensors_are_type_errors(junk):
    with pytest.raises(TypeError, match="must be an array"):
        nd.whiten(junk)


@pytest.mark.parametrize("returns", [lambda *a: list(a), lambda *a: None])
def test_reduction_callbacks_must_return_tuples(rng, returns):
    layer = nd.LinearDeconvLayer(8, nd.LinearConfig(block=4), dtype="float64")
    layer.set_reduction(returns, lambda dcov, dmean: (dcov, dmean))
    with pytest.raises(TypeError, match="moments must return a tuple"):
        layer.train_step(rng.standard_normal((20, 8)), rng.standard_normal((2, 8)))


def test_covariance_vjp_without_dmean_is_the_zero_mean_gradient(rng):
    x = rng.standard_normal((30, 8))
    cfg = nd.LinearConfig(block=4)
    m = nd.linear_moments(x, cfg)
    S, F = m.mean.shape
    dcov = rng.standard_normal((S, F, F))
    dcov = dcov + dcov.transpose(0, 2, 1)
    np.testing.assert_array_equal(nd.linear_covariance_vjp(x, cfg, m, dcov),
                                  nd.linear_covariance_vjp(x, cfg, m, dcov, np.zeros((S, F))))
