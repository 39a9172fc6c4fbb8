# SPDX-License-Identifier: MIT
"""PyTorch modules over the layers' state objects (first part of the PyTorch issue: CPU tensors,
float32/float64, no process sync yet).

``Deconv2d`` and ``DeconvLinear`` take the reference layers' arguments and defaults. In training,
``W', b'`` come from the library's statistics step of the batch (``ConvDeconvLayer.train_step``)
and the framework's own conv or matmul runs with them; the backward goes through
``ConvDeconvLayer.backward`` (dL/dW, dL/db and dL/dx through mu and Cov), autograd adds the conv's
own gradients. In evaluation, ``W', b'`` fold the running statistics (differentiable in W and b
through ``fold_vjp``). The running statistics are buffers (``running_mean`` (S, F), ``running_D``
(S, F, F), ``counters`` int64 (3,)), which the C++ layer reads and writes in place, so
``state_dict`` holds them.
"""
import torch
import torch.nn.functional as Fn

from . import (BlockLayout, ConvConfig, ConvDeconvLayer, IsqrtOptions, LayerOptions, LinearConfig, LinearDeconvLayer,
               fold_vjp)


class _TrainFold(torch.autograd.Function):
    """(W', b') of the batch x, with the step backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        step = layer.train_step(x.detach(), weight.detach(), bias.detach())
        ctx.layer, ctx.diagnostic = layer, layer.diagnostic
        ctx.save_for_backward(x, weight, bias, step.mean, step.D)
        return step.weight, step.bias

    @staticmethod
    def backward(ctx, grad_weight, grad_bias):
        x, weight, bias, mean, D = ctx.saved_tensors
        g = ctx.layer.backward(x.detach(), weight.detach(), bias.detach(), mean, D, grad_weight.contiguous(),
                               grad_bias.contiguous(), step=ctx.diagnostic)
        return g.x, g.weight, g.bias, None


class _EvalFold(torch.autograd.Function):
    """(W', b') of the running statistics, differentiable in W and b."""

    @staticmethod
    def forward(ctx, weight, bias, layer, config):
        W, B = layer.eval(weight.detach(), bias.detach())
        mean, D = layer.running()
        ctx.config = config
        ctx.save_for_backward(weight, bias, torch.as_tensor(mean), torch.as_tensor(D))
        return W, B

    @staticmethod
    def backward(ctx, grad_weight, grad_bias):
        weight, bias, mean, D = ctx.saved_tensors
        dW, db, _, _ = fold_vjp(weight.detach(), bias.detach(), mean, D, grad_weight.contiguous(),
                                grad_bias.contiguous(), ctx.config)
        return dW, db, None, None


class _DeconvMixin:
    """The state object, its buffers, and the switch between training and evaluation."""

    def _init_state(self, config, options):
        self._config, self._options = config, options
        S, F = self._make_layer(torch.float32).plan
        self.register_buffer("running_mean", torch.zeros(S, F))
        self.register_buffer("running_D", torch.eye(F).repeat(S, 1, 1))
        self.register_buffer("counters", torch.zeros(3, dtype=torch.int64))
        self._attached = None

    def _dtype_name(self, dtype):
        name = {torch.float32: "float32", torch.float64: "float64"}.get(dtype)
        if name is None:
            raise TypeError(f"{type(self).__name__}: dtype {dtype}, expected torch.float32 or torch.float64")
        return name

    def _state(self, dtype):
        """The state object for dtype, attached to the buffers (again after .to() or .double(), which
        replace them: the buffers' values are the state)."""
        key = (self.running_mean.data_ptr(), self.running_D.data_ptr(), self.counters.data_ptr(), dtype)
        if self._attached is None or self._attached[0] != key:
            if self.running_mean.dtype != dtype:
                raise TypeError(f"{type(self).__name__}: the input is {dtype} but the running statistics are "
                                f"{self.running_mean.dtype}; convert the module (.to({dtype}))")
            saved = [b.clone() for b in (self.running_mean, self.running_D, self.counters)]
            layer = self._make_layer(dtype)
            layer.attach_state(self.running_mean, self.running_D, self.counters)
            with torch.no_grad():  # attach wrote the fresh layer's state; the buffers' is the one
                for b, s in zip((self.running_mean, self.running_D, self.counters), saved):
                    b.copy_(s)
            self._attached = (key, layer)
        return self._attached[1]

    def _folded(self, x):
        if x.device.type != "cpu":
            raise TypeError(f"{type(self).__name__}: this build of netdeconv runs on the CPU, x is on {x.device}")
        bias = self.bias if self.bias is not None else torch.zeros(self.weight.shape[0], dtype=self.weight.dtype)
        layer = self._state(x.dtype)
        if self.training:
            return _TrainFold.apply(x, self.weight, bias, layer)
        return _EvalFold.apply(self.weight, bias, layer, self._config)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Deconv2d(_DeconvMixin, torch.nn.Conv2d):
    """Drop-in for the reference FastDeconv: a conv whose input patches are whitened with the batch's
    statistics in training (running statistics in evaluation), folded into its weights.

    x (N, C, H, W) float32/float64 on the CPU, any memory format (channels_last included)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=1, dilation=1, groups=1, bias=True,
                 eps=1e-5, n_iter=5, momentum=0.1, block=64, sampling_stride=3, freeze=False, freeze_iter=100,
                 options=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        config = ConvConfig(_pair(kernel_size), stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation),
                            groups=groups, layout=BlockLayout.interleaved_shared if groups == 1 else BlockLayout.grouped,
                            block=block, sampling_stride=sampling_stride, eps=eps,
                            isqrt=IsqrtOptions.fixed(n_iter))
        if options is None:
            options = LayerOptions(momentum=momentum, freeze=freeze, freeze_iter=freeze_iter)
        self._init_state(config, options)

    def _make_layer(self, dtype):
        return ConvDeconvLayer(self.in_channels, self._config, self._options, dtype=self._dtype_name(dtype))

    def forward(self, x):
        W, b = self._folded(x)
        return Fn.conv2d(x, W, b, self.stride, self.padding, self.dilation, self.groups)


class DeconvLinear(_DeconvMixin, torch.nn.Linear):
    """Drop-in for the reference Delinear: x (..., Fin) whitened in blocks of `block` features."""

    def __init__(self, in_features, out_features, bias=True, eps=1e-5, n_iter=5, momentum=0.1, block=512,
                 options=None):
        super().__init__(in_features, out_features, bias)
        config = LinearConfig(block=block, eps=eps, isqrt=IsqrtOptions.fixed(n_iter))
        self._init_state(config, options if options is not None else LayerOptions(momentum=momentum))

    def _make_layer(self, dtype):
        return LinearDeconvLayer(self.in_features, self._config, self._options, dtype=self._dtype_name(dtype))

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        W, b = self._folded(rows)
        return Fn.linear(rows, W, b).reshape(*x.shape[:-1], self.out_features)


__all__ = ["Deconv2d", "DeconvLinear"]
