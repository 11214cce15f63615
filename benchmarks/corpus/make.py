"""Independent validation corpus: 4D-STEM data sets simulated by abTEM (never by ptycli).

    pip install -e '.[corpus]'            # abTEM + ase, in a separate venv is fine
    python benchmarks/corpus/make.py                    # every set -> ~/.cache/ptycli/corpus/<set>/
    python benchmarks/corpus/make.py --only srtio3 --only au_200kv
    python benchmarks/corpus/make.py --force            # recompute sets already cached
    python benchmarks/corpus/make.py --fixtures         # tests/fixtures/abtem/*.npz (small)
    python benchmarks/corpus/make.py --list

Each set: data.npy (scan_y, scan_x, ky, kx) counts, meta.json (nominal, what a microscopist
knows), truth.npz (what the simulation really used). Format: benchmarks/corpus/README.md.

Geometry. The simulation cell is a square of side L = lambda / dk, so abTEM's reciprocal
pixel is exactly the detector pixel dk and the detector is the central M x M of the
diffraction pattern (DC at pixel M//2). The crystal is cut to that square (not periodic at
the cell edge: the seam lies >= `margin_a` from the scanned area and is part of the truth).
Axes: abTEM indexes (x, y); every array written here is (y, x) (docs/conventions.md).
Defocus: abTEM `defocus` > 0 is underfocus, the same sign as ptycli's --defocus-a.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np

CACHE = Path(os.environ.get("PTYCLI_CORPUS", Path.home() / ".cache" / "ptycli" / "corpus"))
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "abtem"
READY = Path("/tmp/corpus_ready.txt")


@dataclass
class Spec:
    name: str
    description: str
    crystal: str                      # key of CRYSTALS
    layers: int                       # unit cells (or layers) along the beam
    energy_kev: float
    semiangle_mrad: float
    detector: int                     # M (square detector, M x M pixels)
    dk_mrad: float                    # detector pixel; sets the cell L = lambda / dk
    scan: tuple[int, int]             # (ny, nx)
    step_a: float
    dose: float                       # incident e/Å²
    defocus_a: float = 0.0            # true, + = underfocus (abTEM and ptycli agree)
    aberrations: dict = field(default_factory=dict)   # true Krivanek terms besides C10 [Å, rad]
    nominal_defocus_a: float | None = None            # what meta.json says (None: the truth)
    phonons: int = 1                  # frozen-phonon configurations (1: static lattice)
    sim_slice_a: float | None = None  # abTEM slice thickness (None: one slice for all)
    suggested_slices: int = 1
    tilt_mrad: tuple[float, float] = (0.0, 0.0)       # specimen tilt (y, x)
    source_fwhm_a: float = 0.0        # partial spatial coherence (Gaussian source image)
    source_samples: int = 1
    pos_noise_a: float = 0.0          # random position error (std per axis)
    drift_a: tuple[float, float] = (0.0, 0.0)         # (y, x) drift over the whole scan
    affine: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)  # true = A @ nominal (yy, yx, xy, xx)
    det_rotation_deg: float = 0.0     # detector rotated against the scan (not in meta)
    background: float = 0.0           # mean background counts per pixel
    gain_sigma: float = 0.0           # per-pixel gain spread (fraction)
    dtype: str = "uint16"
    seed: int = 0


def _perovskite(symbols, a):
    from ase import Atoms
    return Atoms(symbols, scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=[a, a, a], pbc=True)


def _graphene(formula="C2", a=2.46):
    from ase.build import graphene
    from abtem.atoms import orthogonalize_cell
    return orthogonalize_cell(graphene(formula=formula, a=a, vacuum=2.0))


def _mos2(bilayer=False):
    from ase.build import mx2
    from abtem.atoms import orthogonalize_cell
    mono = orthogonalize_cell(mx2("MoS2", kind="2H", a=3.16, thickness=3.17, vacuum=2.0))
    if not bilayer:
        return mono
    top = mono.copy()                          # 2H stacking: the upper layer inverted (x,y -> -x,-y)
    top.positions[:, :2] *= -1
    top.positions[:, 2] += 6.15
    top.wrap()
    both = mono + top
    both.cell[2, 2] = mono.cell[2, 2] + 6.15
    return both


def _fcc(sym, a):
    from ase.build import bulk
    return bulk(sym, "fcc", a=a, cubic=True)


def _diamond(sym, a):
    from ase.build import bulk
    return bulk(sym, "diamond", a=a, cubic=True)


# unit cell (orthogonal, z along the beam) and thermal rms displacement per axis [Å]
CRYSTALS = {
    "SrTiO3": (lambda: _perovskite("SrTiO3", 3.905), {"Sr": 0.088, "Ti": 0.075, "O": 0.095}),
    "BaTiO3": (lambda: _perovskite("BaTiO3", 4.00), {"Ba": 0.085, "Ti": 0.075, "O": 0.095}),
    "graphene": (lambda: _graphene(), {"C": 0.07}),
    "MoS2": (lambda: _mos2(False), {"Mo": 0.06, "S": 0.07}),
    "MoS2_bilayer": (lambda: _mos2(True), {"Mo": 0.06, "S": 0.07}),
    "Au": (lambda: _fcc("Au", 4.078), {"Au": 0.085}),
    "Si": (lambda: _diamond("Si", 5.431), {"Si": 0.076}),
}

SETS = {s.name: s for s in [
    Spec("srtio3", "Issue-22 reproduction: SrTiO3 [001], 58.6 Å (15 cells), 200 kV, 20 mrad, 96² detector, "
         "32x32 scan at 0.4 Å, frozen phonons, Poisson noise", "SrTiO3", 15, 200, 20, 96, 1.1, (32, 32), 0.4,
         1e5, phonons=4, sim_slice_a=3.905 / 2, suggested_slices=15, seed=1),
    Spec("graphene_60kv", "(a) graphene, single layer, 60 kV, 30 mrad, defocused probe", "graphene", 1, 60, 30,
         64, 1.6, (24, 24), 0.4, 1e5, defocus_a=100, seed=2),
    Spec("mos2_bilayer_80kv", "(b) 2H-MoS2 bilayer, 80 kV, 25 mrad, 128² detector, 200 Å underfocus",
         "MoS2_bilayer", 1, 80, 25, 128, 1.0, (24, 24), 0.8, 5e4, defocus_a=200, sim_slice_a=2.05,
         suggested_slices=2, seed=3),
    Spec("batio3_thick_300kv", "(c) BaTiO3 [001], 152 Å (38 cells), 300 kV, 20 mrad, 8 frozen phonons, "
         "focus 75 Å into the crystal", "BaTiO3", 38, 300, 20, 96, 0.95, (16, 16), 0.45, 1e5, defocus_a=75,
         phonons=8, sim_slice_a=4.0, suggested_slices=19, seed=4),
    Spec("si_thick_lowdose", "(d) Si [001], 97.8 Å (18 cells), 300 kV, 25 mrad, 80 Å underfocus, 5e3 e/Å²", "Si",
         18, 300, 25, 96, 0.9, (16, 16), 0.5, 5e3, defocus_a=80, phonons=2, sim_slice_a=5.431 / 2,
         suggested_slices=18, seed=5),
    Spec("au_200kv", "(e) Au [001], 40.8 Å (10 cells), 200 kV, 25 mrad, 50 Å underfocus", "Au", 10, 200, 25, 96,
         1.25, (20, 20), 0.4, 1e5, defocus_a=50, phonons=2, sim_slice_a=4.078 / 2, suggested_slices=10, seed=6),
    Spec("srtio3_nonideal", "(f) SrTiO3 [001] 19.5 Å, 200 kV, 20 mrad: source 0.4 Å FWHM, position errors "
         "(random 0.05 Å + drift + 3 % affine), detector rotated 2°, background, gain variation", "SrTiO3", 5,
         200, 20, 96, 1.1, (20, 20), 0.4, 1e5, sim_slice_a=3.905 / 2, suggested_slices=5,
         source_fwhm_a=0.4, source_samples=5, pos_noise_a=0.05, drift_a=(0.3, -0.2),
         affine=(1.02, 0.015, -0.01, 0.985), det_rotation_deg=2.0, background=0.02, gain_sigma=0.05,
         dtype="float32", seed=7),
    Spec("srtio3_tilted", "(g) SrTiO3 [001] 39 Å, 200 kV, 20 mrad, specimen tilted by (3, -2) mrad (y, x)",
         "SrTiO3", 10, 200, 20, 96, 1.1, (20, 20), 0.4, 1e5, phonons=2, sim_slice_a=3.905 / 2,
         suggested_slices=10, tilt_mrad=(3.0, -2.0), seed=8),
    Spec("mos2_wrongprior", "(h) MoS2 monolayer, 80 kV, 25 mrad: true defocus 200 Å but nominal 150 Å, and "
         "C12 = 40 Å, C30 = 20 µm that init is not told", "MoS2", 1, 80, 25, 96, 1.15, (24, 24), 0.6, 5e4,
         defocus_a=200, nominal_defocus_a=150, aberrations={"C12": 40.0, "phi12": np.pi / 6, "C30": 2e5},
         seed=9),
]}

# small sets committed as test fixtures (tests/fixtures/abtem/<name>.npz)
FIXTURE_SETS = {s.name: s for s in [
    Spec("mos2_thin", "thin: MoS2 monolayer, one slice, 80 kV, 25 mrad, 60 Å underfocus", "MoS2", 1, 80, 25, 48,
         1.7, (14, 14), 0.5, 2e4, defocus_a=60, seed=11),
    Spec("sto_thick_fp", "thick: SrTiO3 [001] 39 Å (10 cells), 200 kV, 20 mrad, 4 frozen phonons, multislice",
         "SrTiO3", 10, 200, 20, 48, 1.6, (12, 12), 0.4, 1e5, defocus_a=40, phonons=4,
         sim_slice_a=3.905 / 2, suggested_slices=10, seed=12),
    Spec("graphene_lowdose", "low dose: graphene, 60 kV, 30 mrad, 2e3 e/Å² (~320 e per pattern)", "graphene", 1,
         60, 30, 48, 2.0, (16, 16), 0.4, 2e3, defocus_a=50, dtype="uint8", seed=13),
    Spec("sto_nonideal", "non-ideal: SrTiO3 [001] 19.5 Å, 200 kV, 20 mrad, 5 slices; source 0.4 Å, position errors "
         "(random + drift + affine), detector rotated 2°, background, gain", "SrTiO3", 5, 200, 20, 48, 1.6,
         (12, 12), 0.4, 1e5, sim_slice_a=3.905 / 2, suggested_slices=5, source_fwhm_a=0.4, source_samples=5,
         pos_noise_a=0.05, drift_a=(0.3, -0.2), affine=(1.02, 0.015, -0.01, 0.985), det_rotation_deg=2.0,
         background=0.02, gain_sigma=0.05, dtype="uint16", seed=14),
]}


def wavelength_a(energy_kev: float) -> float:
    from abtem.core.energy import energy2wavelength
    return float(energy2wavelength(energy_kev * 1e3))


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def geometry(spec: Spec) -> dict:
    """Cell side L, simulation grid, nominal scan origin; checks coverage and margins."""
    lam = wavelength_a(spec.energy_kev)
    L = lam / (spec.dk_mrad * 1e-3)
    span = np.array([(n - 1) * spec.step_a for n in spec.scan])
    margin = (L - span.max()) / 2
    coverage = spec.detector / 2 * spec.dk_mrad / spec.semiangle_mrad
    # the antialias aperture (2/3 Nyquist, N/3 pixels from DC) must contain the detector corners
    n = _fft_size(max(int(np.ceil(L / 0.1)), int(np.ceil(spec.detector / 2 * np.sqrt(2) * 3)) + 2))
    if margin < 5.0 or coverage < 1.5:
        raise ValueError(f"{spec.name}: margin {margin:.1f} Å (need >= 5) or detector coverage "
                         f"{coverage:.2f} x the BF disk (need >= 1.5)")
    origin = (L - span) / 2                     # nominal position (0, 0) in the truth frame (y, x)
    return {"wavelength_a": lam, "cell_a": L, "gpts": n, "dx_a": L / n, "origin_a": origin,
            "margin_a": margin, "coverage": coverage}


def build_atoms(spec: Spec, L: float):
    """The crystal cut to an L x L square, `layers` cells thick; atoms shifted off slice edges."""
    unit_fn, sigmas = CRYSTALS[spec.crystal]
    unit = unit_fn()
    cx, cy, cz = unit.cell[0, 0], unit.cell[1, 1], unit.cell[2, 2]
    big = unit.repeat((int(np.ceil(L / cx)) + 1, int(np.ceil(L / cy)) + 1, spec.layers))
    keep = (big.positions[:, 0] < L - 1e-6) & (big.positions[:, 1] < L - 1e-6)
    atoms = big[keep]
    atoms.set_cell([L, L, cz * spec.layers])
    atoms.pbc = True
    if spec.sim_slice_a:                       # atomic planes mid-slice, not on slice edges
        atoms.positions[:, 2] += spec.sim_slice_a / 2
        atoms.wrap()
    # the cut is not periodic at x, y = L: drop atoms closer than 1 Å to an atom across the seam
    pos = atoms.positions
    alive = np.ones(len(atoms), bool)
    for i in np.where((pos[:, 0] > L - 1.0) | (pos[:, 1] > L - 1.0))[0]:
        d = pos - pos[i]
        d[:, :2] -= L * np.round(d[:, :2] / L)
        near = (d ** 2).sum(1) < 1.0
        near[i] = False
        if np.any(near & alive):
            alive[i] = False
    atoms = atoms[alive]
    return atoms, {k: v for k, v in sigmas.items()}


def true_positions(spec: Spec, origin: np.ndarray, rng) -> np.ndarray:
    """(N, 2) true probe positions (y, x) [Å] in the truth frame: the nominal raster with the
    spec's affine distortion (about the scan centre), linear drift in time, random error."""
    ny, nx = spec.scan
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    nominal = np.stack([iy.ravel(), ix.ravel()], 1) * spec.step_a
    centre = nominal.mean(0)
    A = np.array(spec.affine).reshape(2, 2)
    pos = (nominal - centre) @ A.T + centre
    t = np.arange(ny * nx) / max(ny * nx - 1, 1)
    pos = pos + t[:, None] * np.array(spec.drift_a)[None]
    if spec.pos_noise_a:
        pos = pos + rng.normal(0, spec.pos_noise_a, pos.shape)
    return pos + origin[None]


