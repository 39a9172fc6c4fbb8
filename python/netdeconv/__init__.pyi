# Type stubs of the netdeconv package: written by python/make_stubs.py from the extension module.
import enum
from typing import Any, TypeAlias

from ._types import ChannelStep, Moments, StatisticsStep, StepGradients, Whitening

Array: TypeAlias = Any
"""A NumPy, PyTorch, JAX or CuPy array, or any object with __dlpack__ or the buffer protocol."""

__version__: str

def build_info() -> dict[str, Any]:
    """The chosen kernels' instruction set ('isa'), the ones this CPU runs ('supported'), and the build."""



class NumericalError(ArithmeticError):
    pass

class CheckpointError(ValueError):
    pass

class IsqrtMethod(enum.Enum):
    """Newton-Schulz iteration or the float64 eigendecomposition"""

    newton_schulz = 0

    exact = 1

class IsqrtScaling(enum.Enum):
    """scale of A before the iteration: Frobenius norm or trace"""

    frobenius = 0

    trace = 1

class IsqrtStatus(enum.Enum):
    ok = 0

    not_converged = 1

    non_finite = 2

    not_positive_definite = 3

class BlockLayout(enum.Enum):
    """how channels are grouped into statistics (docs/method.md, section 3)"""

    interleaved_shared = 0

    contiguous_shared = 1

    grouped = 2

    independent = 3

class FailurePolicy(enum.Enum):
    throw_error = 0

    keep_previous = 1

    exact_fallback = 2

    raise_eps = 3

class StepOutcome(enum.Enum):
    computed = 0

    frozen = 1

    kept_previous = 2

    exact_fallback = 3

    eps_raised = 4

class StatisticsGradient(enum.Enum):
    """
    full: the gradient through mu and Cov; constants: mu and D held constant
    """

    full = 0

    constants = 1

class IsqrtReport:
    """the outcome of one inverse square root"""

    @property
    def iterations(self) -> int:
        """Newton-Schulz steps taken (0 for the exact path)"""

    @property
    def residual(self) -> float:
        """||I - Z Y||_F / sqrt(F) (exact path: ||D A D - I||_F / sqrt(F))"""

    @property
    def status(self) -> IsqrtStatus: ...

    def __repr__(self) -> str: ...

class IsqrtOptions:
    """
    Options of the inverse square root: IsqrtOptions.fixed(n), .converged(tol, max), .exact()
    """

    def __init__(self) -> None: ...

    @staticmethod
    def fixed(iterations: int) -> IsqrtOptions:
        """n coupled Newton-Schulz steps"""

    @staticmethod
    def converged(tolerance: float, max_iterations: int = 100) -> IsqrtOptions:
        """Newton-Schulz until the residual is <= tolerance"""

    @staticmethod
    def exact() -> IsqrtOptions:
        """float64 eigendecomposition"""

    @property
    def method(self) -> IsqrtMethod: ...

    @method.setter
    def method(self, arg: IsqrtMethod, /) -> None: ...

    @property
    def iterations(self) -> int: ...

    @iterations.setter
    def iterations(self, arg: int, /) -> None: ...

    @property
    def tolerance(self) -> float: ...

    @tolerance.setter
    def tolerance(self, arg: float, /) -> None: ...

    @property
    def scaling(self) -> IsqrtScaling: ...

    @scaling.setter
    def scaling(self, arg: IsqrtScaling, /) -> None: ...

    @property
    def final_residual(self) -> bool: ...

    @final_residual.setter
    def final_residual(self, arg: bool, /) -> None: ...

    def __repr__(self) -> str: ...

