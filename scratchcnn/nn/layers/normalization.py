"""BatchNorm1D, BatchNorm2D and Dropout: the layers whose behaviour depends on train()/eval()."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, ShapeError
from ..init import get_rng
from .base import (
    Layer,
    check_array,
    check_grad,
    check_input,
    finite_float,
    positive_int,
    resolve_dtype,
)


class _BatchNorm(Layer):
    """Per-channel batch normalisation over every axis but 1; see BatchNorm2D/BatchNorm1D.

    Training, with mean and var the batch's per-channel mean and (biased) variance over the
    M values of each channel:

        xhat = (x - mean) / sqrt(var + eps)          y = weight * xhat + bias
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

    Eval: the running statistics take the place of the batch's.

    Backward (training), g = dy * weight, sums over the M values of a channel:

        dL/dx      = inv_std / M * (M * g - sum(g) - xhat * sum(g * xhat))
        dL/dweight = sum(dy * xhat)        dL/dbias = sum(dy)

    (in eval the statistics are constants: dL/dx = g * inv_std).
    """

    #: (ndim of the input, its layout for messages)
    _ndim = 4
    _layout = "(N, C, H, W)"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_features = positive_int(num_features, "num_features")
        self.eps = finite_float(eps, "eps")
        self.momentum = finite_float(momentum, "momentum")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {eps!r}")
        if not 0 <= self.momentum <= 1:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum!r}")
        self.affine = bool(affine)
        self.dtype = resolve_dtype(dtype)
        c = self.num_features
        if self.affine:
            self.params["weight"] = np.ones(c, dtype=self.dtype)
            self.params["bias"] = np.zeros(c, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers["running_mean"] = np.zeros(c, dtype=self.dtype)
        self.buffers["running_var"] = np.ones(c, dtype=self.dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)

    def config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "dtype": self.dtype.name,
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        c = (positive_int(config["num_features"], "num_features"),)
        affine = {"weight": c, "bias": c} if config.get("affine", True) else {}
        return {**affine, "running_mean": c, "running_var": c, "num_batches_tracked": ()}

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
        if not self.affine:
            text += ", affine=False"
        return text + self._repr_suffix()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def check(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
        """The validated input, the axes the statistics run over (all but the channels), and
        the shape that broadcasts a per-channel vector over x: (1, C, 1, 1) or (1, C)."""
        who = f"{type(self).__name__}({self.num_features})"
        x = check_input(x, who, self._ndim, self._layout, self.dtype, self.num_features)
        if self.training and x.size // x.shape[1] < 2:
            raise ShapeError(
                f"{who} needs more than one value per channel in training, got input shape "
                f"{x.shape}; use a larger batch or eval()"
            )
        return x, (0, *range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)

    def update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        """running = (1 - momentum) * running + momentum * batch statistic, in place; the
        variance term unbiased (M / (M - 1)), as PyTorch keeps it."""
        mom = self.momentum
        self.buffers["running_mean"] *= 1 - mom
        self.buffers["running_mean"] += mom * mean
        self.buffers["running_var"] *= 1 - mom
        self.buffers["running_var"] += (mom * m / (m - 1)) * var
        self.buffers["num_batches_tracked"] += 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, axes, per_channel = self.check(x)
        if self.training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            self.update_running_stats(mean, var, x.size // x.shape[1])
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / np.sqrt(var + self.dtype.type(self.eps))
        xhat = (x - mean.reshape(per_channel)) * inv_std.reshape(per_channel)
        self._cache = (xhat, inv_std, self.training)
        if not self.affine:
            return xhat
        return xhat * self.params["weight"].reshape(per_channel) + self.params["bias"].reshape(
            per_channel
        )

    def backward(self, dy: np.ndarray) -> np.ndarray:
        xhat, inv_std, training = self._require_cache()
        dy = check_grad(dy, xhat.shape, self.dtype, type(self).__name__)
        axes, per_channel = (0, *range(2, dy.ndim)), (1, -1) + (1,) * (dy.ndim - 2)
        if self.affine:
            self.grads["weight"] = (dy * xhat).sum(axis=axes)
            self.grads["bias"] = dy.sum(axis=axes)
            g = dy * self.params["weight"].reshape(per_channel)
        else:
            g = dy
        k = inv_std.reshape(per_channel)
        if not training:
            return g * k
        m = dy.size // dy.shape[1]
        sum_g = g.sum(axis=axes, keepdims=True)
        sum_g_xhat = (g * xhat).sum(axis=axes, keepdims=True)
        return k / m * (m * g - sum_g - xhat * sum_g_xhat)


class BatchNorm2D(_BatchNorm):
    """Per-channel batch normalisation of (N, C, H, W), like torch.nn.BatchNorm2d: statistics
    over (N, H, W) for each channel (formulas in ``_BatchNorm``)."""


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) features (after a Dense), like torch.nn.BatchNorm1d on
    2-D input: statistics over the batch for each feature (formulas in ``_BatchNorm``)."""

    _ndim = 2
    _layout = "(N, F)"


