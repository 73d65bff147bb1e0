"""The Typer application. Commands live in sibling modules and stay thin: they parse flags,
call into the library, and print. Everything heavy (pydantic, SDKs, questionary, rich tables) is
imported inside the command that needs it so that `maider --help` stays near `import typer`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from maider import __version__

#: The order of `maider --help`: plan, run, operate, then housekeeping.
COMMAND_ORDER = (
    "providers", "list-types", "recommend", "validate", "wizard",
    "up", "down", "list", "status", "use", "tunnel", "env",
    "switch-model", "check", "validate-perf", "benchmark", "watch", "extend",
    "cleanup",
)  # fmt: skip


class _MaiderGroup(TyperGroup):
    """Turns errors the user can fix into one line on stderr and a non-zero exit (no traceback)."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))

    def invoke(self, ctx: Any) -> Any:
        from maider.errors import MaiderError

        try:
            return super().invoke(ctx)
        except MaiderError as exc:
            _fail(str(exc), exc.exit_code)
        except Exception as exc:
            if type(exc).__module__.startswith(("typer", "click")) or isinstance(exc, typer.Exit):
                raise
            from maider.provider import ProviderError

            if isinstance(exc, ProviderError):
                _fail(str(exc), 1)
            if os.environ.get("MAIDER_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with MAIDER_DEBUG=1 for details)", 70)
        return None


app = typer.Typer(
    cls=_MaiderGroup,
    name="maider",
    help="Rent a GPU VM, serve a strong code model with vLLM behind an SSH tunnel, and point aider at it.",
    no_args_is_help=True,
    add_completion=False,
    # Plain click help: rich-formatted help costs ~50 ms of imports on every `--help`.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"maider {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Option(
            "--config",
            envvar="MAIDER_CONFIG",
            help="Config file (default: platform config dir).",
            show_envvar=True,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    if config is not None:
        os.environ["MAIDER_CONFIG"] = str(config)


# Importing the command modules registers their commands on `app`.
from maider.cli import ops, planning, session, switch, up, watchdog  # noqa: E402

_ = (ops, planning, session, switch, up, watchdog)


def main() -> None:
    """Console-script entry point."""
    app()


def _fail(message: str, code: int) -> None:
    from maider.errors import PlanError
    from maider.output import error

    exc = sys.exc_info()[1]
    for line in exc.problems if isinstance(exc, PlanError) else [message]:
        error(line)
    raise typer.Exit(code)
