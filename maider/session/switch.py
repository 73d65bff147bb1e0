"""`maider switch-model`: run another model on a session's VM, or roll back to the one it ran.

Order of work, so that a mistake costs nothing:

1. The fit is checked on the session's VM type (the catalog's GPUs, maider.sizing) before
   anything on the VM is touched; a model that does not fit is one line of error.
2. compose.yaml is rendered for the new model (as ``up`` would: served name, context, TP from
   the settings, whatever the previous model's healing changed is not carried over, except the
   NCCL variables, which belong to the VM), uploaded on SSH stdin, and the containers recreated.
3. vLLM must answer a completion for the new served name; a stop is healed
   (maider.session.healing), up to three tries.
4. Ready: the record (model, served name, context, vLLM settings) and aider's files follow.
   Never ready: the previous compose.yaml goes back, the containers are recreated, and only
   once the previous model answers again does the command fail with "…; rolled back to X".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from maider.errors import MaiderError
from maider.remote import commands, ssh
from maider.session import watchdog
from maider.session.healing import Healer, Stack, apply_stack, wait_ready
from maider.session.state import SessionRecord, SessionStatus, SessionStore

if TYPE_CHECKING:  # pragma: no cover
    from maider.config import MaiderSettings
    from maider.models import ModelSpec
    from maider.ops.heal import HealAttempt
    from maider.session.lifecycle import Reporter


class SwitchFailed(MaiderError):
    """The new model never became ready (the message says whether the rollback worked)."""


class SwitchInterrupted(SwitchFailed):
    """Ctrl-C (or SIGTERM) during the switch; the rollback ran (see the message)."""

    exit_code = 130


@dataclass
class SwitchResult:
    record: SessionRecord
    previous_model: str
    attempts: list[HealAttempt] = field(default_factory=list)
    aider_files: list[Path] = field(default_factory=list)


def plan_stack(record: SessionRecord, current: Stack, settings: MaiderSettings) -> tuple[Stack, ModelSpec]:
    """The stack for ``settings.model`` on this session's VM type; MaiderError if it does not fit."""
    from maider import catalog as catalogs
    from maider import plan as planning

    spec = planning.resolve_model(settings)
    cat = catalogs.catalogs([record.provider])[record.provider]
    vm_type = catalogs.lookup_type(cat, record.type_id)
    fit = planning._fit(spec, vm_type, settings)
    if fit.problems:
        raise MaiderError(
            f"{spec.id} does not fit session {record.label}'s {record.type_id}: {fit.problems[0]}; "
            "nothing was changed on the VM"
        )
    if spec.gated and settings.hf_token is None:
        raise MaiderError(
            f"{spec.id} is gated: set HF_TOKEN to a Hugging Face token whose account accepted the licence at "
            f"https://huggingface.co/{spec.id}; nothing was changed on the VM"
        )
    served = settings.served_model_name or planning.default_served_name(spec.id)
    fit = planning._with_user_args(fit, served, settings)
    stack = dataclasses.replace(
        current,
        model_id=spec.id,
        vllm=fit.settings,
        gpu_count=vm_type.gpu_count,
        configured_utilization=fit.settings.gpu_memory_utilization,
        # Healing's NCCL variables describe the VM's GPUs, not the model: they stay.
        env={k: v for k, v in current.env.items() if k.startswith("NCCL_")},
    )
    return stack, spec


