"""What ``ptycli tune`` leaves behind: best recipe (TOML), trials table (CSV), plots (PNG).

Every file is written to a temporary name and renamed, so several workers finishing at
once each leave a complete report (the last one to finish describes the most trials).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from ..recipe import apply_override
from . import tune_space


def _atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, mode) as fh:
        write(fh)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- TOML
def dump_toml(data: dict[str, Any]) -> str:
    """A recipe dict as TOML: arrays of tables for lists of tables, inline tables otherwise."""
    lines: list[str] = []
    _table(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    for key, value in table.items():
        if not _is_table_array(value):
            lines.append(f"{_key(key)} = {_inline(value)}")
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join(_key(p) for p in [*path, key])}]]")
                _table(lines, [*path, key], item)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else tune_space.toml_value(key)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tune_space.toml_value(value)


def best_recipe_toml(recipe_data: dict[str, Any], best: dict[str, Any], source: str) -> str:
    """The user's recipe (full iterations) with the best trial's recipe values."""
    overrides, init_values = tune_space.split_params(best["params"])
    data = recipe_data
    for item in overrides:
        data = apply_override(data, item)
    head = [f"# Best recipe of `ptycli tune` (trial {best['number']}, objective {best['value']:.6g}),",
            f"# from {source} with: " + (", ".join(overrides) or "no recipe changes")]
    if init_values:
        flags = " ".join(f"--{k.replace('_', '-')} {v:.6g}" if k in ("defocus_a", "slices", "slice_thickness_a",
                                                                    "probe_modes") else f"{k}={v:.6g}"
                         for k, v in init_values.items())
        head.append(f"# init values of the best trial (re-run init with them): {flags}")
        head.append(f"# its starting state: {best.get('state', '')}")
    return "\n".join(head) + "\n\n" + dump_toml(data)


# ----------------------------------------------------------------------------- table
def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        # a pruned trial's value is its last validation loss, not the objective: leave it out
        value = t.value if t.state.name == "COMPLETE" else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": value,
                     "duration_s": duration, **{f"param:{k}": v for k, v in t.params.items()},
                     **{k: v for k, v in t.user_attrs.items() if k != "error"},
                     "error": t.user_attrs.get("error", "")})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, lambda fh: fh.write(buf.getvalue()))


# ----------------------------------------------------------------------------- plots
def write_plots(study: Any, out: Path) -> tuple[list[str], list[str]]:
    """(written PNG paths, warnings): optimisation history and parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, warnings = [], []
    for name, draw in (("history", _history), ("importance", _importance)):
        try:
            fig = draw(study, plt)
        except Exception as exc:  # noqa: BLE001  (a plot is a convenience; never lose the study over it)
            warnings.append(f"{name} plot skipped: {exc}")
            continue
        path = out / f"{name}.png"
        _atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, dpi=100, format="png", bbox_inches="tight"),
                      mode="wb")
        plt.close(fig)
        written.append(str(path))
    return written, warnings


def _quiet_optuna() -> Any:
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _history(study: Any, plt: Any) -> Any:
    optuna = _quiet_optuna()
    ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    return fig


def _importance(study: Any, plt: Any) -> Any:
    optuna = _quiet_optuna()
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2:
        raise ValueError("needs at least 2 complete trials")
    ax = optuna.visualization.matplotlib.plot_param_importances(study)
    fig = ax.figure
    fig.set_size_inches(7, 1.5 + 0.4 * len(study.best_params))
    fig.tight_layout()
    return fig
