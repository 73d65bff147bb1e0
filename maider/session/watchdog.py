"""The laptop's view of a session's idle watchdog, and the calls that change it over SSH.

The on-VM service (``maider_watchdog.py`` on the VM, installed by the user-data; source in
:mod:`maider.remote.vm_watchdog`) is authoritative: it reads vLLM's request counters, applies
:mod:`maider.ops.watchdog_policy`, and deletes the VM through the provider API (or powers it
off). The laptop:

- renders its non-secret config into the user-data (:func:`vm_config`);
- during ``up``, mints the deletion credential (``Provider.self_destruct``) and pushes it over
  SSH stdin into a 0600 file (:func:`install`), and records the non-secret facts in the
  session record's ``watchdog`` field; ``down`` revokes it (:func:`revoke`);
- reads (:func:`view`, :func:`vm_status`) and extends (:func:`extend`) the VM's state;
- announces maider's own inference traffic (:func:`probe_window`) so it never counts as use;
- updates the record of a session whose VM the watchdog removed (:func:`note_vm_state`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maider.errors import MaiderError

if TYPE_CHECKING:
    from maider.config import MaiderSettings
    from maider.ops.watchdog_policy import WatchdogConfig
    from maider.provider import Provider, VMInstance
    from maider.remote.ssh import SSHTarget
    from maider.session.lifecycle import Reporter
    from maider.session.state import SessionRecord, SessionStore

#: The session record's extra field holding the non-secret watchdog facts.
RECORD_FIELD = "watchdog"
MODE_DELETE = "delete"
MODE_POWEROFF = "poweroff"
#: The deletion credential outlives the max lifetime by this much: the VM's last chance to act
#: (the watchdog powers off at most ``POWEROFF_MARGIN_S`` after its deadline).
CREDENTIAL_MARGIN_S = 4 * 3600.0
#: How long the VM retries failing deletion calls before it powers off instead.
DESTROY_RETRY_S = 600.0
#: How long past an accepted deletion the VM waits before powering itself off anyway.
POWEROFF_MARGIN_S = 900.0
#: A probe window older than this no longer hides traffic (a laptop that died mid-probe).
PROBE_STALE_S = 600.0
SSH_TIMEOUT = 30.0


class WatchdogUnavailable(MaiderError):
    """The session has no watchdog, or its VM cannot be reached."""


@dataclass(frozen=True)
class WatchdogView:
    """What ``status``, ``list`` and ``watch`` show about a session's watchdog."""

    enabled: bool
    #: Last inference request by somebody other than maider (None: unknown).
    last_activity_at: dt.datetime | None = None
    #: When the watchdog will act (destroy, or power off where no credential exists).
    acts_at: dt.datetime | None = None
    #: "idle" or "max_lifetime": the rule whose deadline comes first.
    reason: str | None = None
    #: ``maider extend`` keeps the VM at least until then.
    extended_until: dt.datetime | None = None
    #: Where the figures come from: "vm" (read over SSH now), "laptop" (the laptop side's state),
    #: or "record" (the session record, possibly stale).
    source: str = "record"
    #: "delete" (the VM deletes itself through the API) or "poweroff" (it powers off; the
    #: laptop deletes it), None when unknown.
    mode: str | None = None
    #: The VM side's phase: "watching", "warned", "destroying", "destroyed", "powering-off".
    phase: str | None = None


@dataclass
class ProbeUsage:
    """maider's own inference traffic inside a :func:`probe_window`: add each response's usage."""

    requests: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, prompt_tokens: int, generation_tokens: int, requests: int = 1) -> None:
        self.requests += requests
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens


# --------------------------------------------------------------------------------------------
# Configuration and facts
# --------------------------------------------------------------------------------------------


def policy_config(settings: MaiderSettings) -> WatchdogConfig:
    """The settings' limits as the policy both sides apply (seconds)."""
    from maider.ops.watchdog_policy import WatchdogConfig

    return WatchdogConfig(
        idle_timeout_s=settings.idle_timeout_minutes * 60,
        max_lifetime_s=settings.max_lifetime_hours * 3600,
        warn_before_s=settings.watchdog_warn_minutes * 60,
    )


def vm_config(settings: MaiderSettings) -> dict[str, Any] | None:
    """The VM-side config (non-secret JSON in the user-data); None when the watchdog is off."""
    if not settings.watchdog:
        return None
    config = policy_config(settings)
    return {
        "version": 1,
        "idle_timeout_s": config.idle_timeout_s,
        "max_lifetime_s": config.max_lifetime_s,
        "warn_before_s": config.warn_before_s,
        "max_extension_s": float(config.max_extension_s),
        "poll_s": settings.watchdog_poll_seconds,
        "probe_stale_s": PROBE_STALE_S,
        "destroy_retry_s": DESTROY_RETRY_S,
        "poweroff_margin_s": POWEROFF_MARGIN_S,
        "http_timeout_s": 10.0,
    }


