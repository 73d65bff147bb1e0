"""When the idle watchdog warns and destroys the VM: pure decisions, shared by both sides.

The same code runs in the on-VM service (which scrapes vLLM's ``/metrics`` and deletes its own
instance) and on the laptop (``maider status``, ``maider extend``, the second line of defence),
so both always agree on the deadline. They share :func:`dumps`/:func:`loads` JSON.

The rules (shared notes: peers.md §0.2-0.3 and §7; prior-art-maider.md §5 for what failed):

- **Idle**: no inference traffic (:func:`maider.ops.metrics.activity_between`) for
  ``idle_timeout_s`` → destroy. Only traffic moves ``last_activity_at``: not SSH, not the tunnel,
  not health checks or ``maider status``.
- **Max lifetime**: ``max_lifetime_s`` after ``started_at`` → destroy, **even under traffic**. It
  caps the bill of a VM whose idle detection fails (a client polling in a loop, a stuck request).
- **Warn** ``warn_before_s`` before either deadline, so the user can ``maider extend``.
- **Extend** (``maider extend N``): the VM is kept at least until ``extended_until``, whatever
  the idle and lifetime rules say; i.e. it postpones both. It counts from the later of now and
  the current extension, so ``extend 60`` twice gives two hours. It is capped at
  ``max_extension_s`` ahead of now (default 8 h): a forgotten extension cannot keep a GPU VM for
  days, and a user who wants more must come back and extend again.

Defaults (:class:`WatchdogConfig`): idle 45 min, max lifetime 8 h, warning 10 min before.
45 minutes covers a lunch break or a long read of a diff without a request (aider sends nothing
while the user thinks) and costs at most ~45 min of GPU time when the user has left; 8 hours is
a working day; 10 minutes leaves time to notice a notification and type ``maider extend``.

Times are Unix seconds from the VM's clock, which is authoritative (the laptop's may be off; the
laptop only displays). Decisions are recomputed from scratch at every tick, so a restarted
service continues where the JSON says.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

#: Version of the shared JSON. A reader refuses a newer one (see :func:`loads`).
FORMAT_VERSION = 1

DEFAULT_IDLE_TIMEOUT_S = 45 * 60
DEFAULT_MAX_LIFETIME_S = 8 * 3600
DEFAULT_WARN_BEFORE_S = 10 * 60
DEFAULT_MAX_EXTENSION_S = 8 * 3600

Action = Literal["none", "warn", "destroy"]
Reason = Literal["idle", "max_lifetime"]


@dataclass(frozen=True)
class WatchdogConfig:
    #: Destroy after this long without inference traffic; None disables the idle rule (the max
    #: lifetime still applies: there is no way to switch both off).
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S
    warn_before_s: float = DEFAULT_WARN_BEFORE_S
    #: How far ahead of now an extension may reach.
    max_extension_s: float = DEFAULT_MAX_EXTENSION_S

    def __post_init__(self) -> None:
        if self.idle_timeout_s is not None and not _positive(self.idle_timeout_s):
            raise ValueError(f"idle_timeout_s must be positive or None, got {self.idle_timeout_s}")
        if not _positive(self.max_lifetime_s):
            raise ValueError(f"max_lifetime_s must be positive, got {self.max_lifetime_s}")
        if not (math.isfinite(self.warn_before_s) and self.warn_before_s >= 0):
            raise ValueError(f"warn_before_s cannot be negative, got {self.warn_before_s}")
        if not _positive(self.max_extension_s):
            raise ValueError(f"max_extension_s must be positive, got {self.max_extension_s}")


@dataclass(frozen=True)
class WatchdogState:
    #: When the lifetime counts from: the VM's "running" time (billing starts there).
    started_at: float
    #: Last inference traffic; the service sets it to ``started_at``, or to when vLLM became
    #: ready, so a long model download does not eat the idle time.
    last_activity_at: float
    #: Neither rule destroys before this (``maider extend``); None when never extended.
    extended_until: float | None = None
    #: The deadline a warning was already sent for, so each deadline is warned about once.
    warned_for: float | None = None

    def __post_init__(self) -> None:
        for name in ("started_at", "last_activity_at"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite time")
        for name in ("extended_until", "warned_for"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite time or None")


@dataclass(frozen=True)
class Decision:
    action: Action
    #: The rule whose deadline comes first ("max_lifetime" on a tie: traffic cannot move it).
    reason: Reason
    #: When the VM is (or was) due to be destroyed, Unix seconds.
    at: float
    seconds_left: float
    #: True when ``maider extend`` moved ``at`` past the rule's own deadline.
    extended: bool = False


def initial_state(now: float, *, ready_at: float | None = None) -> WatchdogState:
    """The state of a VM that started at ``now`` (idle time from ``ready_at`` when given)."""
    return WatchdogState(started_at=now, last_activity_at=now if ready_at is None else max(now, ready_at))


def deadlines(config: WatchdogConfig, state: WatchdogState) -> dict[Reason, float]:
    """The destroy time of each rule that applies, before any extension."""
    out: dict[Reason, float] = {"max_lifetime": state.started_at + config.max_lifetime_s}
    if config.idle_timeout_s is not None:
        out["idle"] = state.last_activity_at + config.idle_timeout_s
    return out


def decide(config: WatchdogConfig, state: WatchdogState, now: float) -> Decision:
    """What to do at ``now``: nothing, warn, or destroy.

    The earliest rule deadline wins; an extension postpones it to ``extended_until`` if that is
    later (``extended`` is then True, and ``reason`` still names the rule that will have expired).
    "warn" is returned throughout the last ``warn_before_s``; use :func:`needs_warning` and
    :func:`mark_warned` to send it once per deadline.
    """
    rules = deadlines(config, state)
    reason: Reason = "max_lifetime"
    at = rules["max_lifetime"]
    if "idle" in rules and rules["idle"] < at:
        reason, at = "idle", rules["idle"]
    extended = False
    if state.extended_until is not None and state.extended_until > at:
        at, extended = state.extended_until, True
    left = at - now
    if left <= 0:
        return Decision("destroy", reason, at, 0.0, extended)
    if left <= config.warn_before_s:
        return Decision("warn", reason, at, left, extended)
    return Decision("none", reason, at, left, extended)


def needs_warning(state: WatchdogState, decision: Decision) -> bool:
    """Whether ``decision`` is a warning not yet sent (a new deadline warns again)."""
    return decision.action == "warn" and state.warned_for != decision.at


def mark_warned(state: WatchdogState, decision: Decision) -> WatchdogState:
    return replace(state, warned_for=decision.at)


def record_activity(state: WatchdogState, at: float) -> WatchdogState:
    """Inference traffic seen at ``at`` (never moves the clock back)."""
    return replace(state, last_activity_at=max(state.last_activity_at, at))


def extend(
    state: WatchdogState, now: float, minutes: float, *, config: WatchdogConfig | None = None
) -> WatchdogState:
    """Keep the VM at least ``minutes`` longer: both the idle and the lifetime rule wait.

    Counts from the later of ``now`` and the current extension, and never reaches more than
    ``config.max_extension_s`` past ``now`` (compare the result's ``extended_until`` with what
    was asked to tell the user it was capped). Does not count as activity.
    """
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be positive, got {minutes}")
    cfg = config or WatchdogConfig()
    base = max(now, state.extended_until or now)
    until = min(base + minutes * 60, now + cfg.max_extension_s)
    until = max(until, state.extended_until or until)  # an extension is never shortened
    return replace(state, extended_until=until)


# --------------------------------------------------------------------------------------------
# The shared JSON
# --------------------------------------------------------------------------------------------


def dumps(config: WatchdogConfig, state: WatchdogState) -> str:
    """The small JSON document the VM-side service and the laptop both read and write."""
    doc = {"version": FORMAT_VERSION, "config": asdict(config), "state": asdict(state)}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def loads(text: str) -> tuple[WatchdogConfig, WatchdogState]:
    """Parse :func:`dumps` output. Unknown keys are ignored (a newer minor writer); a newer
    ``version`` or a missing or mistyped field raises ValueError."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"watchdog file is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("watchdog file must hold a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("watchdog file has no version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"watchdog file has version {version}, newer than this maider reads ({FORMAT_VERSION}): "
            "upgrade maider"
        )
    config_raw = _object(doc, "config")
    state_raw = _object(doc, "state")
    config = WatchdogConfig(
        idle_timeout_s=_optional(config_raw, "idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S),
        max_lifetime_s=_required(config_raw, "max_lifetime_s", DEFAULT_MAX_LIFETIME_S),
        warn_before_s=_required(config_raw, "warn_before_s", DEFAULT_WARN_BEFORE_S),
        max_extension_s=_required(config_raw, "max_extension_s", DEFAULT_MAX_EXTENSION_S),
    )
    state = WatchdogState(
        started_at=_required(state_raw, "started_at"),
        last_activity_at=_required(state_raw, "last_activity_at"),
        extended_until=_optional(state_raw, "extended_until", None),
        warned_for=_optional(state_raw, "warned_for", None),
    )
    return config, state


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"watchdog file: {key!r} must be an object")
    return value


def _required(raw: dict[str, Any], key: str, default: float | None = None) -> float:
    """A number; ``default`` when absent (None: the key is mandatory)."""
    if key not in raw:
        if default is None:
            raise ValueError(f"watchdog file: {key!r} is missing")
        return default
    value = _optional(raw, key, None)
    if value is None:
        raise ValueError(f"watchdog file: {key!r} must be a number, got null")
    return value


def _optional(raw: dict[str, Any], key: str, default: float | None) -> float | None:
    """A number or null; ``default`` when absent."""
    if key not in raw:
        return default
    value = raw[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"watchdog file: {key!r} must be a number, got {value!r}")
    return float(value)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
