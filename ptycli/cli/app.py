"""The one typer app object; command modules (cmd_*.py) attach to it."""

from __future__ import annotations

import re

import typer
from typer.core import TyperGroup, TyperOption

# Global flags that users also type after the subcommand (`ptycli reconstruct ... -v`).
_GLOBAL_FLAG = re.compile(r"^(-v+|-q+|--verbose|--quiet)$")


class PtycliGroup(TyperGroup):
    """Hoists -v/-q/--verbose/--quiet given after the subcommand to before it, so they are
    read by the app callback wherever they stand (click only sees them before it)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # type: ignore[override]
        return super().parse_args(ctx, hoist_global_flags(args))


def hoist_global_flags(args: list[str]) -> list[str]:
    sub = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if sub is None:
        return list(args)
    end = args.index("--") if "--" in args[sub:] else len(args)
    moved = [a for a in args[sub + 1 : end] if _GLOBAL_FLAG.match(a)]
    rest = [a for a in args[sub + 1 : end] if not _GLOBAL_FLAG.match(a)]
    return [*args[:sub], *moved, args[sub], *rest, *args[end:]]


_display_type_rich = TyperOption.display_type_rich


def _no_type_on_flags(self: TyperOption, ctx) -> str | None:  # noqa: ANN001
    # typer's rich help prints the annotation type (<bool>, <int>) even for flags that
    # take no value, and users then type `--overwrite true`; a flag shows no type.
    if self.is_flag or self.count:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _no_type_on_flags  # type: ignore[method-assign]

app = typer.Typer(
    name="ptycli",
    cls=PtycliGroup,
    no_args_is_help=True,
    # one completion mechanism: the static scripts in completions/ (ptycli/cli/completions.py),
    # not click's dynamic --install-completion as well
    add_completion=False,
    rich_markup_mode="markdown",  # not "rich": units in brackets ([keV]) would be eaten as tags
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
