"""`ptycli validate RECIPE.toml`: check a recipe without running it."""

from __future__ import annotations

import typer

from .app import app
from .options import Json
from .output import fail, handle_errors, result


@app.command("validate")
@handle_errors
def validate(
    recipe: str = typer.Argument(..., help="Recipe TOML file, or a shipped recipe name."),
    set_: list[str] = typer.Option(None, "--set", help="Override one value: stage.0.iterations=5 (repeatable)."),
    iterations: int = typer.Option(None, "--iterations", help="Total iterations; stages scale proportionally."),
    print_resolved: bool = typer.Option(False, "--print-resolved",
                                        help="Print the recipe with every default filled in."),
    data: str = typer.Option(None, "--data", help="Data store: what recipe 'auto' picks from (with --state)."),
    state: str = typer.Option(None, "--state", help="State store: what recipe 'auto' picks from (with --data)."),
    as_json: bool = Json,
) -> None:
    """Validate a recipe: exit 0 when valid, 3 with every bad key path otherwise."""
    from ..errors import RecipeError
    from ..stages import validate as stage

    try:
        summary = stage.run(recipe, overrides=list(set_ or []), iterations=iterations, data=data, state=state)
    except RecipeError as exc:
        if not as_json:
            raise
        # --json promises one document on stdout, for an invalid recipe too; the line on
        # stderr and exit 3 stay as without --json
        errors = getattr(exc, "errors", None) or [{"key": None, "message": str(exc)}]
        result({"source": getattr(exc, "source", recipe), "valid": False, "errors": errors}, as_json=True)
        raise fail(exc) from None
    if print_resolved and not as_json:
        result(stage.to_toml(summary["resolved"]))
        return
    result(summary if as_json else f"{summary['source']}: valid ({summary['iterations']} iterations)", as_json)