class ConvConfig:
    """a conv layer's statistics step (reference defaults)"""

    def __init__(self, kernel_size: Array, *, stride: Array = 1, padding: Array = 0, dilation: Array = 1, groups: int = 1, layout: BlockLayout = BlockLayout.interleaved_shared, block: int = 64, sampling_stride: int = 3, eps: float = 1e-05, isqrt: IsqrtOptions = ...) -> None: ...

    @property
    def kernel_size(self) -> tuple[int, int]: ...

    @property
    def stride(self) -> tuple[int, int]: ...

    @property
    def padding(self) -> tuple[int, int]: ...

    @property
    def dilation(self) -> tuple[int, int]: ...

    @property
    def groups(self) -> int: ...

    @groups.setter
    def groups(self, arg: int, /) -> None: ...

    @property
    def layout(self) -> BlockLayout: ...

    @layout.setter
    def layout(self, arg: BlockLayout, /) -> None: ...

    @property
    def block(self) -> int: ...

    @block.setter
    def block(self, arg: int, /) -> None: ...

    @property
    def sampling_stride(self) -> int: ...

    @sampling_stride.setter
    def sampling_stride(self, arg: int, /) -> None: ...

    @property
    def eps(self) -> float: ...

    @eps.setter
    def eps(self, arg: float, /) -> None: ...

    @property
    def isqrt(self) -> IsqrtOptions:
        """inverse square root options (IsqrtOptions)"""

    @isqrt.setter
    def isqrt(self, arg: IsqrtOptions, /) -> None: ...

class LinearConfig:
    """a linear layer's statistics step (reference defaults)"""

    def __init__(self, *, layout: BlockLayout = BlockLayout.contiguous_shared, block: int = 512, eps: float = 1e-05, isqrt: IsqrtOptions = ...) -> None: ...

    @property
    def layout(self) -> BlockLayout: ...

    @layout.setter
    def layout(self, arg: BlockLayout, /) -> None: ...

    @property
    def block(self) -> int: ...

    @block.setter
    def block(self, arg: int, /) -> None: ...

    @property
    def eps(self) -> float: ...

    @eps.setter
    def eps(self, arg: float, /) -> None: ...

    @property
    def isqrt(self) -> IsqrtOptions:
        """inverse square root options (IsqrtOptions)"""

    @isqrt.setter
    def isqrt(self, arg: IsqrtOptions, /) -> None: ...

class ChannelConfig:
    """the channel layer (reference defaults)"""

    def __init__(self, *, block: int = 16, sampling_stride: int = 3, eps: float = 0.01, isqrt: IsqrtOptions = ..., uncentred_covariance: bool = True) -> None: ...

    @property
    def block(self) -> int: ...

    @block.setter
    def block(self, arg: int, /) -> None: ...

    @property
    def sampling_stride(self) -> int: ...

    @sampling_stride.setter
    def sampling_stride(self, arg: int, /) -> None: ...

    @property
    def eps(self) -> float: ...

    @eps.setter
    def eps(self, arg: float, /) -> None: ...

    @property
    def uncentred_covariance(self) -> bool: ...

    @uncentred_covariance.setter
    def uncentred_covariance(self, arg: bool, /) -> None: ...

    @property
    def isqrt(self) -> IsqrtOptions:
        """inverse square root options (IsqrtOptions)"""

    @isqrt.setter
    def isqrt(self, arg: IsqrtOptions, /) -> None: ...

class LayerOptions:
    """running statistics and failure handling (reference defaults)"""

    def __init__(self, *, momentum: float = 0.1, freeze: bool = False, freeze_iter: int = 100, first_step_copy: bool = False, average_covariance: bool = False, relative_eps: bool = False, on_failure: FailurePolicy = FailurePolicy.throw_error, max_eps_raises: int = 3) -> None: ...

    @staticmethod
    def improved() -> LayerOptions:
        """
        first-step copy, running covariance, trace-relative eps, keep previous statistics on failure
        """

    @property
    def momentum(self) -> float: ...

    @momentum.setter
    def momentum(self, arg: float, /) -> None: ...

    @property
    def freeze(self) -> bool: ...

    @freeze.setter
    def freeze(self, arg: bool, /) -> None: ...

    @property
    def freeze_iter(self) -> int: ...

    @freeze_iter.setter
    def freeze_iter(self, arg: int, /) -> None: ...

    @property
    def first_step_copy(self) -> bool: ...

    @first_step_copy.setter
    def first_step_copy(self, arg: bool, /) -> None: ...

    @property
    def average_covariance(self) -> bool: ...

    @average_covariance.setter
    def average_covariance(self, arg: bool, /) -> None: ...

    @property
    def relative_eps(self) -> bool: ...

    @relative_eps.setter
    def relative_eps(self, arg: bool, /) -> None: ...

    @property
    def on_failure(self) -> FailurePolicy: ...

    @on_failure.setter
    def on_failure(self, arg: FailurePolicy, /) -> None: ...

    @property
    def max_eps_raises(self) -> int: ...

    @max_eps_raises.setter
    def max_eps_raises(self, arg: int, /) -> None: ...

