# SPDX-License-Identifier: MIT
"""netdeconv inside ``jax.jit``: whiten and the conv and linear statistics steps as XLA custom
calls (the FFI handlers of the extension module, registered here for the CPU platform).

The functions take and return JAX arrays (traced or not); shapes are static, as ``jit`` needs.
Failures of the data are not exceptions inside a compiled function: each function returns
``status``, an int32 array with one ``netdeconv.IsqrtStatus`` value per statistic (0: ok), and the
statistics of a failed block are NaN. Bad shapes or configurations raise ``ValueError`` when
traced. No gradients yet: use the ``*_vjp`` functions of ``netdeconv`` outside ``jit``.

    import jax, netdeconv.jax as ndj
    f = jax.jit(lambda x: ndj.whiten(x, eps=1e-3).data)
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import ConvConfig, IsqrtMethod, IsqrtOptions, LinearConfig, _core
from . import conv_statistics_plan, linear_statistics_plan

try:
    from jax import ffi as _ffi  # jax >= 0.4.38's successor
except ImportError:
    from jax.extend import ffi as _ffi

if not getattr(_core, "jax_ffi", False):
    raise ImportError("netdeconv was built without jaxlib in its build environment, so without the XLA FFI "
                      "handlers that netdeconv.jax needs; rebuild with jaxlib installed")

for _name, _capsule in _core._jax_targets().items():
    _ffi.register_ffi_target(_name, _capsule, platform="cpu")


class JitWhitening(NamedTuple):
    """data (x's shape), mean (S, F/S), D (S, F/S, F/S), status int32 (S,)."""
    data: jax.Array
    mean: jax.Array
    D: jax.Array
    status: jax.Array


class JitStatisticsStep(NamedTuple):
    """W' (the weight's shape), b' (Cout,), mean (S, F), D (S, F, F), status int32 (S,)."""
    weight: jax.Array
    bias: jax.Array
    mean: jax.Array
    D: jax.Array
    status: jax.Array


def _suffix(*arrays):
    dtypes = {jnp.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"netdeconv.jax: the arrays have dtypes {sorted(str(d) for d in dtypes)}, expected one")
    dtype = dtypes.pop()
    if dtype == jnp.float32:
        return "f32", dtype
    if dtype == jnp.float64:
        return "f64", dtype
    raise TypeError(f"netdeconv.jax: dtype {dtype}, expected float32 or float64")


def _isqrt_attrs(isqrt: IsqrtOptions):
    return dict(isqrt_method=np.int64(1 if isqrt.method == IsqrtMethod.exact else 0),
                isqrt_iterations=np.int64(isqrt.iterations),
                isqrt_tolerance=np.float64(isqrt.tolerance if isqrt.tolerance > 0 else 0.0))


def _check_rank(name, a, rank, axes):
    if a.ndim != rank:
        raise ValueError(f"netdeconv.jax: {name} must have {rank} dimensions {axes}, got shape {tuple(a.shape)}")


def whiten(x, *, eps: float = 1e-5, block: int = 0, isqrt: IsqrtOptions = IsqrtOptions.exact()) -> JitWhitening:
    """ZCA whitening of the rows of x (n, F) per block of `block` features (0: all), as
    netdeconv.whiten: data = (x - mu) D, D = (Cov + eps I)^(-1/2)."""
    x = jnp.asarray(x)
    _check_rank("x", x, 2, "(n, F)")
    suffix, dtype = _suffix(x)
    n, F = x.shape
    b = F if block == 0 else block
    if b < 1 or F % b or eps < 0:
        raise ValueError(f"netdeconv.jax.whiten: x has {F} features, block {block}, eps {eps}: "
                         "need block dividing F and eps >= 0")
    S = F // b
    out = (jax.ShapeDtypeStruct((n, F), dtype), jax.ShapeDtypeStruct((S, b), dtype),
           jax.ShapeDtypeStruct((S, b, b), dtype), jax.ShapeDtypeStruct((S,), jnp.int32))
    call = _ffi.ffi_call(f"netdeconv_whiten_{suffix}", out)
    return JitWhitening(*call(x, eps=np.float64(eps), block=np.int64(block), **_isqrt_attrs(isqrt)))


def _bias(b, weight):
    """The bias argument (zeros without one) and the has_bias attribute."""
    return (jnp.zeros((weight.shape[0],), weight.dtype), np.int64(0)) if b is None else (jnp.asarray(b), np.int64(1))


def _step_results(weight, S, F, dtype):
    """The shapes of a statistics step's results: W', b', mean, D and the statuses."""
    return (jax.ShapeDtypeStruct(weight.shape, dtype), jax.ShapeDtypeStruct((weight.shape[0],), dtype),
            jax.ShapeDtypeStruct((S, F), dtype), jax.ShapeDtypeStruct((S, F, F), dtype),
            jax.ShapeDtypeStruct((S,), jnp.int32))


def conv_statistics_step(x, weight, bias, config: ConvConfig) -> JitStatisticsStep:
    """The conv statistics step of netdeconv.conv_statistics_step: x (N, C, H, W), weight
    (Cout, C/groups, kh, kw), bias (Cout,) or None; contiguous NCHW inside XLA."""
    x, weight = jnp.asarray(x), jnp.asarray(weight)
    _check_rank("x", x, 4, "(N, C, H, W)")
    _check_rank("weight", weight, 4, "(Cout, C/groups, kh, kw)")
    b, has_bias = _bias(bias, weight)
    suffix, dtype = _suffix(x, weight, b)
    S, F = conv_statistics_plan(x.shape[1], config)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = config.kernel_size, config.stride, config.padding, config.dilation
    call = _ffi.ffi_call(f"netdeconv_conv_step_{suffix}", _step_results(weight, S, F, dtype))
    i = np.int64
    return JitStatisticsStep(*call(
        x, weight, b, kernel_h=i(kh), kernel_w=i(kw), stride_h=i(sh), stride_w=i(sw), pad_h=i(ph), pad_w=i(pw),
        dilation_h=i(dh), dilation_w=i(dw), groups=i(config.groups), layout=i(int(config.layout.value)),
        block=i(config.block), sampling_stride=i(config.sampling_stride), has_bias=has_bias,
        eps=np.float64(config.eps), **_isqrt_attrs(config.isqrt)))


def linear_statistics_step(x, weight, bias, config: LinearConfig = LinearConfig()) -> JitStatisticsStep:
    """The linear statistics step of netdeconv.linear_statistics_step: x (n, Fin), weight (Fout, Fin)."""
    x, weight = jnp.asarray(x), jnp.asarray(weight)
    _check_rank("x", x, 2, "(n, Fin)")
    _check_rank("weight", weight, 2, "(Fout, Fin)")
    b, has_bias = _bias(bias, weight)
    suffix, dtype = _suffix(x, weight, b)
    S, F = linear_statistics_plan(x.shape[1], config)
    call = _ffi.ffi_call(f"netdeconv_linear_step_{suffix}", _step_results(weight, S, F, dtype))
    return JitStatisticsStep(*call(
        x, weight, b, layout=np.int64(int(config.layout.value)), block=np.int64(config.block), has_bias=has_bias,
        eps=np.float64(config.eps), **_isqrt_attrs(config.isqrt)))


__all__ = ["JitWhitening", "JitStatisticsStep", "whiten", "conv_statistics_step", "linear_statistics_step"]
