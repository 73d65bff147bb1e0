"""linode_api4 glue: the client, error translation, paging, and SDK objects → maider's types.

Only :mod:`maider_linode.provider` imports this module, and only inside its network methods:
importing linode_api4 (and requests) costs start-up time that `maider --help` must not pay.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import linode_api4  # noqa: TID253 - this module is itself imported lazily (see the docstring)
import requests
from requests.adapters import HTTPAdapter

from maider.provider import (
    AuthError,
    CapacityError,
    Catalog,
    GPUModel,
    InstanceStatus,
    NotFound,
    Price,
    ProviderError,
    Region,
    VMInstance,
    VMType,
    scrub,
)
from maider.retry import TransientError, parse_retry_after

PROVIDER_ID = "linode"

#: Run one SDK call against a client: the provider decides whether it is retried.
Runner = Callable[[Callable[[Any], Any]], Any]

# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request a timeout: linode_api4 passes none, so a hung API would block forever."""

    def __init__(self, timeout: float) -> None:
        # No urllib3-level retries either: maider.retry decides, and honours Retry-After itself.
        super().__init__(max_retries=0)
        self._timeout = timeout

    def send(self, request: Any, stream: bool = False, timeout: Any = None, *args: Any, **kwargs: Any) -> Any:
        return super().send(request, stream, self._timeout if timeout is None else timeout, *args, **kwargs)


def make_client(token: str, base_url: str, timeout: float, page_size: int) -> Any:
    from maider import __version__

    client = linode_api4.LinodeClient(
        token,
        base_url=base_url,
        user_agent=f"maider/{__version__}",
        page_size=page_size,
        retry=False,  # the SDK's own retries would multiply ours (and ignore our time budget)
    )
    # Replaces the SDK's adapters (mounted with its retry config) for both schemes.
    adapter = _TimeoutAdapter(timeout)
    client.session.mount("http://", adapter)
    client.session.mount("https://", adapter)
    return client


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

#: Linode's "sold out / not offered here" answers (a 403 today, per linode_api4-python PR #396;
#: matched on the text so a future 400 with the same reason is still a capacity error).
_CAPACITY_MARKERS = (
    "not currently available in the selected region",
    "is not available in this region",
    "not available in the selected region",
    "insufficient capacity",
    "out of stock",
    "sold out",
)


class ListChanged(ProviderError):
    """A paged listing changed (or came back short) between two pages: read it again."""


def is_sdk_error(exc: BaseException) -> bool:
    """Errors that come from the API or the wire (the rest are bugs and propagate as they are)."""
    if isinstance(
        exc, (linode_api4.ApiError, linode_api4.UnexpectedResponseError, requests.RequestException)
    ):
        return True
    # PaginatedList raises a bare RuntimeError when the totals move between pages.
    return type(exc) is RuntimeError and "has changed since creation" in str(exc)


