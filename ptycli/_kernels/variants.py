"""Which compiled variant of the part kernels a call takes: the lean one, without the code the
process has not needed, or the full one (issue 25 item 4: a first run compiles what it uses).

Why: Numba compiles every line of a kernel, and every callee it names, whatever branch the run
takes. ``single_slice_part`` and ``multislice_part`` prune code before typing where an argument
is None (Numba's dead-branch pruning of a None argument: ``if pos is not None``): the position
terms (``pos``), the tilt terms (``tilt``), the single-slice in-place adjoint of the gradient
engine's parts (``in_place_ok``) and, in ``farfield``, LSQ-ML's Poisson step β
(``Noise.poisson``). A run that needs none of them compiles less on its first run (quick recipe
32-37 -> 23 CPU-s: benchmarks/RESULTS.md).

Each variant is a compile of its own, so a process takes two at most (three only for a
non-Poisson stage, then terms, then a Poisson stage): the first call's, with what that call needs
and what ``plan`` named; then, from the first call that needs more, the full one for every later
call (whose own flags, ``Wanted.positions`` ..., skip what that call does not want). A run that
refines positions only from a later iteration or stage (the single-slice recipe) compiles both,
unless the run calls ``plan`` before its first kernel with what it will need.
"""

from __future__ import annotations


KINDS = ("positions", "tilts", "in_place", "poisson")
_planned = dict.fromkeys(KINDS, False)
_on: dict[str, bool] | None = None  # the switches of the variant in use; None before the first call


def plan(**used: bool) -> None:
    """The run will need each ``kind=True`` (positions, tilts, in_place, poisson) at some stage:
    the first call's variant has it (one compile instead of two)."""
    global _on
    for kind, on in used.items():
        if kind not in _planned:
            raise ValueError(f"variants.plan: unknown kind {kind!r}; expected one of {list(KINDS)}")
        _planned[kind] = _planned[kind] or bool(on)
        if on and _on is not None and not _on[kind]:
            _on = {**_on, kind: True}


def choose(**wanted: bool) -> dict[str, bool]:
    """The switches of this call's variant ({kind: compiled in}), given what the call needs."""
    global _on
    if _on is None:
        _on = {kind: bool(wanted.get(kind)) or _planned[kind] for kind in KINDS}
    elif any(on and not _on[kind] for kind, on in wanted.items()):
        # every term from now on; the Poisson β only for a Poisson model (a stage's noise model
        # is fixed, and amplitude-then-Poisson recipes are rare)
        _on = {**dict.fromkeys(KINDS, True), "poisson": _on["poisson"] or bool(wanted.get("poisson"))}
    return _on


def reset() -> None:
    """No variant chosen, nothing planned (tests)."""
    global _on
    _on = None
    for kind in KINDS:
        _planned[kind] = False
