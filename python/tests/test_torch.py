# SPDX-License-Identifier: MIT
"""netdeconv.torch: Deconv2d, DeconvLinear and ChannelDeconv against the pure-PyTorch float64 models
of the reference layers in tests/reference/generate_goldens.py and generate_sequence_goldens.py
(outputs and autograd gradients of x, W and b, 1e-10 relative: float64 rounding of the same
products in another order), gradcheck, their buffers in state_dict, export() and bad arguments."""
import copy

import numpy as np
import pytest
import torch
from torch.nn.utils.stateless import functional_call

import generate_goldens as ref
import generate_sequence_goldens as seq
from conftest import rel

ndt = pytest.importorskip("netdeconv.torch")


@pytest.mark.parametrize("kernel,stride,padding,groups,block,sampling_stride,layout",
                         [(3, 1, 1, 1, 4, 3, "nchw"), (3, 2, 1, 1, 8, 2, "nhwc"), (1, 1, 0, 1, 64, 3, "nchw"),
                          (3, 1, 1, 2, 64, 1, "nchw")])
def test_deconv2d_forward_and_gradients_match_the_reference(rng, kernel, stride, padding, groups, block,
                                                            sampling_stride, layout):
    torch.manual_seed(0)
    N, C, H, W, cout = 2, 8, 9, 9, 6
    m = ndt.Deconv2d(C, cout, kernel, stride=stride, padding=padding, groups=groups, block=block,
                     sampling_stride=sampling_stride).double()
    x = torch.from_numpy(rng.standard_normal((N, C, H, W)) + 0.5)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = m(x)
    g = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    (y * g).sum().backward()
    case = ref.conv_case("t", N, C, H, W, cout, kernel, stride=stride, padding=padding, groups=groups, block=block,
                         sampling_stride=sampling_stride)
    xr = x.detach().clone().contiguous().requires_grad_(True)
    wr = m.weight.detach().clone().requires_grad_(True)
    br = m.bias.detach().clone().requires_grad_(True)
    *_, yr = ref.conv_forward(case, xr, wr, br)
    (yr * g).sum().backward()
    assert rel(y, yr) <= 1e-10
    assert rel(x.grad, xr.grad) <= 1e-10
    assert rel(m.weight.grad, wr.grad) <= 1e-10
    assert rel(m.bias.grad, br.grad) <= 1e-10


def test_deconv_linear_matches_the_reference(rng):
    m = ndt.DeconvLinear(12, 5, block=4).double()
    x = torch.from_numpy(rng.standard_normal((16, 12))).requires_grad_(True)
    y = m(x)
    y.pow(2).sum().backward()
    case = ref.linear_case("t", 16, 12, 5, block=4)
    xr = x.detach().clone().requires_grad_(True)
    wr, br = m.weight.detach().clone().requires_grad_(True), m.bias.detach().clone().requires_grad_(True)
    *_, yr = ref.linear_forward(case, xr, wr, br)
    yr.pow(2).sum().backward()
    assert rel(y, yr) <= 1e-10
    for a, b in ((x.grad, xr.grad), (m.weight.grad, wr.grad), (m.bias.grad, br.grad)):
        assert rel(a, b) <= 1e-10


def test_running_statistics_are_buffers_and_eval_folds_them(rng):
    m = ndt.Deconv2d(4, 3, 3, block=4, sampling_stride=1).double()
    xs = [torch.from_numpy(rng.standard_normal((2, 4, 6, 6))) for _ in range(3)]
    for x in xs[:2]:
        m(x)
    assert int(m.counters[0]) == 2 and not torch.equal(m.running_D[0], torch.eye(36, dtype=torch.float64))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m(xs[2])
    resumed = ndt.Deconv2d(4, 3, 3, block=4, sampling_stride=1).double()
    resumed.load_state_dict(state)
    resumed(xs[2])
    for k, v in m.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    m.eval()
    w = m.weight.detach().clone().requires_grad_(True)
    y = m(xs[0])
    mean, D = m.running_mean[0], m.running_D[0]
    Wf = (w.reshape(3, 36) @ D).reshape(w.shape)  # one block of all 36 patch features
    yr = torch.nn.functional.conv2d(xs[0], Wf, m.bias - Wf.reshape(3, 36) @ mean, padding=1)
    assert rel(y, yr) <= 1e-12
    y.sum().backward()
    yr.sum().backward()
    assert rel(m.weight.grad, w.grad) <= 1e-12


