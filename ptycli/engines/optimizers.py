"""First-order optimisers on complex or real arrays (physics.md §6.4).

Real and imaginary parts are independent parameters (PyTorch ``view_as_real`` parity).
Each optimiser keeps one slot per variable name; ``state_dict`` / ``load_state_dict``
move that state to and from the host for checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import backend, parallel
from . import primitives


def _split(z: Any) -> tuple[Any, Any]:
    xp = backend.namespace(z)
    if backend.is_complex(z):
        return xp.real(z), xp.imag(z)
    return z, None


class _Slotted:
    """Per-variable optimiser state (``slots``), reset and checkpointed the same way."""

    slots: dict[str, dict[str, Any]]

    def reset(self, name: str | None = None) -> None:
        self.slots.clear() if name is None else self.slots.pop(name, None)

    def state_dict(self) -> dict[str, Any]:
        return _host_slots(self.slots)

    def load_state_dict(self, state: dict[str, Any], xp: Any) -> None:
        self.slots = _device_slots(state, xp)


class Adam(_Slotted):
    """z <- z - lr * m_hat / (sqrt(v_hat) + eps), per real component."""

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.slots: dict[str, dict[str, Any]] = {}

    def kernel_step(self, name: str, z: Any, lr: float) -> tuple[tuple[Any, ...], Callable[[], None]] | None:
        """The step of ``z`` as arguments for a compiled kernel that makes the gradient itself
        and steps with ``_kernels.adam``'s formula (``_kernels.probe_tail``): (z, m, v_re,
        v_im, b1, b2, c1, c2, eps, lr, z_out), and ``commit`` to call once the kernel has
        run (it counts the step; the kernel updated the moments in place). None where the
        fused kernel does not apply: the caller then takes ``step``."""
        xp = backend.namespace(z)
        k = backend.kernels(xp)
        if k is None or not backend.is_complex(z) or not z.flags.c_contiguous:
            return None
        slot = self.slots.get(name) or _new_slot(z, z)  # the gradient will have z's dtype
        if not _fused_applies(z, z, slot):
            return None
        t = slot["t"] + 1
        consts = _adam_constants(k, z, self.beta1, self.beta2, self.eps, lr, t)

        def commit() -> None:
            slot["t"] = t
            self.slots[name] = slot

        return (z, slot["m"], slot["v_re"], slot["v_im"], *consts, k.empty(z.shape, z.dtype, aligned=True)), commit

    def step(self, name: str, z: Any, grad: Any, lr: float, region: tuple[slice, slice] | None = None,
             more: Any = None) -> Any:
        """One step of ``z`` for ``grad``; with ``region`` = (rows, columns) of z's last two
        axes, ``grad`` holds the gradient there only and is zero elsewhere. ``more``: a second
        partial gradient (another part of the group), added to ``grad``; the fused kernel
        reads both instead of a sum made first."""
        if more is not None and (region is not None or not _fused_applies(z, more, self.slots.get(name))):
            grad, more = grad + more, None
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = _new_slot(z, grad)
        b1, b2 = self.beta1, self.beta2
        slot["t"] += 1
        t = slot["t"]
        if region is not None:
            fused = _fused_adam_region(z, grad, region, slot, b1, b2, self.eps, lr, t)
            if fused is not None:
                return fused
            grad = embed(z, grad, region)
        fused = _fused_adam(z, grad, more, slot, b1, b2, self.eps, lr, t)
        if fused is not None:
            return fused
        if more is not None:
            grad = grad + more
        z, slot["m"], slot["v_re"], slot["v_im"] = primitives.adam_step(
            z, grad, slot["m"], slot["v_re"], slot["v_im"], t, b1, b2, self.eps, lr)
        return z


def _new_slot(z: Any, grad: Any) -> dict[str, Any]:
    """Adam's zero moments for ``z`` with gradients like ``grad`` (v per real component)."""
    xp = backend.namespace(z)
    g_re, g_im = _split(grad)
    return {"t": 0, "m": xp.zeros(z.shape, dtype=grad.dtype), "v_re": xp.zeros(z.shape, dtype=g_re.dtype),
            "v_im": None if g_im is None else xp.zeros(z.shape, dtype=g_im.dtype)}


def _adam_constants(k: Any, z: Any, b1: float, b2: float, eps: float, lr: float, t: int) -> tuple[Any, ...]:
    """(b1, b2, bias corrections 1/(1-b1^t) and 1/(1-b2^t), eps, lr) in z's real dtype."""
    r = lambda v: k.real_scalar(v, z)  # noqa: E731
    return r(b1), r(b2), r(1.0 / (1.0 - b1**t)), r(1.0 / (1.0 - b2**t)), r(eps), r(lr)


