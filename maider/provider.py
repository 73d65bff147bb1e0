"""The provider contract: what a cloud plugin implements and the data it exchanges with the core.

Everything here is plain dataclasses, enums and one abstract base class so that importing it
costs next to nothing: provider packages import this module at load time, and `maider --help`
and `maider providers` must stay fast.

A provider package registers a subclass of :class:`Provider` in the entry-point group
``maider.providers`` (see ``docs/ADDING-PROVIDERS.md``). The class is loaded without touching
the network or the vendor SDK; the SDK is imported inside the methods that talk to the API.
"""

from __future__ import annotations

import datetime as dt
import enum
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pydantic_settings import BaseSettings

#: Version of this contract. A provider declares the version it implements in
#: ``Provider.contract_version``; the core skips (with a warning) any provider whose
#: version it does not support. Bump it only for incompatible changes.
CONTRACT_VERSION = 1
SUPPORTED_CONTRACT_VERSIONS = frozenset({1})


# --------------------------------------------------------------------------------------------
# Hardware and catalog models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUModel:
    """One GPU chip as sold by a cloud (the same chip may appear in many VM types)."""

    name: str  # marketing name, e.g. "Quadro RTX 6000"
    vram_gb: float  # memory per GPU, in GB as the vendor states it
    architecture: str  # e.g. "Turing", "Ada Lovelace", "Hopper", "CDNA3"
    vendor: str = "NVIDIA"
    #: CUDA compute capability (major, minor); None for non-NVIDIA GPUs.
    compute_capability: tuple[int, int] | None = None

    @property
    def supports_bfloat16(self) -> bool:
        if self.vendor == "AMD":  # CDNA2+ (MI200/MI300) all do bf16
            return True
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    @property
    def supports_fp8(self) -> bool:
        if self.vendor == "AMD":
            return self.architecture.upper().startswith("CDNA3") or self.architecture.upper().startswith(
                "CDNA4"
            )
        return self.compute_capability is not None and self.compute_capability >= (8, 9)

    @property
    def compute_capability_str(self) -> str:
        if self.compute_capability is None:
            return "-"
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True, order=True)
class Price:
    """An hourly price with its currency (Scaleway bills in EUR, the others in USD)."""

    amount: float
    currency: str = "USD"

    def __str__(self) -> str:
        symbol = {"USD": "$", "EUR": "€"}.get(self.currency)
        text = f"{self.amount:.4f}".rstrip("0")
        if len(text.split(".")[1]) < 2:
            text = f"{self.amount:.2f}"
        return f"{symbol}{text}" if symbol else f"{text} {self.currency}"


@dataclass(frozen=True)
class Billing:
    """How a vendor turns run time into money, for cost estimates (`list`) and `down`'s summary.

    Run time is rounded up to whole ``granularity_seconds`` (per started hour, minute…), after
    raising it to ``minimum_seconds``. The default is per second with no minimum.
    """

    granularity_seconds: int = 1
    minimum_seconds: int = 0

    def billed_seconds(self, seconds: float) -> float:
        if seconds <= 0:
            return 0.0
        seconds = max(seconds, float(self.minimum_seconds))
        unit = self.granularity_seconds
        return float(math.ceil(seconds / unit) * unit) if unit > 1 else seconds

    def cost(self, hourly: Price, seconds: float) -> float:
        """What ``seconds`` of run time cost at ``hourly`` (in its currency)."""
        return self.billed_seconds(seconds) / 3600.0 * hourly.amount

    def describe(self) -> str:
        """e.g. "per started hour", "per second, 60 s minimum"."""
        unit = {1: "per second", 60: "per started minute", 3600: "per started hour"}.get(
            self.granularity_seconds, f"per started {self.granularity_seconds} s"
        )
        return f"{unit}, {self.minimum_seconds} s minimum" if self.minimum_seconds else unit


@dataclass(frozen=True)
class Region:
    id: str
    label: str  # city or data-centre name, e.g. "Chicago, IL"
    country: str  # ISO 3166 alpha-2, upper case
    provider: str = ""


@dataclass(frozen=True)
class VMType:
    """A GPU VM type (Linode plan, DigitalOcean size, Scaleway commercial type)."""

    id: str
    label: str
    provider: str
    gpu: GPUModel
    gpu_count: int
    vcpus: int
    ram_gb: float
    hourly_price: Price
    #: Regions where this type is sold. Availability is per type, never one global set.
    regions: tuple[str, ...]
    disk_gb: float | None = None
    #: Per-region prices where they differ from ``hourly_price`` (Linode has these).
    region_prices: Mapping[str, Price] = field(default_factory=dict)
    notes: str = ""

    @property
    def total_vram_gb(self) -> float:
        return self.gpu.vram_gb * self.gpu_count

    def price_in(self, region: str | None) -> Price:
        if region is not None and region in self.region_prices:
            return self.region_prices[region]
        return self.hourly_price

    def sold_in(self, region: str) -> bool:
        return region in self.regions