def test_dtype_and_device_errors():
    m = ndt.Deconv2d(4, 3, 3)
    with pytest.raises(TypeError, match="convert the module"):
        m(torch.zeros(2, 4, 6, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="x is on meta"):
        m(torch.zeros(2, 4, 6, 6, device="meta"))


@pytest.mark.parametrize("C,block,H", [(8, 4, 4), (11, 4, 5), (6, 2, 2)], ids=["divisible", "remaining", "unsampled"])
def test_channel_deconv_matches_the_reference(rng, C, block, H):
    N = 3
    m = ndt.ChannelDeconv(block).double()
    case = seq.channel("t", 1, N, C, H, H, block)
    x = torch.from_numpy(rng.standard_normal((N, C, H, H)) + 0.3).requires_grad_(True)
    y = m(x)
    g = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    (y * g).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    stats = seq.channel_batch_statistics(case, xr)
    yr = seq.channel_apply(case, xr, *stats)
    (yr * g).sum().backward()
    assert rel(y, yr) <= 1e-10
    assert rel(x.grad, xr.grad) <= 1e-10
    mu1, D, mean2, var = (s.detach() if s is not None else None for s in stats)
    assert rel(m.running_mean[0], mu1) <= 1e-12 and rel(m.running_D[0], D) <= 1e-12  # the first step copies
    if mean2 is not None:
        assert rel(m.running_remaining, torch.stack([mean2, var])) <= 1e-12

    m.eval()
    x2 = torch.from_numpy(rng.standard_normal((N, C, H, H))).requires_grad_(True)
    ye = m(x2)
    x2r = x2.detach().clone().requires_grad_(True)
    yer = seq.channel_apply(case, x2r, mu1, D, mean2, var)
    assert rel(ye, yer) <= 1e-10
    (ye * g).sum().backward()
    (yer * g).sum().backward()
    assert rel(x2.grad, x2r.grad) <= 1e-10
    exported = m.export()
    assert type(exported) is torch.nn.Conv2d and exported.kernel_size == (1, 1)
    assert rel(exported(x2.detach()), ye) <= 1e-12


def test_channel_deconv_channel_count_and_state():
    m = ndt.ChannelDeconv(4)
    with pytest.raises(ValueError, match="unknown before the first forward"):
        m.export()
    m(torch.randn(2, 10, 4, 4))
    with pytest.raises(ValueError, match="x has 8 channels, the layer has 10"):
        m(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match="block 16 is larger than C=8"):
        ndt.ChannelDeconv(16, channels=8)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 10, 4, 4)
    y = m(x)
    resumed = ndt.ChannelDeconv(4, channels=10)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(x), y)
    for k, v in m.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.parametrize("kind", ["conv", "conv_nobias", "linear"])
def test_export_gives_a_plain_layer_equal_to_evaluation(rng, kind):
    if kind == "linear":
        m, shape, plain = ndt.DeconvLinear(12, 5, block=4).double(), (16, 12), torch.nn.Linear
    else:
        m, shape, plain = ndt.Deconv2d(6, 4, 3, stride=2, block=3, bias=kind == "conv").double(), (2, 6, 9, 9), \
            torch.nn.Conv2d
    for _ in range(3):
        m(torch.from_numpy(rng.standard_normal(shape) + 1.0))
    m.eval()
    x = torch.from_numpy(rng.standard_normal(shape))
    exported = m.export()
    assert type(exported) is plain and exported.weight.dtype == torch.float64
    assert rel(exported(x), m(x)) <= 1e-12
    assert not torch.equal(exported.weight, m.weight)  # the running statistics are folded in


