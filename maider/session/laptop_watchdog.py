"""The laptop side of the idle watchdog: one detached process per session, and ``maider extend``.

The on-VM service is the first line (a sleeping laptop does not keep a VM alive); this process is
the second: it acts when the VM side cannot (powered off instead of deleted, its service dead,
no API credential on the VM). Run as ``python -m maider.session.laptop_watchdog --state-dir D ID``
by :func:`start`, right after ``up`` reports ready.

What the previous generation got wrong (shared notes prior-art-maider.md §5), and what this does:

- Its watchdog was a ``multiprocessing`` daemon child, killed when ``maider up`` returned. Here it
  is its own process in its own session (``start_new_session``), so it outlives ``up`` and the
  terminal; its pid and the process's start token are in the session record (a reused pid is
  not mistaken for it), and ``down`` stops its process group before deleting.
- It counted its own probes and read the wrong container's log. Here the signal is vLLM's request
  counters (:mod:`maider.ops.metrics`): the VM side's state read over SSH, plus ``/metrics``
  scraped through this laptop's tunnel (``GET /metrics`` is not inference: it counts nothing).
  This process never sends an inference request.
- ``extend`` wrote a file nobody read. Here ``maider extend`` writes the laptop state file this
  process re-reads every tick, and extends the VM side over SSH.

Files in the session directory (all 0600): ``watchdog-laptop.json`` (the shared
:func:`maider.ops.watchdog_policy.dumps` document: config and state), ``watchdog-laptop.log``
(this process's stdout/stderr), and two lock files (one process per session; state updates).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maider.errors import MaiderError
from maider.ops import watchdog_policy as policy
from maider.session import watchdog
from maider.session.state import SessionNotFound, SessionRecord, SessionStatus, SessionStore, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from maider.config import MaiderSettings
    from maider.provider import InstanceStatus
    from maider.session.watchdog import WatchdogView

STATE_FILE = "watchdog-laptop.json"
LOG_FILE = "watchdog-laptop.log"
PID_LOCK_FILE = "watchdog-laptop.pid.lock"
STATE_LOCK_FILE = "watchdog-laptop.state.lock"
#: How long ``stop`` waits for SIGTERM to work before SIGKILL.
STOP_WAIT = 5.0
#: ``maider extend --minutes``: at least one minute, at most what the policy lets an extension reach.
MIN_EXTEND_MINUTES = 1.0
MAX_EXTEND_MINUTES = policy.DEFAULT_MAX_EXTENSION_S / 60
#: Timeout of the /metrics scrape through the tunnel.
SCRAPE_TIMEOUT = 5.0

log = logging.getLogger("maider.laptop_watchdog")


class WatchdogOff(MaiderError):
    """The session has no watchdog to extend."""


class ExtendFailed(MaiderError):
    """The laptop side was extended, the VM side was not: its old deadline still holds."""


# ------------------------------------------------------------------------------------ state file


def state_path(store: SessionStore, session_id: str) -> Path:
    return store.session_dir(session_id) / STATE_FILE


def log_path(store: SessionStore, session_id: str) -> Path:
    return store.session_dir(session_id) / LOG_FILE


@contextlib.contextmanager
def _state_lock(store: SessionStore, session_id: str) -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(store.session_dir(session_id) / STATE_LOCK_FILE), timeout=30):
        yield


def read_state(
    store: SessionStore, session_id: str
) -> tuple[policy.WatchdogConfig, policy.WatchdogState] | None:
    """The laptop side's config and state (None: the session has no laptop watchdog)."""
    try:
        text = state_path(store, session_id).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return policy.loads(text)


def init_state(store: SessionStore, record: SessionRecord, settings: MaiderSettings) -> None:
    """Write the initial state (idle time counts from ready); keeps an existing file."""
    with _state_lock(store, record.id):
        if state_path(store, record.id).exists():
            return
        ready = record.ready_at.timestamp() if record.ready_at else None
        state = policy.initial_state(record.created_at.timestamp(), ready_at=ready)
        atomic_write(state_path(store, record.id), policy.dumps(watchdog.policy_config(settings), state))