def set_num_threads(threads: int) -> None:
    """
    OpenMP threads of every later call, from any Python thread (0: the default, the importing thread's
    omp_get_max_threads() at import)
    """

def get_num_threads() -> int: ...

isa: str

openmp: bool

simd_arch: str

compiler: str

address_sanitizer: bool

def whiten(x: Array, *, eps: float = 1e-05, isqrt: IsqrtOptions = ..., block: int = 0, columns_are_samples: bool = False, out: Array | None = None, check: bool = True) -> Whitening:
    """
    ZCA whitening of x (n, F), rows are samples (columns with columns_are_samples): per block of `block`
    features (0: all F), mu = mean, Cov = (X - mu)^T (X - mu) / n + eps I, D = Cov^(-1/2) (isqrt: exact
    float64 eigendecomposition by default), data = (X - mu) D. Returns Whitening(data (x's shape),
    mean (S, F/S), D (S, F/S, F/S), reports, samples). out= (x's shape, x's dtype) receives data.
    check: NumericalError when a block's root fails; check=False returns the reports instead.
    """

def apply_whitening(x: Array, mean: Array, D: Array, *, columns_are_samples: bool = False, out: Array | None = None) -> Array:
    """
    (x - mean_s) D_s per block of x (n, F): mean (S, F/S) and D (S, F/S, F/S) from whiten(); returns x's shape
    """

def inverse_sqrt(A: Array, isqrt: IsqrtOptions = ..., *, out: Array | None = None, check: bool = True) -> tuple[Array, IsqrtReport | list[IsqrtReport]]:
    """
    D = A^(-1/2) of symmetric positive definite A, (F, F) or a batch (B, F, F). isqrt: IsqrtOptions.fixed(n)
    (n coupled Newton-Schulz steps Y <- Y T, Z <- T Z, T = (3 I - Z Y) / 2 from Y = A / s, Z = I), .converged(tol),
    .exact() (float64 eigendecomposition). Returns (D, report): one IsqrtReport for (F, F), a list for (B, F, F).
    """

def inverse_sqrt_vjp(A: Array, G: Array, isqrt: IsqrtOptions = ..., *, check: bool = True) -> tuple[Array, IsqrtReport | list[IsqrtReport]]:
    """
    dL/dA of D = inverse_sqrt(A, isqrt) for G = dL/dD (A's shape): through the same Newton-Schulz steps, or the
    exact root's Daleckii-Krein form. Returns (dA, report(s)).
    """

def moments(x: Array, *, block: int = 0) -> Moments:
    """
    Mergeable moments of the rows of x (n, F) per block of `block` features (0: all): Moments(count (S,),
    mean (S, F/S), scatter (S, F/S, F/S)), float64
    """

def conv_moments(x: Array, config: ConvConfig) -> Moments:
    """
    Moments of the sampled patches of x (N, C, H, W) under a ConvConfig (its blocks, groups and sampling stride),
    without forming the patch matrix
    """

def linear_moments(x: Array, config: LinearConfig) -> Moments:
    """Moments of the rows of x (n, Fin) under a LinearConfig (its blocks)"""

def merge(a: Array, b: Array) -> Moments:
    """the Moments of the union of two sample sets (Chan et al.'s update)"""

def covariance(moments: Array, eps: float = 0.0, *, dtype: str | None = None) -> tuple[Array, Array]:
    """
    (Cov (S, F, F), mean (S, F)) of Moments: Cov = scatter / count + eps I, in dtype (default float64)
    """

