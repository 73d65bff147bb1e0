"""DigitalOcean GPU Droplet sizes: an embedded, dated snapshot of slugs, prices and regions.

This is what maider plans with when it cannot ask the API (no token, offline, `--help`).
It was true on ``CATALOG_DATE`` and goes stale: a live refresh from ``GET /v2/sizes`` (``gpu_info``,
``price_hourly``, ``regions``, ``available``) supersedes it. GPU capacity shifts within minutes, so
``size.regions`` plus ``size.available`` at run time is the only real answer.

Imported at CLI time, so it must stay cheap: only ``datetime`` and ``maider.provider``.

Sources (shared notes, vendor-apis.md §4.2): DO pricing docs ("Validated on 28 May 2026", and an
April 2025 copy), the digitalocean/openapi GPU droplet example (2024), and third-party scripts whose
canned payloads mirror the API answer of 2026-09-03. vCPU/RAM of the sizes the notes do not spell out
come from a third-party size list that agrees with the ones they do.

Price rule: one list price per slug, the most recent DO docs value if there is one, else the most
recent API observation; the other values seen are in ``notes``.

Regions: the notes place GPU capacity in tor1, nyc2, atl1 and ams3. Where a size was seen in specific
regions (2024 spec example, 2026-09 captures) only those are listed; sizes never observed per region
get all four, flagged "regions assumed" in ``notes``.

Deliberately left out:
- Per-contract plans (MI325X, MI350X, B300, 1x and 8x): DO docs say their slugs "do not appear in the
  self-service GET /v2/sizes response", so maider cannot create them with a token alone.
- ``-spot`` slugs (e.g. ``gpu-h100x1-80gb-spot``, ``gpu-mi355x1-288gb-spot``): seen only in third-party
  scripts, with no documented price or regions, and a spot droplet can be reclaimed mid-session.
"""

import datetime

from maider.provider import GPUModel, Price, Region, VMType

#: Latest capture behind these numbers: the third-party payload "shaped like the 2026-09-03 API answer".
CATALOG_DATE: datetime.date = datetime.date(2026, 9, 3)
CATALOG_SOURCE: str = "DO pricing docs 2026-05 + third-party API captures 2026-09, see shared notes §4.2"
PROVIDER_ID = "digitalocean"


def _region(region_id: str, label: str, country: str) -> Region:
    return Region(id=region_id, label=label, country=country, provider=PROVIDER_ID)


REGION_METADATA: dict[str, Region] = {
    r.id: r
    for r in (
        _region("tor1", "Toronto", "CA"),
        _region("nyc2", "New York 2", "US"),
        _region("atl1", "Atlanta", "US"),
        _region("ams3", "Amsterdam 3", "NL"),
    )
}

RTX_4000_ADA = GPUModel("RTX 4000 Ada", 20, "Ada Lovelace", compute_capability=(8, 9))
RTX_6000_ADA = GPUModel("RTX 6000 Ada", 48, "Ada Lovelace", compute_capability=(8, 9))
L40S = GPUModel("L40S", 48, "Ada Lovelace", compute_capability=(8, 9))
H100 = GPUModel("H100", 80, "Hopper", compute_capability=(9, 0))
H200 = GPUModel("H200", 141, "Hopper", compute_capability=(9, 0))
MI300X = GPUModel("Instinct MI300X", 192, "CDNA3", vendor="AMD", compute_capability=None)

#: Every region where DO sells GPU Droplets (used for sizes never observed per region).
ALL_GPU_DC: tuple[str, ...] = ("ams3", "atl1", "nyc2", "tor1")
_ASSUMED = "regions assumed (never observed per region)"


def _size(
    slug: str,
    label: str,
    gpu: GPUModel,
    count: int,
    vcpus: int,
    ram_gb: float,
    hourly: float,
    regions: tuple[str, ...],
    disk_gb: float | None = None,
    notes: str = "",
) -> VMType:
    return VMType(
        id=slug,
        label=label,
        provider=PROVIDER_ID,
        gpu=gpu,
        gpu_count=count,
        vcpus=vcpus,
        ram_gb=ram_gb,
        hourly_price=Price(hourly, "USD"),
        regions=regions,
        disk_gb=disk_gb,
        notes=notes,
    )


GPU_TYPES: dict[str, VMType] = {
    t.id: t
    for t in (
        _size(
            "gpu-4000adax1-20gb",
            "RTX 4000 Ada x1",
            RTX_4000_ADA,
            1,
            vcpus=8,
            ram_gb=32,
            hourly=0.76,
            regions=ALL_GPU_DC,
            disk_gb=500,
            notes=f"{_ASSUMED}; none had capacity in the 2026-09 captures",
        ),
        _size(
            "gpu-6000adax1-48gb",
            "RTX 6000 Ada x1",
            RTX_6000_ADA,
            1,
            vcpus=8,
            ram_gb=64,
            hourly=1.57,
            regions=("tor1",),
            disk_gb=500,
            notes="April 2025 DO docs said $1.89/h",
        ),
        _size(
            "gpu-l40sx1-48gb",
            "L40S x1",
            L40S,
            1,
            vcpus=8,
            ram_gb=64,
            hourly=1.57,
            regions=ALL_GPU_DC,
            notes=_ASSUMED,
        ),
        _size(
            "gpu-h100x1-80gb",
            "H100 GPU - 1X",
            H100,
            1,
            vcpus=20,
            ram_gb=240,
            hourly=3.39,
            regions=("ams3", "nyc2", "tor1"),
            disk_gb=720,
            notes="DO docs 2026-05 price; API seen at $4.41 (2026-09) and $6.74 (2024); +5 TiB scratch",
        ),
        _size(
            "gpu-h100x8-640gb",
            "H100 x8",
            H100,
            8,
            vcpus=160,
            ram_gb=1920,
            hourly=23.92,
            regions=("ams3", "tor1"),
            notes="DO docs price; API seen at $24.00 (2026-09)",
        ),
        _size(
            "gpu-h200x1-141gb",
            "H200 x1",
            H200,
            1,
            vcpus=24,
            ram_gb=240,
            hourly=3.44,
            regions=ALL_GPU_DC,
            notes=f"third-party price; {_ASSUMED}, third-party configs use nyc2",
        ),
        _size(
            "gpu-h200x8-1128gb",
            "H200 x8",
            H200,
            8,
            vcpus=192,
            ram_gb=1920,
            hourly=27.52,
            regions=ALL_GPU_DC,
            notes=f"third-party price; {_ASSUMED}",
        ),
        _size(
            "gpu-mi300x1-192gb",
            "AMD MI300X x1",
            MI300X,
            1,
            vcpus=20,
            ram_gb=240,
            hourly=1.99,
            regions=("ams3", "atl1", "nyc2"),
            notes="DO docs 2026-05 price; API seen at $2.59 (2026-09); ROCm image gpu-amd-base",
        ),
        _size(
            "gpu-mi300x8-1536gb",
            "AMD MI300X x8",
            MI300X,
            8,
            vcpus=160,
            ram_gb=1920,
            hourly=15.92,
            regions=("ams3", "atl1", "nyc2"),
            notes="regions as seen for MI300X (captures did not tell x1 from x8); ROCm image gpu-amd-base",
        ),
    )
}

GPU_REGIONS: tuple[str, ...] = ("ams3", "atl1", "nyc2", "tor1")
