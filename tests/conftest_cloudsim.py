"""pytest plugin: fixtures that run the cloud simulators (tests/cloudsim) for a test.

Register it once for the whole suite with ``pytest_plugins = ["tests.conftest_cloudsim"]`` in the
top-level tests/conftest.py (the cloudsim test modules also list it themselves, which is a no-op
once it is registered).

Fixtures:
    cloudsim_clock      FakeClock shared by the simulators of a test; ``advance(s)`` moves time.
    cloudsim_net_guard  only loopback traffic while the test runs; the test fails on any other.
    linode_sim          a running LinodeSim; ``linode_sim.url`` is the SDK's base_url.
    digitalocean_sim    a running DigitalOceanSim; ``.url`` ends with /v2/.
    scaleway_sim        a running ScalewaySim; ``.url`` has no trailing slash.
    digitalocean_env    digitalocean_sim + DIGITALOCEAN_END_POINT (and a fake token) set.
    scaleway_env        scaleway_sim + SCW_* set to fake credentials and the simulator, and
                        SCW_CONFIG_PATH pointing at a missing file so no real profile leaks in.

Every simulator fixture fails the test at teardown if the simulator recorded a spec violation
(a malformed request from the client, or a response that drifted from the vendor's spec).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloudsim import DigitalOceanSim, FakeClock, LinodeSim, NetGuard, ScalewaySim, SimServer
from tests.cloudsim.testing import DO_TOKEN, SCW_ACCESS_KEY, SCW_PROJECT_ID, SCW_SECRET_KEY, validate_mode


def _run(sim: SimServer) -> Iterator[SimServer]:
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
    if sim.violations:
        text = "\n\n".join(str(v) for v in sim.violations[:10])
        pytest.fail(f"{len(sim.violations)} {sim.vendor} simulator violation(s):\n{text}", pytrace=False)


@pytest.fixture
def cloudsim_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloudsim_net_guard() -> Iterator[NetGuard]:
    guard = NetGuard()
    guard.install()
    try:
        yield guard
    finally:
        guard.uninstall()
    if guard.blocked:
        pytest.fail(f"traffic left the loopback interface: {guard.blocked}", pytrace=False)


@pytest.fixture
def linode_sim(cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard) -> Iterator[LinodeSim]:
    yield from _run(LinodeSim(clock=cloudsim_clock, validate=validate_mode("linode")))  # type: ignore[misc]


@pytest.fixture
def digitalocean_sim(cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard) -> Iterator[DigitalOceanSim]:
    yield from _run(DigitalOceanSim(clock=cloudsim_clock, validate=validate_mode("digitalocean")))  # type: ignore[misc]


@pytest.fixture
def scaleway_sim(cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard) -> Iterator[ScalewaySim]:
    yield from _run(ScalewaySim(clock=cloudsim_clock))  # type: ignore[misc]


@pytest.fixture
def digitalocean_env(monkeypatch: pytest.MonkeyPatch, digitalocean_sim: DigitalOceanSim) -> DigitalOceanSim:
    # Objects python-digitalocean builds internally ignore end_point=, but read this variable.
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", digitalocean_sim.url)
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", DO_TOKEN)
    monkeypatch.delenv("PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC", raising=False)
    return digitalocean_sim


@pytest.fixture
def scaleway_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scaleway_sim: ScalewaySim) -> ScalewaySim:
    for name in list(os.environ):
        if name.startswith("SCW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCW_CONFIG_PATH", str(tmp_path / "no-such-dir" / "config.yaml"))
    monkeypatch.setenv("SCW_API_URL", scaleway_sim.url)
    monkeypatch.setenv("SCW_ACCESS_KEY", SCW_ACCESS_KEY)
    monkeypatch.setenv("SCW_SECRET_KEY", SCW_SECRET_KEY)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", SCW_PROJECT_ID)
    monkeypatch.setenv("SCW_DEFAULT_ORGANIZATION_ID", SCW_PROJECT_ID)
    monkeypatch.setenv("SCW_DEFAULT_ZONE", "fr-par-2")
    monkeypatch.setenv("SCW_DEFAULT_REGION", "fr-par")
    return scaleway_sim
