"""GPU catalogs across every installed provider: lookup, filtering and price comparison."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from maider import plugins
from maider.errors import ConfigError
from maider.provider import Catalog, Price, Provider, VMType


@dataclass(frozen=True)
class Offer:
    """One type in one region: the unit that recommendations and wizards rank."""

    provider: str
    region: str
    vm_type: VMType
    price: Price


def provider_catalog(provider_cls: type[Provider]) -> Catalog:
    return provider_cls.embedded_catalog()


def catalogs(provider_ids: Iterable[str] | None = None) -> dict[str, Catalog]:
    """Catalogs of the installed providers (all, or the named ones), keyed by provider id."""
    loaded, _ = plugins.load_all()
    wanted = list(provider_ids) if provider_ids is not None else list(loaded)
    result: dict[str, Catalog] = {}
    for pid in wanted:
        cls = plugins.get_provider_class(pid)
        result[cls.id if cls.id == pid else pid] = provider_catalog(cls)
    return result


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
