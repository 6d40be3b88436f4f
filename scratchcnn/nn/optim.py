"""Optimisers (SGD, Adam, AdamW), learning-rate schedules and gradient clipping.

Every update follows PyTorch's formulas exactly, so a scratchcnn model and a torch model with
the same weights stay equal step after step. Usage::

    opt = sc.optim.SGD(model, lr=0.01, momentum=0.9)
    loss = loss_fn(model.forward(x), y); model.backward(loss_fn.backward()); opt.step()

Parameters are updated in place, so layers keep seeing the same arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from . import dispatch
from .layers.sequential import Parameters, Sequential


def _check_hyper(name: str, value: Any, lo: float, hi: float = math.inf, lo_open=False) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v < hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi != math.inf else "")
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def clip_grad_norm(model: Sequential, max_norm: float) -> float:
    """Scale all gradients so that their global L2 norm is at most ``max_norm``.

    norm = sqrt(sum over every gradient entry g^2); if norm > max_norm every gradient is
    multiplied by max_norm / (norm + 1e-6) (PyTorch's clip_grad_norm_). Returns the norm
    before clipping.
    """
    max_norm = _check_hyper("max_norm", max_norm, 0.0, lo_open=True)
    grads = [layer.grads[name] for _, layer, name in model.named_trainable_parameters()]
    norm = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return norm


def _owner(params: Any) -> Sequential:
    """The model an optimiser updates: given itself, or as ``model.parameters()`` (a list
    that knows its model, as torch's optimisers take it)."""
    if isinstance(params, Parameters):
        params = params.owner
    if isinstance(params, Sequential):
        return params
    raise ConfigError(
        f"an optimizer takes a Sequential model or its model.parameters(), got "
        f"{type(params).__name__} (a plain list of arrays does not say where their gradients "
        "are)"
    )


class Optimizer:
    """Base class: walks the model's parameters, keeps per-parameter buffers, saves state.

    ``max_grad_norm`` (optional) clips the global gradient norm before every step.
    """

    #: names of the per-parameter buffers a subclass keeps (e.g. ("momentum_buffer",))
    buffer_names: tuple[str, ...] = ()

    def __init__(
        self, model: Sequential | Parameters, lr: float, max_grad_norm: float | None = None
    ) -> None:
        self.model = _owner(model)
        self.lr = _check_hyper("lr", lr, 0.0, lo_open=True)
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else _check_hyper("max_grad_norm", max_grad_norm, 0, 1e300, True)
        )
        self.steps = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.last_grad_norm: float | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "max_grad_norm": self.max_grad_norm}

    def step(self) -> None:
        """Apply one update using the gradients left by ``model.backward``."""
        if self.max_grad_norm is not None:
            self.last_grad_norm = clip_grad_norm(self.model, self.max_grad_norm)
        self.steps += 1
        update = dispatch.optimizer_update(self) or self._update  # the engine's, if faster
        for key, layer, name in self.model.named_trainable_parameters():  # frozen: skipped
            p, g = layer.params[name], layer.grads[name]
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = {b: np.zeros_like(p) for b in self.buffer_names}
            update(p, g, st)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """{"type", "hyper", "steps", "buffers": {"<param key>.<buffer>": array}}."""
        return {
            "type": type(self).__name__,
            "hyper": self.hyperparameters(),
            "steps": self.steps,
            "buffers": {
                f"{key}/{b}": arr.copy() for key, st in self.state.items() for b, arr in st.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hyper-parameters, step count and buffers saved by ``state_dict``.

        The hyper-parameters pass the constructor's checks again (``lr`` may be 0 here: the
        rate a schedule brought down), and after the first step every parameter must have
        every buffer, with its shape and dtype: a resume is exact or refused."""
        if state.get("type") != type(self).__name__:
            raise ConfigError(
                f"optimizer state is for {state.get('type')!r}, not {type(self).__name__}"
            )
        known = self.hyperparameters()
        saved = state.get("hyper", {})
        unknown = sorted(set(saved) - set(known))
        if unknown:
            raise ConfigError(f"optimizer state has unknown hyper-parameters {unknown}")
        steps = state.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ConfigError(f"optimizer steps must be a non-negative int, got {steps!r}")
        hyper = {**known, **saved}
        lr = _check_hyper("lr", hyper.pop("lr"), 0.0)
        model = self.model
        try:  # the constructor's checks, on a scratch object: self stays as it was on error
            fresh = type(self).__new__(type(self))
            type(self).__init__(fresh, model, lr=lr or 1.0, **hyper)
        except TypeError as exc:
            raise ConfigError(f"optimizer state does not fit {type(self).__name__}: {exc}") from exc
        params = {key: layer.params[name] for key, layer, name in model.named_leaf_parameters()}
        buffers: dict[str, dict[str, np.ndarray]] = {}
        for full, arr in state.get("buffers", {}).items():
            key, _, buf = full.rpartition("/")
            if key not in params or buf not in fresh.buffer_names:
                raise ShapeError(f"optimizer state has buffer {full!r} the model does not match")
            if np.shape(arr) != params[key].shape or np.asarray(arr).dtype != params[key].dtype:
                raise ShapeError(
                    f"optimizer buffer {full!r} is {np.asarray(arr).dtype} {np.shape(arr)}, "
                    f"the parameter is {params[key].dtype} {params[key].shape}"
                )
            buffers.setdefault(key, {})[buf] = np.array(arr, copy=True)
        if steps:
            trained = [key for key, _, _ in model.named_trainable_parameters()]
            missing = [  # frozen parameters (``freeze``) have none: they take no step
                f"{key}/{b}"
                for key in trained
                for b in fresh.buffer_names
                if b not in buffers.get(key, {})
            ]
            if missing:
                raise ShapeError(
                    f"optimizer state after {steps} steps lacks buffers {', '.join(missing[:4])}"
                    + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
                    + "; resuming without them would not be exact"
                )
        elif buffers:
            raise ShapeError("optimizer state has buffers but no steps")
        self.__dict__.update(fresh.__dict__)
        self.lr, self.steps, self.state = lr, steps, buffers

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and L2 weight decay.

    g <- g + wd * p;  b <- mu * b + g;  p <- p - lr * (g + mu * b if nesterov else b)
    (b = g on the first step, as torch.optim.SGD with dampening 0).
    """

    def __init__(
        self,
        model: Sequential | Parameters,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, max_grad_norm)
        self.momentum = _check_hyper("momentum", momentum, 0.0, 1.0)
        self.weight_decay = _check_hyper("weight_decay", weight_decay, 0.0)
        if nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    @property
    def buffer_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("momentum_buffer",) if self.momentum else ()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }

    def _update(self, p, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam; weight_decay is L2.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        model: Sequential | Parameters,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, max_grad_norm)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"betas must be a pair, got {betas!r}")
        self.betas = (_check_hyper("beta1", betas[0], 0, 1), _check_hyper("beta2", betas[1], 0, 1))
        self.eps = _check_hyper("eps", eps, 0.0, lo_open=True)
        self.weight_decay = _check_hyper("weight_decay", weight_decay, 0.0)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, p, g, state):
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        t = self.steps
        denom = np.sqrt(v) / math.sqrt(1 - b2**t)
        denom += self.eps
        p -= (self.lr / (1 - b1**t)) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
    p <- p * (1 - lr * wd) before the Adam step. Default weight_decay 0.01."""

    decoupled = True

    def __init__(
        self,
        model: Sequential | Parameters,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, max_grad_norm)


class LRScheduler:
    """Epoch-based schedule: call ``step()`` once at the end of every epoch."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    #: The epoch the schedule was made to end at (None: it has no end).
    @property
    def ends_at(self) -> int | None:
        return None

    def stretch(self, epochs: int) -> bool:
        """Make a schedule that ends before ``epochs`` end there instead (what a resumed run
        given more epochs does, instead of following the formula past its end); True if it
        changed. The rate becomes the stretched schedule's at the current epoch."""
        return False

    def step(self) -> float:
        self.epoch += 1
        self.optimizer.lr = self.lr_at(self.epoch)
        return self.optimizer.lr

    #: The settings a schedule saves with its state and takes back on load (torch keeps
    #: ``T_max`` and ``step_size`` in its state dict too): a resumed run, even one given more
    #: epochs, follows the schedule it started with.
    settings: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        state = {"type": type(self).__name__, "epoch": self.epoch, "base_lr": self.base_lr}
        return {**state, **{name: getattr(self, name) for name in self.settings}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; settings missing from older checkpoints keep their
        current values. Every value passes the constructor's checks."""
        epoch = state["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"scheduler epoch must be a non-negative int, got {epoch!r}")
        base_lr = _check_hyper("base_lr", state["base_lr"], 0.0, lo_open=True)
        values = {name: state.get(name, getattr(self, name)) for name in self.settings}
        fresh = type(self).__new__(type(self))
        type(self).__init__(fresh, self.optimizer, **values)
        for name in self.settings:
            setattr(self, name, getattr(fresh, name))
        self.epoch, self.base_lr = epoch, base_lr
        self.optimizer.lr = self.lr_at(self.epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    settings = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ConfigError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = _check_hyper("gamma", gamma, 0.0, lo_open=True)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2.

    Past ``T_max`` the formula goes on as torch's does (the cosine is periodic: the rate
    climbs back towards base_lr over the next T_max epochs); it is not held at eta_min. A
    resumed run given more epochs stretches it instead (``stretch``: T_max becomes the new
    number of epochs), so it never trains at the bottom of the curve or climbs back."""

    settings = ("T_max", "eta_min")

    @property
    def ends_at(self) -> int:
        return self.T_max

    def stretch(self, epochs: int) -> bool:
        if epochs <= self.T_max:
            return False
        self.T_max = int(epochs)
        self.optimizer.lr = self.lr_at(self.epoch)
        return True

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ConfigError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = _check_hyper("eta_min", eta_min, 0.0)

    def lr_at(self, epoch: int) -> float:
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + cos) / 2