def _module_function(m):
    names = [n for n, p in m.named_parameters()]
    return lambda x, *params: functional_call(m, dict(zip(names, params)), (x,))


@pytest.mark.parametrize("kind", ["conv", "conv_grouped", "linear", "channel"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(kind, training):
    torch.manual_seed(1)
    m, shape = {
        "conv": lambda: (ndt.Deconv2d(3, 2, 3, block=3, sampling_stride=1), (2, 3, 5, 5)),
        "conv_grouped": lambda: (ndt.Deconv2d(4, 4, 3, stride=2, groups=2, sampling_stride=2), (3, 4, 6, 6)),
        "linear": lambda: (ndt.DeconvLinear(6, 3, block=3), (10, 6)),
        "channel": lambda: (ndt.ChannelDeconv(2), (3, 5, 4, 4)),
    }[kind]()
    m = m.double()
    x = (torch.rand(shape, dtype=torch.float64) + 0.5).requires_grad_(True)
    m(x.detach())  # running statistics away from (0, I)
    m.train(training)
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    assert torch.autograd.gradcheck(_module_function(m), (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_bad_arguments_raise_with_their_values():
    with pytest.raises(ValueError, match="block must be >= 1, got 0"):
        ndt.Deconv2d(8, 4, 3, block=0)
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        ndt.DeconvLinear(8, 4, eps=-1)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 2"):
        ndt.ChannelDeconv(4, momentum=2, channels=8)
    with pytest.raises(ValueError, match="sampling_stride must be >= 1, got 0"):
        ndt.Deconv2d(8, 4, 3, sampling_stride=0)
    with pytest.raises(ValueError, match="freeze_iter must be in .*got 0"):
        ndt.Deconv2d(8, 4, 3, freeze=True, freeze_iter=0)
    with pytest.raises(ValueError, match="x has C=7, the layer has 8"):
        ndt.Deconv2d(8, 4, 3)(torch.randn(2, 7, 4, 4))
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., 8\), got shape \(2, 7\)"):
        ndt.DeconvLinear(8, 4)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ndt.Deconv2d(8, 4, 3)(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="padding must be an int or a pair, got 'same'"):
        ndt.Deconv2d(8, 4, 3, padding="same")
    with pytest.raises(ValueError, match="statistics need >= 2 samples, got 0"):
        ndt.Deconv2d(8, 4, 3)(torch.randn(0, 8, 4, 4))
    with pytest.raises(TypeError, match="dtype torch.int32, expected torch.float32 or torch.float64"):
        ndt.Deconv2d(8, 4, 3)(torch.zeros(2, 8, 4, 4, dtype=torch.int32))


class _VGG(torch.nn.Module):
    """torchvision's VGG layout, small: features (conv, bn, relu, pool) and a classifier with BatchNorm1d."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in (8, "M", 16, 16, "M"):
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2))
            else:
                layers += [torch.nn.Conv2d(c, v, 3, padding=1, bias=False), torch.nn.BatchNorm2d(v),
                           torch.nn.ReLU(inplace=True)]
                c = v
        self.features = torch.nn.Sequential(*layers)
        self.classifier = torch.nn.Sequential(torch.nn.Linear(16 * 2 * 2, 12), torch.nn.BatchNorm1d(12),
                                              torch.nn.ReLU(), torch.nn.Linear(12, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class _BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock: the pairs are attributes, the shortcut a Sequential."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.layer1 = torch.nn.Sequential(_BasicBlock(8, 8, 1), _BasicBlock(8, 16, 2))
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.layer1(y), 1), 1))


def _without_batchnorm(model):
    """model with its BatchNorms as identities: what the converted model computes before any step."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            ndt._replace(model, name, torch.nn.Identity())
    return model


@pytest.mark.parametrize("make,convs,linears", [(_VGG, 3, 1), (_ResNet, 6, 0)], ids=["vgg", "resnet"])
def test_convert_replaces_the_conv_batchnorm_pairs(make, convs, linears):
    import copy
    torch.manual_seed(0)
    model = make().double()
    plain = _without_batchnorm(copy.deepcopy(model)).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "bn" not in n}
    converted = ndt.convert(model, conv_args=dict(block=4, n_iter=7))
    kinds = [type(m) for m in converted.modules()]
    assert not any(issubclass(k, torch.nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert kinds.count(ndt.Deconv2d) == convs and kinds.count(ndt.DeconvLinear) == linears
    assert all(m._config.isqrt.iterations == 7 for m in converted.modules() if isinstance(m, ndt.Deconv2d))
    for n, p in converted.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n]), n
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    converted.eval()  # running statistics (0, I): each layer is its conv, with the old weights and geometry
    assert rel(converted(x), plain(x)) <= 1e-12
    converted.train()
    converted(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in converted.parameters())
    assert int(next(m for m in converted.modules() if isinstance(m, ndt.Deconv2d)).counters[0]) == 1


def test_convert_leaves_other_layers_alone():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is used twice: not a pair

    model = ndt.convert(Shared())
    assert type(model.conv) is torch.nn.Conv2d and type(model.bn) is torch.nn.BatchNorm2d
    with pytest.raises(ValueError, match="padding 'same'"):
        ndt.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding="same"), torch.nn.BatchNorm2d(4)))


