"""DigitalOcean JSON ⇄ maider's data classes. Pure functions: no SDK, no network.

Kept apart from ``api.py`` so the shapes can be reasoned about (and reused) without the SDK.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from maider.provider import Catalog, GPUModel, InstanceStatus, Price, Region, VMInstance, VMType

PROVIDER = "digitalocean"

#: Droplet ``status`` (spec enum: new, active, off, archive) → maider's status. ``archive`` is an
#: existing but inactive droplet: read as stopped (still to be deleted), never as deleted.
STATUS: dict[str, InstanceStatus] = {
    "new": InstanceStatus.PROVISIONING,
    "active": InstanceStatus.RUNNING,
    "off": InstanceStatus.STOPPED,
    "archive": InstanceStatus.STOPPED,
}

#: Outbound rules meaning "everything": DO firewalls drop any outbound traffic no rule allows
#: once a firewall has outbound rules, so all three protocols are listed. "0" is the spec's
#: spelling of "all ports" (it is also what the API returns for icmp).
ANYWHERE = ("0.0.0.0/0", "::/0")
OUTBOUND_PROTOCOLS = ("tcp", "udp", "icmp")

#: Country of DigitalOcean datacentres by slug prefix (the API gives names only).
COUNTRIES = {
    "nyc": "US",
    "sfo": "US",
    "atl": "US",
    "ric": "US",
    "tor": "CA",
    "ams": "NL",
    "lon": "GB",
    "fra": "DE",
    "sgp": "SG",
    "blr": "IN",
    "syd": "AU",
}


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def public_ipv4(droplet: Mapping[str, Any]) -> str | None:
    for net in (droplet.get("networks") or {}).get("v4") or []:
        if net.get("type") == "public" and net.get("ip_address"):
            return str(net["ip_address"])
    return None


def vm_from_droplet(droplet: Mapping[str, Any]) -> VMInstance:
    """A droplet's JSON (as GET /v2/droplets/{id} or a list returns it) as a VMInstance."""
    raw = str(droplet.get("status") or "")
    region = droplet.get("region")
    region_slug = region.get("slug") if isinstance(region, Mapping) else region
    size = droplet.get("size")
    size_slug = droplet.get("size_slug") or (size.get("slug") if isinstance(size, Mapping) else size)
    return VMInstance(
        id=str(droplet["id"]),
        provider=PROVIDER,
        name=str(droplet.get("name") or ""),
        status=STATUS.get(raw, InstanceStatus.UNKNOWN),
        region=str(region_slug or ""),
        type_id=str(size_slug or ""),
        public_ipv4=public_ipv4(droplet),
        tags=tuple(str(t) for t in droplet.get("tags") or ()),
        created_at=_parse_time(droplet.get("created_at")),
        raw_status=raw,
    )


# -- firewalls -----------------------------------------------------------------------------


def inbound_rules(allowed_cidrs: Iterable[str]) -> list[dict[str, Any]]:
    """SSH from the given CIDRs only: a DO firewall drops every inbound packet no rule allows."""
    return [{"protocol": "tcp", "ports": "22", "sources": {"addresses": sorted(set(allowed_cidrs))}}]


def outbound_rules() -> list[dict[str, Any]]:
    return [
        {"protocol": p, "ports": "0", "destinations": {"addresses": list(ANYWHERE)}}
        for p in OUTBOUND_PROTOCOLS
    ]


def _rule_key(rule: Mapping[str, Any], target: str) -> tuple[Any, ...]:
    ports = str(rule.get("ports", "0"))
    ports = "0" if ports in ("", "all") else ports
    where = rule.get(target) or {}
    others = tuple(sorted(k for k, v in where.items() if v and k != "addresses"))
    return (str(rule.get("protocol")), ports, frozenset(where.get("addresses") or ()), others)


def rules_match(firewall: Mapping[str, Any], allowed_cidrs: Iterable[str]) -> bool:
    """Whether an existing firewall already has exactly maider's rules."""
    have_in = {_rule_key(r, "sources") for r in firewall.get("inbound_rules") or []}
    have_out = {_rule_key(r, "destinations") for r in firewall.get("outbound_rules") or []}
    want_in = {_rule_key(r, "sources") for r in inbound_rules(allowed_cidrs)}
    want_out = {_rule_key(r, "destinations") for r in outbound_rules()}
    return have_in == want_in and have_out == want_out


