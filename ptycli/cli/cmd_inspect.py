"""`ptycli inspect STORE`: kind, arrays, calibration, derived quantities, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .app import app
from .options import Json, Overwrite, read_path_arg
from .output import colour_ok, handle_errors, log, result, table_console


@app.command()
@handle_errors
def inspect(
    store: str = typer.Argument(..., help="Data or state store, or a raw file; '-' reads the path from stdin."),
    get: Optional[str] = typer.Option(None, "--get", help="Print one bare value, e.g. derived.dx_a."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="HDF5/Zarr array path of a raw file."),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Also write an overview figure "
                                          "(.png .pdf .svg .jpg .tif; format from the suffix)."),
    preview: bool = typer.Option(False, "--preview", help="Also draw a preview in the terminal."),
    json_out: bool = Json,
    overwrite: bool = Overwrite,
) -> None:
    """Show what a store or raw file holds: shapes, calibration, derived quantities, provenance."""
    from ..stages import inspect as stage  # noqa: PLC0415

    path = read_path_arg(store)
    if figure is not None:  # refuse a bad figure path before reading the store
        from ..stages.figures import figure_format  # noqa: PLC0415
        from ..store.io import check_output  # noqa: PLC0415

        figure_format(figure)
        check_output(figure, overwrite=overwrite, inputs=[path], kind="file")
    doc = stage.run(path, dataset=dataset)
    if figure is not None:
        from ..stages.figures import store_figure  # noqa: PLC0415

        store_figure(path, figure, overwrite=overwrite)
        log(f"wrote {figure}")
    if get is not None:
        result(stage.format_value(stage.get_value(doc, get)))
    elif json_out:
        if preview:  # stdout holds one JSON document: the preview goes in it, as plain text
            from ..stages.preview import render  # noqa: PLC0415

            doc["preview"] = render(path, *_terminal_size(), colour=False)
        result(doc, as_json=True)
        return
    else:
        _print_tables(doc)
    if preview:
        from ..stages.preview import render  # noqa: PLC0415

        result(render(path, *_terminal_size(), colour=colour_ok()))


def _terminal_size() -> tuple[int, int]:
    import shutil  # noqa: PLC0415

    cols, rows = shutil.get_terminal_size((80, 24))
    return cols, max(rows - 2, 8)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _kv_table(title: str | None, items: dict[str, Any]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in items.items():
        table.add_row(key, _fmt(value))
    return table


def _arrays_table(arrays: dict[str, Any]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="arrays", title_justify="left")
    for col in ("name", "shape", "dtype", "chunks", "dims", "units"):
        table.add_column(col, no_wrap=col != "units")
    for name, a in arrays.items():
        table.add_row(name, _fmt(a["shape"]), a["dtype"], _fmt(a["chunks"]), ",".join(a["dims"]), _fmt(a["units"]))
    return table


def _print_tables(doc: dict[str, Any]) -> None:
    """The table is the result, so it goes to stdout (rich honours NO_COLOR)."""
    out = table_console()
    nested = ("arrays", "calibration", "derived", "provenance", "state")
    # the path on its own line: as a table title it would be folded to the width of the table
    out.print(str(doc["path"]), style="italic", markup=False)
    out.print(_kv_table(None, {k: v for k, v in doc.items() if k not in nested and k != "path"}))
    if "arrays" in doc:
        out.print(_arrays_table(doc["arrays"]))
    for section in ("calibration", "state", "derived"):
        if doc.get(section):
            out.print(_kv_table(section, doc[section]))
    for i, rec in enumerate(doc.get("provenance", [])):
        ops = ", ".join(o.get("op", "?") for o in rec.get("operations", [])) or "-"
        when = rec.get("finished") or "-"
        out.print(f"provenance {i}: {rec['stage']} (ptycli {rec['ptycli_version']}, {when}): {ops}")
