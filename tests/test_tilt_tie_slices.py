"""``tie_slices``: every slice replaced by the mean of the slices with its index mod ``period``.

Oracles: the result is the orthogonal projection onto the tied objects, so (1) every slice of
a class equals the class mean computed here by hand, (2) applying it twice changes nothing,
(3) the residual O - P(O) is orthogonal to every tied object (⟨O - P(O), T⟩ = 0), (4) one
slice, or a period of at least the number of slices, is left as it is (the same array), and
(5) the recipe key is validated (period ≥ 1) through the registry.
"""

import numpy as np
import pytest

from ptycli.constraints.base import Context
from ptycli.constraints.registry import validate_constraints
from ptycli.constraints.slices import TieSlicesParams, tie_slices
from ptycli.errors import RecipeError
from ptycli.store.state import State


def _state(n_slices, q=1, seed=0):
    rng = np.random.default_rng(seed)
    obj = (rng.standard_normal((q, n_slices, 12, 10)) + 1j * rng.standard_normal((q, n_slices, 12, 10)))
    probe = np.ones((1, 8, 8), dtype=np.complex64)
    return State(probe=probe, object=obj.astype(np.complex64), positions=np.full((4, 2), 2.0), dx_a=0.2,
                 energy_kev=200.0, slice_thickness=np.full(n_slices, 4.0, dtype=np.float32))


@pytest.mark.parametrize("n_slices, period", [(5, 1), (6, 2), (7, 3)])
def test_each_slice_is_the_mean_of_its_class(n_slices, period):
    state = _state(n_slices, q=2)
    out = tie_slices(state, TieSlicesParams(period=period), Context()).object
    for s in range(n_slices):
        want = state.object[:, s % period::period].mean(axis=1)
        np.testing.assert_allclose(out[:, s], want, rtol=1e-5, atol=1e-6)
    assert out.dtype == state.object.dtype and out.shape == state.object.shape


@pytest.mark.parametrize("period", [1, 2])
def test_projection_is_idempotent_and_orthogonal(period):
    state = _state(6)
    params = TieSlicesParams(period=period)
    once = tie_slices(state, params, Context())
    twice = tie_slices(once, params, Context())
    np.testing.assert_allclose(twice.object, once.object, rtol=1e-6, atol=1e-7)
    # any tied object T: the residual of the projection has no component along it
    tied = tie_slices(_state(6, seed=1), params, Context()).object.astype(np.complex128)
    residual = state.object.astype(np.complex128) - once.object
    assert abs(np.vdot(tied, residual)) <= 1e-5 * np.linalg.norm(tied) * np.linalg.norm(residual)


@pytest.mark.parametrize("n_slices, period", [(1, 1), (3, 3), (2, 4)])
def test_no_op_when_nothing_is_tied(n_slices, period):
    state = _state(n_slices)
    assert tie_slices(state, TieSlicesParams(period=period), Context()) is state


def test_recipe_validation():
    [(spec, params)] = validate_constraints([{"type": "tie_slices", "period": 2}])
    assert spec.name == "tie_slices" and params.period == 2 and spec.modifies == ("object",)
    with pytest.raises(RecipeError, match="period"):
        validate_constraints([{"type": "tie_slices", "period": 0}], "stage.0.constraints")
