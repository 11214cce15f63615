"""L-BFGS engine with a strong-Wolfe line search (physics.md §6.5, Nocedal & Wright ch. 3, 7).

The variable is the stacked, scaled vector of every refined variable (engines/variables.py):
block z_v = x_v / s_v with s_P = rms|P_0| for the probe, sqrt(N_e/(M N)) for the
background's square root and 1 in each variable's unit otherwise (times the recipe's ``scale``), so all
blocks are O(1). ⟨a, b⟩ = Σ Re(conj(a) b) over complex blocks plus the real dot product.

Per ``update`` (one group; by default the group is every position, so f is the full-batch
loss): two-loop recursion with memory m and H0 = (sᵀy / yᵀy) I from the latest pair (so
m = 0 is gradient descent with Barzilai–Borwein steps, m = 1 is CG-like), then a line
search satisfying the strong Wolfe conditions, bracketing and zooming with cubic
interpolation, at most ``max_evaluations`` f+∇f evaluations. A trial with a non-finite
loss (e.g. Poisson I + ε_p ≤ 0) is rejected like one that increases f. The memory is
reset when the line search fails, when the set of refined variables changes, and when
anything else changed the variables since the last step (a constraint projection, drift
removal, position limits), detected by a checksum of the state. The f and ∇f of the
accepted point are kept, so an iteration costs one evaluation once the unit step is
accepted. Memory, the kept gradient and the checksum are checkpointed, so ``--resume``
continues exactly. Data-parallel, the Evaluator sums f and ∇f over the ranks, so every rank
runs the same line search and keeps the same memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend
from . import common, distributed
from .variables import HOST, VARIABLES, Evaluator, active_variables

SKIP_RTOL = 1e-10  # skip a pair when sᵀy ≤ SKIP_RTOL ‖s‖‖y‖
CHECKSUM_RTOL = 1e-6  # relative change of a state checksum that counts as "changed by someone else"


# ----------------------------------------------------------------------------- vectors
def dot(a: dict[str, Any], b: dict[str, Any]) -> float:
    total = 0.0
    for name, va in a.items():
        vb = b[name]
        if isinstance(va, np.ndarray) and not np.iscomplexobj(va):
            total += float(np.sum(va * vb, dtype=np.float64))
        else:
            xp = backend.namespace(va)
            total += backend.scalar(xp.sum(xp.real(xp.conj(va) * vb), dtype=xp.float64))
    return total


def axpy(alpha: float, x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    """alpha x + y (new arrays; dtypes kept)."""
    return {k: _cast(y[k] + alpha * x[k], y[k]) for k in y}


def scaled(alpha: float, x: dict[str, Any]) -> dict[str, Any]:
    return {k: _cast(alpha * v, v) for k, v in x.items()}


def _cast(value: Any, like: Any) -> Any:
    if isinstance(like, np.ndarray):
        return np.asarray(value, dtype=like.dtype)
    return backend.namespace(like).astype(value, like.dtype)


def max_abs(x: dict[str, Any]) -> float:
    out = 0.0
    for v in x.values():
        if isinstance(v, np.ndarray) and not np.iscomplexobj(v):
            out = max(out, float(np.max(np.abs(v))) if v.size else 0.0)
        else:
            xp = backend.namespace(v)
            out = max(out, backend.scalar(xp.max(xp.abs(v))))
    return out


# ----------------------------------------------------------------------------- memory
@dataclass
class Memory:
    """Curvature pairs and the last accepted point's f and ∇f for one group of positions."""

    names: tuple[str, ...]
    pairs: list[tuple[dict[str, Any], dict[str, Any], float]] = field(default_factory=list)  # (s, y, 1/yᵀs)
    gamma: float | None = None  # sᵀy / yᵀy of the latest accepted pair (H0 scaling)
    block_gamma: dict[str, float] = field(default_factory=dict)  # the same per variable block
    f: float | None = None
    g: dict[str, Any] | None = None
    checksum: np.ndarray | None = None

    def direction(self, g: dict[str, Any]) -> dict[str, Any]:
        """-H g by the two-loop recursion."""
        q = dict(g)
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * dot(s, q)
            alphas.append(a)
            q = axpy(-a, y, q)
        r = self.h0(q)
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            b = rho * dot(y, r)
            r = axpy(a - b, s, r)
        return scaled(-1.0, r)

    def h0(self, q: dict[str, Any]) -> dict[str, Any]:
        """Initial inverse Hessian: sᵀy/yᵀy per variable block (the scalar one for a block
        whose pair has no positive curvature). Blocks in different units (an object pixel,
        a tilt in mrad) then get their own step size, which one scalar cannot give."""
        default = self.gamma if self.gamma is not None else 1.0
        return {k: _cast(self.block_gamma.get(k, default) * v, v) for k, v in q.items()}

    def push(self, s: dict[str, Any], y: dict[str, Any], m: int) -> None:
        sy, yy, ss = dot(s, y), dot(y, y), dot(s, s)
        if sy <= SKIP_RTOL * math.sqrt(max(ss * yy, 0.0)) or yy <= 0:
            return
        self.gamma = sy / yy
        self.block_gamma = {}
        for k, sk in s.items():
            syk, yyk = dot({k: sk}, {k: y[k]}), dot({k: y[k]}, {k: y[k]})
            if syk > 0 and yyk > 0:
                self.block_gamma[k] = syk / yyk
        if m > 0:
            self.pairs.append((s, y, 1.0 / sy))
            del self.pairs[:-m]


