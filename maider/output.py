"""Console output. rich is imported on first use, never at start-up."""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def _width() -> int | None:
    # Piped output (files, CI logs, tests) is not wrapped at rich's 80-column default.
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return None
    return 160


@cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, width=_width())


@cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One line on stderr: what is wrong and how to fix it."""
    # No markup: messages may contain brackets such as `maider[linode]`.
    print(f"error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