@dataclass(frozen=True)
class Catalog:
    """A provider's GPU catalog: embedded (dated) or refreshed from the API."""

    provider: str
    regions: Mapping[str, Region]
    types: Mapping[str, VMType]
    #: The day the data was true (embedded catalogs) or fetched (live).
    as_of: dt.date
    source: str  # "embedded" or "live"
    note: str = ""

    @property
    def gpu_regions(self) -> tuple[str, ...]:
        return tuple(sorted({r for t in self.types.values() for r in t.regions}))


def catalog_from_module(provider_id: str, module: ModuleType) -> Catalog:
    """Build a Catalog from a provider's catalog module (GPU_REGIONS, GPU_TYPES, REGION_METADATA)."""
    types: Mapping[str, VMType] = module.GPU_TYPES
    metadata: Mapping[str, Region] = module.REGION_METADATA
    regions = {rid: metadata[rid] for rid in module.GPU_REGIONS}
    return Catalog(
        provider=provider_id,
        regions=regions,
        types=types,
        as_of=module.CATALOG_DATE,
        source="embedded",
        note=getattr(module, "CATALOG_SOURCE", ""),
    )


# --------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------


class InstanceStatus(str, enum.Enum):
    """The vendor's status, normalized. Lifecycle code only ever looks at these values."""

    PROVISIONING = "provisioning"  # accepted, not yet booting (Linode provisioning, DO new, Scaleway stopped-before-poweron)
    BOOTING = "booting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"  # still billed on Linode and DigitalOcean
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    UNKNOWN = "unknown"

    @property
    def is_billed(self) -> bool:
        return self is not InstanceStatus.DELETED


@dataclass(frozen=True)
class VMInstance:
    id: str
    provider: str
    name: str
    status: InstanceStatus
    region: str
    type_id: str
    public_ipv4: str | None = None
    ssh_port: int = 22
    tags: tuple[str, ...] = ()
    created_at: dt.datetime | None = None
    raw_status: str = ""  # the vendor's own word, for messages


@dataclass(frozen=True)
class InstanceSpec:
    """What the lifecycle asks a provider to create."""

    name: str
    region: str
    type_id: str
    user_data: str  # a #cloud-config document; never contains secrets
    tags: tuple[str, ...]  # always contains "maider" and session_tag
    session_tag: str  # unique per session ("maider-session-<id>"): finds the VM if a create answer is lost
    ssh_public_key: str
    ssh_key_id: str | None = None
    firewall_id: str | None = None
    image: str | None = None  # None: the provider's default GPU image for type_id


@dataclass(frozen=True)
class HTTPCall:
    """One HTTP request the VM's watchdog makes to the vendor API to delete its own VM.

    ``headers`` carry the narrow credential (that is why a :class:`SelfDestruct` only travels
    over SSH into a 0600 file, never into user-data or the session record). ``ok_statuses``:
    the answers that count as done (a 404 means the VM is already gone).
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # holds the credential
    json_body: Mapping[str, Any] | None = None
    ok_statuses: tuple[int, ...] = (200, 201, 202, 204, 404)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
            "json": dict(self.json_body) if self.json_body is not None else None,
            "ok_statuses": list(self.ok_statuses),
        }


@dataclass(frozen=True)
class SelfDestruct:
    """How a VM deletes itself when the on-VM watchdog fires (:meth:`Provider.self_destruct`).

    ``calls`` run in order from the VM. ``credential`` says in one line what the credential is
    and what else it could do (shown by ``up``); ``secrets`` are the values to scrub from any
    output; ``revoke_handle`` is a non-secret id :meth:`Provider.revoke_self_destruct` needs to
    revoke the credential at ``down`` (None: nothing to revoke).
    """

    calls: tuple[HTTPCall, ...]
    credential: str
    secrets: tuple[str, ...] = field(default=(), repr=False)
    expires_at: dt.datetime | None = None
    revoke_handle: str | None = None


@dataclass(frozen=True)
class CredentialCheck:
    ok: bool
    reason: str = ""


# --------------------------------------------------------------------------------------------
# Errors: typed so the lifecycle can act on them. Messages never contain tokens.
# --------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """A provider failed; the message is the vendor's, scrubbed of secrets."""

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class AuthError(ProviderError):
    """Credentials missing or rejected. The message says which variable to set."""


