"""ptycli beside its peers on the abTEM corpus (issue 22): writes benchmarks/RESULTS_quality.md.

    python benchmarks/corpus/run.py [--sets a,b] [--iterations N] [--peers phaser,ptyrad] [--threads 2]

For each corpus set (~/.cache/ptycli/corpus/<set>, or $PTYCLI_CORPUS; made by make.py):
ptycli `preprocess` and `init` with the set's own arguments, then `reconstruct --recipe R`
for every recipe that applies to the set (`applicable_recipes`); each peer
(benchmarks/peers/run_<peer>.py, in its own venv) with the iteration count of ptycli's
recipes on that set. Every result is scored by benchmarks/corpus/score.py against the
set's truth, and the tables go to RESULTS_quality.md and every number to
RESULTS_quality.json.

Runs are cached under ~/.cache/ptycli/corpus_runs/<set>/<code>-<recipe>/ with the hash of
their inputs (set files, ptycli sources and recipes, peer scripts, iterations, threads):
a rerun repeats only what changed, so after an edit of ptycli only the ptycli rows run
again. `--force ptycli|peers|all` repeats them anyway.

Timing: wall clock of `ptycli reconstruct` (one process, after a one-iteration-per-stage
warm-up run that fills Numba's cache, so JIT compilation is not timed) and of a peer's
reconstruction call (data loading included, interpreter start-up not); CPU seconds beside
them, because the benchmark machine is shared and its wall clock drifts with others' load,
and the 1-minute load average over each run (start, end, mean of 5-s samples). The verdict
judges the time bar on CPU seconds and states the wall-time ratio beside it (`verdict_text`;
the report's header gives the rule).
A peer that passes `--peer-max-wall-s` stops after that iteration; its row then says
"stopped k/N" and the verdict compares only with peers that ran all N iterations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import score  # noqa: E402  (benchmarks/corpus/score.py)
from ptycli.recipe import LOW_DOSE_E_PER_A2  # noqa: E402  (the dose below which `low-dose` applies)

CORPUS = Path(os.environ.get("PTYCLI_CORPUS", Path.home() / ".cache" / "ptycli" / "corpus"))
WORK = Path.home() / ".cache" / "ptycli" / "corpus_runs"
VENVS = Path(os.environ.get("PTYCLI_PEER_VENVS", Path.home() / ".cache" / "ptycli" / "venvs"))
PEERS = ("phaser", "ptyrad")
RECIPES = ("single-slice", "multislice", "low-dose", "mixed-state", "auto")
MIXED_STATE_MODES = 3         # `init --probe-modes` for the mixed-state recipe (its comment)
MARGIN = 0.02                 # issue 22: ptycli >= best peer + 0.02 ...
TIME_FRACTION = 1 / 3         # ... at <= 1/3 of that peer's wall time
KILL_FACTOR = 4               # a peer still inside an iteration at 4x its budget is stopped
EXIT_NUMERICAL = 6            # ptycli/errors.py: NaN or divergence
LOAD_SAMPLE_S = 5.0           # how often timed() samples the load average
RUN_VERSION = "1"             # bump when what a cached run means changes


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ what to run
def list_sets(corpus: Path, names: list[str] | None) -> list[Path]:
    """The complete sets in `corpus` (data.npy, meta.json and truth.npz), or the named ones."""
    found = sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.endswith(".partial")
                   and all((p / f).exists() for f in ("data.npy", "meta.json", "truth.npz"))) \
        if corpus.is_dir() else []
    if not names:
        return found
    by_name = {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"run.py: error: set(s) {', '.join(missing)} not found complete in {corpus} "
                         f"(have: {', '.join(by_name) or 'none'}); make them with benchmarks/corpus/make.py")
    return [by_name[n] for n in names]


def partially_coherent(truth_true: dict[str, Any]) -> bool:
    return float(truth_true.get("source_fwhm_a") or 0) > 0


def applicable_recipes(meta: dict[str, Any], truth_true: dict[str, Any]) -> list[str]:
    """Recipes of issue 22 that apply to a set: multislice sets get `multislice`, thin ones
    `single-slice`; sets under LOW_DOSE_E_PER_A2 also `low-dose`; a partially coherent beam
    (the simulation's source size, which decides what the comparison is about, never what a
    reconstruction is told) also `mixed-state`; every set `auto` (skipped while absent)."""
    out = ["multislice" if meta.get("multislice") else "single-slice"]
    if float(meta.get("dose_e_per_a2") or float("inf")) < LOW_DOSE_E_PER_A2:
        out.append("low-dose")
    if partially_coherent(truth_true):
        out.append("mixed-state")
    out.append("auto")
    return out


def recipe_file(name: str) -> Path | None:
    p = REPO / "ptycli" / "recipes_data" / f"{name}.toml"
    return p if p.exists() else None


def recipe_stages(name: str) -> list[int] | None:
    """Iterations of each stage of a shipped recipe (10 where a stage leaves it out)."""
    p = recipe_file(name)
    if p is None:
        return None
    return [int(s.get("iterations", 10)) for s in tomllib.loads(p.read_text()).get("stage", [])]


def init_args(meta: dict[str, Any], recipe: str) -> list[str]:
    args = [str(a) for a in meta.get("ptycli_init_args", [])]
    if recipe == "mixed-state" and "--probe-modes" not in args:
        args += ["--probe-modes", str(MIXED_STATE_MODES)]
    return args


# ------------------------------------------------------------------ cache keys
def file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def set_digest(set_dir: Path) -> str:
    """meta.json by content, the (large) data and truth by size and modification time."""
    h = hashlib.sha256((set_dir / "meta.json").read_bytes())
    for f in ("data.npy", "truth.npz"):
        st = (set_dir / f).stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def ptycli_digest() -> str:
    """ptycli's sources and shipped recipes: a change of either reruns the ptycli rows."""
    files = sorted((REPO / "ptycli").rglob("*.py")) + sorted((REPO / "ptycli" / "recipes_data").glob("*.toml"))
    return file_digest(files)