def switch_model(
    settings: MaiderSettings,
    name: str | None = None,
    *,
    reporter: Reporter | None = None,
    store: SessionStore | None = None,
    aider_dir: Path | None = None,
) -> SwitchResult:
    """Run ``settings.model`` on session ``name`` (default: the current one); see the module docstring."""
    from maider.session import lifecycle

    store = store or SessionStore()
    reporter = reporter or lifecycle.NullReporter()
    record = store.resolve(name)
    if record.status is not SessionStatus.READY or record.ip is None:
        raise MaiderError(
            f"session {record.label} is {record.status.value}: switch-model needs a ready session "
            f"(`maider status {record.label}`)"
        )
    old = Stack.from_record(record)
    new, spec = plan_stack(record, old, settings)
    if (new.model_id, new.vllm, new.env) == (old.model_id, old.vllm, old.env):
        raise MaiderError(f"session {record.label} already runs {spec.id} with these settings; nothing to do")

    api_key = store.read_api_key(record.id)
    token = settings.hf_token.get_secret_value().strip() if settings.hf_token is not None else None
    secrets = [s for s in (token, api_key) if s]
    user_key = lifecycle.user_keypair(settings)
    target = ssh.session_target(store, record, user_key.private_path)
    timeouts = lifecycle.Timeouts.from_settings(settings)

    reporter.phase("switch", f"switching session {record.label} from {old.model_id} to {spec.id}")
    if token:
        # The token may be new since `up` (a gated model): secrets.env is rewritten over stdin.
        ssh.run(
            target,
            commands.write_secret_file(),
            stdin=commands.render_secrets_env(token, api_key).encode(),
            timeout=lifecycle.SHORT_COMMAND_TIMEOUT,
            secrets=secrets,
        ).check("writing the secrets file")
    healer = Healer(store, record.id, target, reporter, new, during="switch-model", secrets=secrets)

    def wait(port: int, healer: Healer | None, served: str) -> int:
        return wait_ready(
            store=store,
            session_id=record.id,
            target=target,
            api_key=api_key,
            port=port,
            timeout=timeouts.vllm,
            poll=timeouts.poll,
            reporter=reporter,
            healer=healer,
            served=served,
            webui=old.enable_openwebui,
        )

    try:
        # A probe window: while maider itself works on the VM, the on-VM watchdog does not
        # destroy it for being idle (the model is loading; the user is right there).
        with watchdog.probe_window(store, record):
            apply_stack(target, new, secrets=secrets)
            reporter.phase("vllm", f"waiting for vLLM to serve {new.served_name}")
            wait(record.api_port or 0, healer, new.served_name)
    except KeyboardInterrupt:
        # The VM may already run the new compose file while the record names the old model: put
        # the old one back (a second Ctrl-C is only warned about meanwhile).
        with lifecycle._shielded_from_interrupts(reporter):
            try:
                _roll_back(store, record, target, old, secrets, reporter, wait, failure="interrupted")
            except SwitchFailed as exc:
                raise SwitchInterrupted(str(exc)) from None
    except MaiderError as exc:  # not ready, SSH, the tunnel: all end in the previous model
        _roll_back(store, record, target, old, secrets, reporter, wait, failure=str(exc))
    updated = store.update(record.id, **healer.stack.record_fields(), last_error=None)
    files = lifecycle.write_aider_files(
        store, updated, params_b=spec.params_b, aider_dir=aider_dir, reporter=reporter
    )
    return SwitchResult(updated, old.model_id, healer.attempts, files)


def _roll_back(
    store: SessionStore,
    record: SessionRecord,
    target: ssh.SSHTarget,
    old: Stack,
    secrets: list[str],
    reporter: Reporter,
    wait: Callable[[int, Healer | None, str], int],
    *,
    failure: str,
) -> NoReturn:
    """Put the previous model back and raise SwitchFailed saying how that went."""
    reporter.phase("rollback", f"rolling back to {old.model_id}")
    current = store.get(record.id)  # the tunnel may have been reopened on another port
    try:
        apply_stack(target, old, secrets=secrets)
        wait(current.api_port or 0, None, old.served_name)
    except MaiderError as exc:
        store.update(record.id, last_error=f"switch-model failed and so did the rollback: {exc}")
        raise SwitchFailed(
            f"the new model did not start ({failure}), and rolling back to {old.model_id} failed too ({exc}); "
            f"the VM still bills: `maider down {record.label}`, or retry `maider switch-model`"
        ) from None
    store.update(record.id, **old.record_fields())
    raise SwitchFailed(f"{failure}; rolled back to {old.model_id}, which answers again")
