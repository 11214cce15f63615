"""The one typer app object; command modules (cmd_*.py) attach to it."""

import typer

app = typer.Typer(
    name="ptycli",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",  # not "rich": units in brackets ([keV]) would be eaten as tags
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
