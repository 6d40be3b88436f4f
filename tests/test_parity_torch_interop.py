"""The interop layer arguments against PyTorch autograd: forward and every gradient.

Conv2D(dilation, groups), asymmetric padding (compared with torch by padding the input with
F.pad first), MaxPool2D/AvgPool2D(ceil_mode, count_include_pad, dilation), Flatten(start_dim),
GlobalAvgPool2D (torch's AdaptiveAvgPool2d(1)), and MaxPool2D's gradient routing for NaN and
-inf, which must equal torch's position by position. float64 to 1e-7, float32 to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scratchcnn as sc
from tests.conftest import distinct, noncontiguous
from tests.test_parity_torch import DTYPES, _both_ways, run, run_both, tparam  # noqa: F401 - a fixture


def torch_pad(padding):
    """F.pad's (left, right, top, bottom) for ((top, bottom), (left, right))."""
    (t, b), (left, r) = padding
    return (left, r, t, b)


CONV_GRID = [
    # in, out, kernel, stride, padding, dilation, groups, (H, W), N
    (3, 4, 3, 1, 2, 2, 1, (9, 8), 2),
    (2, 4, 3, 2, 1, 2, 2, (11, 9), 2),  # stride > 1 with dilation, groups 2
    (4, 4, 3, 1, 1, 1, 4, (7, 6), 3),  # depthwise
    (4, 8, (3, 2), (2, 1), (1, 0), (1, 2), 4, (8, 9), 2),  # depthwise, multiplier 2
    (6, 4, 1, 1, 0, 1, 2, (5, 5), 2),  # pointwise grouped
    (4, 6, 3, 1, "same", 3, 2, (9, 10), 1),
    (3, 2, 3, 1, ((0, 2), (1, 0)), 1, 1, (6, 7), 2),  # asymmetric padding (plain path)
    (4, 4, 3, 2, ((2, 1), (0, 2)), 2, 2, (10, 9), 2),  # asymmetric, dilated, grouped
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin,cout,k,s,p,d,g,hw,n", CONV_GRID)
def test_conv2d_interop(cin, cout, k, s, p, d, g, hw, n, dtype, rng):
    conv = sc.Conv2D(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, dtype=dtype, rng=rng)
    w, b = tparam(conv.params["weight"]), tparam(conv.params["bias"])
    asym = isinstance(p, tuple) and isinstance(p[0], tuple)

    def theirs(t):
        if asym:
            return F.conv2d(F.pad(t, torch_pad(p)), w, b, stride=s, dilation=d, groups=g)
        return F.conv2d(t, w, b, stride=s, padding=p, dilation=d, groups=g)

    x = rng.standard_normal((n, cin, *hw)).astype(dtype)
    run_both(conv, theirs, noncontiguous(x), dtype, [("weight", w), ("bias", b)])


POOL_GRID = [
    # kernel, stride, padding, ceil_mode, (H, W)
    (2, 2, 0, True, (7, 9)),
    (3, 2, 1, True, (8, 8)),
    (3, 2, 1, True, (9, 10)),
    (2, 2, 1, True, (6, 5)),
    ((3, 2), (2, 3), (1, 1), True, (10, 8)),
    (3, 3, 1, False, (10, 11)),
    (3, 2, ((0, 1), (1, 0)), False, (9, 8)),
    (3, 2, ((1, 0), (0, 1)), True, (8, 9)),
    (4, 3, ((2, 1), (1, 2)), True, (11, 10)),
]


def _asym(p) -> bool:
    return isinstance(p, tuple) and isinstance(p[0], tuple)


def torch_pool(kind, k, s, p, ceil, out_hw, count_include_pad=True, dilation=1):
    """torch's pooling with our arguments. Asymmetric padding: pad first (-inf for max,
    zeros for the mean, with the divisor counted separately when padding does not count),
    then keep the first OH x OW windows (torch lets a ceil-mode window start in padding that
    F.pad made part of the input; our rule, like torch's own for symmetric padding, does not).
    """

    def fn(t):
        if not _asym(p):
            if kind == "max":
                return F.max_pool2d(t, k, s, p, dilation=dilation, ceil_mode=ceil)
            return F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad)
        pads = torch_pad(p)
        if kind == "max":
            y = F.max_pool2d(
                F.pad(t, pads, value=-torch.inf), k, s, dilation=dilation, ceil_mode=ceil
            )
        elif count_include_pad:
            y = F.avg_pool2d(F.pad(t, pads), k, s, ceil_mode=ceil)
        else:
            total = F.avg_pool2d(F.pad(t, pads), k, s, ceil_mode=ceil, divisor_override=1)
            ones = F.pad(torch.ones_like(t), pads)
            y = total / F.avg_pool2d(ones, k, s, ceil_mode=ceil, divisor_override=1)
        return y[:, :, : out_hw[0], : out_hw[1]]

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p,ceil,hw", POOL_GRID)
def test_maxpool2d_interop(k, s, p, ceil, hw, dtype, rng):
    pool = sc.MaxPool2D(k, stride=s, padding=p, ceil_mode=ceil)
    x = distinct((2, 3, *hw), rng, dtype)
    out_hw = pool.output_shape(x.shape)[2:]
    run_both(pool, torch_pool("max", k, s, p, ceil, out_hw), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "k,s,p,d,ceil", [(2, 1, 1, 2, False), (3, 2, 1, 2, True), (2, 2, 0, 3, True)]
)
def test_dilated_maxpool2d(k, s, p, d, ceil, dtype, rng):
    pool = sc.MaxPool2D(k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    x = distinct((2, 3, 10, 9), rng, dtype)
    run_both(pool, torch_pool("max", k, s, p, ceil, None, dilation=d), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("k,s,p,ceil,hw", POOL_GRID)
def test_avgpool2d_interop(k, s, p, ceil, hw, count_include_pad, dtype, rng):
    pool = sc.AvgPool2D(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=count_include_pad)
    x = rng.standard_normal((2, 3, *hw)).astype(dtype)
    out_hw = pool.output_shape(x.shape)[2:]
    run_both(pool, torch_pool("avg", k, s, p, ceil, out_hw, count_include_pad), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool(dtype, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    run_both(sc.GlobalAvgPool2D(), lambda t: F.adaptive_avg_pool2d(t, 1), noncontiguous(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("start_dim", [1, 2, 3])
def test_flatten_start_dim(start_dim, dtype, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    run_both(sc.Flatten(start_dim), lambda t: torch.flatten(t, start_dim), x, dtype)


SPECIAL_POOLS = [
    # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),
    (2, 1, 0, 1, False),  # overlapping windows
    (3, 1, 1, 1, False),
    (2, 2, 1, 1, True),
    (3, 2, 1, 1, True),
    (2, 1, 1, 2, False),
    (3, 2, 1, 2, True),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("k,s,p,d,ceil", SPECIAL_POOLS)
def test_maxpool2d_nan_and_minus_inf_route_like_torch(k, s, p, d, ceil, training):
    """Windows full of NaN, -inf and ties: the forward (NaN in the same places) and the
    gradient, position by position, equal torch's. Eval-mode forward then backward too."""
    rng = np.random.default_rng(k * 100 + s * 10 + p + 7 * d)
    for _ in range(10):
        x = rng.choice([np.nan, -np.inf, -np.inf, 1.0, 2.0, -np.inf], size=(2, 2, 7, 6))
        pool = sc.MaxPool2D(k, stride=s, padding=p, dilation=d, ceil_mode=ceil).train(training)
        xt = torch.tensor(x, requires_grad=True)
        yt = F.max_pool2d(xt, k, s, p, dilation=d, ceil_mode=ceil)
        runner = run(pool)
        y = runner.forward(x)
        np.testing.assert_array_equal(y, yt.detach().numpy())  # NaN where torch has NaN
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(dy))
        # Overlapping windows sum in another order than torch: rounding only, not routing.
        np.testing.assert_allclose(runner.backward(dy), xt.grad.numpy(), rtol=0, atol=1e-12)
