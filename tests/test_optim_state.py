"""Optimiser and schedule state: torch's schedule past T_max, saved settings, and the same
validation for a loaded state as for the constructors (issue 9, items 2 and 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scratchcnn as sc
from scratchcnn import optim


def _model() -> sc.Sequential:
    return sc.Sequential([sc.Dense(3, 2, rng=0)])


@pytest.mark.parametrize("t_max,eta_min", [(1, 0.0), (3, 0.0), (4, 0.002), (7, 0.01)])
def test_cosine_follows_torch_beyond_t_max(t_max, eta_min):
    """Step by step over three periods: torch's recursive form and ours (closed) agree."""
    opt = optim.SGD(_model(), lr=0.1)
    sched = optim.CosineAnnealingLR(opt, t_max, eta_min)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, t_max, eta_min)
    rates = []
    for _ in range(3 * t_max + 2):
        topt.step()
        tsched.step()
        rates.append(sched.step())
        assert rates[-1] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
    # It really goes past T_max: back up towards base_lr, not held at eta_min.
    assert rates[2 * t_max - 1] == pytest.approx(0.1)


def test_scheduler_settings_are_saved_and_kept_on_resume():
    """torch keeps T_max in its state dict; so do we: a resumed schedule is the saved one."""
    opt = optim.SGD(_model(), lr=0.1)
    sched = optim.CosineAnnealingLR(opt, 4, 0.001)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    assert state == {
        "type": "CosineAnnealingLR",
        "epoch": 3,
        "base_lr": 0.1,
        "T_max": 4,
        "eta_min": 0.001,
    }
    opt2 = optim.SGD(_model(), lr=0.1)
    longer = optim.CosineAnnealingLR(opt2, 10)  # what a resume with --epochs 10 would build
    longer.load_state_dict(state)
    assert (longer.T_max, longer.eta_min, longer.epoch) == (4, 0.001, 3)
    assert opt2.lr == opt.lr
    assert [longer.step() for _ in range(3)] == [sched.step() for _ in range(3)]
    step = optim.StepLR(optim.SGD(_model(), lr=0.1), 2, 0.5)
    assert step.state_dict()["step_size"] == 2 and step.state_dict()["gamma"] == 0.5
    # An older state without the settings keeps the live ones.
    old = optim.CosineAnnealingLR(optim.SGD(_model(), lr=0.1), 6)
    old.load_state_dict({"type": "CosineAnnealingLR", "epoch": 2, "base_lr": 0.1})
    assert old.T_max == 6


@pytest.mark.parametrize(
    "state,match",
    [
        ({"epoch": 1, "base_lr": 0.1, "T_max": 0}, "T_max must be a positive int"),
        ({"epoch": 1, "base_lr": 0.1, "T_max": 2.5}, "T_max must be a positive int"),
        ({"epoch": 1, "base_lr": 0.1, "eta_min": -1}, "eta_min must be a number >= 0"),
        ({"epoch": -1, "base_lr": 0.1}, "epoch must be a non-negative int"),
        ({"epoch": 1, "base_lr": 0}, "base_lr must be a number > 0"),
    ],
)
def test_bad_scheduler_states_are_refused(state, match):
    sched = optim.CosineAnnealingLR(optim.SGD(_model(), lr=0.1), 4)
    with pytest.raises(sc.ConfigError, match=match):
        sched.load_state_dict({"type": "CosineAnnealingLR", **state})
    assert (sched.T_max, sched.epoch) == (4, 0)


def _trained(opt_cls, **kwargs):
    model = _model()
    opt = opt_cls(model, **kwargs)
    for _ in range(2):
        model.forward(np.ones((2, 3), np.float32))
        model.backward(np.ones((2, 2), np.float32))
        opt.step()
    return model, opt


@pytest.mark.parametrize(
    "cls,change,match",
    [
        (optim.Adam, {"betas": [1, 1]}, "beta1 must be a number >= 0 and < 1"),
        (optim.Adam, {"eps": 0}, "eps must be a number > 0"),
        (optim.SGD, {"momentum": 7}, "momentum must be a number >= 0.0 and < 1.0"),
        (optim.SGD, {"weight_decay": -0.1}, "weight_decay must be a number >= 0"),
        (optim.SGD, {"lr": -1}, "lr must be a number >= 0"),
        (optim.SGD, {"max_grad_norm": 0}, "max_grad_norm must be a number > 0"),
    ],
)
def test_loaded_hyperparameters_pass_the_constructor_checks(cls, change, match):
    kwargs = {"momentum": 0.9} if cls is optim.SGD else {}
    model, opt = _trained(cls, lr=0.01, **kwargs)
    state = opt.state_dict()
    state["hyper"] = {**state["hyper"], **change}
    fresh = cls(model, lr=0.01, **kwargs)
    with pytest.raises(sc.ConfigError, match=match):
        fresh.load_state_dict(state)
    assert fresh.steps == 0 and fresh.lr == 0.01  # untouched


def test_a_resume_with_missing_or_wrong_buffers_is_refused():
    model, opt = _trained(optim.Adam, lr=0.01)
    good = opt.state_dict()
    fresh = optim.Adam(model, lr=0.01)
    fresh.load_state_dict(good)  # the real thing loads, exactly
    assert fresh.steps == 2 and set(fresh.state["0.weight"]) == {"exp_avg", "exp_avg_sq"}
    missing = {**good, "buffers": {k: v for k, v in good["buffers"].items() if "sq" not in k}}
    with pytest.raises(sc.ShapeError, match=r"lacks buffers 0\.weight/exp_avg_sq"):
        optim.Adam(model, lr=0.01).load_state_dict(missing)
    wrong = {**good, "buffers": {k: v.astype(np.float64) for k, v in good["buffers"].items()}}
    with pytest.raises(sc.ShapeError, match=r"is float64 .* the parameter is float32"):
        optim.Adam(model, lr=0.01).load_state_dict(wrong)
    with pytest.raises(sc.ShapeError, match="has buffers but no steps"):
        optim.Adam(model, lr=0.01).load_state_dict({**good, "steps": 0})
    # A schedule may have brought the rate to 0: that loads (the setting is base_lr).
    fresh.load_state_dict({**good, "hyper": {**good["hyper"], "lr": 0.0}})
    assert fresh.lr == 0.0
