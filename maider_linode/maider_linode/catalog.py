"""Linode (Akamai) GPU plans: an embedded, dated snapshot of types, prices and regions.

This is what maider plans with when it cannot ask the API (no token, offline, `--help`).
It was true on ``CATALOG_DATE`` and goes stale: a live refresh from ``GET /linode/types``,
``GET /regions`` (capability "GPU Linodes") and ``GET /regions/availability`` supersedes it.

Imported at CLI time, so it must stay cheap: only ``datetime`` and ``maider.provider``.

Sources (shared notes, vendor-apis.md §4.1):
- RTX 6000 plans, the five RTX 6000 regions, 640-2560 GB storage: the official linode/docs GPU page,
  plus a real ``/linode/types`` entry quoted by a third party (label, 8 vCPU, 32 GB, 640 GB disk).
- RTX 4000 Ada ids, labels, sizes, prices and regions: several third-party scripts that agree with one
  another, one of them "verified vs Linode API, 2026-06-05". No official page was stored.

Deliberately left out:
- ``g3-gpu-rtxpro6000-blackwell-1`` (RTX PRO 6000 Blackwell, 96 GB, about $2.50/h): access-gated and
  its size and regions are unknown. A live refresh picks it up for accounts that can buy it.

Unverified third-party claims, kept out of the numbers:
- The unauthenticated ``/v4/linode/types`` reportedly shows the 13 GPU types with a $0 base price, the
  real figure being in ``region_prices`` and account entitlements (read 2026-09-17). So no
  ``region_prices`` are embedded here; a live refresh must read them.
- "Effective 2026-07-01 GPU Linodes go hourly-only (no monthly cap)".
"""

import datetime

from maider.provider import GPUModel, Price, Region, VMType

#: The RTX 4000 Ada figures were last verified against the API on this day (third-party note).
CATALOG_DATE: datetime.date = datetime.date(2026, 6, 5)
CATALOG_SOURCE: str = "Linode docs GPU page + third-party API captures (2026-06-05), see shared notes §4.1"
PROVIDER_ID = "linode"


def _region(region_id: str, label: str, country: str) -> Region:
    return Region(id=region_id, label=label, country=country, provider=PROVIDER_ID)


REGION_METADATA: dict[str, Region] = {
    r.id: r
    for r in (
        # RTX 6000 (official docs)
        _region("us-east", "Newark, NJ", "US"),
        _region("us-southeast", "Atlanta, GA", "US"),
        _region("eu-central", "Frankfurt", "DE"),
        _region("ap-west", "Mumbai", "IN"),
        _region("ap-south", "Singapore", "SG"),
        # RTX 4000 Ada (third-party configs)
        _region("us-ord", "Chicago, IL", "US"),
        _region("us-sea", "Seattle, WA", "US"),
        _region("de-fra-2", "Frankfurt 2", "DE"),
        _region("fr-par", "Paris", "FR"),
        _region("jp-osa", "Osaka", "JP"),
        _region("sg-sin-2", "Singapore 2", "SG"),
        _region("in-bom-2", "Mumbai 2", "IN"),
    )
}

# NVIDIA Quadro RTX 6000 (Turing): 24 GB GDDR6, no bfloat16. NOT the 48 GB RTX 6000 Ada.
QUADRO_RTX_6000 = GPUModel("Quadro RTX 6000", 24, "Turing", compute_capability=(7, 5))
RTX_4000_ADA = GPUModel("RTX 4000 Ada", 20, "Ada Lovelace", compute_capability=(8, 9))

RTX6000_REGIONS: tuple[str, ...] = ("ap-south", "ap-west", "eu-central", "us-east", "us-southeast")
RTX4000_REGIONS: tuple[str, ...] = (
    "de-fra-2",
    "fr-par",
    "in-bom-2",
    "jp-osa",
    "sg-sin-2",
    "us-ord",
    "us-sea",
)

_RTX6000_NOTE = "Quadro RTX 6000 (Turing, 24 GB, no bf16); limited availability"
_RTX4000_NOTE = "regions from third-party configs"


