"""Helpers shared by the typer apps: the user-error boundary and repeated option types."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from mvforge.errors import UserError
from mvforge.rundir import environment_error_in

ADDRESS_HELP = "Ray cluster address (or set RAY_ADDRESS); a local Ray is started when unset."
SET_HELP = "Override a config value, e.g. --set cycles.samples=64 (repeatable)."
# docs/cli.md "Required options": a value a --config file may supply cannot be click-required, so its help
# carries the mark click prints for required options, with the condition (the backslash: rich markup escape).
REQUIRED_UNLESS_CONFIG = r"\[required unless --config sets it]"


def reflow_help(app: typer.Typer) -> None:
    """Join the hard line breaks inside each paragraph of every command's help (its docstring or ``help=``), so
    the terminal wraps it: typer's rich help keeps a docstring's line breaks and wraps each line on its own, which
    broke sentences mid-way at any other width. Paragraphs (blank lines) stay."""
    import inspect

    for command in app.registered_commands:
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if text:
            paragraphs = inspect.cleandoc(text).split("\n\n")
            command.help = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def set_help(example: str) -> str:
    """The --set help with an example key of the command's own config."""
    return f"Override a config value, e.g. --set {example} (repeatable)."


EMPTY_ALLOWED = frozenset({"--negative-prompt"})
"""Options where the empty string is a value (no negative text); everywhere else it is a mistake."""


def refuse_empty_arguments(args: list[str]) -> None:
    """Raise UserError for an empty or blank argument ("" is the current directory to a path option, and a
    shell variable that was never set looks like this); ``--negative-prompt ""`` is allowed."""
    for i, arg in enumerate(args):
        option, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if arg.startswith("--") and not sep:
            continue
        if not option and i and args[i - 1].startswith("-"):
            option = args[i - 1]
        if value.strip() or option in EMPTY_ALLOWED:
            continue
        what = option or "an argument"
        raise UserError(f"{what} is given an empty value {value!r}; pass a value (a path, a number, a name)")


def run_app(app: typer.Typer) -> Callable[[], None]:
    """An entry point that prints a UserError as one line and exits 2, without a traceback (docs/design.md
    §5)."""

    def main() -> None:
        try:
            refuse_empty_arguments(sys.argv[1:])
            app()
        except UserError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
        except (FileExistsError, NotADirectoryError) as e:
            # A file where a command needs a directory (--out FILE, a path under a file): the user's input.
            where = e.filename or "a path"
            typer.secho(
                f"error: {where}: a file is where a directory is needed; pass a directory (or a new path)",
                fg="red",
                err=True,
            )
            sys.exit(2)
        except IsADirectoryError as e:
            typer.secho(f"error: {e.filename} is a directory; pass a file", fg="red", err=True)
            sys.exit(2)
        except Exception as e:
            # A full disk, a read-only or unwritable --out, raised here or inside a Ray task: the machine's
            # state, not a bug; one line and exit 2, and a rerun resumes (docs/reliability.md).
            err = environment_error_in(e)
            if err is None:
                raise
            typer.secho(f"error: {err}", fg="red", err=True)
            sys.exit(2)

    return main


def quiet_libraries() -> None:
    """diffusers/transformers info chatter (accelerate hints, weight-loading bars) hides our progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# -h beside --help on every command: click's child contexts inherit help_option_names from the group's.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _print_version(value: bool) -> None:
    """The eager ``--version`` flag: mvforge's version from its own module, so no heavy library is imported."""
    if value:
        from mvforge import __version__

        typer.echo(f"mvforge {__version__}")
        raise typer.Exit()


def make_app(name: str, help_text: str) -> typer.Typer:
    """A command-group typer app with mvforge's settings (docs/cli.md: ``-h``, ``--version``; no completion
    install, no rich tracebacks: user errors are one line, see :func:`run_app`) and a ``version`` command
    printing mvforge's and its libraries' versions."""
    app = typer.Typer(
        name=name,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings=CONTEXT_SETTINGS,
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version", is_eager=True, callback=_print_version, help="Print mvforge's version and exit."
            ),
        ] = False,
    ) -> None:
        """Keep the app a command group."""

    @app.command()
    def version() -> None:
        """Print the versions of mvforge and its main dependencies."""
        from mvforge.fsutil import versions

        for k, v in versions("bpy", "torch", "ray", "open_clip_torch", "diffusers", "webdataset").items():
            typer.echo(f"{k} {v}")

    return app
