"""Conv2D's interop arguments: dilation, groups (depthwise included), asymmetric padding.

Finite differences in float64 over a grid of the new arguments, plus config, shapes and
errors. PyTorch parity for the same grid is in tests/test_parity_torch_interop.py.
"""

import json

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.nn.layers import layer_from_config
from tests.conftest import noncontiguous

# (in, out, kernel, stride, padding, dilation, groups, (H, W), N)
GRID = [
    (2, 3, 3, 1, 0, 2, 1, (7, 7), 2),  # dilation alone
    (2, 2, 3, 2, 1, 2, 1, (9, 8), 1),  # stride > 1 with dilation
    (3, 3, (2, 3), (2, 1), (1, 0), (2, 3), 1, (8, 10), 2),  # per-axis dilation and stride
    (4, 6, 3, 1, 1, 1, 2, (5, 6), 2),  # groups 2
    (4, 4, 3, 1, 1, 1, 4, (5, 5), 2),  # depthwise (groups == C)
    (3, 6, 3, 2, 0, 1, 3, (7, 8), 1),  # depthwise with a channel multiplier, stride 2
    (4, 2, 2, 1, 0, 2, 2, (6, 5), 1),  # groups and dilation together
    (2, 3, 3, 1, ((0, 2), (1, 0)), 1, 1, (5, 6), 2),  # asymmetric padding, plain path
    (2, 4, 3, 2, ((2, 1), (0, 2)), 2, 2, (8, 7), 1),  # asymmetric padding, grouped path
    (4, 4, 3, 1, "same", 2, 4, (6, 5), 1),  # "same" with dilation, depthwise
    (2, 2, 4, 1, "same", 3, 1, (9, 9), 1),  # "same", even kernel, dilation
]


@pytest.mark.parametrize("cin,cout,k,s,p,d,g,hw,n", GRID)
def test_conv_interop_gradcheck(cin, cout, k, s, p, d, g, hw, n, rng):
    conv = sc.Conv2D(
        cin, cout, k, stride=s, padding=p, dilation=d, groups=g, dtype=np.float64, rng=rng
    )
    x = rng.standard_normal((n, cin, *hw))
    result = sc.gradcheck(conv, x)
    assert result.ok, f"\n{result}"
    assert {c.name for c in result.checks} == {"input", "weight", "bias"}
    assert conv.output_shape(x.shape) == conv.forward(x).shape


def test_grouped_conv_without_bias_and_noncontiguous(rng):
    conv = sc.Conv2D(4, 4, 3, padding=1, groups=2, dilation=2, bias=False, dtype=np.float64)
    x = noncontiguous(rng.standard_normal((2, 4, 6, 5)))
    dy = noncontiguous(rng.standard_normal((2, 4, 4, 3)))
    y = conv.forward(x)
    dx = conv.backward(dy)
    np.testing.assert_array_equal(y, conv.forward(np.ascontiguousarray(x)))
    np.testing.assert_allclose(dx, conv.backward(np.ascontiguousarray(dy)), rtol=1e-14)
    assert "bias" not in conv.params
    assert sc.gradcheck(conv, x, dy).ok


def test_grouped_conv_is_independent_convolutions(rng):
    """groups=G equals G separate convolutions over the channel slices, side by side."""
    conv = sc.Conv2D(6, 4, 3, stride=2, padding=1, dilation=2, groups=2, dtype=np.float64)
    x = rng.standard_normal((2, 6, 9, 8))
    y = conv.forward(x)
    for g in range(2):
        part = sc.Conv2D(3, 2, 3, stride=2, padding=1, dilation=2, dtype=np.float64)
        part.params["weight"][...] = conv.params["weight"][2 * g : 2 * g + 2]
        part.params["bias"][...] = conv.params["bias"][2 * g : 2 * g + 2]
        np.testing.assert_allclose(part.forward(x[:, 3 * g : 3 * g + 3]), y[:, 2 * g : 2 * g + 2])


def test_asymmetric_padding_equals_padding_the_input(rng):
    conv = sc.Conv2D(2, 3, 3, padding=((1, 2), (0, 3)), dtype=np.float64, rng=rng)
    plain = sc.Conv2D(2, 3, 3, dtype=np.float64)
    plain.params = conv.params
    x = rng.standard_normal((2, 2, 5, 4))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 3)))
    np.testing.assert_allclose(conv.forward(x), plain.forward(xp), rtol=1e-14)
    dy = rng.standard_normal((2, 3, 6, 5))
    np.testing.assert_allclose(
        conv.backward(dy), plain.backward(dy)[:, :, 1:-2, :-3], rtol=1e-13, atol=1e-15
    )


