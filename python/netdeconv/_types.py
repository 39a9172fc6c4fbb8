# SPDX-License-Identifier: MIT
"""The named tuples the functions and layers return."""
from typing import Any, List, NamedTuple, Optional


class Moments(NamedTuple):
    """Mergeable moments of S statistics of F features: count int64 (S,), mean float64 (S, F),
    scatter float64 (S, F, F) = sum over samples of (x - mean)(x - mean)^T."""
    count: Any
    mean: Any
    scatter: Any


class Whitening(NamedTuple):
    """whiten's result: data (x's shape) = (x - mean) D per block; mean (S, F), D (S, F, F);
    one IsqrtReport per block; samples = the rows the statistics used."""
    data: Any
    mean: Any
    D: Any
    reports: List[Any]
    samples: int


class StatisticsStep(NamedTuple):
    """A statistics step: W' (the weight's shape) and b' (Cout,), the statistics they fold,
    mean (S, F) and D (S, F, F), one IsqrtReport per statistic, and the sampled rows."""
    weight: Any
    bias: Any
    mean: Any
    D: Any
    reports: List[Any]
    samples: int


class StepGradients(NamedTuple):
    """A statistics step's backward: dL/dW, dL/db (None without a bias), dL/dx through mu and Cov,
    and one IsqrtReport per statistic."""
    weight: Any
    bias: Optional[Any]
    x: Any
    reports: List[Any]


class ChannelStep(NamedTuple):
    """The channel layer's training forward: y (x's shape); the statistics it used, mean (1, B) and
    D (1, B, B), and the remaining channels' (mean, variance) (2,) or None; the IsqrtReport."""
    y: Any
    mean: Any
    D: Any
    remaining: Optional[Any]
    report: Any