class CapacityError(ProviderError):
    """The vendor has no capacity for this type in this region: try another region or type."""


class NotFound(ProviderError):
    """The resource does not exist (for deletes: it is gone)."""


class SelfDestructUnavailable(ProviderError):
    """:meth:`Provider.self_destruct` could not set up the watchdog's credential.

    The message (one line, scrubbed) says which permission or setting is missing. The caller
    falls back to the watchdog powering the VM off, which the laptop side then deletes.
    """


def scrub(text: str, secrets: list[str | None]) -> str:
    """`text` with every secret replaced, for messages built from vendor answers or exceptions."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class ProviderLoadError(Exception):
    """A provider could not be loaded (import error, incompatible contract)."""


# --------------------------------------------------------------------------------------------
# The provider base class
# --------------------------------------------------------------------------------------------


class Provider(ABC):
    """Base class for cloud providers.

    Class attributes describe the provider without any I/O. ``catalog_module`` names a module
    holding ``GPU_REGIONS``, ``GPU_TYPES``, ``REGION_METADATA`` and ``CATALOG_DATE``; it is
    imported only when catalog data is needed. ``settings_model`` names a pydantic-settings
    class (``"package.module:Class"``) holding the provider's own settings (token, API URL...).
    """

    id: ClassVar[str]
    display_name: ClassVar[str]
    #: Required: the contract version this class implements (normally `maider.provider.CONTRACT_VERSION`).
    contract_version: ClassVar[int]
    catalog_module: ClassVar[str]
    settings_model: ClassVar[str]
    #: Environment variables that, when all set, provide credentials (shown by `maider providers`).
    credential_env_vars: ClassVar[tuple[str, ...]] = ()
    #: Settings fields the wizard asks for (SecretStr fields are read without echo).
    credential_fields: ClassVar[tuple[str, ...]] = ()
    #: Where a user gets credentials (shown in AuthError messages and the wizard).
    credentials_help: ClassVar[str] = ""
    currency: ClassVar[str] = "USD"
    #: How the vendor bills run time (granularity, minimum): used for cost estimates only.
    billing: ClassVar[Billing] = Billing()

    def __init__(self, settings: BaseSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.load_settings()

    # -- catalog (embedded data; no network) -------------------------------------------------

    @classmethod
    def embedded_catalog(cls) -> Catalog:
        return catalog_from_module(cls.id, importlib.import_module(cls.catalog_module))

    @classmethod
    def settings_class(cls) -> type[BaseSettings]:
        module_name, _, attr = cls.settings_model.partition(":")
        settings_cls: type[BaseSettings] = getattr(importlib.import_module(module_name), attr)
        return settings_cls

    @classmethod
    def load_settings(cls, **overrides: Any) -> BaseSettings:
        """The provider's settings from flags (overrides), environment, .env and config file."""
        from maider.config import load_provider_settings

        return load_provider_settings(cls, overrides)

    def catalog(self) -> Catalog:
        """The catalog the core plans with: live, cached or embedded (see maider.catalog)."""
        from maider.catalog import catalogs

        return catalogs([self.id])[self.id]

    def fetch_catalog(self) -> Catalog | None:
        """Regions, GPU types, prices and availability read from the API (network).

        None means the provider has no live catalog; the core then uses the embedded one.
        """
        return None

    def list_regions(self) -> list[Region]:
        return list(self.catalog().regions.values())

    def list_vm_types(self, region: str | None = None) -> list[VMType]:
        types = self.catalog().types.values()
        return [t for t in types if region is None or t.sold_in(region)]

    def get_vm_type(self, type_id: str) -> VMType:
        try:
            return self.catalog().types[type_id]
        except KeyError:
            raise NotFound(f"{self.display_name} has no GPU type {type_id!r}", provider=self.id) from None

    def get_gpu_count(self, type_id: str) -> int:
        return self.get_vm_type(type_id).gpu_count

    def get_hourly_cost(self, type_id: str, region: str | None = None) -> Price:
        return self.get_vm_type(type_id).price_in(region)

    def default_image(self, vm_type: VMType) -> str:
        """The image new VMs of `vm_type` boot (a GPU image with drivers where the vendor has one)."""
        return "the provider's default image"

    def has_credentials(self) -> bool:
        """Whether credentials are configured (no network). `check_credentials` verifies them."""
        return False

    def image_has_gpu_stack(self, vm_type: VMType) -> bool:
        """Whether `default_image(vm_type)` ships the GPU driver and container runtime.

        False makes the VM's cloud-init install them (NVIDIA driver, Docker, container toolkit).
        """
        return True

    # -- network-facing methods ------------------------------------------------------------

    @abstractmethod
    def check_credentials(self) -> CredentialCheck:
        """Verify the credentials with one cheap API call: ok, or the reason they do not work."""

    @abstractmethod
    def ensure_ssh_key(self, public_key: str, label: str) -> str:
        """Upload `public_key` unless the account already has it (matched by fingerprint); return its id."""

    @abstractmethod
    def ensure_firewall(self, name: str, allowed_cidrs: list[str], tags: tuple[str, ...]) -> str:
        """Create or reuse a firewall allowing inbound SSH (22/tcp) from `allowed_cidrs` only; return its id."""

    @abstractmethod
    def create_instance(self, spec: InstanceSpec) -> VMInstance:
        """Create (and boot) an instance tagged with ``spec.tags``. Raises CapacityError when sold out."""

    @abstractmethod
    def get_instance(self, instance_id: str) -> VMInstance:
        """The instance with its normalized status and public IPv4. Raises NotFound once deleted."""

    def get_instance_status(self, instance_id: str) -> InstanceStatus:
        try:
            return self.get_instance(instance_id).status
        except NotFound:
            return InstanceStatus.DELETED

    @abstractmethod
    def list_instances(self, tag: str) -> list[VMInstance]:
        """Every instance carrying `tag`, across all regions, one API call per page."""

    @abstractmethod
    def delete_instance(self, instance_id: str) -> None:
        """Delete the instance. Idempotent: the vendor's 'not found' means it is gone."""

    # -- the on-VM watchdog's credential (optional capability; contract v1 defaults) ----------

    #: Whether powering a VM off (from inside, as the watchdog does without a credential) stops
    #: its compute billing on this provider.
    poweroff_stops_billing: ClassVar[bool] = False

    def self_destruct(self, instance: VMInstance, *, valid_for_s: float, label: str) -> SelfDestruct | None:
        """The calls (and the narrowest credential the vendor allows) for ``instance`` to delete itself.

        Mint a scoped credential that expires after ``valid_for_s`` where the vendor's API can,
        else use one the user configured for this purpose; never the user's main credential.
        None: no such credential exists, and the watchdog powers the VM off instead (the laptop
        side then deletes it). Called once per session, after the VM runs. Raises
        :class:`SelfDestructUnavailable` when the credential cannot be minted (say, the user's
        token may not create tokens); the caller then falls back to power-off.
        """
        return None

    def self_destruct_plan(self) -> str | None:
        """What :meth:`self_destruct` would use, in one phrase, without any I/O (``up --dry-run``
        shows it); None when it would return None (the VM then powers off instead)."""
        return None

    def revoke_self_destruct(self, handle: str) -> None:
        """Revoke the credential :meth:`self_destruct` minted (its ``revoke_handle``). Idempotent."""
        return None

    def wall_time(self) -> float:
        """Seconds since the epoch, the base of credential expiry times.

        A method so that a test can put its simulator's clock here (the vendor's clock is the
        one that decides when a credential has expired).
        """
        import time

        return time.time()


