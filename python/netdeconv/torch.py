# SPDX-License-Identifier: MIT
"""PyTorch modules over the layers' state objects: CPU tensors, float32/float64 (bfloat16/float16
inputs of a float32 module, as under torch.autocast).

``Deconv2d``, ``DeconvLinear`` and ``ChannelDeconv`` take the reference layers' arguments and defaults. In training,
``W', b'`` come from the library's statistics step of the batch (``ConvDeconvLayer.train_step``)
and the framework's own conv or matmul runs with them; the backward goes through
``ConvDeconvLayer.backward`` (dL/dW, dL/db and dL/dx through mu and Cov), autograd adds the conv's
own gradients. In evaluation, ``W', b'`` fold the running statistics (differentiable in W and b
through ``fold_vjp``). The running statistics are buffers (``running_mean`` (S, F), ``running_D``
(S, F, F), ``counters`` int64 (3,)), which the C++ layer reads and writes in place, so
``state_dict`` holds them. ``ChannelDeconv`` rewrites the data (it has no weights): its forward and
backward are the channel layer's ``train_step``/``eval`` and ``backward``.

``export()`` gives the plain ``nn.Conv2d`` or ``nn.Linear`` of the running statistics, for inference
anywhere. ``convert(model)`` swaps a model's Conv2d + BatchNorm2d (and Linear + BatchNorm1d) pairs for
deconvolution layers; ``init_whitening(conv, images)`` sets a conv to the whitening filters of its
input patches.
"""
import torch
import torch.fx
import torch.nn.functional as Fn

from . import (BlockLayout, ChannelConfig, ChannelDeconvLayer, ConvConfig, ConvDeconvLayer, IsqrtOptions, LayerOptions,
               LinearConfig, LinearDeconvLayer, StatisticsGradient, conv_covariance_vjp, conv_moments, covariance,
               fold_vjp, linear_covariance_vjp, linear_moments, merge)

_CHUNK_ELEMENTS = 1 << 22  # half-precision inputs are read in float32 pieces of at most this many values


class _Hook:
    """What a layer's steps and backwards see of their statistics (the layer's set_reduction,
    docs/method.md section 7): moments ``provided`` by the caller instead of the step's own (a
    half-precision x, whose moments are taken in float32 pieces), the whole batch's across the
    processes of a torch.distributed group with ``sync``, and the statistic gradients ``seen`` by
    the latest backward.

    sync moments: one all_reduce (sum, float64) of, per statistic, [n_r, n_r d_r, upper triangle of
    M_r + n_r d_r d_r^T] with d_r = mu_r - c, c the layer's running mean (the same on every process:
    DDP broadcasts the buffers, and every process applies the same updates), which gives the whole
    batch's n, mu = c + d and M = sum - n d d^T with d = sum(n_r d_r) / n; the shift keeps a large
    mean from cancelling. gradients: one all_reduce of [dmu, upper triangle of (dCov + dCov^T)/2].
    The moments of a training step are kept for its backward (``replay``), which so adds only the
    gradients' call."""

    def __init__(self, module, sync, group):
        self.module, self.sync, self.group = module, sync, group
        self.provided = self.recorded = self.replay = self.seen = None
        self.triu = {}

    def _upper(self, F):
        if F not in self.triu:
            self.triu[F] = torch.triu_indices(F, F)
        return self.triu[F]

    def _unpack(self, packed, F):
        i, j = self._upper(F)
        full = torch.zeros(packed.shape[0], F, F, dtype=torch.float64)
        full[:, i, j] = packed
        full[:, j, i] = packed
        return full

    def _all_reduce(self, t):
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{type(self.module).__name__}(sync=True) trains with torch.distributed: call "
                               f"torch.distributed.init_process_group first")
        dist.all_reduce(t, group=self.group)
        return t

    def message_elements(self, S, F):
        """float64 elements per step: (forward, backward)."""
        tri = F * (F + 1) // 2
        return S * (1 + F + tri), S * (F + tri)

    def moments(self, count, mean, scatter):
        if self.replay is not None:
            return self.replay
        if self.provided is not None:
            count, mean, scatter = self.provided
        else:
            count, mean, scatter = (torch.from_numpy(a) for a in (count, mean, scatter))
        if not self.sync:
            self.recorded = (count, mean, scatter)
            return self.recorded
        S, F = mean.shape
        n = count.to(torch.float64)[:, None]
        d = mean - self.module.running_mean.detach().to(torch.float64)
        i, j = self._upper(F)
        local = scatter + n[:, :, None] * d[:, :, None] * d[:, None, :]
        total = self._all_reduce(torch.cat([n, n * d, local[:, i, j]], dim=1))
        n, nd, second = total[:, :1], total[:, 1:1 + F], total[:, 1 + F:]
        d = nd / n
        result = (n[:, 0].round().to(torch.int64), self.module.running_mean.detach().to(torch.float64) + d,
                  self._unpack(second, F) - n[:, :, None] * d[:, :, None] * d[:, None, :])
        self.recorded = result
        return result

    def gradients(self, dcov, dmean):
        dcov, dmean = torch.from_numpy(dcov), torch.from_numpy(dmean)
        if self.sync:
            S, F = dmean.shape
            i, j = self._upper(F)
            sym = (dcov + dcov.transpose(1, 2)) / 2
            total = self._all_reduce(torch.cat([dmean, sym[:, i, j]], dim=1))
            dcov, dmean = self._unpack(total[:, F:], F), total[:, :F]
        self.seen = (dcov, dmean)
        return dcov, dmean


