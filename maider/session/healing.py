"""Waiting for vLLM to answer, and healing it when it stops: the apply loop around maider.ops.heal.

Used by ``up`` (the "vllm" phase) and ``switch-model``. What runs on the VM is a :class:`Stack`:
the model, the :class:`~maider.sizing.VLLMSettings`, the extra container environment and what
else renders compose.yaml. The session record stores it (``vllm``, ``vllm_env``, ``stack``), so
a later heal or switch re-renders the compose file exactly.

When vLLM's container stops (exited, dead, restarting), :class:`Healer`:

1. reads the vLLM *service's* log (``docker compose logs … vllm``, never the newest container);
2. diagnoses it (:func:`maider.ops.heal.diagnose`) and plans a fix (``plan_fix``, counting the
   OOM steps from the utilization the plan chose);
3. renders compose.yaml with the fix, uploads it on SSH stdin and **recreates** the containers
   (a restart would not re-read the file);
4. records a :class:`~maider.ops.heal.HealAttempt` in the session and reports it.

"Healed" means vLLM answers a 1-token completion again (:func:`wait_ready`), never merely that
no error pattern was found. At most :data:`~maider.ops.heal.MAX_ATTEMPTS` tries; a model that is
missing, gated or refused stops at once with one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maider.errors import MaiderError
from maider.ops import heal
from maider.remote import commands, ssh
from maider.sizing import VLLMSettings

if TYPE_CHECKING:  # pragma: no cover
    from maider.plan import Plan
    from maider.session.lifecycle import Reporter
    from maider.session.state import SessionRecord, SessionStore

#: Per-call timeout of the commands that rewrite the stack (recreating may pull nothing, but
#: stopping a loaded vLLM takes a few seconds).
APPLY_TIMEOUT = 300.0
READ_TIMEOUT = 30.0
#: Lines of vLLM's log read for a diagnosis: enough for the traceback of the last start.
LOG_TAIL = 200


class VLLMNotReady(MaiderError):
    """vLLM did not become ready (stopped for good, could not be healed, or timed out)."""


# ------------------------------------------------------------------------------------ the stack


@dataclass(frozen=True)
class Stack:
    """What runs on the VM, enough to render compose.yaml again."""

    model_id: str
    vllm: VLLMSettings
    vllm_image: str
    openwebui_image: str
    enable_openwebui: bool
    gpu_vendor: str
    gpu_count: int
    #: The utilization the plan chose before any healing: the OOM steps start from it.
    configured_utilization: float
    #: Extra environment of the vLLM container (healing's NCCL variables).
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_plan(cls, plan: Plan) -> Stack:
        settings = plan.settings
        vllm = plan.fit.settings
        return cls(
            model_id=plan.model.id,
            vllm=vllm,
            vllm_image=settings.vllm_image,
            openwebui_image=settings.openwebui_image,
            enable_openwebui=settings.enable_openwebui,
            gpu_vendor=plan.vm_type.gpu.vendor,
            gpu_count=plan.vm_type.gpu_count,
            configured_utilization=vllm.gpu_memory_utilization,
        )

    @classmethod
    def from_record(cls, record: SessionRecord) -> Stack:
        """The stack a session record describes; MaiderError if it predates these fields."""
        if record.vllm is None or record.stack is None:
            raise MaiderError(
                f"session {record.label} does not record its vLLM settings (started by an older maider): "
                f"`maider down {record.label}` and `maider up` again"
            )
        data = dict(record.vllm)
        data["extra_args"] = tuple(data.get("extra_args") or ())
        known = {f.name for f in dataclasses.fields(VLLMSettings)}
        vllm = VLLMSettings(**{k: v for k, v in data.items() if k in known})
        s = record.stack
        return cls(
            model_id=record.model,
            vllm=vllm,
            vllm_image=str(s["vllm_image"]),
            openwebui_image=str(s["openwebui_image"]),
            enable_openwebui=bool(s["enable_openwebui"]),
            gpu_vendor=str(s["gpu_vendor"]),
            gpu_count=int(s["gpu_count"]),
            configured_utilization=float(s["configured_utilization"]),
            env=dict(record.vllm_env),
        )

    def record_fields(self) -> dict[str, Any]:
        """The session record's fields for this stack (``store.update(id, **fields)``)."""
        vllm = dataclasses.asdict(self.vllm)
        vllm["extra_args"] = list(self.vllm.extra_args)
        return {
            "model": self.model_id,
            "served_model_name": self.served_name,
            "max_model_len": self.vllm.max_model_len,
            "vllm": vllm,
            "vllm_env": dict(self.env),
            "stack": {
                "vllm_image": self.vllm_image,
                "openwebui_image": self.openwebui_image,
                "enable_openwebui": self.enable_openwebui,
                "gpu_vendor": self.gpu_vendor,
                "gpu_count": self.gpu_count,
                "configured_utilization": self.configured_utilization,
            },
        }

    @property
    def served_name(self) -> str:
        return self.vllm.served_model_name or self.model_id

    def with_fix(self, fix: heal.Fix) -> Stack:
        return dataclasses.replace(self, vllm=fix.settings, env={**self.env, **fix.env})

    def compose_yaml(self) -> str:
        from maider.remote.compose import render_compose

        return render_compose(
            self.vllm,
            model_id=self.model_id,
            vllm_image=self.vllm_image,
            openwebui_image=self.openwebui_image,
            enable_openwebui=self.enable_openwebui,
            gpu_vendor=self.gpu_vendor,
            extra_env=self.env,
        )


