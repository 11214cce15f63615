"""Reconstruct one corpus set with phaser (phaserEM, numpy backend, LSQ-ML engine).

    ~/.cache/ptycli/venvs/phaser/bin/python benchmarks/peers/run_phaser.py SET_DIR OUT_DIR --iterations N

Writes OUT_DIR/plan.yaml (the plan that ran), OUT_DIR/phase.npy (slice-summed object phase
over the scanned region) and OUT_DIR/result.json. The plan is phaser's documented LSQ-ML
engine with the package's own defaults (noise model, solver steps, grouping, no position
or regulariser options); only the data-dependent keys are filled in from meta.json:
energy, detector pixel, convergence angle, defocus, raster, slices, probe modes.

Conventions mapped here (the rest is identical to ptycli's):
- defocus: phaser's `defocus` is + = overfocus (phaser.hooks.FocusedProbeProps), the
  corpus's `defocus_a` is + = underfocus, so phaser gets -defocus_a.
- patterns: DC-centred counts in electrons (adu 1); phaser ifftshifts them itself.
- scan: phaser's raster is (y, x) row-major, centred on 0, like ptycli's; the object is
  on the same dx = λ/(M·dk) grid.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def build_plan(meta: dict, patterns_path: Path, iterations: int, modes: int, name: str) -> dict:
    n_slices, dz = common.slices(meta)
    plan = {
        "name": name,
        "backend": "numpy",
        "dtype": "float32",
        "raw_data": {"type": "manual", "path": str(patterns_path), "diff_step": float(meta["dk_mrad"]),
                     "kv": float(meta["energy_kev"]), "adu": 1.0},
        "init": {
            "probe": {"type": "focused", "conv_angle": float(meta["semiangle_mrad"]),
                      "defocus": -float(meta["defocus_a"])},
            "scan": {"type": "raster", "shape": list(meta["scan_shape"]), "step_size": list(common.scan_step(meta))},
        },
        "engines": [{
            "type": "conventional",
            "niter": int(iterations),
            "probe_modes": modes,
            "noise_model": {"type": "amplitude"},
            "solver": {"type": "lsqml"},
            "group_constraints": [],
            "iter_constraints": [],
        }],
    }
    if n_slices > 1:
        plan["slices"] = {"n": n_slices, "slice_thickness": dz}
    return plan


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(__doc__, argv)

    import numpy as np
    import yaml
    from phaser import __version__
    from phaser.execute import execute_plan
    from phaser.observer import Observer
    from phaser.plan import ReconsPlan
    from phaser.types import EarlyTermination

    meta = common.load_meta(args.set_dir)
    modes = args.probe_modes or common.probe_modes(meta)
    pat_path = common.stage_patterns(args.set_dir, meta, args.out_dir)
    plan_dict = build_plan(meta, pat_path, args.iterations, modes, f"phaser_{meta.get('name', 'set')}")
    (args.out_dir / "plan.yaml").write_text(yaml.safe_dump(plan_dict, sort_keys=False))

    class Capture(Observer):
        """Keeps the final state and the per-iteration error (phaser's convergence)."""
        def __init__(self):
            self.state, self.errors, self.iters, self.stopped = None, [], 0, False

        def update_iteration(self, state, i, n, errors):
            self.iters += 1
            self.errors.append({k: float(v) for k, v in errors.items()})
            if args.max_wall_s is not None and time.perf_counter() - t0 > args.max_wall_s and self.iters < n:
                self.stopped = True
                raise EarlyTermination(state)

        def finish_recons(self, state):
            self.state = state

    cap = Capture()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        execute_plan(ReconsPlan.from_data(plan_dict), observers=[cap])
    finally:
        pat_path.unlink(missing_ok=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    state = cap.state.to_numpy()
    obj = state.object
    crop = obj.sampling.get_region_crop()
    phase = np.angle(np.asarray(obj.data)).sum(axis=0)[crop]
    dx = float(obj.sampling.sampling[0])
    common.write_result(args.out_dir, phase, {
        "code": "phaser", "version": __version__, "engine": "lsqml (conventional, phaser defaults)",
        "pixel_size_a": dx, "wall_s": wall, "cpu_s": cpu, "iterations": cap.iters, "iterations_requested": args.iterations,
        "threads": args.threads, "probe_modes": modes, "errors": cap.errors,
        "stopped_by_time_budget": cap.stopped, "max_wall_s": args.max_wall_s,
    })
    print(f"phaser: {cap.iters} iterations in {wall:.1f} s, phase {phase.shape}, dx {dx:.4f} Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
