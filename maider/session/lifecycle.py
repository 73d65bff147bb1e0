"""The session lifecycle: ``up`` executes a Plan, ``down`` undoes it, the rest observes and repairs.

UI-free: progress goes through a :class:`Reporter` (the CLI renders it), errors are
:class:`~maider.errors.MaiderError` subclasses whose message says what happened to the VM.

The rules this module keeps (docs/LIFECYCLE.md, and shared notes prior-art §3-§5 and §10 for what
went wrong before):

- **Validate, then spend.** Plan, credentials (one API call), keys, secrets, images and the SSH
  source addresses are checked before anything billable is created.
- **Never lose a VM.** The session record is written *before* the create call, with the unique
  session tag the VM will carry. The instance id is recorded the moment the create answers. A
  create whose answer is lost (or interrupted) is found again by that tag, by ``up``'s own
  clean-up, by ``down`` and by ``cleanup``.
- **The record matches reality.** After a failed or interrupted ``up`` the VM is deleted (or kept,
  with ``keep_on_failure``, as status ``kept``) and the record dropped only once the provider
  confirmed the deletion; if it cannot be confirmed, the record stays and says why.
- **Ready means ready.** ``up`` reports ready only once vLLM answers through the tunnel: health,
  the served model listed, and a one-token completion.
- **Secrets stay off the wire.** The HF token and the vLLM API key go to the VM on SSH stdin only
  (never user-data, argv or the session record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from maider.errors import ConfigError, MaiderError
from maider.provider import (
    AuthError,
    Billing,
    CapacityError,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    Price,
    Provider,
    ProviderError,
    VMInstance,
)
from maider.remote import commands, ssh
from maider.session import watchdog
from maider.session.state import (
    SessionNotFound,
    SessionRecord,
    SessionStatus,
    SessionStore,
    generate_api_key,
    validate_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from maider.config import MaiderSettings
    from maider.plan import Candidate, Plan
    from maider.remote.keys import KeyPair

#: The phases of `up`, in order, with what the user sees while each runs. Their durations are
#: recorded in the session record (``phases``) and shown by ``maider status``.
PHASES: dict[str, str] = {
    "prepare": "SSH key and firewall",
    "create": "creating the VM",
    "instance": "waiting for the VM to run",
    "ssh": "waiting for SSH",
    "cloud-init": "waiting for cloud-init (drivers, Docker, image pulls)",
    "stack": "writing secrets, starting vLLM and Open WebUI",
    "tunnel": "opening the SSH tunnel",
    "vllm": "waiting for vLLM (health, model list, a test completion)",
}

#: How many (provider, region, type) choices `up` tries when the vendors have no capacity.
MAX_CREATE_ATTEMPTS = 8
#: Longest pause between checks that cost no API call (SSH probes, cloud-init over the SSH
#: master, vLLM through the tunnel): `poll_interval` paces the provider API only.
LOCAL_POLL = 1.0
#: While vLLM loads: how often its container's state is read (`docker compose ps`), and how many
#: times a tunnel that died is opened again.
CONTAINER_CHECK_EVERY = 5.0
TUNNEL_REOPENS = 3
#: Per-call timeout of commands that only read state on the VM.
SHORT_COMMAND_TIMEOUT = 30.0
#: Statuses in which an `up` process is still working on the session.
IN_PROGRESS = frozenset(
    {SessionStatus.CREATING, SessionStatus.PROVISIONING, SessionStatus.BOOTING, SessionStatus.STARTING}
)
#: Extra field of the record: the pid of the `maider up` that owns an in-progress session.
UP_PID_FIELD = "up_pid"
#: Extra field of the record: a create attempt timed out or was retried, so a second VM with the
#: session's tag may exist; `down` then also deletes every VM carrying the tag.
CREATE_UNCERTAIN_FIELD = "create_uncertain"
AIDER_DIR = "aider"


# ------------------------------------------------------------------------------------ reporting


class Reporter(Protocol):
    """Where the lifecycle says what it is doing. Every method must return quickly."""

    def phase(self, name: str, text: str) -> None:
        """A phase starts (``name`` is a key of :data:`PHASES`, or another step's name)."""

    def progress(self, text: str) -> None:
        """What the current phase is waiting for right now (replaces the previous text)."""

    def phase_done(self, name: str, seconds: float) -> None:
        """The phase that started last ended successfully after ``seconds``."""

    def info(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...


class NullReporter:
    def phase(self, name: str, text: str) -> None:
        pass

    def progress(self, text: str) -> None:
        pass

    def phase_done(self, name: str, seconds: float) -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


# ------------------------------------------------------------------------------------ errors


class LifecycleError(MaiderError):
    """A lifecycle step failed; the message says what happened to the VM."""


class UpFailed(LifecycleError):
    pass


class UpInterrupted(UpFailed):
    """Ctrl-C (or SIGTERM) during `up`; the clean-up ran (see the message)."""

    exit_code = 130


class NoCapacity(UpFailed):
    """Every choice tried was sold out."""

    def __init__(self, message: str, attempts: list[Attempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


class DownFailed(LifecycleError):
    pass


class _StepFailed(Exception):
    """A lifecycle step failed for a reason that is not a ProviderError or SSHError."""


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Timeouts:
    instance: float = 900.0
    ssh: float = 600.0
    cloud_init: float = 1800.0
    vllm: float = 3600.0
    delete: float = 600.0
    poll: float = 5.0

    @classmethod
    def from_settings(cls, settings: MaiderSettings) -> Timeouts:
        return cls(
            instance=settings.timeout_instance,
            ssh=settings.timeout_ssh,
            cloud_init=settings.timeout_cloud_init,
            vllm=settings.timeout_vllm,
            delete=settings.timeout_delete,
            poll=settings.poll_interval,
        )


class Poller:
    """Sleeps between status checks: short at first, growing to ``interval``.

    A step that is over quickly (a VM that runs after seconds, a model already cached) is noticed
    within a fraction of ``interval``; a long one (minutes of provisioning, model downloads) is
    checked every ``interval`` seconds, so API rate limits are not spent on waiting.
    """

    GROWTH = 1.5

    def __init__(self, interval: float, deadline: float) -> None:
        self.interval = interval
        self.deadline = deadline
        self._next = interval / 5

    def sleep(self) -> None:
        pause = min(self._next, max(0.0, self.deadline - time.monotonic()))
        self._next = min(self.interval, self._next * self.GROWTH)
        time.sleep(pause)


def allowed_ssh_cidrs(settings: MaiderSettings) -> list[str]:
    """The CIDRs the firewall admits to port 22: the setting, else the caller's public IPv4/32."""
    configured = settings.allowed_ssh_cidrs
    if isinstance(configured, str):  # the validator turns strings into lists; for type checkers
        configured = [configured]
    if configured:
        return list(configured)
    import ipaddress

    url = settings.my_ip_url
    try:
        with local_opener().open(url, timeout=10) as response:
            text = response.read(200).decode("ascii", "replace").strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot find your public IP address at {url} ({exc}): set allowed_ssh_cidrs "
            "(e.g. MAIDER_ALLOWED_SSH_CIDRS=203.0.113.7/32), or my_ip_url to a service that answers "
            "with your address"
        ) from None
    if address.version != 4:
        raise ConfigError(
            f"{url} answered with the IPv6 address {address}; the firewall rules are IPv4: set "
            "allowed_ssh_cidrs to your public IPv4 address (or a CIDR)"
        )
    return [f"{address}/32"]


def user_keypair(settings: MaiderSettings) -> KeyPair:
    """The SSH key the VM trusts: the user's (``ssh_public_key``) or the one maider manages."""
    from maider.remote import keys

    if settings.ssh_public_key is None:
        return keys.ensure_user_key()
    public = settings.ssh_public_key.expanduser()
    private = public.with_name(public.name.removesuffix(".pub"))
    if private == public or not private.exists():
        # ssh -i <key>.pub makes ssh use the agent's matching key (IdentitiesOnly keeps it to that one).
        private = public
    return keys.KeyPair(private, public, public.read_text(encoding="utf-8").strip())


def local_opener() -> urllib.request.OpenerDirector:
    # No proxies: the VM's services are reached on 127.0.0.1 through the tunnel, and an
    # HTTP(S)_PROXY from the environment would send those requests elsewhere.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# ------------------------------------------------------------------------------------ costs


def runtime_seconds(record: SessionRecord, until: dt.datetime | None = None) -> float:
    """Seconds since the VM was created (per the provider, else since maider asked for it)."""
    end = until or _now()
    return max(0.0, (end - record.created_at).total_seconds())


def billing_of(provider_id: str) -> Billing:
    """How the provider bills (per second when its plugin is not installed)."""
    from maider import plugins

    try:
        return plugins.get_provider_class(provider_id).billing
    except MaiderError:
        return Billing()


def cost_of(record: SessionRecord, seconds: float) -> float | None:
    """The estimated bill for ``seconds`` of the session's VM (None without a recorded price)."""
    if record.hourly_price is None:
        return None
    return billing_of(record.provider).cost(record.hourly_price, seconds)


def format_money(amount: float | None, currency: str) -> str:
    if amount is None:
        return "?"
    symbol = {"USD": "$", "EUR": "€"}.get(currency)
    return f"{symbol}{amount:.2f}" if symbol else f"{amount:.2f} {currency}"


def format_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# ------------------------------------------------------------------------------------ providers


class _Providers:
    """One Provider object per provider id for the duration of a command."""

    def __init__(self) -> None:
        self._made: dict[str, Provider] = {}

    def get(self, provider_id: str) -> Provider:
        if provider_id not in self._made:
            from maider import plugins

            self._made[provider_id] = plugins.get_provider_class(provider_id)()
        return self._made[provider_id]


def _session_tag(session_id: str) -> str:
    return f"maider-session-{session_id}"


# ------------------------------------------------------------------------------------ up


@dataclass(frozen=True)
class Attempt:
    """One (provider, region, type) that `up` tried to create, and what came of it."""

    provider: str
    region: str
    type_id: str
    price: Price
    outcome: str
    ok: bool = False


@dataclass
class UpResult:
    record: SessionRecord
    attempts: list[Attempt]
    env: dict[str, str]
    aider_files: list[Path] = field(default_factory=list)


def _plan_for(plan: Plan, candidate: Candidate) -> Plan:
    """The plan with another (provider, region, type) and the fit computed for that type."""
    from maider import catalog as catalogs
    from maider import plan as planning
    from maider import plugins

    fit = planning._with_user_args(candidate.fit, plan.served_model_name, plan.settings)
    return dataclasses.replace(
        plan,
        provider_cls=plugins.get_provider_class(candidate.provider),
        catalog=catalogs.catalogs([candidate.provider])[candidate.provider],
        region=candidate.region,
        vm_type=candidate.vm_type,
        price=candidate.price,
        usd_per_hour=candidate.usd_per_hour,
        fit=fit,
    )


def candidate_plans(plan: Plan, *, failover: bool) -> Iterator[Plan]:
    """What `up` tries, in order: the plan; the same type in the other regions that sell it
    (cheapest first); then, with ``failover``, every other fitting type of every provider whose
    credentials are configured, cheapest first."""
    yield plan
    vm_type = plan.vm_type
    others = sorted(
        (r for r in vm_type.regions if r != plan.region),
        key=lambda r: (vm_type.price_in(r).amount, r),
    )
    for region in others:
        yield dataclasses.replace(plan, region=region, price=vm_type.price_in(region))
    if not failover:
        return
    from maider import plan as planning
    from maider import plugins

    ids = [pid for pid in plugins.installed_ids() if _configured(pid)]
    fitting, _ = planning.rank_candidates(plan.model, plan.settings, provider_ids=ids)
    for candidate in fitting:
        if candidate.provider == plan.provider and candidate.vm_type.id == vm_type.id:
            continue  # tried above, in every region
        yield _plan_for(plan, candidate)


def _configured(provider_id: str) -> bool:
    from maider import plugins

    try:
        return plugins.get_provider_class(provider_id)().has_credentials()
    except Exception:  # a broken plugin or its settings: not a failover choice
        return False


def render_user_data(
    plan: Plan, provider: Provider, *, user_key: str, host_key: KeyPair, secrets: Sequence[str | None]
) -> str:
    """The plan's cloud-init user-data (compose stack, keys, host preparation); no secrets."""
    from maider.remote import cloudinit
    from maider.remote.compose import render_compose

    settings = plan.settings
    compose_yaml = render_compose(
        plan.fit.settings,
        model_id=plan.model.id,
        vllm_image=settings.vllm_image,
        openwebui_image=settings.openwebui_image,
        enable_openwebui=settings.enable_openwebui,
        gpu_vendor=plan.vm_type.gpu.vendor,
    )
    return cloudinit.render_user_data(
        ssh_public_key=user_key,
        host_key_private=host_key.private_path.read_text(encoding="utf-8"),
        host_key_public=host_key.public_key,
        compose_yaml=compose_yaml,
        install_gpu_stack=not provider.image_has_gpu_stack(plan.vm_type),
        vllm_image=settings.vllm_image,
        openwebui_image=settings.openwebui_image if settings.enable_openwebui else None,
        secrets=secrets,
        watchdog_config=watchdog.vm_config(settings),
    )


class _Up:
    """One run of `up`; see :func:`up`."""

    def __init__(
        self,
        plan: Plan,
        reporter: Reporter,
        store: SessionStore,
        *,
        name: str | None,
        keep_on_failure: bool,
        failover: bool,
        aider_dir: Path | None,
    ) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.reporter = reporter
        self.store = store
        self.name = name
        self.keep_on_failure = keep_on_failure
        self.failover = failover
        self.aider_dir = aider_dir
        self.timeouts = Timeouts.from_settings(plan.settings)
        self.providers = _Providers()
        self.attempts: list[Attempt] = []
        self.session_id: str | None = None
        self.provider: Provider | None = None
        self.instance_id: str | None = None
        self.create_sent = False
        #: The last create was refused outright (not lost, cut off or interrupted).
        self.create_refused = False
        #: A create attempt timed out or was retried: the provider may carry out one more, later.
        self.create_uncertain = False
        self.target: ssh.SSHTarget | None = None
        self.hf_token: str | None = None
        self.api_key = generate_api_key()
        self._phase: tuple[str, float] | None = None

    # -- phases ----------------------------------------------------------------------------

    def _start(self, name: str) -> None:
        self._phase = (name, time.monotonic())
        self.reporter.phase(name, PHASES.get(name, name))

    def _done(self) -> None:
        assert self._phase is not None
        name, started = self._phase
        seconds = time.monotonic() - started
        self._phase = None
        if self.session_id is not None:
            self.store.record_phase(self.session_id, name, seconds)
        self.reporter.phase_done(name, seconds)

    def _update(self, **changes: Any) -> SessionRecord:
        assert self.session_id is not None
        return self.store.update(self.session_id, **changes)

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> tuple[KeyPair, list[str], Provider]:
        """Everything that can be checked before a VM bills (one API call: the credentials)."""
        from maider import plan as planning
        from maider.remote import commands as remote_commands
        from maider.remote import keys

        problems = planning.account_problems(self.plan)
        if problems:
            from maider.errors import PlanError

            raise PlanError(problems)
        if self.name is not None:
            validate_name(self.name)
            records, _ = self.store.scan()
            for other in records:
                if other.name == self.name and other.is_live:
                    raise MaiderError(
                        f"session name {self.name!r} is already used by {other.describe()}; pick another "
                        f"name or `maider down {self.name}` first"
                    )
        token = self.settings.hf_token
        self.hf_token = token.get_secret_value().strip() if token is not None else None
        remote_commands.render_secrets_env(self.hf_token, self.api_key)  # the token's characters
        ssh.ssh_executable()
        keys._ssh_keygen()
        user_key = user_keypair(self.settings)
        cidrs = allowed_ssh_cidrs(self.settings)
        provider = self.providers.get(self.plan.provider)
        _check_credentials(provider)
        return user_key, cidrs, provider

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> UpResult:
        user_key, cidrs, provider = self.validate()
        plan = self.plan
        session_id = self.store.new_id()
        record = SessionRecord(
            id=session_id,
            name=self.name,
            provider=plan.provider,
            region=plan.region,
            type_id=plan.vm_type.id,
            status=SessionStatus.CREATING,
            hourly_price=plan.price,
            model=plan.model.id,
            served_model_name=plan.served_model_name,
            max_model_len=plan.fit.settings.max_model_len,
            keep_on_failure=self.keep_on_failure,
        )
        self.store.create(record)
        self.session_id = session_id
        self.store.mutate(session_id, lambda data: data.update({UP_PID_FIELD: os.getpid()}))
        try:
            return self._provision(user_key, cidrs, provider)
        except BaseException as exc:
            self._fail(exc)
            raise AssertionError("unreachable") from None  # pragma: no cover - _fail raises

    def _provision(self, user_key: KeyPair, cidrs: list[str], provider: Provider) -> UpResult:
        from maider.remote import keys, tunnel

        assert self.session_id is not None
        session_id = self.session_id
        started = time.monotonic()
        host_key = keys.generate_host_key(self.store.host_key_path(session_id), session_id)
        self.store.write_api_key(session_id, self.api_key)
        vm, plan = self._create(user_key, host_key, cidrs, provider)

        # -- running, with an address
        self._start("instance")
        vm = self._wait_running(vm)
        assert vm.public_ipv4 is not None
        keys.write_known_hosts(
            self.store.known_hosts_path(session_id), vm.public_ipv4, vm.ssh_port, host_key.public_key
        )
        record = self._update(status=SessionStatus.BOOTING, ip=vm.public_ipv4, ssh_port=vm.ssh_port)
        self._done()
        target = ssh.session_target(self.store, record, user_key.private_path)
        self.target = target

        # -- SSH, then cloud-init
        self._start("ssh")
        deadline = time.monotonic() + self.timeouts.ssh
        ssh.wait_for_ssh(
            target,
            deadline,
            on_attempt=lambda n, err: self.reporter.progress(f"attempt {n}: {_short_error(err)}"),
            # A refused connection costs no API call: try often (sshd starts late in the boot).
            interval=min(self.timeouts.poll, LOCAL_POLL),
        )
        self._done()
        self._start("cloud-init")
        self._wait_cloud_init(target)
        self._done()
        # The idle watchdog runs since boot (power-off mode): give it its deletion credential.
        watchdog.install(
            self.store, record, self.provider or provider, vm, self.settings, target, self.reporter
        )

        # -- secrets and the stack
        self._start("stack")
        secrets_env = commands.render_secrets_env(self.hf_token, self.api_key)
        ssh.run(
            target,
            commands.write_secret_file(),
            stdin=secrets_env.encode(),
            timeout=SHORT_COMMAND_TIMEOUT,
            secrets=self._secrets(),
        ).check("writing the secrets file")
        self._update(status=SessionStatus.STARTING)
        self.reporter.progress("docker compose up (pulls any image cloud-init did not)")
        ssh.run(target, commands.START_STACK, timeout=self.timeouts.vllm, secrets=self._secrets()).check(
            "starting the stack (systemctl start maider-stack.service)"
        )
        self._done()

        # -- tunnel and vLLM
        self._start("tunnel")
        ports = tunnel.open_session_tunnel(
            self.store, session_id, target, webui=self.settings.enable_openwebui
        )
        self._done()
        self._start("vllm")
        self._wait_vllm(target, plan.served_model_name, ports.api)
        self._done()

        record = self._update(status=SessionStatus.READY, ready_at=_now(), last_error=None)
        self.store.record_phase(session_id, "total", time.monotonic() - started)
        self.store.mutate(session_id, lambda data: data.pop(UP_PID_FIELD, None))
        self.store.set_current(session_id)
        if self.settings.watchdog:
            record = self._start_laptop_watchdog(record)
        files = self._aider_files(record)
        return UpResult(record, self.attempts, session_env(self.store, record), files)

    def _secrets(self) -> list[str]:
        return [s for s in (self.hf_token, self.api_key) if s]

    def _start_laptop_watchdog(self, record: SessionRecord) -> SessionRecord:
        """The laptop side of the watchdog (maider.session.laptop_watchdog), detached. Failing to
        start it is a warning: the VM side still acts."""
        from maider.session import laptop_watchdog

        try:
            pid = laptop_watchdog.start(self.store, record, self.settings)
        except (OSError, MaiderError, ValueError) as exc:
            self.reporter.warn(f"the laptop watchdog did not start ({exc}); the VM's own watchdog still acts")
            return record
        self.reporter.info(f"laptop watchdog started (pid {pid})")
        return self.store.get(record.id)

    # -- create, with capacity fallbacks ----------------------------------------------------

    def _create(
        self, user_key: KeyPair, host_key: KeyPair, cidrs: list[str], first_provider: Provider
    ) -> tuple[VMInstance, Plan]:
        assert self.session_id is not None
        session_id = self.session_id
        tag = _session_tag(session_id)
        prepared: dict[str, tuple[str, str]] = {}
        for plan in candidate_plans(self.plan, failover=self.failover):
            if len(self.attempts) >= MAX_CREATE_ATTEMPTS:
                break
            provider = (
                first_provider if plan.provider == first_provider.id else self.providers.get(plan.provider)
            )
            if plan.provider != first_provider.id and plan.provider not in prepared:
                try:
                    _check_credentials(provider)
                except MaiderError as exc:
                    self._attempt(plan, f"skipped: {exc}")
                    continue
            self._update(
                provider=plan.provider,
                region=plan.region,
                type_id=plan.vm_type.id,
                hourly_price=plan.price,
                max_model_len=plan.fit.settings.max_model_len,
            )
            if plan.provider not in prepared:
                self._start("prepare")
                key_id = provider.ensure_ssh_key(
                    user_key.public_key, f"maider-{_key_label(user_key.public_key)}"
                )
                firewall_id = provider.ensure_firewall("maider-ssh", cidrs, ("maider",))
                prepared[plan.provider] = (key_id, firewall_id)
                self._done()
            key_id, firewall_id = prepared[plan.provider]
            user_data = render_user_data(
                plan, provider, user_key=user_key.public_key, host_key=host_key, secrets=self._secrets()
            )
            spec = InstanceSpec(
                name=f"maider-{session_id}",
                region=plan.region,
                type_id=plan.vm_type.id,
                user_data=user_data,
                tags=("maider", tag),
                session_tag=tag,
                ssh_public_key=user_key.public_key,
                ssh_key_id=key_id,
                firewall_id=firewall_id,
            )
            self._start("create")
            self.reporter.progress(f"{plan.provider} {plan.vm_type.id} in {plan.region} at {plan.price}/h")
            self._update(created_at=_now())
            self.provider = provider
            self.create_sent = True
            self.create_refused = False
            asked = time.monotonic()
            try:
                vm = provider.create_instance(spec)
            except ProviderError as exc:
                # A definite "no" from the vendor (sold out, bad request, auth): nothing was made.
                self.create_refused = _is_refusal(exc)
                if not isinstance(exc, CapacityError):
                    raise
                self._capacity(plan, provider, tag, exc)
                continue
            if time.monotonic() - asked > float(getattr(provider.settings, "request_timeout", 30.0)):
                # Longer than one request may take: an attempt timed out and was retried, and
                # the provider may still carry it out (a second VM with this session's tag).
                self.create_uncertain = True
                self.store.mutate(session_id, lambda data: data.update({CREATE_UNCERTAIN_FIELD: True}))
            self.instance_id = vm.id
            changes: dict[str, Any] = {"instance_id": vm.id, "status": SessionStatus.PROVISIONING}
            if vm.created_at is not None:
                changes["created_at"] = vm.created_at
            if vm.public_ipv4:
                changes["ip"] = vm.public_ipv4
            self._update(**changes)
            self._attempt(plan, "created", ok=True)
            self._done()
            self.plan = plan
            return vm, plan
        raise NoCapacity(
            "no capacity anywhere maider tried (see the table); nothing is running or billed. Try later, "
            + (
                "another type or provider"
                if self.failover
                else "or add --failover to try other types and providers"
            ),
            self.attempts,
        )

    def _capacity(self, plan: Plan, provider: Provider, tag: str, exc: CapacityError) -> None:
        """Sold out: nothing was created. Make sure (a vendor may have half-created one)."""
        self._attempt(plan, f"no capacity: {exc}")
        self._remove_tagged(provider, tag)
        self.create_sent = False
        self._phase = None
        self.reporter.warn(f"{plan.provider} has no capacity for {plan.vm_type.id} in {plan.region}")

    def _attempt(self, plan: Plan, outcome: str, ok: bool = False) -> None:
        self.attempts.append(Attempt(plan.provider, plan.region, plan.vm_type.id, plan.price, outcome, ok))

    def _remove_tagged(self, provider: Provider, tag: str) -> None:
        for vm in provider.list_instances(tag):
            provider.delete_instance(vm.id)

    # -- waits -----------------------------------------------------------------------------

    def _wait_running(self, vm: VMInstance) -> VMInstance:
        assert self.provider is not None
        deadline = time.monotonic() + self.timeouts.instance
        poller = Poller(self.timeouts.poll, deadline)
        while True:
            if vm.status is InstanceStatus.RUNNING and vm.public_ipv4:
                return vm
            if vm.status in (InstanceStatus.ERROR, InstanceStatus.DELETED, InstanceStatus.DELETING):
                raise _StepFailed(f"the provider reports the VM as {vm.raw_status or vm.status.value}")
            self.reporter.progress(f"{vm.raw_status or vm.status.value}")
            if time.monotonic() >= deadline:
                raise _StepFailed(
                    f"the VM was not running with a public IP after {self.timeouts.instance:g} s "
                    f"(last status: {vm.raw_status or vm.status.value}; setting timeout_instance)"
                )
            poller.sleep()
            try:
                vm = self.provider.get_instance(vm.id)
            except NotFound:
                raise _StepFailed(
                    "the VM disappeared while it was starting (deleted outside maider?)"
                ) from None

    def _wait_cloud_init(self, target: ssh.SSHTarget) -> None:
        deadline = time.monotonic() + self.timeouts.cloud_init
        poller = Poller(min(self.timeouts.poll, LOCAL_POLL), deadline)  # over the SSH master: cheap
        while True:
            try:
                result = ssh.run(target, commands.CLOUD_INIT_STATUS, timeout=SHORT_COMMAND_TIMEOUT)
                status = commands.parse_cloud_init_status(result.stdout)
            except ssh.HostKeyMismatch:
                raise
            except (ssh.ConnectionFailed, ssh.CommandTimeout, ssh.AuthFailed, ValueError) as exc:
                status = None
                self.reporter.progress(f"cannot read cloud-init's status yet: {_short_error(exc)}")
            if status is not None:
                if status.failed:
                    raise _StepFailed(
                        "cloud-init failed on the VM: "
                        + "; ".join(status.errors)
                        + " (details: /var/log/cloud-init-output.log on the VM)"
                    )
                if status.done:
                    if status.degraded:
                        self.reporter.warn(
                            "cloud-init finished with warnings: "
                            + "; ".join(status.recoverable_errors or status.errors)
                        )
                    return
                self.reporter.progress(f"cloud-init {status.status}")
            if time.monotonic() >= deadline:
                raise _StepFailed(
                    f"cloud-init did not finish within {self.timeouts.cloud_init:g} s (setting timeout_cloud_init)"
                )
            poller.sleep()

    def _wait_vllm(self, target: ssh.SSHTarget, served: str, port: int) -> None:
        """Wait until vLLM answers; heal it when it stops (maider.session.healing)."""
        from maider.session import healing

        assert self.session_id is not None
        stack = healing.Stack.from_plan(self.plan)
        self._update(**stack.record_fields())
        healer = healing.Healer(
            self.store, self.session_id, target, self.reporter, stack, during="up", secrets=self._secrets()
        )
        healing.wait_ready(
            store=self.store,
            session_id=self.session_id,
            target=target,
            api_key=self.api_key,
            port=port,
            timeout=self.timeouts.vllm,
            poll=self.timeouts.poll,
            reporter=self.reporter,
            healer=healer,
            served=served,
            webui=self.settings.enable_openwebui,
        )
        if healer.attempts:  # the record describes what runs now: the healed settings
            self._update(**healer.stack.record_fields())

    # -- aider -----------------------------------------------------------------------------

    def _aider_files(self, record: SessionRecord) -> list[Path]:
        return write_aider_files(
            self.store,
            record,
            params_b=self.plan.model.params_b,
            aider_dir=self.aider_dir,
            reporter=self.reporter,
        )

    # -- failure ---------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Clean up after a failure or an interrupt, then raise the error to show the user."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        known = isinstance(exc, (MaiderError, ProviderError, _StepFailed))
        reason = "interrupted" if interrupted else str(exc) if known else f"{type(exc).__name__}: {exc}"
        phase = self._phase[0] if self._phase else None
        where = f" during {PHASES.get(phase, phase)}" if phase else ""
        with _shielded_from_interrupts(self.reporter):
            outcome = self._clean_up(f"{reason}{where}")
        if isinstance(exc, NoCapacity):
            extra = "" if outcome in ("", "nothing was created") else f"; {outcome}"
            raise NoCapacity(f"{exc}{extra}", exc.attempts) from None
        head = f"interrupted{where}" if interrupted else f"up failed{where}: {reason}"
        message = f"{head}; {outcome}" if outcome else head
        if interrupted:
            raise UpInterrupted(message) from None
        if known:
            raise UpFailed(message) from None
        raise exc

    def _clean_up(self, reason: str) -> str:
        """Delete (or keep) whatever this run created; returns what happened, for the message."""
        session_id = self.session_id
        if session_id is None:
            return ""
        store = self.store
        self._close_ssh()
        provider = self.provider
        if not self.create_sent or provider is None:
            # Nothing was asked of the provider that bills: the record goes, nothing else exists.
            _forget(store, session_id)
            return "nothing was created"
        tag = _session_tag(session_id)
        try:
            # The watchdog's credential, if one was minted: revoked once the VM is deleted.
            minted = store.get(session_id)
        except Exception:
            minted = None
        # A create that timed out, was cut off or interrupted may still be carried out by the
        # provider after any lookup: then the record stays (without an instance), so a VM that
        # appears later carries a tag maider knows; `maider cleanup` forgets it once none does.
        uncertain = self.create_uncertain or (self.instance_id is None and not self.create_refused)
        keep_note = (
            f"a create request may still be carried out, so the session record {session_id} is kept: "
            f"`maider list` shows a VM with the tag {tag} if one appears, `maider down {session_id}` deletes "
            "it, and `maider cleanup` forgets the record once no VM carries the tag"
        )
        ids = [self.instance_id] if self.instance_id else []
        if not ids:
            try:
                ids = [vm.id for vm in provider.list_instances(tag)]
            except ProviderError as exc:
                _safe_update(store, session_id, status=SessionStatus.FAILED, last_error=f"{reason}; {exc}")
                return (
                    f"a VM may exist (its create was sent, and listing {provider.display_name}'s VMs failed: {exc}); "
                    f"the session record {session_id} is kept: run `maider down {session_id}` to find and delete it"
                )
            if not ids:
                if not uncertain:
                    _forget(store, session_id)
                    return "no VM was created"
                _safe_update(
                    store,
                    session_id,
                    status=SessionStatus.FAILED,
                    last_error=f"{reason}; create outcome unknown",
                )
                _safe_mutate_pop(store, session_id, UP_PID_FIELD)
                return f"no VM carrying the tag {tag} was found, but {keep_note}"
            _safe_update(store, session_id, instance_id=ids[0])
        if self.keep_on_failure:
            _safe_update(store, session_id, status=SessionStatus.KEPT, last_error=reason)
            _safe_mutate_pop(store, session_id, UP_PID_FIELD)
            label = self.name or session_id
            return (
                f"the VM {', '.join(ids)} is KEPT as asked (--keep-on-failure) and still bills; inspect it with "
                f"`maider status {label}` and delete it with `maider down {label}`"
            )
        _safe_update(store, session_id, status=SessionStatus.FAILED, last_error=reason)
        self.reporter.phase("delete", "deleting the VM")
        try:
            for instance_id in ids:
                provider.delete_instance(instance_id)
            wait_gone(provider, ids, Timeouts.from_settings(self.settings), self.reporter)
        except (ProviderError, _StepFailed) as exc:
            _safe_update(store, session_id, last_error=f"{reason}; deleting the VM failed: {exc}")
            label = self.name or session_id
            return (
                f"deleting the VM {', '.join(ids)} FAILED ({exc}): it may still bill. The session record is "
                f"kept; run `maider down {label}` to retry"
            )
        if minted is not None:
            watchdog.revoke(provider, minted, self.reporter)
        if uncertain:
            _safe_update(
                store,
                session_id,
                instance_id=None,
                ip=None,
                last_error=f"{reason}; VM {', '.join(ids)} deleted; a create may still be carried out",
            )
            _safe_mutate_pop(store, session_id, UP_PID_FIELD)
            return f"the VM {', '.join(ids)} was deleted, but {keep_note}"
        _forget(store, session_id)
        return f"the VM {', '.join(ids)} was deleted"

    def _close_ssh(self) -> None:
        from maider.remote import tunnel

        if self.target is None or self.session_id is None:
            return
        with contextlib.suppress(Exception):
            tunnel.close_session_tunnel(self.store, self.session_id, self.target)
        with contextlib.suppress(Exception):
            ssh.close_master(self.target)


def write_aider_files(
    store: SessionStore,
    record: SessionRecord,
    *,
    params_b: float | None,
    aider_dir: Path | None,
    reporter: Reporter,
) -> list[Path]:
    """aider's files for the session's model: in the session's own directory and ``aider_dir``
    (the working directory of `up` or `switch-model`). A failure is a warning."""
    from maider import aider

    written: list[Path] = []
    own = store.session_dir(record.id) / AIDER_DIR
    own.mkdir(mode=0o700, exist_ok=True)
    for directory in (own, aider_dir):
        if directory is None:
            continue
        try:
            written.extend(aider.write_session_files(directory, record, params_b=params_b))
        except (OSError, MaiderError) as exc:
            reporter.warn(f"aider files not written in {directory}: {exc}")
    return written


def up(
    plan: Plan,
    reporter: Reporter | None = None,
    *,
    store: SessionStore | None = None,
    name: str | None = None,
    keep_on_failure: bool = False,
    failover: bool = False,
    aider_dir: Path | None = None,
) -> UpResult:
    """Create the plan's VM, start vLLM and Open WebUI on it, open the tunnel; return when ready.

    On any failure or interrupt after the session record was written, the VM is deleted (or
    kept, with ``keep_on_failure``) and the error raised says which; see the module docstring.
    ``aider_dir``: where to write the aider files too (besides the session's own directory).
    """
    run = _Up(
        plan,
        reporter or NullReporter(),
        store or SessionStore(),
        name=name,
        keep_on_failure=keep_on_failure,
        failover=failover,
        aider_dir=aider_dir,
    )
    return run.run()


def _check_credentials(provider: Provider) -> None:
    """One API call that proves the credentials, before anything is created."""
    try:
        check = provider.check_credentials()
    except ProviderError as exc:
        raise MaiderError(f"could not check the {provider.display_name} credentials: {exc}") from None
    if not check.ok:
        raise MaiderError(f"{provider.display_name} credentials do not work: {check.reason}")


def _is_refusal(exc: ProviderError) -> bool:
    """Whether the vendor answered a create with a definite refusal (so nothing was created)."""
    from maider.retry import TransientError

    if isinstance(exc, TransientError):
        return False  # 429/5xx/timeout/dropped: the request may have been (or be being) carried out
    return isinstance(exc, (CapacityError, AuthError)) or (exc.status is not None and 400 <= exc.status < 500)


def _key_label(public_key: str) -> str:
    from maider.sshkeys import fingerprint_sha256

    try:
        return fingerprint_sha256(public_key).removeprefix("SHA256:")[:12].replace("/", "_").replace("+", "-")
    except Exception:
        return "key"


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:119] + "…"


def _forget(store: SessionStore, session_id: str) -> None:
    with contextlib.suppress(SessionNotFound):
        store.delete(session_id)


def _safe_update(store: SessionStore, session_id: str, **changes: Any) -> None:
    """Update a record that a concurrent `down` may have removed (then there is nothing to say)."""
    with contextlib.suppress(SessionNotFound):
        store.update(session_id, **changes)


def _safe_mutate_pop(store: SessionStore, session_id: str, key: str) -> None:
    with contextlib.suppress(SessionNotFound):
        store.mutate(session_id, lambda data: data.pop(key, None))


@contextlib.contextmanager
def _shielded_from_interrupts(reporter: Reporter) -> Iterator[None]:
    """While cleaning up, the first Ctrl-C only warns; a second one abandons the clean-up (the
    record then still names the VM, so `maider down` can finish the job). SIGTERM is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed += 1
        if pressed == 1:
            reporter.warn(
                "cleaning up: deleting the VM so it does not keep billing (Ctrl-C again to abandon)"
            )
            return
        raise KeyboardInterrupt

    previous_int = signal.signal(signal.SIGINT, on_interrupt)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


# ------------------------------------------------------------------------------------ vLLM probes


def _http(
    port: int, path: str, *, key: str | None = None, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with local_opener().open(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def probe_vllm(port: int, api_key: str, served: str, *, timeout: float = 30.0) -> tuple[bool, str]:
    """(ready, what is missing): /health 200, /v1/models lists ``served``, a 1-token completion."""
    try:
        status, _ = _http(port, "/health", timeout=min(timeout, 10.0))
        if status != 200:
            return False, f"vLLM is loading (/health answers {status})"
        status, models = _http(port, "/v1/models", key=api_key, timeout=min(timeout, 10.0))
        if status != 200:
            return False, f"/v1/models answers {status}"
        names = [m.get("id") for m in (models or {}).get("data", []) if isinstance(m, dict)]
        if served not in names:
            return False, f"vLLM serves {', '.join(map(str, names)) or 'no model'}, not {served} yet"
        status, answer = _http(
            port,
            "/v1/completions",
            key=api_key,
            body={"model": served, "prompt": "def", "max_tokens": 1, "temperature": 0},
            timeout=timeout,
        )
        if status != 200 or not (answer or {}).get("choices"):
            return False, f"a test completion answers {status}"
    except (OSError, ValueError, AttributeError) as exc:
        return False, f"vLLM does not answer through the tunnel yet ({_short_error(exc)})"
    return True, "ready"


def _vllm_error(target: ssh.SSHTarget) -> str:
    """The most telling line of vLLM's log tail, for an error message."""
    try:
        logs = ssh.run(target, commands.vllm_logs(50), timeout=SHORT_COMMAND_TIMEOUT).stdout
    except ssh.SSHError:
        return "its log could not be read"
    lines = [line.split("|", 1)[-1].strip() for line in logs.splitlines() if line.strip()]
    markers = ("Error", "ERROR", "Exception", "error:", "out of memory")
    telling = [line for line in lines if any(m in line for m in markers)]
    return (telling or lines or ["no log output"])[-1][:300]


def _log_hint(target: ssh.SSHTarget) -> str:
    line = _vllm_error(target)
    return f"; last vLLM log line: {line}" if line else ""


# ------------------------------------------------------------------------------------ env


def session_env(store: SessionStore, record: SessionRecord) -> dict[str, str]:
    """OPENAI_API_BASE, OPENAI_API_KEY, AIDER_MODEL (and the aider files) of a session."""
    from maider import aider

    own = store.session_dir(record.id) / AIDER_DIR
    metadata = own / aider.METADATA_FILE
    settings_file = own / aider.SETTINGS_FILE
    return aider.session_env(
        record,
        store.read_api_key(record.id),
        metadata_file=metadata if metadata.exists() else None,
        settings_file=settings_file if settings_file.exists() else None,
    )


def environment(name: str | None = None, *, store: SessionStore | None = None) -> dict[str, str]:
    """The environment of a session (default: the current one) for `maider env`."""
    store = store or SessionStore()
    record = store.resolve(name)
    if record.status is not SessionStatus.READY:
        raise MaiderError(
            f"session {record.label} is {record.status.value}, not ready"
            + (f" ({record.last_error})" if record.last_error else "")
        )
    return session_env(store, record)


# ------------------------------------------------------------------------------------ down


@dataclass
class DownResult:
    record: SessionRecord
    deleted: list[str]  # instance ids deleted (or found gone)
    runtime_seconds: float
    cost: float | None
    currency: str


def wait_gone(
    provider: Provider, instance_ids: Sequence[str], timeouts: Timeouts, reporter: Reporter
) -> None:
    """Poll until the provider says every instance is gone (NotFound / DELETED)."""
    deadline = time.monotonic() + timeouts.delete
    poller = Poller(timeouts.poll, deadline)
    pending = list(instance_ids)
    while pending:
        pending = [i for i in pending if provider.get_instance_status(i) is not InstanceStatus.DELETED]
        if not pending:
            return
        reporter.progress(f"waiting for {provider.display_name} to confirm {', '.join(pending)} is gone")
        if time.monotonic() >= deadline:
            raise _StepFailed(
                f"{provider.display_name} still lists {', '.join(pending)} {timeouts.delete:g} s after the delete "
                "(setting timeout_delete)"
            )
        poller.sleep()


def close_session_ssh(store: SessionStore, record: SessionRecord) -> None:
    """Close the session's tunnel and command master (best effort: the VM may be gone)."""
    from maider.remote import tunnel

    if record.ip is None:
        return
    target = ssh.session_target(store, record, Path("/dev/null"))
    with contextlib.suppress(Exception):
        tunnel.close_session_tunnel(store, record.id, target)
    with contextlib.suppress(Exception):
        ssh.close_master(target)


def down(
    name: str | None = None,
    reporter: Reporter | None = None,
    *,
    store: SessionStore | None = None,
    settings: MaiderSettings | None = None,
    record: SessionRecord | None = None,
    end_reason: str | None = None,
) -> DownResult:
    """Close the tunnel, delete the VM, wait until the provider confirms it is gone, drop the record.

    Idempotent: a VM that is gone already counts as deleted. Any API error leaves the record in
    place (status and ``last_error`` say what is known) and raises :class:`DownFailed`. With
    ``end_reason`` (a watchdog deleting it) the record is kept as ``deleted`` with that reason and
    the cost (:func:`record_ended`), so ``list`` and ``status`` can say what happened.
    """
    from maider.config import load_settings

    store = store or SessionStore()
    reporter = reporter or NullReporter()
    settings = settings or load_settings()
    timeouts = Timeouts.from_settings(settings)
    record = record or store.resolve(name)
    label = record.label
    if _up_alive(record):
        pid = (record.model_extra or {}).get(UP_PID_FIELD)
        raise DownFailed(
            f"session {label} is being created by `maider up` (pid {pid}); interrupt that (Ctrl-C): it deletes "
            "the VM it made"
        )
    try:
        provider = _Providers().get(record.provider)
    except MaiderError as exc:
        raise DownFailed(f"cannot delete session {label}'s VM: {exc}; the session record is kept") from None
    if record.status is SessionStatus.DELETED:  # a watchdog deleted it: only the record is left
        problem = release_leftovers(provider, record, reporter)
        if problem is not None and DISK_MAY_BILL in problem:
            store.update(record.id, last_error=problem)
            raise DownFailed(
                f"session {label}: {problem}; the session record is kept: run `maider down {label}` again"
            )
        store.delete(record.id)
        currency = record.hourly_price.currency if record.hourly_price else "USD"
        ran = runtime_seconds(record, record.ended_at) if record.ended_at else 0.0
        return DownResult(record, [], ran, record.final_cost, currency)
    from maider.session import laptop_watchdog

    watched = laptop_watchdog.stop(store, record)  # before the tunnel closes: it must not act meanwhile
    previous = record.status

    session_id = record.id

    def keep_watching() -> None:
        """`down` failed: the VM may still bill, so the laptop side goes on (and retries a delete)."""
        if watched and settings.watchdog:
            with contextlib.suppress(Exception):
                laptop_watchdog.start(store, store.get(session_id), settings)

    reporter.phase("tunnel", "closing the tunnel")
    close_session_ssh(store, record)
    reporter.phase("delete", f"deleting the VM on {provider.display_name}")
    ids = [record.instance_id] if record.instance_id else []
    ended: dt.datetime | None = None
    sent = False
    # Ctrl-C now only warns (twice abandons): the record must say whether a delete was sent.
    with _shielded_from_interrupts(reporter):
        try:
            if not ids or (record.model_extra or {}).get(CREATE_UNCERTAIN_FIELD):
                # The create's answer never reached maider, or a create may have run twice: every
                # VM of the session carries its tag.
                tagged = [vm.id for vm in provider.list_instances(_session_tag(record.id))]
                ids = list(dict.fromkeys([*ids, *tagged]))
            store.update(record.id, status=SessionStatus.DELETING, instance_id=ids[0] if ids else None)
            sent = True
            for instance_id in ids:
                provider.delete_instance(instance_id)
            ended = _now()
        except ProviderError as exc:
            if sent:
                # The outcome is unknown (a 5xx may have deleted it): "deleting" is the truth.
                store.update(record.id, last_error=f"down failed: {exc}")
            else:
                store.update(record.id, status=previous, last_error=f"down failed: {exc}")
            keep_watching()
            raise DownFailed(
                f"deleting session {label}'s VM failed: {exc}. The VM may still bill and the session record "
                f"is kept: run `maider down {label}` again"
            ) from None
        try:
            wait_gone(provider, ids, timeouts, reporter)
        except (ProviderError, _StepFailed) as exc:
            store.update(record.id, last_error=f"delete requested, not confirmed: {exc}")
            keep_watching()
            raise DownFailed(
                f"{provider.display_name} accepted the deletion of {', '.join(ids)} but maider could not confirm "
                f"it is gone ({exc}); the session record is kept: run `maider down {label}` again to check"
            ) from None
    watchdog.revoke(provider, record, reporter)  # the VM is gone: its credential has no use left
    seconds = runtime_seconds(record, ended) if ids else 0.0
    cost = cost_of(record, seconds) if ids else 0.0
    currency = record.hourly_price.currency if record.hourly_price else "USD"
    if end_reason is not None:
        record = record_ended(store, record, end_reason, ended or _now(), close_ssh=False)
    else:
        store.delete(record.id)
    return DownResult(record, ids, seconds, cost, currency)


#: In :func:`release_leftovers`' answer: something may still bill, so the record must stay.
DISK_MAY_BILL = "its disk may still bill"


def release_leftovers(
    provider: Provider, record: SessionRecord, reporter: Reporter | None = None
) -> str | None:
    """After a session's VM vanished (a watchdog deleted it): delete what the VM could not delete
    itself and revoke the watchdog's credential. Returns what failed, or None.

    A VM that terminated itself leaves what its vendor keeps after a server delete: Scaleway's
    Block Storage root volume, which bills until deleted (``delete_instance`` of a gone server
    deletes it). On Linode and DigitalOcean it costs one 404. Idempotent.
    """
    problems: list[str] = []
    if record.instance_id:
        try:
            provider.delete_instance(record.instance_id)
        except ProviderError as exc:
            problems.append(
                f"deleting what is left of VM {record.instance_id} ({DISK_MAY_BILL}) failed: {exc}"
            )
    if not watchdog.revoke(provider, record, reporter or NullReporter()):
        problems.append("revoking the watchdog's credential failed (it expires by itself)")
    return "; ".join(problems) or None


def record_ended(
    store: SessionStore,
    record: SessionRecord,
    reason: str,
    ended_at: dt.datetime,
    *,
    close_ssh: bool = True,
    provider: Provider | None = None,
) -> SessionRecord:
    """Keep the record of a session whose VM a watchdog deleted (or that vanished): status
    ``deleted``, why, when, and the cost up to ``ended_at``. `maider cleanup` forgets it later.
    With ``provider``, also :func:`release_leftovers` (a failure is kept in ``last_error``, and
    `maider down` tries again)."""
    if close_ssh:
        close_session_ssh(store, record)
    seconds = runtime_seconds(record, ended_at) if record.instance_id else 0.0
    cost = cost_of(record, seconds) if record.instance_id else 0.0
    problem = release_leftovers(provider, record) if provider is not None else None
    return store.update(
        record.id,
        status=SessionStatus.DELETED,
        ended_at=ended_at,
        end_reason=reason,
        final_cost=round(cost, 4) if cost is not None else None,
        tunnel_pid=None,
        laptop_watchdog_pid=None,
        laptop_watchdog_started=None,
        last_error=problem,
    )


# ------------------------------------------------------------------------------------ list/status


@dataclass
class SessionView:
    """A session record next to what its provider says about its VM right now."""

    record: SessionRecord
    instance: VMInstance | None = None
    #: "running"/"provisioning"/… (the provider's status), "gone", "none" (no VM was created),
    #: or "unknown" (the provider could not be asked: see ``problem``).
    vm_state: str = "unknown"
    problem: str | None = None
    runtime_seconds: float | None = None
    cost: float | None = None

    @property
    def currency(self) -> str:
        price = self.record.hourly_price
        return price.currency if price else "USD"

    def to_json(self, store: SessionStore) -> dict[str, Any]:
        r = self.record
        return {
            "id": r.id,
            "name": r.name,
            "status": r.status.value,
            "vm_state": self.vm_state,
            "provider": r.provider,
            "region": r.region,
            "type": r.type_id,
            "instance_id": r.instance_id,
            "ip": (self.instance.public_ipv4 if self.instance else None) or r.ip,
            "hourly_price": r.hourly_price.amount if r.hourly_price else None,
            "currency": self.currency,
            "runtime_seconds": round(self.runtime_seconds, 1) if self.runtime_seconds is not None else None,
            "cost": round(self.cost, 4) if self.cost is not None else None,
            "api_port": r.api_port,
            "webui_port": r.webui_port,
            "tunnel_alive": tunnel_alive(r),
            "current": store.current() == r.id,
            "model": r.served_model_name,
            "phases": dict(r.phases),
            "last_error": r.last_error,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Orphan:
    """An instance tagged ``maider`` that no session record knows."""

    provider: str
    instance: VMInstance

    @property
    def session_id(self) -> str | None:
        for tag in self.instance.tags:
            if tag.startswith("maider-session-"):
                return tag.removeprefix("maider-session-")
        return None

    def to_json(self) -> dict[str, Any]:
        vm = self.instance
        return {
            "provider": self.provider,
            "instance_id": vm.id,
            "name": vm.name,
            "status": vm.status.value,
            "region": vm.region,
            "type": vm.type_id,
            "ip": vm.public_ipv4,
            "tags": list(vm.tags),
            "created_at": vm.created_at.isoformat() if vm.created_at else None,
        }


@dataclass
class Overview:
    sessions: list[SessionView]
    orphans: list[Orphan]
    #: provider id → why its VMs could not be listed
    failed: dict[str, str]
    #: records that could not be read
    unreadable: list[str]


def tunnel_alive(record: SessionRecord) -> bool:
    from maider.remote import tunnel

    if record.api_port is None or record.tunnel_pid is None:
        return False
    return tunnel.is_alive(
        tunnel.TunnelPorts(record.api_port, record.webui_port, record.tunnel_pid), timeout=0.3
    )


def _up_alive(record: SessionRecord) -> bool:
    """Whether the `maider up` working on this in-progress session is still running."""
    pid = (record.model_extra or {}).get(UP_PID_FIELD)
    if record.status not in IN_PROGRESS or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def survey(*, store: SessionStore | None = None, provider_ids: Sequence[str] | None = None) -> Overview:
    """Every session with its VM's live state, and the orphans: ONE listing (by the tag
    ``maider``) per provider that has credentials or sessions, whatever the number of sessions."""
    from maider import plugins

    store = store or SessionStore()
    records, problems = store.scan()
    providers = _Providers()
    if provider_ids is None:
        wanted = {r.provider for r in records}
        for pid in plugins.installed_ids():
            with contextlib.suppress(Exception):
                if providers.get(pid).has_credentials():
                    wanted.add(pid)
        provider_ids = sorted(wanted)
    listed: dict[str, list[VMInstance]] = {}
    failed: dict[str, str] = {}
    for pid in provider_ids:
        try:
            provider = providers.get(pid)
            if not provider.has_credentials():
                failed[pid] = "no credentials configured"
                continue
            listed[pid] = provider.list_instances("maider")
        except (ProviderError, MaiderError) as exc:
            failed[pid] = str(exc)
    views: list[SessionView] = []
    now = _now()
    for record in records:
        view = SessionView(record)
        if record.provider in failed:
            view.problem = f"{record.provider}: {failed[record.provider]}"
        elif record.provider in listed:
            vms = listed[record.provider]
            mine = [vm for vm in vms if vm.id == record.instance_id] if record.instance_id else []
            if not mine and record.instance_id is None:
                mine = [vm for vm in vms if _session_tag(record.id) in vm.tags]
            if mine:
                view.instance = mine[0]
                view.vm_state = mine[0].status.value
            else:
                view.vm_state = "gone" if record.instance_id else "none"
        if view.vm_state not in ("gone", "none") and (
            record.instance_id is not None or view.instance is not None
        ):
            view.runtime_seconds = runtime_seconds(record, now)
            view.cost = cost_of(record, view.runtime_seconds)
        if view.vm_state == "gone" and record.provider in listed:
            _explain_gone(store, view, confirmed=False, provider=providers.get(record.provider))
        elif view.vm_state == InstanceStatus.STOPPED.value:
            view.record = watchdog.note_vm_state(store, record, "stopped")
        views.append(view)
    # An orphan is a VM tagged "maider" that no record claims: not by instance id, nor (for a
    # record whose create answer never came) by its session tag. A second VM of a session whose
    # create ran twice is one too.
    claimed = {(r.provider, r.instance_id) for r in records if r.instance_id}
    by_tag = {r.id for r in records if r.instance_id is None}
    orphans = [
        Orphan(pid, vm)
        for pid, vms in listed.items()
        for vm in vms
        if "maider" in vm.tags
        and vm.status is not InstanceStatus.DELETED
        and (pid, vm.id) not in claimed
        and Orphan(pid, vm).session_id not in by_tag
    ]
    return Overview(views, orphans, failed, [str(p) for p in problems])


def status(name: str | None = None, *, store: SessionStore | None = None) -> SessionView:
    """One session and its VM as the provider sees it now (one API call)."""
    store = store or SessionStore()
    record = store.resolve(name)
    view = SessionView(record)
    try:
        provider = _Providers().get(record.provider)
        if record.instance_id is not None:
            try:
                view.instance = provider.get_instance(record.instance_id)
                view.vm_state = view.instance.status.value
            except NotFound:
                view.vm_state = "gone"
        else:
            found = provider.list_instances(_session_tag(record.id))
            view.instance = found[0] if found else None
            view.vm_state = found[0].status.value if found else "none"
    except (ProviderError, MaiderError) as exc:
        view.problem = str(exc)
    if view.vm_state not in ("gone", "none"):
        view.runtime_seconds = runtime_seconds(record)
        view.cost = cost_of(record, view.runtime_seconds)
    if view.vm_state == "gone":
        _explain_gone(store, view, confirmed=True, provider=provider if view.problem is None else None)
    elif view.vm_state == InstanceStatus.STOPPED.value:
        view.record = watchdog.note_vm_state(store, view.record, "stopped")
    return view


def _explain_gone(
    store: SessionStore, view: SessionView, *, confirmed: bool, provider: Provider | None
) -> None:
    """A session whose VM is gone: a watchdog's deletion is a ``deleted`` record saying why and
    what it cost, not an unexplained gone VM. ``confirmed``: the provider said NotFound; else
    (``list``: a listing did not show it, and no extra API call is made) only a VM whose
    watchdog deadline has passed is taken as deleted by it; any other stays "gone" for
    ``cleanup`` to confirm."""
    from maider.session import laptop_watchdog

    record = view.record
    if record.status is SessionStatus.READY and record.instance_id is not None:
        why = laptop_watchdog.explain_gone(store, record, due_only=not confirmed)
        if why is None and not laptop_watchdog.has_state(store, record.id):
            # No laptop side to ask (it never ran, or its state is gone): the VM side's facts.
            why = watchdog.gone_reason(record, due_only=not confirmed)
        if why is None:
            return
        record = view.record = record_ended(store, record, *why, provider=provider)
    if record.status is SessionStatus.DELETED:
        view.runtime_seconds = runtime_seconds(record, record.ended_at) if record.ended_at else None
        view.cost = record.final_cost


# ------------------------------------------------------------------------------------ use, tunnel


def use(name: str, *, store: SessionStore | None = None) -> SessionRecord:
    store = store or SessionStore()
    record = store.resolve(name)
    store.set_current(record.id)
    return record


def reopen_tunnel(
    name: str | None = None, *, store: SessionStore | None = None, settings: MaiderSettings | None = None
) -> SessionRecord:
    """Open the session's tunnel again (ports reused when free); returns the updated record."""
    from maider.config import load_settings
    from maider.remote import tunnel

    store = store or SessionStore()
    settings = settings or load_settings()
    record = store.resolve(name)
    if record.status not in (SessionStatus.READY, SessionStatus.KEPT) or record.ip is None:
        raise MaiderError(
            f"session {record.label} is {record.status.value}: a tunnel needs a running VM (`maider status "
            f"{record.label}`)"
        )
    user_key = user_keypair(settings)
    target = ssh.session_target(store, record, user_key.private_path)
    tunnel.open_session_tunnel(
        store, record.id, target, webui=record.webui_port is not None or settings.enable_openwebui
    )
    return store.get(record.id)


# ------------------------------------------------------------------------------------ cleanup


@dataclass
class CleanupResult:
    deleted_orphans: list[Orphan]
    dropped_records: list[SessionRecord]
    skipped: list[str]


def cleanup(
    confirm: Callable[[list[Orphan]], bool],
    reporter: Reporter | None = None,
    *,
    store: SessionStore | None = None,
    settings: MaiderSettings | None = None,
) -> CleanupResult:
    """Delete orphan VMs (after ``confirm``) and drop records whose VM the provider confirms gone.

    Any API error removes nothing: the survey must succeed for every provider concerned first.
    """
    from maider.config import load_settings

    store = store or SessionStore()
    reporter = reporter or NullReporter()
    settings = settings or load_settings()
    timeouts = Timeouts.from_settings(settings)
    overview = survey(store=store)
    if overview.failed:
        reasons = "; ".join(f"{pid}: {why}" for pid, why in overview.failed.items())
        raise LifecycleError(f"cleanup removed nothing: listing VMs failed ({reasons})")
    providers = _Providers()
    skipped: list[str] = []
    gone: list[SessionRecord] = []
    for view in overview.sessions:
        record = view.record
        if view.vm_state not in ("gone", "none"):
            continue
        if _up_alive(record):
            skipped.append(f"{record.label}: `maider up` is still working on it")
            continue
        # The listing did not show it; make sure with a direct read before forgetting it.
        if (
            record.instance_id is not None
            and providers.get(record.provider).get_instance_status(record.instance_id)
            is not InstanceStatus.DELETED
        ):
            skipped.append(f"{record.label}: the provider still knows {record.instance_id}")
            continue
        gone.append(record)
    orphans = list(overview.orphans)
    deleted: list[Orphan] = []
    if orphans and confirm(orphans):
        for orphan in orphans:
            provider = providers.get(orphan.provider)
            reporter.phase("delete", f"deleting orphan {orphan.instance.id} on {provider.display_name}")
            provider.delete_instance(orphan.instance.id)
            deleted.append(orphan)
        by_provider: dict[str, list[str]] = {}
        for orphan in deleted:
            by_provider.setdefault(orphan.provider, []).append(orphan.instance.id)
        for pid, ids in by_provider.items():
            wait_gone(providers.get(pid), ids, timeouts, reporter)
    dropped: list[SessionRecord] = []
    for record in gone:
        # What a self-deleted VM leaves (Scaleway's root volume) is released before the record,
        # the last thing that knows about it, goes.
        problem = release_leftovers(providers.get(record.provider), record, reporter)
        if problem is not None and DISK_MAY_BILL in problem:
            store.update(record.id, last_error=problem)
            skipped.append(f"{record.label}: {problem}")
            continue
        close_session_ssh(store, record)
        store.delete(record.id)
        dropped.append(record)
    return CleanupResult(deleted, dropped, skipped)