# -- catalog -------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _gpu_model(slug: str, info: Mapping[str, Any], embedded: Mapping[str, VMType]) -> GPUModel:
    """The embedded GPUModel (architecture, compute capability) when known, else one built from gpu_info."""
    if slug in embedded:
        return embedded[slug].gpu
    model = str(info.get("model") or "")
    bare = _norm(model.split("_", 1)[1] if "_" in model else model)  # "nvidia_rtx_4000_ada" → "rtx4000ada"
    for known in {t.gpu for t in embedded.values()}:
        name = _norm(known.name)
        if bare and (name == bare or name.endswith(bare)):  # "instinctmi300x" ends with "mi300x"
            return known
    count = max(1, int(info.get("count") or 1))
    amount = float((info.get("vram") or {}).get("amount") or 0)
    # The spec calls vram "the amount of VRAM allocated to the GPU"; real and simulated answers give
    # the droplet's total (gpu-h100x8-640gb: 640). The slug's "-<N>gb" settles which one it is.
    suffix = re.search(r"-(\d+)gb$", slug)
    per_gpu = amount if suffix and count > 1 and int(suffix.group(1)) == amount * count else amount / count
    vendor = "AMD" if model.lower().startswith("amd") else "NVIDIA"
    name = model.split("_", 1)[1].replace("_", " ").upper() if "_" in model else (model or slug)
    return GPUModel(name, per_gpu, "unknown", vendor=vendor, compute_capability=None)


def catalog_from_api(
    sizes: Iterable[Mapping[str, Any]],
    regions: Iterable[Mapping[str, Any]],
    embedded: Catalog,
    today: dt.date,
) -> Catalog:
    """GPU sizes from GET /v2/sizes, placed where GET /v2/regions says they can be created now."""
    by_slug = {str(r.get("slug")): r for r in regions}

    def orderable(size_slug: str, region_slug: str) -> bool:
        region = by_slug.get(region_slug)
        if region is None or region.get("available") is False:
            return False
        offered = region.get("sizes")
        return offered is None or size_slug in offered

    types: dict[str, VMType] = {}
    for size in sizes:
        info = size.get("gpu_info") or {}
        count = int(info.get("count") or 0)
        if count <= 0:
            continue
        slug = str(size["slug"])
        sold = (
            tuple(sorted(r for r in size.get("regions") or [] if orderable(slug, str(r))))
            if size.get("available", True)
            else ()
        )
        known = embedded.types.get(slug)
        types[slug] = VMType(
            id=slug,
            label=str(size.get("description") or (known.label if known else slug)),
            provider=PROVIDER,
            gpu=_gpu_model(slug, info, embedded.types),
            gpu_count=count,
            vcpus=int(size.get("vcpus") or 0),
            ram_gb=round(float(size.get("memory") or 0) / 1024, 2),
            hourly_price=Price(float(size.get("price_hourly") or 0.0), "USD"),
            regions=sold,
            disk_gb=float(size["disk"]) if size.get("disk") is not None else None,
            notes="" if sold else "not available in any region right now",
        )

    used = sorted({r for t in types.values() for r in t.regions})
    out_regions: dict[str, Region] = {}
    for slug in used:
        known_region = embedded.regions.get(slug)
        label = str(by_slug.get(slug, {}).get("name") or (known_region.label if known_region else slug))
        country = known_region.country if known_region else COUNTRIES.get(slug[:3], "")
        out_regions[slug] = Region(id=slug, label=label, country=country, provider=PROVIDER)
    return Catalog(
        provider=PROVIDER,
        regions=out_regions,
        types=types,
        as_of=today,
        source="live",
        note="GET /v2/sizes and /v2/regions",
    )


def image_for(type_id: str, embedded: Mapping[str, VMType]) -> str | None:
    """DigitalOcean's GPU base image for a slug the embedded catalog does not know (None: it does)."""
    if type_id in embedded:
        return None
    if re.match(r"gpu-mi\d", type_id):
        return "gpu-amd-base"
    return "gpu-h100x8-base" if re.search(r"x8-", type_id) else "gpu-h100x1-base"