def apply_stack(target: ssh.SSHTarget, stack: Stack, *, secrets: list[str]) -> None:
    """Write the stack's compose.yaml on the VM (over SSH stdin) and recreate the containers."""
    text = stack.compose_yaml()
    ssh.run(target, commands.WRITE_COMPOSE, stdin=text.encode(), timeout=READ_TIMEOUT, secrets=secrets).check(
        "writing compose.yaml"
    )
    ssh.run(target, commands.RECREATE, timeout=APPLY_TIMEOUT, secrets=secrets).check(
        "recreating the containers (docker compose up -d --force-recreate)"
    )


# ------------------------------------------------------------------------------------ healing


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Healer:
    """Diagnoses a stopped vLLM and applies the next fix; see the module docstring.

    ``during`` names the command ("up", "switch-model") in the recorded attempts. The current
    stack (after fixes) is :attr:`stack`; the caller stores it in the record once vLLM answers.
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        target: ssh.SSHTarget,
        reporter: Reporter,
        stack: Stack,
        *,
        during: str,
        secrets: list[str],
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.target = target
        self.reporter = reporter
        self.stack = stack
        self.during = during
        self.secrets = secrets
        self.attempts: list[heal.HealAttempt] = []
        #: Index of this run's first attempt in the record's ``heal_attempts``.
        self._first_entry: int | None = None

    def on_stopped(self, state: commands.ServiceState) -> None:
        """vLLM's container stopped: apply the next fix (returns), or raise VLLMNotReady."""
        try:
            log = ssh.run(self.target, commands.vllm_logs(LOG_TAIL), timeout=READ_TIMEOUT).stdout
        except ssh.SSHError as exc:
            raise VLLMNotReady(f"{_stopped(state)}; its log could not be read ({exc})") from None
        diagnosis = heal.diagnose(log)
        if diagnosis is None:
            line = heal.last_error(log) or _last_line(log)
            raise VLLMNotReady(f"{_stopped(state)}: {line}{self._history()}")
        if self.attempts and self.attempts[-1].outcome is heal.Outcome.PENDING:
            self._set_outcome(heal.Outcome.FAILED, diagnosis.summary)
        if not diagnosis.healable:
            raise VLLMNotReady(
                f"vLLM cannot load {self.stack.model_id}: {diagnosis.summary}{self._history()}"
            )
        number = len(self.attempts) + 1
        args: dict[str, Any] = {
            "configured_utilization": self.stack.configured_utilization,
            "gpu_count": self.stack.gpu_count,
            "attempt": number,
            "current_env": self.stack.env,
        }
        fix = heal.plan_fix(diagnosis, self.stack.vllm, **args)
        if fix is None:
            reason = heal.unhealable_reason(diagnosis, self.stack.vllm, **args) or diagnosis.summary
            raise VLLMNotReady(f"vLLM cannot start: {reason}{self._history()}")
        attempt = heal.HealAttempt(
            number, diagnosis.kind, fix.description, heal.Outcome.PENDING, diagnosis.summary
        )
        self.attempts.append(attempt)
        self._save(attempt)
        self.reporter.warn(f"healing {number}/{heal.MAX_ATTEMPTS}: {diagnosis.summary}; {fix.description}")
        stack = self.stack.with_fix(fix)
        try:
            apply_stack(self.target, stack, secrets=self.secrets)
        except ssh.SSHError as exc:
            self._set_outcome(heal.Outcome.FAILED, f"applying the fix failed: {exc}")
            raise VLLMNotReady(f"applying a healing fix failed: {exc}{self._history()}") from None
        self.stack = stack

    def on_ready(self) -> None:
        """vLLM answered: the pending attempt (if any) healed it."""
        if self.attempts and self.attempts[-1].outcome is heal.Outcome.PENDING:
            self._set_outcome(heal.Outcome.HEALED)
            self.reporter.info(f"healed: vLLM answers after {self.attempts[-1].fix}")

    def _set_outcome(self, outcome: heal.Outcome, detail: str | None = None) -> None:
        last = self.attempts[-1].with_outcome(outcome, detail)
        self.attempts[-1] = last
        self._save(last)

    def _save(self, attempt: heal.HealAttempt) -> None:
        """Add or replace this run's ``attempt`` in the record (earlier runs' entries stay)."""
        entry = {**attempt.to_dict(), "during": self.during, "at": _now()}

        def change(data: dict[str, Any]) -> None:
            entries: list[dict[str, Any]] = data.setdefault("heal_attempts", [])
            if self._first_entry is None:  # this run's attempts follow the earlier runs' ones
                self._first_entry = len(entries)
            index = self._first_entry + attempt.attempt - 1
            if index < len(entries):
                entries[index] = {**entry, "at": entries[index].get("at", entry["at"])}
            else:
                entries.append(entry)

        self.store.mutate(self.session_id, change)

    def _history(self) -> str:
        if not self.attempts:
            return ""
        return " (healing tried: " + "; ".join(describe_attempt(a) for a in self.attempts) + ")"