def _pieces(x):
    """x in float32 pieces of whole images (rows), at most _CHUNK_ELEMENTS values each."""
    per = max(1, _CHUNK_ELEMENTS // max(1, x[0].numel() if x.shape[0] else 1))
    return [x[i:i + per].float() for i in range(0, x.shape[0], per)]


class _HalfFold(torch.autograd.Function):
    """(W', b') of a bfloat16/float16 batch x: its moments in float32 pieces (no float32 copy of x),
    the layer's float32 step on them (hook.provided, with an empty x), and in backward dL/dx piece
    by piece from the statistic gradients the layer's backward passes to the hook."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, hook, module):
        moments = None
        for piece in _pieces(x.detach()):
            m = module._moments(piece)
            moments = m if moments is None else merge(moments, m)
        empty = x.new_empty((0,) + tuple(x.shape[1:]), dtype=torch.float32)
        hook.provided = moments
        try:
            step = layer.train_step(empty, weight.detach(), bias.detach())
        finally:
            hook.provided = None
        ctx.layer, ctx.diagnostic, ctx.hook, ctx.module = layer, layer.diagnostic, hook, module
        ctx.moments, hook.recorded = hook.recorded, None
        ctx.save_for_backward(x, weight, bias, step.mean, step.D)
        return step.weight, step.bias

    @staticmethod
    def backward(ctx, grad_weight, grad_bias):
        x, weight, bias, mean, D = ctx.saved_tensors
        hook = ctx.hook
        hook.replay, hook.seen = ctx.moments, None
        empty = x.new_empty((0,) + tuple(x.shape[1:]), dtype=torch.float32)
        try:
            g = ctx.layer.backward(empty, weight.detach(), bias.detach(), mean, D, grad_weight.contiguous(),
                                   grad_bias.contiguous(), step=ctx.diagnostic)
            seen = hook.seen
        finally:
            hook.replay = hook.seen = None
        if seen is None:  # a frozen or kept step: mu and D are constants
            return torch.zeros_like(x), g.weight, g.bias, None, None, None
        dcov, dmean = (t.float() for t in seen)
        pieces = [ctx.module._covariance_vjp(piece, ctx.moments, dcov, dmean) for piece in _pieces(x.detach())]
        dx = torch.cat(pieces).to(x.dtype) if pieces else torch.zeros_like(x)  # a process's empty shard
        return dx, g.weight, g.bias, None, None, None


class _TrainFold(torch.autograd.Function):
    """(W', b') of the batch x, with the step backward; hook: the layer's _Hook when it syncs."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, hook):
        step = layer.train_step(x.detach(), weight.detach(), bias.detach())
        ctx.layer, ctx.diagnostic, ctx.hook = layer, layer.diagnostic, hook
        if hook is not None:
            ctx.moments, hook.recorded = hook.recorded, None
        ctx.save_for_backward(x, weight, bias, step.mean, step.D)
        return step.weight, step.bias

    @staticmethod
    def backward(ctx, grad_weight, grad_bias):
        x, weight, bias, mean, D = ctx.saved_tensors
        hook = ctx.hook
        if hook is not None:
            hook.replay = ctx.moments
        try:
            g = ctx.layer.backward(x.detach(), weight.detach(), bias.detach(), mean, D, grad_weight.contiguous(),
                                   grad_bias.contiguous(), step=ctx.diagnostic)
        finally:
            if hook is not None:
                hook.replay = None
        return g.x, g.weight, g.bias, None, None


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


class _ChannelStep(torch.autograd.Function):
    """The channel layer's training output y of x, with the step backward."""

    @staticmethod
    def forward(ctx, x, layer):
        step = layer.train_step(x.detach())
        ctx.layer, ctx.diagnostic = layer, layer.diagnostic
        ctx.save_for_backward(x, step.mean, step.D, step.remaining)
        return step.y

    @staticmethod
    def backward(ctx, dy):
        x, mean, D, remaining = ctx.saved_tensors
        dx, _ = ctx.layer.backward(x.detach(), mean, D, remaining, dy.contiguous(), step=ctx.diagnostic)
        return dx, None


class _ChannelEval(torch.autograd.Function):
    """The channel layer's evaluation output (running statistics, constants in the backward)."""

    @staticmethod
    def forward(ctx, x, layer, remaining):
        mean, D = layer.running()
        ctx.layer = layer
        ctx.save_for_backward(x, torch.as_tensor(mean), torch.as_tensor(D), remaining)
        return layer.eval(x.detach())

    @staticmethod
    def backward(ctx, dy):
        x, mean, D, remaining = ctx.saved_tensors
        dx, _ = ctx.layer.backward(x.detach(), mean, D, remaining, dy.contiguous(), mode=StatisticsGradient.constants)
        return dx, None, None


def _dtype_name(module, dtype):
    name = {torch.float32: "float32", torch.float64: "float64"}.get(dtype)
    if name is None:
        raise TypeError(f"{type(module).__name__}: dtype {dtype}, expected torch.float32 or torch.float64")
    return name


def _check_cpu(module, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(module).__name__}: x must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}")
    if x.device.type != "cpu":
        raise TypeError(f"{type(module).__name__}: this build of netdeconv runs on the CPU, x is on {x.device}")