@pytest.mark.parametrize("form,kernel,stride,padding", [("zca", 3, 1, 1), ("eigen", 2, 1, 0), ("zca", 2, 2, 0)])
def test_init_whitening_against_an_eigendecomposition_of_unfolded_patches(form, kernel, stride, padding):
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(40, 3, 10, 10, generator=gen, dtype=torch.float64)
    images = base + 0.5 * torch.roll(base, 1, dims=3) + 0.3 * base.mean(1, keepdim=True)  # correlated
    F = 3 * kernel * kernel
    conv = torch.nn.Conv2d(3, F if form == "zca" else 2 * F, kernel, stride, padding).double()
    eps = 1e-4
    ndt.init_whitening(conv, images, eps=eps, form=form, chunk=16)
    patches = torch.nn.functional.unfold(images, kernel, padding=padding, stride=stride)
    patches = patches.transpose(1, 2).reshape(-1, F)
    mu = patches.mean(0)
    cov = (patches - mu).t() @ (patches - mu) / patches.shape[0]
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)
    rows = vectors.t() / torch.sqrt(values + eps)[:, None]
    W = conv.weight.reshape(-1, F)
    if form == "zca":
        assert rel(W, vectors @ rows) <= 1e-10
    else:  # eigenvectors have a sign each: compare up to it, and the second half is the negation
        signs = torch.sign((W[:F] * rows).sum(1))
        assert rel(W[:F] * signs[:, None], rows) <= 1e-10 and torch.equal(W[F:], -W[:F])
    assert rel(conv.bias, -W @ mu) <= 1e-10
    out = conv(images).permute(0, 2, 3, 1).reshape(-1, W.shape[0])[:, :F]
    white = torch.cov(out.t(), correction=0)
    assert rel(white, torch.diag(values / (values + eps)) if form == "eigen" else
               vectors @ torch.diag(values / (values + eps)) @ vectors.t()) <= 1e-8


