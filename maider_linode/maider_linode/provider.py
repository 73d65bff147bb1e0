"""The Linode provider class. Importing this module must not import linode_api4.

Every network method goes through the official SDK (linode_api4) in :mod:`maider_linode.api`,
imported inside the methods. One SDK request is one `_once` call (errors translated); `_retried`
adds maider's retry policy; listings are read one request per page (`api.read_all`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

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
    SelfDestructUnavailable,
    VMInstance,
    VMType,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic_settings import BaseSettings

    from maider_linode.settings import LinodeSettings

T = TypeVar("T")

#: The Metadata service's limit on decoded user data (API spec, metadata.user_data).
MAX_USER_DATA_BYTES = 65535
#: The narrowest scope that can delete a Linode (the spec's OAuth scope of DELETE
#: /linode/instances/{id}). Tokens cannot be limited to one Linode: this one can also read,
#: change, create and delete every other Linode on the account until it expires.
WATCHDOG_SCOPES = "linodes:read_write"


class LinodeProvider(Provider):
    id: ClassVar[str] = "linode"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "Linode"
    catalog_module: ClassVar[str] = "maider_linode.catalog"
    settings_model: ClassVar[str] = "maider_linode.settings:LinodeSettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = ("LINODE_TOKEN",)
    credential_fields: ClassVar[tuple[str, ...]] = ("token",)
    credentials_help: ClassVar[str] = (
        "set LINODE_TOKEN to a personal access token (cloud.linode.com → API Tokens) with read/write on "
        "Linodes, Firewalls and Account SSH keys"
    )
    currency: ClassVar[str] = "USD"
    #: Billed per started hour (Linode's hourly billing, capped monthly; the cap is ignored here).
    billing: ClassVar[Billing] = Billing(granularity_seconds=3600)

    #: A powered-off Linode is billed like a running one until it is deleted (shared notes §4.1;
    #: Linode's billing docs: "Linodes are billed whether they are powered on or off").
    poweroff_stops_billing: ClassVar[bool] = False

    def __init__(self, settings: BaseSettings | None = None) -> None:
        super().__init__(settings)
        self._client: Any = None  # built on first use: constructing it imports the SDK

    # -- no network ------------------------------------------------------------------------

    @property
    def _settings(self) -> LinodeSettings:
        return cast("LinodeSettings", self.settings)

    def _token(self) -> str | None:
        token = getattr(self.settings, "token", None)
        value = token.get_secret_value().strip() if token is not None else ""
        return value or None

    def has_credentials(self) -> bool:
        return self._token() is not None

    def default_image(self, vm_type: VMType) -> str:
        # Linode has no GPU image: Ubuntu LTS, NVIDIA driver and container toolkit come via cloud-init.
        return str(getattr(self.settings, "image", "linode/ubuntu24.04"))

    def image_has_gpu_stack(self, vm_type: VMType) -> bool:
        # Plain Ubuntu: cloud-init installs the driver, Docker and the container toolkit.
        return False

    def _image_for(self, spec: InstanceSpec) -> str:
        if spec.image:
            return spec.image
        # The embedded catalog, not self.catalog(): that could start a live refresh mid-create.
        vm_type = self.embedded_catalog().types.get(spec.type_id)
        return self.default_image(vm_type) if vm_type is not None else self._settings.image

    # -- plumbing --------------------------------------------------------------------------

    def _sdk(self) -> Any:
        if self._client is None:
            token = self._token()
            if token is None:
                raise AuthError(f"no Linode API token: {self.credentials_help}", provider=self.id)
            from maider_linode import api
            from maider_linode.settings import DEFAULT_API_URL

            s = self._settings
            base_url = (s.api_url or DEFAULT_API_URL).rstrip("/")  # the SDK appends "/linode/..."
            self._client = api.make_client(token, base_url, s.request_timeout, s.page_size)
        return self._client

    def _once(self, fn: Callable[[Any], T]) -> T:
        """One SDK request (or a few lazy page reads) with its errors translated; no retry."""
        from maider_linode import api

        client = self._sdk()
        try:
            return fn(client)
        except Exception as exc:
            if not api.is_sdk_error(exc):
                raise
            # `from None`: the SDK's exception holds the request, and with it the token header.
            raise api.translate(
                exc, secrets=[self._token()], credentials_help=self.credentials_help
            ) from None

    def _retried(self, fn: Callable[[Any], T]) -> T:
        from maider.retry import call

        return call(lambda: self._once(fn), self._settings.retry_policy())

    def _list(self, first_page: Callable[[Any], Any], *, retry: bool = True) -> list[Any]:
        from maider_linode import api

        return api.read_all(first_page, self._retried if retry else self._once)

    def _create_once(self, create: Callable[[Any], T], find: Callable[[], T | None]) -> T:
        """Create something, retrying transient failures, without ever creating it twice.

        Before every retry, `find` looks for what the failed attempt may have created (its
        answer lost in transit). maider.retry.create_once does this for instances; this is the
        same for SSH keys and firewalls, whose labels must be unique on Linode anyway.
        """
        from maider.retry import call

        tried = False

        def attempt() -> T:
            nonlocal tried
            if tried:
                existing = find()
                if existing is not None:
                    return existing
            tried = True
            return self._once(create)

        return call(attempt, self._settings.retry_policy())

    # -- credentials -----------------------------------------------------------------------

    def check_credentials(self) -> CredentialCheck:
        if not self.has_credentials():
            return CredentialCheck(False, f"no token: {self.credentials_help}")
        from linode_api4 import Instance

        try:
            # One page of maider's own Linodes: proves the token and its Linodes read scope.
            self._retried(lambda c: c.linode.instances(Instance.tags == "maider"))
        except AuthError as exc:
            return CredentialCheck(False, str(exc))
        except ProviderError as exc:
            return CredentialCheck(False, f"could not reach the Linode API to check the token: {exc}")
        return CredentialCheck(True)

    # -- SSH keys --------------------------------------------------------------------------

    def ensure_ssh_key(self, public_key: str, label: str) -> str:
        from maider.retry import call
        from maider.sshkeys import same_key

        key = _sendable_key(public_key)

        def find() -> str | None:
            for k in self._list(lambda c: c.profile.ssh_keys(), retry=False):
                if same_key(str(k.ssh_key or ""), key):
                    return str(k.id)
            return None

        existing = call(find, self._settings.retry_policy())
        if existing is not None:
            return existing
        return self._create_once(lambda c: str(c.profile.ssh_key_upload(key, label[:64]).id), find)

    # -- firewalls -------------------------------------------------------------------------

    def ensure_firewall(self, name: str, allowed_cidrs: list[str], tags: tuple[str, ...]) -> str:
        from linode_api4 import Firewall

        from maider.retry import call
        from maider_linode import api

        rules = api.ssh_rules(allowed_cidrs)

        def find() -> Any:
            listed = self._list(lambda c: c.networking.firewalls(Firewall.label == name), retry=False)
            same = [f for f in listed if f.label == name]  # labels are unique; checked, not assumed
            return min(same, key=lambda f: int(f.id)) if same else None

        existing = call(find, self._settings.retry_policy())
        if existing is None:
            created = self._create_once(
                lambda c: c.networking.firewall_create(name, rules, tags=list(tags)), find
            )
            return str(created.id)
        if not api.rules_match(api.plain(existing.rules) or {}, rules):
            # Someone (or an older maider) changed it, or the user's address moved: fix it in place.
            self._retried(lambda c: existing.update_rules(rules))
        return str(existing.id)

    # -- instances -------------------------------------------------------------------------

    def create_instance(self, spec: InstanceSpec) -> VMInstance:
        from maider.retry import create_once
        from maider_linode import api

        user_data = spec.user_data.encode()
        if len(user_data) > MAX_USER_DATA_BYTES:
            raise ProviderError(
                f"user data is {len(user_data)} bytes; Linode's Metadata service takes at most "
                f"{MAX_USER_DATA_BYTES}",
                provider=self.id,
            )
        keys = self._authorized_keys(spec)
        self._check_region_has_metadata(spec.region)
        image = self._image_for(spec)
        options: dict[str, Any] = {
            "image": image,
            "label": spec.name,
            "tags": list(spec.tags),
            "authorized_keys": keys,
            "booted": True,
        }
        if spec.firewall_id:
            if not str(spec.firewall_id).isdigit():
                raise ProviderError(f"not a Linode firewall id: {spec.firewall_id!r}", provider=self.id)
            options["firewall"] = int(spec.firewall_id)

        def create() -> VMInstance:
            def send(c: Any) -> VMInstance:
                # {"user_data": base64}: the Metadata service hands it to cloud-init on first boot.
                metadata = c.linode.build_instance_metadata(user_data=spec.user_data)
                return api.to_vm(
                    c.linode.instance_create(spec.type_id, spec.region, metadata=metadata, **options)
                )

            return self._once(send)

        def find_existing() -> VMInstance | None:
            found = self._instances_tagged(spec.session_tag, retry=False)
            return found[0] if found else None

        return create_once(create, find_existing, self._settings.retry_policy())

    def _check_region_has_metadata(self, region: str) -> None:
        """User data reaches a Linode only through the Metadata service, which not every region has."""
        from linode_api4 import Region

        try:
            caps = self._retried(lambda c: list(c.load(Region, region).capabilities or ()))
        except NotFound:
            raise ProviderError(f"Linode has no region {region!r}", provider=self.id, status=404) from None
        if "Metadata" not in caps:
            raise ProviderError(
                f"Linode region {region} has no Metadata service, so maider cannot pass the VM its "
                "cloud-init setup; choose another region",
                provider=self.id,
            )

    def _authorized_keys(self, spec: InstanceSpec) -> list[str]:
        if spec.ssh_public_key.strip():
            return [_sendable_key(spec.ssh_public_key)]
        if spec.ssh_key_id:
            # Linode's create takes key bodies, not key ids: find the uploaded key's body.
            for k in self._list(lambda c: c.profile.ssh_keys()):
                if str(k.id) == str(spec.ssh_key_id):
                    return [str(k.ssh_key)]
            raise ProviderError(f"Linode has no SSH key with id {spec.ssh_key_id}", provider=self.id)
        raise ProviderError("no SSH public key to install on the Linode", provider=self.id)

    def get_instance(self, instance_id: str) -> VMInstance:
        from linode_api4 import Instance

        from maider_linode import api

        number = _linode_id(instance_id)
        if number is None:  # cannot name a Linode: no need to ask
            raise NotFound(f"Linode {instance_id!r} not found", provider=self.id, status=404)
        return self._retried(lambda c: api.to_vm(c.load(Instance, number)))

    def list_instances(self, tag: str) -> list[VMInstance]:
        return self._instances_tagged(tag, retry=True)

    def _instances_tagged(self, tag: str, *, retry: bool) -> list[VMInstance]:
        from linode_api4 import Instance

        from maider_linode import api

        # X-Filter {"tags": tag} asks for Linodes whose tag list holds `tag`; checked again
        # here because the filter is the server's business and a near-miss would be a wrong VM.
        found = self._list(lambda c: c.linode.instances(Instance.tags == tag), retry=retry)
        return [vm for vm in (api.to_vm(i) for i in found) if tag in vm.tags]

    def delete_instance(self, instance_id: str) -> None:
        from linode_api4 import Instance

        number = _linode_id(instance_id)
        if number is None:
            return  # no Linode can have this id, so there is nothing to delete
        try:
            # Instance(client, id) is not loaded: .delete() is the one DELETE request.
            deleted = self._retried(lambda c: Instance(c, number).delete())
        except NotFound:
            return  # already gone (also after a retried DELETE whose first answer was lost)
        if deleted is False:  # the SDK's reading of a 200 answer that carries an "error"
            raise ProviderError(f"Linode did not delete {instance_id}", provider=self.id)

    # -- the watchdog's credential ---------------------------------------------------------

    def _api_base(self) -> str:
        from maider_linode.settings import DEFAULT_API_URL

        return (self._settings.api_url or DEFAULT_API_URL).rstrip("/")

    def self_destruct_plan(self) -> str:
        return "a Linode token minted for the session (linodes:read_write only, expiring, revoked at `down`)"

    def self_destruct(self, instance: VMInstance, *, valid_for_s: float, label: str) -> SelfDestruct:
        """Mint a personal access token with only ``linodes:read_write`` that expires after
        ``valid_for_s``; the VM deletes itself with ``DELETE /linode/instances/{id}``."""
        from linode_api4 import PersonalAccessToken

        number = _linode_id(instance.id)
        if number is None:
            raise ProviderError(f"not a Linode id: {instance.id!r}", provider=self.id)
        # Whole seconds, naive UTC: the form the API writes its dates in (and the SDK sends).
        expiry = dt.datetime.fromtimestamp(int(self.wall_time() + valid_for_s), tz=dt.timezone.utc)
        token_label = label[:100]

        def revoke_lost() -> None:
            # A create whose answer was lost made a token nobody can read (the full token is
            # shown once): revoke it before asking again, rather than leave it valid.
            for t in self._list(lambda c: c.profile.tokens(PersonalAccessToken.label == token_label)):
                if t.label == token_label:
                    self.revoke_self_destruct(str(t.id))

        def find() -> None:
            revoke_lost()
            return None

        try:
            minted = self._create_once(
                lambda c: c.profile.token_create(
                    label=token_label, expiry=expiry.replace(tzinfo=None), scopes=WATCHDOG_SCOPES
                ),
                find,
            )
        except AuthError as exc:
            raise SelfDestructUnavailable(
                "the Linode API token may not create the watchdog's token (creating tokens needs "
                f"the Account read/write scope; Linode said: {exc.status} {_reason(exc)})",
                provider=self.id,
                status=exc.status,
            ) from None
        secret = str(minted.token or "")
        if not secret:
            raise SelfDestructUnavailable("Linode minted a token but did not return it", provider=self.id)
        call = HTTPCall(
            method="DELETE",
            url=f"{self._api_base()}/linode/instances/{number}",
            headers={"Authorization": f"Bearer {secret}"},
        )
        return SelfDestruct(
            calls=(call,),
            credential=(
                f"a Linode personal access token with scope {WATCHDOG_SCOPES} that expires "
                f"{expiry:%Y-%m-%d %H:%M} UTC; it can also read, change, create and delete every "
                "other Linode on the account until then"
            ),
            secrets=(secret,),
            expires_at=expiry,
            revoke_handle=str(minted.id),
        )

    def revoke_self_destruct(self, handle: str) -> None:
        from linode_api4 import PersonalAccessToken

        if not str(handle).isdigit():
            return  # not a token id maider made: nothing to revoke
        try:
            # Not loaded: .delete() is the one DELETE /profile/tokens/{id} request.
            self._retried(lambda c: PersonalAccessToken(c, int(handle)).delete())
        except NotFound:
            return  # revoked already (or expired and purged)

    # -- catalog ---------------------------------------------------------------------------

    def fetch_catalog(self) -> Catalog:
        from linode_api4 import Type

        from maider_linode import api

        regions = self._list(lambda c: c.regions())
        availability = self._list(lambda c: c.regions.availability())
        types = self._list(lambda c: c.linode.types(Type.type_class == "gpu"))
        return api.build_catalog(regions, availability, types, self.embedded_catalog(), dt.date.today())


def _sendable_key(public_key: str) -> str:
    """`public_key`, checked: linode_api4 reads any string that is not a key of a type it knows as
    a *file path* and sends that file's content, so nothing else may reach it."""
    from linode_api4.common import SSH_KEY_TYPES

    from maider.sshkeys import parse_public_key

    key_type, _, _ = parse_public_key(public_key)  # a ConfigError (one line) if malformed
    if key_type not in SSH_KEY_TYPES:
        raise ProviderError(
            f"linode_api4 cannot send {key_type} keys; use an ed25519, RSA or ECDSA key",
            provider=LinodeProvider.id,
        )
    return public_key.strip()


def _reason(exc: ProviderError) -> str:
    """The vendor's reason inside a translated message (it sits in the first parentheses)."""
    text = str(exc)
    start = text.find("(")
    end = text.find("):", start)
    return text[start + 1 : end] if 0 <= start < end else text


def _linode_id(instance_id: str) -> int | None:
    text = str(instance_id).strip()
    return int(text) if text.isdigit() else None