def _in_threads(run: Any, units: int, elements: int) -> None:
    """run(lo, hi) over [0, units) split across the host threads, a thread per >= 64k of the
    ``elements`` the units hold (one call on the caller's thread when that is one).

    The vectorised step is memory-bound and a hand-over to a pool thread costs 40-100 us on
    the benchmark machine. Measured with the moments updated in place: on the full-size
    case A gradient run (354² object, 125k elements) two threads gave an FFT-bound ratio of
    1.83-2.08 against 2.13-2.29 for one; with the old out-of-place kernel two threads had
    been 2x slower than one on 247² (61k elements, which stays on one thread).
    """
    threads = min(parallel.host_threads(), max(1, elements // 2**16))
    if threads == 1:
        run(0, units)
        return
    bounds = [units * i // threads for i in range(threads + 1)]
    parallel.map_parts(lambda lohi: run(*lohi), list(zip(bounds[:-1], bounds[1:])))


def embed(z: Any, grad: Any, region: tuple[slice, slice]) -> Any:
    """``grad`` on ``region`` of z's last two axes as a z-shaped array, zero elsewhere."""
    full = backend.namespace(grad).zeros(z.shape, dtype=grad.dtype)
    full[..., region[0], region[1]] = grad
    return full


def _fused_adam_region(z: Any, grad: Any, region: tuple[slice, slice], slot: dict[str, Any], b1: float, b2: float,
                       eps: float, lr: float, t: int) -> Any:
    """``_fused_adam`` for a gradient given on a region only (complex z on the CPU), or None."""
    xp = backend.namespace(z)
    k = backend.kernels(xp)
    if (k is None or not backend.is_complex(z) or z.dtype != grad.dtype or slot["m"].dtype != z.dtype
            or slot["v_im"] is None or not z.flags.c_contiguous or not grad.flags.c_contiguous
            or grad.shape[:-2] != z.shape[:-2]):
        return None
    h, w = z.shape[-2:]
    planes = (-1, h, w)
    views = [z.reshape(planes), grad.reshape((-1, *grad.shape[-2:])),
             *(slot[key].reshape(planes) for key in ("m", "v_re", "v_im"))]
    out = xp.empty_like(views[0])
    consts = _adam_constants(k, z, b1, b2, eps, lr, t)
    y0, x0 = int(region[0].start), int(region[1].start)
    _in_threads(lambda lo, hi: k.adam_region(*views, y0, x0, *consts, lo, hi, out), views[0].shape[0] * h, z.size)
    return out.reshape(z.shape)


def _fused_applies(z: Any, grad: Any, slot: dict[str, Any] | None) -> bool:
    """The fused CPU kernel can take this step (NumPy with Numba, one dtype, C-contiguous,
    moments of z's dtype; they are updated in place)."""
    xp = backend.namespace(z)
    return (backend.kernels(xp) is not None and z.dtype == grad.dtype and z.shape == grad.shape
            and z.flags.c_contiguous and grad.flags.c_contiguous
            and (slot is None or (slot["m"].dtype == z.dtype and slot["m"].flags.writeable
                                  and bool(backend.is_complex(z)) == (slot["v_im"] is not None))))


def _fused_adam(z: Any, grad: Any, more: Any, slot: dict[str, Any], b1: float, b2: float, eps: float, lr: float,
                t: int) -> Any:
    """Adam in one pass per part of the array (fused CPU kernel, split over the host threads),
    the moments in place and z new (callers may hold the old z); None where the kernel does not
    apply. ``more``: a second gradient added on the fly (complex z only)."""
    if not _fused_applies(z, grad, slot) or (more is not None and not _fused_applies(z, more, slot)):
        return None
    xp = backend.namespace(z)
    k = backend.kernels(xp)
    flat = [a.reshape(-1) for a in (z, grad, slot["m"], slot["v_re"])]
    out = xp.empty_like(flat[0])
    consts = _adam_constants(k, z, b1, b2, eps, lr, t)
    if backend.is_complex(z):
        v_im, g2 = slot["v_im"].reshape(-1), None if more is None else more.reshape(-1)
        run = lambda lo, hi: k.adam(flat[0], flat[1], g2, flat[2], flat[3], v_im, *consts, lo, hi, out)  # noqa: E731
    elif more is None:
        run = lambda lo, hi: k.adam_real(*flat, *consts, lo, hi, out)  # noqa: E731
    else:
        return None
    _in_threads(run, flat[0].size, flat[0].size)
    return out.reshape(z.shape)


class SGD(_Slotted):
    """Gradient descent with heavy-ball or Nesterov momentum (μ = 0: plain descent)."""

    def __init__(self, momentum: float = 0.0, nesterov: bool = False):
        self.momentum, self.nesterov = momentum, nesterov
        self.slots: dict[str, dict[str, Any]] = {}

    def step(self, name: str, z: Any, grad: Any, lr: float, region: tuple[slice, slice] | None = None,
             more: Any = None) -> Any:
        if more is not None:  # a second partial gradient (``Adam.step``)
            grad = grad + more
        if region is not None:  # a gradient given on a region of z only
            grad = embed(z, grad, region)
        mu = self.momentum
        if mu == 0:
            return z - backend.namespace(z).astype(lr * grad, z.dtype)
        slot = self.slots.setdefault(name, {"t": 0, "b": None})
        # a copy to start from: the caller's gradient may be a buffer its next group reuses
        slot["b"] = mu * slot["b"] + grad if slot["t"] > 0 else backend.namespace(grad).asarray(grad, copy=True)
        slot["t"] += 1
        direction = grad + mu * slot["b"] if self.nesterov else slot["b"]
        return z - backend.namespace(z).astype(lr * direction, z.dtype)


def _host_slots(slots: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, slot in slots.items():
        for key, value in slot.items():
            if value is None:
                continue
            # copies: the fused kernels update the moments in place after this is taken
            out[f"{name}/{key}"] = value if isinstance(value, int) else backend.to_numpy(value).copy()
    return out


def _device_slots(state: dict[str, Any], xp: Any) -> dict[str, dict[str, Any]]:
    slots: dict[str, dict[str, Any]] = {}
    for full, value in state.items():
        name, key = full.rsplit("/", 1)
        slot = slots.setdefault(name, {"v_im": None})
        # own writable copies: the fused kernels update the moments in place
        slot[key] = int(value) if key == "t" else backend.copy(backend.to_device(value, xp))
    for slot in slots.values():
        if "v_re" not in slot:
            slot.pop("v_im", None)
    return slots


def make_optimizer(params: Any) -> Adam | SGD:
    if params.optimizer == "adam":
        return Adam(params.beta1, params.beta2, params.eps)
    return SGD(params.momentum, params.nesterov)