def conv_statistics_step(x: Array, weight: Array, bias: Array | None, config: ConvConfig, *, out: Array | None = None, check: bool = True) -> StatisticsStep:
    """
    A conv layer's statistics step on x (N, C, H, W) (any strides: NCHW, NHWC, slices), weight
    (Cout, C/groups, kh, kw), bias (Cout,) or None: mu and D = Cov^(-1/2) per block of the sampled patches,
    W' = W D and b' = b - W' mu. Returns StatisticsStep(weight, bias, mean (S, F), D (S, F, F), reports,
    samples); out=(weight, bias, mean, D) writes into caller arrays.
    """

def linear_statistics_step(x: Array, weight: Array, bias: Array | None, config: LinearConfig = ..., *, out: Array | None = None, check: bool = True) -> StatisticsStep:
    """
    The same for a linear layer: x (n, Fin), weight (Fout, Fin), bias (Fout,) or None
    """

def fold(weight: Array, bias: Array | None, mean: Array, D: Array, config: ConvConfig | LinearConfig, *, out: Array | None = None) -> tuple[Array, Array]:
    """
    (W', b') = (W D, b - W' mu) for a conv weight (Cout, C/groups, kh, kw) with a ConvConfig, or a linear weight
    (Fout, Fin) with a LinearConfig; mean (S, F), D (S, F, F) as the config's plan gives them
    """

def fold_vjp(weight: Array, bias: Array | None, mean: Array, D: Array, grad_weight: Array, grad_bias: Array | None, config: ConvConfig | LinearConfig) -> tuple[Array, Array | None, Array, Array]:
    """
    (dL/dW, dL/db or None, dL/dD (S, F, F), dL/dmean (S, F)) of fold for grad_weight = dL/dW', grad_bias = dL/db'
    """

def conv_statistics_step_vjp(x: Array, weight: Array, bias: Array | None, config: ConvConfig, mean: Array, D: Array, grad_weight: Array, grad_bias: Array | None, *, check: bool = True) -> StepGradients:
    """
    Backward of conv_statistics_step: mean and D what it returned, grad_weight = dL/dW', grad_bias = dL/db'.
    Returns StepGradients(weight = dL/dW, bias = dL/db or None, x = dL/dx through mu and Cov, reports).
    """

def linear_statistics_step_vjp(x: Array, weight: Array, bias: Array | None, config: LinearConfig, mean: Array, D: Array, grad_weight: Array, grad_bias: Array | None, *, check: bool = True) -> StepGradients:
    """Backward of linear_statistics_step (as conv_statistics_step_vjp)"""

def conv_covariance_vjp(x: Array, config: ConvConfig, moments: Array, dcov: Array, dmean: Array | None = None) -> Array:
    """
    dL/dx (x's shape) of the patch covariance and mean (conv_moments + covariance) for dcov (S, F, F), dmean (S, F)
    """

def linear_covariance_vjp(x: Array, config: LinearConfig, moments: Array, dcov: Array, dmean: Array | None = None) -> Array:
    """dL/dx of the row covariance and mean (linear_moments + covariance)"""

def conv_statistics_plan(channels: int, config: ConvConfig) -> tuple[int, int]:
    """(S, F): the statistics and features per statistic of a conv layer"""

def linear_statistics_plan(features: int, config: LinearConfig) -> tuple[int, int]:
    """(S, F): the statistics and features per statistic of a linear layer"""

class StepDiagnostic:
    """what a layer's training step did (Layer.diagnostic)"""

    @property
    def outcome(self) -> StepOutcome: ...

    @property
    def reports(self) -> list:
        """one IsqrtReport per statistic, as finally used (empty when frozen)"""

    @property
    def eps_raises(self) -> int:
        """tenfold eps increases this step (FailurePolicy.raise_eps)"""

    @property
    def exact_blocks(self) -> list[int]:
        """statistics recomputed with the exact root"""

    @property
    def failures(self) -> int:
        """steps so far whose statistics failed"""

