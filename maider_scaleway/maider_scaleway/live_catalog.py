"""Turn the Instance API's product listings into a maider Catalog (pure: no SDK, no network).

Input, per zone: ``GET …/products/servers`` (a map commercial type → ServerType: ``ncpus``,
``ram`` in bytes, ``gpu`` count, ``gpu_info.gpu_name`` / ``gpu_memory`` in bytes,
``hourly_price`` in EUR) and ``GET …/products/servers/availability`` (type → available / scarce /
shortage). A type is offered in a zone when the zone lists it and it is not in shortage there;
"shortage" is the state in which creates fail with out_of_stock (shared notes §4.3).

The API does not say which architecture or CUDA compute capability a GPU has, so the GPUModel
objects of the embedded catalog are reused for them (by type id, else by GPU name).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from maider.provider import Catalog, GPUModel, Price, Region, VMType

GIB = 1024**3
SHORTAGE = "shortage"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _memory_gb(size_bytes: int) -> float:
    """Memory as the vendor states it: whole GiB when the byte count is one, else decimal GB."""
    gib = size_bytes / GIB
    if abs(gib - round(gib)) < 1e-6:
        return float(round(gib))
    return round(size_bytes / 1e9, 1)


def _gpu_model(type_id: str, gpu_name: str, vram_gb: float, embedded: Catalog) -> GPUModel:
    known = embedded.types.get(type_id)
    if known is not None:
        gpu = known.gpu
    else:
        models = {t.gpu for t in embedded.types.values()}
        wanted = _norm(gpu_name)
        exact = [g for g in models if _norm(g.name) == wanted]
        # "P100" is the embedded "Tesla P100"; an ambiguous hit ("H100": PCIe or SXM) is not used.
        partial = [g for g in models if wanted and (_norm(g.name).endswith(wanted))]
        candidates = exact or partial
        if len(candidates) != 1:
            return GPUModel(name=gpu_name or "unknown GPU", vram_gb=vram_gb, architecture="unknown")
        gpu = candidates[0]
    if vram_gb and abs(gpu.vram_gb - vram_gb) > 0.5:
        gpu = dataclasses.replace(gpu, vram_gb=vram_gb)
    return gpu


def build_catalog(
    zones: Mapping[str, tuple[Mapping[str, Any], Mapping[str, str]]],
    embedded: Catalog,
    *,
    today: dt.date | None = None,
) -> Catalog:
    """A live Catalog from ``{zone: (server types by name, availability by name)}``."""
    offered: dict[str, dict[str, Any]] = {}  # type id -> {zone: ServerType}
    scarce: dict[str, list[str]] = {}
    short: set[str] = set()
    for zone in sorted(zones):
        types, availability = zones[zone]
        for type_id, server_type in types.items():
            if not (server_type.gpu or 0):
                continue  # not a GPU type
            state = str(availability.get(type_id, "available"))
            if state == SHORTAGE:
                short.add(type_id)
                continue
            if state == "scarce":
                scarce.setdefault(type_id, []).append(zone)
            offered.setdefault(type_id, {})[zone] = server_type

    vm_types: dict[str, VMType] = {}
    for type_id in sorted(offered):
        per_zone = offered[type_id]
        first = per_zone[min(per_zone)]
        info = first.gpu_info
        vram = _memory_gb(int(info.gpu_memory)) if info is not None and info.gpu_memory else 0.0
        gpu = _gpu_model(type_id, info.gpu_name if info is not None else "", vram, embedded)
        prices = {z: Price(float(t.hourly_price), "EUR") for z, t in per_zone.items()}
        base = min(prices.values())
        known = embedded.types.get(type_id)
        notes = []
        if type_id in scarce:
            notes.append(f"scarce in {', '.join(scarce[type_id])}")
        if any(getattr(t, "end_of_service", False) for t in per_zone.values()):
            notes.append("end of service announced")
        vm_types[type_id] = VMType(
            id=type_id,
            label=known.label if known is not None else f"{gpu.name} x{int(first.gpu)}",
            provider=embedded.provider,
            gpu=gpu,
            gpu_count=int(first.gpu),
            vcpus=int(first.ncpus),
            ram_gb=_memory_gb(int(first.ram)),
            hourly_price=base,
            regions=tuple(sorted(per_zone)),
            region_prices={z: p for z, p in prices.items() if p != base},
            notes="; ".join(notes),
        )

    used = sorted({z for t in vm_types.values() for z in t.regions})
    regions = {
        z: embedded.regions.get(z)
        or Region(id=z, label=z, country=z.split("-")[0].upper(), provider=embedded.provider)
        for z in used
    }
    gone = sorted(short - set(vm_types))
    note = "Scaleway Instance API, " + ", ".join(sorted(zones))
    if gone:
        note += f"; in shortage everywhere (left out): {', '.join(gone)}"
    return Catalog(
        provider=embedded.provider,
        regions=regions,
        types=vm_types,
        as_of=today or dt.date.today(),
        source="live",
        note=note,
    )