# ----------------------------------------------------------------------------- line search
@dataclass
class Trial:
    alpha: float
    f: float
    d: float  # directional derivative ∇f(x + αp)ᵀp
    payload: Any = None


def _cubic(a: Trial, b: Trial) -> float | None:
    """Minimiser of the cubic through (α, f, f') at a and b (Nocedal & Wright eq. 3.59)."""
    if not (math.isfinite(a.f) and math.isfinite(b.f) and math.isfinite(a.d) and math.isfinite(b.d)):
        return None
    d1 = a.d + b.d - 3 * (a.f - b.f) / (a.alpha - b.alpha)
    disc = d1 * d1 - a.d * b.d
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b.alpha - a.alpha)
    denom = b.d - a.d + 2 * d2
    if denom == 0:
        return None
    return b.alpha - (b.alpha - a.alpha) * (b.d + d2 - d1) / denom


def strong_wolfe(phi: Callable[[float], Trial], f0: float, d0: float, alpha1: float, *, c1: float, c2: float,
                 max_evals: int) -> tuple[Trial | None, int, bool]:
    """(accepted trial or the best sufficient-decrease point or None, evaluations, success)."""
    prev = Trial(0.0, f0, d0)
    alpha, n = alpha1, 0
    while n < max_evals:
        t = phi(alpha)
        n += 1
        if not math.isfinite(t.f) or t.f > f0 + c1 * alpha * d0 or (n > 1 and t.f >= prev.f):
            return _zoom(phi, prev, t, f0, d0, c1, c2, max_evals - n, n)
        if abs(t.d) <= -c2 * d0:
            return t, n, True
        if t.d >= 0:
            return _zoom(phi, t, prev, f0, d0, c1, c2, max_evals - n, n)
        prev, alpha = t, 2.0 * alpha
    return (prev if prev.alpha > 0 else None), n, False


def _zoom(phi: Callable[[float], Trial], lo: Trial, hi: Trial, f0: float, d0: float, c1: float, c2: float,
          budget: int, n: int) -> tuple[Trial | None, int, bool]:
    for _ in range(max(budget, 0)):
        left, right = sorted((lo.alpha, hi.alpha))
        width = right - left
        guess = _cubic(lo, hi)
        if guess is None or not (left + 0.1 * width <= guess <= right - 0.1 * width):
            guess = 0.5 * (left + right)
        t = phi(guess)
        n += 1
        if not math.isfinite(t.f) or t.f > f0 + c1 * guess * d0 or t.f >= lo.f:
            hi = t
            continue
        if abs(t.d) <= -c2 * d0:
            return t, n, True
        if t.d * (hi.alpha - lo.alpha) >= 0:
            hi = lo
        lo = t
    return (lo if lo.alpha > 0 else None), n, False


