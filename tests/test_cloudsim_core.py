"""The simulators' shared machinery, without any vendor SDK (runs in every test-matrix cell)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cloudsim import (
    SIMULATORS,
    FakeClock,
    FaultPlan,
    LinodeSim,
    LoopbackAllocator,
    NetGuard,
    ScaledClock,
    ScalewaySim,
)
from tests.cloudsim.ledger import DO_BILLING, LINODE_BILLING, SCALEWAY_BILLING, InstanceRecord, Ledger
from tests.cloudsim.netguard import _is_loopback_host
from tests.cloudsim.testing import require_spec

pytest_plugins = ["tests.conftest_cloudsim"]

REPO = Path(__file__).resolve().parents[1]


def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_fake_clock() -> None:
    clock = FakeClock(start=100.0)
    assert clock.advance(5) == 105.0 and clock.now() == 105.0
    clock.sleep(1.5)
    assert clock.now() == 106.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_scaled_clock_runs_fast() -> None:
    clock = ScaledClock(speed=1000)
    start = clock.now()
    time.sleep(0.01)
    assert clock.now() - start >= 10


def test_fault_plan_counts_calls_per_fault() -> None:
    plan = FaultPlan()
    second_and_third = plan.add(method="GET", path="/v4/regions", on_call=2, times=2, kind="503")
    every = plan.add(path="/v4/linode/instances/*", on_call=None, kind="drop")
    fired = [plan.check("GET", "/v4/regions") for _ in range(4)]
    assert [f.status if f else None for f in fired] == [None, 503, 503, None]
    assert second_and_third.seen == 4 and second_and_third.fired == 2
    assert plan.check("POST", "/v4/regions") is None  # method must match
    assert plan.check("DELETE", "/v4/linode/instances/7") is every
    assert plan.check("GET", "/v4/linode/instances/8/") is every  # trailing slash ignored
    assert plan.unfired() == []
    with pytest.raises(ValueError):
        plan.add(kind="explode")
    with pytest.raises(ValueError):
        plan.add(kind="slow", delay=3600)


def _record(billing: Any, clock: FakeClock) -> InstanceRecord:
    return InstanceRecord(
        vendor="x",
        id="1",
        type="t",
        region="r",
        name="n",
        tags=[],
        price_per_hour=2.0,
        currency="USD",
        created_at=clock.now(),
        clock=clock,
        billing=billing,
    )


def test_billing_rules() -> None:
    clock = FakeClock()
    linode, do, scw = (_record(b, clock) for b in (LINODE_BILLING, DO_BILLING, SCALEWAY_BILLING))
    scw.power_intervals.append([clock.now() + 10, None])
    clock.advance(30)
    assert linode.billed_seconds() == 3600  # started hours
    assert do.billed_seconds() == 60  # per second, 60 s minimum
    assert scw.billed_seconds() == 60  # started minutes while powered on (20 s here)
    clock.advance(3600)
    do.deleted_at = clock.now() - 3000
    assert do.billed_seconds() == pytest.approx(630)
    assert do.cost() == pytest.approx(630 / 3600 * 2.0)


def test_ledger_queries() -> None:
    clock = FakeClock()
    ledger = Ledger()
    for n in range(3):
        rec = _record(LINODE_BILLING, clock)
        rec.id, rec.tags = str(n), ["maider"] if n else []
        rec.schedule(clock.now(), "running")
        ledger.add(rec)
    ledger.get(0).deleted_at = clock.now()
    ledger.get(0).schedule(clock.now(), "gone")
    assert [r.id for r in ledger.running()] == ["1", "2"]
    assert [r.id for r in ledger.leaked(known_ids=[1])] == ["2"]
    assert [r.id for r in ledger.with_tag("maider")] == ["1", "2"]
    with pytest.raises(KeyError):
        ledger.get(9)


def test_loopback_allocator() -> None:
    alloc = LoopbackAllocator("127.5.0.0/24")
    ips = {alloc("v", str(n)) for n in range(100)}
    assert len(ips) == 100 and all(ip.startswith("127.5.0.") for ip in ips)
    assert "127.5.0.1" not in ips
    with pytest.raises(ValueError):
        LoopbackAllocator("10.0.0.0/24")
    with pytest.raises(ValueError):
        LinodeSim(host="0.0.0.0", validate=False)  # never listens beyond loopback


def test_pluggable_allocator_hooks_and_ssh_port(
    cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard
) -> None:
    created: list[str] = []
    with LinodeSim(
        clock=cloudsim_clock, validate=False, ip_allocator=lambda vendor, iid: "127.0.0.42"
    ) as sim:
        sim.on_create.append(lambda rec: created.append(rec.id))
        status, body = call(
            sim.url + "/linode/instances",
            "POST",
            {
                "type": "g1-gpu-rtx6000-1",
                "region": "us-east",
                "image": "linode/ubuntu24.04",
                "root_pass": "correct-horse-battery",
            },
            {"Authorization": "Bearer t"},
        )
        assert status == 200 and body["ipv4"] == ["127.0.0.42"]
        sim.set_ssh_port(body["id"], 2222)
        assert created == [str(body["id"])] and sim.instance(body["id"]).ssh_port == 2222


def test_unimplemented_route_is_a_violation(cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard) -> None:
    with ScalewaySim(clock=cloudsim_clock) as sim:
        status, body = call(sim.url + "/instance/v1/zones/fr-par-2/ips", headers={"x-auth-token": "t"})
        assert status == 501 and body["type"] == "not_implemented"
        assert [v.kind for v in sim.take_violations()] == ["unimplemented"]


def test_net_guard_refuses_non_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    attempted: list[Any] = []
    # The "real" connect under the guard is a recorder, so nothing can leave even if the guard failed.
    monkeypatch.setattr(socket.socket, "connect", lambda sock, addr: attempted.append(addr))
    guard = NetGuard()
    guard.install()
    try:
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("192.0.2.1", 443))
        with socket.socket() as s:
            s.connect(("127.0.0.1", 9))
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("api.scaleway.com", 443)
    finally:
        guard.uninstall()
    assert attempted == [("127.0.0.1", 9)]
    assert guard.blocked == ["connect 192.0.2.1:443", "lookup api.scaleway.com"]
    assert all(_is_loopback_host(h) for h in ("127.3.0.7", "localhost", "::1", None))
    assert not any(_is_loopback_host(h) for h in ("10.0.0.1", "api.linode.com", "0.0.0.0"))


def test_require_spec_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAIDER_SPECS_DIR", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="linode OpenAPI spec not found"):
        require_spec("linode")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_spec("digitalocean")


def test_missing_spec_turns_checks_off_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAIDER_SPECS_DIR", str(tmp_path))
    assert LinodeSim(validate=None).checker is None
    with pytest.raises(FileNotFoundError):
        LinodeSim(validate=True)


@pytest.mark.parametrize("vendor", sorted(SIMULATORS))
def test_cli_prints_the_base_url(vendor: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cloudsim", vendor, "--duration", "0.2", "--no-validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    prefix = {"linode": "/v4", "digitalocean": "/v2/", "scaleway": ""}[vendor]
    assert url.startswith("http://127.0.0.1:") and url.endswith(prefix or url[-1])
    assert json.loads(proc.stderr)["violations"] == []
