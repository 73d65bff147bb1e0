"""Desktop notifications: best effort, never raises.

``notify-send`` (libnotify) on Linux and the BSDs, ``osascript`` on macOS. Windows has no
notification command that works without a registered app id, so there it does nothing (the
watchdog's log still says what it did). A missing command, a headless session or a hanging
notification daemon only make :func:`notify` return False.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

#: A notification daemon that does not answer must not stall the watchdog's loop.
TIMEOUT = 10.0


def _applescript_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command(title: str, message: str, *, urgent: bool = False) -> list[str] | None:
    """The command line that shows the notification on this platform (None: no way to)."""
    if sys.platform == "darwin":
        exe = shutil.which("osascript")
        if exe is None:
            return None
        script = (
            f"display notification {_applescript_string(message)} with title {_applescript_string(title)}"
        )
        return [exe, "-e", script]
    if sys.platform.startswith("win"):
        return None
    exe = shutil.which("notify-send")
    if exe is None:
        return None
    return [exe, "--app-name=maider", f"--urgency={'critical' if urgent else 'normal'}", title, message]


def notify(title: str, message: str, *, urgent: bool = False) -> bool:
    """Show a desktop notification; True when the command ran and succeeded."""
    try:
        argv = command(title, message, urgent=urgent)
        if argv is None:
            return False
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False
        )
        return done.returncode == 0
    except Exception:
        return False
