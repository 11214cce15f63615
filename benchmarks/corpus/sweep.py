"""Divergence sweep (issue 22): every corpus set x every shipped recipe (+ `auto`).

    python benchmarks/corpus/sweep.py [--corpus DIR] [--work DIR] [--sets a,b] [--recipes a,b]
        [--jobs 2] [--iterations N] [--timeout-s S] [--deadline HH:MM] [--stop HH:MM]
        [--out benchmarks/RESULTS_divergence] [--note TEXT] [--merge A.json B.json ...]

Per set, `ptycli preprocess` and `ptycli init` run once with the arguments of the set's
meta.json (`ptycli_preprocess_args`, `ptycli_init_args`) and are cached in the work dir
(default ~/.cache/ptycli/sweep/<set>/); the mixed-state recipe gets a second state made with
`init --probe-modes 4` (its comment). Multislice recipes run on the thin sets too, on the state
the set's meta gives: they must not diverge either. Each run is
`nice -n 10 ptycli -q reconstruct DATA STATE --recipe R --json` with stderr captured, `--jobs` at
a time (one compute thread each); recorded: exit code, whether "RuntimeWarning" reached stderr,
the exact RuntimeWarning and `error:` lines (the whole stderr in WORK/<set>/recon-<recipe>.stderr.txt),
the back-offs (the store's history attrs), final loss, Pearson correlation and scale from
score.py, wall time. `--iterations N` caps only the recipes whose default total exceeds N (the
table says so); `--deadline` leaves later runs "not run" rather than overrunning, and `--stop`
ends a run still going at that time (recorded as "stopped"). Cheapest sets
and recipes run first. Results: OUT.json and OUT.md (a set x recipe table of exit code / corr);
`--note` adds to the table's header line (e.g. the commit the runs used). `--merge` runs nothing:
it writes OUT from the runs of several sweeps' JSON files (a sweep split in parts: one table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import score  # noqa: E402  (benchmarks/corpus/score.py)

REPO = Path(__file__).resolve().parents[2]
# cheapest first (single-slice engines, then the multi-stage and multislice ones)
RECIPE_ORDER = ("quick", "epie", "lsqml", "gradient", "lbfgs", "low-dose", "single-slice", "auto", "mixed-state",
                "multislice", "tilted-multislice")
MIXED_STATE_MODES = 4
NUMERICAL = 6  # ptycli/errors.py ExitCode.NUMERICAL


def recipe_rank(recipe: str) -> int:
    """Where ``recipe`` runs (and stands in the table): RECIPE_ORDER, others after it."""
    return RECIPE_ORDER.index(recipe) if recipe in RECIPE_ORDER else len(RECIPE_ORDER)


def shipped_recipes() -> list[str]:
    names = {p.stem for p in (REPO / "recipes").glob("*.toml")} | {"auto"}
    return sorted(names, key=lambda n: (recipe_rank(n), n))


def default_iterations(recipe: str) -> int | None:
    """The recipe's total iterations (None for `auto`, whose recipe depends on the data)."""
    path = REPO / "recipes" / f"{recipe}.toml"
    if not path.exists():
        return None
    return sum(int(s.get("iterations", 0)) for s in tomllib.loads(path.read_text()).get("stage", []))


def set_cost(set_dir: Path) -> float:
    """Frames x detector pixels x slices: the order the sets run in."""
    meta = json.loads((set_dir / "meta.json").read_text())
    args = [str(a) for a in meta.get("ptycli_init_args", [])]
    slices = int(args[args.index("--slices") + 1]) if "--slices" in args else 1
    return float(np.prod(meta["scan_shape"]) * np.prod(meta["detector_shape"]) * slices)


def thread_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PTYCLI_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # --jobs runs side by side on the cores
    return env


def ptycli_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "ptycli"
    return ["nice", "-n", "10", str(exe) if exe.exists() else "ptycli"]


