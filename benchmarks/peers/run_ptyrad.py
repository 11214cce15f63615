"""Reconstruct one corpus set with PtyRAD (PyTorch CPU, its default Adam/AD reconstruction).

    ~/.cache/ptycli/venvs/ptyrad/bin/python benchmarks/peers/run_ptyrad.py SET_DIR OUT_DIR --iterations N

Writes OUT_DIR/params.yaml (the params file that ran), OUT_DIR/phase.npy (slice-summed
object phase over the scanned region) and OUT_DIR/result.json. The params file is PtyRAD's
minimal template (ptyrad/starter/params/templates/minimal.yaml) with every other option at
its package default (optimizer, learning rates, loss, constraints, batch size 32); only the
data-dependent keys are filled in from meta.json, and nothing is saved during the run.
The model gets the set's slices and the probe modes ptycli gets (1 unless the set's ptycli
init asks for more), so that all codes fit the same model.

Conventions mapped here (the rest is identical to ptycli's):
- defocus: PtyRAD's `probe_aberrations.C10` is -Δf (+ = overfocus), as ptycli's C10, so
  C10 = -defocus_a.
- detector pixel: `meas_calibration = {mode: da, value: dk_mrad}` (the nominal calibration,
  not PtyRAD's default BF-disk fit), dx = λ/(M·dk) as in ptycli.
- scan: slow = y, fast = x, row-major, as the corpus's (scan_y, scan_x) raster.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def import_torchvision() -> None:
    """PyPI has only CUDA builds of torchvision: against the CPU torch wheel its compiled
    detection ops (nms, roi_align ...) fail to load and `import torchvision` dies registering
    their fake kernels. PtyRAD needs only torchvision's pure-torch `gaussian_blur`, so on that
    failure torchvision is imported again without the fake-kernel registrations."""
    import types
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401,F811


def allow_py311() -> None:
    """PtyRAD 1.0.0 says Python >= 3.10, but ptyrad/plotting/basic.py uses a Python 3.12 f-string
    (the same quotes inside the braces), and the only CPU torch wheel here is for 3.11. Its
    module is compiled with those inner quotes swapped (same text at run time); nothing else
    changes."""
    import importlib.abc
    import importlib.machinery

    class Loader(importlib.machinery.SourceFileLoader):
        def source_to_code(self, data, path, *, _optimize=-1):
            src = data.decode() if isinstance(data, bytes) else data
            src = src.replace("{lr_iters['niter'][-1]}", '{lr_iters["niter"][-1]}')
            return compile(src, path, "exec", dont_inherit=True)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "ptyrad.plotting.basic":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and sys.version_info < (3, 12):
                spec.loader = Loader(name, spec.origin)
            return spec

    sys.meta_path.insert(0, Finder())


def build_params(meta: dict, patterns_path: Path, iterations: int, modes: int, out_dir: Path) -> dict:
    n_slices, dz = common.slices(meta)
    sy, sx = common.scan_step(meta)
    if abs(sy - sx) > 1e-9 * max(sy, sx):
        raise SystemExit(f"meta.json scan_step_a {meta['scan_step_a']}: PtyRAD's raster takes one step size")
    ny, nx = meta["scan_shape"]
    m = int(meta["detector_shape"][0])
    return {
        "init_params": {
            "probe_kv": float(meta["energy_kev"]),
            "probe_conv_angle": float(meta["semiangle_mrad"]),
            "probe_aberrations": {"C10": -float(meta["defocus_a"])},
            "meas_Npix": m,
            "pos_N_scan_slow": int(ny),
            "pos_N_scan_fast": int(nx),
            "pos_scan_step_size": float(sy),
            "probe_pmode_max": modes,
            "obj_Nlayer": n_slices,
            "obj_slice_thickness": dz,
            "meas_permute": None,
            "meas_reshape": [int(ny * nx), m, m],
            "meas_flipT": None,
            "pos_scan_affine": None,
            "meas_calibration": {"mode": "da", "value": float(meta["dk_mrad"])},
            "meas_params": {"path": str(patterns_path), "key": None},
        },
        "recon_params": {
            "NITER": int(iterations),
            "BATCH_SIZE": {"size": 32, "grad_accumulation": 1},
            "SAVE_ITERS": None,
            "output_dir": str(out_dir / "ptyrad_output") + "/",
            "recon_dir_affixes": ["minimal"],
            "prefix_time": False,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv)

    import numpy as np
    import torch
    import yaml
    import_torchvision()
    allow_py311()
    import ptyrad
    import ptyrad.solver.reconstruction as recon
    from ptyrad.params import load_params
    from ptyrad.solver import PtyRADSolver

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    meta = common.load_meta(args.set_dir)
    modes = args.probe_modes or common.probe_modes(meta)
    pat_path = common.stage_patterns(args.set_dir, meta, args.out_dir)
    params_path = args.out_dir / "params.yaml"
    params_path.write_text(yaml.safe_dump(build_params(meta, pat_path, args.iterations, modes, args.out_dir),
                                          sort_keys=False))

    class Budget(Exception):
        pass

    seen = {"model": None, "iters": 0, "losses": [], "stopped": False}
    step = recon.recon_step

    def timed_step(batches, grad_accumulation, model, *a, **k):
        """PtyRAD's own iteration; counts it, keeps the model, applies the wall-time budget."""
        out = step(batches, grad_accumulation, model, *a, **k)
        seen["model"], seen["iters"] = model, seen["iters"] + 1
        seen["losses"].append(sum(float(np.mean(v)) for v in out.values()) if isinstance(out, dict) else None)
        if args.max_wall_s is not None and time.perf_counter() - t0 > args.max_wall_s \
                and seen["iters"] < args.iterations:
            seen["stopped"] = True
            raise Budget
        return out

    recon.recon_step = timed_step
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        params = load_params(str(params_path), validate=True)
        solver = PtyRADSolver(params, device="cpu", seed=None, acc=None)
        try:
            solver.run()
        except Budget:
            pass
    finally:
        pat_path.unlink(missing_ok=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    model = seen["model"]
    with torch.no_grad():
        objp = model.opt_objp.detach().cpu().numpy()           # (omode, slices, Ny, Nx)
        crop = model.crop_pos.detach().cpu().numpy()           # (N, 2) top-left of each probe window
        n_probe = int(model.opt_probe.shape[-2])
        dx = float(model.dx)
        iter_times = [float(t) for t in model.iter_times]
    phase = objp[0].sum(axis=0)
    # the scanned region: probe centres, from the first to the last window centre
    lo = crop.min(0) + n_probe // 2
    hi = crop.max(0) + n_probe // 2 + 1
    phase = phase[lo[0]:hi[0], lo[1]:hi[1]]
    common.write_result(args.out_dir, phase, {
        "code": "ptyrad", "version": getattr(ptyrad, "__version__", "?"), "torch": torch.__version__,
        "engine": "AD, package defaults", "pixel_size_a": dx, "wall_s": wall, "cpu_s": cpu,
        "iterations": seen["iters"], "iterations_requested": args.iterations, "threads": args.threads, "probe_modes": modes,
        "losses": seen["losses"], "iter_times_s": iter_times, "stopped_by_time_budget": seen["stopped"], "max_wall_s": args.max_wall_s,
    })
    print(f"ptyrad: {seen['iters']} iterations in {wall:.1f} s, phase {phase.shape}, dx {dx:.4f} Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
