# SPDX-License-Identifier: MIT
"""conv_statistics_step, linear_statistics_step, their backward, fold and the moments against the
golden files of tests/reference/goldens (an independent float64 PyTorch model of the reference
layers, which the C++ suite checks with the same tolerances), for NumPy, PyTorch and JAX inputs,
float32 and float64, and NCHW, NHWC and strided memory."""
import numpy as np
import pytest
import torch

import netdeconv as nd
from conftest import FRAMEWORKS, Golden, framework_of, goldens, image_layout, rel, to_framework, tol

CONV = [g for g in goldens("goldens") if "conv_" in g]
LINEAR = [g for g in goldens("goldens") if "linear_" in g]
BACKWARD_TOL = {np.float64: 1e-12, np.float32: 1e-5}  # the C++ suite's (measured 1.8e-15 and 7.4e-7)


def conv_config(g):
    return nd.ConvConfig(
        g.get("kernel"), stride=g.get("stride"), padding=g.get("padding"), dilation=g.get("dilation"),
        groups=g.get("groups"),
        layout=nd.BlockLayout.interleaved_shared if g.get("groups") == 1 else nd.BlockLayout.grouped,
        block=g.get("block"), sampling_stride=g.get("sampling_stride"), eps=g.eps(),
        isqrt=nd.IsqrtOptions.fixed(g.get("n_iter")))


def linear_config(g):
    return nd.LinearConfig(layout=nd.BlockLayout.contiguous_shared, block=g.get("block"), eps=g.eps(),
                           isqrt=nd.IsqrtOptions.fixed(g.get("n_iter")))


