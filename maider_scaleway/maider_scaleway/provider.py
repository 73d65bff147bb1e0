"""The Scaleway provider class. Importing this module must not import the scaleway SDK.

The SDK lives behind ``maider_scaleway.api``, imported inside the network methods. Scaleway
specifics that shape this class (shared notes §2.3):

- Servers, security groups and products are **zone**-scoped, so an instance id here is
  ``"<zone>/<server uuid>"`` (e.g. ``"fr-par-2/0f6…"``), a firewall id likewise, and listing
  by tag walks every GPU zone.
- A server is created **stopped**; cloud-init user data is a separate ``PATCH …/user_data/cloud-init``;
  then ``poweron``. SSH keys live in the project (IAM); the lifecycle also puts the key into
  cloud-init, so nothing per server is needed here.
- GPU types allow no local volume: the root disk is an ``sbs_volume`` (Block Storage). Deleting
  a server only *detaches* it, and a detached volume is billed until it is deleted through the
  Block Storage API: ``delete_instance`` does that (see its docstring), and ``create_instance``
  tags the volume so it can be found even once its server is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from maider.provider import (
    CONTRACT_VERSION,
    AuthError,
    Billing,
    Catalog,
    CredentialCheck,
    HTTPCall,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    Provider,
    ProviderError,
    SelfDestruct,
    SelfDestructUnavailable,
    VMInstance,
    VMType,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic_settings import BaseSettings

    from maider_scaleway.api import APIs, BlockAPI, IamAPI, InstanceAPI
    from maider_scaleway.settings import ScalewaySettings

T = TypeVar("T")

DEFAULT_GPU_IMAGE = "ubuntu_noble_gpu_os_12"
_ZONE_RE = re.compile(r"^[a-z]{2}-[a-z]{3}-[1-9]$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ACCESS_KEY_RE = re.compile(r"^SCW[A-Z0-9]{17}$")
#: Most pages any listing may take: a guard against an API that never returns a short page.
_MAX_PAGES = 1000
_STOPPED = ("stopped", "stopped_in_place")
#: Seconds between two polls while a deletion waits for a server to go or a volume to detach.
#: (A real volume read detached ~1.6 s after its server was deleted: scaleway-cli recording,
#: 2025-06-11; a GPU server takes a minute or more to terminate.)
_POLL_SECONDS = 5.0
#: Block Storage volume statuses that mean "not deletable yet, wait" and "deleted already".
_VOLUME_BUSY = ("in_use", "creating", "resizing", "snapshotting", "updating")
_VOLUME_GONE = ("deleting", "deleted")
#: The one permission set the watchdog's API key gets, on the session's project only: the
#: narrowest documented set that includes the terminate action. It also lets the key create,
#: change and delete every other Instance resource (servers, IPs, security groups) of that project.
WATCHDOG_PERMISSION_SET = "InstancesFullAccess"


def server_tag(server_id: str) -> str:
    """The tag maider puts on a server's Block Storage volumes: how they are found once it is gone."""
    return f"maider-server-{server_id}"


def _sbs_volume_ids(server: Any) -> list[str]:
    """The ids of a server's Block Storage volumes (``volumes`` maps an index to each disk)."""
    volumes = getattr(server, "volumes", None) or {}
    return [str(v.id) for _, v in sorted(volumes.items()) if str(v.volume_type) == "sbs_volume" and v.id]


def _with_message(exc: ProviderError, message: str, provider: str) -> ProviderError:
    """`exc`'s type, status (and Retry-After) with another message."""
    kwargs: dict[str, Any] = {"provider": exc.provider or provider, "status": exc.status}
    if hasattr(exc, "retry_after"):
        kwargs["retry_after"] = exc.retry_after
    return type(exc)(message, **kwargs)


def _status(state: str, detail: str) -> InstanceStatus:
    """The vendor's state, normalized.

    ``stopped`` is how every server starts (create leaves it stopped until ``poweron``); maider
    powers it on inside ``create_instance``, so a stopped maider server is one still being set
    up (or whose set-up failed): PROVISIONING. ``stopped_in_place`` only follows a deliberate
    stop. ``stopping`` with the detail "terminating" is a deletion in progress.
    """
    if state == "running":
        return InstanceStatus.RUNNING
    if state == "starting":
        return InstanceStatus.BOOTING
    if state == "stopped":
        return InstanceStatus.PROVISIONING
    if state == "stopping":
        return InstanceStatus.DELETING if "terminat" in detail.lower() else InstanceStatus.STOPPING
    if state == "stopped_in_place":
        return InstanceStatus.STOPPED
    if state == "locked":  # locked by Scaleway (abuse, billing): nothing maider can do
        return InstanceStatus.ERROR
    return InstanceStatus.UNKNOWN