def _rtx6000(count: int, vcpus: int, ram_gb: int, hourly: float) -> VMType:
    return VMType(
        id=f"g1-gpu-rtx6000-{count}",
        label=f"Dedicated {ram_gb}GB + RTX6000 GPU x{count}",
        provider=PROVIDER_ID,
        gpu=QUADRO_RTX_6000,
        gpu_count=count,
        vcpus=vcpus,
        ram_gb=ram_gb,
        hourly_price=Price(hourly, "USD"),
        regions=RTX6000_REGIONS,
        # Linode docs: 640 GB for one card up to 2560 GB for four (the API quotes 655360 MB for x1).
        disk_gb=640 * count,
        notes=_RTX6000_NOTE,
    )


def _rtx4000(
    type_id: str, label: str, count: int, vcpus: int, ram_gb: int, hourly: float, note: str = ""
) -> VMType:
    return VMType(
        id=type_id,
        label=label,
        provider=PROVIDER_ID,
        gpu=RTX_4000_ADA,
        gpu_count=count,
        vcpus=vcpus,
        ram_gb=ram_gb,
        hourly_price=Price(hourly, "USD"),
        regions=RTX4000_REGIONS,
        notes=f"{_RTX4000_NOTE}; {note}" if note else _RTX4000_NOTE,
    )


GPU_TYPES: dict[str, VMType] = {
    t.id: t
    for t in (
        # Quadro RTX 6000: $1000/mo per card.
        _rtx6000(1, vcpus=8, ram_gb=32, hourly=1.50),
        _rtx6000(2, vcpus=16, ram_gb=64, hourly=3.00),
        _rtx6000(3, vcpus=20, ram_gb=96, hourly=4.50),
        _rtx6000(4, vcpus=24, ram_gb=128, hourly=6.00),
        # RTX 4000 Ada. Monthly: 350, 446, 638, 1022, 700, 892, 992, 1976, 2384.
        _rtx4000("g2-gpu-rtx4000a1-s", "RTX4000 Ada x1 Small", 1, vcpus=4, ram_gb=16, hourly=0.52),
        _rtx4000("g2-gpu-rtx4000a1-m", "RTX4000 Ada x1 Medium", 1, vcpus=8, ram_gb=32, hourly=0.67),
        _rtx4000("g2-gpu-rtx4000a1-l", "RTX4000 Ada x1 Large", 1, vcpus=16, ram_gb=64, hourly=0.96),
        _rtx4000("g2-gpu-rtx4000a1-xl", "RTX4000 Ada x1 X-Large", 1, vcpus=32, ram_gb=128, hourly=1.53),
        _rtx4000("g2-gpu-rtx4000a2-s", "RTX4000 Ada x2 Small", 2, vcpus=8, ram_gb=32, hourly=1.05),
        _rtx4000("g2-gpu-rtx4000a2-m", "RTX4000 Ada x2 Medium", 2, vcpus=16, ram_gb=64, hourly=1.34),
        _rtx4000(
            "g2-gpu-rtx4000a2-hs",
            "RTX4000 Ada x2 Medium High Storage",
            2,
            vcpus=16,
            ram_gb=64,
            hourly=1.49,
            note="high-storage variant of a2-m",
        ),
        _rtx4000("g2-gpu-rtx4000a4-s", "RTX4000 Ada x4 Small", 4, vcpus=32, ram_gb=128, hourly=2.96),
        _rtx4000("g2-gpu-rtx4000a4-m", "RTX4000 Ada x4 Medium", 4, vcpus=48, ram_gb=196, hourly=3.57),
    )
}

GPU_REGIONS: tuple[str, ...] = (
    "ap-south",
    "ap-west",
    "de-fra-2",
    "eu-central",
    "fr-par",
    "in-bom-2",
    "jp-osa",
    "sg-sin-2",
    "us-east",
    "us-ord",
    "us-sea",
    "us-southeast",
)