class ConvDeconvLayer:
    """
    A conv layer's deconvolution state (running statistics, counters, checkpoint)
    """

    def __init__(self, in_channels: int, config: ConvConfig, options: LayerOptions | None = None, *, dtype: str = 'float32') -> None: ...

    def train_step(self, x: Array, weight: Array, bias: Array | None = None, *, out: Array | None = None) -> StatisticsStep:
        """
        Training step: the statistics of x (or the running ones when frozen or kept), the running state's update, and W', b' with the statistics they fold. Returns StatisticsStep(weight, bias, mean (S, F), D (S, F, F), reports, samples); out=(weight, bias, mean, D) writes into caller arrays. A failure follows options.on_failure (throw_error: NumericalError, the state unchanged).
        """

    def eval(self, weight: Array, bias: Array | None = None, *, out: Array | None = None) -> tuple[Array, Array]:
        """
        (W', b') from the running statistics: the weights of an ordinary layer for inference
        """

    def backward(self, x: Array, weight: Array, bias: Array | None, mean: Array, D: Array, grad_weight: Array, grad_bias: Array | None, *, step: StepDiagnostic | None = None, mode: StatisticsGradient = StatisticsGradient.full) -> StepGradients:
        """
        Backward of a training step: x, weight, bias as in the step; mean, D what it returned; step its diagnostic (default: the latest step's); grad_weight = dL/dW', grad_bias = dL/db'. Returns StepGradients(weight = dL/dW, bias = dL/db, x = dL/dx through mu and Cov, reports).
        """

    def running(self) -> tuple[Array, Array]:
        """(mean (S, F), D (S, F, F)): the running statistics, copied"""

    def set_reduction(self, moments: Array | None, gradients: Array | None) -> None:
        """
        Data-parallel steps (docs/method.md section 7): every later train_step passes its shard's moments to moments(count int64 (S,), mean (S, F), scatter (S, F, F)), which returns the whole batch's, and every backward its statistic gradients to gradients(dcov (S, F, F), dmean (S, F)), which returns their sums over the shards (float64 NumPy arguments; both called with the GIL, inside the step). A shard may then hold fewer than 2 samples. None, None: local steps again.
        """

    def attach_state(self, mean: Array, D: Array, counters: Array, cov: Array | None = None) -> None:
        """
        Keeps the running state in caller arrays from now on: mean (S, F), D (S, F, F), counters int64 (3,) (steps, freeze counter, failed steps) and, with options.average_covariance, cov (S, F, F). The current state is written there first; whatever the caller loads into them later is the state.
        """

    def state(self) -> bytes:
        """the checkpoint bytes"""

    def load_state(self, state: bytes) -> None:
        """
        restores state() of a layer with the same configuration (CheckpointError otherwise, the state unchanged)
        """

    @property
    def plan(self) -> tuple[int, int]:
        """(S, F): the statistics and the features of each"""

    @property
    def dtype(self) -> str: ...

    @property
    def steps(self) -> int: ...

    @property
    def freeze_counter(self) -> int: ...

    @property
    def diagnostic(self) -> StepDiagnostic:
        """StepDiagnostic of the latest training step"""

