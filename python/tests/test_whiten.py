# SPDX-License-Identifier: MIT
"""whiten, apply_whitening, inverse_sqrt and the moments on fresh random shapes and data against
float64 NumPy references (eigh, np.cov), for NumPy, PyTorch and JAX inputs."""
import numpy as np
import pytest
import torch

import netdeconv as nd
from conftest import FRAMEWORKS, as_numpy, framework_of, rel, to_framework, tol, zca


def correlated(rng, n, F, dtype=np.float64):
    """n samples of F correlated features with non-zero means; the population covariance has
    condition 1e2, so float32 results stay within 1e-4 of float64 (error ~ cond * 6e-8)."""
    Q, _ = np.linalg.qr(rng.standard_normal((F, F)))
    M = np.geomspace(1, 0.1, F)[:, None] * Q
    return (rng.standard_normal((n, F)) @ M + rng.standard_normal(F)).astype(dtype)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_whiten_matches_eigh_zca(rng, framework, dtype):
    for _ in range(3):
        F = int(rng.integers(1, 40))
        n = int(rng.integers(4 * F + 8, 4 * F + 400))  # n >> F: Cov well conditioned (float32 error ~ cond * 6e-8)
        x = correlated(rng, n, F, dtype)
        eps = float(rng.choice([0.0, 1e-5, 1e-2]))
        w = nd.whiten(to_framework(x, framework), eps=eps)
        data, mu, D = zca(x, eps)
        assert framework_of(w.data) == framework and w.data.dtype == to_framework(x, framework).dtype
        assert w.samples == n and len(w.reports) == 1
        assert rel(w.data, data) <= tol(dtype)
        assert rel(w.mean[0], mu) <= tol(dtype)
        assert rel(w.D[0], D) <= tol(dtype)


def test_whiten_blocks_columns_and_newton_schulz(rng):
    x = correlated(rng, 300, 24)
    w = nd.whiten(x, block=8, eps=1e-3)
    assert w.D.shape == (3, 8, 8) and len(w.reports) == 3
    ref = np.concatenate([zca(x[:, 8 * s:8 * s + 8], 1e-3)[0] for s in range(3)], axis=1)
    assert rel(w.data, ref) <= 1e-9
    wt = nd.whiten(np.ascontiguousarray(x.T), columns_are_samples=True, eps=1e-3)
    assert rel(wt.data.T, zca(x, 1e-3)[0]) <= 1e-9
    ns = nd.whiten(x, eps=1e-3, isqrt=nd.IsqrtOptions.converged(1e-10))
    assert ns.reports[0].iterations > 0 and ns.reports[0].residual <= 1e-10
    assert rel(ns.data, zca(x, 1e-3)[0]) <= 1e-8


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_apply_whitening_reuses_the_statistics(rng, framework):
    x, y = correlated(rng, 200, 12), correlated(rng, 50, 12)
    w = nd.whiten(x, block=6)
    out = nd.apply_whitening(to_framework(y, framework), to_framework(w.mean, framework), to_framework(w.D, framework))
    ref = np.concatenate([(y[:, 6 * s:6 * s + 6] - w.mean[s]) @ w.D[s] for s in range(2)], axis=1)
    assert framework_of(out) == framework and rel(out, ref) <= 1e-12


def coupled_newton_schulz(A, n):
    """The float64 oracle of the coupled iteration: Y0 = A/||A||_F, Z0 = I,
    T = (3I - Z Y)/2, Y <- Y T, Z <- T Z; D = Z / sqrt(||A||_F)."""
    s = np.linalg.norm(A)
    Y, Z, I = A / s, np.eye(A.shape[0]), np.eye(A.shape[0])
    for _ in range(n):
        T = (3 * I - Z @ Y) / 2
        Y, Z = Y @ T, T @ Z
    return Z / np.sqrt(s)


def spd(rng, F, cond=1e2):
    Q, _ = np.linalg.qr(rng.standard_normal((F, F)))
    return (Q * np.geomspace(1, 1 / cond, F)) @ Q.T


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_inverse_sqrt_fixed_converged_exact(rng, framework):
    F = int(rng.integers(2, 30))
    A = spd(rng, F)
    for n in (1, 5, 12):
        D, r = nd.inverse_sqrt(to_framework(A, framework), nd.IsqrtOptions.fixed(n), check=False)
        assert r.iterations == n and rel(D, coupled_newton_schulz(A, n)) <= 1e-9
    w, v = np.linalg.eigh(A)
    exact = (v / np.sqrt(w)) @ v.T
    D, r = nd.inverse_sqrt(to_framework(A, framework), nd.IsqrtOptions.exact())
    assert r.status == nd.IsqrtStatus.ok and rel(D, exact) <= 1e-12
    D, r = nd.inverse_sqrt(to_framework(A, framework), nd.IsqrtOptions.converged(1e-9))
    assert r.residual <= 1e-9 and rel(D, exact) <= 1e-7
    batch = np.stack([spd(rng, F) for _ in range(4)])
    Db, reports = nd.inverse_sqrt(to_framework(batch, framework), nd.IsqrtOptions.exact())
    assert len(reports) == 4
    for b in range(4):
        w, v = np.linalg.eigh(batch[b])
        assert rel(as_numpy(Db)[b], (v / np.sqrt(w)) @ v.T) <= 1e-12


