# SPDX-License-Identifier: MIT
"""Calls from several Python threads (the GIL is released inside every computation): stateless
functions and a shared layer object give the results of sequential calls."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import netdeconv as nd


def test_concurrent_stateless_calls(rng):
    xs = [rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) for _ in range(8)]
    expected = [nd.whiten(x).data for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: nd.whiten(x).data, xs))
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)


def test_concurrent_calls_on_one_layer_are_serialised(rng):
    cfg = nd.LinearConfig(block=8)
    w = rng.standard_normal((4, 16))
    xs = [rng.standard_normal((64, 16)) for _ in range(16)]
    layer = nd.LinearDeconvLayer(16, cfg, dtype="float64")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda x: layer.train_step(x, w), xs))
    assert layer.steps == 16
    mean, D = layer.running()
    assert np.isfinite(mean).all() and np.isfinite(D).all()
    # The running mean after 16 steps of momentum 0.1 from 0 is a convex combination of the batch
    # means (whatever the order), so it lies within their range scaled by 1 - 0.9^16.
    batch_means = np.stack([x.reshape(-1, 8).mean(axis=0) for x in xs])
    scale = 1 - 0.9 ** 16
    assert (mean[0] <= scale * batch_means.max(axis=0) + 1e-12).all()
    assert (mean[0] >= scale * batch_means.min(axis=0) - 1e-12).all()


def test_num_threads_setting(rng):
    """The thread count is the module's, not the calling thread's OpenMP default; 1 and 2 threads
    agree to float64 rounding of a differently split sum: 1e-12 relative on data whose covariance
    is well conditioned (the whitened data's error grows with the condition number)."""
    x = rng.standard_normal((2000, 64)) * np.geomspace(1, 0.1, 64) + 3.0
    default = nd.get_num_threads()
    assert default >= 1
    try:
        results = {}
        for n in (1, 2):
            nd.set_num_threads(n)
            assert nd.get_num_threads() == n
            results[n] = nd.whiten(x).data
            with ThreadPoolExecutor(2) as pool:  # the same count, so the same bits, in other threads
                for other in pool.map(lambda _: nd.whiten(x).data, range(2)):
                    np.testing.assert_array_equal(other, results[n])
        nd.set_num_threads(0)
        assert nd.get_num_threads() == default
    finally:
        nd.set_num_threads(0)
    assert np.linalg.norm(results[1] - results[2]) / np.linalg.norm(results[2]) <= 1e-12