class LinearDeconvLayer:
    """A linear layer's deconvolution state"""

    def __init__(self, in_features: int, config: LinearConfig, options: LayerOptions | None = None, *, dtype: str = 'float32') -> None: ...

    def train_step(self, x: Array, weight: Array, bias: Array | None = None, *, out: Array | None = None) -> StatisticsStep:
        """
        Training step: the statistics of x (or the running ones when frozen or kept), the running state's update, and W', b' with the statistics they fold. Returns StatisticsStep(weight, bias, mean (S, F), D (S, F, F), reports, samples); out=(weight, bias, mean, D) writes into caller arrays. A failure follows options.on_failure (throw_error: NumericalError, the state unchanged).
        """

    def eval(self, weight: Array, bias: Array | None = None, *, out: Array | None = None) -> tuple[Array, Array]:
        """
        (W', b') from the running statistics: the weights of an ordinary layer for inference
        """

    def backward(self, x: Array, weight: Array, bias: Array | None, mean: Array, D: Array, grad_weight: Array, grad_bias: Array | None, *, step: StepDiagnostic | None = None, mode: StatisticsGradient = StatisticsGradient.full) -> StepGradients:
        """
        Backward of a training step: x, weight, bias as in the step; mean, D what it returned; step its diagnostic (default: the latest step's); grad_weight = dL/dW', grad_bias = dL/db'. Returns StepGradients(weight = dL/dW, bias = dL/db, x = dL/dx through mu and Cov, reports).
        """

    def running(self) -> tuple[Array, Array]:
        """(mean (S, F), D (S, F, F)): the running statistics, copied"""

    def set_reduction(self, moments: Array | None, gradients: Array | None) -> None:
        """
        Data-parallel steps (docs/method.md section 7): every later train_step passes its shard's moments to moments(count int64 (S,), mean (S, F), scatter (S, F, F)), which returns the whole batch's, and every backward its statistic gradients to gradients(dcov (S, F, F), dmean (S, F)), which returns their sums over the shards (float64 NumPy arguments; both called with the GIL, inside the step). A shard may then hold fewer than 2 samples. None, None: local steps again.
        """

    def attach_state(self, mean: Array, D: Array, counters: Array, cov: Array | None = None) -> None:
        """
        Keeps the running state in caller arrays from now on: mean (S, F), D (S, F, F), counters int64 (3,) (steps, freeze counter, failed steps) and, with options.average_covariance, cov (S, F, F). The current state is written there first; whatever the caller loads into them later is the state.
        """

    def state(self) -> bytes:
        """the checkpoint bytes"""

    def load_state(self, state: bytes) -> None:
        """
        restores state() of a layer with the same configuration (CheckpointError otherwise, the state unchanged)
        """

    @property
    def plan(self) -> tuple[int, int]:
        """(S, F): the statistics and the features of each"""

    @property
    def dtype(self) -> str: ...

    @property
    def steps(self) -> int: ...

    @property
    def freeze_counter(self) -> int: ...

    @property
    def diagnostic(self) -> StepDiagnostic:
        """StepDiagnostic of the latest training step"""

class ChannelDeconvLayer:
    """
    The channel layer: whitens the first C - C mod B channels in groups of B with one shared (B, B) D, and standardises the rest with one mean and variance (the reference ChannelDeconv)
    """

    def __init__(self, channels: int, config: ChannelConfig = ..., options: LayerOptions | None = None, *, dtype: str = 'float32') -> None: ...

    def train_step(self, x: Array, *, out: Array | None = None) -> ChannelStep:
        """
        Training forward of x (N, C, H, W): ChannelStep(y, mean (1, B), D (1, B, B), remaining (2,) or None, report); out= (x's shape) receives y and may be x itself
        """

    def eval(self, x: Array, *, out: Array | None = None) -> Array:
        """evaluation forward with the running statistics"""

    def backward(self, x: Array, mean: Array, D: Array, remaining: Array | None, dy: Array, *, step: StepDiagnostic | None = None, mode: StatisticsGradient = StatisticsGradient.full) -> tuple[Array, IsqrtReport]:
        """
        (dL/dx, report) of a training step from its ChannelStep's mean, D, remaining and dy = dL/dy
        """

    def running(self) -> tuple[Array, Array]:
        """(mean (1, B), D (1, B, B)): the running statistics, copied"""

    @property
    def running_remaining(self) -> tuple[float, float]:
        """
        (mean, variance) of the unwhitened channels (0 and 1 when every channel is whitened)
        """

    def attach_state(self, mean: Array, D: Array, counters: Array, cov: Array | None = None, remaining: Array | None = None) -> None:
        """
        as ConvDeconvLayer.attach_state, with mean (1, B), D (1, B, B) and remaining (2,) when C mod B != 0
        """

    def state(self) -> bytes: ...

    def load_state(self, state: bytes) -> None: ...

    @property
    def dtype(self) -> str: ...

    @property
    def has_remaining(self) -> bool: ...

    @property
    def steps(self) -> int: ...

    @property
    def diagnostic(self) -> StepDiagnostic: ...

jax_ffi: bool
