"""Refinement from realistic starts on the abTEM corpus (issue 22, Build item 5).

    python benchmarks/corpus/refine.py                 # every case (cached runs are reused)
    python benchmarks/corpus/refine.py --only A1 --only P1 [--force]
    python benchmarks/corpus/refine.py --report        # rewrite the report from the recorded runs
    ~/.cache/ptycli/venvs/corpus/bin/python benchmarks/corpus/refine.py --simulate srtio3_tilt10

Item 5: "position refinement never makes positions worse and recovers them with a 25 %
defocus error; a global tilt of ±10 mrad is found from scratch on the thick sets; slice
thickness to ±5 %; defocus, C12 and C30 from a wrong start." Each case starts from what a
microscopist would give `ptycli init` (the set's meta.json, or a start made wrong on
purpose) and compares the refined values with the set's truth.npz, never with ptycli's own
forward model. Sets come from ~/.cache/ptycli/corpus (make.py) and the preprocessed data
stores from ~/.cache/ptycli/corpus_runs/<set>/data.zarr (run.py); the extra tilted set
(`--simulate NAME`, abTEM, in the corpus venv: srtio3_tilt10, batio3_tilted) and every run go to
~/.cache/ptycli/refine_runs/. Every ptycli process runs under `nice -n 10` with 2 threads.
Writes benchmarks/RESULTS_refinement.md and .json.

Conventions (docs/conventions.md): abTEM defocus > 0 is underfocus and C10 = -defocus; φ12
is the lobe azimuth atan2(ky, kx) in both codes (the arrays are already transposed); truth
positions are (y, x) Å in the simulation frame, ptycli's (y, x) object pixels: they are
compared in Å after removing the mean offset (a global shift is degenerate with the object).
abTEM's probe `tilt=(x, y)` is written to the truth as `tilt_mrad_yx`; ptycli's `tilts` are
(y, x) mrad per position and the global tilt is their mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOME_CACHE = Path.home() / ".cache" / "ptycli"
CORPUS = Path(os.environ.get("PTYCLI_CORPUS", HOME_CACHE / "corpus"))
CORPUS_RUNS = HOME_CACHE / "corpus_runs"
WORK = HOME_CACHE / "refine_runs"
EXTRA_CORPUS = WORK / "corpus"            # sets simulated here (the ±10 mrad tilt)
RESULTS = REPO / "benchmarks" / "RESULTS_refinement"
THREADS = 2
NICE = 10
TIMEOUT_S = 900

# Item 5's bars as this script reads them (the issue gives no numbers for some):
POS_NEVER_WORSE_A = 0.0       # after <= before + this (Å rms, shift removed)
POS_RECOVERED_FRACTION = 0.5  # "recovers": at least half of the start's rms error removed
TILT_TOL_MRAD = 1.0           # per axis, or 10 % of |truth| where larger
TILT_TOL_FRACTION = 0.10
THICKNESS_TOL = 0.05          # ±5 % (the issue's)
DEFOCUS_TOL = 0.05            # |ΔC10| <= 5 % of the truth
C12_TOL = 0.20                # |ΔC12| <= 20 % and φ12 within 10°
PHI12_TOL_DEG = 10.0
C30_TOL = 0.20                # |ΔC30| <= 20 %

# the mos2_wrongprior start made wrong in its positions too (like srtio3_nonideal's scan errors)
PERTURB = {"noise_a": 0.05, "drift_a": (0.3, -0.2), "affine": (1.02, 0.015, -0.01, 0.985), "seed": 21}


# ------------------------------------------------------------------ pure helpers (tested)
def angle_error(found: float, truth: float, m: int) -> float:
    """found - truth for an m-fold azimuth [rad], wrapped into [-π/m, π/m) (φ and φ + 2π/m
    are the same aberration)."""
    period = 2 * math.pi / m
    return (found - truth + period / 2) % period - period / 2


def rms_shift_removed_a(est_a: np.ndarray, truth_a: np.ndarray) -> float:
    """RMS position error [Å] after removing the mean offset (ptycli's own rms_error)."""
    from ptycli.engines.positions import rms_error
    return rms_error(np.asarray(est_a, np.float64), np.asarray(truth_a, np.float64))


def raster_a(scan: tuple[int, int], step_a: float) -> np.ndarray:
    """Nominal raster (J, 2) (y, x) Å, row-major (j = iy·nx + ix)."""
    iy, ix = np.meshgrid(np.arange(scan[0]), np.arange(scan[1]), indexing="ij")
    return np.stack([iy.ravel(), ix.ravel()], 1).astype(np.float64) * step_a


def perturbed_positions(nominal_a: np.ndarray, noise_a: float, drift_a: tuple[float, float],
                        affine: tuple[float, float, float, float], seed: int) -> np.ndarray:
    """nominal with make.py's kind of scan errors: an affine map about the scan centre, a
    drift linear in time and Gaussian noise (std per axis)."""
    rng = np.random.default_rng(seed)
    nominal_a = np.asarray(nominal_a, np.float64)
    centre = nominal_a.mean(0)
    out = (nominal_a - centre) @ np.asarray(affine, np.float64).reshape(2, 2).T + centre
    t = np.arange(len(out)) / max(len(out) - 1, 1)
    return out + t[:, None] * np.asarray(drift_a)[None] + rng.normal(0, noise_a, out.shape)


def rms_affine_removed_a(est_a: np.ndarray, truth_a: np.ndarray) -> float:
    """RMS [Å] of what is left of est - truth after the best affine map est ≈ A·truth + b:
    the local (random) part of the error, which a global scan distortion does not explain."""
    est_a, truth_a = np.asarray(est_a, np.float64), np.asarray(truth_a, np.float64)
    X = np.column_stack([truth_a, np.ones(len(truth_a))])
    coef, *_ = np.linalg.lstsq(X, est_a, rcond=None)
    r = est_a - X @ coef
    return float(np.sqrt((r**2).sum(1).mean()))


def aberration_rows(found: dict[str, float], start: dict[str, float], truth: dict[str, float]) -> list[dict]:
    """One row per Krivanek term of the truth (polar form; C10 given): truth, start, found,
    error, and the error relative to the truth; angles in degrees, wrapped by symmetry."""
    from ptycli.physics.aberrations import TERMS, angle_key
    rows = []
    for name in sorted((k for k in truth if k in TERMS), key=lambda k: TERMS[k]):
        t, s, f = truth[name], start.get(name, 0.0), found.get(name, 0.0)
        rows.append({"term": name, "truth": t, "start": s, "found": f, "error": f - t,
                     "rel_error": abs(f - t) / abs(t) if t else None})
        m = TERMS[name][1]
        if m:
            key = angle_key(name)
            ta, sa, fa = truth.get(key, 0.0), start.get(key, 0.0), found.get(key, 0.0)
            rows.append({"term": key, "truth": math.degrees(ta), "start": math.degrees(sa) if name in start else None,
                         "found": math.degrees(fa), "error": math.degrees(angle_error(fa, ta, m)), "rel_error": None})
    return rows


def edge_phase_rad(name: str, value_a: float, meta: dict[str, Any]) -> float:
    """|χ| of one Krivanek term at the aperture edge, 2π/λ·C·α^(n+1)/(n+1) [rad]: how much a
    spurious term changes the probe."""
    from ptycli.physics.aberrations import TERMS
    from ptycli.physics.electron import wavelength_a
    n = TERMS[name][0]
    alpha = meta["semiangle_mrad"] * 1e-3
    return abs(2 * math.pi / wavelength_a(meta["energy_kev"] * 1e3) * value_a * alpha ** (n + 1) / (n + 1))


def aberration_pass(rows: list[dict]) -> dict[str, bool]:
    """Item 5's aberration bar per term (C10, C12 with φ12, C30)."""
    by = {r["term"]: r for r in rows}
    out = {}
    if "C10" in by:
        out["C10"] = by["C10"]["rel_error"] <= DEFOCUS_TOL
    if "C12" in by:
        out["C12"] = by["C12"]["rel_error"] <= C12_TOL and abs(by["phi12"]["error"]) <= PHI12_TOL_DEG
    if "C30" in by:
        out["C30"] = by["C30"]["rel_error"] <= C30_TOL
    return out


def global_tilt_mrad(tilts: np.ndarray | None) -> tuple[float, float]:
    """The global tilt (y, x) [mrad]: the mean of the per-position tilts (0 where none)."""
    if tilts is None or np.size(tilts) == 0:
        return (0.0, 0.0)
    t = np.asarray(tilts, np.float64).reshape(-1, 2).mean(0)
    return (float(t[0]), float(t[1]))


def tilt_pass(found: tuple[float, float], truth: tuple[float, float]) -> bool:
    """Each axis within TILT_TOL_MRAD, or TILT_TOL_FRACTION of |truth| where that is larger."""
    tol = max(TILT_TOL_MRAD, TILT_TOL_FRACTION * math.hypot(*truth))
    return all(abs(f - t) <= tol for f, t in zip(found, truth))


def thickness_error(found_dz: np.ndarray, truth_dz: float) -> float:
    """Relative error of the mean refined slice thickness."""
    return float(np.mean(found_dz)) / truth_dz - 1.0


def positions_verdict(before_a: float, after_a: float) -> dict[str, bool]:
    """never worse (after <= before) and recovered (at least POS_RECOVERED_FRACTION of the
    start's error removed; a start without error has nothing to recover: None)."""
    worse = after_a > before_a + POS_NEVER_WORSE_A
    recovered = None if before_a < 1e-6 else after_a <= (1 - POS_RECOVERED_FRACTION) * before_a
    return {"never_worse": not worse, "recovered": recovered}


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(fmt(x, digits) for x in v) + ")"
    return str(v)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ cases
@dataclass
class Case:
    id: str
    item: str                      # aberrations | positions | tilt | thickness
    set: str
    recipe: str
    what: str                      # one line: what the case measures
    overrides: list[str] = field(default_factory=list)
    init_from: str | None = None   # reuse corpus_runs/<set>/<this>/init.zarr
    init_args: list[str] | None = None   # or run init with these (the positions file: "{positions}")
    perturb: bool = False          # start positions from perturbed_positions(PERTURB)
    corpus: str = "main"           # main (CORPUS) or extra (EXTRA_CORPUS)
    recipe_text: str | None = None  # a variant recipe (written to the run folder), named `recipe` in the report


# multislice (recipes/multislice.toml) with positions refined from LSQ-ML iteration 10 and
# only the affine part of the corrections kept (`position_affine`, mode = "project")
_KZ_AND_PROJECT = """
[[stage.constraints]]
type = "kz_filter"
beta = 1.0

[[stage.constraints]]
type = "position_affine"
mode = "project"
"""
MULTISLICE_POSITIONS_PROJECT = f"""recipe = "ptycli/1"
description = "multislice, positions from 10, affine part of the corrections only"

[[stage]]
type = "lsqml"
iterations = 30
grouping = {{kind = "sparse", size = 32}}
refine = {{object = true, probe = 10, positions = 10}}

[[stage.constraints]]
type = "fix_probe_intensity"
{_KZ_AND_PROJECT}
[[stage]]
type = "gradient"
iterations = 10
optimizer = "adam"
grouping = {{kind = "random", size = 16}}
learning_rate = {{object = 1e-3, probe = 1e-3}}
refine = {{object = true, probe = true, positions = true}}
{_KZ_AND_PROJECT}"""


def with_aberration_stage(shipped: str, iterations: int = 40) -> str:
    """A shipped recipe with an L-BFGS stage first that refines the object and the probe's
    C10, C12, C30 (the pixel probe fixed): the stages of the shipped recipe then start
    from a probe that is right (A1), not from the nominal defocus."""
    text = (REPO / "ptycli" / "recipes_data" / f"{shipped}.toml").read_text()
    return (f'recipe = "ptycli/1"\ndescription = "aberrations (C10 C12 C30) first, then {shipped}"\n\n'
            f'[[stage]]\ntype = "lbfgs"\niterations = {iterations}\nhistory = 10\n'
            'refine = {object = true, probe = false, aberrations = 0}\naberration_terms = ["C10", "C12", "C30"]\n\n'
            + text[text.index("[[stage]]"):])


ABERRATION_ONLY = ["stage.0.iterations=40", "stage.0.refine.aberrations=0", "stage.0.refine.probe=false"]

CASES = [
    Case("A1", "aberrations", "mos2_wrongprior", "lbfgs",
         "C10, C12, C30 from the nominal start (defocus 150 Å, no C12/C30): L-BFGS, parametric probe",
         [*ABERRATION_ONLY, 'stage.0.aberration_terms=["C10","C12","C30"]'], init_from="ptycli-single-slice"),
    Case("A2", "aberrations", "mos2_wrongprior", "lbfgs",
         "as A1 with the default aberration_terms (C10 C12 C21 C23 C30): C21/C23 must stay near 0",
         ABERRATION_ONLY, init_from="ptycli-single-slice"),
    Case("P1", "positions", "srtio3_nonideal", "multislice",
         "shipped multislice plus position refinement (LSQ-ML from iteration 10, then Adam)",
         ["stage.0.refine.positions=10", "stage.1.refine.positions=true"], init_from="ptycli-multislice"),
    Case("P1p", "positions", "srtio3_nonideal", "multislice+project",
         "as P1 with position_affine mode = project (only the affine part of the corrections kept)",
         [], init_from="ptycli-multislice", recipe_text=MULTISLICE_POSITIONS_PROJECT),
    Case("P2", "positions", "srtio3_nonideal", "auto",
         "shipped auto as is (does it refine positions?)", [], init_from="ptycli-multislice"),
    Case("P3", "positions", "mos2_wrongprior", "single-slice",
         "shipped single-slice, defocus 25 % off, exact start positions", [], init_from="ptycli-single-slice"),
    Case("P3t", "positions", "mos2_wrongprior", "single-slice",
         "control for P3: exact start positions and the true probe (defocus 200 Å, C12, C30)",
         [], init_args=["--defocus-a", "200", "--aberration", "C12=40@30deg", "--aberration", "C30=2e5"]),
    Case("P3a", "positions", "mos2_wrongprior", "aberrations+single-slice",
         "P3's start (exact positions, defocus 150 Å) with the aberration stage first (as P6)",
         [], init_from="ptycli-single-slice", recipe_text=with_aberration_stage("single-slice")),
    Case("P4", "positions", "mos2_wrongprior", "single-slice",
         "shipped single-slice, defocus 25 % off, start positions with srtio3_nonideal-like errors",
         [], init_args=["--defocus-a", "150", "--positions", "{positions}"], perturb=True),
    Case("P5", "positions", "mos2_wrongprior", "single-slice",
         "control for P4: the same perturbed start positions with the true probe (defocus 200 Å, C12, C30)",
         [], init_args=["--defocus-a", "200", "--aberration", "C12=40@30deg", "--aberration", "C30=2e5",
                        "--positions", "{positions}"], perturb=True),
    Case("P5d", "positions", "mos2_wrongprior", "single-slice",
         "the same perturbed start with the true defocus 200 Å alone (C12, C30 not told)",
         [], init_args=["--defocus-a", "200", "--positions", "{positions}"], perturb=True),
    Case("P4L", "positions", "mos2_wrongprior", "single-slice",
         "P4 with 3x the iterations (LSQ-ML 90, Adam 30): is it only short?",
         ["stage.0.iterations=90", "stage.1.iterations=30"],
         init_args=["--defocus-a", "150", "--positions", "{positions}"], perturb=True),
    Case("P6", "positions", "mos2_wrongprior", "aberrations+single-slice",
         "P4's start with an aberration stage first (C10 C12 C30, as A1), then shipped single-slice",
         [], init_args=["--defocus-a", "150", "--positions", "{positions}"], perturb=True,
         recipe_text=with_aberration_stage("single-slice")),
    Case("T1", "tilt", "srtio3_tilted", "tilted-multislice",
         "global tilt (3, -2) mrad from scratch, Δz at its truth", [], init_from="ptycli-multislice"),
    Case("T2", "tilt", "srtio3_tilt10", "tilted-multislice",
         "global tilt (10, -10) mrad from scratch (simulated here, srtio3_tilted otherwise)",
         [], init_args=["--slices", "10", "--slice-thickness-a", "3.9050"], corpus="extra"),
    Case("T3", "tilt", "batio3_tilted", "tilted-multislice",
         "global tilt (-10, 10) mrad from scratch on 152 Å BaTiO3 (simulated here, 2 phonons)",
         [], init_args=["--defocus-a", "75", "--slices", "19", "--slice-thickness-a", "8.0000"], corpus="extra"),
    Case("Z1", "thickness", "srtio3_tilted", "tilted-multislice", "Δz from a start 20 % too thick (4.686 Å)",
         [], init_args=["--slices", "10", "--slice-thickness-a", "4.6860"]),
    Case("Z1L", "thickness", "srtio3_tilted", "tilted-multislice",
         "Z1 with the L-BFGS stage 2x as long (120 iterations): is Δz only slow?",
         ["stage.1.iterations=120"], init_args=["--slices", "10", "--slice-thickness-a", "4.6860"]),
    Case("Z3", "thickness", "batio3_tilted", "tilted-multislice",
         "Δz from a start 20 % too thick (9.6 Å for 8.0) on 152 Å BaTiO3 (tilted (-10, 10) mrad)",
         [], init_args=["--defocus-a", "75", "--slices", "19", "--slice-thickness-a", "9.6000"], corpus="extra"),
    Case("Z2", "thickness", "srtio3_tilted", "tilted-multislice", "Δz from a start 20 % too thin (3.124 Å)",
         [], init_args=["--slices", "10", "--slice-thickness-a", "3.1240"]),
]
# The tilt and thickness cases with the slices tied in the LSQ-ML stage: `tilted-multislice` as
# commit 0808560 shipped it (tilt_from_slices then tie_slices every 5 of 50 LSQ-ML iterations,
# then 30 free L-BFGS iterations; reverted in c19c584, the abTEM sets did not gain).
TILTED_MULTISLICE_TIED = """recipe = "ptycli/1"
description = "multislice with global tilt (tied slices), per-position tilt and thickness refinement (LSQ-ML then L-BFGS)"

[[stage]]
type = "lsqml"
iterations = 50
grouping = {kind = "sparse", size = 32}
refine = {object = true, probe = 2}

[[stage.constraints]]
type = "fix_probe_intensity"

[[stage.constraints]]
type = "tilt_from_slices"
when = {after = 4, every = 5}

[[stage.constraints]]
type = "tie_slices"
period = 1
when = {after = 4, every = 5}

[[stage]]
type = "lbfgs"
iterations = 30
history = 10
refine = {object = true, probe = true, tilts = 0, thickness = 0}
scale = {thickness = 5.0}

[[stage.constraints]]
type = "tilt_from_slices"
when = {after = 9, every = 10}

[[stage.regularisers]]
type = "tilt_acceleration"
weight = 1.0
axes = "both"
"""
TIED_FROM = "T1 T2 T3 Z1 Z2 Z3".split()
CASES += [replace(c, id=c.id + "t", recipe="tilted-multislice+tie", recipe_text=TILTED_MULTISLICE_TIED,
                  what=f"as {c.id}, slices tied while the tilt is found") for c in CASES if c.id in TIED_FROM]


def set_dir(case: Case) -> Path:
    return (EXTRA_CORPUS if case.corpus == "extra" else CORPUS) / case.set


def corpus_run():
    """benchmarks/corpus/run.py (its timing, thread and commit helpers); imported late, as
    --simulate runs in the corpus venv, which has no ptycli."""
    sys.path.insert(0, str(HERE))
    import run
    return run


def timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """run.py's timed() (exit code, wall and CPU seconds, load averages) under nice, THREADS threads."""
    run = corpus_run()
    r = run.timed(["nice", "-n", str(NICE), *cmd], run.thread_env(THREADS), log, TIMEOUT_S)
    return dict(r, load_end=r["load_avg"])


def data_store(case: Case, log: Path) -> Path:
    """The preprocessed data: run.py's store, or preprocess an extra set here."""
    if case.corpus == "main":
        return CORPUS_RUNS / case.set / "data.zarr"
    out = WORK / case.set / "data.zarr"
    if not out.exists():
        meta = json.loads((set_dir(case) / "meta.json").read_text())
        r = timed([corpus_run().ptycli_bin(), "preprocess", str(set_dir(case) / "data.npy"), "-o", str(out),
                   *meta["ptycli_preprocess_args"]], log)
        if r["rc"]:
            raise SystemExit(f"refine.py: preprocess of {case.set} failed (exit {r['rc']}); see {log}")
    return out


def run_case(case: Case, force: bool) -> dict[str, Any]:
    run = WORK / case.id
    rec_f = run / "run.json"
    if rec_f.exists() and not force:
        return json.loads(rec_f.read_text())
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    log.write_text("")
    data = data_store(case, log)
    meta = json.loads((set_dir(case) / "meta.json").read_text())
    rec: dict[str, Any] = {"case": asdict(case), "commit": corpus_run().git_commit(), "machine": platform.node(),
                           "threads": THREADS, "nice": NICE}
    state = state_of(case)
    if case.init_from:
        rec["init"] = f"corpus_runs/{case.set}/{case.init_from}/init.zarr (run.py: init {' '.join(meta['ptycli_init_args'])})"
    else:
        args = list(case.init_args or [])
        if case.perturb:
            start = perturbed_positions(raster_a(tuple(meta["scan_shape"]), meta["scan_step_a"]), **{
                k: v for k, v in PERTURB.items() if k != "seed"}, seed=PERTURB["seed"])
            np.save(run / "start_positions.npy", start)
            args = [str(run / "start_positions.npy") if a == "{positions}" else a for a in args]
        r = timed([corpus_run().ptycli_bin(), "init", str(data), "-o", str(state), "--overwrite", *args], log)
        if r["rc"]:
            raise SystemExit(f"refine.py: init for {case.id} failed (exit {r['rc']}); see {log}")
        rec["init"] = "ptycli init " + " ".join(case.init_args or [])
    out = run / "recon.zarr"
    rec["state"] = str(state)
    recipe = case.recipe
    if case.recipe_text:
        recipe = str(run / "recipe.toml")
        (run / "recipe.toml").write_text(case.recipe_text)
        rec["recipe_text"] = case.recipe_text
    cmd = [corpus_run().ptycli_bin(), "reconstruct", str(data), str(state), "--recipe", recipe, "--progress", "lines",
           "--overwrite", "-o", str(out)]
    for o in case.overrides:
        cmd += ["--set", o]
    r = timed(cmd, log)
    rec.update(r, command="ptycli reconstruct data.zarr init.zarr --recipe " + case.recipe
               + "".join(f" --set '{o}'" for o in case.overrides))
    if r["rc"] == 0:
        rec["result"] = measure(case, out, state)
    rec_f.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def state_of(case: Case) -> Path:
    """The starting state store of a case."""
    return CORPUS_RUNS / case.set / case.init_from / "init.zarr" if case.init_from else WORK / case.id / "init.zarr"


def read_state(store: Path) -> dict[str, Any]:
    import zarr
    g = zarr.open_group(str(store), mode="r")
    st = g.attrs["state"]
    arr = {k: np.asarray(g[k]) for k in ("positions", "positions_initial", "slice_thickness", "tilts") if k in g}
    return {"dx_a": float(st["dx_a"]), "aberrations": dict(st.get("aberrations") or {}), **arr}


def truth_of(case: Case) -> tuple[dict[str, Any], np.ndarray]:
    t = np.load(set_dir(case) / "truth.npz")
    return json.loads(str(t["true"])), np.asarray(t["positions_a"])


def measure(case: Case, out: Path, state: Path) -> dict[str, Any]:
    """The case's refined values against the truth (and the start's)."""
    true, truth_pos = truth_of(case)
    meta = json.loads((set_dir(case) / "meta.json").read_text())
    s0, s1 = read_state(state), read_state(out)
    res: dict[str, Any] = {}
    if case.item == "aberrations" or case.set == "mos2_wrongprior":
        truth_ab = {"C10": true["C10_a"], **true.get("aberrations", {})}
        rows = aberration_rows(s1["aberrations"], s0["aberrations"], truth_ab)
        extra = {k: {"value_a": v, "edge_phase_rad": edge_phase_rad(k, v, meta)}
                 for k, v in s1["aberrations"].items() if k not in truth_ab and not k.startswith("phi")}
        res.update(aberrations=rows, aberration_pass=aberration_pass(rows), other_terms=extra)
    before = rms_shift_removed_a(s0["positions"] * s0["dx_a"], truth_pos)
    after = rms_shift_removed_a(s1["positions"] * s1["dx_a"], truth_pos)
    moved = rms_shift_removed_a(s1["positions"] * s1["dx_a"], s0["positions"] * s0["dx_a"])
    res["positions"] = {"before_a": before, "after_a": after, "moved_a": moved, **positions_verdict(before, after),
                        "before_local_a": rms_affine_removed_a(s0["positions"] * s0["dx_a"], truth_pos),
                        "after_local_a": rms_affine_removed_a(s1["positions"] * s1["dx_a"], truth_pos)}
    if case.item in ("tilt", "thickness") and "tilts" in s1:
        found = global_tilt_mrad(s1["tilts"])
        truth_t = tuple(true["tilt_mrad_yx"])
        spread = np.asarray(s1["tilts"], np.float64).reshape(-1, 2).std(0)
        res["tilt"] = {"truth": truth_t, "found": found, "error": tuple(f - t for f, t in zip(found, truth_t)),
                       "spread_std": tuple(float(v) for v in spread), "pass": tilt_pass(found, truth_t)}
    if s1.get("slice_thickness") is not None and len(s1["slice_thickness"]) > 1:
        dz_true = true["thickness_a"] / len(s1["slice_thickness"])
        err = thickness_error(s1["slice_thickness"], dz_true)
        res["thickness"] = {"truth_dz": dz_true, "start_dz": float(np.mean(s0["slice_thickness"])),
                            "found_dz": float(np.mean(s1["slice_thickness"])), "rel_error": err,
                            "pass": abs(err) <= THICKNESS_TOL}
    res["pearson"] = phase_pearson(case, out)
    return res


def phase_pearson(case: Case, out: Path) -> float | None:
    """Correlation of the slice-summed phase with the truth (score.py), for context."""
    sys.path.insert(0, str(HERE))
    import score
    meta = json.loads((set_dir(case) / "meta.json").read_text())
    t = np.load(set_dir(case) / "truth.npz")
    try:
        phase, px, region = score.read_recon(out, None, meta)
        return float(score.score_phase(phase, px, t["phase"], t["pixel_size_a"], region=region)["pearson"])
    except score.ScoreError:  # scoring is context only; the refined values are what this measures
        return None


# ------------------------------------------------------------------ report
FINDINGS = "## Findings"
def report(recs: list[dict[str, Any]]) -> str:
    recs = [dict(r, init=str(r.get("init", "")).replace("{positions}", "start.npy")) for r in recs]
    def done(item):
        return [r for r in recs if r["case"]["item"] == item and "result" in r]

    def cost(r):
        return f"{r['wall_s']:.0f} / {r['cpu_s']:.0f} s, load {r['load_start']:.1f}→{r['load_end']:.1f}"

    out = ["# Refinement from realistic starts on the abTEM corpus (issue 22, item 5)", "",
           "Made by `python benchmarks/corpus/refine.py` (every ptycli process `nice -n 10`, 2 threads, on the",
           "shared 2-core machine; wall / CPU seconds of `ptycli reconstruct` and the 1-min load average at",
           "start→end). Truth from each set's truth.npz (abTEM), never from ptycli's forward model. Bars as read",
           f"here: positions never worse (after ≤ before) and recovered (≥ {POS_RECOVERED_FRACTION:.0%} of the start's rms",
           f"error removed), rms in Å after removing the mean offset; global tilt within {TILT_TOL_MRAD:g} mrad per axis",
           f"(or {TILT_TOL_FRACTION:.0%} of |tilt|); Δz within ±{THICKNESS_TOL:.0%}; C10 within {DEFOCUS_TOL:.0%}, C12 within",
           f"{C12_TOL:.0%} and φ12 within {PHI12_TOL_DEG:g}°, C30 within {C30_TOL:.0%}. Recipes `multislice+project` and",
           "`aberrations+single-slice` are variants that refine.py writes into the run folder (MULTISLICE_POSITIONS_PROJECT,",
           "with_aberration_stage), and so is `tilted-multislice+tie` (TILTED_MULTISLICE_TIED, the cases ending in t); sets `srtio3_tilt10` and `batio3_tilted` are simulated by it (EXTRA_SETS, abTEM).", ""]
    out += ["## Aberrations from a wrong start (mos2_wrongprior)", ""]
    for r in done("aberrations"):
        res = r["result"]
        out += [f"**{r['case']['id']}** {r['case']['what']}. `{r['command']}` from {r['init']}; commit {r['commit']}, "
                f"{cost(r)}; phase correlation {fmt(res.get('pearson'))}.", ""]
        rows = [[a["term"], a["truth"], a["start"], a["found"], a["error"],
                 None if a["rel_error"] is None else f"{a['rel_error']:.1%}",
                 res["aberration_pass"].get(a["term"], res["aberration_pass"].get("C12") if a["term"] == "phi12" else None)]
                for a in res["aberrations"]]
        out += [markdown_table(["term", "truth", "start", "found", "error", "rel. error", "bar"], rows), ""]
        if res.get("other_terms"):
            out += ["Other refined terms (truth 0): " + ", ".join(
                f"{k} = {v['value_a']:.3g} Å ({v['edge_phase_rad']:.2g} rad at the aperture edge)" if isinstance(v, dict)
                else f"{k} = {v:.3g} Å" for k, v in res["other_terms"].items()), ""]
    out += ["## Positions (rms error after removing a global shift, Å)", ""]
    out += [f"`moved`: rms of the refined positions against the start's; `local`: the rms left after the best affine map"
            f" (truth → positions), i.e. the part of the error a scan distortion does not explain. Perturbed starts"
            f" (`start.npy`): the nominal raster with {PERTURB['noise_a']} Å random error, drift {PERTURB['drift_a']} Å"
            f" and affine {PERTURB['affine']} (srtio3_nonideal's, seed {PERTURB['seed']}).", ""]
    rows = []
    for r in done("positions"):
        p = r["result"]["positions"]
        local = f"{p['before_local_a']:.3f} → {p['after_local_a']:.3f}" if "after_local_a" in p else None
        rows.append([r["case"]["id"], r["case"]["set"], r["case"]["recipe"], r["case"]["what"], p["before_a"],
                     p["after_a"], p["moved_a"], local, p["never_worse"], p["recovered"],
                     fmt(r["result"].get("pearson")), r["commit"], cost(r)])
    out += [markdown_table(["case", "set", "recipe", "start", "before", "after", "moved", "local before → after",
                            "never worse", "recovered", "phase corr.", "commit", "wall / CPU, load"], rows), ""]
    out += ["Commands: " + "; ".join(f"{r['case']['id']}: `{r['command']}` ({r['init']})" for r in done("positions")), ""]
    out += ["## Global tilt from scratch (mrad, (y, x))", ""]
    rows = [[r["case"]["id"], r["case"]["set"], r["result"]["tilt"]["truth"], r["result"]["tilt"]["found"],
             r["result"]["tilt"]["error"], r["result"]["tilt"]["spread_std"], r["result"]["tilt"]["pass"],
             fmt(r["result"].get("pearson")), r["commit"], cost(r)]
            for r in done("tilt") + done("thickness") if "tilt" in r["result"]]
    out += [markdown_table(["case", "set", "truth", "found (mean)", "error", "std over positions", "bar",
                            "phase corr.", "commit", "wall / CPU, load"], rows), ""]
    out += ["## Slice thickness (Å)", ""]
    rows = [[r["case"]["id"], r["case"]["set"], r["result"]["thickness"]["truth_dz"], r["result"]["thickness"]["start_dz"],
             r["result"]["thickness"]["found_dz"], f"{r['result']['thickness']['rel_error']:+.1%}",
             r["result"]["thickness"]["pass"], r["commit"], cost(r)]
            for r in done("thickness") + done("tilt") if "thickness" in r["result"]]
    out += [markdown_table(["case", "set", "truth Δz", "start Δz", "found Δz", "error", "bar (±5 %)", "commit",
                            "wall / CPU, load"], rows), ""]
    out += ["Commands: " + "; ".join(f"{r['case']['id']}: `{r['command']}` ({r['init']})"
                                     for r in done("tilt") + done("thickness")), ""]
    failed = [r for r in recs if "result" not in r]
    if failed:
        out += ["## Runs that did not finish", ""] + [f"- {r['case']['id']}: exit {r['rc']} (`{r['command']}`)" for r in failed] + [""]
    out += [kept_findings(RESULTS.with_suffix(".md"))]
    return "\n".join(out)


def kept_findings(md: Path) -> str:
    """The hand-written reading of the tables (from FINDINGS to the end of the current
    report), kept when the tables are rewritten; a placeholder when there is none."""
    text = md.read_text() if md.exists() else ""
    at = text.find(FINDINGS)
    return text[at:].rstrip() + "\n" if at >= 0 else f"{FINDINGS}\n\n(not yet written)\n"


# sets simulated here (abTEM, make.py's machinery): a corpus set with another tilt
EXTRA_SETS = {
    "srtio3_tilt10": ("srtio3_tilted", {"tilt_mrad": (10.0, -10.0), "seed": 18, "description":
                      "SrTiO3 [001] 39 Å, 200 kV, 20 mrad, specimen tilted by (10, -10) mrad (y, x)"}),
    "batio3_tilted": ("batio3_thick_300kv", {"tilt_mrad": (-10.0, 10.0), "phonons": 2, "seed": 19, "description":
                      "BaTiO3 [001] 152 Å, 300 kV, 20 mrad, 2 frozen phonons, tilted by (-10, 10) mrad (y, x)"}),
}


def simulate(name: str) -> None:
    """One of EXTRA_SETS into EXTRA_CORPUS (abTEM; run in the corpus venv)."""
    import dataclasses
    sys.path.insert(0, str(HERE))
    import make
    base, changes = EXTRA_SETS[name]
    print(make.write_set(dataclasses.replace(make.SETS[base], name=name, **changes), EXTRA_CORPUS, workers=THREADS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", metavar="CASE", help="run only this case (repeatable)")
    ap.add_argument("--force", action="store_true", help="rerun cases already recorded")
    ap.add_argument("--report", action="store_true", help="only rewrite the report from the recorded runs")
    ap.add_argument("--simulate", choices=sorted(EXTRA_SETS), help="simulate an extra tilted set (corpus venv)")
    args = ap.parse_args(argv)
    if args.simulate:
        simulate(args.simulate)
        return 0
    known = {c.id: c for c in CASES}
    bad = [n for n in args.only or [] if n not in known]
    if bad:
        print(f"refine.py: error: unknown case {bad[0]!r}; expected one of {', '.join(known)}", file=sys.stderr)
        return 2
    recs = []
    for c in CASES:
        if args.report or (args.only and c.id not in args.only) or not (set_dir(c) / "meta.json").exists():
            f = WORK / c.id / "run.json"
            if f.exists():
                rec = json.loads(f.read_text())
                if args.report and rec.get("rc") == 0:   # re-measure the kept stores with this script's measures
                    rec["result"] = measure(c, WORK / c.id / "recon.zarr", state_of(c))
                recs.append(rec)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {c.id}: {c.what}", file=sys.stderr, flush=True)
        recs.append(run_case(c, args.force))
    RESULTS.with_suffix(".json").write_text(json.dumps(recs, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(report(recs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
