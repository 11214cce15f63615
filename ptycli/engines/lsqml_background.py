"""LSQ-ML's incoherent detector background (docs/recipes.md, "LSQ-ML's incoherent background").

The model intensity is I_j + B per pattern: the coherent Σ|Ψ_j|² plus an additive background
B ≥ 0 shared by every position (thermal diffuse scattering, dark counts), which the coherent
model cannot make. B is updated once per iteration, after the groups, by one Newton step per
pixel (or per detector ring, ``shape = "radial"``: TDS is radially symmetric and a ring pools
its pixels' counts) on the noise model's loss with the object and probe fixed:

    B ← max(0, B - Σ_j m ℓ'(I_j + B) / Σ_j m ℓ''(I_j + B))

ℓ is convex in B for the amplitude and Poisson models, so the step is well posed; the sums
are gathered while the groups run (I_j as each group's forward pass saw it). The exit-wave
updates then read ℓ'(I + B): χ = -½∇_Ψ L = -m ℓ'(I + B) Ψ (amplitude: Ψ sqrt(D/(I+B)) - Ψ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from . import noise

SHAPES = ("pixel", "radial")


class Background:
    """The estimate B (M, N, unshifted) and the current iteration's Newton sums."""

    def __init__(self, xp: Any, shape: tuple[int, int], dtype: Any, form: str = "radial",
                 start: Any = None):
        if form not in SHAPES:
            raise ValueError(f"background shape {form!r}: expected one of {', '.join(SHAPES)}")
        self.xp, self.form, self.dtype = xp, form, dtype
        self.value = xp.zeros(shape, dtype=dtype) if start is None else xp.astype(xp.asarray(start), dtype)
        # a state's non-zero background (a resumed run) is in the model from the first group
        self.started = start is not None and bool(xp.any(self.value > 0))
        self.g = xp.zeros(shape, dtype=xp.float64)
        self.h = xp.zeros(shape, dtype=xp.float64)
        self.iteration: int | None = None
        self.rings = _rings(shape) if form == "radial" else None

    def sums(self, I: Any, D: Any, model: str, mask: Any, eps: float | None) -> tuple[Any, Any]:  # noqa: E741
        """One part's (Σ_j m ℓ'(I_j + B), Σ_j m ℓ''(I_j + B)) per pixel (M, N)."""
        xp = self.xp
        total = I + self.value
        g = xp.sum(noise.dloss_dI(total, D, model, mask, eps), axis=0, dtype=xp.float64)
        h = xp.sum(noise.d2loss_dI2(total, D, model, mask, eps), axis=0, dtype=xp.float64)
        return g, h

    def add(self, g: Any, h: Any) -> None:
        self.g += g
        self.h += h

    def update(self, reduce: Any = None) -> None:
        """The Newton step from the sums gathered since the last update, then clear them.
        ``reduce``: the sum over data-parallel ranks (``allreduce_sum``), else this process's."""
        xp = self.xp
        g, h = (self.g, self.h) if reduce is None else (reduce(self.g), reduce(self.h))
        if self.rings is not None:
            labels, n = self.rings
            g = xp.asarray(np.bincount(labels, weights=backend.to_numpy(g).ravel(), minlength=n))
            h = xp.asarray(np.bincount(labels, weights=backend.to_numpy(h).ravel(), minlength=n))
        # h = 0 where no count was seen (Poisson, D = 0 everywhere): ℓ' > 0 there, B goes to 0
        step = xp.where(h > 0, g / xp.where(h > 0, h, 1.0), xp.where(g > 0, xp.inf, 0.0))
        if self.rings is not None:
            step = step[xp.asarray(self.rings[0])].reshape(self.value.shape)
        self.value = xp.astype(xp.clip(self.value - step, 0.0, None), self.dtype)
        self.started = True
        self.g[...] = 0
        self.h[...] = 0


def _rings(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """(ring index of each pixel (M·N,), ring count): |k| in detector pixels, rounded, DC at [0, 0]."""
    m, n = shape
    ky = np.fft.fftfreq(m) * m
    kx = np.fft.fftfreq(n) * n
    r = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int64).ravel()
    return r, int(r.max()) + 1