def test_inverse_sqrt_failures_are_statuses_or_numerical_errors(rng):
    A = spd(rng, 6)
    A[0, 0] = -1.0
    with pytest.raises(nd.NumericalError, match="not_positive_definite"):
        nd.inverse_sqrt(A, nd.IsqrtOptions.exact())
    _, r = nd.inverse_sqrt(A, nd.IsqrtOptions.exact(), check=False)
    assert r.status == nd.IsqrtStatus.not_positive_definite
    B = spd(rng, 6)
    B[1, 2] = np.nan
    _, r = nd.inverse_sqrt(B, nd.IsqrtOptions.fixed(5), check=False)
    assert r.status == nd.IsqrtStatus.non_finite
    _, r = nd.inverse_sqrt(spd(rng, 6, 1e8), nd.IsqrtOptions.converged(1e-12, 3), check=False)
    assert r.status == nd.IsqrtStatus.not_converged
    with pytest.raises(nd.NumericalError, match="NumericalError|failed"):
        nd.whiten(np.full((10, 3), np.inf))


@pytest.mark.parametrize("isqrt", [nd.IsqrtOptions.exact(), nd.IsqrtOptions.fixed(6)], ids=["exact", "fixed6"])
def test_inverse_sqrt_vjp_matches_finite_differences(rng, isqrt):
    F = 5
    A = spd(rng, F, 10)
    G = rng.standard_normal((F, F))
    dA, _ = nd.inverse_sqrt_vjp(A, G, isqrt)
    E = rng.standard_normal((F, F))
    E = (E + E.T) / 2  # D is a function of symmetric A
    h = 1e-6
    fd = (np.sum(G * nd.inverse_sqrt(A + h * E, isqrt)[0]) - np.sum(G * nd.inverse_sqrt(A - h * E, isqrt)[0])) / (2 * h)
    assert np.isclose(np.sum(dA * E), fd, rtol=1e-6)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_moments_merge_covariance(rng, framework):
    x, y = correlated(rng, 70, 9), correlated(rng, 30, 9)
    ma = nd.moments(to_framework(x, framework), block=3)
    mb = nd.moments(to_framework(y, framework), block=3)
    assert framework_of(ma.mean) == framework
    m = nd.merge(ma, mb)
    both = np.concatenate([x, y])
    assert list(as_numpy(m.count)) == [100, 100, 100]
    for s in range(3):
        cols = both[:, 3 * s:3 * s + 3]
        assert rel(as_numpy(m.mean)[s], cols.mean(axis=0)) <= 1e-13
        assert rel(as_numpy(m.scatter)[s], (cols - cols.mean(0)).T @ (cols - cols.mean(0))) <= 1e-12
    for dtype in ("float32", np.float32, np.dtype("float32"), torch.float32):
        cov, mean = nd.covariance(m, 1e-3, dtype=dtype)
        assert cov.dtype == to_framework(np.zeros(1, np.float32), framework).dtype
    assert rel(as_numpy(cov)[1], np.cov(both[:, 3:6].T, bias=True) + 1e-3 * np.eye(3)) <= 1e-6


def test_covariance_vjp_matches_finite_differences(rng):
    x = correlated(rng, 40, 6)
    cfg = nd.LinearConfig(block=3, layout=nd.BlockLayout.contiguous_shared)
    m = nd.linear_moments(x, cfg)
    dcov = rng.standard_normal((m.mean.shape[0], 3, 3))
    dmean = rng.standard_normal(m.mean.shape)
    dx = nd.linear_covariance_vjp(x, cfg, m, dcov, dmean)
    v = rng.standard_normal(x.shape)

    def loss(z):
        cov, mean = nd.covariance(nd.linear_moments(z, cfg))
        return np.sum(dcov * cov) + np.sum(dmean * mean)

    h = 1e-6
    assert np.isclose(np.sum(dx * v), (loss(x + h * v) - loss(x - h * v)) / (2 * h), rtol=1e-6)
