# SPDX-License-Identifier: MIT
"""The layers' state objects against the sequence goldens of tests/reference/sequence_goldens (a
float64 model of the reference layers' life cycle: several training steps, running statistics,
freeze, evaluation), and their state: checkpoints, resumption, caller-owned arrays."""
import numpy as np
import pytest
import torch

import netdeconv as nd
from conftest import Golden, goldens, image_layout, rel

SEQUENCES = goldens("sequence_goldens")


def sequence_tol(g, dtype):
    if dtype == np.float64:
        return 1e-9
    # The C++ suite's float32 bounds (tests/test_layer_parity.cpp): 15 steps on a covariance of
    # condition ~5e5 leave float32 itself 6e-4 to 1e-3 off in that case.
    return 5e-3 if g.name == "conv_first_k3_freeze2_niter15" else 1e-4


def folding_layer(g, dtype):
    isqrt = nd.IsqrtOptions.fixed(g.get("n_iter"))
    name = np.dtype(dtype).name
    if g.header["kind"] == "linear":
        cfg = nd.LinearConfig(layout=nd.BlockLayout.contiguous_shared, block=g.get("block"), eps=g.eps(), isqrt=isqrt)
        return nd.LinearDeconvLayer(g.get("Fin"), cfg, dtype=name), cfg
    cfg = nd.ConvConfig(g.get("kernel"), stride=g.get("stride"), padding=g.get("padding"),
                        dilation=g.get("dilation"), groups=g.get("groups"),
                        layout=nd.BlockLayout.interleaved_shared if g.get("groups") == 1 else nd.BlockLayout.grouped,
                        block=g.get("block"), sampling_stride=g.get("sampling_stride"), eps=g.eps(), isqrt=isqrt)
    options = nd.LayerOptions(freeze=bool(g.get("freeze")), freeze_iter=g.get("freeze_iter"))
    return nd.ConvDeconvLayer(g.get("C"), cfg, options, dtype=name), cfg


def inputs(g, key, dtype):
    if g.header["kind"] == "linear":
        return g.array(key, (-1, g.get("Fin"))).astype(dtype)
    return image_layout(g.array(key, (g.get("N"), g.get("C"), g.get("H"), g.get("W"))).astype(dtype), "nhwc")