def facts(record: SessionRecord) -> dict[str, Any]:
    """The record's watchdog facts ({} for a session from before the watchdog)."""
    value = (record.model_extra or {}).get(RECORD_FIELD)
    return dict(value) if isinstance(value, dict) else {}


def _base_facts(settings: MaiderSettings) -> dict[str, Any]:
    config = policy_config(settings)
    return {
        "enabled": bool(settings.watchdog),
        "idle_timeout_s": config.idle_timeout_s,
        "max_lifetime_s": config.max_lifetime_s,
        "warn_before_s": config.warn_before_s,
    }


def _save_facts(store: SessionStore, session_id: str, values: dict[str, Any]) -> SessionRecord:
    def change(data: dict[str, Any]) -> None:
        current = data.get(RECORD_FIELD)
        data[RECORD_FIELD] = {**(current if isinstance(current, dict) else {}), **values}

    return store.mutate(session_id, change)


def record_disabled(store: SessionStore, record: SessionRecord, settings: MaiderSettings) -> SessionRecord:
    """``up`` with the watchdog off: the record says so."""
    return _save_facts(store, record.id, {**_base_facts(settings), "enabled": False, "mode": None})


def install(
    store: SessionStore,
    record: SessionRecord,
    provider: Provider,
    instance: VMInstance,
    settings: MaiderSettings,
    target: SSHTarget,
    reporter: Reporter,
) -> SessionRecord:
    """Give the running VM's watchdog its deletion credential, or leave it in power-off mode.

    ``provider.self_destruct`` mints (or names) the narrowest credential the vendor allows; its
    calls travel over SSH stdin into a 0600 file on the VM. A failure to mint or deliver it is a
    warning (power-off mode), never a failed ``up``. The record gets the non-secret facts.
    """
    from maider.provider import ProviderError
    from maider.remote import commands, ssh

    if not settings.watchdog:
        return record_disabled(store, record, settings)
    values = {**_base_facts(settings), "mode": MODE_POWEROFF, "credential": None, "revoke_handle": None}
    values["poweroff_stops_billing"] = bool(provider.poweroff_stops_billing)
    valid_for = settings.max_lifetime_hours * 3600 + CREDENTIAL_MARGIN_S
    try:
        destruct = provider.self_destruct(instance, valid_for_s=valid_for, label=f"maider-{record.id}")
    except ProviderError as exc:
        reporter.warn(
            f"the watchdog's deletion credential could not be created ({exc}); the VM will power itself "
            "off instead when idle"
        )
        destruct = None
    if destruct is not None:
        if destruct.revoke_handle:
            # Before anything else can fail or be interrupted: whoever cleans up can revoke it.
            _save_facts(store, record.id, {"revoke_handle": destruct.revoke_handle})
        secrets = [*destruct.secrets, *(v for c in destruct.calls for v in c.headers.values())]
        payload = json.dumps(
            {
                "credential": destruct.credential,
                "calls": [c.to_dict() for c in destruct.calls],
                "secrets": list(destruct.secrets),
                # The VM caps `maider extend` here: past it, the calls would be refused.
                "expires_at": destruct.expires_at.timestamp() if destruct.expires_at else None,
            }
        )
        try:
            ssh.run(
                target,
                commands.write_secret_file(commands.WATCHDOG_DESTROY_PATH),
                stdin=payload.encode(),
                timeout=SSH_TIMEOUT,
                secrets=secrets,
            ).check("writing the watchdog's deletion credential")
        except MaiderError as exc:
            reporter.warn(f"{exc}; the VM will power itself off instead when idle")
            with contextlib.suppress(Exception):
                if destruct.revoke_handle:
                    provider.revoke_self_destruct(destruct.revoke_handle)
        else:
            values.update(
                mode=MODE_DELETE,
                credential=destruct.credential,
                revoke_handle=destruct.revoke_handle,
                credential_expires_at=destruct.expires_at.isoformat() if destruct.expires_at else None,
            )
    return _save_facts(store, record.id, values)


def revoke(provider: Provider, record: SessionRecord, reporter: Reporter) -> bool:
    """Revoke the session's deletion credential (after its VM is gone). A failure is a warning."""
    from maider.provider import ProviderError

    handle = facts(record).get("revoke_handle")
    if not handle:
        return True
    try:
        provider.revoke_self_destruct(str(handle))
    except ProviderError as exc:
        reporter.warn(
            f"revoking the watchdog's credential of session {record.label} failed ({exc}); it expires by itself "
            f"({facts(record).get('credential_expires_at') or 'see the provider console'})"
        )
        return False
    return True


