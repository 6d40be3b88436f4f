"""Finite-difference gradient checks for any layer, model or loss.

For a layer or model f, a fixed random upstream gradient r defines the scalar
L(x, theta) = sum(f(x; theta) * r), whose exact gradients are exactly what ``backward(r)``
returns (dL/dx) and stores (dL/dtheta). Each entry t of each tensor is then checked against
the central difference (L(t + eps) - L(t - eps)) / (2 eps), computed in float64. For a loss,
L is the loss itself and the gradient is ``backward()``.

    result = sc.gradcheck(sc.Conv2D(3, 4, 3, dtype=np.float64), x)
    print(result)            # one line per tensor: worst absolute and relative error
    assert result.ok

A user's own layer is checked the same way, as long as it has ``forward``, ``backward``,
``params`` and ``grads``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DTypeError
from .layers.base import leaf_layers
from .losses import Loss


@dataclass
class TensorCheck:
    """Comparison of one tensor's analytic gradient with its finite-difference estimate."""

    name: str
    checked: int
    max_abs_error: float
    max_rel_error: float
    ok: bool
    analytic: np.ndarray = field(repr=False)
    numeric: np.ndarray = field(repr=False)


@dataclass
class GradcheckResult:
    """All tensors' checks; ``ok`` is True when every one passed."""

    checks: list[TensorCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=0.0)

    def errors(self) -> dict[str, float]:
        """Worst relative error per tensor name."""
        return {c.name: c.max_rel_error for c in self.checks}

    def __str__(self) -> str:
        w = max([16, *(len(c.name) for c in self.checks)])
        lines = [f"{'tensor':<{w}} {'checked':>8} {'max abs err':>12} {'max rel err':>12}  ok"]
        for c in self.checks:
            lines.append(
                f"{c.name:<{w}} {c.checked:>8} {c.max_abs_error:>12.3e} {c.max_rel_error:>12.3e}"
                f"  {'yes' if c.ok else 'NO'}"
            )
        return "\n".join(lines)


def _rng_holders(obj: Any) -> list[Any]:
    layers = [la for _, la in leaf_layers(obj)]
    return [la for la in layers if isinstance(getattr(la, "rng", None), np.random.Generator)]


def _param_tensors(obj: Any) -> list[tuple[str, Any, str]]:
    """(display name, leaf layer, name) for every parameter of a layer, block or Sequential."""
    if hasattr(obj, "named_leaf_parameters"):
        return list(obj.named_leaf_parameters())
    return [(name, obj, name) for name in getattr(obj, "params", {})]


def gradcheck(
    obj: Any,
    x: np.ndarray,
    dy: np.ndarray | None = None,
    *,
    target: Any = None,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-5,
    check_input: bool = True,
    max_per_tensor: int | None = None,
    seed: int = 0,
) -> GradcheckResult:
    """Compare ``obj``'s backward with central differences, in float64.

    obj: a layer, a Sequential, or a loss (then ``target`` is the labels/targets).
    x: the input; dy: the upstream gradient (random N(0,1) if omitted; not used for losses).
    An entry passes when |analytic - numeric| <= atol + rtol * |numeric|; the reported
    relative error is |a - n| / max(|a|, |n|, atol). ``max_per_tensor`` checks a random subset
    of that many entries per tensor (for big models). ``obj`` itself is never modified: a
    float64 deep copy is checked.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise DTypeError(f"gradcheck: x must be a float ndarray, got {type(x).__name__}")
    if eps <= 0:
        raise ConfigError(f"gradcheck: eps must be positive, got {eps}")
    is_loss = isinstance(obj, Loss)
    if is_loss and target is None:
        raise ConfigError("gradcheck: checking a loss needs target=")
    work = copy.deepcopy(obj)
    if not is_loss:
        if not hasattr(work, "astype"):
            raise ConfigError("gradcheck: the layer needs an astype(dtype) method (subclass Layer)")
        work.astype(np.float64)
    x = np.array(x, dtype=np.float64)
    # A stream of its own, so that dy never equals an x the caller drew with the same seed.
    rng = np.random.default_rng((seed, 2718))
    holders = _rng_holders(work)
    rng_states = [h.rng.bit_generator.state for h in holders]

    def rewind() -> None:
        # Same random stream for every evaluation, so Dropout masks stay fixed.
        for h, st in zip(holders, rng_states, strict=True):
            h.rng.bit_generator.state = st

    def scalar(inp: np.ndarray) -> float:
        rewind()
        if is_loss:
            return work.forward(inp, target)
        return float(np.sum(work.forward(inp) * up))

    up = None
    if is_loss:
        scalar(x)
        dx = work.backward()
    else:
        rewind()
        y = work.forward(x)
        up = rng.standard_normal(y.shape) if dy is None else np.asarray(dy, dtype=np.float64)
        if up.shape != y.shape:
            raise ConfigError(f"gradcheck: dy has shape {up.shape}, output has {y.shape}")
        dx = work.backward(up)
    targets: list[tuple[str, np.ndarray, np.ndarray]] = []
    if check_input:
        targets.append(("input", x, np.array(dx, dtype=np.float64)))
    for display, layer, key in _param_tensors(work):
        targets.append((display, layer.params[key], np.array(layer.grads[key], dtype=np.float64)))

    checks = []
    for name, tensor, analytic in targets:
        if not tensor.flags.c_contiguous:
            raise ConfigError(f"gradcheck: tensor {name!r} is not contiguous, cannot perturb it")
        flat = tensor.reshape(-1)  # a view: perturbing it perturbs the tensor the model reads
        idx = np.arange(flat.size)
        if max_per_tensor is not None and flat.size > max_per_tensor:
            idx = np.sort(rng.choice(flat.size, size=max_per_tensor, replace=False))
        numeric = np.zeros(idx.size)
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            plus = scalar(x)
            flat[i] = old - eps
            minus = scalar(x)
            flat[i] = old
            numeric[j] = (plus - minus) / (2 * eps)
        a = analytic.reshape(-1)[idx]
        err = np.abs(a - numeric)
        rel = err / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), atol)
        checks.append(
            TensorCheck(
                name=name,
                checked=int(idx.size),
                max_abs_error=float(err.max(initial=0.0)),
                max_rel_error=float(rel.max(initial=0.0)),
                ok=bool(np.all(err <= atol + rtol * np.abs(numeric))),
                analytic=a,
                numeric=numeric,
            )
        )
    return GradcheckResult(checks)
