"""The loop's step back-off (engines/backoff.py): a rising or non-finite loss restores the
iteration's start, halves every step of the stage and retries; exit 6 only after the retries."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from ptycli.engines import backoff, loop
from ptycli.errors import NumericalError
from ptycli.recipe import validate

TARGET = np.linspace(1.0, 2.0, 16).reshape(1, 1, 4, 4).astype(np.complex64)


class Quadratic:
    """A stand-in engine: each group takes a gradient step x -= lr·2(x - t) on the object
    (the loss before the step returned), so lr > 1 diverges and lr < 1 converges."""

    def __init__(self, stage, state):
        self.lr = stage.learning_rate.object
        self.made = 0

    def update(self, state, idx, data, it):
        diff = state.object - TARGET
        with np.errstate(over="ignore", invalid="ignore"):  # the hopeless case overflows on purpose
            loss = float(np.sum(np.abs(diff) ** 2)) * len(idx)
        state.object = (state.object - self.lr * 2 * diff).astype(np.complex64)
        return loss

    def state_dict(self):
        return {}


def _state():
    pos = np.stack(np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij"), -1).reshape(-1, 2)
    return types.SimpleNamespace(probe=np.ones((1, 2, 2), np.complex64), object=np.zeros((1, 1, 4, 4), np.complex64),
                                 positions=pos.copy(), positions_initial=pos.copy(), iteration=0)


def _recipe(lr, iterations=3):
    return validate({"recipe": "ptycli/1", "stage": [{"type": "gradient", "iterations": iterations, "optimizer": "sgd",
                                                       "momentum": 0.0, "grouping": {"kind": "random", "size": 1},
                                                       "learning_rate": {"object": lr}}]})


class Events:
    def __init__(self):
        self.backoffs = []

    def on_backoff(self, *args):
        self.backoffs.append(args)


def _hooks(events, made):
    def make(stage, state):
        made.append(stage.learning_rate.object)
        return Quadratic(stage, state)

    return loop.RunHooks(read_batch=lambda idx, stage: None, make_engine=make,
                         apply_constraints=lambda s, stage, it: s, observers=[events])


def test_too_large_step_backs_off_and_converges():
    events, made = Events(), []
    state, history = loop.run(_recipe(1.5), _state(), np.arange(16), 0, _hooks(events, made))
    # lr 1.5 multiplies the error by -2 per group (exit 6 before the back-off); 0.75 converges
    assert made == [1.5, 0.75]
    assert [rec["scale"] for rec in history.backoff] == [0.5]
    assert history.backoff[0]["stage"] == 0 and history.backoff[0]["iteration"] == 0
    assert len(events.backoffs) == 1 and events.backoffs[0][2] == 0.5
    assert events.backoffs[0][3].startswith("divergence")
    assert all(np.isfinite(history.loss)) and history.loss[-1] < 1e-6 * history.loss[0]
    np.testing.assert_allclose(state.object, TARGET, atol=1e-4)


class InfTerms(Quadratic):
    """Quadratic whose too-large step first makes its step terms overflow, 0·inf and inf/inf
    as LSQ-ML's multislice steps on a thick set (batio3_thick_300kv, `quick`, iteration 5)."""

    def update(self, state, idx, data, it):
        if self.lr > 1:
            big = np.full(2, 1e300)
            return float(np.sum((big * big) / (big * big)))  # overflow, then invalid: NaN
        return super().update(state, idx, data, it)


def test_backoff_keeps_numpy_warnings_off_stderr():
    events, made = Events(), []
    hooks = _hooks(events, made)
    hooks.make_engine = lambda stage, state: made.append(stage.learning_rate.object) or InfTerms(stage, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, history = loop.run(_recipe(1.5), _state(), np.arange(16), 0, hooks)
    assert made == [1.5, 0.75] and history.backoff[0]["reason"] == "NaN/inf"
    assert np.isfinite(history.loss).all()
    with warnings.catch_warnings():  # outside the loop NumPy warns as before
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning):
            np.full(1, 1e300) * 1e300


def test_hopeless_step_is_exit_6_with_the_last_good_state():
    events, made = Events(), []
    state = _state()
    with pytest.raises(NumericalError, match="after 4 retries"):
        loop.run(_recipe(1e4), state, np.arange(16), 0, _hooks(events, made))
    assert len(made) == 1 + backoff.MAX_RETRIES and made[-1] == pytest.approx(1e4 / 16)
    assert len(events.backoffs) == 1  # logged once per stage, every retry recorded
    assert np.isfinite(state.object).all() and np.all(state.object == 0)  # the iteration's start


def test_resumed_stage_keeps_its_smaller_steps():
    # a run interrupted after backing off resumes with the engine made at the recorded scale
    events, made = Events(), []
    history = loop.History(loss=[1e3], stage=[0], time_s=[0.1],
                           backoff=[{"stage": 0, "iteration": 0, "scale": 0.25, "reason": "NaN/inf"}])
    loop.run(_recipe(1.5), _state(), np.arange(16), 0, _hooks(events, made), cursor=loop.Cursor(0, 1), history=history)
    assert made[0] == pytest.approx(0.375) and not events.backoffs


def test_scaled_stage_scales_every_engines_steps():
    rec = validate({"recipe": "ptycli/1", "stage": [
        {"type": "epie", "alpha": 0.8, "beta": 0.6},
        {"type": "lsqml", "beta_lsq": 0.9},
        {"type": "gradient", "learning_rate": {"object": {"schedule": "cosine", "start": 1e-2, "end": 2e-3,
                                                           "iterations": 5}, "probe": 1e-2}},
        {"type": "lbfgs"}]})
    epie, lsqml, grad, lbfgs = (backoff.scaled_stage(s, 0.5) for s in rec.stage)
    assert (epie.alpha, epie.beta) == (0.4, 0.3) and lsqml.beta_lsq == 0.45
    assert grad.learning_rate.object.at(0) == pytest.approx(5e-3) and grad.learning_rate.object.at(5) == pytest.approx(1e-3)
    assert grad.learning_rate.probe == 5e-3 and grad.learning_rate.object_phase is None
    assert lbfgs == rec.stage[3] and backoff.scaled_stage(rec.stage[0], 1.0) is rec.stage[0]


def test_verdict():
    assert backoff.verdict(float("nan"), 1.0, 1.0, 1e3) == "NaN/inf"
    assert backoff.verdict(2e3, 1.0, None, 1e3).startswith("divergence")
    assert backoff.verdict(2.5, 10.0, 1.0, 1e3).startswith("rising") and not backoff.fatal("rising loss")
    assert backoff.verdict(1.5, 10.0, 1.0, 1e3) is None and backoff.verdict(5.0, None, None, 1e3) is None
