"""The kernels take typed records (``_kernels/records.py``) and unpack each on their first
lines by position: a record whose fields were reordered, or an unpacking line written in
another order, would bind one array to another's name without any error. This test reads
the kernels' unpacking lines and checks each name against the record's field at that
position (a name may differ from its field only as ALIASES says; ``_`` skips a field)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("numba")

from ptycli._kernels import records as r  # noqa: E402

KERNELS = Path(__file__).resolve().parents[1] / "ptycli" / "_kernels"

# kernel-local name -> record field, where the kernels' older names were kept
ALIASES = {"plan_f": "forward", "plan_b": "backward", "s": "scale", "do_num": "num", "do_illum": "illum",
           "do_probe": "probe", "do_pos": "positions", "pos_curvature": "curvature", "do_tilt": "tilts",
           "pos_out": "out", "tilt_out": "out", "pos_tmp": "tmp", "pos_parts": "parts"}

# (file, function, parameter) -> the record it receives
UNPACKED = {
    ("single_slice.py", "single_slice_part", "fft"): r.Fft,
    ("single_slice.py", "single_slice_part", "scan"): r.Scan,
    ("single_slice.py", "single_slice_part", "noise"): r.Noise,
    ("single_slice.py", "single_slice_part", "want"): r.Wanted,
    ("single_slice.py", "single_slice_part", "bufs"): r.SingleSliceBuffers,
    ("single_slice.py", "single_slice_part", "pos"): r.Positions,
    ("single_slice.py", "lsqml_tail_part", "fft"): r.Fft,
    ("single_slice.py", "lsqml_tail_part", "group"): r.TailGroup,
    ("single_slice.py", "lsqml_tail_part", "part"): r.TailPart,
    ("multislice.py", "multislice_part", "fft"): r.Fft,
    ("multislice.py", "multislice_part", "scan"): r.Scan,
    ("multislice.py", "multislice_part", "noise"): r.Noise,
    ("multislice.py", "multislice_part", "want"): r.Wanted,
    ("multislice.py", "multislice_part", "bufs"): r.MultisliceBuffers,
    ("multislice.py", "multislice_part", "pos"): r.Positions,
    ("multislice.py", "multislice_part", "tilt"): r.Tilts,
    ("multislice.py", "_epie_fields", "fft"): r.Fft,
    ("multislice.py", "_epie_fields", "scan"): r.Scan,
    ("multislice.py", "_epie_fields", "noise"): r.Noise,
    ("multislice.py", "_epie_fields", "update"): r.EpieStep,
    ("multislice.py", "_epie_fields", "bufs"): r.EpieBuffers,
    ("multislice.py", "_epie_fields", "pos"): r.EpiePositions,
}


def _unpackings(path: Path) -> dict[tuple[str, str], list[str]]:
    """(function, parameter) -> the names a ``a, b, c = parameter`` statement binds (at the top
    of the body, or under ``if parameter is not None:``, where a None record prunes its code)."""
    found = {}
    for fn in ast.parse(path.read_text()).body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        params = {a.arg for a in fn.args.args}
        guarded = [inner for st in fn.body if isinstance(st, ast.If) for inner in st.body]
        for st in fn.body + guarded:
            if (isinstance(st, ast.Assign) and isinstance(st.value, ast.Name) and st.value.id in params
                    and isinstance(st.targets[0], ast.Tuple)):
                found[(fn.name, st.value.id)] = [t.id for t in st.targets[0].elts]
    return found


def test_every_record_is_unpacked_in_its_field_order():
    seen = {}
    for name in ("single_slice.py", "multislice.py"):
        seen.update({(name, *key): names for key, names in _unpackings(KERNELS / name).items()})
    for key, record in UNPACKED.items():
        assert key in seen, f"{key[0]}: {key[1]} no longer unpacks {key[2]} ({record.__name__}) on its own line"
        names = seen[key]
        assert len(names) == len(record._fields), f"{key}: {len(names)} names for {record.__name__}'s {record._fields}"
        for name, field in zip(names, record._fields, strict=True):
            assert name in ("_", field) or ALIASES.get(name) == field, (
                f"{key[0]} {key[1]}: `{name}` unpacks {record.__name__}.{field}")
