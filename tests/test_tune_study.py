"""`ptycli tune` end to end: finds a wrong starting defocus; workers share one study."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from _helpers import demo_stores

from ptycli.stages import tune

TRUE_DEFOCUS_A = 80.0  # the demo preset's Δf
RECIPE = """
recipe = "ptycli/1"
[[stage]]
type = "lsqml"
iterations = 4
grouping = {kind = "sparse", size = 16}
"""
SPACE = """
[study]
trials = 30
[param.defocus_a]
low = 0.0
high = 200.0
"""


@pytest.fixture(scope="module")
def wrong_focus(tmp_path_factory):
    # initial defocus 50 Å off: the search must find 80 Å
    return demo_stores(tmp_path_factory.mktemp("tune"), {"r.toml": RECIPE, "space.toml": SPACE},
                       init_kwargs={"defocus_a": 30.0}, scan_shape=(8, 8))


def test_finds_defocus_within_10_percent_in_30_trials(wrong_focus, cli):
    root, data, state = wrong_focus
    res = cli("tune", data, state, "--recipe", root / "r.toml", "--space", root / "space.toml",
              "-o", root / "T", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["trials"] == 30 and doc["objective"].startswith("truth")
    found = doc["best"]["params"]["defocus_a"]
    assert abs(found - TRUE_DEFOCUS_A) <= 0.1 * TRUE_DEFOCUS_A, found
    out = root / "T"
    for name in ("best-recipe.toml", "trials.csv", "history.png", "importance.png", "study.db"):
        assert (out / name).is_file(), name
    assert f"--defocus-a {found:.6g}" in (out / "best-recipe.toml").read_text()
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 31 and lines[0].startswith("number,state,value")
    assert doc["pruned"] > 0  # Hyperband stopped poor trials on their validation loss
    assert "trials" in res.stderr  # the printed table goes to stderr
    # Re-running continues the study to the new total, with new points (not the seed's first ones).
    more = tune.run(data, state, out, recipe=root / "r.toml", space=root / "space.toml", device="cpu", trials=32)
    assert more["trials"] == 32 and more["ran_here"] == 2
    old = {r["param:defocus_a"] for r in doc["table"]}
    assert all(r["param:defocus_a"] not in old for r in more["table"][30:])


def test_validation_objective_prefers_the_true_defocus(wrong_focus):
    """Without truth, the held-out loss alone ranks the true defocus above wrong ones."""
    from ptycli.stages import tune_trial

    root, data, state = wrong_focus
    plan = tune._plan(data, state, root / "V", tune.parse_toml(RECIPE, "r"),
                      tune.tune_space.Study(objective="validation"),
                      tune.tune_space.Space(param={"defocus_a": {"low": 0.0, "high": 1.0}}), 0, "cpu", "single")
    assert plan.objective == "validation"
    values = {}
    for i, focus in enumerate((30.0, 80.0, 130.0)):
        trial = optuna.trial.FixedTrial({"defocus_a": focus}, number=i)
        values[focus] = tune_trial.run_trial(plan, trial, {"defocus_a": focus})
        assert trial.user_attrs["validation_loss"] == values[focus]
    assert values[80.0] < 0.5 * min(values[30.0], values[130.0])


def _worker(root, data, state, out, storage):
    args = [sys.executable, "-m", "ptycli", "tune", str(data), str(state), "--recipe", str(root / "r.toml"),
            "--space", str(root / "space.toml"), "-o", str(out), "--device", "cpu", "--trials", "10",
            "--worker", "--json"] + (["--storage", storage] if storage else [])
    env = {**os.environ, "PTYCLI_FFT": "scipy", "NO_COLOR": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study(wrong_focus, kind):
    root, data, state = wrong_focus
    out = root / f"W-{kind}"
    storage = str(root / f"{kind}.log") if kind == "journal" else None
    procs = [_worker(root, data, state, out, storage) for _ in range(2)]
    docs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        docs.append(json.loads(stdout))
    assert sum(d["ran_here"] for d in docs) == 10  # no trial lost, none run twice
    assert all(d["ran_here"] >= 1 for d in docs)  # both workers took part
    store = tune.make_storage(storage, out)
    trials = optuna.load_study(study_name="ptycli-tune", storage=store).get_trials()
    assert sorted(t.number for t in trials) == list(range(10))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{i:04d}" for i in range(10)]
    # The sampler saw every worker's results: parameters are not duplicated by equal seeds.
    values = [t.params["defocus_a"] for t in trials]
    assert len(set(np.round(values, 9))) == 10, values


def test_a_signal_stops_the_trial_marks_it_failed_and_ends_resumable(wrong_focus, tmp_path, monkeypatch):
    """SIGTERM/SIGUSR1 (a SLURM time limit) reach the running trial through reconstruct's own
    stop at the end of a group: the trial is told FAIL (a --worker study kept it RUNNING and
    counted it forever), the reports are written, and tune ends with 75; a re-run continues."""
    import signal

    from ptycli.errors import ExitCode, Interrupted
    from ptycli.stages import reconstruct

    root, data, state = wrong_focus
    space = tmp_path / "space.toml"
    space.write_text("[study]\ntrials = 2\n[param.defocus_a]\nlow = 60.0\nhigh = 100.0\n")
    real_run = reconstruct.run

    def run_with_signal(*a, **kw):
        class SignalAt:  # what tune's SIGTERM handler does: set the stop flag it gave the trial
            def on_batch_end(self, *_a):
                kw["stop_flag"].set(signal.SIGTERM)

        return real_run(*a, **{**kw, "observers": [*kw["observers"], SignalAt()]})

    out = tmp_path / "study"
    monkeypatch.setattr(reconstruct, "run", run_with_signal)  # tune_trial imports the module
    with pytest.raises(Interrupted) as exc:
        tune.run(data, state, space=space, recipe=root / "r.toml", out=out, iterations=3)
    assert exc.value.exit_code == ExitCode.INTERRUPTED and "continue the study" in str(exc.value)
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 2 and "fail" in rows[1]  # the one trial it ran: failed, not running
    assert not any((out / "trials").rglob("*.partial"))
    monkeypatch.setattr(reconstruct, "run", real_run)
    summary = tune.run(data, state, space=space, recipe=root / "r.toml", out=out, iterations=3)
    assert summary["complete"] == 1 and summary["fail"] == 1 and summary["running"] == 0