# ----------------------------------------------------------------------------- engine
class LbfgsEngine(common.EngineBase):
    # data may come as data.Rows (common.EngineBase): the compiled evaluations read the frames
    # in place; a gathered copy of every pattern per update was ~1/3 of full case A's peak RSS
    reads_rows = True

    def __init__(self, params: Any, ctx: common.RunContext, state: Any):
        super().__init__(params, ctx, state)
        self.ev = Evaluator(params, ctx, state)
        m, n = state.detector_shape  # the background lives on detector pixels, not the U·M window
        self.scales = {name: getattr(params.scale, name) for name in VARIABLES}
        self.scales["probe"] *= self.ev.probe_scale
        self.scales["background"] *= math.sqrt(max(ctx.n_e / (m * n), 1e-12))
        self.memory: dict[str, Memory] = {}
        self.line_search_failures = 0

    # -------------------------------------------------------------- one step
    def update(self, state: Any, idx: np.ndarray, data: Any, it: int) -> Any:
        names = active_variables(self.params.refine, it)
        if not names:
            return self.ev.evaluate(state, {}, idx, data, it, chunk=self.params.chunk)[0]
        key = _group_key(idx, distributed.comm_of(self.ctx))
        x = self.ev.pack(state, names)
        mem = self.memory.get(key)
        if mem is None or mem.names != names or mem.g is None or not self._same(mem.checksum, state):
            mem = self.memory[key] = Memory(names)
        z = self._to_z(x)
        evaluate = lambda zz: self._fg(state, zz, idx, data, it)
        if mem.g is None:
            mem.f, mem.g, _ = evaluate(z)
        p = mem.direction(mem.g)
        d0 = dot(mem.g, p)
        if not d0 < 0:  # not a descent direction (bad curvature): restart from steepest descent
            mem.pairs.clear()
            p = scaled(-1.0, mem.h0(mem.g))
            d0 = dot(mem.g, p)
        alpha1 = 1.0 if mem.gamma is not None else 1.0 / max(max_abs(mem.g), 1e-30)

        def phi(alpha: float) -> Trial:
            zt = axpy(alpha, p, z)
            f, g, data_loss = evaluate(zt)
            return Trial(alpha, f, dot(g, p) if math.isfinite(f) else math.nan, (zt, g, data_loss))

        best, _, ok = strong_wolfe(phi, mem.f, d0, alpha1, c1=self.params.c1, c2=self.params.c2,
                                   max_evals=self.params.max_evaluations)
        if best is None:  # no decrease at all: keep x, forget the curvature, try again next time
            self.line_search_failures += 1
            self.memory[key] = Memory(names)
            return mem.f
        zt, g_new, data_loss = best.payload
        s = {k: zt[k] - z[k] for k in z}
        y = {k: g_new[k] - mem.g[k] for k in z}
        if ok:
            mem.push(s, y, self.params.history)
        else:
            self.line_search_failures += 1
            mem.pairs.clear()  # the H0 scaling of the last good pair is kept: no tiny restart step
        mem.f, mem.g = best.f, g_new
        self.ev.unpack(state, self._from_z(zt))
        mem.checksum = checksum(state)
        return data_loss

    def _fg(self, state: Any, z: dict[str, Any], idx: np.ndarray, data: Any, it: int) -> tuple[float, dict, float]:
        x = self._from_z(z)
        data_loss, total, grads = self.ev.evaluate(state, x, idx, data, it, chunk=self.params.chunk,
                                                   reg_fraction=1.0)
        return total, self._grad_z(grads), data_loss

    # -------------------------------------------------------------- scaling
    def _to_z(self, x: dict[str, Any]) -> dict[str, Any]:
        return {k: _cast(v / self.scales[k], v) for k, v in x.items()}

    def _from_z(self, z: dict[str, Any]) -> dict[str, Any]:
        return {k: _cast(v * self.scales[k], v) for k, v in z.items()}

    def _grad_z(self, g: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in g.items():
            if k in HOST:
                out[k] = np.asarray(v, dtype=np.float64) * self.scales[k]
            else:
                out[k] = v * self.scales[k]
        return out

    def _same(self, saved: np.ndarray | None, state: Any) -> bool:
        if saved is None:
            return False
        now = checksum(state)
        return now.shape == saved.shape and bool(np.all(np.abs(now - saved) <= CHECKSUM_RTOL * (np.abs(saved) + 1e-30)))

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"failures": np.asarray(self.line_search_failures),
                               "n_evals": np.asarray(self.ev.n_evals),
                               "probe_scale": np.asarray(self.ev.probe_scale)}
        for key, mem in self.memory.items():
            base = f"mem/{key}"
            out[f"{base}/names"] = np.asarray([VARIABLES.index(n) for n in mem.names], dtype=np.int64)
            out[f"{base}/scalars"] = np.asarray([np.nan if mem.gamma is None else mem.gamma,
                                                 np.nan if mem.f is None else mem.f, len(mem.pairs)])
            if mem.checksum is not None:
                out[f"{base}/checksum"] = mem.checksum
            out[f"{base}/block_gamma"] = np.asarray([mem.block_gamma.get(n, np.nan) for n in mem.names])
            for name, v in (mem.g or {}).items():
                out[f"{base}/g/{name}"] = backend.to_numpy(v)
            for i, (s, y, rho) in enumerate(mem.pairs):
                for name in s:
                    out[f"{base}/s{i}/{name}"] = backend.to_numpy(s[name])
                    out[f"{base}/y{i}/{name}"] = backend.to_numpy(y[name])
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.line_search_failures = int(np.asarray(d.get("failures", 0)))
        self.ev.n_evals = float(np.asarray(d.get("n_evals", 0.0)))
        if "probe_scale" in d:  # the scale of the run's start, not of the resumed state's probe
            self.scales["probe"] *= float(np.asarray(d["probe_scale"])) / self.ev.probe_scale
            self.ev.probe_scale = float(np.asarray(d["probe_scale"]))
        keys = {k.split("/")[1] for k in d if k.startswith("mem/")}
        self.memory = {key: self._load_memory(d, f"mem/{key}") for key in keys}

    def _load_memory(self, d: dict[str, Any], base: str) -> Memory:
        names = tuple(VARIABLES[i] for i in np.asarray(d[f"{base}/names"]).tolist())
        gamma, f, n_pairs = np.asarray(d[f"{base}/scalars"]).tolist()
        dev = lambda name, v: np.asarray(v) if name in HOST else backend.to_device(v, self.ctx.xp)
        block = lambda prefix: {n: dev(n, d[f"{base}/{prefix}/{n}"]) for n in names}
        mem = Memory(names, gamma=None if math.isnan(gamma) else gamma, f=None if math.isnan(f) else f,
                     checksum=np.asarray(d[f"{base}/checksum"]) if f"{base}/checksum" in d else None)
        mem.g = block("g") if f"{base}/g/{names[0]}" in d else None
        bg = np.asarray(d.get(f"{base}/block_gamma", np.full(len(names), np.nan))).tolist()
        mem.block_gamma = {n: v for n, v in zip(names, bg) if not math.isnan(v)}
        for i in range(int(n_pairs)):
            s, y = block(f"s{i}"), block(f"y{i}")
            mem.pairs.append((s, y, 1.0 / dot(s, y)))
        return mem