def conv_inputs(g, dtype, layout, framework):
    """x, weight, bias of a conv golden as `framework` arrays, x in memory `layout` (PyTorch keeps
    the NumPy strides, so NHWC there is channels_last; JAX arrays are always dense)."""
    N, C, H, W, cout, k = (g.get(n) for n in ("N", "C", "H", "W", "Cout", "kernel"))
    x = image_layout(g.array("x", (N, C, H, W)).astype(dtype), layout)
    w = g.array("weight", (cout, C // g.get("groups"), k, k)).astype(dtype)
    b = g.array("bias").astype(dtype) if g.get("bias") else None
    convert = torch.from_numpy if framework == "torch" else (lambda a: to_framework(a, framework))
    return convert(x), convert(w), None if b is None else convert(b)


def check_step(g, step, dtype):
    S, F = g.get("statistics"), g.get("features")
    assert step.samples == g.get("samples")
    assert rel(step.mean, g.array("mean", (S, F))) <= tol(dtype)
    assert rel(step.D, g.array("D", (S, F, F))) <= tol(dtype)
    assert rel(step.weight, g.array("weight_folded", step.weight.shape)) <= tol(dtype)
    assert rel(step.bias, g.array("bias_folded")) <= tol(dtype)
    assert all(r.status == nd.IsqrtStatus.ok for r in step.reports)


def check_gradients(g, grads, x_shape, w_shape, dtype):
    t = BACKWARD_TOL[np.dtype(dtype).type]
    assert rel(grads.x, g.array("grad_x", x_shape)) <= t
    assert rel(grads.weight, g.array("grad_weight", w_shape)) <= t
    if g.get("bias"):
        assert rel(grads.bias, g.array("grad_bias")) <= t
    else:
        assert grads.bias is None


@pytest.mark.parametrize("path", CONV, ids=lambda p: Golden(p).name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("framework,layout", [(f, "nchw") for f in FRAMEWORKS] + [("numpy", "nhwc"),
                                                                                ("torch", "nhwc"),
                                                                                ("numpy", "strided")])
def test_conv_step_and_backward(path, dtype, framework, layout):
    g = Golden(path)
    cfg = conv_config(g)
    x, w, b = conv_inputs(g, dtype, layout, framework)
    step = nd.conv_statistics_step(x, w, b, cfg)
    assert framework_of(step.weight) == framework and framework_of(step.D) == framework
    check_step(g, step, dtype)
    gw = to_framework(g.array("grad_weight_folded", tuple(w.shape)).astype(dtype), framework)
    gb = to_framework(g.array("grad_bias_folded").astype(dtype), framework)
    grads = nd.conv_statistics_step_vjp(x, w, b, cfg, step.mean, step.D, gw, gb)
    check_gradients(g, grads, tuple(x.shape), tuple(w.shape), dtype)
    # The layer object gives the same step and backward.
    layer = nd.ConvDeconvLayer(g.get("C"), cfg, dtype=np.dtype(dtype).name)
    ls = layer.train_step(x, w, b)
    check_step(g, ls, dtype)
    lg = layer.backward(x, w, b, ls.mean, ls.D, gw, gb)
    check_gradients(g, lg, tuple(x.shape), tuple(w.shape), dtype)


@pytest.mark.parametrize("path", LINEAR, ids=lambda p: Golden(p).name)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_linear_step_and_backward(path, dtype, framework):
    g = Golden(path)
    cfg = linear_config(g)
    rows, fin, cout = g.get("rows"), g.get("Fin"), g.get("Cout")
    x = to_framework(g.array("x", (rows, fin)).astype(dtype), framework)
    w = to_framework(g.array("weight", (cout, fin)).astype(dtype), framework)
    b = to_framework(g.array("bias").astype(dtype), framework) if g.get("bias") else None
    step = nd.linear_statistics_step(x, w, b, cfg)
    check_step(g, step, dtype)
    gw = to_framework(g.array("grad_weight_folded", (cout, fin)).astype(dtype), framework)
    gb = to_framework(g.array("grad_bias_folded").astype(dtype), framework)
    grads = nd.linear_statistics_step_vjp(x, w, b, cfg, step.mean, step.D, gw, gb)
    check_gradients(g, grads, (rows, fin), (cout, fin), dtype)
    layer = nd.LinearDeconvLayer(fin, cfg, dtype=np.dtype(dtype).name)
    check_step(g, layer.train_step(x, w, b), dtype)


@pytest.mark.parametrize("path", CONV[:4] + LINEAR[:1], ids=lambda p: Golden(p).name)
def test_moments_fold_and_fold_vjp_compose_to_the_step(path):
    """conv_moments/linear_moments + covariance + inverse_sqrt + fold = the step; fold_vjp's dL/dW
    equals the step backward's with mode constants (mu and D held fixed)."""
    g = Golden(path)
    conv = "conv_" in path
    cfg = conv_config(g) if conv else linear_config(g)
    if conv:
        x, w, b = conv_inputs(g, np.float64, "nchw", "numpy")
        m = nd.conv_moments(x, cfg)
    else:
        x = g.array("x", (g.get("rows"), g.get("Fin")))
        w = g.array("weight", (g.get("Cout"), g.get("Fin")))
        b = g.array("bias") if g.get("bias") else None
        m = nd.linear_moments(x, cfg)
    assert m.count.dtype == np.int64 and int(m.count.sum()) == g.get("samples")
    cov, mean = nd.covariance(m, g.eps())
    assert rel(mean, g.array("mean", mean.shape)) <= 1e-12
    D, _ = nd.inverse_sqrt(cov, nd.IsqrtOptions.fixed(g.get("n_iter")))
    assert rel(D, g.array("D", D.shape)) <= 1e-9
    W, B = nd.fold(w, b, mean, D, cfg)
    assert rel(W, g.array("weight_folded", W.shape)) <= 1e-9
    assert rel(B, g.array("bias_folded")) <= 1e-9
    gw = g.array("grad_weight_folded", w.shape)
    gb = g.array("grad_bias_folded")
    dW, db, dD, dmean = nd.fold_vjp(w, b, mean, D, gw, gb, cfg)
    # W' = W D is linear in W: <dL/dW, V> = <gw, V D> + <gb, -(V D) mu> for any V.
    v = np.random.default_rng(0).standard_normal(w.shape)
    Wv, Bv = nd.fold(v, None, mean, D, cfg)
    assert np.isclose(np.sum(dW * v), np.sum(gw * Wv) + np.sum(gb * Bv), rtol=1e-10)
    assert dD.shape == D.shape and dmean.shape == mean.shape
    assert (db is None) == (b is None)
