"""Registry, recipe validation, schedules and the apply-all helper."""

import numpy as np
import pytest

from ptycli.constraints.base import Context
from ptycli.constraints.registry import (
    CONSTRAINTS, REGULARISERS, apply_constraints, ordered, parse_apply, validate_constraints,
)
from ptycli.constraints.schedule import ScheduleValue, When, value_at
from ptycli.errors import RecipeError
from ptycli.store.state import State




def test_every_spec_has_forbid_params_and_when():
    for spec in [*CONSTRAINTS.values(), *REGULARISERS.values()]:
        assert spec.params.model_config["extra"] == "forbid"
        assert "when" in spec.params.model_fields


def test_validate_names_key_path_of_every_problem():
    with pytest.raises(RecipeError) as exc:
        validate_constraints([
            {"type": "kz_filter", "beta": 1.0, "when": {"after": 1, "every": 1}},
            {"type": "kz_filter", "beta": -1},
            {"type": "nope"},
            {"type": "phase_positivity", "relx": 0.1},
        ], "stage.0.constraints")
    msg = str(exc.value)
    assert "stage.0.constraints.1.beta:" in msg
    assert "stage.0.constraints.2.type: unknown constraint 'nope'" in msg
    assert "stage.0.constraints.3.relx:" in msg
    assert "constraints.0" not in msg


def test_validate_returns_params_with_schedule():
    (spec, params), = validate_constraints([{"type": "kz_filter", "beta": 0.5, "when": {"after": 2, "every": 3}}])
    assert spec.name == "kz_filter" and params.beta == 0.5
    assert [i for i in range(12) if params.when.active(i)] == [2, 5, 8, 11]


def test_when_before_is_exclusive():
    assert [i for i in range(6) if When(after=1, before=4).active(i)] == [1, 2, 3]


@pytest.mark.parametrize("sched,expected", [
    ({"schedule": "constant", "start": 2.0}, [2.0, 2.0, 2.0]),
    ({"schedule": "linear", "start": 1.0, "end": 0.0, "iterations": 10}, [1.0, 0.5, 0.0]),
    ({"schedule": "cosine", "start": 1e-2, "end": 1e-4, "iterations": 10}, [1e-2, 0.00505, 1e-4]),
    ({"schedule": "exponential", "start": 1.0, "end": 0.01, "iterations": 10}, [1.0, 0.1, 0.01]),
    ({"schedule": "piecewise", "points": [[0, 1.0], [10, 3.0]]}, [1.0, 2.0, 3.0]),
])
def test_schedule_values(sched, expected):
    s = ScheduleValue.model_validate(sched)
    assert [s.at(i) for i in (0, 5, 20)] == pytest.approx(expected)
    assert value_at(0.3, 7) == 0.3


def test_parse_apply():
    assert parse_apply("kz_filter:beta=0.5,part=phase,when.after=3") == {
        "type": "kz_filter", "beta": 0.5, "part": "phase", "when": {"after": 3}}
    assert parse_apply("orthogonalize_probe") == {"type": "orthogonalize_probe"}
    with pytest.raises(RecipeError, match="key=value"):
        parse_apply("kz_filter:beta")


def test_apply_constraints_reports_changed_fields_and_respects_when():
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(2, 8, 8)) + 0j
    obj = np.exp(1j * rng.normal(size=(1, 1, 16, 16)))
    st = State(probe=probe, object=obj, positions=np.zeros((1, 2)), dx_a=0.2, energy_kev=300.0)
    pairs = ordered(validate_constraints([
        {"type": "phase_positivity", "when": {"after": 2}},
        {"type": "orthogonalize_probe"},
    ]))
    assert [s.name for s, _ in pairs] == ["orthogonalize_probe", "phase_positivity"]
    out, changed = apply_constraints(st, pairs, Context(iteration=0))
    assert changed == ["probe"] and out.object is st.object
    out, changed = apply_constraints(st, pairs, Context(iteration=2))
    assert changed == ["probe", "object"] and np.angle(out.object).min() >= 0
    out, changed = apply_constraints(st, pairs, Context(iteration=0), force=True)
    assert changed == ["probe", "object"]


def test_constraints_keep_single_precision():
    rng = np.random.default_rng(1)
    probe = (rng.normal(size=(2, 16, 16)) + 1j).astype(np.complex64)
    obj = np.exp(1j * 0.1 * rng.normal(size=(1, 3, 32, 32))).astype(np.complex64)
    pos = np.array([[15.0, 15.0], [16.5, 17.0]])
    st = State(probe=probe, object=obj, positions=pos, positions_initial=pos.copy(), dx_a=0.2, energy_kev=300.0,
               slice_thickness=np.full(3, 5.0, np.float32), tilts=np.zeros((2, 2), np.float32), semiangle_mrad=20.0)
    ctx = Context.from_state(st, counts_per_frame=100.0)
    extra = {"object_lowpass": {"resolution_a": 1.0}, "position_max_update": {"max_distance_a": 1.0},
             "probe_window": {"z_steps": 5, "z_range_a": 50.0}}
    for name, spec in CONSTRAINTS.items():
        (s, params), = validate_constraints([{"type": name, **extra.get(name, {})}])
        out = s.apply(st, params, ctx)
        for field in ("probe", "object", "tilts"):
            assert getattr(out, field).dtype == getattr(st, field).dtype, (name, field)
