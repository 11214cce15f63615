"""The lbfgs engine: two-loop recursion, strong-Wolfe line search, recovery, exact resume.

Oracles: on a quadratic ½xᵀAx the recursion with n independent exact pairs returns the
Newton direction -A⁻¹g (to 1e-10); the accepted line-search step satisfies both strong
Wolfe inequalities; on ``simulate --preset demo`` data the phase correlation with the
truth is ≥ 0.95 and the final loss (recomputed for both results by one shared function)
is below full-batch Adam's after the same number of full f+∇f evaluations; an
interrupted and resumed run equals the uninterrupted one.
"""

import math
import signal

import numpy as np
import pytest
import zarr

from ptycli.engines import lbfgs, variables
from ptycli.engines.noise import objective
from ptycli.errors import Interrupted
from ptycli.physics.model import ForwardModel
from ptycli.stages import init, reconstruct, simulate
from ptycli.stages.compare import compare_stores
from ptycli.store.state import load_state
from _helpers import SignalAtBatch


def test_two_loop_with_exact_pairs_gives_the_newton_direction():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 3))
    A = q @ q.T + 3 * np.eye(3)
    mem = lbfgs.Memory(("v",))
    # A-conjugate steps (what exact line searches on a quadratic produce): all secant
    # conditions then hold at once and H = A⁻¹ after n pairs
    _, vecs = np.linalg.eigh(A)
    for i in range(3):
        s = (1.0 + i) * vecs[:, i]
        mem.push({"v": s}, {"v": A @ s}, m=3)
    g = rng.standard_normal(3)
    np.testing.assert_allclose(mem.direction({"v": g})["v"], -np.linalg.solve(A, g), rtol=1e-10)


def test_memory_zero_is_barzilai_borwein_gradient_descent():
    mem = lbfgs.Memory(("v",))
    s, y = np.array([1.0, 2.0]), np.array([2.0, 5.0])
    mem.push({"v": s}, {"v": y}, m=0)
    assert not mem.pairs
    g = np.array([0.3, -0.7])
    np.testing.assert_allclose(mem.direction({"v": g})["v"], -(s @ y) / (y @ y) * g, rtol=1e-14)


def test_pairs_without_positive_curvature_are_skipped():
    mem = lbfgs.Memory(("v",))
    mem.push({"v": np.array([1.0, 0.0])}, {"v": np.array([-1.0, 0.0])}, m=5)
    assert not mem.pairs and mem.gamma is None


@pytest.mark.parametrize("alpha1", [1e-3, 1.0, 40.0])
def test_strong_wolfe_step_satisfies_both_conditions(alpha1):
    f = lambda a: (a - 3.0) ** 2 + 0.1 * a**4 if a < 10 else math.inf  # inf: a rejected trial
    df = lambda a: 2 * (a - 3.0) + 0.4 * a**3
    phi = lambda a: lbfgs.Trial(a, f(a), df(a) if math.isfinite(f(a)) else math.nan)
    c1, c2 = 1e-4, 0.9
    t, n, ok = lbfgs.strong_wolfe(phi, f(0.0), df(0.0), alpha1, c1=c1, c2=c2, max_evals=20)
    assert ok and n <= 20
    assert t.f <= f(0.0) + c1 * t.alpha * df(0.0)
    assert abs(t.d) <= c2 * abs(df(0.0))


def test_line_search_gives_up_within_its_evaluation_cap():
    phi = lambda a: lbfgs.Trial(a, math.nan, math.nan)  # every trial rejected (e.g. Poisson I + ε ≤ 0)
    t, n, ok = lbfgs.strong_wolfe(phi, 1.0, -1.0, 1.0, c1=1e-4, c2=0.9, max_evals=7)
    assert t is None and n == 7 and not ok


# ----------------------------------------------------------------------------- on simulated data
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("lbfgs")
    simulate.run(root / "d.zarr", preset="demo", scan_shape=(10, 10))
    init.run(root / "d.zarr", root / "s.zarr")
    return root


def final_loss(out, data):
    """Amplitude loss per position of a state store on its data (one shared oracle)."""
    st = load_state(zarr.open_group(str(out), mode="r"))
    patterns = np.fft.ifftshift(zarr.open_group(str(data), mode="r")["patterns"][...], axes=(-2, -1))
    model = ForwardModel(st.window, st.dx_a, st.energy_kev * 1e3)
    loss, _ = model.loss_and_grads(st.probe, st.object, st.positions, objective(patterns), want=())
    return float(loss.sum()) / len(st.positions)


