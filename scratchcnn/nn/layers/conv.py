"""Conv2D: 2-D cross-correlation over NCHW tensors, as im2col and one matrix product."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, ShapeError
from ..init import Initializer, get_rng, initialize
from ..windows import Padding, as_padding, as_pair, col2im, im2col, window_output_shape
from .base import Layer, check_grad, check_input, positive_int, resolve_dtype


def resolve_padding(
    padding: Any,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> Padding:
    """int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same" -> the last form.

    "same" keeps H and W at stride 1; with an even (dilated) kernel span the extra row/column
    goes at the bottom/right, as in PyTorch. It is refused for stride > 1, where no padding
    keeps the size.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            if stride != (1, 1):
                raise ConfigError(
                    f"padding='same' needs stride 1, got stride {stride}; "
                    "give an explicit padding instead"
                )
            th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
            return ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
        raise ConfigError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return as_padding(padding)


def padding_config(padding: Any) -> Any:
    """The ``padding`` argument as JSON data: an int, a string, [ph, pw] or [[t, b], [l, r]]."""
    if isinstance(padding, (int, str)):
        return padding
    return [list(p) if isinstance(p, (tuple, list)) else p for p in padding]


class Conv2D(Layer):
    """2-D cross-correlation (what deep-learning libraries call convolution).

        y[n,o,i,j] = b[o] + sum_{c,u,v} W[o,c,u,v] * xpad[n, c, i*SH + u*DH, j*SW + v*DW]

    x: (N, C, H, W) -> y: (N, O, OH, OW), OH = (H + PT + PB - DH*(KH-1) - 1) // SH + 1.
    weight: (O, C/G, KH, KW), bias: (O,): the shapes of torch.nn.Conv2d. ``padding`` may be
    asymmetric, ((top, bottom), (left, right)); ``dilation`` (DH, DW) spaces the taps;
    ``groups`` G splits the channels into G independent convolutions (output channel o reads
    the input channels of its group o // (O/G); G = C is the depthwise convolution).

    As one matrix product (im2col, the classic NumPy way), with the weight as the
    (O, C*KH*KW) matrix W and cols = im2col(x), the (C*KH*KW, N*OH*OW) matrix whose column
    (n, i, j) is the window under output pixel (i, j) of image n:

        forward:   Y = W @ cols + b
        backward:  dL/db = dY summed over its columns
                   dL/dW = dY @ cols^T         (the "valid" correlation of x with dy)
                   dL/dx = col2im(W^T @ dY)    (every window's gradient added back onto the
                                                pixels it read: the "full" convolution of dy
                                                with the kernel rotated by 180 degrees)

    with dY the (O, N*OH*OW) matrix of dL/dy. With groups the same three lines run batched
    over a leading axis of G (W: (G, O/G, C/G*KH*KW), cols: (G, C/G*KH*KW, N*OH*OW)).
    """

    supports_input_grad_skip = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        dtype: Any = np.float32,
        weight_init: str | Initializer = "default",
        bias_init: str | Initializer = "default",
        rng: np.random.Generator | int | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.dilation = as_pair(dilation, "dilation", 1)
        self.groups = positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ConfigError(
                f"Conv2D: groups={self.groups} must divide both in_channels "
                f"({self.in_channels}) and out_channels ({self.out_channels})"
            )
        self.padding = padding
        self.pad = resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.use_bias = bool(bias)
        self.dtype = resolve_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        fan_out = self.out_channels * kh * kw
        gen = get_rng(rng)
        shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        self.params["weight"] = initialize(weight_init, shape, fan_in, fan_out, gen, self.dtype)
        if self.use_bias:
            self.params["bias"] = initialize(
                bias_init, (self.out_channels,), fan_in, fan_out, gen, self.dtype
            )
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": padding_config(self.padding),
            "bias": self.use_bias,
            "dtype": self.dtype.name,
            # Recorded only when set, so configs of plain convolutions read as before.
            **({"dilation": list(self.dilation)} if self.dilation != (1, 1) else {}),
            **({"groups": self.groups} if self.groups != 1 else {}),
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        o = positive_int(config["out_channels"], "out_channels")
        c = positive_int(config["in_channels"], "in_channels")
        kh, kw = as_pair(config["kernel_size"], "kernel_size", 1)
        weight = (o, c // positive_int(config.get("groups", 1), "groups"), kh, kw)
        return {"weight": weight, **({"bias": (o,)} if config.get("bias", True) else {})}

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        text += f", stride={self.stride}"
        if self.padding not in (0, (0, 0), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + self._repr_suffix()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_channels:
            raise ShapeError(
                f"{self!r} expects input (N, {self.in_channels}, H, W), got {tuple(input_shape)}"
            )
        oh, ow = window_output_shape(
            input_shape[2:], self.kernel_size, self.stride, self.pad, repr(self), self.dilation
        )
        return (input_shape[0], self.out_channels, oh, ow)

    def _weight_matrix(self) -> np.ndarray:
        """The weight as G stacked (O/G, C/G*KH*KW) matrices (G = 1 without groups)."""
        return self.params["weight"].reshape(self.groups, self.out_channels // self.groups, -1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        who = f"Conv2D({self.in_channels}, {self.out_channels})"
        x = check_input(x, who, 4, "(N, C, H, W)", self.dtype, self.in_channels)
        n, o, oh, ow = self.output_shape(x.shape)
        cols = im2col(x, self.kernel_size, self.stride, self.pad, self.dilation)
        cols = cols.reshape(self.groups, -1, cols.shape[1])  # (G, C/G*KH*KW, N*OH*OW)
        y = (self._weight_matrix() @ cols).reshape(o, n, oh, ow)  # Y = W @ cols
        if self.use_bias:
            y += self.params["bias"][:, None, None, None]  # + b
        self._cache = (x.shape, cols)
        return y.transpose(1, 0, 2, 3)  # (O, N, OH, OW) -> (N, O, OH, OW)

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        x_shape, cols = self._require_cache()
        n, o = x_shape[0], self.out_channels
        dy = check_grad(dy, (n, o, *self.output_shape(x_shape)[2:]), self.dtype, "Conv2D")
        dy = dy.transpose(1, 0, 2, 3).reshape(self.groups, o // self.groups, -1)  # dY
        if self.use_bias:
            self.grads["bias"] = dy.sum(axis=2).reshape(o)  # dL/db
        dw = dy @ cols.transpose(0, 2, 1)  # dL/dW = dY @ cols^T
        self.grads["weight"] = dw.reshape(self.params["weight"].shape)
        if not input_grad:  # the first layer of a network: nobody needs dL/dx
            return None
        dcols = self._weight_matrix().transpose(0, 2, 1) @ dy  # W^T @ dY
        dcols = dcols.reshape(-1, dcols.shape[2])
        return col2im(dcols, x_shape, self.kernel_size, self.stride, self.pad, self.dilation)
