"""The DigitalOcean provider class. Importing this module must not import python-digitalocean.

The network methods use python-digitalocean through ``maider_digitalocean.api`` (imported inside
them), which pins every request to the configured ``api_url`` and types every failure; JSON
shapes are mapped in ``maider_digitalocean.mapping``. Design choices, briefly:

- GPU droplets are hidden from the default droplet list (``type=gpus`` shows them and cannot be
  combined with ``tag_name``), so ``list_instances`` reads the GPU list and filters tags here,
  plus the ``tag_name`` list for any non-GPU droplet carrying the tag.
- The firewall is attached by droplet id (``POST /v2/firewalls/{id}/droplets``) right after the
  create, not through firewall tags: the API accepts only tags that already exist ("Tag names
  must exist in order to be referenced"), and maider's tags do not exist before its first
  droplet. A droplet whose firewall cannot be attached is deleted again.
- SSH keys are passed to the create as ids: given a public key string, the SDK would look it up
  through an ``SSHKey`` it builds itself, which ignores the configured end point.
"""

from __future__ import annotations

import datetime as dt
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
    NotFound,
    Provider,
    ProviderError,
    SelfDestruct,
    VMInstance,
    VMType,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from maider_digitalocean.api import Client
    from maider_digitalocean.settings import DigitalOceanSettings

T = TypeVar("T")


