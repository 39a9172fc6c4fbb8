# SPDX-License-Identifier: MIT
"""Network deconvolution (Ye et al., ICLR 2020): whitening of patches and features, folded into
layer weights.

Every function reads NumPy, PyTorch, JAX or CuPy arrays (anything with ``__dlpack__`` or the
buffer protocol) of float32 or float64 in place, with any strides, never writes them, and returns
arrays of the framework of its first array. The formulas, shapes and layouts are in the
repository's docs/ (method.md, python.md).

The library is compiled once per instruction set (``_core_avx512``, ``_core_avx2``); the best
one this CPU runs (and the build has) is imported, as xsimd's run-time detection reports.
The environment variable ``NETDECONV_ISA`` picks another (one this CPU runs).
"""
import copyreg
import importlib
import importlib.util
import os

from . import _cpu
from ._types import ChannelStep, Moments, StatisticsStep, StepGradients, Whitening

# The modules this CPU runs and this build has (a build may leave some out: -Dpython_isas).
_supported = [isa for isa in _cpu.supported() if importlib.util.find_spec(f"{__name__}._core_{isa}") is not None]
if not _supported:
    raise ImportError(f"netdeconv: this CPU runs {_cpu.supported()} (an x86-64-v3 CPU has AVX2 and FMA), "
                      "and this build has none of those modules")
_requested = os.environ.get("NETDECONV_ISA", "")
if _requested:
    if _requested not in _supported:
        raise ImportError(f"NETDECONV_ISA={_requested!r}, but of the built modules this CPU runs only {_supported}")
    _isa = _requested
else:
    _isa = _supported[0]
_core = importlib.import_module(f"._core_{_isa}", __name__)

NumericalError = _core.NumericalError
CheckpointError = _core.CheckpointError
IsqrtMethod = _core.IsqrtMethod
IsqrtScaling = _core.IsqrtScaling
IsqrtStatus = _core.IsqrtStatus
IsqrtReport = _core.IsqrtReport
IsqrtOptions = _core.IsqrtOptions
BlockLayout = _core.BlockLayout
FailurePolicy = _core.FailurePolicy
StepOutcome = _core.StepOutcome
StatisticsGradient = _core.StatisticsGradient
StepDiagnostic = _core.StepDiagnostic
ConvConfig = _core.ConvConfig
LinearConfig = _core.LinearConfig
ChannelConfig = _core.ChannelConfig
LayerOptions = _core.LayerOptions
ConvDeconvLayer = _core.ConvDeconvLayer
LinearDeconvLayer = _core.LinearDeconvLayer
ChannelDeconvLayer = _core.ChannelDeconvLayer

whiten = _core.whiten
apply_whitening = _core.apply_whitening
inverse_sqrt = _core.inverse_sqrt
inverse_sqrt_vjp = _core.inverse_sqrt_vjp
moments = _core.moments
conv_moments = _core.conv_moments
linear_moments = _core.linear_moments
merge = _core.merge
covariance = _core.covariance
conv_statistics_step = _core.conv_statistics_step
linear_statistics_step = _core.linear_statistics_step
fold = _core.fold
fold_vjp = _core.fold_vjp
conv_statistics_step_vjp = _core.conv_statistics_step_vjp
linear_statistics_step_vjp = _core.linear_statistics_step_vjp
conv_covariance_vjp = _core.conv_covariance_vjp
linear_covariance_vjp = _core.linear_covariance_vjp
conv_statistics_plan = _core.conv_statistics_plan
linear_statistics_plan = _core.linear_statistics_plan
set_num_threads = _core.set_num_threads
get_num_threads = _core.get_num_threads

__version__ = "0.1.0"

# Pickling (copy.deepcopy and torch.save of modules that hold them) of the configuration types: by
# their fields, enums by name, so that a pickle does not name the instruction-set module it came from.
_PICKLED = {
    "ConvConfig": ("kernel_size", "stride", "padding", "dilation", "groups", "layout", "block", "sampling_stride",
                   "eps", "isqrt"),
    "LinearConfig": ("layout", "block", "eps", "isqrt"),
    "ChannelConfig": ("block", "sampling_stride", "eps", "isqrt", "uncentred_covariance"),
    "LayerOptions": ("momentum", "freeze", "freeze_iter", "first_step_copy", "average_covariance", "relative_eps",
                     "on_failure", "max_eps_raises"),
    "IsqrtOptions": ("method", "iterations", "tolerance", "scaling", "final_residual"),
}
_ENUMS = ("BlockLayout", "FailurePolicy", "IsqrtMethod", "IsqrtScaling")


def _plain(value):
    name = type(value).__name__
    if name in _PICKLED:
        return ("netdeconv", name, tuple((f, _plain(getattr(value, f))) for f in _PICKLED[name]))
    if name in _ENUMS:
        return ("netdeconv", name, value.name)
    return value


def _restored(value):
    if not (isinstance(value, tuple) and len(value) == 3 and value[0] == "netdeconv"):
        return value
    _, name, body = value
    if name in _ENUMS:
        return getattr(globals()[name], body)
    fields = {field: _restored(v) for field, v in body}
    if name == "ConvConfig":  # the geometry is read-only
        obj = ConvConfig(fields.pop("kernel_size"), stride=fields.pop("stride"), padding=fields.pop("padding"),
                         dilation=fields.pop("dilation"))
    else:
        obj = globals()[name]()
    for field, v in fields.items():
        setattr(obj, field, v)
    return obj


for _name in _PICKLED:
    copyreg.pickle(globals()[_name], lambda obj: (_restored, (_plain(obj),)))


def build_info():
    """What was chosen and how it was built: the kernels' instruction set (``isa``), the ones this
    CPU runs (``supported``), xsimd's architecture in that module, OpenMP, the compiler, and
    whether the module is built with AddressSanitizer (scripts/sanitize)."""
    return {
        "isa": _isa,
        "supported": list(_supported),
        "requested": _requested or None,
        "simd_arch": _core.simd_arch,
        "openmp": _core.openmp,
        "compiler": _core.compiler,
        "address_sanitizer": _core.address_sanitizer,
        "version": __version__,
    }


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("copyreg", "importlib", "os")]