def describe(record: SessionRecord, provider_name: str | None = None) -> list[str]:
    """What ``up`` prints about the watchdog: the limits, and what happens on this provider."""
    info = facts(record)
    if not info:
        return []
    if not info.get("enabled"):
        return ["off (watchdog = false): nothing stops this VM when idle; `maider down` when done"]
    lines = [
        f"on the VM: acts after {_span(info.get('idle_timeout_s'))} without inference requests, or "
        f"{_span(info.get('max_lifetime_s'))} after start even in use; warns {_span(info.get('warn_before_s'))} "
        "before (`maider extend` postpones)"
    ]
    where = provider_name or record.provider
    if info.get("mode") == MODE_DELETE:
        lines.append(f"deletes the VM through the {where} API with {info.get('credential')}")
    elif info.get("poweroff_stops_billing"):
        lines.append(f"powers the VM off (no deletion credential); {where} stops billing compute then")
    else:
        lines.append(
            f"powers the VM off (no deletion credential): {where} STILL BILLS a powered-off VM until "
            "`maider down` deletes it"
        )
    return lines


def _span(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"


# --------------------------------------------------------------------------------------------
# Over SSH
# --------------------------------------------------------------------------------------------


def _target(store: SessionStore, record: SessionRecord) -> SSHTarget:
    from maider.config import load_settings
    from maider.remote import ssh
    from maider.session.lifecycle import user_keypair

    return ssh.session_target(store, record, user_keypair(load_settings()).private_path)


def _run(store: SessionStore, record: SessionRecord, command: str) -> dict[str, Any]:
    from maider.remote import commands, ssh

    if not facts(record).get("enabled"):
        raise WatchdogUnavailable(
            f"session {record.label} has no watchdog (it was started with watchdog = false)"
        )
    result = ssh.run(_target(store, record), command, timeout=SSH_TIMEOUT)
    if result.exit_code != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise WatchdogUnavailable(
            f"the watchdog on session {record.label}'s VM failed: {detail[-1] if detail else f'exit {result.exit_code}'}"
        )
    try:
        return commands.parse_watchdog_status(result.stdout)
    except ValueError as exc:
        raise WatchdogUnavailable(str(exc)) from None


def vm_status(store: SessionStore, record: SessionRecord) -> dict[str, Any]:
    """The VM's watchdog state (``status`` subcommand's JSON). Raises MaiderError subclasses."""
    return _run(store, record, _commands().WATCHDOG_STATUS)


def _commands() -> Any:
    from maider.remote import commands

    return commands


def _when(value: Any) -> dt.datetime | None:
    if not isinstance(value, (int, float)):
        return None
    return dt.datetime.fromtimestamp(float(value), tz=dt.timezone.utc)


def view_from_status(data: dict[str, Any], *, mode: str | None = None) -> WatchdogView:
    state = data.get("state") or {}
    decision = data.get("decision") or {}
    status = data.get("status") or {}
    return WatchdogView(
        enabled=True,
        last_activity_at=_when(state.get("last_activity_at")),
        acts_at=_when(decision.get("at")),
        reason=decision.get("reason"),
        extended_until=_when(state.get("extended_until")),
        source="vm",
        mode=mode,
        phase=status.get("phase"),
    )


def _remember(store: SessionStore, record: SessionRecord, current: WatchdogView) -> None:
    """Keep the last VM reading in the record: what ``list`` shows when the VM is gone."""
    seen = {
        "reason": current.reason,
        "acts_at": current.acts_at.isoformat() if current.acts_at else None,
        "phase": current.phase,
        "read_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    with contextlib.suppress(Exception):
        _save_facts(store, record.id, {"last_seen": seen})


def view(store: SessionStore, record: SessionRecord, *, live: bool = True) -> WatchdogView | None:
    """The session's watchdog state (``live``: read the VM over SSH, else only local state).

    None for a session without watchdog facts (made by an older maider). A VM that cannot be
    read gives the record's view (``source`` "record").
    """
    info = facts(record)
    if not info:
        return None
    if not info.get("enabled"):
        return WatchdogView(enabled=False)
    mode = info.get("mode")
    if live and record.ip:
        try:
            current = view_from_status(vm_status(store, record), mode=mode)
        except MaiderError:
            pass
        else:
            _remember(store, record, current)
            return current
    return recorded_view(record, info)


def recorded_view(record: SessionRecord, info: dict[str, Any] | None = None) -> WatchdogView:
    """The record's last reading of the VM side (else the lifetime rule's deadline); no I/O."""
    info = facts(record) if info is None else info
    seen = info.get("last_seen") or {}
    acts_at = _parse_time(seen.get("acts_at"))
    reason = seen.get("reason")
    if acts_at is None and isinstance(info.get("max_lifetime_s"), (int, float)):
        acts_at = record.created_at + dt.timedelta(seconds=float(info["max_lifetime_s"]))
        reason = "max_lifetime"
    return WatchdogView(
        enabled=True,
        acts_at=acts_at,
        reason=reason,
        source="record",
        mode=info.get("mode"),
        phase=seen.get("phase"),
    )


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def extend(store: SessionStore, record: SessionRecord, seconds: float) -> WatchdogView:
    """Keep the session's VM at least ``seconds`` longer (the VM caps it; compare
    ``extended_until``). Raises :class:`WatchdogUnavailable` when the VM cannot be reached."""
    if not (seconds > 0 and seconds < float("inf")):
        raise MaiderError(f"the extension must be a positive duration, not {seconds!r} s")
    current = view_from_status(
        _run(store, record, _commands().watchdog_extend(seconds)), mode=facts(record).get("mode")
    )
    _remember(store, record, current)
    return current


@contextlib.contextmanager
def probe_window(store: SessionStore, record: SessionRecord) -> Iterator[ProbeUsage]:
    """Wrap maider's own completions: the watchdogs do not count what is added to the usage.

    Opens a window on the VM (``probe-begin``) and closes it with the totals (``probe-end``),
    also when the body raises. Without a watchdog, or when the VM cannot be reached, the body
    still runs (a note says the traffic may count as use): a check must not fail for it.
    """
    commands = _commands()
    usage = ProbeUsage()
    opened = False
    if facts(record).get("enabled"):
        try:
            _run(store, record, commands.WATCHDOG_PROBE_BEGIN)
            opened = True
        except MaiderError as exc:
            usage.notes.append(
                f"the watchdog was not told about maider's own requests ({exc}); they may count as use"
            )
    try:
        yield usage
    finally:
        if opened:
            try:
                _run(
                    store,
                    record,
                    commands.watchdog_probe_end(usage.requests, usage.prompt_tokens, usage.generation_tokens),
                )
            except MaiderError as exc:
                usage.notes.append(
                    f"closing the watchdog's probe window failed ({exc}); it closes itself later"
                )
        if usage.notes:
            from maider.output import warn

            for note in usage.notes:
                warn(note)


# --------------------------------------------------------------------------------------------
# A VM the watchdog removed
# --------------------------------------------------------------------------------------------


def acted_reason(record: SessionRecord, now: dt.datetime | None = None) -> str:
    """Why the watchdog most likely acted, from the last reading (else the lifetime rule's time)."""
    info = facts(record)
    seen = info.get("last_seen") or {}
    if seen.get("reason") in ("idle", "max_lifetime"):
        reason = str(seen["reason"])
    else:
        now = now or dt.datetime.now(dt.timezone.utc)
        lifetime = info.get("max_lifetime_s")
        old = isinstance(lifetime, (int, float)) and (now - record.created_at).total_seconds() >= float(
            lifetime
        )
        reason = "max_lifetime" if old else "idle"
    return "max lifetime" if reason == "max_lifetime" else "idle"


def gone_reason(record: SessionRecord, *, due_only: bool = False) -> tuple[str, dt.datetime] | None:
    """Why a READY session's VM is gone when its on-VM watchdog removed it: ("deleted by the
    VM's watchdog: idle", when), for ``list``/``status`` (None: the session has none).

    ``due_only`` (``list``, where a VM missing from one listing is not proof): only when the
    last known deadline has passed; otherwise None, and the VM stays "gone" for ``status`` or
    ``cleanup`` to confirm.
    """
    info = facts(record)
    if not info.get("enabled"):
        return None
    now = dt.datetime.now(dt.timezone.utc)
    if due_only:
        acts_at = recorded_view(record, info).acts_at
        if acts_at is None or acts_at > now:
            return None
    return f"deleted by the VM's watchdog: {acted_reason(record, now)}", now


def note_vm_state(store: SessionStore, record: SessionRecord, vm_state: str | None) -> SessionRecord:
    """Update the record of a READY session whose VM the on-VM watchdog deleted or powered off.

    ``vm_state`` is what the provider says (``survey``'s ``SessionView.vm_state``): "gone" →
    status ``deleted`` with ``end_reason`` "deleted by the VM's watchdog: idle"
    (:func:`maider.session.lifecycle.record_ended`); "stopped" → ``last_error`` says it powered
    off and whether it still bills (the status stays, so ``down`` deletes it). Any other record
    is returned unchanged.
    """
    from maider.session.lifecycle import record_ended
    from maider.session.state import SessionStatus

    if record.status is not SessionStatus.READY:
        return record
    why = gone_reason(record)
    if why is None:
        return record
    if vm_state == "gone":
        return record_ended(store, record, *why)
    if vm_state == "stopped":
        bills = (
            ""
            if facts(record).get("poweroff_stops_billing")
            else "; it still bills: `maider down` deletes it"
        )
        message = f"powered off by the watchdog on the VM ({acted_reason(record)}){bills}"
        if record.last_error != message:
            return store.update(record.id, last_error=message)
    return record
