"""Live catalogs: cached on disk with a TTL, falling back to the embedded data with a note."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import pytest

from maider import catalog, plugins
from maider.provider import Catalog, ProviderError, VMType
from tests.fakeplugins import make_plugin, tiny_provider_source

LIVE_FETCHER = """

import dataclasses, os
from maider.provider import Catalog, ProviderError, Price

def _fetch(self):
    mode = os.environ.get("TINY_LIVE", "ok")
    if mode == "fail":
        raise ProviderError("the API said no", provider="tiny")
    base = self.embedded_catalog()
    t = base.types["tiny-1"]
    live = dataclasses.replace(t, hourly_price=Price(0.42, "USD"))
    return dataclasses.replace(base, types={"tiny-1": live}, source="live", as_of=datetime.date(2026, 11, 25))

TinyProvider.fetch_catalog = _fetch
TinyProvider.has_credentials = lambda self: os.environ.get("TINY_TOKEN") is not None
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "site"
    # A module name of its own: other tests import a plain `tiny_cloud`, and sys.modules keeps it.
    make_plugin(
        root,
        "maider-tiny",
        "tiny",
        "tiny_live_cloud:TinyProvider",
        "tiny_live_cloud",
        tiny_provider_source("tiny", "tiny_live_cloud") + LIVE_FETCHER,
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "tiny_live_cloud", raising=False)
    monkeypatch.setenv("MAIDER_PROVIDERS", "tiny")
    plugins.reset_cache()


def _price() -> float:
    plugins.reset_cache()
    return catalog.catalogs(["tiny"])["tiny"].types["tiny-1"].hourly_price.amount


def test_without_credentials_the_embedded_catalog_is_used_with_a_note(tiny: None) -> None:
    assert _price() == pytest.approx(0.11)
    assert any("embedded catalog of 2026-01-01" in n for n in catalog.catalog_notes())


def test_refresh_reads_live_prices_and_caches_them(tiny: None, cli) -> None:
    result = cli("list-types", "--provider", "tiny", "--refresh", "--json")
    assert json.loads(result.stdout)["types"][0]["hourly_price"] == pytest.approx(0.42)
    assert json.loads(result.stdout)["types"][0]["catalog_source"] == "live"
    assert _price() == pytest.approx(0.42)  # later runs read the cache, no credentials needed


def test_stale_cache_is_refreshed_when_credentials_exist(tiny: None, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = plugins.get_provider_class("tiny")
    old = dataclasses_replace_price(cls.embedded_catalog(), 0.2)
    catalog.write_cached(old, time.time() - 48 * 3600)
    assert _price() == pytest.approx(0.2)  # stale, but no credentials: keep it, with a note
    assert any("cached 48 h ago" in n for n in catalog.catalog_notes())
    monkeypatch.setenv("TINY_TOKEN", "t")
    assert _price() == pytest.approx(0.42)


def test_failed_refresh_falls_back_and_says_why(tiny: None, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setenv("TINY_LIVE", "fail")
    result = cli("list-types", "--provider", "tiny", "--refresh")
    assert result.exit_code == 0
    assert "live refresh failed: the API said no" in result.stdout
    assert "$0.11" in result.stdout


def test_corrupt_cache_is_a_cache_miss(tiny: None) -> None:
    path = Path(os.environ["MAIDER_CACHE_DIR"]) / "catalogs" / "tiny.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert _price() == pytest.approx(0.11)


def test_cache_round_trip_keeps_every_field(tiny: None) -> None:
    cat = plugins.get_provider_class("tiny").embedded_catalog()
    catalog.write_cached(cat, 1.0)
    again, fetched = catalog.read_cached("tiny")  # type: ignore[misc]
    assert fetched == 1.0
    assert again.types == cat.types and again.regions == cat.regions


def dataclasses_replace_price(cat: Catalog, amount: float) -> Catalog:
    import dataclasses

    from maider.provider import Price

    types: dict[str, VMType] = {
        k: dataclasses.replace(t, hourly_price=Price(amount, "USD")) for k, t in cat.types.items()
    }
    return dataclasses.replace(cat, types=types, source="live", as_of=dt.date(2026, 11, 1))


def test_provider_error_type_is_exported() -> None:
    assert issubclass(ProviderError, Exception)


def test_a_failed_automatic_refresh_is_not_retried_by_every_command(
    tiny: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINY_TOKEN", "t")
    monkeypatch.setenv("TINY_LIVE", "fail")
    assert _price() == pytest.approx(0.11)
    assert any("live refresh failed" in n for n in catalog.catalog_notes())
    monkeypatch.setenv("TINY_LIVE", "ok")  # the API is back, but the failure is remembered for a while
    assert _price() == pytest.approx(0.11)
    plugins.reset_cache()
    assert catalog.catalogs(["tiny"], refresh=True)["tiny"].types[
        "tiny-1"
    ].hourly_price.amount == pytest.approx(0.42)
