"""`maider watch`: a live view of a session from vLLM's ``/metrics`` and nvidia-smi.

It sends no inference request: ``GET /metrics`` goes through the tunnel (vLLM serves it without
touching the engine, so it counts nothing) and nvidia-smi runs over SSH. So watching a session
never keeps it alive for the idle watchdog. Tokens per second come from the growth of vLLM's
``generation_tokens`` counter between two scrapes (every client together), not from a request of
our own.

:class:`Sampler` takes the frames; :func:`render` turns one into a rich renderable and
:func:`plain_line` into one line of text (when stdout is not a terminal).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maider.remote import commands, ssh
from maider.session.health import OpsError, SessionLink

if TYPE_CHECKING:  # pragma: no cover
    from maider.ops.metrics import MetricsSnapshot
    from maider.session.watchdog import WatchdogView

#: How often the watchdog's state is read (over SSH, from the VM): it changes on the scale of
#: minutes, and every read is a command on the VM.
WATCHDOG_REFRESH_S = 30.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Frame:
    """One sample of a session."""

    at: dt.datetime
    gpus: list[commands.GpuReading] = field(default_factory=list)
    gpu_error: str | None = None
    metrics: MetricsSnapshot | None = None
    metrics_error: str | None = None
    #: Generated tokens per second since the previous frame (None on the first one).
    tokens_per_s: float | None = None
    runtime_s: float = 0.0
    cost: float | None = None
    currency: str = "USD"
    watchdog: WatchdogView | None = None
    #: Seconds since the last inference request seen (by the watchdog, else by this watch).
    idle_s: float | None = None
    idle_source: str = ""

    def to_json(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "at": self.at.isoformat(timespec="seconds"),
            "gpus": [g.__dict__ for g in self.gpus],
            "gpu_error": self.gpu_error,
            "requests_running": m.requests_running if m else None,
            "requests_waiting": m.requests_waiting if m else None,
            "kv_cache_usage": m.kv_cache_usage if m else None,
            "metrics_error": self.metrics_error,
            "tokens_per_s": self.tokens_per_s,
            "runtime_seconds": round(self.runtime_s, 1),
            "cost": self.cost,
            "currency": self.currency,
            "idle_seconds": self.idle_s,
            "watchdog": watchdog_text(self),
        }


class Sampler:
    """Takes :class:`Frame`\\ s of one session; keeps the previous scrape for rates and idleness."""

    def __init__(self, link: SessionLink, *, live_watchdog: bool = True) -> None:
        self.link = link
        self.live_watchdog = live_watchdog
        self._prev: tuple[float, MetricsSnapshot] | None = None
        self._started = time.monotonic()
        self._last_activity: float | None = None
        self._view: WatchdogView | None = None
        self._view_read: float | None = None

    def sample(self) -> Frame:
        from maider.ops.metrics import MetricsParseError, activity_between, parse_metrics
        from maider.session import lifecycle

        record = self.link.record
        frame = Frame(at=_now())
        try:
            frame.gpus = self.link.gpus()
        except (ssh.SSHError, ValueError) as exc:
            frame.gpu_error = str(exc)
        try:
            snap = parse_metrics(self.link.metrics_text())
            now = time.monotonic()
            frame.metrics = snap
            if self._prev is not None:
                then, prev = self._prev
                if now > then:
                    frame.tokens_per_s = max(
                        0.0, snap.generation_tokens_total - prev.generation_tokens_total
                    ) / (now - then)
                if activity_between(prev, snap):
                    self._last_activity = now
            elif snap.requests_running + snap.requests_waiting > 0:
                self._last_activity = now
            self._prev = (now, snap)
        except (OSError, OpsError, MetricsParseError) as exc:
            frame.metrics_error = str(exc)
        frame.runtime_s = lifecycle.runtime_seconds(record)
        frame.cost = lifecycle.cost_of(record, frame.runtime_s)
        frame.currency = record.hourly_price.currency if record.hourly_price else "USD"
        frame.watchdog = self._watchdog()
        if frame.watchdog is not None and frame.watchdog.last_activity_at is not None:
            frame.idle_s = max(0.0, (frame.at - frame.watchdog.last_activity_at).total_seconds())
            frame.idle_source = "watchdog"
        elif self._last_activity is not None:
            frame.idle_s = time.monotonic() - self._last_activity
            frame.idle_source = "seen by watch"
        return frame

    def _watchdog(self) -> WatchdogView | None:
        from maider.session import watchdog

        now = time.monotonic()
        if self._view_read is None or now - self._view_read >= WATCHDOG_REFRESH_S:
            try:
                self._view = watchdog.view(self.link.store, self.link.record, live=self.live_watchdog)
            except Exception:  # the dashboard shows "unknown" rather than dying
                self._view = None
            self._view_read = now
        return self._view


# ------------------------------------------------------------------------------------ text


def _duration(seconds: float) -> str:
    from maider.session.lifecycle import format_duration

    return format_duration(seconds)


def watchdog_text(frame: Frame) -> str:
    """When the watchdog acts, and why ("watchdog off" when it is off or nothing is known)."""
    view = frame.watchdog
    if view is None or not view.enabled:
        return "watchdog off"
    if view.acts_at is None:
        return "unknown"
    left = (view.acts_at - frame.at).total_seconds()
    reason = {"idle": "idle", "max_lifetime": "max lifetime"}.get(view.reason or "", view.reason or "")
    when = view.acts_at.astimezone().strftime("%H:%M")
    if left <= 0:
        return f"acting now ({reason})"
    return f"acts in {_duration(left)} at {when} ({reason})"


def idle_text(frame: Frame) -> str:
    if frame.idle_s is not None:
        return f"{_duration(frame.idle_s)}" + (
            f" ({frame.idle_source})" if frame.idle_source != "watchdog" else ""
        )
    if frame.watchdog is None:
        return "unknown"
    return "no request seen yet"


def _gpu_text(g: commands.GpuReading) -> str:
    util = f"{g.utilization_pct}%" if g.utilization_pct is not None else "?"
    mem = f"{g.memory_used_mib}/{g.memory_total_mib} MiB" if g.memory_total_mib else "?"
    return f"GPU{g.index} {util} {mem}"


def plain_line(frame: Frame, label: str) -> str:
    """One frame as one line (for a pipe or a log)."""
    from maider.session.lifecycle import format_money

    m = frame.metrics
    parts = [frame.at.astimezone().strftime("%H:%M:%S"), label]
    parts.append(
        ", ".join(_gpu_text(g) for g in frame.gpus) if frame.gpus else f"GPUs: {frame.gpu_error or 'none'}"
    )
    if m is not None:
        parts.append(f"running {m.requests_running:g} waiting {m.requests_waiting:g}")
    else:
        parts.append(f"metrics: {frame.metrics_error}")
    parts.append(f"{frame.tokens_per_s:.1f} tok/s" if frame.tokens_per_s is not None else "- tok/s")
    parts.append(f"idle {idle_text(frame)}")
    parts.append(f"cost {format_money(frame.cost, frame.currency)} ({_duration(frame.runtime_s)})")
    parts.append(watchdog_text(frame))
    return " | ".join(parts)


def render(frame: Frame, label: str) -> Any:
    """One frame as a rich renderable (GPU table, then the session's figures)."""
    from rich.console import Group
    from rich.table import Table

    from maider.session.lifecycle import format_money

    gpus = Table(title=f"maider watch: {label}   {frame.at.astimezone():%H:%M:%S}", title_justify="left")
    for column in ("GPU", "name", "utilisation", "memory"):
        gpus.add_column(column)
    for g in frame.gpus:
        share = (
            f" ({g.memory_used_mib / g.memory_total_mib:.0%})"
            if g.memory_used_mib is not None and g.memory_total_mib
            else ""
        )
        gpus.add_row(
            str(g.index),
            g.name,
            f"{g.utilization_pct}%" if g.utilization_pct is not None else "?",
            f"{g.memory_used_mib}/{g.memory_total_mib} MiB{share}",
        )
    if frame.gpu_error:
        gpus.add_row("-", f"nvidia-smi: {frame.gpu_error}", "", "")
    figures = Table(show_header=False, box=None)
    figures.add_column(style="bold")
    figures.add_column()
    m = frame.metrics
    if m is not None:
        figures.add_row("requests", f"{m.requests_running:g} running, {m.requests_waiting:g} waiting")
        if m.kv_cache_usage is not None:
            figures.add_row("KV cache", f"{m.kv_cache_usage:.0%}")
    else:
        figures.add_row("vLLM metrics", str(frame.metrics_error))
    figures.add_row(
        "tokens/s", f"{frame.tokens_per_s:.1f}" if frame.tokens_per_s is not None else "- (next frame)"
    )
    figures.add_row("idle", idle_text(frame))
    figures.add_row(
        "cost so far", f"{format_money(frame.cost, frame.currency)} ({_duration(frame.runtime_s)})"
    )
    figures.add_row("watchdog", watchdog_text(frame))
    return Group(gpus, figures)