def _public_ipv4(server: Any) -> str | None:
    for ip in getattr(server, "public_ips", None) or []:
        if str(getattr(ip, "family", "inet")) == "inet" and ip.address:
            return str(ip.address)
    legacy = getattr(server, "public_ip", None)  # deprecated single-IP field
    if legacy is not None and legacy.address and str(getattr(legacy, "family", "inet")) == "inet":
        return str(legacy.address)
    return None


def split_id(resource_id: str, what: str = "instance") -> tuple[str, str]:
    """``"fr-par-2/<uuid>"`` → (zone, uuid); anything else is a ProviderError (not NotFound)."""
    zone, sep, ident = str(resource_id).partition("/")
    if not sep or not _ZONE_RE.match(zone) or not _UUID_RE.match(ident):
        raise ProviderError(
            f"{resource_id!r} is not a Scaleway {what} id (expected <zone>/<uuid>, e.g. fr-par-2/…)",
            provider="scaleway",
        )
    return zone, ident


class ScalewayProvider(Provider):
    id: ClassVar[str] = "scaleway"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "Scaleway"
    catalog_module: ClassVar[str] = "maider_scaleway.catalog"
    settings_model: ClassVar[str] = "maider_scaleway.settings:ScalewaySettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = (
        "SCW_ACCESS_KEY",
        "SCW_SECRET_KEY",
        "SCW_DEFAULT_PROJECT_ID",
    )
    credential_fields: ClassVar[tuple[str, ...]] = ("access_key", "secret_key", "project_id")
    credentials_help: ClassVar[str] = (
        "set SCW_ACCESS_KEY, SCW_SECRET_KEY and SCW_DEFAULT_PROJECT_ID (console.scaleway.com → IAM → API keys)"
    )
    currency: ClassVar[str] = "EUR"
    #: GPU Instances are billed per started minute while powered on.
    billing: ClassVar[Billing] = Billing(granularity_seconds=60)

    #: An OS-initiated shutdown (what the watchdog can do without a credential) leaves the server
    #: allocated and billed. guess: Scaleway stops compute billing only for a server powered off
    #: through the API/console (shared notes §4.3 say a powered-off server stops billing, but not
    #: for a halt from inside; Scaleway's FAQ says to power off from the console), so: False.
    poweroff_stops_billing: ClassVar[bool] = False

    settings: ScalewaySettings

    _apis: APIs | None = None

    def __init__(self, settings: BaseSettings | None = None) -> None:
        super().__init__(settings)
        #: How a deletion waits between polls, and the clock it reads (see ``_wait``). Tests put
        #: their simulator's fake clock here, so the waits pass in simulated time.
        self.sleep: Callable[[float], None] = time.sleep
        self.clock: Callable[[], float] = time.monotonic

    def has_credentials(self) -> bool:
        s = self.settings
        return all(getattr(s, name, None) for name in ("access_key", "secret_key", "project_id"))

    def default_image(self, vm_type: VMType) -> str:
        # Scaleway's GPU OS image ships the NVIDIA driver and container toolkit.
        return DEFAULT_GPU_IMAGE

    # -- plumbing --------------------------------------------------------------------------

    def _secrets(self) -> list[str | None]:
        s = self.settings
        return [s.secret_key.get_secret_value() if s.secret_key else None, s.access_key]

    def _build(self, *, auth: bool) -> APIs:
        from maider_scaleway import api
        from maider_scaleway.settings import DEFAULT_API_URL

        s = self.settings
        creds = api.Credentials(
            access_key=s.access_key,
            secret_key=s.secret_key.get_secret_value() if s.secret_key else None,
            project_id=s.project_id,
        )
        return api.build_apis(
            creds,
            zone=s.zone,
            api_url=s.api_url or DEFAULT_API_URL,
            timeout=s.request_timeout,
            help_text=self.credentials_help,
            auth=auth,
        )

    def _all_apis(self) -> APIs:
        if self._apis is None:
            self._apis = self._build(auth=True)
        return self._apis

    def _instance_api(self) -> InstanceAPI:
        return self._all_apis().instance

    def _iam_api(self) -> IamAPI:
        return self._all_apis().iam

    def _block_api(self) -> BlockAPI:
        return self._all_apis().block

    def _attempt(self, fn: Callable[[], T]) -> T:
        """One SDK call, no retry; failures are typed ProviderErrors."""
        from maider_scaleway import api

        return api.attempt(fn, secrets=self._secrets(), help_text=self.credentials_help)

    def _call(self, fn: Callable[[], T]) -> T:
        """One SDK call, retried (429, 5xx, dropped connections, timeouts) per the settings."""
        from maider.retry import call

        return call(lambda: self._attempt(fn), self.settings.retry_policy())

    def _collect(self, fetch: Callable[[int, int], Any], key: str, *, retry: bool = True) -> list[Any]:
        """Every item of a paged listing, one call per page (each retried on its own).

        Lists come back as lists, the product catalog as maps (their items are returned as
        (name, value) pairs). The total is in ``total_count`` (the SDK copies X-Total-Count there,
        as a string), so the walk stops at the total without asking for the empty page after it;
        a listing without a total stops at a short or empty page.
        """
        size = self.settings.page_size
        run = self._call if retry else self._attempt
        items: list[Any] = []
        for page in range(1, _MAX_PAGES + 1):
            response = run(lambda page=page: fetch(page, size))  # type: ignore[misc]
            chunk = getattr(response, key) or []
            items.extend(chunk.items() if isinstance(chunk, dict) else chunk)
            try:
                total: int | None = int(response.total_count)
            except (AttributeError, TypeError, ValueError):
                total = None
            if total == 0 and chunk:
                total = None  # the SDK's default when the API sent no total: unknown, not zero
            if not chunk or (total is not None and len(items) >= total):
                break
            if total is None and len(chunk) < size:
                break
        else:
            raise ProviderError(
                f"Scaleway: {key} listing did not end after {_MAX_PAGES} pages", provider=self.id
            )
        return items

    def _wait(self, done: Callable[[], bool], seconds: float) -> bool:
        """Poll `done` every few seconds until it is true (True) or `seconds` have passed (False)."""
        deadline = self.clock() + seconds
        while not done():
            left = deadline - self.clock()
            if left <= 0:
                return False
            self.sleep(min(_POLL_SECONDS, left))
        return True

    def _zones(self) -> list[str]:
        """Every zone maider may have put a server in: the catalog's GPU zones and the configured one."""
        zones = set(self.embedded_catalog().gpu_regions) | {self.settings.zone}
        return sorted(zones)

    def _vm(self, server: Any, zone: str) -> VMInstance:
        state = str(server.state)
        return VMInstance(
            id=f"{zone}/{server.id}",
            provider=self.id,
            name=str(server.name),
            status=_status(state, str(getattr(server, "state_detail", "") or "")),
            region=zone,
            type_id=str(server.commercial_type),
            public_ipv4=_public_ipv4(server),
            tags=tuple(server.tags or ()),
            created_at=getattr(server, "creation_date", None),
            raw_status=state,
        )

    # -- credentials and keys --------------------------------------------------------------

    def check_credentials(self) -> CredentialCheck:
        try:
            ins = self._instance_api()
            # Cheapest call that proves both the key and the project: one server, one zone.
            self._call(lambda: ins.list_servers(zone=self.settings.zone, per_page=1))
        except AuthError as exc:
            return CredentialCheck(ok=False, reason=str(exc))
        return CredentialCheck(ok=True)

    def _find_key(self, public_key: str) -> str | None:
        from maider.sshkeys import fingerprint_sha256, same_key

        iam = self._iam_api()
        project = self.settings.project_id
        keys = self._collect(
            lambda page, size: iam.list_ssh_keys(project_id=project, page=page, page_size=size), "ssh_keys"
        )
        wanted = fingerprint_sha256(public_key)
        for key in keys:
            # The key body decides; the fingerprint (whose format Scaleway does not document) is a fallback.
            if same_key(str(key.public_key), public_key) or wanted in str(key.fingerprint or "").split():
                return str(key.id)
        return None

    def ensure_ssh_key(self, public_key: str, label: str) -> str:
        from maider.sshkeys import parse_public_key

        parse_public_key(public_key)  # a malformed key is the user's to fix: ConfigError
        found = self._find_key(public_key)
        if found is not None:
            return found
        iam = self._iam_api()
        try:
            key = self._call(
                lambda: iam.create_ssh_key(
                    public_key=public_key.strip(), name=label, project_id=self.settings.project_id
                )
            )
        except ProviderError as exc:
            # 409: the key exists after all (a retried upload whose first answer was lost).
            if exc.status != 409:
                raise
            found = self._find_key(public_key)
            if found is None:
                raise
            return found
        return str(key.id)

    # -- security groups ---------------------------------------------------------------------

    def _rules(self, cidrs: list[str]) -> list[Any]:
        from maider_scaleway.api import SetSecurityGroupRulesRequestRule

        networks: list[str] = []
        for cidr in cidrs:
            try:
                net = str(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ProviderError(f"{cidr!r} is not an IP network (CIDR)", provider=self.id) from None
            if net not in networks:
                networks.append(net)
        return [
            SetSecurityGroupRulesRequestRule(
                action="accept",
                protocol="TCP",
                direction="inbound",
                ip_range=net,
                position=position,
                dest_port_from=22,
                editable=True,
            )
            for position, net in enumerate(networks, start=1)
        ]

    def _groups_named(self, zone: str, name: str, *, retry: bool = True) -> list[Any]:
        ins = self._instance_api()
        groups = self._collect(
            lambda page, size: ins.list_security_groups(zone=zone, name=name, page=page, per_page=size),
            "security_groups",
            retry=retry,
        )
        # The API's name filter may match substrings: the exact name decides (oldest id first).
        return sorted((g for g in groups if g.name == name), key=lambda g: str(g.id))

    def _ensure_security_group(self, zone: str, name: str, cidrs: list[str], tags: tuple[str, ...]) -> str:
        """The uuid of the security group `name` in `zone`, created or corrected: inbound dropped
        by default except TCP 22 from `cidrs`, outbound accepted, stateful (so answers get back)."""
        ins = self._instance_api()
        mine = self._groups_named(zone, name)
        if mine:
            group = mine[0]
            policies = (str(group.inbound_default_policy), str(group.outbound_default_policy))
            if policies != ("drop", "accept") or not group.stateful:
                self._call(
                    lambda: ins.update_security_group(
                        security_group_id=group.id,
                        zone=zone,
                        inbound_default_policy="drop",
                        outbound_default_policy="accept",
                        stateful=True,
                    )
                )
            group_id = str(group.id)
        else:
            tries = 0

            def create() -> str:
                nonlocal tries
                tries += 1
                if tries > 1:  # an earlier answer may have been lost after the group was made
                    made = self._groups_named(zone, name, retry=False)
                    if made:
                        return str(made[0].id)
                created = self._attempt(
                    lambda: ins.create_security_group(
                        zone=zone,
                        name=name,
                        description="maider: SSH from the allowed addresses only",
                        stateful=True,
                        inbound_default_policy="drop",
                        outbound_default_policy="accept",
                        tags=list(tags),
                    )
                )
                return str(created.security_group.id)

            group_id = self._call(create)
        # PUT replaces every editable rule at once: the result is exactly the wanted set.
        rules = self._rules(cidrs)
        self._call(lambda: ins.set_security_group_rules(security_group_id=group_id, zone=zone, rules=rules))
        return group_id

    def ensure_firewall(self, name: str, allowed_cidrs: list[str], tags: tuple[str, ...]) -> str:
        zone = self.settings.zone
        return f"{zone}/{self._ensure_security_group(zone, name, allowed_cidrs, tags)}"

    def _security_group_in(self, zone: str, firewall_id: str) -> str:
        """A security group usable in `zone`: the given one, or its copy there (groups are zonal)."""
        source_zone, group_id = split_id(firewall_id, "firewall")
        if source_zone == zone:
            return group_id
        ins = self._instance_api()
        group = self._call(
            lambda: ins.get_security_group(security_group_id=group_id, zone=source_zone)
        ).security_group
        rules = self._collect(
            lambda page, size: ins.list_security_group_rules(
                security_group_id=group_id, zone=source_zone, page=page, per_page=size
            ),
            "rules",
        )
        cidrs = [
            str(r.ip_range)
            for r in rules
            if str(r.direction) == "inbound" and str(r.action) == "accept" and r.dest_port_from == 22
        ]
        return self._ensure_security_group(zone, str(group.name), cidrs, tuple(group.tags or ()))

    # -- instances -------------------------------------------------------------------------

    def _servers(self, zone: str, tag: str, *, retry: bool = True) -> list[Any]:
        ins = self._instance_api()
        servers = self._collect(
            lambda page, size: ins.list_servers(zone=zone, tags=[tag], page=page, per_page=size),
            "servers",
            retry=retry,
        )
        # Filtered again here: the API's tag filter semantics are not documented precisely.
        return [s for s in servers if tag in (s.tags or ())]

    def _list_zone(self, zone: str, tag: str, *, retry: bool = True) -> list[VMInstance]:
        return [self._vm(s, zone) for s in self._servers(zone, tag, retry=retry)]

    def list_instances(self, tag: str) -> list[VMInstance]:
        found: list[VMInstance] = []
        for zone in self._zones():
            found.extend(self._list_zone(zone, tag))
        return found

    def get_instance(self, instance_id: str) -> VMInstance:
        zone, server_id = split_id(instance_id)
        ins = self._instance_api()
        server = self._call(lambda: ins.get_server(zone=zone, server_id=server_id)).server
        return self._vm(server, zone)

    def get_instance_status(self, instance_id: str) -> InstanceStatus:
        """DELETED once the server is gone (the API answers 404), as for every provider.

        The server's Block Storage root volume outlives it by a moment: ``delete_instance``
        deletes it after the server is gone, within the same call, so DELETED here does not
        by itself mean the volume is gone too (a delete that failed names the volume).
        """
        return super().get_instance_status(instance_id)

    def _act_once(
        self, zone: str, server_id: str, act: Callable[[], Any], done: Callable[[Any], bool]
    ) -> None:
        """Run a server action with retries that never repeat it blindly: an answer lost in
        transit may hide a success, so every retry first reads the server (a 404 or `done(server)`
        means there is nothing left to do)."""
        ins = self._instance_api()
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                try:
                    server = self._attempt(lambda: ins.get_server(zone=zone, server_id=server_id)).server
                except NotFound:
                    return
                if done(server):
                    return
            self._attempt(act)

        self._call(once)

    def delete_instance(self, instance_id: str) -> None:
        """Delete the server, then its Block Storage volumes. Idempotent.

        ``terminate`` deletes a server and its local volumes but only *detaches* its
        ``sbs_volume`` disks (SDK docstring), which stay billed. So this call:

        1. reads the server once, for the ids of its Block Storage volumes;
        2. terminates it (a stopped one, e.g. a create that failed before poweron, is deleted
           directly), never twice;
        3. waits, up to ``delete_wait_seconds``, until the server is gone, since a volume in use
           cannot be deleted;
        4. deletes each volume once it reads detached (a 404 means it is gone already).

        A server that is gone already (an earlier call could not finish, or it was deleted
        behind maider's back) is no longer there to name its volumes: they carry the tag
        ``server_tag(<uuid>)`` (see ``create_instance``), and those found are deleted.

        ``get_instance_status`` reads DELETED as soon as the server is gone; the volume
        deletion follows, within this call. When the server outlives the wait or a volume
        cannot be deleted, the ProviderError names the volumes, which are still billed;
        calling this again finishes the job.
        """
        zone, server_id = split_id(instance_id)
        ins = self._instance_api()
        try:
            server = self._call(lambda: ins.get_server(zone=zone, server_id=server_id)).server
        except NotFound:
            self._delete_volumes(zone, self._volumes_tagged(zone, server_tag(server_id)), instance_id)
            return
        volume_ids = _sbs_volume_ids(server)
        self._terminate(zone, server_id, server)
        if not volume_ids:
            return
        if not self._wait(lambda: self._server_gone(zone, server_id), self.settings.delete_wait_seconds):
            names = ", ".join(f"{zone}/{v}" for v in volume_ids)
            raise ProviderError(
                f"Scaleway server {instance_id} is being deleted but still exists after "
                f"{self.settings.delete_wait_seconds:g} s, so its Block Storage volume(s) {names} cannot be "
                "deleted yet and are still billed: run the delete again (maider down) once it is gone",
                provider=self.id,
            )
        self._delete_volumes(zone, volume_ids, instance_id)

    def _terminate(self, zone: str, server_id: str, server: Any) -> None:
        """Start the server's deletion unless it is under way (an answer lost is never a second one)."""
        ins = self._instance_api()

        def deleting(s: Any) -> bool:
            return str(s.state) == "stopping" and "terminat" in str(s.state_detail or "").lower()

        if deleting(server):
            return
        try:
            if str(server.state) in _STOPPED:
                # terminate is for a running server; a stopped one (e.g. a create that failed
                # before poweron) is deleted directly, which frees it at once.
                self._act_once(
                    zone,
                    server_id,
                    lambda: ins.delete_server(zone=zone, server_id=server_id),
                    lambda s: False,
                )
            else:
                # terminate deletes the server and its local volumes; billing of the server stops now.
                self._act_once(
                    zone,
                    server_id,
                    lambda: ins.server_action(zone=zone, server_id=server_id, action="terminate"),
                    deleting,
                )
        except NotFound:
            return

    def _server_gone(self, zone: str, server_id: str) -> bool:
        ins = self._instance_api()
        try:
            self._call(lambda: ins.get_server(zone=zone, server_id=server_id))
        except NotFound:
            return True
        return False

    # -- Block Storage volumes ---------------------------------------------------------------

    def _tag_volumes(self, zone: str, volume_ids: list[str], tags: tuple[str, ...]) -> None:
        """Give the server's volumes its tags (PATCH; the create body cannot: VolumeServerTemplate
        has no tags field)."""
        blk = self._block_api()
        for volume_id in volume_ids:
            self._call(
                lambda volume_id=volume_id: blk.update_volume(  # type: ignore[misc]
                    volume_id=volume_id, zone=zone, tags=list(tags)
                )
            )

    def _volumes_tagged(self, zone: str, tag: str) -> list[str]:
        """The ids of the project's Block Storage volumes in `zone` that carry `tag`."""
        blk = self._block_api()
        project = self.settings.project_id
        volumes = self._collect(
            lambda page, size: blk.list_volumes(
                zone=zone, project_id=project, tags=[tag], page=page, page_size=size
            ),
            "volumes",
        )
        # The API returns volumes with "one or more matching tags"; the exact tag decides here.
        return [str(v.id) for v in volumes if tag in (v.tags or ())]

    def _delete_volume(self, zone: str, volume_id: str) -> None:
        """Delete one Block Storage volume once it is detached; one that is gone already is fine.

        Waits up to ``delete_wait_seconds`` while the volume is in use or busy (it detaches a
        moment after its server is gone). A delete the API refuses as "in use" or "transient
        state" (412/409) goes back to waiting; any other error is raised.
        """
        blk = self._block_api()
        last = "unknown"

        def deleted() -> bool:
            nonlocal last
            try:
                volume = self._call(lambda: blk.get_volume(volume_id=volume_id, zone=zone))
            except NotFound:
                return True
            last = str(volume.status)
            if last in _VOLUME_GONE:
                return True
            if last in _VOLUME_BUSY:
                return False
            try:
                self._call(lambda: blk.delete_volume(volume_id=volume_id, zone=zone))
            except NotFound:
                return True  # a lost answer's retry: the first DELETE did it
            except ProviderError as exc:
                if exc.status not in (409, 412):
                    raise
                last = f"{last}, and its deletion was refused ({exc})"
                return False
            return True

        if not self._wait(deleted, self.settings.delete_wait_seconds):
            raise ProviderError(
                f"still {last} after {self.settings.delete_wait_seconds:g} s", provider=self.id
            )

    def _delete_volumes(self, zone: str, volume_ids: list[str], instance_id: str) -> None:
        """Delete every volume; the error, if any, names each one left (they are billed)."""
        failed: list[str] = []
        first: ProviderError | None = None
        for volume_id in dict.fromkeys(volume_ids):
            try:
                self._delete_volume(zone, volume_id)
            except ProviderError as exc:
                failed.append(f"{zone}/{volume_id}: {exc}")
                first = first or exc
        if first is not None:
            raise _with_message(
                first,
                f"Scaleway server {instance_id} is deleted, but its Block Storage volume(s) could not be "
                f"and are still billed ({'; '.join(failed)}): run the delete again (maider down), or delete "
                "them in the console (Storage → Block Storage)",
                self.id,
            )

    # -- the watchdog's credential -----------------------------------------------------------

    def self_destruct_plan(self) -> str:
        return "a Scaleway IAM key minted for the session (InstancesFullAccess on this project, expiring)"

    def self_destruct(self, instance: VMInstance, *, valid_for_s: float, label: str) -> SelfDestruct:
        """Mint an IAM application whose only policy is InstancesFullAccess on the server's
        project, and an API key for it that expires after ``valid_for_s``. The VM terminates
        itself with ``POST …/servers/{id}/action {"action": "terminate"}``.

        ``terminate`` deletes the server (its compute billing stops) but only detaches its Block
        Storage root volume, which the key cannot delete and which stays billed until
        ``delete_instance`` (``maider down`` or ``cleanup``) deletes it.

        Each create is sent once (never retried blindly); when one fails, what was made is
        deleted again and the error raised.
        """
        from maider_scaleway.settings import DEFAULT_API_URL

        zone, server_id = split_id(instance.id)
        ins, iam = self._instance_api(), self._iam_api()
        # The server says which organization and project it is in (no Account API needed).
        server = self._call(lambda: ins.get_server(zone=zone, server_id=server_id)).server
        organization, project = str(server.organization), str(server.project)
        expires = dt.datetime.fromtimestamp(int(self.wall_time() + valid_for_s), tz=dt.timezone.utc)
        name = label[:64]
        description = f"maider watchdog: lets server {server_id} terminate itself"[:200]
        made: list[str] = []  # the revoke handle's parts, in creation order
        try:
            app = self._attempt(
                lambda: iam.create_application(
                    name=name, description=description, organization_id=organization
                )
            )
            made.append(str(app.id))
            policy = self._attempt(
                lambda: iam.create_policy(**self._watchdog_policy(app.id, name, organization, project))
            )
            made.append(str(policy.id))
            key = self._attempt(
                lambda: iam.create_api_key(
                    application_id=app.id,
                    description=description,
                    expires_at=expires,
                    default_project_id=project,
                )
            )
            made.append(str(key.access_key))
        except ProviderError as exc:
            self._revoke_parts(made)
            if isinstance(exc, AuthError):
                raise SelfDestructUnavailable(
                    "the Scaleway API key may not create the watchdog's IAM application, policy and API "
                    "key (its policy needs the IAMManager permission set in the organization); "
                    f"Scaleway said: {exc.status}",
                    provider=self.id,
                    status=exc.status,
                ) from None
            raise
        secret = str(key.secret_key or "")
        if not secret:
            self._revoke_parts(made)
            raise SelfDestructUnavailable(
                "Scaleway created an API key but did not return its secret", provider=self.id
            )
        base = (self.settings.api_url or DEFAULT_API_URL).rstrip("/")
        call = HTTPCall(
            method="POST",
            url=f"{base}/instance/v1/zones/{zone}/servers/{server_id}/action",
            headers={"X-Auth-Token": secret, "Content-Type": "application/json"},
            json_body={"action": "terminate"},
        )
        return SelfDestruct(
            calls=(call,),
            credential=(
                f"a Scaleway API key of IAM application {name!r} with {WATCHDOG_PERMISSION_SET} on project "
                f"{project} only, expiring {expires:%Y-%m-%d %H:%M} UTC; it can also create, change and "
                "delete every other Instance resource in that project until then"
            ),
            secrets=(secret,),
            expires_at=expires,
            revoke_handle="/".join(made),
        )

    @staticmethod
    def _watchdog_policy(app_id: str, name: str, organization: str, project: str) -> dict[str, Any]:
        from maider_scaleway import api

        return {
            "name": name,
            "description": "maider watchdog: terminate its own server",
            "organization_id": organization,
            "application_id": app_id,
            "rules": [api.project_rule(WATCHDOG_PERMISSION_SET, project)],
        }

    def revoke_self_destruct(self, handle: str) -> None:
        """Delete the API key, the policy and the application (each 404: gone already)."""
        self._revoke_parts(str(handle).split("/"))

    def _revoke_parts(self, parts: list[str]) -> None:
        """``parts``: [application id, policy id, access key], as far as they were made."""
        iam = self._iam_api()
        app, policy, key = [*parts, "", "", ""][:3]
        # The key first, so the credential dies before anything else.
        steps: list[tuple[bool, Callable[[], Any]]] = [
            (bool(_ACCESS_KEY_RE.match(key)), lambda: iam.delete_api_key(access_key=key)),
            (bool(_UUID_RE.match(policy)), lambda: iam.delete_policy(policy_id=policy)),
            (bool(_UUID_RE.match(app)), lambda: iam.delete_application(application_id=app)),
        ]
        for valid, delete in steps:
            if not valid:
                continue  # not made, or not an id maider made
            try:
                self._call(delete)
            except NotFound:
                continue

    def create_instance(self, spec: InstanceSpec) -> VMInstance:
        from maider.retry import create_once
        from maider_scaleway.api import VolumeServerTemplate

        zone = spec.region
        if not _ZONE_RE.match(zone):
            raise ProviderError(f"{zone!r} is not a Scaleway zone (e.g. fr-par-2)", provider=self.id)
        known = self.embedded_catalog().types.get(spec.type_id)
        image = spec.image or (self.default_image(known) if known is not None else DEFAULT_GPU_IMAGE)
        ins = self._instance_api()
        group = self._security_group_in(zone, spec.firewall_id) if spec.firewall_id else None
        # GPU types allow no local volume: the root disk must be Block Storage (notes §2.3).
        # Sizes are in bytes and must be a multiple of 512 (10**9 is).
        root = VolumeServerTemplate(volume_type="sbs_volume", size=self.settings.root_volume_gb * 10**9)

        #: instance id -> its Block Storage volume ids, as the create (or lookup) answer listed them
        volumes: dict[str, list[str]] = {}

        def create() -> VMInstance:
            response = self._attempt(
                lambda: ins.create_server(
                    zone=zone,
                    commercial_type=spec.type_id,
                    name=spec.name,
                    image=image,
                    tags=list(spec.tags),
                    security_group=group,
                    dynamic_ip_required=True,
                    volumes={"0": root},
                )
            )
            vm = self._vm(response.server, zone)
            volumes[vm.id] = _sbs_volume_ids(response.server)
            return vm

        def find_existing() -> VMInstance | None:
            # One attempt: create_once retries this lookup itself.
            found = [(self._vm(s, zone), s) for s in self._servers(zone, spec.session_tag, retry=False)]
            if not found:
                return None
            vm, server = min(found, key=lambda f: (f[0].created_at is None, f[0].created_at, f[0].id))
            volumes[vm.id] = _sbs_volume_ids(server)
            return vm

        vm = create_once(create, find_existing, self.settings.retry_policy())
        try:
            # Tagged before anything else: once the server is gone, the tags are the only way to
            # find its detached (and billed) root volume.
            _, server_id = split_id(vm.id)
            self._tag_volumes(zone, volumes.get(vm.id, []), (*spec.tags, server_tag(server_id)))
            powered_on = self._boot(zone, vm, spec.user_data)
        except ProviderError as exc:
            raise self._discard(vm, exc, spec.session_tag) from None
        if not powered_on:  # found already started (a create resumed after a crash): as it is
            return vm
        return dataclasses.replace(vm, status=InstanceStatus.BOOTING, raw_status="starting")

    def _boot(self, zone: str, vm: VMInstance, user_data: str) -> bool:
        """cloud-init user data, then poweron (both idempotent, so a resumed create is safe).

        Returns whether this call powered the server on.
        """
        ins = self._instance_api()
        _, server_id = split_id(vm.id)
        content = user_data.encode("utf-8")
        # Before poweron, so cloud-init finds it on the first boot.
        self._call(
            lambda: ins.set_server_user_data(
                server_id=server_id, key="cloud-init", content=content, zone=zone
            )
        )
        if vm.raw_status not in _STOPPED:
            return False
        self._act_once(
            zone,
            server_id,
            lambda: ins.server_action(zone=zone, server_id=server_id, action="poweron"),
            lambda s: str(s.state) not in _STOPPED,
        )
        return True

    def _discard(self, vm: VMInstance, exc: ProviderError, session_tag: str) -> ProviderError:
        """Delete a server whose set-up failed; the error to raise says whether that worked."""
        try:
            self.delete_instance(vm.id)
        except ProviderError as cleanup:
            message = (
                f"{exc} (deleting the half-created server {vm.id} failed too: {cleanup}; it is powered off "
                f"and tagged {session_tag}, so `maider down` can remove it)"
            )
            return _with_message(exc, message, self.id)
        return exc

    # -- catalog ---------------------------------------------------------------------------

    def fetch_catalog(self) -> Catalog | None:
        """GPU types per zone with EUR prices, from the (public) product endpoints.

        Two listings per GPU zone: the types (a map, paged by hand: the SDK has no ``_all``
        helper for it) and their availability. Works without credentials.
        """
        from maider_scaleway.live_catalog import build_catalog

        ins = self._instance_api() if self.has_credentials() else self._build(auth=False).instance
        per_zone: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
        for zone in self._zones():

            def types_page(page: int, size: int, zone: str = zone) -> Any:
                return ins.list_servers_types(zone=zone, page=page, per_page=size)

            def availability_page(page: int, size: int, zone: str = zone) -> Any:
                return ins.get_server_types_availability(zone=zone, page=page, per_page=size)

            types = dict(self._collect(types_page, "servers"))
            availability = dict(self._collect(availability_page, "servers"))
            per_zone[zone] = (types, {k: str(v.availability) for k, v in availability.items()})
        return build_catalog(per_zone, self.embedded_catalog())