def describe_attempt(attempt: heal.HealAttempt | Mapping[str, Any]) -> str:
    """One line per attempt, as printed and as the error message lists them."""
    a = attempt if isinstance(attempt, heal.HealAttempt) else heal.HealAttempt.from_dict(attempt)
    fix = a.fix or "nothing applied"
    return f"{a.attempt}. {fix}: {a.outcome.value}" + (
        f" ({a.detail})" if a.detail and a.outcome is heal.Outcome.FAILED else ""
    )


def _stopped(state: commands.ServiceState) -> str:
    return f"vLLM stopped ({state.status or state.state}, exit code {state.exit_code})"


def _last_line(log: str) -> str:
    lines = [line.split("|", 1)[-1].strip() for line in log.splitlines() if line.strip()]
    return (lines or ["no log output"])[-1][:300]


# ------------------------------------------------------------------------------------ waiting


def vllm_state(target: ssh.SSHTarget) -> commands.ServiceState | None:
    """The vLLM container's state (None when it cannot be told right now).

    Raises VLLMNotReady when the stack has no vLLM container at all.
    """
    try:
        result = ssh.run(target, commands.COMPOSE_PS, timeout=READ_TIMEOUT)
        services = commands.parse_compose_ps(result.stdout) if result.ok else None
    except (ssh.SSHError, ValueError):
        return None  # cannot tell; the deadline still applies
    if services is None:
        return None
    vllm = [s for s in services if s.service == commands.VLLM_SERVICE]
    if not vllm:
        raise VLLMNotReady(
            "the vLLM container does not exist on the VM (maider-stack.service did not start it)"
        )
    return vllm[0]


def _stopped_for_good(state: commands.ServiceState) -> bool:
    return state.state in ("exited", "dead", "restarting") or "restarting" in state.status.lower()


def wait_ready(
    *,
    store: SessionStore,
    session_id: str,
    target: ssh.SSHTarget,
    api_key: str,
    port: int,
    timeout: float,
    poll: float,
    reporter: Reporter,
    healer: Healer | None,
    served: str,
    webui: bool,
) -> int:
    """Wait until vLLM answers a completion for ``served`` through the session's tunnel.

    Between probes the container's state is read; a stopped vLLM goes to ``healer`` (each fix
    gets a fresh ``timeout``: it reloads the weights) or, without one, fails at once. A tunnel
    that died is opened again (a few times). Returns the tunnel's API port (it may change).
    """
    from maider.remote import tunnel
    from maider.session import lifecycle

    deadline = time.monotonic() + timeout
    poller = lifecycle.Poller(min(poll, lifecycle.LOCAL_POLL), deadline)  # through the tunnel: cheap
    checked = float("-inf")
    reopened = 0
    while True:
        wanted = healer.stack.served_name if healer is not None else served
        ok, detail = lifecycle.probe_vllm(
            port, api_key, wanted, timeout=max(1.0, min(30.0, deadline - time.monotonic()))
        )
        if ok:
            if healer is not None:
                healer.on_ready()
            return port
        reporter.progress(detail)
        if time.monotonic() - checked >= lifecycle.CONTAINER_CHECK_EVERY:
            checked = time.monotonic()
            state = vllm_state(target)
            if state is not None and _stopped_for_good(state):
                if healer is None:
                    raise VLLMNotReady(f"{_stopped(state)}: {lifecycle._vllm_error(target)}")
                healer.on_stopped(state)
                # A fix recreated the container: look at it again at once, with a fresh deadline.
                checked = float("-inf")
                deadline = time.monotonic() + timeout
                poller = lifecycle.Poller(min(poll, lifecycle.LOCAL_POLL), deadline)
                continue
            record = store.get(session_id)
            if not lifecycle.tunnel_alive(record) and reopened < lifecycle.TUNNEL_REOPENS:
                # The tunnel's ssh died (a network change, a sleeping laptop): open it again.
                reopened += 1
                reporter.progress("the tunnel dropped; opening it again")
                port = tunnel.open_session_tunnel(store, session_id, target, webui=webui).api
        if time.monotonic() >= deadline:
            raise VLLMNotReady(
                f"vLLM was not ready within {timeout:g} s ({detail}; setting timeout_vllm)"
                + lifecycle._log_hint(target)
            )
        poller.sleep()