def test_init_whitening_bad_arguments():
    with pytest.raises(ValueError, match="needs out_channels = 27 for 3 channels and a 3x3 kernel, the conv has 8"):
        ndt.init_whitening(torch.nn.Conv2d(3, 8, 3), torch.rand(2, 3, 6, 6))
    with pytest.raises(ValueError, match="form must be 'zca' or 'eigen', got 'pca'"):
        ndt.init_whitening(torch.nn.Conv2d(3, 27, 3), torch.rand(2, 3, 6, 6), form="pca")
    with pytest.raises(ValueError, match=r"singular \(rank 1 of 12\) and eps = 0"):
        ndt.init_whitening(torch.nn.Conv2d(3, 12, 2), torch.rand(4, 1, 1, 1).expand(4, 3, 6, 6), eps=0)
    with pytest.raises(ValueError, match="not finite"):
        ndt.init_whitening(torch.nn.Conv2d(3, 12, 2), torch.full((2, 3, 6, 6), float("nan")))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_bfloat16_under_autocast_takes_float32_statistics_of_the_same_values(kind):
    torch.manual_seed(2)
    if kind == "conv":
        m, x = ndt.Deconv2d(6, 5, 3, block=3, sampling_stride=2), torch.rand(5, 6, 9, 9) + 0.5
    else:
        m, x = ndt.DeconvLinear(12, 5, block=6), torch.rand(40, 12) + 0.5
    ref = copy.deepcopy(m)
    half = x.bfloat16()
    ndt._CHUNK_ELEMENTS, saved = 2 * x[0].numel(), ndt._CHUNK_ELEMENTS  # several pieces of 2 images/rows
    try:
        xh = half.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(xh)
        g = torch.randn(y.shape)
        (y.float() * g).sum().backward()
    finally:
        ndt._CHUNK_ELEMENTS = saved
    xr = half.float().requires_grad_(True)  # the same values in float32: the float32 path of the module
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yr = ref(xr)
    (yr.float() * g).sum().backward()
    assert y.dtype == torch.bfloat16 and xh.grad.dtype == torch.bfloat16
    for name in ("running_mean", "running_D"):  # the statistics: float32 moments of the same values
        assert rel(getattr(m, name), getattr(ref, name)) <= 1e-5, name
    assert int(m.counters[0]) == 1
    # Both run the conv in bfloat16 under autocast, so y and dL/dW agree but for the float32 rounding
    # of the pieces' merged moments (seen: y equal, dL/dW 3e-7); the half path rounds dL/dx to
    # bfloat16 (2^-9 relative) at the end (seen: 1.8e-3; without the statistics' part it is 0.19)
    assert rel(y.float(), yr.float()) <= 1e-3
    assert rel(xh.grad.float(), xr.grad) <= 4e-3
    assert rel(m.weight.grad, ref.weight.grad) <= 1e-5 and rel(m.bias.grad, ref.bias.grad) <= 1e-5


def test_float32_layers_match_the_float64_reference(rng):
    """float32 modules against the float64 reference models at 1e-4: float32 rounding through the
    covariance, 5 Newton-Schulz steps and the fold (the C++ suite's float32 tolerance)."""
    torch.manual_seed(4)
    conv = ndt.Deconv2d(8, 6, 3, stride=2, block=4, sampling_stride=2)
    x = torch.from_numpy(rng.standard_normal((3, 8, 9, 9)) + 0.5).float()
    case = ref.conv_case("t", 3, 8, 9, 9, 6, 3, stride=2, padding=1, block=4, sampling_stride=2)
    lin = ndt.DeconvLinear(12, 5, block=4)
    xl = torch.from_numpy(rng.standard_normal((30, 12))).float()
    chan = ndt.ChannelDeconv(4)
    xc = torch.from_numpy(rng.standard_normal((3, 11, 5, 5)) + 0.3).float()
    ccase = seq.channel("t", 1, 3, 11, 5, 5, 4)
    runs = [(conv, x, lambda xr, w, b: ref.conv_forward(case, xr, w, b)[-1]),
            (lin, xl, lambda xr, w, b: ref.linear_forward(ref.linear_case("t", 30, 12, 5, block=4), xr, w, b)[-1]),
            (chan, xc, lambda xr: seq.channel_apply(ccase, xr, *seq.channel_batch_statistics(ccase, xr)))]
    for m, x32, model in runs:
        x32 = x32.clone().requires_grad_(True)
        y = m(x32)
        g = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
        (y.double() * g).sum().backward()
        xr = x32.detach().double().requires_grad_(True)
        params = [p.detach().double().requires_grad_(True) for p in m.parameters()]
        yr = model(xr, *params)
        (yr * g).sum().backward()
        assert y.dtype == torch.float32 and rel(y.double(), yr) <= 1e-4, type(m).__name__
        assert rel(x32.grad.double(), xr.grad) <= 1e-4, type(m).__name__
        for p, pr in zip(m.parameters(), params):
            assert rel(p.grad.double(), pr.grad) <= 1e-4, type(m).__name__