def peer_digest(peer: str) -> str:
    return file_digest([REPO / "benchmarks" / "peers" / f"run_{peer}.py", REPO / "benchmarks" / "peers" / "common.py"])


def key_of(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(dict(parts, v=RUN_VERSION), sort_keys=True).encode()).hexdigest()[:20]


def cached(run_dir: Path, key: str | None) -> dict[str, Any] | None:
    """The run recorded in run_dir if it was made from these inputs (key None: any inputs)."""
    f = run_dir / "run.json"
    if f.exists():
        rec = json.loads(f.read_text())
        if key is None or rec.get("key") == key:
            return rec
    return None


def busy(run_dir: Path) -> int | None:
    """Claim run_dir for this process (several run.py may work through one corpus side by
    side); the pid of the live process that holds it, or None once it is ours."""
    lock = run_dir.with_name(run_dir.name + ".pid")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
                if pid != os.getpid():
                    return pid
                return None
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)       # its process is gone: take it over
                continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return None
    return None


def release(run_dir: Path) -> None:
    lock = run_dir.with_name(run_dir.name + ".pid")
    try:
        if int(lock.read_text() or 0) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def save(run_dir: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """Record a finished run (its result and the inputs' key) and release the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(rec, indent=1) + "\n")
    release(run_dir)
    return rec


# ------------------------------------------------------------------ running
def timed(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run one command; exit code, wall and CPU seconds (of the child), output in log_path, and
    the machine's 1-minute load average at the start, at the end and its mean over the run
    (sampled every LOAD_SAMPLE_S): on a shared machine the wall time means little without it."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    loads = [os.getloadavg()[0]]
    with open(log_path, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        rc: int | None = None
        while True:
            try:
                rc = proc.wait(timeout=LOAD_SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                loads.append(os.getloadavg()[0])
                if time.perf_counter() - t0 > timeout_s:
                    proc.kill()
                    proc.wait()
                    rc = None
                    break
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    loads.append(os.getloadavg()[0])
    return {"rc": rc, "wall_s": time.perf_counter() - t0,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "load_avg": loads[-1], "load_start": loads[0], "load_mean": sum(loads) / len(loads)}


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PTYCLI_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def ptycli_bin() -> str:
    exe = Path(sys.executable).parent / "ptycli"
    return str(exe) if exe.exists() else "ptycli"


def tail(path: Path, n: int = 1) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return " / ".join(lines[-n:])[-300:]


def run_ptycli(set_dir: Path, meta: dict, recipe: str, args, truth: dict) -> dict[str, Any]:
    run_dir = args.work / set_dir.name / f"ptycli-{recipe}"
    rfile, code, sd = recipe_file(recipe), ptycli_digest(), set_digest(set_dir)
    key = key_of(set=sd, code=code, recipe=recipe, iterations=args.iterations,
                 threads=args.threads, init=init_args(meta, recipe), pre=meta.get("ptycli_preprocess_args"))
    if args.force not in ("ptycli", "all") and (rec := cached(run_dir, key)):
        log(f"{set_dir.name} ptycli {recipe}: cached")
        return rec
    if args.reuse and (rec := cached(run_dir, None)) and rec.get("iterations_arg") == args.iterations \
            and rec.get("set_digest", sd) == sd:
        log(f"{set_dir.name} ptycli {recipe}: reused (sources {rec.get('sources')})")
        return rec
    if args.only == "none":
        return {"code": "ptycli", "recipe": recipe, "set": set_dir.name, "status": "not run (no recorded run)"}
    if (pid := busy(run_dir)) is not None:
        return {"code": "ptycli", "recipe": recipe, "set": set_dir.name, "status": f"being run by pid {pid}"}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    env, exe, lg = thread_env(args.threads), ptycli_bin(), run_dir / "log.txt"
    rec: dict[str, Any] = {"key": key, "code": "ptycli", "recipe": recipe, "set": set_dir.name, "sources": code,
                           "commit": git_commit(), "iterations_arg": args.iterations, "set_digest": sd}
    data, state, out = prepared_data(set_dir, meta, args), run_dir / "init.zarr", run_dir / "recon.zarr"
    if isinstance(data, str):
        return save(run_dir, dict(rec, status=data))
    r = timed([exe, "init", str(data), "-o", str(state), *init_args(meta, recipe)], env, lg, args.timeout_s)
    if r["rc"] != 0:
        return save(run_dir, dict(rec, status=f"init failed (exit {r['rc']}): {tail(lg)}"))
    base = [exe, "reconstruct", str(data), str(state), "--recipe", recipe]
    if args.iterations:
        base += ["--iterations", str(args.iterations)]
    stages = recipe_stages(recipe) if rfile is not None else None
    if stages:  # warm-up: one iteration per stage compiles every kernel the timed run uses
        warm = [exe, "reconstruct", str(data), str(state), "--recipe", recipe, "-o", str(run_dir / "warm.zarr")]
        for i in range(len(stages)):
            warm += ["--set", f"stage.{i}.iterations=1"]
        timed(warm, env, lg, args.timeout_s)
        shutil.rmtree(run_dir / "warm.zarr", ignore_errors=True)
    log(f"{set_dir.name} ptycli {recipe}: reconstruct")
    r = timed(base + ["-o", str(out)], env, lg, args.timeout_s)
    rec.update(wall_s=r["wall_s"], cpu_s=r["cpu_s"], load_avg=r["load_avg"], load_start=r["load_start"],
               load_mean=r["load_mean"], exit=r["rc"], warmed_up=bool(stages),
               command=" ".join(["ptycli reconstruct data.zarr init.zarr", *base[4:], "-o recon.zarr"]))
    if r["rc"] is None:
        return save(run_dir, dict(rec, status=f"timed out after {args.timeout_s:.0f} s"))
    if rfile is None and r["rc"] in (2, 3) and "shipped" in tail(lg):
        return save(run_dir, dict(rec, status="not available", detail=tail(lg)))
    if r["rc"] == EXIT_NUMERICAL:
        return save(run_dir, dict(rec, status="diverged (exit 6)", detail=tail(lg)))
    if r["rc"] != 0:
        return save(run_dir, dict(rec, status=f"failed (exit {r['rc']})", detail=tail(lg)))
    rec["iterations"] = store_iterations(out)
    rec.update(score_recon(set_dir, meta, truth, out, None))
    return save(run_dir, rec)


def prepared_data(set_dir: Path, meta: dict, args) -> Path | str:
    """`ptycli preprocess` of a set, shared by its recipes (redone when the set or ptycli
    changes); the store's path, or why it failed."""
    out = args.work / set_dir.name / "data.zarr"
    key = key_of(set=set_digest(set_dir), code=ptycli_digest(), pre=meta.get("ptycli_preprocess_args"))
    stamp = out.with_suffix(".key")
    if out.exists() and stamp.exists() and stamp.read_text() == key:
        return out
    if (pid := busy(out)) is not None:
        return f"preprocess being run by pid {pid}"
    shutil.rmtree(out, ignore_errors=True)
    lg = args.work / set_dir.name / "preprocess.log"
    lg.parent.mkdir(parents=True, exist_ok=True)
    r = timed([ptycli_bin(), "preprocess", str(set_dir / "data.npy"), "-o", str(out), *meta["ptycli_preprocess_args"]],
              thread_env(args.threads), lg, args.timeout_s)
    release(out)
    if r["rc"] != 0:
        return f"preprocess failed (exit {r['rc']}): {tail(lg)}"
    stamp.write_text(key)
    return out


def store_iterations(store: Path) -> int | None:
    import zarr
    try:
        return int(zarr.open_group(str(store), mode="r")["history/loss"].shape[0])
    except Exception:  # an older/newer layout: the count is informative only
        return None


def run_peer(peer: str, set_dir: Path, meta: dict, iterations: int, modes: int, args, truth: dict) -> dict[str, Any]:
    run_dir = args.work / set_dir.name / f"{peer}"
    py, sd = VENVS / peer / "bin" / "python", set_digest(set_dir)
    key = key_of(set=sd, code=peer_digest(peer), iterations=iterations, modes=modes,
                 threads=args.threads, max_wall_s=args.budgets[peer], priority="as ptycli")
    if args.force not in ("peers", "all") and (rec := cached(run_dir, key)):
        log(f"{set_dir.name} {peer}: cached")
        return rec
    if args.reuse and (rec := cached(run_dir, None)) and rec.get("iterations_requested") == iterations \
            and rec.get("set_digest", sd) == sd:
        log(f"{set_dir.name} {peer}: reused")
        return rec
    rec: dict[str, Any] = {"key": key, "code": peer, "set": set_dir.name, "iterations_requested": iterations,
                           "set_digest": sd, "max_wall_s": args.budgets[peer]}
    if args.only in ("ptycli", "none"):
        return dict(rec, status="not run (no recorded run)")
    if not py.exists():
        return dict(rec, status=f"not run: no venv at {py} (benchmarks/peers/envs.sh)")
    if (pid := busy(run_dir)) is not None:
        return dict(rec, status=f"being run by pid {pid}")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = [str(py), str(REPO / "benchmarks" / "peers" / f"run_{peer}.py"), str(set_dir), str(run_dir),
           "--iterations", str(iterations), "--threads", str(args.threads), "--probe-modes", str(modes)]
    if args.budgets[peer]:
        cmd += ["--max-wall-s", str(args.budgets[peer])]
    log(f"{set_dir.name} {peer}: {iterations} iterations")
    # same priority as ptycli's runs (no extra nice): the wall times are compared. The budget is
    # checked between iterations, so a peer whose single iteration outlasts it is killed at
    # KILL_FACTOR times the budget.
    budget = args.budgets[peer]
    limit = min(args.timeout_s, KILL_FACTOR * budget) if budget else args.timeout_s
    r = timed(cmd, thread_env(args.threads), run_dir / "log.txt", limit)
    rec.update(exit=r["rc"], load_avg=r["load_avg"], load_start=r["load_start"], load_mean=r["load_mean"],
               process_wall_s=r["wall_s"])
    res_f = run_dir / "result.json"
    if r["rc"] != 0 or not res_f.exists():
        why = f"killed after {limit:.0f} s, an iteration outlasting the budget" if r["rc"] is None \
            else f"exit {r['rc']}"
        detail = tail(run_dir / "log.txt")
        status = f"diverged ({detail[-80:]})" if "NaN" in detail else f"failed ({why})"
        return save(run_dir, dict(rec, status=status, detail=detail))
    res = json.loads(res_f.read_text())
    rec.update({k: res.get(k) for k in ("version", "engine", "wall_s", "cpu_s", "iterations", "pixel_size_a",
                                        "stopped_by_time_budget", "command")})
    rec["convergence"] = peer_convergence(res)
    if not res.get("finite", True):
        return save(run_dir, dict(rec, status="diverged (NaN)"))
    rec.update(score_recon(set_dir, meta, truth, run_dir / "phase.npy", res["pixel_size_a"]))
    return save(run_dir, rec)


def peer_convergence(res: dict[str, Any]) -> str | None:
    """First and last value of the peer's own error measure (phaser `errors`, PtyRAD `losses`)."""
    vals = [e.get("error", next(iter(e.values()), None)) for e in res.get("errors", []) if e] \
        or res.get("losses") or []
    vals = [v for v in vals if v is not None]
    return f"{vals[0]:.4g} → {vals[-1]:.4g}" if len(vals) >= 2 else None


def score_recon(set_dir: Path, meta: dict, truth: dict, recon: Path, pixel_size_a: float | None) -> dict:
    try:
        phase, px, region = score.read_recon(recon, pixel_size_a, meta)
        m = score.score_phase(phase, px, truth["phase"], truth["pixel_size_a"], region=region)
    except score.ScoreError as e:
        return {"status": f"not scored: {e}"}
    best = m.get("best_orientation", "identity")
    out = {"status": "ok", "pearson": m["pearson"], "scale_a": m["scale_a"], "frc_halfbit_a": m["frc_halfbit_a"],
           "frc_crossed": m["frc_crossed"], "scored_pixel_a": m["pixel_a"], "region_px": m["region_px"]}
    if best != "identity" and m["orientations"][best] > m["orientations"]["identity"] + 0.05:
        out["orientation_note"] = f"{best} correlates better ({m['orientations'][best]:.3f})"
    return out


# ------------------------------------------------------------------ verdicts and report
def verdicts(rows: list[dict[str, Any]]) -> None:
    """Per ptycli row: the best peer (highest pearson among peers that ran at least as many
    iterations), the time ratios to it, and whether issue 22's bar is met. The time bar is
    judged on CPU seconds: the benchmark machine is shared, so a wall clock measures the
    others' load as much as the code, and CPU time is the stricter test for ptycli (it runs
    two threads, whose wall time on an idle machine is below its CPU time, while the peers'
    numpy/torch runs here use about one core). The wall-time ratio, which the issue names,
    is stated beside it in the verdict, with a note where it would decide otherwise."""
    peers = [r for r in rows if r["code"] != "ptycli" and r.get("status") == "ok"]
    diverged = [r["code"] for r in rows
                if r["code"] != "ptycli" and "NaN" in str(r.get("status", "")) + str(r.get("detail", ""))]
    for r in rows:
        if r["code"] != "ptycli":
            continue
        if r.get("status") != "ok":
            r["verdict"] = "—"
            continue
        its = r.get("iterations") or 0
        comparable = [p for p in peers if (p.get("iterations") or 0) >= its]
        if not comparable:
            if peers:
                p = max(peers, key=lambda p: p["pearson"])
                r["verdict"] = (f"no peer ran {its} iterations (best: {p['code']} {p['pearson']:.3f} after "
                                f"{p.get('iterations')})")
            else:
                r["verdict"] = "no peer result"
            r["verdict"] += "".join(f"; {d} diverged" for d in diverged)
            continue
        best = max(comparable, key=lambda p: p["pearson"])
        r["best_peer"] = best["code"]
        r["wall_ratio"] = r["wall_s"] / best["wall_s"] if best.get("wall_s") else None
        r["cpu_ratio"] = r["cpu_s"] / best["cpu_s"] if best.get("cpu_s") else None
        r["verdict"] = verdict_text(r["pearson"] >= best["pearson"] + MARGIN, best["code"],
                                    r["cpu_ratio"], r["wall_ratio"])


def verdict_text(quality: bool, peer: str, cpu_ratio: float | None, wall_ratio: float | None) -> str:
    """'met (CPU 0.25, wall 0.18)' / 'not met: time > 1/3 (CPU 0.77, wall 0.09: wall <= 1/3)':
    met = correlation >= peer + MARGIN and CPU ratio <= TIME_FRACTION; the wall ratio is
    given beside it and flagged where it alone would decide the time bar the other way."""
    fast = cpu_ratio is not None and cpu_ratio <= TIME_FRACTION
    wall_fast = wall_ratio is not None and wall_ratio <= TIME_FRACTION
    ratios = f"CPU {fmt(cpu_ratio, '.2f')}, wall {fmt(wall_ratio, '.2f')}"
    if wall_ratio is not None and wall_fast != fast:
        ratios += ": wall ≤ 1/3" if wall_fast else ": wall > 1/3"
    failed = [w for w, ok in ((f"correlation < {peer} + {MARGIN}", quality), ("time > 1/3", fast)) if not ok]
    return ("met" if not failed else "not met: " + ", ".join(failed)) + f" ({ratios})"


def fmt(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def row_md(r: dict[str, Any]) -> str:
    label = r.get("recipe") or r.get("engine") or ""
    its = r.get("iterations")
    its_s = fmt(its, "d") if r["code"] == "ptycli" or not r.get("stopped_by_time_budget") \
        else f"{its}/{r.get('iterations_requested')} (stopped)"
    notes = [r["status"]] if r.get("status") not in (None, "ok") else []
    if notes and notes[0].startswith("failed") and "NaN" in r.get("detail", ""):
        notes = [f"diverged ({r['detail'][-80:]})"]
    notes += [r[k] for k in ("orientation_note",) if r.get(k)]
    if r.get("stopped_by_time_budget") and its and r.get("wall_s"):
        budget = f" (budget {r['max_wall_s']:g} s)" if r.get("max_wall_s") else ""
        notes.append(f"≈{r['wall_s'] * r['iterations_requested'] / its:.0f} s for {r['iterations_requested']} "
                     f"iterations{budget}")
    if r.get("convergence"):
        notes.append(f"error {r['convergence']}")
    if r.get("commit"):
        notes.append(f"commit {r['commit']}")
    if r.get("load_mean") is not None:
        notes.append(f"load {r['load_mean']:.1f} (start {r['load_start']:.1f}, end {r['load_avg']:.1f})")
    elif r.get("load_avg") is not None:
        notes.append(f"load {r['load_avg']:.1f} (at the end)")
    frc = fmt(r.get("frc_halfbit_a"), ".2f") + ("" if r.get("frc_crossed", True) else " (Nyquist)")
    return (f"| {r['code']} | {label} | {its_s} | {fmt(r.get('pearson'))} | {fmt(r.get('scale_a'), '.2f')} | "
            f"{frc} | {fmt(r.get('wall_s'), '.1f')} | {fmt(r.get('cpu_s'), '.1f')} | {fmt(r.get('cpu_ratio'), '.2f')} | {fmt(r.get('wall_ratio'), '.2f')} | "
            f"{r.get('verdict', '')} | {'; '.join(notes)} |")


HEADER = ("| code | recipe / engine | iterations | correlation | scale a | FRC half-bit (Å) | wall (s) | CPU (s) "
          "| CPU / best peer | wall / best peer | verdict | notes |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def budget_text(b: Any) -> str:
    if isinstance(b, dict):
        return ", ".join(f"{p} {'no limit' if s is None else f'{s:g} s'}" for p, s in b.items())
    return f"{b} s"


def git_commit() -> str:
    """HEAD, and whether ptycli/ has uncommitted changes (the tree is shared while it runs)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "ptycli"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return commit + ("+uncommitted ptycli changes" if dirty else "")


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": git_commit(), "ptycli_sources": ptycli_digest(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_report(results: dict[str, Any], out_md: Path) -> None:
    m = results["machine"]
    lines = ["# ptycli beside phaser and PtyRAD on the abTEM corpus (issue 22)", "",
             f"Machine: {m['cores']} cores ({m['cpu']}), shared with other work; {m['platform']}, Python "
             f"{m['python']}. ptycli commit {m['git_commit']} (sources {m['ptycli_sources']}); {m['date_utc']}; "
             f"threads {results['threads']} for every code.", "",
             "Made by `python benchmarks/corpus/run.py` (cached runs are reused; see its docstring). "
             "Scores by `benchmarks/corpus/score.py` on the central scanned region: correlation = Pearson of the "
             "slice-summed phase with the truth, scale a of truth ≈ a·recon + b (1 = quantitative), FRC half-bit "
             "resolution. Peers ran with their documented defaults (benchmarks/peers/README.md); `k/N (stopped)` = "
             "the peer passed the per-run wall-time budget its notes give (this report's runs: "
             f"{budget_text(results['peer_max_wall_s'])}; a reused row keeps its own), and the notes give the wall "
             "time that N iterations would take at its measured pace.", "",
             "**Verdict** (issue 22: correlation ≥ best peer + 0.02 after the same number of iterations, in at most "
             "1/3 of that peer's wall time on 2 cores). The best peer is the one with the highest correlation among "
             "those that ran at least as many iterations as the ptycli row. `met` = correlation ≥ that peer's + "
             f"{MARGIN} **and** ptycli's CPU seconds ≤ 1/3 of the peer's. Both time ratios are stated in the verdict, "
             "`(CPU c, wall w)`, and `wall ≤ 1/3` / `wall > 1/3` is added where the wall ratio alone would decide the "
             "time bar the other way. Why CPU decides: this machine is shared (other engineers' tests and "
             "benchmarks run beside these), so a wall clock measures their load as much as the code; ptycli runs "
             "two threads and the peers' numpy/torch runs here keep about one core busy, so on an idle machine "
             "ptycli's wall ratio would be lower than its CPU ratio: the CPU ratio is the stricter test. The wall "
             "ratio is honest only when both runs saw a similar load: every row's notes give the 1-minute load "
             "average (mean over the run, sampled every 5 s, with its start and end; older rows only the end), and "
             "a mean load above 2 (the core count) means its wall time was inflated by other work.", ""]
    summary = ["## Summary", "",
               "| set | recipe | ptycli correlation | best peer | peer iterations | peer correlation | peer CPU (s) "
               "| peer wall (s) | CPU / peer | wall / peer | verdict |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
    body = []
    for s in results["sets"]:
        body += [f"## {s['name']}", "", s.get("description", ""), "", HEADER]
        body += [row_md(r) for r in s["rows"]]
        body.append("")
        peer_by = {r["code"]: r for r in s["rows"] if r["code"] != "ptycli"}
        for r in s["rows"]:
            if r["code"] == "ptycli" and r.get("status") != "not available":
                p = peer_by.get(r.get("best_peer") or "", {})
                summary.append(f"| {s['name']} | {r['recipe']} | {fmt(r.get('pearson'))} | {r.get('best_peer', '—')} | "
                               f"{fmt(p.get('iterations'), 'd')} | {fmt(p.get('pearson'))} | "
                               f"{fmt(p.get('cpu_s'), '.1f')} | {fmt(p.get('wall_s'), '.1f')} | "
                               f"{fmt(r.get('cpu_ratio'), '.2f')} | {fmt(r.get('wall_ratio'), '.2f')} | "
                               f"{r.get('verdict') if r.get('status') == 'ok' else r.get('status')} |")
    out_md.write_text("\n".join(lines + summary + [""] + body) + "\n")


# ------------------------------------------------------------------ main
def parse_budgets(text: str) -> dict[str, float | None]:
    """'300' (every peer) or 'phaser=300,ptyrad=150' -> {peer: seconds or None (no limit)}."""
    if "=" not in text:
        return {p: float(text) or None for p in PEERS}
    out: dict[str, float | None] = {p: None for p in PEERS}
    for part in text.split(","):
        peer, _, sec = part.partition("=")
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r}; expected {', '.join(PEERS)}")
        out[peer] = float(sec) or None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", help="comma-separated set names (default: every complete set)")
    ap.add_argument("--iterations", type=int, help="total iterations of every run (default: each recipe's own)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers, '' for none")
    ap.add_argument("--recipes", help="comma-separated ptycli recipes (default: those that apply to each set)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-max-wall-s", default="phaser=300,ptyrad=150",
                    help="a peer stops after the iteration that passes this wall time [s]: one number for "
                         "every peer or PEER=S,PEER=S (0: no limit)")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="limit of any one command")
    ap.add_argument("--force", choices=("ptycli", "peers", "all"), help="rerun cached runs")
    ap.add_argument("--reuse", action="store_true",
                    help="take the recorded runs of a set although ptycli's sources, a peer script or a "
                         "budget changed since (each row keeps what it ran with)")
    ap.add_argument("--only", choices=("ptycli", "peers", "none"),
                    help="run only these rows: `ptycli` still shows the peers' recorded runs, `peers` leaves "
                         "ptycli out, `none` runs nothing (with --reuse: a report of every recorded run)")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_quality.md")
    args = ap.parse_args(argv)
    args.peer_list = [p for p in args.peers.split(",") if p]
    bad = [p for p in args.peer_list if p not in PEERS]
    if bad:
        ap.error(f"--peers: unknown peer(s) {', '.join(bad)}; expected some of {', '.join(PEERS)}")
    try:
        args.budgets = parse_budgets(args.peer_max_wall_s)
    except ValueError as e:
        ap.error(f"--peer-max-wall-s {args.peer_max_wall_s!r}: {e}")
    args.recipe_list = [r for r in args.recipes.split(",") if r] if args.recipes else None
    bad = [r for r in args.recipe_list or [] if r not in RECIPES]
    if bad:
        ap.error(f"--recipes: unknown recipe(s) {', '.join(bad)}; expected some of {', '.join(RECIPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sets = list_sets(args.corpus, args.sets.split(",") if args.sets else None)
    if not sets:
        print(f"run.py: error: no complete corpus set in {args.corpus}; make them with benchmarks/corpus/make.py",
              file=sys.stderr)
        return 4
    results: dict[str, Any] = {"machine": machine(), "threads": args.threads, "peer_max_wall_s": args.budgets,
                               "sets": []}
    for set_dir in sets:
        meta, truth = score.load_truth(set_dir)
        true = json.loads(str(truth["true"])) if "true" in truth else {}
        recipes = [r for r in applicable_recipes(meta, true) if not args.recipe_list or r in args.recipe_list]
        rows = [run_ptycli(set_dir, meta, r, args, truth) for r in recipes] if args.only != "peers" else []
        # peers: the most iterations any shipped recipe runs on this set (a stable cache key)
        peer_its = args.iterations or max(sum(recipe_stages(r) or [0]) for r in recipes)
        modes = MIXED_STATE_MODES if partially_coherent(true) else 1
        rows += [run_peer(p, set_dir, meta, peer_its, modes, args, truth) for p in args.peer_list]
        verdicts(rows)
        results["sets"].append({"name": set_dir.name, "description": meta.get("description", ""), "rows": rows})
        write_report(results, args.out)     # after every set: a long run leaves a useful report
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