def merge_state(
    store: SessionStore,
    session_id: str,
    *,
    activity_at: float | None = None,
    extended_until: float | None = None,
    warned_for: float | None = None,
) -> tuple[policy.WatchdogConfig, policy.WatchdogState]:
    """Fold new facts into the state file under its lock: times only move forward, so the VM's
    view, the tunnel's and `maider extend`'s never undo each other."""
    with _state_lock(store, session_id):
        current = read_state(store, session_id)
        if current is None:
            raise WatchdogOff(f"session {session_id} has no laptop watchdog state")
        config, state = current
        if activity_at is not None:
            state = policy.record_activity(state, activity_at)
        if extended_until is not None and (
            state.extended_until is None or extended_until > state.extended_until
        ):
            state = dataclasses.replace(state, extended_until=extended_until)
        if warned_for is not None:
            state = dataclasses.replace(state, warned_for=warned_for)
        atomic_write(state_path(store, session_id), policy.dumps(config, state))
    return config, state


# ------------------------------------------------------------------------------------ the process


def start_token(pid: int) -> str | None:
    """What tells this process from a later one with the same pid: its start time (None: no such
    live process)."""
    if Path("/proc/self/stat").exists():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: count after the last ")".
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # exited, not yet reaped
            return None
        return fields[19]  # field 22: start time in clock ticks since boot
    try:  # macOS and the BSDs: no /proc
        out = subprocess.run(
            ["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else out


def is_running(record: SessionRecord) -> bool:
    """Whether the session's laptop watchdog process (that very process) is alive."""
    pid = record.laptop_watchdog_pid
    if pid is None:
        return False
    token = start_token(pid)
    # Without the start token recorded, a live pid may be anybody's (pids are reused).
    return token is not None and record.laptop_watchdog_started == token


#: Record field: the working directory of the `up` that started the session.
WORKDIR_FIELD = "workdir"


def start(store: SessionStore, record: SessionRecord, settings: MaiderSettings) -> int:
    """Start the session's laptop watchdog, detached; returns its pid (a no-op when it runs)."""
    if is_running(record):
        assert record.laptop_watchdog_pid is not None
        return record.laptop_watchdog_pid
    init_state(store, record, settings)
    # The directory `up` ran in: the process reads ./.env from there, also when `extend` or a
    # failed `down` restarts it from elsewhere.
    workdir = (record.model_extra or {}).get(WORKDIR_FIELD)
    if not (isinstance(workdir, str) and Path(workdir).is_dir()):
        workdir = str(Path.cwd())
        store.mutate(record.id, lambda data: data.update({WORKDIR_FIELD: workdir}))
    path = log_path(store, record.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
        # Its own session: neither the end of `up` nor a Ctrl-C or hang-up of the terminal
        # reaches it. The environment is the parent's (config file path, MAIDER_*, credentials:
        # never argv); it loads the settings itself from there.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maider.session.laptop_watchdog",
                "--state-dir",
                str(store.root),
                record.id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
            cwd=workdir,
        )
    finally:
        os.close(fd)
    # Not waited for by design; tell subprocess so (no ResourceWarning when the Popen is dropped).
    proc.returncode = 0
    store.update(record.id, laptop_watchdog_pid=proc.pid, laptop_watchdog_started=start_token(proc.pid))
    return proc.pid


def stop(store: SessionStore, record: SessionRecord, timeout: float = STOP_WAIT) -> bool:
    """Stop the session's laptop watchdog (its whole process group); True when one was running."""
    pid = record.laptop_watchdog_pid
    if pid is None or pid == os.getpid():
        return False
    running = is_running(record)
    if running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while start_token(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if start_token(pid) is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(SessionNotFound):
        store.update(record.id, laptop_watchdog_pid=None, laptop_watchdog_started=None)
    return running


class _LogReporter:
    """lifecycle's Reporter, writing to the watchdog's log."""

    def phase(self, name: str, text: str) -> None:
        log.info("%s", text)

    def progress(self, text: str) -> None:
        log.info("%s", text)

    def phase_done(self, name: str, seconds: float) -> None:
        pass

    def info(self, text: str) -> None:
        log.info("%s", text)

    def warn(self, text: str) -> None:
        log.warning("%s", text)


def hhmm(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%H:%M")


def describe_rule(reason: str, config: policy.WatchdogConfig) -> str:
    """ "idle 45 min" / "max lifetime 8 h": why the watchdog acts, for messages."""
    if reason == "idle" and config.idle_timeout_s is not None:
        return f"idle {config.idle_timeout_s / 60:g} min"
    return f"max lifetime {config.max_lifetime_s / 3600:g} h"


class Watcher:
    """The loop of the detached process for one session."""

    def __init__(self, store: SessionStore, session_id: str, settings: MaiderSettings) -> None:
        from maider.session import lifecycle

        self.store = store
        self.session_id = session_id
        self.settings = settings
        self.poll = settings.watchdog_poll_seconds
        self.stopped = threading.Event()
        self.providers = lifecycle._Providers()
        self.previous_metrics: Any = None
        #: Set once this process decided to delete: later ticks retry the delete.
        self.destroying: str | None = None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stopped.set())
        log.info("watching session %s every %g s (pid %d)", self.session_id, self.poll, os.getpid())
        # The first look one interval after start: `up` has just seen the VM ready.
        while not self.stopped.wait(self.poll):
            try:
                if self.tick(time.time()):
                    return 0
            except SessionNotFound:
                log.info("session %s has no record any more (`maider down` ran): exiting", self.session_id)
                return 0
            except Exception:
                log.exception("watchdog tick failed; retrying in %g s", self.poll)
        log.info("stopped by SIGTERM (`maider down`?)")
        return 0

    def tick(self, now: float) -> bool:
        """One look at the session; True when there is nothing left to watch."""
        from maider.provider import InstanceStatus

        record = self.store.get(self.session_id)
        if self.destroying is not None:
            return self._destroy(record, self.destroying)
        if record.status is SessionStatus.DELETING:
            # `maider down` sent a delete it could not confirm (or got an error): finish it, as
            # the user asked, instead of leaving a VM that may still bill.
            return self._destroy(
                record, "deleted by the laptop watchdog: finishing a `maider down` that failed"
            )
        if record.status is not SessionStatus.READY:
            log.info("session %s is %s: nothing to watch, exiting", record.label, record.status.value)
            return True
        if record.laptop_watchdog_pid != os.getpid():
            self.store.update(
                record.id, laptop_watchdog_pid=os.getpid(), laptop_watchdog_started=start_token(os.getpid())
            )
        activity = self._tunnel_activity(record, now)
        vm_activity, vm_extended = self._vm_side(record)
        config, state = merge_state(
            self.store,
            record.id,
            activity_at=max((t for t in (activity, vm_activity) if t is not None), default=None),
            extended_until=vm_extended,
        )
        vm_status = self._provider_status(record)
        if vm_status is InstanceStatus.DELETED:
            self._vanished(record, config, state, now)
            return True
        decision = policy.decide(config, state, now)
        if vm_status in (InstanceStatus.STOPPING, InstanceStatus.STOPPED):
            if decision.action == "destroy" or _vm_side_acted(record, now):
                # Power-off mode: the VM side had no credential to delete itself, so it powered
                # off. A stopped VM still bills on most clouds (and keeps its disk): delete it now.
                return self._destroy(
                    record,
                    "deleted by the laptop watchdog: the VM's watchdog had powered it off (a stopped VM "
                    "still bills)",
                )
            # Host maintenance, the provider's console, a reboot: not a watchdog's doing. The
            # idle rule still applies (a stopped VM serves nobody), so it goes at the deadline.
            log.warning(
                "the VM is %s but no watchdog acted (maintenance? the provider's console?); it still "
                "bills and is deleted at the watchdog's deadline unless used again",
                vm_status.value,
            )
        if policy.needs_warning(state, decision):
            self._warn(record, config, decision)
            merge_state(self.store, record.id, warned_for=decision.at)
        if decision.action == "destroy":
            return self._destroy(
                record, f"deleted by the laptop watchdog: {describe_rule(decision.reason, config)}"
            )
        return False

    # -- signals ---------------------------------------------------------------------------

    def _tunnel_activity(self, record: SessionRecord, now: float) -> float | None:
        """``now`` when vLLM's counters (read through this laptop's tunnel) moved since the last
        tick. The tunnel being down is no signal: the VM side and the deadline decide then."""
        from maider.ops import metrics
        from maider.session.lifecycle import local_opener

        if record.api_port is None:
            return None
        try:
            with local_opener().open(
                f"http://127.0.0.1:{record.api_port}/metrics", timeout=SCRAPE_TIMEOUT
            ) as resp:
                current = metrics.parse_metrics(resp.read().decode("utf-8", "replace"))
        except (OSError, ValueError) as exc:
            log.info("no /metrics through the tunnel (%s)", exc)
            return None
        previous, self.previous_metrics = self.previous_metrics, current
        if previous is not None and metrics.activity_between(previous, current):
            log.info("inference traffic seen through the tunnel")
            return now
        return None

    def _vm_side(self, record: SessionRecord) -> tuple[float | None, float | None]:
        """The VM side's last activity and extension, read over SSH. When the VM cannot be reached
        the last known state stands: the user's traffic goes through this laptop's tunnel, so if
        this laptop cannot reach the VM neither can the user, and deleting at the deadline is safe."""
        try:
            view = watchdog.view(self.store, record, live=True)
        except Exception as exc:
            log.info("VM side unreachable (%s); keeping the last known state", exc)
            return None, None
        if view is None or view.source != "vm":
            return None, None
        activity = view.last_activity_at.timestamp() if view.last_activity_at else None
        extended = view.extended_until.timestamp() if view.extended_until else None
        return activity, extended

    def _provider_status(self, record: SessionRecord) -> InstanceStatus | None:
        from maider.provider import ProviderError

        if record.instance_id is None:
            return None
        try:
            return self.providers.get(record.provider).get_instance_status(record.instance_id)
        except (ProviderError, MaiderError) as exc:
            log.warning("could not read the VM's status from %s: %s", record.provider, exc)
            return None

    # -- actions ---------------------------------------------------------------------------

    def _warn(self, record: SessionRecord, config: policy.WatchdogConfig, decision: policy.Decision) -> None:
        from maider.notify import notify

        label = record.label
        text = (
            f"session {label} will be deleted at {hhmm(decision.at)} ({describe_rule(decision.reason, config)}); "
            f"run `maider extend {label}` to keep it"
        )
        sent = notify("maider", text, urgent=True)
        log.warning("%s%s", text, "" if sent else " (no desktop notification could be shown)")

    def _destroy(self, record: SessionRecord, reason: str) -> bool:
        from maider.notify import notify
        from maider.session import lifecycle

        self.destroying = reason
        log.warning("%s: deleting session %s's VM %s", reason, record.label, record.instance_id)
        try:
            result = lifecycle.down(
                reporter=_LogReporter(),
                store=self.store,
                settings=self.settings,
                record=record,
                end_reason=reason,
            )
        except MaiderError as exc:
            log.error("%s; retrying in %g s", exc, self.poll)
            return False
        cost = lifecycle.format_money(result.cost, result.currency)
        log.warning(
            "deleted %s (ran %s, cost ≈ %s)",
            ", ".join(result.deleted) or "nothing",
            lifecycle.format_duration(result.runtime_seconds),
            cost,
        )
        notify("maider", f"session {record.label}: {reason}; cost ≈ {cost}")
        return True

    def _vanished(
        self, record: SessionRecord, config: policy.WatchdogConfig, state: policy.WatchdogState, now: float
    ) -> None:
        """The VM is gone and this process did not delete it: say why, as far as it is known."""
        from maider.session import lifecycle

        reason, ended_at = why_gone(record, config, state, now)
        try:
            provider = self.providers.get(record.provider)
        except MaiderError:
            provider = None  # the record still ends; `maider down` releases the rest later
        final = lifecycle.record_ended(self.store, record, reason, ended_at, provider=provider)
        log.warning("%s; the record says so (cost ≈ %s)", reason, final.final_cost)


def why_gone(
    record: SessionRecord, config: policy.WatchdogConfig, state: policy.WatchdogState, now: float
) -> tuple[str, dt.datetime]:
    """Why a watched session's VM is gone, and about when it ended: the watchdog's deadline when it
    has passed (the VM side acted), else "outside maider" at ``now``."""
    decision = policy.decide(config, state, now)
    if decision.action == "destroy":
        reason = f"deleted by the VM's watchdog: {describe_rule(decision.reason, config)}"
        ended = min(max(decision.at, record.created_at.timestamp()), now)
    else:
        reason = "the VM is gone, deleted outside maider (the provider's console?)"
        ended = now
    return reason, dt.datetime.fromtimestamp(ended, dt.timezone.utc)


def has_state(store: SessionStore, session_id: str) -> bool:
    """Whether the session has a laptop side's state file (readable or not)."""
    return state_path(store, session_id).exists()


def explain_gone(
    store: SessionStore, record: SessionRecord, *, due_only: bool = False
) -> tuple[str, dt.datetime] | None:
    """For ``list``/``status``: why a watched session's VM is gone (None: no laptop state, or
    with ``due_only`` a watchdog deadline that has not passed, so no watchdog did it)."""
    try:
        local = read_state(store, record.id)
    except ValueError:
        return None
    if local is None:
        return None
    now = time.time()
    if due_only and policy.decide(*local, now).action != "destroy":
        return None
    return why_gone(record, *local, now)


# ------------------------------------------------------------------------------------ extend


@dataclass(frozen=True)
class Extension:
    record: SessionRecord
    #: The laptop side keeps the VM until then (None: the session has no laptop side).
    laptop_until: float | None
    #: The extension was cut to the policy's maximum reach.
    capped: bool
    #: The session has a VM-side watchdog, and whether extending it worked.
    vm_side: bool
    vm_error: str | None
    #: When the watchdog acts now, and why.
    acts_at: float | None
    reason: str | None
    #: The VM capped the extension where its deletion credential expires.
    credential_cap: bool = False


def check_minutes(minutes: float) -> None:
    if not (MIN_EXTEND_MINUTES <= minutes <= MAX_EXTEND_MINUTES):
        raise MaiderError(
            f"--minutes must be between {MIN_EXTEND_MINUTES:g} and {MAX_EXTEND_MINUTES:g} (an extension reaches "
            f"at most {MAX_EXTEND_MINUTES / 60:g} h ahead), not {minutes:g}"
        )


def _vm_side_acted(record: SessionRecord, now: float) -> bool:
    """Whether the VM's watchdog was last seen acting, or its last known deadline has passed."""
    info = watchdog.facts(record)
    seen = info.get("last_seen") or {}
    if seen.get("phase") in ("destroying", "destroyed", "powering-off"):
        return True
    if not info.get("enabled"):
        return False
    acts_at = watchdog.recorded_view(record, info).acts_at
    return acts_at is not None and acts_at.timestamp() <= now


def _vm_side_enabled(record: SessionRecord) -> bool:
    return bool(watchdog.facts(record).get("enabled"))


def extend(
    name: str | None,
    minutes: float,
    *,
    store: SessionStore | None = None,
    settings: MaiderSettings | None = None,
) -> Extension:
    """Postpone both watchdogs of a session by ``minutes`` (see :func:`policy.extend`)."""
    from maider.config import load_settings

    check_minutes(minutes)
    store = store or SessionStore()
    record = store.resolve(name)
    local = read_state(store, record.id)
    vm_side = _vm_side_enabled(record)
    if local is None and not vm_side:
        raise WatchdogOff(
            f"session {record.label} has no watchdog (it was started with watchdog off): nothing to extend"
        )
    if record.status is not SessionStatus.READY:
        raise MaiderError(
            f"session {record.label} is {record.status.value}: only a ready session can be extended"
        )
    vm_error: str | None = None
    vm_until: float | None = None
    if vm_side:
        try:
            vm_view = watchdog.extend(store, record, minutes * 60)
        except Exception as exc:
            vm_error = str(exc) or type(exc).__name__
        else:
            vm_until = vm_view.extended_until.timestamp() if vm_view.extended_until else None
    laptop_until: float | None = None
    capped = credential_cap = False
    acts_at: float | None = None
    reason: str | None = None
    if local is not None:
        now = time.time()
        with _state_lock(store, record.id):
            current = read_state(store, record.id)
            assert current is not None
            config, state = current
            extended = policy.extend(state, now, minutes, config=config)
            atomic_write(state_path(store, record.id), policy.dumps(config, extended))
        laptop_until = extended.extended_until
        wanted = max(now, state.extended_until or now) + minutes * 60
        capped = laptop_until is not None and laptop_until < wanted - 1
        decision = policy.decide(config, extended, now)
        acts_at, reason = decision.at, decision.reason
        if vm_until is not None and laptop_until is not None and vm_until < laptop_until - 1:
            # The VM stopped short (its deletion credential expires): its deadline is the one.
            laptop_until, capped, credential_cap = vm_until, True, True
        if not is_running(record):
            # The laptop slept or rebooted: the extension is only kept if something reads it.
            start(store, record, settings or load_settings())
    return Extension(
        store.get(record.id), laptop_until, capped, vm_side, vm_error, acts_at, reason, credential_cap
    )


# ------------------------------------------------------------------------------------ list/status


def describe(store: SessionStore, record: SessionRecord, *, live: bool) -> WatchdogView | None:
    """What ``list`` (``live=False``: local state only) and ``status`` (``live=True``: also the
    VM over SSH) show: the VM side's view merged with the laptop side's (latest activity and
    extension win). None for a session that is over."""
    if record.status in (SessionStatus.DELETED, SessionStatus.DELETING, SessionStatus.FAILED):
        return None
    vm_view: WatchdogView | None = None
    with contextlib.suppress(Exception):
        vm_view = watchdog.view(store, record, live=live)
    try:
        local = read_state(store, record.id)
    except ValueError:
        local = None
    if local is None:
        return vm_view or watchdog.WatchdogView(enabled=False)
    config, state = local
    source = "laptop"
    if vm_view is not None and vm_view.enabled:
        if vm_view.last_activity_at is not None:
            state = policy.record_activity(state, vm_view.last_activity_at.timestamp())
        if vm_view.extended_until is not None:
            until = vm_view.extended_until.timestamp()
            if state.extended_until is None or until > state.extended_until:
                state = dataclasses.replace(state, extended_until=until)
        source = vm_view.source
    decision = policy.decide(config, state, time.time())

    def when(ts: float | None) -> dt.datetime | None:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc) if ts is not None else None

    return watchdog.WatchdogView(
        enabled=True,
        last_activity_at=when(state.last_activity_at),
        acts_at=when(decision.at),
        reason=decision.reason,
        extended_until=when(state.extended_until),
        source=source,
    )


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """ "3 min ago" (or "-")."""
    if when is None:
        return "-"
    seconds = max(0.0, ((now or dt.datetime.now(dt.timezone.utc)) - when).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def acts_text(view: WatchdogView | None) -> str:
    """ "acts at 14:05 (idle)", "watchdog off", or "-" (a session that is over)."""
    if view is None:
        return "-"
    if not view.enabled or view.acts_at is None:
        return "watchdog off"
    reason = (view.reason or "").replace("_", " ")
    extended = ", extended" if view.extended_until is not None and view.extended_until >= view.acts_at else ""
    return f"acts at {view.acts_at.astimezone().strftime('%H:%M')} ({reason}{extended})"


def view_json(view: WatchdogView | None, record: SessionRecord) -> dict[str, Any] | None:
    if view is None:
        return None

    def iso(when: dt.datetime | None) -> str | None:
        return when.isoformat(timespec="seconds") if when else None

    return {
        "enabled": view.enabled,
        "last_activity_at": iso(view.last_activity_at),
        "acts_at": iso(view.acts_at),
        "reason": view.reason,
        "extended_until": iso(view.extended_until),
        "source": view.source,
        "laptop_process_alive": is_running(record),
    }


# ------------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    from filelock import FileLock, Timeout

    from maider.config import load_settings

    parser = argparse.ArgumentParser(prog="python -m maider.session.laptop_watchdog")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("session_id")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    store = SessionStore(args.state_dir)
    try:
        store.get(args.session_id)
    except MaiderError as exc:
        log.error("%s", exc)
        return 1
    # One process per session: the lock lives as long as this process (released by the OS).
    lock = FileLock(str(store.session_dir(args.session_id) / PID_LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        log.info("another laptop watchdog already watches session %s: exiting", args.session_id)
        return 0
    try:
        return Watcher(store, args.session_id, load_settings()).run()
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
