"""GPU catalogs across every installed provider: lookup, filtering and price comparison."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maider import plugins
from maider.errors import ConfigError, MaiderError
from maider.provider import Catalog, Price, Provider, VMType


@dataclass(frozen=True)
class Offer:
    """One type in one region: the unit that recommendations and wizards rank."""

    provider: str
    region: str
    vm_type: VMType
    price: Price


_chosen: dict[str, CatalogChoice] = {}


def catalogs(provider_ids: Iterable[str] | None = None, *, refresh: bool = False) -> dict[str, Catalog]:
    """Catalogs of the installed providers (all, or the named ones), keyed by provider id.

    Each provider's catalog is chosen once per process (see `current_catalog`); `refresh`
    forces a live read. Notes about stale or fallback data are in `catalog_notes()`.
    """
    explicit = provider_ids is not None
    wanted = [p.lower() for p in provider_ids] if provider_ids is not None else plugins.require_any()
    result: dict[str, Catalog] = {}
    for pid in wanted:
        if refresh or pid not in _chosen:
            cls = plugins.get_provider_class(pid)
            try:
                # An automatic refresh must not hold a planning command up: one try, short timeout.
                provider = cls() if refresh else cls(cls.load_settings(max_attempts=1, request_timeout=10))
                _chosen[pid] = current_catalog(provider, refresh=refresh, ttl_hours=_ttl_hours())
            except MaiderError:
                raise
            except Exception as exc:  # a plugin's catalog or settings module is broken
                message = f"provider {pid!r} is unusable: its catalog or settings failed ({type(exc).__name__}: {exc})"
                if explicit:
                    raise ConfigError(message) from None
                plugins.warn(message)
                continue
        result[pid] = _chosen[pid].catalog
    if not result:
        raise ConfigError("no installed provider has a usable catalog (see the warnings above)")
    return result


def catalog_notes() -> list[str]:
    return [c.note for c in _chosen.values() if c.note]


def forget_catalogs() -> None:
    _chosen.clear()


def _ttl_hours() -> float:
    import os

    raw = os.environ.get("MAIDER_CATALOG_TTL_HOURS", "24")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ConfigError(f"MAIDER_CATALOG_TTL_HOURS must be a number of hours, got {raw!r}") from None


def offers(cats: dict[str, Catalog], region: str | None = None) -> list[Offer]:
    """Every (type, region) pair, optionally limited to one region."""
    result = []
    for pid, cat in cats.items():
        for vm_type in cat.types.values():
            for rid in vm_type.regions:
                if region is None or rid == region:
                    result.append(Offer(pid, rid, vm_type, vm_type.price_in(rid)))
    return result


def to_usd(price: Price, usd_per_eur: float) -> float:
    """A comparable figure across currencies (approximate: the rate is a setting)."""
    if price.currency == "USD":
        return price.amount
    if price.currency == "EUR":
        return price.amount * usd_per_eur
    raise ConfigError(f"cannot compare prices in {price.currency}: only USD and EUR are known")


def lookup_type(cat: Catalog, type_id: str) -> VMType:
    try:
        return cat.types[type_id]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(type_id, list(cat.types), n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"see `maider list-types --provider {cat.provider}`"
        )
        raise ConfigError(f"{cat.provider} has no GPU type {type_id!r}: {hint}") from None


def check_region(cat: Catalog, region: str) -> None:
    if region not in cat.regions:
        import difflib

        close = difflib.get_close_matches(region, list(cat.regions), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"GPU regions: {', '.join(cat.gpu_regions)}"
        raise ConfigError(f"{cat.provider} sells no GPU VMs in region {region!r}: {hint}")


def check_type_in_region(cat: Catalog, vm_type: VMType, region: str) -> None:
    if not vm_type.sold_in(region):
        alternatives = sorted(
            (t for t in cat.types.values() if t.sold_in(region) and t.gpu.name == vm_type.gpu.name),
            key=lambda t: t.gpu_count,
        ) or sorted((t for t in cat.types.values() if t.sold_in(region)), key=lambda t: t.hourly_price.amount)
        hint = f"it is sold in {', '.join(vm_type.regions)}"
        if alternatives:
            hint += f"; in {region} you can use {', '.join(t.id for t in alternatives[:4])}"
        raise ConfigError(f"{cat.provider} does not sell {vm_type.id} in {region}: {hint}")


# --------------------------------------------------------------------------------------------
# Live catalogs, cached on disk
# --------------------------------------------------------------------------------------------

CACHE_VERSION = 1
#: After an automatic refresh fails, planning commands use the cached/embedded data this long
#: (seconds) before trying the API again; `--refresh` always tries.
FAILED_REFRESH_BACKOFF = 3600


def catalog_to_json(cat: Catalog, fetched_at: float) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "version": CACHE_VERSION,
        "provider": cat.provider,
        "fetched_at": fetched_at,
        "as_of": cat.as_of.isoformat(),
        "note": cat.note,
        "regions": [asdict(r) for r in cat.regions.values()],
        "types": [
            {**asdict(t), "region_prices": {k: asdict(v) for k, v in t.region_prices.items()}}
            for t in cat.types.values()
        ],
    }


def catalog_from_json(data: dict[str, Any]) -> Catalog:
    import datetime as dt

    from maider.provider import GPUModel, Region

    def vm_type(raw: dict[str, Any]) -> VMType:
        gpu = dict(raw["gpu"])
        cc = gpu.get("compute_capability")
        gpu["compute_capability"] = tuple(cc) if cc else None
        return VMType(
            id=str(raw["id"]),
            label=str(raw["label"]),
            provider=str(raw["provider"]),
            gpu=GPUModel(**gpu),
            gpu_count=int(raw["gpu_count"]),
            vcpus=int(raw["vcpus"]),
            ram_gb=float(raw["ram_gb"]),
            hourly_price=Price(**raw["hourly_price"]),
            regions=tuple(raw["regions"]),
            disk_gb=raw.get("disk_gb"),
            region_prices={k: Price(**v) for k, v in dict(raw.get("region_prices") or {}).items()},
            notes=str(raw.get("notes", "")),
        )

    regions = [Region(**r) for r in data["regions"]]
    types = [vm_type(t) for t in data["types"]]
    return Catalog(
        provider=str(data["provider"]),
        regions={r.id: r for r in regions},
        types={t.id: t for t in types},
        as_of=dt.date.fromisoformat(str(data["as_of"])),
        source="live",
        note=str(data.get("note", "")),
    )


def _cache_file(provider_id: str) -> Path:
    from maider.paths import cache_dir

    return cache_dir() / "catalogs" / f"{provider_id}.json"


def read_cached(provider_id: str) -> tuple[Catalog, float] | None:
    """The cached live catalog and when it was fetched (epoch seconds), if readable."""
    import json

    path = _cache_file(provider_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION:
            return None
        return catalog_from_json(data), float(data["fetched_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a missing or corrupt cache is just a cache miss


def write_cached(cat: Catalog, fetched_at: float) -> None:
    import json

    from maider.config import write_private_file

    write_private_file(_cache_file(cat.provider), json.dumps(catalog_to_json(cat, fetched_at)))


@dataclass(frozen=True)
class CatalogChoice:
    catalog: Catalog
    note: str = ""  # shown to the user when the data is not fresh live data


def current_catalog(provider: Provider, *, refresh: bool = False, ttl_hours: float = 24.0) -> CatalogChoice:
    """Live catalog (refreshed when asked, or when stale and credentials are configured),
    else the cached one, else the embedded one — with a note saying which and why."""
    import time

    from maider.provider import Provider as BaseProvider
    from maider.provider import ProviderError

    cached = read_cached(provider.id)
    now = time.time()
    stale = cached is None or now - cached[1] > ttl_hours * 3600
    has_live = type(provider).fetch_catalog is not BaseProvider.fetch_catalog
    failed_marker = _cache_file(provider.id).with_suffix(".failed")
    recently_failed = failed_marker.exists() and now - failed_marker.stat().st_mtime < FAILED_REFRESH_BACKOFF
    problem = ""
    automatic = stale and has_live and provider.has_credentials() and not recently_failed
    if refresh or automatic:
        try:
            live = provider.fetch_catalog()
        except ProviderError as exc:
            live, problem = None, str(exc)
            if not refresh:  # don't make every command wait on an API that just failed
                failed_marker.parent.mkdir(parents=True, exist_ok=True)
                failed_marker.touch()
        if live is not None:
            write_cached(live, now)
            failed_marker.unlink(missing_ok=True)
            return CatalogChoice(live, live.note)
        if not problem:
            problem = "this provider has no live catalog"
    name = provider.display_name
    if cached is not None:
        age_h = (now - cached[1]) / 3600
        note = f"{name}: using prices cached {age_h:.0f} h ago" + (
            f" (refresh failed: {problem})" if problem else ""
        )
        return CatalogChoice(cached[0], note if (problem or stale) else "")
    embedded = provider.embedded_catalog()
    note = f"{name}: embedded catalog of {embedded.as_of.isoformat()}"
    if problem:
        note += f" (live refresh failed: {problem})"
    elif has_live:
        note += " (`maider list-types --refresh` reads live prices)"
    return CatalogChoice(embedded, note)