def test_weight_shape_and_init_scale_follow_torch():
    conv = sc.Conv2D(8, 16, 3, groups=4, rng=0)
    assert conv.params["weight"].shape == (16, 2, 3, 3)
    # torch's default bound 1/sqrt(fan_in) with fan_in = C/G * KH * KW = 18.
    bound = 1 / np.sqrt(18)
    assert np.abs(conv.params["weight"]).max() <= bound
    assert np.abs(conv.params["weight"]).max() > 0.8 * bound


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        (dict(dilation=2), (1, 3, 5, 6)),
        (dict(dilation=(1, 3), stride=2), (1, 3, 4, 2)),
        (dict(padding=((0, 1), (2, 0))), (1, 3, 8, 10)),
        (dict(padding="same", dilation=3), (1, 3, 9, 10)),
    ],
)
def test_output_shape_formula(kwargs, shape):
    conv = sc.Conv2D(2, 3, 3, **kwargs)
    x = np.zeros((1, 2, 9, 10), np.float32)
    assert conv.output_shape(x.shape) == conv.forward(x).shape == shape


def test_config_round_trip_and_old_configs_load(rng):
    conv = sc.Conv2D(4, 6, 3, padding=((1, 0), (2, 1)), dilation=(2, 1), groups=2, rng=rng)
    cfg = json.loads(json.dumps(conv.config()))
    assert cfg["padding"] == [[1, 0], [2, 1]]
    assert cfg["dilation"] == [2, 1] and cfg["groups"] == 2
    twin = layer_from_config({"type": "Conv2D", "config": cfg})
    twin.params = {k: v.copy() for k, v in conv.params.items()}
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(twin.forward(x), conv.forward(x))
    # A config written before these arguments existed has none of the new keys.
    old = sc.Conv2D(2, 3, 3, padding=1).config()
    assert "dilation" not in old and "groups" not in old
    rebuilt = layer_from_config({"type": "Conv2D", "config": old})
    assert (rebuilt.dilation, rebuilt.groups) == ((1, 1), 1)


def test_repr_and_summary_show_the_new_arguments():
    model = sc.Sequential(
        [
            sc.Conv2D(3, 6, 3, padding=((1, 0), (0, 1)), dilation=2, groups=3),
            sc.GlobalAvgPool2D(),
            sc.Flatten(),
        ],
        input_shape=(3, 8, 8),
    )
    text = model.summary()
    assert "dilation=(2, 2)" in text and "groups=3" in text
    assert "(N, 6, 5, 5)" in text and "(N, 6, 1, 1)" in text and "(N, 6)" in text


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,g", [(4, 6, 4), (3, 6, 2), (4, 4, 3)])
def test_groups_must_divide_both_channel_counts(cin, cout, g):
    with pytest.raises(sc.ConfigError, match=rf"groups={g} must divide both in_channels"):
        sc.Conv2D(cin, cout, 3, groups=g)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_groups(bad):
    with pytest.raises(sc.ConfigError, match="groups must be a positive int"):
        sc.Conv2D(2, 2, 3, groups=bad)


@pytest.mark.parametrize("bad", [0, (1, 0), -2])
def test_bad_dilation(bad):
    with pytest.raises(sc.ConfigError, match="dilation must be positive"):
        sc.Conv2D(2, 2, 3, dilation=bad)


@pytest.mark.parametrize("bad", [((1, 2), (3, -1)), ((1, 2), 3), ((1, 2, 3), (0, 0))])
def test_bad_asymmetric_padding(bad):
    with pytest.raises(sc.ConfigError, match="padding must be"):
        sc.Conv2D(2, 2, 3, padding=bad)


def test_dilated_kernel_larger_than_input_names_the_span():
    with pytest.raises(sc.ShapeError, match=r"dilated kernel 3x3 .*span 7x7.* padded input 6x6"):
        sc.Conv2D(1, 1, 3, dilation=3).forward(np.zeros((1, 1, 6, 6), np.float32))
