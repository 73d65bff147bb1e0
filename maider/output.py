"""Console output. rich is imported on first use, never at start-up."""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console, RenderableType


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


#: In logs (not a terminal), the longest silence while a phase's detail keeps changing.
PROGRESS_EVERY = 15.0


class ProgressReporter:
    """Shows the lifecycle's progress (a :class:`maider.session.lifecycle.Reporter`).

    On a terminal: one live line with a spinner, the phase, what it waits for and the elapsed
    time, and a ✓ line per finished phase. Elsewhere (pipes, logs, tests): a line when a phase
    starts, a line when its detail changes, and a line when it ends, each with the time since
    the start. Use it as a context manager so the live line is always torn down.
    """

    def __init__(self, con: Console | None = None, *, live: bool | None = None) -> None:
        self.console = con or console()
        self.live_mode = self.console.is_terminal if live is None else live
        self.started = _monotonic()
        self._phase: tuple[str, str, float] | None = None
        self._detail = ""
        self._live: object | None = None
        self._last_kind = ""
        self._last_print = 0.0

    # -- context -----------------------------------------------------------------------------

    def __enter__(self) -> ProgressReporter:
        if self.live_mode:
            from rich.live import Live

            live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            live.start()
            self._live = live
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()  # type: ignore[attr-defined]

    def __rich__(self) -> RenderableType:
        from rich.spinner import Spinner
        from rich.text import Text

        if self._phase is None:
            return Text("")
        _, text, since = self._phase
        line = Text(f"{text}")
        if self._detail:
            line.append(f" — {self._detail}", style="dim")
        line.append(f"  {_elapsed(_monotonic() - since)} (total {_elapsed(_monotonic() - self.started)})")
        return Spinner("dots", text=line)

    # -- the Reporter protocol ---------------------------------------------------------------

    def phase(self, name: str, text: str) -> None:
        self._phase = (name, text, _monotonic())
        self._detail = ""
        if not self.live_mode:
            self._print(f"… {text}")

    def progress(self, text: str) -> None:
        if text == self._detail:
            return
        self._detail = text
        if self.live_mode or self._phase is None:
            return
        # A log gets a line when the kind of news changes ("provisioning" → "booting"), and at
        # most one per PROGRESS_EVERY seconds while only counters and figures change.
        kind = re.sub(r"\d+", "#", text)
        now = _monotonic()
        if kind != self._last_kind or now - self._last_print >= PROGRESS_EVERY:
            self._last_kind, self._last_print = kind, now
            self._print(f"  {self._phase[1]}: {text}")

    def phase_done(self, name: str, seconds: float) -> None:
        text = self._phase[1] if self._phase is not None else name
        self._phase = None
        self._detail = ""
        self._print(f"✓ {text} ({seconds:.1f} s)")

    def info(self, text: str) -> None:
        self._print(text)

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}")

    def _print(self, text: str) -> None:
        stamp = f"[{_elapsed(_monotonic() - self.started):>6}] "
        self.console.print(stamp + text, markup=False, highlight=False, soft_wrap=True)
        if not self.live_mode:
            sys.stdout.flush()


def _monotonic() -> float:
    import time

    return time.monotonic()


def _elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
