"""BatchNorm1D, BatchNorm2D and Dropout: the layers whose behaviour depends on train()/eval()."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import kernels
from ..errors import ConfigError, ShapeError
from ..init import get_rng
from ..windows import from_memory_order, memory_order
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

    Training: xhat = (x - mean_c) / sqrt(var_c + eps) with the batch's biased variance over
    the other axes; y = weight_c * xhat + bias_c. Running statistics are updated as
    r = (1 - momentum) r + momentum * batch_stat (the variance term unbiased, M/(M-1)).
    Eval: the running statistics replace the batch's.

    Backward (training), M = values per channel, g = dy * weight:
    dL/dx = (1/M) / sqrt(var + eps) * (M g - sum g - xhat * sum(g * xhat));
    dL/dweight = sum dy * xhat;  dL/dbias = sum dy. The code evaluates dL/dx as
    a*dy - a*mean(dy) - (x - mean) * a*inv_std*mean(dy*xhat), a = weight*inv_std: four
    passes over the data, each over x's own memory layout (``channel_view``).
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
        #: While a batch is split over threads (``scratchcnn.parallel.BatchSplit``), an object
        #: whose ``total(v)`` sums a per-channel vector over every slice of the batch (the same
        #: result in every thread) and whose ``lead`` is True in one thread only; the
        #: statistics are then the whole batch's. None: this layer sees the whole batch.
        self.sync: Any = None

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

    def forward(self, x: np.ndarray) -> np.ndarray:
        who = f"{type(self).__name__}({self.num_features})"
        x = check_input(x, who, self._ndim, self._layout, self.dtype, self.num_features)
        # Work on x's memory as (A, C, B), C-contiguous: every pass below is one contiguous
        # sweep, and the output keeps x's layout (a Conv2D's (H, C, W, N) stays as it is).
        x3, order = channel_view(x)
        m = x3.size // x3.shape[1]
        fast = kernels.active()
        if self.training:
            # Sums over this slice of the batch, totalled over all slices when split.
            s1 = fast.channel_sum(x3) if fast else x3.sum(axis=(0, 2))
            sums = self._total(np.append(s1, m))
            m = int(sums[-1])
            if m < 2:
                raise ShapeError(
                    f"{who} needs more than one value per channel in training, got input shape "
                    f"{x.shape}; use a larger batch or eval()"
                )
            mean = (sums[:-1] / m).astype(self.dtype)
            if fast:
                centered = None
                s2 = fast.channel_sqdev(x3, mean)
            else:
                centered = x3 - mean[:, None]
                s2 = channel_dot(centered, centered)
            var = (self._total(s2) / m).astype(self.dtype)
            if self.sync is None or self.sync.lead:  # replicas share the buffers: update once
                mom = self.momentum
                self.buffers["running_mean"] *= 1 - mom
                self.buffers["running_mean"] += mom * mean
                self.buffers["running_var"] *= 1 - mom
                self.buffers["running_var"] += (mom * m / (m - 1)) * var
                self.buffers["num_batches_tracked"] += 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            centered = None  # backward recomputes it from x, if it is ever called
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(self.dtype)
        scale = inv_std * self.params["weight"] if self.affine else inv_std
        # y = (x - mean) * scale + bias: one compiled pass, or two NumPy passes.
        if fast:
            y = np.empty_like(x3)
            fast.channel_affine(x3, mean, scale, self._bias(), y)
        elif centered is None:
            y = x3 * scale[:, None]
            y += (self._bias() - mean * scale)[:, None]
        else:
            y = centered * scale[:, None]
            if self.affine:
                y += self.params["bias"][:, None]
        # Backward needs x - mean: kept from a NumPy training pass, else recomputed from x
        # (the compiled kernels never store it: they read x and subtract on the fly).
        kept, is_centered = (x3, False) if centered is None else (centered, True)
        self._cache = (kept, is_centered, mean, inv_std, self.training, order, x.shape, m)
        return from_channel_view(y, order, x.shape)

    def _total(self, v: np.ndarray) -> np.ndarray:
        """``v`` in float64, summed over the slices of a split batch."""
        v = v.astype(np.float64)
        return v if self.sync is None else self.sync.total(v)

    def _bias(self) -> np.ndarray:
        return self.params["bias"] if self.affine else np.zeros(self.num_features, self.dtype)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        kept, is_centered, mean, inv_std, training, order, shape, m = self._require_cache()
        dy = check_grad(dy, shape, self.dtype, type(self).__name__)
        # dy in x's memory order: free when it has that layout (what the next layer returns).
        dy3 = np.ascontiguousarray(dy.transpose(order)).reshape(kept.shape)
        a = inv_std * self.params["weight"] if self.affine else inv_std
        c = self.num_features
        fast = kernels.active() if training and not is_centered else None
        if fast:
            s = fast.channel_grad_sums(dy3, kept, mean)  # float64 (sum dy, sum dy*(x-mean))
            sum_dy, sum_dy_xhat = s[0], s[1] * inv_std
            if self.affine:
                self.grads["weight"] = sum_dy_xhat.astype(self.dtype)
                self.grads["bias"] = sum_dy.astype(self.dtype)
            sums = (self._total(np.concatenate([sum_dy, sum_dy_xhat])) / m).astype(self.dtype)
            dx = np.empty_like(dy3)
            fast.channel_grad_input(dy3, kept, mean, a, a * inv_std * sums[c:], a * sums[:c], dx)
            return from_channel_view(dx, order, shape)
        if self.affine or training:
            # In eval mode xhat uses the running statistics.
            centered = kept if is_centered else kept - mean[:, None]
            sum_dy = dy3.sum(axis=(0, 2))
            sum_dy_xhat = channel_dot(dy3, centered) * inv_std
        if self.affine:  # this slice's share (BatchSplit adds the slices' gradients up)
            self.grads["weight"] = sum_dy_xhat
            self.grads["bias"] = sum_dy
        dx = dy3 * a[:, None]
        if training:
            # dx = a*dy - a*mean(dy) - a*xhat*mean(dy*xhat), with xhat = (x - mean)*inv_std,
            # the means over the whole batch.
            sums = (self._total(np.concatenate([sum_dy, sum_dy_xhat])) / m).astype(self.dtype)
            dx -= centered * (a * inv_std * sums[c:])[:, None]
            dx -= (a * sums[:c])[:, None]
        return from_channel_view(dx, order, shape)


def channel_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """x's memory as a C-contiguous (A, C, B) array, C = axis 1 (copied to C order first if
    its axes are not a permutation of a contiguous array), and the axis ``order`` such that
    ``x.transpose(order)`` is that memory with axis 1 between A's axes and B's."""
    order = memory_order(x)
    xt = x.transpose(order)
    if not xt.flags.c_contiguous:
        order = tuple(range(x.ndim))
        xt = np.ascontiguousarray(x)
    k = order.index(1)
    a = math.prod(xt.shape[:k])
    return xt.reshape(a, x.shape[1], -1), order


def from_channel_view(y3: np.ndarray, order: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`channel_view`: the logical ``shape`` over y3's memory."""
    return from_memory_order(y3, order, shape)


def channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum over A and B of a * b for (A, C, B) arrays, per channel, without a temporary."""
    if a.shape[2] >= a.shape[0]:
        return np.vecdot(a, b).sum(axis=0)
    return np.vecdot(a, b, axis=0).sum(axis=-1)


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
