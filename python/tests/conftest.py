# SPDX-License-Identifier: MIT
"""Shared helpers of the Python tests: frameworks, layouts, float64 references and golden files.

Tolerances (relative error ||out - ref|| / ||ref||): 1e-9 in float64 (the C++ suite's bound for the
same goldens: float64 rounding through a few matrix products and up to 15 Newton-Schulz steps) and
1e-4 in float32 (the C++ suite's float32 bound for 5 Newton-Schulz steps: float32 rounding of
Cov and D grows with the condition number, ~1e2 here).
"""
import os
import sys
import zlib

import jax
import numpy as np
import pytest
import torch

jax.config.update("jax_enable_x64", True)  # float64 JAX arrays; the default is float32 only
import jax.numpy as jnp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(ROOT, "tests", "reference")
sys.path.insert(0, REFERENCE)  # golden_files, generate_goldens (the float64 reference model)
import golden_files  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 1e-4}
FRAMEWORKS = ("numpy", "torch", "jax")


def tol(dtype):
    return TOL[np.dtype(dtype).type]


def as_numpy(a):
    """a (NumPy, PyTorch or JAX) as a float64 NumPy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().numpy()
    return np.asarray(a, dtype=np.float64)


def rel(out, ref):
    out, ref = as_numpy(out), as_numpy(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    den = np.linalg.norm(ref)
    return np.linalg.norm(out - ref) / (den if den > 0 else 1.0)


def to_framework(a, framework):
    """A NumPy array as an array of `framework` (same values, same dtype)."""
    if framework == "numpy":
        return a
    if framework == "torch":
        return torch.from_numpy(np.ascontiguousarray(a))
    return jnp.asarray(a)


def framework_of(a):
    if isinstance(a, np.ndarray):
        return "numpy"
    if isinstance(a, torch.Tensor):
        return "torch"
    if isinstance(a, jax.Array):
        return "jax"
    return type(a).__name__


def image_layout(x, layout):
    """x (N, C, H, W) NumPy with the same logical values in memory layout `layout`: 'nchw'
    (contiguous), 'nhwc' (a channels-last view) or 'strided' (a slice of a larger array)."""
    if layout == "nchw":
        return np.ascontiguousarray(x)
    if layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    big = np.zeros((x.shape[0], 2 * x.shape[1], x.shape[2], 2 * x.shape[3]), x.dtype)
    big[:, ::2, :, ::2] = x
    return big[:, ::2, :, ::2]


def zca(x, eps):
    """float64 ZCA whitening of the rows of x: (data, mean, D) with D = (Cov + eps I)^(-1/2) by eigh."""
    x = as_numpy(x)
    mu = x.mean(axis=0)
    xc = x - mu
    w, v = np.linalg.eigh(xc.T @ xc / x.shape[0] + eps * np.eye(x.shape[1]))
    D = (v / np.sqrt(w)) @ v.T
    return xc @ D, mu, D


class Golden:
    """One golden file of tests/reference: header values and named arrays."""

    def __init__(self, path):
        with open(path) as f:
            header, arrays = golden_files.parse(f.read())
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.header = dict(header)
        self.arrays = {k: np.array(v) for k, v in arrays}

    def get(self, key):
        return int(self.header[key])

    def eps(self):
        return float(self.header["eps"])

    def has(self, key):
        return key in self.arrays

    def array(self, key, shape=None):
        a = self.arrays[key]
        return a.reshape(shape) if shape is not None else a


def goldens(folder):
    d = os.path.join(REFERENCE, folder)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".txt"))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh data per test, reproducible per run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