def _abtem():
    import abtem
    abtem.config.set({"device": "cpu", "fft": "fftw", "precision": "float32",
                      "fftw.planning_effort": "FFTW_ESTIMATE"})
    return abtem


def probe_kwargs(spec: Spec, defocus: float, aberrations: dict) -> dict:
    """abTEM Probe keywords in Krivanek form: C10 = -defocus (docs/conventions.md)."""
    kw = {"C10": -float(defocus)}
    kw.update({k: float(v) for k, v in aberrations.items()})
    return kw


def simulate(spec: Spec, workers: int = 2, log=print) -> tuple[np.ndarray, dict, dict]:
    """Run abTEM; return (data (ny, nx, M, M), meta dict, truth dict)."""
    abtem = _abtem()
    geo = geometry(spec)
    L, n, lam = geo["cell_a"], geo["gpts"], geo["wavelength_a"]
    M = spec.detector
    rng = np.random.default_rng(spec.seed)
    atoms, sigmas = build_atoms(spec, L)
    thickness = float(atoms.cell[2, 2])
    specimen = (abtem.FrozenPhonons(atoms, num_configs=spec.phonons, sigmas=sigmas, seed=spec.seed)
                if spec.phonons > 1 else atoms)
    slice_a = spec.sim_slice_a or thickness
    potential = abtem.Potential(specimen, gpts=(n, n), slice_thickness=slice_a, projection="infinite",
                                parametrization="lobato")
    pkw = probe_kwargs(spec, spec.defocus_a, spec.aberrations)
    probe = abtem.Probe(energy=spec.energy_kev * 1e3, semiangle_cutoff=spec.semiangle_mrad,
                        tilt=(spec.tilt_mrad[1], spec.tilt_mrad[0]), **pkw)
    probe.grid.match(potential)
    pos = true_positions(spec, geo["origin_a"], rng)
    K = max(spec.source_samples, 1) if spec.source_fwhm_a else 1
    sigma_src = spec.source_fwhm_a / np.sqrt(8 * np.log(2))
    sub = pos[:, None, :] + (rng.normal(0, sigma_src, (len(pos), K, 2)) if K > 1 else 0.0)
    xy = sub.reshape(-1, 2)[:, ::-1]            # abTEM takes (x, y)
    t0 = time.time()
    log(f"[{spec.name}] L={L:.2f} Å grid {n}² (dx {geo['dx_a']:.4f} Å), {len(xy)} probes x "
        f"{int(np.ceil(thickness / slice_a))} slices x {spec.phonons} phonon configs, {len(atoms)} atoms")
    meas = probe.scan(potential, scan=abtem.CustomScan(xy), detectors=abtem.PixelatedDetector(max_angle="full"))
    meas = meas.compute(scheduler="threads", num_workers=workers, progress_bar=False)
    I = np.swapaxes(np.asarray(meas.array, dtype=np.float64), -1, -2)      # (P, ky, kx), fftshifted
    assert I.shape[-1] == n, I.shape
    I = I.reshape(len(pos), K, n, n).mean(1)
    c = n // 2
    I = I[:, c - M // 2:c - M // 2 + M, c - M // 2:c - M // 2 + M]          # DC at (M//2, M//2)
    log(f"[{spec.name}] multislice {time.time() - t0:.0f} s")
    area = spec.step_a ** 2
    expected = I * spec.dose * area                                          # counts, noiseless
    if spec.det_rotation_deg:
        from scipy.ndimage import affine_transform
        th = np.deg2rad(spec.det_rotation_deg)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        cen = np.array([M // 2, M // 2], float)
        expected = np.stack([affine_transform(f, R, offset=cen - R @ cen, order=1) for f in expected])
    detected_fraction = float(expected.sum((-2, -1)).mean() / (spec.dose * area))
    gain = np.ones((M, M))
    if spec.gain_sigma:
        gain = np.clip(rng.normal(1.0, spec.gain_sigma, (M, M)), 0.5, 1.5)
    counts = rng.poisson(expected + spec.background).astype(np.float64) * gain
    if spec.dtype.startswith("uint"):
        top = np.iinfo(spec.dtype).max
        if counts.max() > top:
            raise ValueError(f"{spec.name}: {counts.max():.0f} counts overflow {spec.dtype}")
    data = counts.astype(spec.dtype).reshape(*spec.scan, M, M)

    # truth: projected phase per slice (sigma V, frozen-phonon mean), grouped into suggested slices
    from abtem.core.energy import energy2sigma
    V = np.asarray(potential.build().compute(scheduler="threads", num_workers=workers,
                                             progress_bar=False).array, dtype=np.float64)
    if V.ndim == 4:
        V = V.mean(0)
    V = np.swapaxes(V, -1, -2)                                               # (S_sim, y, x)
    S = spec.suggested_slices
    group = (np.arange(V.shape[0]) * S) // V.shape[0]
    phase_slices = np.stack([V[group == g].sum(0) for g in range(S)]) * energy2sigma(spec.energy_kev * 1e3)
    win = abtem.Probe(energy=spec.energy_kev * 1e3, semiangle_cutoff=spec.semiangle_mrad, extent=L, gpts=M, **pkw)
    psi = np.swapaxes(np.asarray(win.build(scan=(L / 2, L / 2)).compute(progress_bar=False).array), -1, -2)
    probe_counts = psi * np.sqrt(spec.dose * area / (np.abs(psi) ** 2).sum())  # Σ|P|² = incident counts

    nominal_defocus = spec.defocus_a if spec.nominal_defocus_a is None else spec.nominal_defocus_a
    S_sug = spec.suggested_slices
    meta = {
        "name": spec.name, "description": spec.description,
        "energy_kev": spec.energy_kev, "semiangle_mrad": spec.semiangle_mrad,
        "scan_shape": list(spec.scan), "scan_step_a": spec.step_a,
        "detector_shape": [M, M], "dk_mrad": spec.dk_mrad, "defocus_a": nominal_defocus,
        "dose_e_per_a2": spec.dose, "thickness_a": round(thickness, 3),
        "suggested_slices": S_sug, "suggested_slice_thickness_a": round(thickness / S_sug, 4),
        "multislice": S_sug > 1, "dtype": spec.dtype,
        "ptycli_preprocess_args": [
            "--energy-kev", f"{spec.energy_kev:g}", "--semiangle-mrad", f"{spec.semiangle_mrad:g}",
            "--dk-mrad", f"{spec.dk_mrad:g}", "--scan-shape", f"{spec.scan[0]}x{spec.scan[1]}",
            "--scan-step-a", f"{spec.step_a:g}", "--defocus-a", f"{nominal_defocus:g}"],
        "ptycli_init_args": ["--defocus-a", f"{nominal_defocus:g}"]
        + (["--slices", str(S_sug), "--slice-thickness-a", f"{thickness / S_sug:.4f}"] if S_sug > 1 else []),
    }
    true = {
        "defocus_a": spec.defocus_a, "C10_a": -spec.defocus_a, "aberrations": spec.aberrations,
        "tilt_mrad_yx": list(spec.tilt_mrad), "thickness_a": thickness, "source_fwhm_a": spec.source_fwhm_a,
        "source_samples": K, "detector_rotation_deg": spec.det_rotation_deg, "background_counts": spec.background,
        "gain_sigma": spec.gain_sigma, "pos_noise_a": spec.pos_noise_a, "drift_a_yx": list(spec.drift_a),
        "affine_yx": list(spec.affine), "phonon_configs": spec.phonons, "thermal_rms_a": sigmas,
        "crystal": spec.crystal, "layers": spec.layers, "n_atoms": len(atoms),
        "sim_slice_thickness_a": slice_a, "sim_slices": int(V.shape[0]), "sim_gpts": n,
        "sim_sampling_a": geo["dx_a"], "cell_a": L, "wavelength_a": lam,
        "detected_fraction": detected_fraction, "abtem": abtem.__version__, "seed": spec.seed,
        "probe_normalisation": "sum |probe|^2 = dose * step^2 (incident counts per pattern)",
        "probe_window_pixel_a": L / M,
    }
    truth = {
        "phase_slices": phase_slices.astype(np.float32), "phase": phase_slices.sum(0).astype(np.float32),
        "pixel_size_a": np.float64(geo["dx_a"]), "probe": probe_counts.astype(np.complex64),
        "positions_a": pos.astype(np.float64), "origin_a": np.asarray(geo["origin_a"], np.float64),
        "true": json.dumps(true),
    }
    return data, meta, truth


def sanity(data: np.ndarray, meta: dict, truth: dict) -> dict:
    """The checks each set must pass: BF disk radius, dose, atom contrast."""
    M = data.shape[-1]
    mean = data.reshape(-1, M, M).astype(np.float64).mean(0)
    ky, kx = np.indices((M, M)) - M // 2
    r = np.hypot(ky, kx)
    bf_expected = meta["semiangle_mrad"] / meta["dk_mrad"]
    prof = np.bincount(r.astype(int).ravel(), mean.ravel()) / np.bincount(r.astype(int).ravel())
    inner = prof[: max(int(bf_expected * 0.5), 1)].mean()
    bf_measured = float(np.argmax(prof < inner / 2))            # first ring below half the disk level
    true = json.loads(str(truth["true"]))
    area = meta["scan_step_a"] ** 2
    counts = float(data.reshape(-1, M, M).sum((-2, -1)).mean()) - true["background_counts"] * M * M
    dose_measured = counts / area / true["detected_fraction"]
    ph = truth["phase"]
    # linear overlap 1 - step / d80 (d80: the diameter holding 80 % of the probe intensity)
    P2 = (np.abs(truth["probe"]) ** 2).ravel()
    rr = (r * true["probe_window_pixel_a"]).ravel()
    order = np.argsort(rr)
    d80 = 2 * rr[order][np.searchsorted(np.cumsum(P2[order]) / P2.sum(), 0.8)]
    overlap = 1 - meta["scan_step_a"] / d80
    out = {"overlap_d80": round(float(overlap), 3),"bf_radius_px": bf_measured, "bf_expected_px": round(bf_expected, 2),
           "detected_fraction": round(true["detected_fraction"], 4),
           "dose_measured": round(dose_measured, 1), "dose_nominal": meta["dose_e_per_a2"],
           "counts_per_pattern": round(counts, 1), "phase_min": float(ph.min()), "phase_max": float(ph.max()),
           "phase_std": float(ph.std())}
    ok = abs(bf_measured - bf_expected) <= max(1.5, 0.08 * bf_expected) and abs(dose_measured / meta["dose_e_per_a2"] - 1) < 0.05
    out["ok"] = bool(ok and ph.max() - ph.min() > 0.2 and true["detected_fraction"] > 0.7 and overlap >= 0.6)
    return out


def write_set(spec: Spec, root: Path, workers: int) -> dict:
    data, meta, truth = simulate(spec, workers)
    out = root / spec.name
    tmp = root / (spec.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "data.npy", data)
    np.savez_compressed(tmp / "truth.npz", **truth)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    check = sanity(data, meta, truth)
    (tmp / "sanity.json").write_text(json.dumps(check, indent=1))
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return check


def write_fixture(spec: Spec, root: Path, workers: int) -> dict:
    """One compressed npz per fixture: counts (uint), meta json, truth (phase slices as float16)."""
    data, meta, truth = simulate(spec, workers)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / f"{spec.name}.npz", data=data, meta=json.dumps(meta),
                        phase_slices=truth["phase_slices"].astype(np.float16), phase=truth["phase"],
                        pixel_size_a=truth["pixel_size_a"], probe=truth["probe"],
                        positions_a=truth["positions_a"], origin_a=truth["origin_a"], true=truth["true"])
    return sanity(data, meta, truth)


def _mark_ready(root: Path) -> None:
    names = sorted(p.parent.name for p in root.glob("*/meta.json"))
    fixtures = " ".join(sorted(p.stem for p in FIXTURES.glob("*.npz")))
    READY.write_text(" ".join(names) + f"   (in {root}; fixtures in tests/fixtures/abtem: {fixtures})\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", metavar="NAME", help="make only this set (repeatable)")
    ap.add_argument("--force", action="store_true", help="recompute sets that are already cached")
    ap.add_argument("--fixtures", action="store_true", help="make the small test fixtures instead")
    ap.add_argument("--out", type=Path, help=f"output folder (default {CACHE}, or {FIXTURES} with --fixtures)")
    ap.add_argument("--workers", type=int, default=2, help="dask threads (default 2)")
    ap.add_argument("--list", action="store_true", help="list the sets and exit")
    args = ap.parse_args(argv)
    table = FIXTURE_SETS if args.fixtures else SETS
    if args.list:
        for s in table.values():
            print(f"{s.name:22s} {s.description}")
        return 0
    unknown = [n for n in args.only or [] if n not in table]
    if unknown:
        print(f"make.py: error: unknown set {unknown[0]!r}; expected one of {', '.join(table)}", file=sys.stderr)
        return 2
    root = args.out or (FIXTURES if args.fixtures else CACHE)
    for name in args.only or list(table):
        spec = table[name]
        done = (root / f"{name}.npz") if args.fixtures else (root / name / "meta.json")
        if done.exists() and not args.force:
            print(f"[{name}] cached in {done.parent} (--force to recompute)")
            continue
        t0 = time.time()
        check = (write_fixture if args.fixtures else write_set)(spec, root, args.workers)
        print(f"[{name}] done in {time.time() - t0:.0f} s: {json.dumps(check)}", flush=True)
        if not args.fixtures:
            _mark_ready(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