class Prepared:
    """The set's data store and initial states, made once (guarded: two jobs may need them)."""

    def __init__(self, set_dir: Path, work: Path) -> None:
        self.set_dir, self.dir = set_dir, work / set_dir.name
        self.meta = json.loads((set_dir / "meta.json").read_text())
        self.lock = threading.Lock()

    def _make(self, out: Path, cmd: list[str]) -> str | None:
        """Run ``cmd`` (writing ``out``) unless ``out`` was made by the same command; an error line or None."""
        stamp = out.with_suffix(".cmd")
        if out.exists() and stamp.exists() and stamp.read_text() == " ".join(cmd[3:]):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([*ptycli_cmd(), *cmd, "--overwrite"], env=thread_env(), capture_output=True, text=True)
        if r.returncode != 0:
            return f"{cmd[0]} failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:] or ''}"
        stamp.write_text(" ".join(cmd[3:]))
        return None

    def inputs(self, recipe: str) -> tuple[Path, Path] | str:
        """(data store, state store) for ``recipe``, or why they could not be made."""
        data, init = self.dir / "data.zarr", self.dir / "init.zarr"
        args = [str(a) for a in self.meta.get("ptycli_init_args", [])]
        with self.lock:
            err = self._make(data, ["preprocess", str(self.set_dir / "data.npy"), "-o", str(data),
                                    *map(str, self.meta["ptycli_preprocess_args"])])
            if err is None and recipe == "mixed-state":
                init = self.dir / "init-modes.zarr"
                err = self._make(init, ["init", str(data), "-o", str(init), *args,
                                        "--probe-modes", str(MIXED_STATE_MODES)])
            elif err is None:
                err = self._make(init, ["init", str(data), "-o", str(init), *args])
        return err if err is not None else (data, init)


def backoffs(store: Path) -> list[dict[str, Any]]:
    import zarr
    try:
        hist = zarr.open_group(str(store), mode="r")["history"].attrs.get("history", {})
    except (KeyError, FileNotFoundError, ValueError):
        return []
    return list(hist.get("backoff", []))


def notable_lines(stderr: str) -> list[str]:
    """The lines of a run's stderr the lead must see verbatim: each RuntimeWarning with the
    source line Python prints after it, and ptycli's `error:`/`warning:` lines (which name the
    stage and iteration)."""
    lines = stderr.splitlines()
    out: list[str] = []
    for i, ln in enumerate(lines):
        if "RuntimeWarning" in ln:
            out.append(ln.strip() + (f" | {lines[i + 1].strip()}" if i + 1 < len(lines) else ""))
        elif ln.lstrip().lower().removeprefix("ptycli: ").startswith(("error:", "warning:")):  # the CLI's prefix
            out.append(ln.strip())
    return out


def hhmm_utc(text: str) -> float:
    """'HH:MM' (UTC, today) as a timestamp."""
    hh, mm = (int(v) for v in text.split(":"))
    return dt.datetime.now(dt.timezone.utc).replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()


def run_one(prep: Prepared, recipe: str, cap: int | None, timeout_s: float, deadline: float | None,
            stop: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"set": prep.set_dir.name, "recipe": recipe, "default_iterations": default_iterations(recipe)}
    if deadline is not None and time.time() > deadline:
        return dict(rec, status="not run (deadline)")
    made = prep.inputs(recipe)
    if isinstance(made, str):
        return dict(rec, status=made)
    data, state = made
    out = prep.dir / f"recon-{recipe}.zarr"
    for stale in (out.with_name(out.name + ".partial"), out.with_name(out.name + ".lock")):
        # an interrupted sweep's checkpoint: a sweep run always starts over (else exit 5)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    cmd = [*ptycli_cmd(), "-q", "reconstruct", str(data), str(state), "--recipe", recipe, "-o", str(out), "--json",
           "--overwrite"]
    default = rec["default_iterations"]
    if cap is not None and (default is None or default > cap):
        cmd += ["--iterations", str(cap)]
        rec["iterations"] = cap
    else:
        rec["iterations"] = default
    t0 = time.time()
    limit, stopped = timeout_s, False
    if stop is not None and stop - t0 < timeout_s:
        limit, stopped = max(stop - t0, 1.0), True
    try:
        r = subprocess.run(cmd, env=thread_env(), capture_output=True, text=True, timeout=limit)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout = None, ""
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    out.with_name(out.name + ".stderr.txt").write_text(stderr)
    rec.update(wall_s=round(time.time() - t0, 1), exit=rc, runtime_warning="RuntimeWarning" in stderr,
               stderr_tail=" / ".join(ln for ln in stderr.strip().splitlines()[-2:])[-300:],
               stderr_lines=notable_lines(stderr))
    if rc is None:
        return dict(rec, status="stopped (--stop)" if stopped else f"timeout after {timeout_s:.0f} s")
    try:
        doc = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    rec.update(final_loss=doc.get("final_loss"), iterations_run=doc.get("iterations"), backoff=backoffs(out))
    if rc != 0:
        return dict(rec, status=f"exit {rc}")
    try:
        _, truth = score.load_truth(prep.set_dir)
        phase, px, region = score.read_recon(out, None, prep.meta)
        m = score.score_phase(phase, px, truth["phase"], truth["pixel_size_a"], region=region)
        rec.update(pearson=m["pearson"], scale_a=m["scale_a"], status="ok")
    except score.ScoreError as e:
        rec["status"] = f"ok, not scored: {e}"
    return rec