class _StateMixin:
    """The state object and its buffers: ``running_mean`` (S, F), ``running_D`` (S, F, F), ``counters``
    int64 (3,), and ``running_cov`` (S, F, F) when the options average the covariance."""

    def _init_state(self, S, F):
        self.register_buffer("running_mean", torch.zeros(S, F))
        self.register_buffer("running_D", torch.eye(F).repeat(S, 1, 1))
        self.register_buffer("counters", torch.zeros(3, dtype=torch.int64))
        self.register_buffer("running_cov", torch.eye(F).repeat(S, 1, 1) if self._options.average_covariance else None)
        self._attached = None

    def __getstate__(self):
        """Pickling and deepcopy: the state object is made again, for the copy's own buffers."""
        state = self.__dict__.copy()
        state["_attached"] = None
        return state

    def _attachments(self):
        """The buffers in attach_state's order (mean, D, counters, cov[, remaining])."""
        return self.running_mean, self.running_D, self.counters, self.running_cov

    def _init_sync(self, sync, group):
        """sync: the statistics of every training step are those of the whole batch across the
        processes of group (default: the world group of torch.distributed)."""
        self.sync = sync
        self._hook = _Hook(self, sync, group)

    def _state(self, dtype):
        """The state object for dtype (float32 for bfloat16 and float16, through the hook), attached
        to the buffers (again after .to() or .double(), which replace them: the buffers' values are
        the state)."""
        half = dtype in (torch.bfloat16, torch.float16)
        if half and getattr(self, "_hook", None) is None:
            raise TypeError(f"{type(self).__name__}: dtype {dtype}, expected torch.float32 or torch.float64")
        if half:
            dtype = torch.float32
        buffers = self._attachments()
        key = tuple(b.data_ptr() if b is not None else 0 for b in buffers) + (dtype, half)
        if self._attached is None or self._attached[0] != key:
            _dtype_name(self, dtype)
            if half and self.running_mean.dtype != dtype:
                raise TypeError(f"{type(self).__name__}: a half-precision input needs the module in float32 (its "
                                f"running statistics are {self.running_mean.dtype})")
            if self.running_mean.dtype != dtype:
                raise TypeError(f"{type(self).__name__}: the input is {dtype} but the running statistics are "
                                f"{self.running_mean.dtype}; convert the module (.to({dtype}))")
            present = [b for b in buffers if b is not None]
            saved = [b.clone() for b in present]
            layer = self._make_layer(dtype)
            layer.attach_state(*buffers)
            if half or getattr(self, "sync", False):
                layer.set_reduction(self._hook.moments, self._hook.gradients)
            with torch.no_grad():  # attach wrote the fresh layer's state; the buffers' is the one
                for b, v in zip(present, saved):
                    b.copy_(v)
            self._attached = (key, layer)
        return self._attached[1]