class Dropout(Layer):
    """Inverted dropout: in training y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p);
    in eval y = x. dL/dx = dy * mask / (1 - p).

    The layer owns its generator (``rng``); checkpoints save its state so a resumed run drops
    the same units as an uninterrupted one.
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        # Own generator, seeded from the global one when not given, so that drawing masks
        # never perturbs other layers' initialisation sequence.
        self.rng = (
            get_rng(rng)
            if rng is not None
            else np.random.default_rng(get_rng(None).integers(2**63))
        )

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {}  # no parameters or buffers

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_array(x, "Dropout")
        if not self.training or self.p == 0:
            self._cache = (None, x.shape, x.dtype)
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        scale = np.multiply(keep, x.dtype.type(1 / (1 - self.p)), dtype=x.dtype)
        self._cache = (scale, x.shape, x.dtype)
        return x * scale

    def backward(self, dy: np.ndarray) -> np.ndarray:
        scale, shape, dtype = self._require_cache()
        dy = check_grad(dy, shape, dtype, "Dropout")
        return dy if scale is None else dy * scale


class LayerNorm2D(Layer):
    """Layer normalisation over the channel axis of (N, C, H, W) (or (N, C)): each pixel's C
    values are normalised on their own, as torch's ``nn.LayerNorm(C)`` on channels-last data
    (ConvNeXt; torchvision's ``LayerNorm2d``):

        mean, var = mean and (biased) variance of x[n, :, h, w]
        xhat = (x - mean) / sqrt(var + eps)          y = weight[c] * xhat + bias[c]

    Backward, g = dy * weight, sums over the C channels of one pixel:

        dL/dx      = inv_std / C * (C * g - sum(g) - xhat * sum(g * xhat))
        dL/dweight = sum over (n, h, w) of dy * xhat        dL/dbias = sum of dy

    No running statistics: train and eval compute the same.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, affine: bool = True, dtype: Any = np.float32
    ) -> None:
        super().__init__()
        self.num_features = positive_int(num_features, "num_features")
        self.eps = finite_float(eps, "eps")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {eps!r}")
        self.affine = bool(affine)
        self.dtype = resolve_dtype(dtype)
        if self.affine:
            self.params["weight"] = np.ones(self.num_features, dtype=self.dtype)
            self.params["bias"] = np.zeros(self.num_features, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def config(self) -> dict[str, Any]:
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "affine": self.affine,
            "dtype": self.dtype.name,
        }

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        c = (positive_int(config["num_features"], "num_features"),)
        return {"weight": c, "bias": c} if config.get("affine", True) else {}

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}" + ("" if self.affine else ", affine=False")
        return text + self._repr_suffix()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        who = f"LayerNorm2D({self.num_features})"
        x = check_input(x, who, 4 if np.ndim(x) != 2 else 2, "(N, C, H, W) or (N, C)",
                        self.dtype, self.num_features)  # fmt: skip
        per_channel = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=1, keepdims=True)
        var = x.var(axis=1, keepdims=True)
        inv_std = 1 / np.sqrt(var + self.dtype.type(self.eps))
        xhat = (x - mean) * inv_std
        self._cache = (xhat, inv_std)
        if not self.affine:
            return xhat
        return xhat * self.params["weight"].reshape(per_channel) + self.params["bias"].reshape(
            per_channel
        )

    def backward(self, dy: np.ndarray) -> np.ndarray:
        xhat, inv_std = self._require_cache()
        dy = check_grad(dy, xhat.shape, self.dtype, "LayerNorm2D")
        axes, per_channel = (0, *range(2, dy.ndim)), (1, -1) + (1,) * (dy.ndim - 2)
        if self.affine:
            self.grads["weight"] = (dy * xhat).sum(axis=axes)
            self.grads["bias"] = dy.sum(axis=axes)
            g = dy * self.params["weight"].reshape(per_channel)
        else:
            g = dy
        c = dy.shape[1]
        sum_g = g.sum(axis=1, keepdims=True)
        sum_g_xhat = (g * xhat).sum(axis=1, keepdims=True)
        return inv_std / c * (c * g - sum_g - xhat * sum_g_xhat)