def test_lbfgs_recovers_demo_and_beats_gradient_per_evaluation(demo, monkeypatch):
    count = {"n": 0.0}
    evaluate = variables.Evaluator.evaluate

    def counting(self, state, x, idx, *args, **kw):
        count["n"] += len(idx) / len(state.positions)
        return evaluate(self, state, x, idx, *args, **kw)

    monkeypatch.setattr(variables.Evaluator, "evaluate", counting)
    out = demo / "lbfgs.zarr"
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", out, recipe="lbfgs", overrides=["stage.0.iterations=25"],
                    device="cpu")
    n_evals = round(count["n"])
    corr = compare_stores(out, demo / "d.zarr")["correlation"]
    # full-batch Adam: one f+∇f over all positions per iteration, the same count
    adam = demo / "adam.zarr"
    reconstruct.run(demo / "d.zarr", demo / "s.zarr", adam, recipe="gradient", device="cpu",
                    overrides=[f"stage.0.iterations={n_evals}", "stage.0.grouping.size=100000",
                               f"stage.0.learning_rate.object={{schedule = \"cosine\", start = 3e-2, end = 3e-3, iterations = {n_evals}}}"])
    l_lbfgs, l_adam = final_loss(out, demo / "d.zarr"), final_loss(adam, demo / "d.zarr")
    print(f"evaluations {n_evals}: lbfgs loss {l_lbfgs:.4g} (corr {corr:.4f}), full-batch adam {l_adam:.4g}")
    assert corr >= 0.95
    assert 25 <= n_evals <= 40
    assert l_lbfgs < l_adam



def test_interrupted_lbfgs_resumes_to_the_uninterrupted_result(demo):
    kw = {"recipe": "lbfgs", "device": "cpu",
          "overrides": ["stage.0.iterations=8", "stage.0.refine.beam_current=3", "stage.0.history=4"]}
    full = reconstruct.run(demo / "d.zarr", demo / "s.zarr", demo / "full.zarr", **kw)
    out = demo / "cut.zarr"
    with pytest.raises(Interrupted):
        reconstruct.run(demo / "d.zarr", demo / "s.zarr", out, observers=[SignalAtBatch(5, signal.SIGTERM)], **kw)
    assert not out.exists()
    ckpt = zarr.open_group(str(demo / "cut.zarr.partial" / "checkpoint" / "engine"), mode="r")
    assert any(name.startswith("mem__") for name, _ in ckpt.arrays())  # history is in the checkpoint
    resumed = reconstruct.run(demo / "d.zarr", demo / "s.zarr", out, resume=True, **kw)
    assert resumed["iterations"] == full["iterations"] == 8
    a, b = (zarr.open_group(str(p), mode="r") for p in (out, demo / "full.zarr"))
    np.testing.assert_array_equal(a["object"][...], b["object"][...])
    np.testing.assert_array_equal(a["beam_current"][...], b["beam_current"][...])
    np.testing.assert_array_equal(a["history/loss"][...], b["history/loss"][...])


def test_memory_is_reset_when_something_else_changed_the_variables(demo):
    from ptycli.engines import common
    from ptycli.recipe import LbfgsStage

    st = load_state(zarr.open_group(str(demo / "s.zarr"), mode="r"))
    patterns = np.fft.ifftshift(zarr.open_group(str(demo / "d.zarr"), mode="r")["patterns"][...], axes=(-2, -1))
    st.probe, st.object = st.probe.astype(np.complex64), st.object.astype(np.complex64)
    params = LbfgsStage(type="lbfgs", refine={"object": True, "probe": True})
    engine = lbfgs.LbfgsEngine(params, common.make_context(st, np, "single", "amplitude", None), st)
    idx = np.arange(len(st.positions))
    data = patterns.astype(np.float32)
    for it in range(3):
        engine.update(st, idx, data, it)
    mem = next(iter(engine.memory.values()))
    assert len(mem.pairs) == 3  # one curvature pair per accepted step
    engine.update(st, idx, data, 3)
    assert len(next(iter(engine.memory.values())).pairs) == 4  # untouched state: memory kept
    st.probe = st.probe * np.float32(1.01)  # e.g. fix_probe_intensity between iterations
    engine.update(st, idx, data, 4)
    assert len(next(iter(engine.memory.values())).pairs) <= 1  # restarted from this iteration
