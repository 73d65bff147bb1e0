"""`list-types --refresh` and automatic refresh read each provider's API (here, its simulator)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cloudsim.testing import SCW_ACCESS_KEY, SCW_PROJECT_ID, SCW_SECRET_KEY
from tests.conftest import require_providers

PROVIDERS = ["linode", "digitalocean", "scaleway"]


def _point_at(pid: str, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"MAIDER_{pid.upper()}_API_URL", sim.url)
    if pid == "linode":
        monkeypatch.setenv("LINODE_TOKEN", "cli-test-token")
    elif pid == "digitalocean":
        monkeypatch.setenv("DIGITALOCEAN_TOKEN", "cli-test-token")
    else:
        monkeypatch.setenv("SCW_ACCESS_KEY", SCW_ACCESS_KEY)
        monkeypatch.setenv("SCW_SECRET_KEY", SCW_SECRET_KEY)
        monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", SCW_PROJECT_ID)


@pytest.mark.parametrize("pid", PROVIDERS)
def test_refresh_reads_the_api_and_the_cache_serves_later_runs(
    pid: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    require_providers(pid)
    sim = request.getfixturevalue(f"{pid}_sim")
    _point_at(pid, sim, monkeypatch)
    result = cli("list-types", "--provider", pid, "--refresh", "--json")
    assert result.exit_code == 0, result.stderr
    types = json.loads(result.stdout)["types"]
    assert types and {t["catalog_source"] for t in types} == {"live"}
    assert len(sim.log) > 0
    assert not any(sim.log.contains(secret) for secret in ("cli-test-token", SCW_SECRET_KEY))

    # Later runs need neither the network nor credentials: the cache answers.
    calls = len(sim.log)
    for name in ("LINODE_TOKEN", "DIGITALOCEAN_TOKEN", "SCW_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    again = cli("list-types", "--provider", pid, "--json")
    assert {t["catalog_source"] for t in json.loads(again.stdout)["types"]} == {"live"}
    assert len(sim.log) == calls


@pytest.mark.parametrize("pid", PROVIDERS)
def test_planning_refreshes_automatically_when_credentials_exist(
    pid: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    require_providers(pid)
    sim = request.getfixturevalue(f"{pid}_sim")
    _point_at(pid, sim, monkeypatch)
    result = cli("recommend", "--provider", pid, "--json")
    assert result.exit_code == 0, result.stderr
    assert len(sim.log) > 0  # no cache yet and credentials configured: read live prices


def test_unreachable_api_falls_back_to_the_embedded_catalog(
    monkeypatch: pytest.MonkeyPatch, cli: Any
) -> None:
    require_providers("linode")
    monkeypatch.setenv("LINODE_TOKEN", "tok")  # the API URL points at a closed port (conftest)
    result = cli("list-types", "--provider", "linode")
    assert result.exit_code == 0
    assert "live refresh failed" in result.stdout and "embedded" in result.stdout