class DigitalOceanProvider(Provider):
    id: ClassVar[str] = "digitalocean"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "DigitalOcean"
    catalog_module: ClassVar[str] = "maider_digitalocean.catalog"
    settings_model: ClassVar[str] = "maider_digitalocean.settings:DigitalOceanSettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = ("DIGITALOCEAN_TOKEN",)
    credential_fields: ClassVar[tuple[str, ...]] = ("token",)
    credentials_help: ClassVar[str] = (
        "set DIGITALOCEAN_TOKEN to a personal access token (cloud.digitalocean.com → API) with droplet, "
        "firewall, ssh_key and tag scopes"
    )
    currency: ClassVar[str] = "USD"
    #: Billed per second, with a 60-second minimum (DigitalOcean's per-second billing).
    billing: ClassVar[Billing] = Billing(granularity_seconds=1, minimum_seconds=60)
    #: Items per list page (the API's maximum is 200; tests lower it to exercise pagination).
    page_size: int = 200
    #: Name given to SSH keys maider uploads when the caller has no better label.
    ssh_key_label: ClassVar[str] = "maider"

    #: A powered-off droplet is billed like a running one until it is destroyed (shared notes
    #: §4.2; DigitalOcean's pricing docs: "You are billed for powered-off Droplets").
    poweroff_stops_billing: ClassVar[bool] = False

    _client: Client | None = None

    def has_credentials(self) -> bool:
        return getattr(self.settings, "token", None) is not None

    def default_image(self, vm_type: VMType) -> str:
        # DigitalOcean's "AI/ML Ready" images ship the GPU drivers.
        if vm_type.gpu.vendor == "AMD":
            return "gpu-amd-base"
        return "gpu-h100x8-base" if vm_type.gpu_count >= 8 else "gpu-h100x1-base"

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def _settings(self) -> DigitalOceanSettings:
        return self.settings  # type: ignore[return-value]

    def _api(self) -> Client:
        """The SDK client, built on first use (no SDK import before a network call)."""
        token = self._settings.token
        if token is None or not token.get_secret_value():
            raise AuthError(f"DigitalOcean: no API token; {self.credentials_help}", provider=self.id)
        if self._client is None:
            from maider_digitalocean.api import Client

            self._client = Client(
                token=token.get_secret_value(),
                end_point=self._settings.end_point,
                timeout=self._settings.request_timeout,
                page_size=self.page_size,
                credentials_help=self.credentials_help,
            )
        return self._client

    def _call(self, fn: Callable[[Client], T]) -> T:
        """One SDK operation with maider's retries (429, 5xx, dropped connections, timeouts)."""
        from maider import retry

        client = self._api()
        return retry.call(lambda: client.run(lambda: fn(client)), self._settings.retry_policy())

    # -- credentials, keys, firewalls ----------------------------------------------------------

    def check_credentials(self) -> CredentialCheck:
        if not self.has_credentials():
            return CredentialCheck(False, f"not configured: {self.credentials_help}")
        from maider_digitalocean import api

        def load(client: Client) -> Any:
            account = client.make(api.Account)
            account.load()
            return account

        try:
            account = self._call(load)
        except AuthError as exc:
            return CredentialCheck(False, str(exc))
        except ProviderError as exc:
            return CredentialCheck(False, f"could not verify the token: {exc}")
        if getattr(account, "status", "active") == "locked":
            return CredentialCheck(False, f"DigitalOcean account is locked: {account.status_message}")
        return CredentialCheck(True)

    def ensure_ssh_key(self, public_key: str, label: str) -> str:
        from maider.sshkeys import fingerprint_md5, same_key
        from maider_digitalocean import api

        fingerprint = fingerprint_md5(public_key)  # DO names keys by the MD5 of the key blob

        def find(client: Client) -> str | None:
            for key in client.list("account/keys/", "ssh_keys"):
                if key.get("fingerprint") == fingerprint or same_key(
                    str(key.get("public_key", "")), public_key
                ):
                    return str(key["id"])
            return None

        def find_or_upload(client: Client) -> str:
            # Looked up again on every attempt: an upload whose answer was lost is found, not repeated.
            found = find(client)
            if found is not None:
                return found
            key = client.make(api.SSHKey, name=label or self.ssh_key_label, public_key=public_key.strip())
            key.create()
            return str(key.id)

        try:
            return self._call(find_or_upload)
        except ProviderError as exc:
            if exc.status != 422:
                raise
            # "SSH Key is already in use on your account": uploaded meanwhile (another maider?).
            found = self._call(find)
            if found is None:
                raise
            return found

    def ensure_firewall(self, name: str, allowed_cidrs: list[str], tags: tuple[str, ...]) -> str:
        """Inbound 22/tcp from ``allowed_cidrs`` only, all outbound; attached per droplet.

        ``tags`` are not given to DigitalOcean: a firewall tag there means "apply to every droplet
        with this tag" and must name an existing tag (see the module docstring).
        """
        from maider_digitalocean import api, mapping

        if not allowed_cidrs:
            raise ProviderError("DigitalOcean: a firewall needs at least one allowed CIDR", provider=self.id)
        inbound = mapping.inbound_rules(allowed_cidrs)
        outbound = mapping.outbound_rules()

        def ensure(client: Client) -> str:
            existing = [f for f in client.list("firewalls/", "firewalls") if f.get("name") == name]
            if existing:
                current = existing[0]
                if not mapping.rules_match(current, allowed_cidrs):
                    # PUT replaces the whole firewall: keep its droplets and tags, fix the rules.
                    fw = client.make(api.Firewall, id=current["id"])
                    fw.get_data(
                        f"firewalls/{current['id']}",
                        type="PUT",
                        params={
                            "name": name,
                            "inbound_rules": inbound,
                            "outbound_rules": outbound,
                            "droplet_ids": list(current.get("droplet_ids") or []),
                            "tags": list(current.get("tags") or []),
                        },
                    )
                return str(current["id"])
            fw = client.make(
                api.Firewall,
                name=name,
                inbound_rules=[
                    api.InboundRule(r["protocol"], r["ports"], api.Sources(**r["sources"])) for r in inbound
                ],
                outbound_rules=[
                    api.OutboundRule(r["protocol"], r["ports"], api.Destinations(**r["destinations"]))
                    for r in outbound
                ],
                droplet_ids=[],
                tags=[],
            )
            fw.create()
            return str(fw.id)

        # The lookup runs on every attempt, so a create whose answer was lost is reused, not repeated.
        return self._call(ensure)

    # -- instances -----------------------------------------------------------------------------

    def _image(self, spec: InstanceSpec) -> str:
        from maider_digitalocean import mapping

        if spec.image:
            return spec.image
        embedded = self.embedded_catalog().types
        guessed = mapping.image_for(spec.type_id, embedded)
        return guessed if guessed is not None else self.default_image(embedded[spec.type_id])

    def _list_tagged(self, client: Client, tag: str) -> list[VMInstance]:
        from maider_digitalocean import mapping

        # GPU droplets only appear with type=gpus (which excludes tag_name); any other droplet
        # with the tag comes from the tag_name list. Duplicates (if tag_name ever shows GPU
        # droplets too) collapse by id.
        found: dict[str, VMInstance] = {}
        # A 404 for tag_name can only mean the tag does not exist (yet): then no droplet has it.
        gpus = client.list("droplets/", "droplets", {"type": "gpus"})
        tagged = client.list("droplets/", "droplets", {"tag_name": tag}, missing_ok=True)
        for droplets in (gpus, tagged):
            for droplet in droplets:
                vm = mapping.vm_from_droplet(droplet)
                if tag in vm.tags:
                    found.setdefault(vm.id, vm)
        return sorted(found.values(), key=lambda vm: int(vm.id) if vm.id.isdigit() else 0)

    def create_instance(self, spec: InstanceSpec) -> VMInstance:
        from maider import retry
        from maider_digitalocean import api, mapping

        client = self._api()
        policy = self._settings.retry_policy()
        image = self._image(spec)
        key_id = spec.ssh_key_id
        if not (key_id and key_id.isdigit()):
            if not spec.ssh_public_key:
                raise ProviderError("DigitalOcean: no SSH key for the droplet", provider=self.id)
            key_id = self.ensure_ssh_key(spec.ssh_public_key, self.ssh_key_label)

        def create() -> VMInstance:
            droplet = client.make(
                api.Droplet,
                name=spec.name,
                region=spec.region,
                size_slug=spec.type_id,
                image=image,
                ssh_keys=[int(key_id)],
                user_data=spec.user_data,  # plain text in the create body; DO hands it to cloud-init
                tags=list(spec.tags),
                backups=False,
                ipv6=False,
                monitoring=False,
            )
            client.run(droplet.create)
            return mapping.vm_from_droplet(droplet._maider_data["droplet"])

        def find_existing() -> VMInstance | None:
            found = client.run(lambda: self._list_tagged(client, spec.session_tag))
            return found[0] if found else None

        vm = retry.create_once(create, find_existing, policy)
        if spec.firewall_id:
            self._attach_firewall(spec.firewall_id, vm)
        return vm

    def _attach_firewall(self, firewall_id: str, vm: VMInstance) -> None:
        from maider_digitalocean import api

        def attach(client: Client) -> None:
            # Idempotent on DO's side, so a retry after a lost answer is harmless.
            client.make(api.Firewall, id=firewall_id).add_droplets([int(vm.id)])

        try:
            self._call(attach)
        except ProviderError as exc:
            # Never leave a droplet running without its firewall.
            try:
                self.delete_instance(vm.id)
            except ProviderError as cleanup:
                raise ProviderError(
                    f"DigitalOcean: attaching firewall {firewall_id} to droplet {vm.id} failed ({exc}); "
                    f"deleting the droplet failed too ({cleanup}): delete it by hand",
                    provider=self.id,
                ) from None
            raise ProviderError(
                f"DigitalOcean: attaching firewall {firewall_id} to droplet {vm.id} failed ({exc}); "
                "the droplet was deleted",
                provider=self.id,
                status=exc.status,
            ) from None

    def get_instance(self, instance_id: str) -> VMInstance:
        from maider_digitalocean import api, mapping

        if not instance_id.isdigit():  # droplet ids are integers; nothing else can exist
            raise NotFound(f"DigitalOcean has no droplet {instance_id!r}", provider=self.id)

        def load(client: Client) -> VMInstance:
            droplet = client.make(api.Droplet, id=int(instance_id))
            droplet.load()
            return mapping.vm_from_droplet(droplet._maider_data["droplet"])

        return self._call(load)

    def list_instances(self, tag: str) -> list[VMInstance]:
        return self._call(lambda client: self._list_tagged(client, tag))

    def delete_instance(self, instance_id: str) -> None:
        from maider_digitalocean import api

        if not instance_id.isdigit():
            return  # not a droplet id: nothing by that name can exist

        def destroy(client: Client) -> None:
            client.make(api.Droplet, id=int(instance_id)).destroy()

        try:
            self._call(destroy)
        except NotFound:
            return  # DigitalOcean's 404: already gone (only this error means that)

    # -- the watchdog's credential -------------------------------------------------------------

    def self_destruct_plan(self) -> str | None:
        token = self._settings.watchdog_token
        if token is None or not token.get_secret_value().strip():
            return None
        return "your MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN (copied to the VM)"

    def self_destruct(self, instance: VMInstance, *, valid_for_s: float, label: str) -> SelfDestruct | None:
        """``DELETE /v2/droplets/{id}`` with the user's ``watchdog_token``; None without one.

        DigitalOcean's public API has no endpoint that creates tokens, so nothing is minted and
        nothing is revoked: the user made the token (custom scopes, own expiry) and owns it.
        ``valid_for_s`` and ``label`` do not apply.
        """
        from maider.errors import ConfigError

        token = self._settings.watchdog_token
        secret = token.get_secret_value().strip() if token is not None else ""
        if not secret:
            return None
        main = self._settings.token
        if main is not None and secret == main.get_secret_value().strip():  # also refused at load
            raise ConfigError(
                "MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN is the main API token, which must never be copied "
                "to the VM: set it to a token with only the droplet:read and droplet:delete scopes"
            )
        if not instance.id.isdigit():
            raise ProviderError(f"not a droplet id: {instance.id!r}", provider=self.id)
        call = HTTPCall(
            method="DELETE",
            url=f"{self._settings.end_point}droplets/{instance.id}",  # end_point ends in "/v2/"
            headers={"Authorization": f"Bearer {secret}"},
        )
        return SelfDestruct(
            calls=(call,),
            credential=(
                "your DigitalOcean watchdog token (MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN); with only the "
                "droplet:read and droplet:delete scopes it can also read and delete every other "
                "droplet on the account, until the expiry you gave it"
            ),
            secrets=(secret,),
        )

    # -- catalog ---------------------------------------------------------------------------------

    def fetch_catalog(self) -> Catalog | None:
        from maider_digitalocean import mapping

        sizes = self._call(lambda client: client.list("sizes/", "sizes"))
        regions = self._call(lambda client: client.list("regions/", "regions"))
        return mapping.catalog_from_api(sizes, regions, self.embedded_catalog(), dt.date.today())
