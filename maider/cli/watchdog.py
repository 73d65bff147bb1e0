"""`maider extend`: postpone a session's idle watchdog (the VM side and the laptop side).

Thin: parses, calls :func:`maider.session.laptop_watchdog.extend`, prints.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from maider.cli import app

ExtendName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(help="Session name or id (default: the current session, or the only one)."),
]
Minutes = Annotated[
    float,
    typer.Option("--minutes", help="Keep the VM at least this many minutes from now (1 to 480)."),
]


@app.command()
def extend(name: ExtendName = None, minutes: Minutes = 60.0) -> None:
    """Keep a session's VM at least N more minutes: both watchdogs wait (idle and max lifetime)."""
    from maider.output import console, warn
    from maider.session import laptop_watchdog as lw

    result = lw.extend(name, minutes)
    label = result.record.label
    until = result.laptop_until
    if until is not None:
        capped = (
            "; capped where the VM's deletion credential expires: for longer, `maider up` a new session"
            if result.credential_cap
            else f"; capped at {lw.MAX_EXTEND_MINUTES / 60:g} h from now"
            if result.capped
            else ""
        )
        acts = (
            f"; then it acts at {lw.hhmm(result.acts_at)} unless there is traffic"
            if result.acts_at is not None and result.acts_at > until
            else ""
        )
        console().print(
            f"session {label}: the watchdog will not act before {lw.hhmm(until)} "
            f"(extended by {minutes:g} min{capped}{acts})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif result.vm_side and result.vm_error is None:
        console().print(f"session {label}: the VM's watchdog was extended by {minutes:g} min", markup=False)
    if result.vm_side and result.vm_error is not None:
        # Non-zero: the VM side still deletes the VM at its old deadline, and the user must know.
        if until is not None:
            warn("only the laptop side was extended")
        raise lw.ExtendFailed(
            f"the VM's own watchdog of session {label} was not extended ({result.vm_error}): it still deletes "
            f"the VM at its old deadline; rerun `maider extend {label}` once the VM answers SSH"
        )