def translate(exc: BaseException, *, secrets: list[str | None], credentials_help: str) -> ProviderError:
    """The typed maider error for an SDK exception; every message is one scrubbed line."""

    def clean(text: str) -> str:
        return " ".join(scrub(text, secrets).split())

    if isinstance(exc, linode_api4.ApiError):
        status = int(exc.status)
        reasons = "; ".join(str(e) for e in exc.errors) or str(exc)
        text = clean(f"Linode API: {exc}")
        if any(marker in reasons.lower() for marker in _CAPACITY_MARKERS):
            return CapacityError(text, provider=PROVIDER_ID, status=status)
        if status == 401:
            return AuthError(
                clean(f"Linode rejected the API token ({reasons}): {credentials_help}"),
                provider=PROVIDER_ID,
                status=status,
            )
        if status == 403:
            return AuthError(
                clean(f"the Linode API token may not do this ({reasons}): {credentials_help}"),
                provider=PROVIDER_ID,
                status=status,
            )
        if status == 404:
            return NotFound(text, provider=PROVIDER_ID, status=status)
        if status == 429:
            headers = exc.response.headers if exc.response is not None else {}
            return TransientError(
                text,
                provider=PROVIDER_ID,
                status=status,
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        # 501/505 say "never": the rest of 5xx (and 408) may pass.
        if status == 408 or (status >= 500 and status not in (501, 505)):
            return TransientError(text, provider=PROVIDER_ID, status=status)
        return ProviderError(text, provider=PROVIDER_ID, status=status)
    if isinstance(
        exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    ):
        return TransientError(
            clean(f"Linode API unreachable ({type(exc).__name__}: {exc})"), provider=PROVIDER_ID
        )
    if isinstance(exc, linode_api4.UnexpectedResponseError):
        return ProviderError(clean(f"Linode API answered unexpectedly: {exc}"), provider=PROVIDER_ID)
    if isinstance(exc, RuntimeError) and "has changed since creation" in str(exc):
        return ListChanged("a Linode listing changed while it was read page by page", provider=PROVIDER_ID)
    return ProviderError(
        clean(f"Linode API request failed ({type(exc).__name__}: {exc})"), provider=PROVIDER_ID
    )


# --------------------------------------------------------------------------------------------
# Paging
# --------------------------------------------------------------------------------------------


def read_all(first_page: Callable[[Any], Any], run: Runner, restarts: int = 3) -> list[Any]:
    """Every object of a paged listing, one request per page.

    linode_api4 returns the first page wrapped in a PaginatedList that loads the other pages
    lazily as they are indexed. Reading it page by page through `run` makes each page its own
    (retried) request, so a failure on page 3 re-asks for page 3 only. A listing that changes
    between pages, or a page that comes back short, is read again from the start; it is never
    returned short.
    """
    for _ in range(restarts):
        listing = run(first_page)
        try:
            return _pages(listing, run)
        except ListChanged:
            continue
    raise ProviderError(
        f"a Linode listing kept changing while it was read page by page ({restarts} tries); try again",
        provider=PROVIDER_ID,
    )


def _pages(listing: Any, run: Runner) -> list[Any]:
    total = len(listing)
    if not isinstance(listing, linode_api4.PaginatedList):
        return list(listing)  # an unpaged answer (no "pages" field): already complete
    size = listing.page_size  # the SDK's page size is the length of the first page
    if total == 0:
        return []
    if size == 0:
        raise ListChanged("an empty first page of a non-empty listing", provider=PROVIDER_ID)
    items: list[Any] = []
    for start in range(0, total, size):
        stop = min(total, start + size)

        def page(_client: Any, start: int = start, stop: int = stop) -> list[Any]:
            try:
                return list(listing[start:stop])
            except IndexError:  # the page held fewer objects than the totals promised
                raise ListChanged("a page came back short", provider=PROVIDER_ID) from None

        items.extend(run(page))
    if len(items) != total:
        raise ListChanged("a listing came back short", provider=PROVIDER_ID)
    return items


# --------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------

#: Linode's instance statuses (the spec's enum), normalized.
STATUS: Mapping[str, InstanceStatus] = {
    "provisioning": InstanceStatus.PROVISIONING,
    "booting": InstanceStatus.BOOTING,
    "rebooting": InstanceStatus.BOOTING,
    "busy": InstanceStatus.BOOTING,  # booting while joining a placement group
    "running": InstanceStatus.RUNNING,
    "shutting_down": InstanceStatus.STOPPING,
    "offline": InstanceStatus.STOPPED,
    "stopped": InstanceStatus.STOPPED,
    "deleting": InstanceStatus.DELETING,
    # Host-side operations: the Linode is busy, not broken, and boots (or stays off) afterwards.
    "migrating": InstanceStatus.PROVISIONING,
    "rebuilding": InstanceStatus.PROVISIONING,
    "cloning": InstanceStatus.PROVISIONING,
    "restoring": InstanceStatus.PROVISIONING,
    "resizing": InstanceStatus.PROVISIONING,
    # Suspended for an unpaid bill: only the account owner can fix it.
    "billing_suspension": InstanceStatus.ERROR,
}

#: Linode gives private IPv4 addresses from 192.168.128.0/17; they sit in the same `ipv4` list.
_LINODE_PRIVATE = ipaddress.ip_network("192.168.0.0/16")


def public_ipv4(addresses: Iterable[str] | None) -> str | None:
    for address in addresses or ():
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and ip not in _LINODE_PRIVATE:
            return str(ip)
    return None


def to_vm(inst: Any) -> VMInstance:
    """A VMInstance from an Instance the SDK just populated.

    Only fields present in the JSON are read: any other attribute access would make the SDK
    lazily fetch the object again (a hidden API call outside our retries).
    """
    created = inst.created
    if isinstance(created, dt.datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)  # Linode's timestamps are UTC
    raw = str(inst.status or "")
    ltype = inst.type
    region = inst.region
    return VMInstance(
        id=str(inst.id),
        provider=PROVIDER_ID,
        name=str(inst.label or ""),
        status=STATUS.get(raw, InstanceStatus.UNKNOWN),
        region=str(getattr(region, "id", region) or ""),
        type_id=str(getattr(ltype, "id", ltype) or ""),
        public_ipv4=public_ipv4(inst.ipv4),
        tags=tuple(str(t) for t in inst.tags or ()),
        created_at=created if isinstance(created, dt.datetime) else None,
        raw_status=raw,
    )


# --------------------------------------------------------------------------------------------
# Firewall rules
# --------------------------------------------------------------------------------------------


def ssh_rules(allowed_cidrs: Iterable[str]) -> dict[str, Any]:
    """Inbound 22/tcp from `allowed_cidrs` only; every other inbound packet dropped; outbound open."""
    ipv4: list[str] = []
    ipv6: list[str] = []
    for cidr in allowed_cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ProviderError(f"not an IP address or CIDR block: {cidr!r}", provider=PROVIDER_ID) from None
        (ipv4 if net.version == 4 else ipv6).append(str(net))
    if not ipv4 and not ipv6:
        raise ProviderError("a firewall needs at least one CIDR to allow SSH from", provider=PROVIDER_ID)
    return {
        "inbound_policy": "DROP",
        "inbound": [
            {
                "label": "maider-ssh",
                "action": "ACCEPT",
                "protocol": "TCP",
                "ports": "22",
                "addresses": {"ipv4": sorted(set(ipv4)), "ipv6": sorted(set(ipv6))},
            }
        ],
        "outbound_policy": "ACCEPT",
        "outbound": [],
    }


def _rule_key(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    addresses = rule.get("addresses") or {}

    def nets(values: Iterable[str] | None) -> frozenset[str]:
        out = set()
        for value in values or ():
            try:
                out.add(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                out.add(value)
        return frozenset(out)

    return (
        str(rule.get("action", "")).upper(),
        str(rule.get("protocol", "")).upper(),
        str(rule.get("ports") or "").replace(" ", ""),
        nets(addresses.get("ipv4")),
        nets(addresses.get("ipv6")),
    )


def rules_match(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a firewall's rules do what `wanted` does (labels, order and spelling aside)."""
    return all(
        str(current.get(policy, "")).upper() == wanted[policy]
        for policy in ("inbound_policy", "outbound_policy")
    ) and all(
        {_rule_key(r) for r in current.get(way) or []} == {_rule_key(r) for r in wanted[way]}
        for way in ("inbound", "outbound")
    )


def plain(value: Any) -> Any:
    """A MappedObject tree (how the SDK stores nested JSON) as plain dicts and lists."""
    if hasattr(value, "dict") and not isinstance(value, dict):
        return plain(value.dict)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Live catalog
# --------------------------------------------------------------------------------------------

#: GPU chips by a keyword of the plan id or label (spaces removed), for plans the embedded catalog
#: lacks. The API gives only a GPU count, never the chip, its memory or its compute capability.
_RTX_PRO_6000 = GPUModel("RTX PRO 6000 Blackwell", 96, "Blackwell", compute_capability=(12, 0))


def gpu_for(type_id: str, label: str, embedded: Catalog) -> GPUModel | None:
    known = embedded.types.get(type_id)
    if known is not None:
        return known.gpu
    by_chip = {t.gpu.name: t.gpu for t in embedded.types.values()}
    text = f"{type_id} {label}".lower().replace(" ", "")
    if "rtxpro6000" in text:
        return _RTX_PRO_6000
    if "rtx6000" in text:
        return by_chip.get("Quadro RTX 6000")
    if "rtx4000" in text:
        return by_chip.get("RTX 4000 Ada")
    return None


def build_catalog(
    regions: Iterable[Any],
    availability: Iterable[Any],
    types: Iterable[Any],
    embedded: Catalog,
    today: dt.date,
) -> Catalog:
    """The live catalog from the three listings (SDK objects, as linode_api4 returns them)."""
    gpu_regions: dict[str, Region] = {}
    without_metadata: list[str] = []
    for r in regions:
        caps = set(r.capabilities or ())
        if "GPU Linodes" not in caps:
            continue
        if "Metadata" not in caps:  # no Metadata service: no user data, so no cloud-init setup
            without_metadata.append(str(r.id))
            continue
        gpu_regions[str(r.id)] = Region(
            id=str(r.id),
            label=str(r.label or r.id),
            country=str(r.country or "").upper(),
            provider=PROVIDER_ID,
        )

    available: dict[str, set[str]] = {}
    listed: set[str] = set()
    for entry in availability:
        plan, region = str(entry.plan), str(entry.region)
        listed.add(plan)
        if entry.available:
            available.setdefault(plan, set()).add(region)

    vm_types: dict[str, VMType] = {}
    skipped: list[str] = []
    for t in types:
        type_id, label = str(t.id), str(t.label or t.id)
        gpu = gpu_for(type_id, label, embedded)
        if gpu is None:
            skipped.append(f"{type_id} (unknown GPU)")
            continue
        known = embedded.types.get(type_id)
        if type_id in listed:
            sold = available.get(type_id, set()) & set(gpu_regions)
        else:  # /regions/availability does not cover this plan: trust the embedded regions
            sold = set(known.regions if known else gpu_regions) & set(gpu_regions)
        if not sold:
            skipped.append(f"{type_id} (sold out everywhere)")
            continue
        base = float(getattr(t.price, "hourly", None) or 0.0)
        per_region = {
            str(rp.id): float(rp.hourly)
            for rp in t.region_prices or ()
            if getattr(rp, "hourly", None) is not None
        }
        prices = {r: per_region.get(r, base) for r in sold}
        # Reportedly the base price can be $0 with the real figure in region_prices only.
        hourly = base if base > 0 else min((p for p in prices.values() if p > 0), default=0.0)
        if hourly <= 0 and known is not None:
            hourly = known.hourly_price.amount
        if hourly <= 0:
            skipped.append(f"{type_id} (no price)")
            continue
        vm_types[type_id] = VMType(
            id=type_id,
            label=label,
            provider=PROVIDER_ID,
            gpu=gpu,
            gpu_count=int(t.gpus or (known.gpu_count if known else 1)),
            vcpus=int(t.vcpus or 0),
            ram_gb=float(t.memory or 0) / 1024,
            hourly_price=Price(hourly, "USD"),
            regions=tuple(sorted(sold)),
            disk_gb=float(t.disk) / 1024 if t.disk else None,
            region_prices={r: Price(p, "USD") for r, p in sorted(prices.items()) if p > 0 and p != hourly},
            notes=known.notes if known else "",
        )

    note = "Linode API: GET /regions, /regions/availability, /linode/types"
    if without_metadata:
        note += f"; GPU regions without the Metadata service left out: {', '.join(sorted(without_metadata))}"
    if skipped:
        note += f"; plans left out: {', '.join(skipped)}"
    return Catalog(
        provider=PROVIDER_ID,
        regions=dict(sorted(gpu_regions.items())),
        types=vm_types,
        as_of=today,
        source="live",
        note=note,
    )