@pytest.mark.parametrize("path", [p for p in SEQUENCES if "channel_" not in p], ids=lambda p: Golden(p).name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_folding_layer_sequence(path, dtype):
    g = Golden(path)
    t_ = sequence_tol(g, dtype)
    layer, _ = folding_layer(g, dtype)
    S, F = layer.plan
    w = g.array("weight").reshape(-1, g.get("Fin")) if g.header["kind"] == "linear" else \
        g.array("weight").reshape(g.get("Cout"), g.get("C") // g.get("groups"), g.get("kernel"), g.get("kernel"))
    w = torch.from_numpy(w.astype(dtype))
    b = torch.from_numpy(g.array("bias").astype(dtype))
    frozen = g.array("frozen")
    for t in range(g.get("steps")):
        step = layer.train_step(torch.from_numpy(inputs(g, f"x.{t}", dtype)), w, b)
        assert layer.steps == t + 1
        assert (layer.diagnostic.outcome == nd.StepOutcome.frozen) == bool(frozen[t])
        assert rel(step.weight, g.array(f"weight_folded.{t}", tuple(w.shape))) <= t_
        assert rel(step.bias, g.array(f"bias_folded.{t}")) <= t_
        mean, D = layer.running()
        if g.has(f"running_mean.{t}"):
            assert rel(mean, g.array(f"running_mean.{t}", (S, F))) <= t_
            assert rel(D, g.array(f"running_D.{t}", (S, F, F))) <= t_
    W, B = layer.eval(w, b)
    assert rel(W, g.array("eval.weight_folded", tuple(w.shape))) <= t_
    assert rel(B, g.array("eval.bias_folded")) <= t_


@pytest.mark.parametrize("path", [p for p in SEQUENCES if "channel_" in p], ids=lambda p: Golden(p).name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channel_layer_sequence(path, dtype):
    g = Golden(path)
    t_ = sequence_tol(g, dtype)
    B = g.get("block")
    cfg = nd.ChannelConfig(block=B, sampling_stride=g.get("sampling_stride"), eps=g.eps(),
                           isqrt=nd.IsqrtOptions.fixed(g.get("n_iter")), uncentred_covariance=True)
    layer = nd.ChannelDeconvLayer(g.get("C"), cfg, dtype=np.dtype(dtype).name)
    shape = (g.get("N"), g.get("C"), g.get("H"), g.get("W"))
    for t in range(g.get("steps")):
        x = image_layout(g.array(f"x.{t}", shape).astype(dtype), "strided")
        step = layer.train_step(x)
        assert rel(step.y, g.array(f"y.{t}", shape)) <= t_
        mean, D = layer.running()
        assert rel(mean, g.array(f"running_mean1.{t}", (1, B))) <= t_
        assert rel(D, g.array(f"running_D.{t}", (1, B, B))) <= t_
        assert (step.remaining is not None) == layer.has_remaining == g.has(f"running_mean2.{t}")
        if layer.has_remaining:
            m2, v2 = layer.running_remaining
            assert rel(np.array([m2, v2]), np.array([g.array(f"running_mean2.{t}")[0],
                                                     g.array(f"running_var.{t}")[0]])) <= t_
    y = layer.eval(np.ascontiguousarray(g.array("x.eval", shape).astype(dtype)))
    assert rel(y, g.array("eval.y", shape)) <= t_


def conv_layer(options=None, dtype="float64"):
    cfg = nd.ConvConfig(3, padding=1, block=4, sampling_stride=2, isqrt=nd.IsqrtOptions.fixed(5))
    return nd.ConvDeconvLayer(8, cfg, options, dtype=dtype)


def batches(rng, n, dtype=np.float64):
    return [rng.standard_normal((2, 8, 6, 6)).astype(dtype) + 0.3 for _ in range(n)]


def test_checkpoint_resume_equals_the_uninterrupted_run(rng):
    w, b = rng.standard_normal((5, 8, 3, 3)), rng.standard_normal(5)
    xs = batches(rng, 6)
    whole = conv_layer()
    for x in xs:
        last = whole.train_step(x, w, b)
    first = conv_layer()
    for x in xs[:3]:
        first.train_step(x, w, b)
    resumed = conv_layer()
    resumed.load_state(first.state())
    assert resumed.steps == 3
    for x in xs[3:]:
        step = resumed.train_step(x, w, b)
    for a, c in zip(resumed.running(), whole.running()):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(step.weight, last.weight)
    assert resumed.state() == whole.state()


def test_checkpoint_errors_leave_the_state_unchanged(rng):
    layer = conv_layer()
    w = rng.standard_normal((5, 8, 3, 3))
    layer.train_step(batches(rng, 1)[0], w)
    good = layer.state()
    with pytest.raises(nd.CheckpointError):
        layer.load_state(good[: len(good) // 2])
    with pytest.raises(nd.CheckpointError):
        layer.load_state(b"not a checkpoint")
    other = nd.ConvDeconvLayer(8, nd.ConvConfig(3, padding=1, block=2, sampling_stride=2), dtype="float64")
    with pytest.raises(nd.CheckpointError, match="block|plan|features"):
        other.load_state(good)
    with pytest.raises(nd.CheckpointError):
        conv_layer(dtype="float32").load_state(good)
    assert layer.state() == good


def test_state_in_caller_arrays(rng):
    """attach_state: the running state lives in caller arrays (e.g. torch buffers): every step
    writes it there, and what the caller loads into them is the state."""
    layer = conv_layer()
    S, F = layer.plan
    mean, D, counters = torch.zeros(S, F, dtype=torch.float64), torch.zeros(S, F, F, dtype=torch.float64), \
        torch.zeros(3, dtype=torch.int64)
    layer.attach_state(mean, D, counters)
    np.testing.assert_array_equal(D.numpy(), np.broadcast_to(np.eye(F), (S, F, F)))  # the initial state
    w = rng.standard_normal((5, 8, 3, 3))
    xs = batches(rng, 3)
    layer.train_step(xs[0], w)
    snapshot = (mean.clone(), D.clone(), counters.clone())
    assert counters[0] == 1
    rm, rD = layer.running()
    np.testing.assert_array_equal(mean.numpy(), rm)
    np.testing.assert_array_equal(D.numpy(), rD)
    layer.train_step(xs[1], w)
    a = layer.train_step(xs[2], w)
    for buf, s in zip((mean, D, counters), snapshot):  # the caller rewinds the state to step 1
        buf.copy_(s)
    assert layer.steps == 1
    layer.train_step(xs[1], w)
    b = layer.train_step(xs[2], w)
    np.testing.assert_array_equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="counters"):
        conv_layer().attach_state(mean.clone(), D.clone(), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        conv_layer().attach_state(mean.clone(), D.clone(), torch.zeros(3))


def test_failure_policy_throw_error_and_keep_previous(rng):
    w = rng.standard_normal((5, 8, 3, 3))
    x = batches(rng, 1)[0]
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    layer = conv_layer()
    layer.train_step(x, w)
    before = layer.state()
    with pytest.raises(nd.NumericalError):
        layer.train_step(bad, w)
    assert layer.state() == before
    keep = conv_layer(nd.LayerOptions(on_failure=nd.FailurePolicy.keep_previous))
    keep.train_step(x, w)
    mean, D = keep.running()
    step = keep.train_step(bad, w)
    assert keep.diagnostic.outcome == nd.StepOutcome.kept_previous
    assert any(r.status == nd.IsqrtStatus.non_finite for r in keep.diagnostic.reports)
    np.testing.assert_array_equal(step.mean, mean)
    assert np.isfinite(step.weight).all()


def test_backward_of_an_earlier_step(rng):
    """backward(step=diagnostic) differentiates the step that diagnostic describes, not the latest."""
    layer = conv_layer(nd.LayerOptions(freeze=True, freeze_iter=1))
    w = rng.standard_normal((5, 8, 3, 3))
    gw = rng.standard_normal(w.shape)
    gb = rng.standard_normal(5)
    x0, x1, x2 = batches(rng, 3)
    s0 = layer.train_step(x0, w)
    d0 = layer.diagnostic
    layer.train_step(x1, w)
    layer.train_step(x2, w)  # counter 2 > freeze_iter 1: frozen
    assert layer.diagnostic.outcome == nd.StepOutcome.frozen
    frozen = layer.backward(x0, w, None, s0.mean, s0.D, gw, gb)
    assert np.count_nonzero(frozen.x) == 0  # a frozen step holds mu and D constant
    full = layer.backward(x0, w, None, s0.mean, s0.D, gw, gb, step=d0)
    ref = nd.conv_statistics_step_vjp(x0, w, None, nd.ConvConfig(3, padding=1, block=4, sampling_stride=2,
                                                                  isqrt=nd.IsqrtOptions.fixed(5)),
                                      s0.mean, s0.D, gw, gb)
    assert rel(full.x, ref.x) <= 1e-12 and rel(full.weight, ref.weight) <= 1e-12
    const = layer.backward(x0, w, None, s0.mean, s0.D, gw, gb, step=d0, mode=nd.StatisticsGradient.constants)
    assert np.count_nonzero(const.x) == 0


def test_layer_argument_errors():
    with pytest.raises(TypeError, match="float16"):
        conv_layer(dtype="float16")
    with pytest.raises(ValueError, match="sampling_stride"):
        nd.ConvDeconvLayer(8, nd.ConvConfig(3, sampling_stride=0))
    with pytest.raises(ValueError, match="block 16 is larger than C=8"):
        nd.ChannelDeconvLayer(8, nd.ChannelConfig(block=16))
    layer = conv_layer(dtype="float32")
    x = np.zeros((2, 8, 6, 6))
    with pytest.raises(TypeError, match="the layer is float32, the arrays are float64"):
        layer.train_step(x, np.zeros((5, 8, 3, 3)))
    with pytest.raises(ValueError, match="weight has 4 input channels per group, the plan needs C/groups = 8/1"):
        layer.train_step(np.zeros((2, 4, 6, 6), np.float32), np.zeros((5, 4, 3, 3), np.float32))


def test_configurations_round_trip():
    c = nd.ConvConfig((3, 5), stride=(1, 2), padding=(1, 2), dilation=2, groups=2, block=8, sampling_stride=1,
                      eps=1e-3, isqrt=nd.IsqrtOptions.converged(1e-6, 50))
    assert (c.kernel_size, c.stride, c.padding, c.dilation) == ((3, 5), (1, 2), (1, 2), (2, 2))
    assert (c.groups, c.block, c.sampling_stride, c.eps) == (2, 8, 1, 1e-3)
    assert c.isqrt.tolerance == 1e-6 and c.isqrt.iterations == 50
    d = nd.ConvConfig(3)
    assert (d.block, d.sampling_stride, d.eps, d.isqrt.iterations) == (64, 3, 1e-5, 5)  # the reference defaults
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        nd.ConvConfig("3")
    o = nd.LayerOptions.improved()
    assert o.first_step_copy and o.average_covariance and o.on_failure == nd.FailurePolicy.keep_previous
