"""Scaleway GPU Instance types: an embedded, dated snapshot of commercial types, prices and zones.

This is what maider plans with when it cannot ask the API (no key, offline, `--help`).
It was true on ``CATALOG_DATE`` and goes stale: a live refresh from
``GET /instance/v1/zones/{zone}/products/servers`` (``hourly_price``, ``gpu``, ``gpu_memory``; no key
needed) and ``…/products/servers/availability`` (available / scarce / shortage) supersedes it.

Prices are EUR per hour, excluding VAT. GPU Instances are billed per minute while powered on
(RENDER-S per hour); a powered-off instance stops compute billing.

Imported at CLI time, so it must stay cheap: only ``datetime`` and ``maider.provider``.

Sources (shared notes, vendor-apis.md §4.3):
- Prices: verbatim ``hourly_price`` values from a third-party capture of the public catalog endpoints
  (2026-10-01) where given. Otherwise "derived" (the 1-GPU rate x N, which matches the older price list
  x 1.05) or a third-party fixture; both are flagged in ``notes``.
- Zones: Scaleway's product availability guide (validated 2025-12-04). No GPU is sold in nl-ams-*.
- vCPU/RAM: scaleway/docs-content "Choosing the right GPU Instance type".
- GPU-3070-S: SkyPilot's old catalog only; it is absent from the current availability guide.
"""

import datetime

from maider.provider import GPUModel, Price, Region, VMType

#: Day of the public-catalog capture that supplied the verbatim prices.
CATALOG_DATE: datetime.date = datetime.date(2026, 10, 1)
CATALOG_SOURCE: str = "Scaleway catalog API capture 2026-10-01 + availability guide, see shared notes §4.3"
PROVIDER_ID = "scaleway"


def _zone(zone_id: str, label: str, country: str) -> Region:
    return Region(id=zone_id, label=label, country=country, provider=PROVIDER_ID)


REGION_METADATA: dict[str, Region] = {
    r.id: r
    for r in (
        _zone("fr-par-1", "Paris 1", "FR"),
        _zone("fr-par-2", "Paris 2", "FR"),
        _zone("pl-waw-2", "Warsaw 2", "PL"),
        _zone("nl-ams-1", "Amsterdam 1", "NL"),  # in the capture, but sells no GPU
    )
}

L4 = GPUModel("L4", 24, "Ada Lovelace", compute_capability=(8, 9))
L40S = GPUModel("L40S", 48, "Ada Lovelace", compute_capability=(8, 9))
H100_PCIE = GPUModel("H100 PCIe", 80, "Hopper", compute_capability=(9, 0))
H100_SXM = GPUModel("H100 SXM", 80, "Hopper", compute_capability=(9, 0))
B300 = GPUModel("B300", 288, "Blackwell", compute_capability=(10, 3))
TESLA_P100 = GPUModel("Tesla P100", 16, "Pascal", compute_capability=(6, 0))
RTX_3070 = GPUModel("RTX 3070", 8, "Ampere", compute_capability=(8, 6))

PAR2_WAW2: tuple[str, ...] = ("fr-par-2", "pl-waw-2")
PAR2_ONLY: tuple[str, ...] = ("fr-par-2",)

_DERIVED = "derived price (1-GPU rate x N)"
_FIXTURE = "price from a third-party fixture"
_SHORTAGE = "in shortage in fr-par-2 on 2026-08-25"


def _type(
    type_id: str,
    label: str,
    gpu: GPUModel,
    count: int,
    vcpus: int,
    ram_gb: float,
    hourly_eur: float,
    regions: tuple[str, ...],
    *notes: str,
) -> VMType:
    return VMType(
        id=type_id,
        label=label,
        provider=PROVIDER_ID,
        gpu=gpu,
        gpu_count=count,
        vcpus=vcpus,
        ram_gb=ram_gb,
        hourly_price=Price(hourly_eur, "EUR"),
        regions=regions,
        notes="; ".join(notes),
    )


GPU_TYPES: dict[str, VMType] = {
    t.id: t
    for t in (
        # id, label, GPU, count, vCPUs, RAM GB, EUR/h, zones, notes...
        # L4 (PCIe)
        _type("L4-1-24G", "L4 x1", L4, 1, 8, 48, 0.7875, PAR2_WAW2),
        _type("L4-2-24G", "L4 x2", L4, 2, 16, 96, 1.575, PAR2_WAW2),
        _type("L4-4-24G", "L4 x4", L4, 4, 32, 192, 3.15, PAR2_WAW2, _DERIVED),
        _type("L4-8-24G", "L4 x8", L4, 8, 64, 384, 6.30, PAR2_WAW2, _DERIVED, _SHORTAGE),
        # L40S (PCIe)
        _type("L40S-1-48G", "L40S x1", L40S, 1, 8, 96, 1.469916, PAR2_WAW2),
        _type("L40S-2-48G", "L40S x2", L40S, 2, 16, 192, 2.94, PAR2_WAW2, _DERIVED),
        _type("L40S-4-48G", "L40S x4", L40S, 4, 32, 384, 5.88, PAR2_WAW2, _DERIVED, _SHORTAGE),
        _type("L40S-8-48G", "L40S x8", L40S, 8, 64, 768, 11.76, PAR2_WAW2, _DERIVED, _SHORTAGE),
        # H100 PCIe
        _type("H100-1-80G", "H100 PCIe x1", H100_PCIE, 1, 24, 240, 2.8665, PAR2_WAW2),
        _type("H100-2-80G", "H100 PCIe x2", H100_PCIE, 2, 48, 480, 5.73, PAR2_WAW2, _DERIVED, _SHORTAGE),
        # H100 SXM (NVLink): fr-par-2 only
        _type("H100-SXM-2-80G", "H100 SXM x2", H100_SXM, 2, 32, 240, 6.6198, PAR2_ONLY, _FIXTURE),
        _type(
            "H100-SXM-4-80G",
            "H100 SXM x4",
            H100_SXM,
            4,
            64,
            480,
            12.77,
            PAR2_ONLY,
            "derived price (H1 2026 list 11.61 x 1.1, the rise seen on SXM-2 and SXM-8)",
        ),
        _type("H100-SXM-8-80G", "H100 SXM x8", H100_SXM, 8, 128, 960, 25.3308, PAR2_ONLY),
        # B300 SXM: fr-par-2 only
        _type("B300-SXM-2-288G", "B300 SXM x2", B300, 2, 56, 960, 18.96, PAR2_ONLY, _FIXTURE, _SHORTAGE),
        _type("B300-SXM-8-288G", "B300 SXM x8", B300, 8, 224, 3840, 60.0, PAR2_ONLY, _SHORTAGE),
        # Older generations
        _type(
            "RENDER-S",
            "Tesla P100 x1 (RENDER-S)",
            TESLA_P100,
            1,
            10,
            42,
            1.221,
            ("fr-par-1",),
            "billed per hour",
            "older catalogs also list fr-par-2",
        ),
        _type(
            "GPU-3070-S",
            "RTX 3070 x1",
            RTX_3070,
            1,
            8,
            16,
            0.98,
            PAR2_ONLY,
            "likely retired (absent from the availability guide)",
            "old SkyPilot price",
        ),
    )
}

GPU_REGIONS: tuple[str, ...] = ("fr-par-1", "fr-par-2", "pl-waw-2")
