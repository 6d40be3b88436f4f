"""Optimisers, clipping and schedules step for step against torch.optim."""

import numpy as np
import pytest
import torch

import scratchcnn as sc
from scratchcnn import optim


def twin_models(rng):
    ours = sc.Sequential(
        [
            sc.Conv2D(1, 2, 3, dtype=np.float64, rng=0),
            sc.ReLU(),
            sc.Flatten(),
            sc.Dense(18, 3, dtype=np.float64, rng=1),
        ]
    )
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(18, 3)
    ).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def run_steps(ours, theirs, opt, topt, rng, steps=5, clip=None):
    fn = sc.CrossEntropyLoss()
    for _ in range(steps):
        x = rng.standard_normal((4, 1, 5, 5))
        y = rng.integers(0, 3, 4)
        fn.forward(ours.forward(x), y)
        ours.backward(fn.backward())
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)
        topt.step()
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(
            ours.state_dict()[k], v.numpy(), rtol=1e-9, atol=1e-12, err_msg=k
        )


@pytest.mark.parametrize(
    "make,tmake",
    [
        (lambda m: optim.SGD(m, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (
            lambda m: optim.SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01),
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
        ),
        (
            lambda m: optim.SGD(m, lr=0.05, momentum=0.8, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
        ),
        (
            lambda m: optim.Adam(m, lr=0.01, weight_decay=0.1),
            lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
        ),
        (
            lambda m: optim.AdamW(m, lr=0.01, betas=(0.8, 0.99)),
            lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99)),
        ),
    ],
)
def test_optimizers_match_torch(make, tmake, rng):
    ours, theirs = twin_models(rng)
    run_steps(ours, theirs, make(ours), tmake(theirs.parameters()), rng)


def test_clipping_matches_torch(rng):
    ours, theirs = twin_models(rng)
    opt = optim.SGD(ours, lr=0.5, max_grad_norm=0.05)
    run_steps(ours, theirs, opt, torch.optim.SGD(theirs.parameters(), lr=0.5), rng, clip=0.05)
    assert opt.last_grad_norm > 0.05


def test_clip_grad_norm_returns_norm_and_scales():
    model = sc.Sequential([sc.Dense(2, 2, dtype=np.float64)])
    model.layers[0].grads = {"weight": np.full((2, 2), 3.0), "bias": np.full(2, 4.0)}
    norm = optim.clip_grad_norm(model, 1.0)
    assert norm == pytest.approx(np.sqrt(4 * 9 + 2 * 16))
    total = np.sqrt(sum(np.sum(g**2) for g in model.gradients()))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_schedules_match_torch():
    model = sc.Sequential([sc.Dense(2, 2)])
    for make, tmake in [
        (lambda o: optim.StepLR(o, 2, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
        (
            lambda o: optim.CosineAnnealingLR(o, 5, 0.001),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 0.001),
        ),
    ]:
        opt = optim.SGD(model, lr=0.1)
        topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched, tsched = make(opt), tmake(topt)
        for _ in range(5):
            topt.step()
            tsched.step()
            assert sched.step() == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_optimizer_state_round_trip(rng):
    ours, _ = twin_models(rng)
    opt = optim.Adam(ours, lr=0.01)
    fn = sc.CrossEntropyLoss()
    x, y = rng.standard_normal((4, 1, 5, 5)), rng.integers(0, 3, 4)
    fn.forward(ours.forward(x), y)
    ours.backward(fn.backward())
    opt.step()
    state = opt.state_dict()
    opt2 = optim.Adam(ours, lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.lr == 0.01 and opt2.steps == 1
    for key, st in opt.state.items():
        for b, arr in st.items():
            np.testing.assert_array_equal(opt2.state[key][b], arr)
    with pytest.raises(sc.ConfigError, match="'Adam', not SGD"):
        optim.SGD(ours).load_state_dict(state)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda m: optim.SGD(m, lr=0), "lr must be"),
        (lambda m: optim.SGD(m, lr=float("nan")), "lr must be"),
        (lambda m: optim.SGD(m, lr=0.1, momentum=1.5), "momentum"),
        (lambda m: optim.SGD(m, lr=0.1, nesterov=True), "nesterov"),
        (lambda m: optim.Adam(m, betas=(0.9, 1.0)), "beta2"),
        (lambda m: optim.Adam(m, eps=0), "eps"),
        (lambda m: optim.SGD(m, max_grad_norm=-1), "max_grad_norm"),
        (lambda m: optim.SGD("model"), "Sequential"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(sc.ConfigError, match=match):
        make(sc.Sequential([sc.Dense(2, 2)]))


def test_load_state_dict_refuses_unknown_hyperparameters():
    opt = optim.SGD(sc.Sequential([sc.Dense(2, 2)]), lr=0.1)
    state = opt.state_dict()
    state["hyper"]["step"] = 5  # would shadow the method
    with pytest.raises(sc.ConfigError, match=r"unknown hyper-parameters \['step'\]"):
        opt.load_state_dict(state)
    assert callable(opt.step)