def _group_key(idx: np.ndarray, comm: Any) -> str:
    """The memory key of a group: first index and size of the whole group (not of this
    rank's part), so every rank count, and a resume with another one, finds the same memory."""
    if comm.size == 1:
        return f"{int(idx[0])}_{len(idx)}"
    parts = comm.allgather((int(idx.min()), len(idx)))
    return f"{min(p[0] for p in parts)}_{sum(p[1] for p in parts)}"


def checksum(state: Any) -> np.ndarray:
    """Float64 sums of every refinable array (detects changes made outside the engine)."""
    parts: list[float] = []
    for value in (state.object, state.probe, state.background):
        if value is None:
            continue
        xp = backend.namespace(value)
        parts += [backend.scalar(xp.sum(xp.real(value), dtype=xp.float64)),
                  backend.scalar(xp.sum(xp.abs(value) ** 2, dtype=xp.float64))]
        if backend.is_complex(value):
            parts.append(backend.scalar(xp.sum(xp.imag(value), dtype=xp.float64)))
    for value in (state.positions, state.tilts, state.beam_current, state.slice_thickness):
        if value is not None:
            host = np.asarray(backend.to_numpy(value), dtype=np.float64)
            parts += [float(host.sum()), float((host * host).sum())]
    parts.append(float(state.detector_blur_px))
    parts += [float(v) for _, v in sorted(state.aberrations.items())]
    return np.asarray(parts, dtype=np.float64)