class _FoldingMixin(_StateMixin):
    """Training folds the batch's statistics into (W', b'), evaluation the running ones. A subclass
    names its state object (_Layer), its input width (_width) and its moments and covariance VJP."""

    def _make_layer(self, dtype):
        return self._Layer(self._width(), self._config, self._options, dtype=_dtype_name(self, dtype))

    def _moments(self, x):
        return self._moments_of(x, self._config)

    def _covariance_vjp(self, x, moments, dcov, dmean):
        return self._covariance_vjp_of(x, self._config, moments, dcov, dmean)

    def _bias(self):
        if self.bias is not None:
            return self.bias
        return torch.zeros(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)

    def _folded(self, x):
        _check_cpu(self, x)
        layer = self._state(x.dtype)
        if self.training and x.dtype in (torch.bfloat16, torch.float16):
            W, b = _HalfFold.apply(x, self.weight, self._bias(), layer, self._hook, self)
        elif self.training:
            W, b = _TrainFold.apply(x, self.weight, self._bias(), layer, self._hook if self.sync else None)
        else:
            W, b = _EvalFold.apply(self.weight, self._bias(), layer, self._config)
        return (W.to(x.dtype), b.to(x.dtype)) if W.dtype != x.dtype else (W, b)

    @torch.no_grad()
    def _exported_weights(self):
        _check_cpu(self, self.weight)
        return self._state(self.weight.dtype).eval(self.weight.detach(), self._bias().detach())