class CatalogOnlyProvider(Provider):
    """A provider that can plan (catalog, prices, fit) but not yet create VMs.

    Useful while a plugin's API layer is being written: planning commands work, and every
    network-facing call fails with a clear ProviderError instead of an AttributeError.
    """

    def _unsupported(self, what: str) -> ProviderError:
        return ProviderError(
            f"{self.display_name}: {what} is not supported by this version of the provider plugin "
            "(planning commands such as `maider up --dry-run` work)",
            provider=self.id,
        )

    def check_credentials(self) -> CredentialCheck:
        return CredentialCheck(
            ok=self.has_credentials(), reason="" if self.has_credentials() else "not configured"
        )

    def ensure_ssh_key(self, public_key: str, label: str) -> str:
        raise self._unsupported("uploading SSH keys")

    def ensure_firewall(self, name: str, allowed_cidrs: list[str], tags: tuple[str, ...]) -> str:
        raise self._unsupported("creating firewalls")

    def create_instance(self, spec: InstanceSpec) -> VMInstance:
        raise self._unsupported("creating VMs")

    def get_instance(self, instance_id: str) -> VMInstance:
        raise self._unsupported("reading VMs")

    def list_instances(self, tag: str) -> list[VMInstance]:
        raise self._unsupported("listing VMs")

    def delete_instance(self, instance_id: str) -> None:
        raise self._unsupported("deleting VMs")