def cell(r: dict[str, Any]) -> str:
    if r.get("exit") is None:
        status = str(r.get("status", ""))
        return "timeout" if status.startswith("timeout") else "stopped" if status.startswith("stopped") else "—"
    corr = f" / {r['pearson']:.2f}" if r.get("pearson") is not None else ""
    flags = ("W" if r.get("runtime_warning") else "") + (f"b{len(r['backoff'])}" if r.get("backoff") else "")
    its = f" @{r['iterations']}" if r.get("iterations") is not None else ""
    return f"{r['exit']}{corr}{its}" + (f" ({flags})" if flags else "")


def merged_runs(parts: list[Path], corpus: Path) -> tuple[list[dict[str, Any]], str]:
    """The runs of several sweeps' OUT.json files (a later file's run of a pair replaces an earlier
    one, unless it did not finish and the earlier did), cheapest set first, and a note naming each
    file's own note."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    notes = []
    for part in parts:
        doc = json.loads(part.read_text())
        notes.append(f"{part.stem}: {doc['note']}")
        for r in doc["runs"]:
            earlier = runs.get((r["set"], r["recipe"]))
            if r.get("exit") is not None or earlier is None or earlier.get("exit") is None:
                runs[(r["set"], r["recipe"])] = r

    def cost(name: str) -> float:
        return set_cost(corpus / name) if (corpus / name / "meta.json").exists() else float("inf")

    order = sorted(runs.values(), key=lambda r: (cost(r["set"]), r["set"], recipe_rank(r["recipe"])))
    return order, f"{len(parts)} sweeps merged; " + "; ".join(notes)


def write_results(results: list[dict[str, Any]], out: Path, note: str) -> str:
    ran = [r for r in results if r.get("exit") is not None]
    div = sum(r["exit"] == NUMERICAL for r in ran)
    warn = sum(bool(r.get("runtime_warning")) for r in ran)
    other = sum(r["exit"] not in (0, NUMERICAL) for r in ran)
    summary = (f"{len(ran)} runs, {div} divergences (exit 6), {warn} with RuntimeWarnings"
               f" ({other} other non-zero exits, {len(results) - len(ran)} not finished)")
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "note": note, "runs": results}, indent=1,
                                                   default=str) + "\n")
    sets = list(dict.fromkeys(r["set"] for r in results))
    recipes = sorted(dict.fromkeys(r["recipe"] for r in results), key=recipe_rank)
    by = {(r["set"], r["recipe"]): r for r in results}
    lines = ["# Divergence sweep: corpus x shipped recipes (issue 22)", "",
             f"Made by `python benchmarks/corpus/sweep.py` ({note}). Cell: exit code / Pearson correlation "
             "of the slice-summed phase with the truth (score.py) @ iterations run; W: a RuntimeWarning reached stderr; "
             "bN: N back-offs (step retries); timeout/stopped/—: did not finish (its time limit / `--stop`) / "
             "not run.", "",
             f"**{summary}**", "", "| set | " + " | ".join(recipes) + " |", "|---" * (len(recipes) + 1) + "|"]
    for s in sets:
        lines.append(f"| {s} | " + " | ".join(cell(by[(s, rc)]) if (s, rc) in by else "" for rc in recipes) + " |")
    # wall time beside the verdict: the cost of a clean run is what caps the next sweep
    lines += ["", "Wall time (s, one run at a time with `--jobs 1`, else side by side):", "",
              "| set | " + " | ".join(recipes) + " |", "|---" * (len(recipes) + 1) + "|"]
    for s in sets:
        lines.append(f"| {s} | " + " | ".join(str(by[(s, rc)].get("wall_s") or "") if (s, rc) in by else ""
                                              for rc in recipes) + " |")
    lines += ["", "Iterations run (the recipe's default unless capped with `--iterations`):", "",
              "| recipe | default | iterations |", "|---|---|---|"]
    for rc in recipes:
        its = sorted({r.get("iterations") for r in results if r["recipe"] == rc and r.get("iterations") is not None})
        default = default_iterations(rc)
        lines.append(f"| {rc} | {default if default is not None else 'data-dependent'} | "
                     f"{', '.join(map(str, its)) or '—'} |")
    bad = [r for r in results if r.get("exit") not in (0, None) or r.get("runtime_warning") or
           str(r.get("status", "")).startswith(("timeout", "stopped", "preprocess", "init"))]
    if bad:
        lines += ["", "Runs that did not end cleanly:", ""]
        for r in bad:
            lines.append(f"- {r['set']} / {r['recipe']}: {r.get('status')}; {r.get('stderr_tail', '')}")
            lines += [f"  - `{ln}`" for ln in r.get("stderr_lines", [])]
    held = [r for r in results if r.get("backoff")]
    if held:  # a non-finite loss that a back-off held is a near-divergence the engine owner must see
        lines += ["", "Back-offs (a rising or non-finite loss; the iteration retried with smaller steps):", ""]
        lines += [f"- {r['set']} / {r['recipe']}: " + "; ".join(
            f"stage {b.get('stage')} iteration {b.get('iteration')}: {b.get('reason')} (steps x {b.get('scale')})"
            for b in r["backoff"]) for r in held]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache/ptycli/corpus")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/ptycli/sweep")
    ap.add_argument("--sets", help="comma-separated set names (default: all)")
    ap.add_argument("--recipes", help="comma-separated recipes (default: every recipes/*.toml and auto)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--iterations", type=int, help="cap for the recipes whose default total exceeds it")
    ap.add_argument("--timeout-s", type=float, default=1800.0)
    ap.add_argument("--deadline", help="HH:MM UTC after which no run starts")
    ap.add_argument("--stop", help="HH:MM UTC at which a run still going is ended (recorded as stopped)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_divergence")
    ap.add_argument("--keep", action="store_true",
                    help="keep the runs of OUT.json that ended with exit 0 or 6 (their own iterations); run the others")
    ap.add_argument("--report", action="store_true", help="only rewrite OUT.md from OUT.json")
    ap.add_argument("--note", help="added to the table's header line (e.g. the commit the runs used)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="run nothing: write OUT from the runs of these sweeps' OUT.json files")
    args = ap.parse_args(argv)
    if args.merge:
        runs, note = merged_runs(args.merge, args.corpus)
        print(write_results(runs, args.out, note + (f"; {args.note}" if args.note else "")))
        return 0
    if args.report:
        doc = json.loads(args.out.with_suffix(".json").read_text())
        print(write_results(doc["runs"], args.out, doc["note"]))
        return 0
    if not args.corpus.is_dir():
        print(f"sweep.py: error: --corpus {args.corpus}: not a folder; expected the corpus made by make.py",
              file=sys.stderr)
        return 4
    wanted = set(args.sets.split(",")) if args.sets else None
    sets = sorted((d for d in args.corpus.iterdir() if (d / "meta.json").exists() and (wanted is None or d.name in wanted)),
                  key=set_cost)
    recipes = args.recipes.split(",") if args.recipes else shipped_recipes()
    deadline = hhmm_utc(args.deadline) if args.deadline else None
    stop = hhmm_utc(args.stop) if args.stop else None
    preps = {s.name: Prepared(s, args.work) for s in sets}
    # recipe-major: every set gets the cheap recipes before any set gets the dear ones
    pairs = [(s.name, r) for r in recipes for s in sets]
    results: list[dict[str, Any]] = []
    if args.keep and args.out.with_suffix(".json").exists():
        old = json.loads(args.out.with_suffix(".json").read_text())["runs"]
        results = [r for r in old if r.get("exit") in (0, NUMERICAL) and (r["set"], r["recipe"]) in pairs]
        done = {(r["set"], r["recipe"]) for r in results}
        todo = [pr for pr in pairs if pr not in done]
    else:
        todo = pairs
    note = f"{len(sets)} sets, {len(recipes)} recipes, {args.jobs} runs at a time, 1 thread each"
    if args.iterations:
        note += f", iterations capped at {args.iterations}"
    if args.note:
        note += f", {args.note}"
    if args.keep:
        note += " (runs kept from an earlier sweep: their caps in the iterations table)"
    lock = threading.Lock()

    def job(pair: tuple[str, str]) -> None:
        r = run_one(preps[pair[0]], pair[1], args.iterations, args.timeout_s, deadline, stop)
        with lock:
            results.append(r)
            print(f"{r['set']:20s} {r['recipe']:18s} exit {r.get('exit')} warn {r.get('runtime_warning')} "
                  f"corr {r.get('pearson')} {r.get('wall_s')} s {r.get('status')}", flush=True)
            write_results(sorted(results, key=lambda x: pairs.index((x["set"], x["recipe"]))), args.out, note)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(job, todo))
    print(write_results(sorted(results, key=lambda x: pairs.index((x["set"], x["recipe"]))), args.out, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
