# SPDX-License-Identifier: MIT
"""netdeconv.jax: whiten and the statistics steps inside jax.jit (XLA FFI custom calls) equal the
eager functions and the golden files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netdeconv as nd
from conftest import Golden, goldens, rel, tol, zca

ndj = pytest.importorskip("netdeconv.jax", reason="built without jaxlib: no XLA FFI handlers")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_whiten_under_jit(rng, dtype):
    x = (rng.standard_normal((300, 12)) * np.geomspace(1, 0.1, 12) + 1.0).astype(dtype)
    f = jax.jit(lambda a: ndj.whiten(a, eps=1e-3, block=4))
    w = f(jnp.asarray(x))
    assert isinstance(w.data, jax.Array) and w.data.dtype == dtype
    assert np.all(np.asarray(w.status) == 0)
    eager = nd.whiten(x, eps=1e-3, block=4)
    assert rel(w.data, eager.data) <= tol(dtype)
    assert rel(w.D, eager.D) <= tol(dtype)
    ref = np.concatenate([zca(x[:, 4 * s:4 * s + 4], 1e-3)[0] for s in range(3)], axis=1)
    assert rel(w.data, ref) <= tol(dtype)
    # Composes with other traced operations, and retraces for a new shape.
    g = jax.jit(lambda a: jnp.sum(ndj.whiten(a * 2.0, eps=1e-3).data ** 2))
    assert np.isclose(float(g(jnp.asarray(x))), float(np.sum(nd.whiten(x * 2.0, eps=1e-3).data.astype(np.float64) ** 2)),
                      rtol=1e-4)
    assert f(jnp.asarray(x[:100])).data.shape == (100, 12)


def test_failures_are_statuses_under_jit():
    x = jnp.full((20, 3), jnp.nan)
    w = jax.jit(ndj.whiten)(x)
    assert int(w.status[0]) == nd.IsqrtStatus.non_finite.value
    with pytest.raises(ValueError, match="block 4"):
        ndj.whiten(jnp.zeros((10, 6)), block=4)
    with pytest.raises(TypeError, match="int32"):
        ndj.whiten(jnp.zeros((10, 6), jnp.int32))


@pytest.mark.parametrize("path", [g for g in goldens("goldens") if "conv_" in g][:6] +
                         [g for g in goldens("goldens") if "linear_" in g], ids=lambda p: Golden(p).name)
def test_statistics_steps_under_jit(path):
    g = Golden(path)
    isqrt = nd.IsqrtOptions.fixed(g.get("n_iter"))
    if "conv_" in path:
        N, C, H, W, cout, k = (g.get(n) for n in ("N", "C", "H", "W", "Cout", "kernel"))
        cfg = nd.ConvConfig(k, stride=g.get("stride"), padding=g.get("padding"), dilation=g.get("dilation"),
                            groups=g.get("groups"),
                            layout=nd.BlockLayout.interleaved_shared if g.get("groups") == 1 else nd.BlockLayout.grouped,
                            block=g.get("block"), sampling_stride=g.get("sampling_stride"), eps=g.eps(), isqrt=isqrt)
        x = g.array("x", (N, C, H, W))
        w = g.array("weight", (cout, C // g.get("groups"), k, k))
        step = ndj.conv_statistics_step
    else:
        cfg = nd.LinearConfig(layout=nd.BlockLayout.contiguous_shared, block=g.get("block"), eps=g.eps(), isqrt=isqrt)
        x = g.array("x", (g.get("rows"), g.get("Fin")))
        w = g.array("weight", (g.get("Cout"), g.get("Fin")))
        step = ndj.linear_statistics_step
    b = g.array("bias") if g.get("bias") else None
    s = jax.jit(lambda x, w, b: step(x, w, b, cfg))(jnp.asarray(x), jnp.asarray(w), None if b is None else jnp.asarray(b))
    assert np.all(np.asarray(s.status) == 0)
    assert rel(s.mean, g.array("mean", s.mean.shape)) <= 1e-9
    assert rel(s.D, g.array("D", s.D.shape)) <= 1e-9
    assert rel(s.weight, g.array("weight_folded", s.weight.shape)) <= 1e-9
    assert rel(s.bias, g.array("bias_folded")) <= 1e-9