def _with_weights(module, weight, bias):
    """module (a new nn.Conv2d or nn.Linear) holding weight and bias."""
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    return module


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Deconv2d(_FoldingMixin, torch.nn.Conv2d):
    """Drop-in for the reference FastDeconv: a conv whose input patches are whitened with the batch's
    statistics in training (running statistics in evaluation), folded into its weights.

    x (N, C, H, W) float32/float64 on the CPU, any memory format (channels_last included).
    ``options`` (LayerOptions) replaces momentum, freeze and freeze_iter, e.g. LayerOptions.improved().
    ``sync=True``: data-parallel training (with DistributedDataParallel): each step's statistics are
    the whole batch's across the processes of ``sync_group``, so that outputs and gradients equal one
    process's on the whole batch; a process may hold fewer than 2 patches, even none."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=1, dilation=1, groups=1, bias=True,
                 eps=1e-5, n_iter=5, momentum=0.1, block=64, sampling_stride=3, freeze=False, freeze_iter=100,
                 options=None, sync=False, sync_group=None):
        if isinstance(padding, str):
            raise ValueError(f"Deconv2d: padding must be an int or a pair, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._config = ConvConfig(_pair(kernel_size), stride=_pair(stride), padding=_pair(padding),
                                  dilation=_pair(dilation), groups=groups,
                                  layout=BlockLayout.interleaved_shared if groups == 1 else BlockLayout.grouped,
                                  block=block, sampling_stride=sampling_stride, eps=eps,
                                  isqrt=IsqrtOptions.fixed(n_iter))
        self._options = options if options is not None else LayerOptions(momentum=momentum, freeze=freeze,
                                                                          freeze_iter=freeze_iter)
        self._init_state(*self._make_layer(torch.float32).plan)
        self._init_sync(sync, sync_group)

    _Layer, _moments_of, _covariance_vjp_of = ConvDeconvLayer, staticmethod(conv_moments), \
        staticmethod(conv_covariance_vjp)

    def _width(self):
        return self.in_channels

    def forward(self, x):
        W, b = self._folded(x)
        return Fn.conv2d(x, W, b, self.stride, self.padding, self.dilation, self.groups)

    def export(self):
        """A plain nn.Conv2d (with a bias) computing what this layer computes in evaluation."""
        W, b = self._exported_weights()
        return _with_weights(torch.nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                             self.padding, self.dilation, self.groups, True, device=W.device,
                                             dtype=W.dtype), W, b)


class DeconvLinear(_FoldingMixin, torch.nn.Linear):
    """Drop-in for the reference Delinear: x (..., Fin) whitened in blocks of `block` features.
    ``options`` and ``sync`` as Deconv2d's."""

    def __init__(self, in_features, out_features, bias=True, eps=1e-5, n_iter=5, momentum=0.1, block=512,
                 options=None, sync=False, sync_group=None):
        super().__init__(in_features, out_features, bias)
        self._config = LinearConfig(block=block, eps=eps, isqrt=IsqrtOptions.fixed(n_iter))
        self._options = options if options is not None else LayerOptions(momentum=momentum)
        self._init_state(*self._make_layer(torch.float32).plan)
        self._init_sync(sync, sync_group)

    _Layer, _moments_of, _covariance_vjp_of = LinearDeconvLayer, staticmethod(linear_moments), \
        staticmethod(linear_covariance_vjp)

    def _width(self):
        return self.in_features

    def forward(self, x):
        _check_cpu(self, x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"DeconvLinear: x must be (..., {self.in_features}), got shape {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features)
        W, b = self._folded(rows)
        return Fn.linear(rows, W, b).reshape(*x.shape[:-1], self.out_features)

    def export(self):
        """A plain nn.Linear (with a bias) computing what this layer computes in evaluation."""
        W, b = self._exported_weights()
        return _with_weights(torch.nn.Linear(self.in_features, self.out_features, True, device=W.device,
                                             dtype=W.dtype), W, b)


class ChannelDeconv(_StateMixin, torch.nn.Module):
    """Drop-in for the reference ChannelDeconv: whitens the first C - C mod B channels of x (N, C, H, W)
    in B groups with one (B, B) D, and standardises the other channels with one mean and variance.

    The channel count is taken from the first input unless ``channels`` is given; the buffers
    (``running_mean`` (1, B), ``running_D`` (1, B, B), ``counters``, ``running_remaining`` (mean,
    variance)) do not depend on it. The first training step copies its statistics (the reference's
    rule); ``options`` replaces that and the momentum."""

    def __init__(self, block, eps=1e-2, n_iter=5, momentum=0.1, sampling_stride=3, *, channels=None, options=None):
        super().__init__()
        self._config = ChannelConfig(block=block, sampling_stride=sampling_stride, eps=eps,
                                     isqrt=IsqrtOptions.fixed(n_iter))
        self._options = options if options is not None else LayerOptions(momentum=momentum, first_step_copy=True)
        self.block, self.eps, self.channels = block, eps, channels
        if channels is not None:
            self._make_layer(torch.float32)  # validates block against channels now
        self._init_state(1, block)
        self.register_buffer("running_remaining", torch.tensor([0.0, 1.0]))

    def _make_layer(self, dtype):
        return ChannelDeconvLayer(self.channels, self._config, self._options, dtype=_dtype_name(self, dtype))

    def _attachments(self):
        """As attach_state takes them: running_remaining only when some channels are not whitened."""
        remaining = self.running_remaining if self.channels % self.block else None
        return self.running_mean, self.running_D, self.counters, self.running_cov, remaining

    def forward(self, x):
        _check_cpu(self, x)
        if x.dim() != 4:
            raise ValueError(f"ChannelDeconv: x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if self.channels is None:
            self.channels = x.shape[1]
        elif x.shape[1] != self.channels:
            raise ValueError(f"ChannelDeconv: x has {x.shape[1]} channels, the layer has {self.channels}")
        layer = self._state(x.dtype)
        if self.training:
            return _ChannelStep.apply(x, layer)
        return _ChannelEval.apply(x, layer, self._attachments()[4])

    @torch.no_grad()
    def export(self):
        """A plain 1x1 nn.Conv2d (C to C channels) computing what this layer computes in evaluation."""
        if self.channels is None:
            raise ValueError("ChannelDeconv.export: the channel count is unknown before the first forward (or "
                             "channels=)")
        C, B = self.channels, self.block
        c, per_row = C - C % B, C // B
        mean, D = self.running_mean[0], self.running_D[0]
        W = torch.zeros(C, C, dtype=D.dtype)
        W[:c, :c] = torch.kron(D, torch.eye(per_row, dtype=D.dtype))  # channel f*per_row+cc mixes g*per_row+cc
        b = torch.zeros(C, dtype=D.dtype)
        b[:c] = -W[:c, :c] @ mean.repeat_interleave(per_row)
        if c < C:
            m, v = self.running_remaining
            scale = 1 / torch.sqrt(v.double() + self.eps)
            W[c:, c:] = torch.eye(C - c, dtype=D.dtype) * scale
            b[c:] = -m * scale
        return _with_weights(torch.nn.Conv2d(C, C, 1, device=D.device, dtype=D.dtype), W.reshape(C, C, 1, 1), b)


def _replace(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, module)


def _deconv_of(layer, args):
    """The Deconv2d or DeconvLinear taking over layer's weights (and bias, else a zero one)."""
    w = layer.weight
    if isinstance(layer, torch.nn.Conv2d):
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(f"convert: {layer} has padding {layer.padding!r} ({layer.padding_mode}); Deconv2d takes "
                             f"numeric zero padding")
        new = Deconv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                       layer.dilation, layer.groups, True, **args)
    else:
        new = DeconvLinear(layer.in_features, layer.out_features, True, **args)
    new = new.to(device=w.device, dtype=w.dtype)
    return _with_weights(new, w, layer.bias if layer.bias is not None else torch.zeros_like(new.bias))


def convert(model, conv_args=None, linear_args=None):
    """Replace every Conv2d followed only by a BatchNorm2d with a Deconv2d (and every Linear followed
    only by a BatchNorm1d with a DeconvLinear), and that BatchNorm with nn.Identity, as the authors'
    deconvolution architectures do. The new layers take the old weights and bias (zero when there was
    none); conv_args and linear_args are Deconv2d's and DeconvLinear's keyword arguments. The pairs
    are found with torch.fx, so model (changed in place and returned) must be traceable; convert its
    traceable submodules otherwise."""
    graph = torch.fx.symbolic_trace(model).graph
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        norm, layer = model.get_submodule(node.target), model.get_submodule(source.target)
        if calls[node.target] != 1 or calls[source.target] != 1:
            continue
        if (isinstance(norm, torch.nn.BatchNorm2d) and type(layer) is torch.nn.Conv2d) or \
                (isinstance(norm, torch.nn.BatchNorm1d) and type(layer) is torch.nn.Linear):
            pairs.append((source.target, node.target, layer))
    for layer_path, norm_path, layer in pairs:
        args = conv_args if isinstance(layer, torch.nn.Conv2d) else linear_args
        _replace(model, layer_path, _deconv_of(layer, args or {}))
        _replace(model, norm_path, torch.nn.Identity())
    return model


@torch.no_grad()
def init_whitening(conv, images, eps=5e-4, form="zca", chunk=256):
    """Set conv (a groups=1 nn.Conv2d) to the whitening filters of its input patches in images
    (N, C, H, W): the patches conv sees (its kernel, stride, padding, dilation) give, through the
    library's patch moments (no patch matrix; chunk images at a time, merged), the float64 covariance
    Cov = V diag(lambda) V^T (F = C kh kw features, eigenvalues in descending order).

    form "zca": out_channels = F, weight rows D = V diag(1/sqrt(lambda + eps)) V^T.
    form "eigen": out_channels = 2F, weight rows V^T / sqrt(lambda + eps) and their negatives (the
    hlb-CIFAR10 / airbench recipe).
    A bias, when conv has one, is set to -W mu so that the outputs have mean 0. Returns conv."""
    if not isinstance(conv, torch.nn.Conv2d) or conv.groups != 1 or isinstance(conv.padding, str):
        raise ValueError(f"init_whitening: needs an nn.Conv2d with groups=1 and numeric padding, got {conv}")
    C, (kh, kw) = conv.in_channels, conv.kernel_size
    F = C * kh * kw
    want = {"zca": F, "eigen": 2 * F}.get(form)
    if want is None:
        raise ValueError(f"init_whitening: form must be 'zca' or 'eigen', got {form!r}")
    if conv.out_channels != want:
        raise ValueError(f"init_whitening: form {form!r} needs out_channels = {want} for {C} channels and a "
                         f"{kh}x{kw} kernel, the conv has {conv.out_channels}")
    if eps < 0:
        raise ValueError(f"init_whitening: eps must be >= 0, got {eps}")
    config = ConvConfig((kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                        layout=BlockLayout.independent, block=C, sampling_stride=1)
    moments = None
    for start in range(0, images.shape[0], chunk):
        part = conv_moments(images[start:start + chunk], config)
        moments = part if moments is None else merge(moments, part)
    if moments is None:
        raise ValueError(f"init_whitening: images must hold at least one image, got shape {tuple(images.shape)}")
    cov, mean = (torch.as_tensor(a[0]) for a in covariance(moments))
    if not torch.isfinite(cov).all():
        raise ValueError("init_whitening: the patch covariance is not finite (NaN or Inf in images)")
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)
    zero = values <= F * torch.finfo(torch.float64).eps * values[0].clamp(min=0)  # rounding-level eigenvalues
    if eps == 0 and zero.any():
        raise ValueError(f"init_whitening: the patch covariance is singular (rank {int((~zero).sum())} of {F}) and "
                         f"eps = 0; give eps > 0")
    scaled = vectors.t() / torch.sqrt(torch.where(zero, 0.0, values) + eps)[:, None]
    weight = vectors @ scaled if form == "zca" else torch.cat([scaled, -scaled])
    conv.weight.copy_(weight.reshape(conv.weight.shape))
    if conv.bias is not None:
        conv.bias.copy_(-weight @ mean)
    return conv


__all__ = ["ChannelDeconv", "Deconv2d", "DeconvLinear", "convert", "init_whitening"]
