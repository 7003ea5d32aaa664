"""`python -m graft.operator [OPTIONS]`: the `graft operator` command itself (see --help), so
the image's entry point and the CLI accept the same options by construction."""

import typer

from graft.cli import operator

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
app.command()(operator)
app(prog_name="python -m graft.operator")
