"""LinodeProvider through the real linode_api4 SDK against the Linode simulator (tests/cloudsim).

The contract suite (maider.testing.ProviderContract) runs first; the tests after it cover what is
Linode's own: paging, user data through the Metadata field, firewall rules on the wire, every
fault kind on every operation, the API URL override, timeouts, and the live catalog.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

linode_api4 = pytest.importorskip("linode_api4")
pytest.importorskip("maider_linode")
requests = pytest.importorskip("requests")  # comes with linode_api4

from maider.errors import MaiderError  # noqa: E402
from maider.provider import (  # noqa: E402 - after the importorskips, on purpose
    AuthError,
    CapacityError,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    ProviderError,
)
from maider.retry import TransientError  # noqa: E402
from maider.testing import TEST_PUBLIC_KEY, USER_DATA, ProviderContract  # noqa: E402
from maider_linode import catalog as embedded  # noqa: E402
from maider_linode.provider import LinodeProvider  # noqa: E402
from maider_linode.settings import LinodeSettings  # noqa: E402
from tests.cloudsim import FakeClock, LinodeSim, NetGuard  # noqa: E402
from tests.cloudsim.contract import SimCloud  # noqa: E402
from tests.cloudsim.linode import NO_CAPACITY_REASON  # noqa: E402
from tests.cloudsim.testing import validate_mode  # noqa: E402

TOKEN = "linode-provider-test-token-7c1e9a52"
BAD_TOKEN = "linode-wrong-token-0b5d33e1"
REGION = "us-east"
TYPE_ID = "g1-gpu-rtx6000-1"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICk5Glm7mQxeXFQODW0soBi39UPlznBOQCOhF5EMqakN other"

#: The contract's operation names → (method, path pattern) in the simulator's request log.
OPERATIONS: dict[str, tuple[str | None, str]] = {
    "create": ("POST", "/v4/linode/instances"),
    "get": ("GET", "/v4/linode/instances/*"),
    "list": ("GET", "/v4/linode/instances"),
    "delete": ("DELETE", "/v4/linode/instances/*"),
    "ssh_key": (None, "/v4/profile/sshkeys"),
    "firewall": (None, "^/v4/networking/firewalls"),
    "catalog": ("GET", "^/v4/(regions|linode/types)"),
}


def make_provider(
    sim: LinodeSim,
    token: str | None = TOKEN,
    settings_class: type[LinodeSettings] = LinodeSettings,
    **overrides: Any,
) -> LinodeProvider:
    fields: dict[str, Any] = {"api_url": sim.url, "max_attempts": 4, "retry_max_seconds": 10, **overrides}
    provider = LinodeProvider(settings_class(token=SecretStr(token) if token else None, **fields))
    provider.wall_time = sim.clock.now  # type: ignore[method-assign]  # token expiries in the sim's time
    return provider


@pytest.fixture
def cloud(linode_sim: LinodeSim, cloudsim_clock: FakeClock) -> SimCloud:
    linode_sim.token = TOKEN  # only this token is accepted, so bad_provider meets a real 401
    return SimCloud(linode_sim, cloudsim_clock, OPERATIONS, [TOKEN, BAD_TOKEN])


@pytest.fixture
def provider(cloud: SimCloud) -> LinodeProvider:
    return make_provider(cloud.sim)


@pytest.fixture
def bad_provider(cloud: SimCloud) -> LinodeProvider:
    return make_provider(cloud.sim, token=BAD_TOKEN)


class TestContract(ProviderContract):
    region = REGION
    type_id = TYPE_ID


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def spec(**overrides: Any) -> InstanceSpec:
    session = uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "name": f"maider-{session}",
        "region": REGION,
        "type_id": TYPE_ID,
        "user_data": USER_DATA,
        "tags": ("maider", f"maider-session-{session}"),
        "session_tag": f"maider-session-{session}",
        "ssh_public_key": TEST_PUBLIC_KEY,
    }
    fields.update(overrides)
    return InstanceSpec(**fields)


def leaked(sim: LinodeSim, known: set[str]) -> list[str]:
    return [r.id for r in sim.ledger.leaked(known_ids=known, vendor="linode")]


# --------------------------------------------------------------------------------------------
# instances: what reaches the VM record
# --------------------------------------------------------------------------------------------


def test_create_sends_user_data_keys_tags_and_firewall(provider: LinodeProvider, cloud: SimCloud) -> None:
    sim = cloud.sim
    user_data = "#cloud-config\nwrite_files:\n  - path: /etc/maider\n    content: 'ünïcode ✓'\n"
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    s = spec(user_data=user_data, firewall_id=fw)
    vm = provider.create_instance(s)

    rec = sim.instance(vm.id)
    assert rec.user_data == user_data  # decoded by the simulator exactly as Linode's Metadata does
    wire = sim.log.find("POST", "/v4/linode/instances")[-1].body
    assert base64.b64decode(wire["metadata"]["user_data"]).decode() == user_data
    assert rec.tags == ["maider", s.session_tag] and vm.tags == ("maider", s.session_tag)
    assert rec.attrs["authorized_keys"] == [TEST_PUBLIC_KEY]
    assert rec.attrs["firewalls"] == [int(fw)]
    assert (rec.name, rec.type, rec.region, rec.image) == (s.name, TYPE_ID, REGION, "linode/ubuntu24.04")
    assert wire["booted"] is True and wire["firewall_id"] == int(fw)
    assert "root_pass" not in wire  # key-only login: no password is ever generated or sent
    assert vm.status is InstanceStatus.PROVISIONING and vm.raw_status == "provisioning"
    assert vm.created_at is not None and vm.created_at.tzinfo is not None
    provider.delete_instance(vm.id)
    assert leaked(sim, set()) == []


def test_image_override_and_default(cloud: SimCloud) -> None:
    provider = make_provider(cloud.sim, image="linode/ubuntu22.04")
    a = provider.create_instance(spec())
    b = provider.create_instance(spec(image="linode/debian12"))
    assert (cloud.sim.instance(a.id).image, cloud.sim.instance(b.id).image) == (
        "linode/ubuntu22.04",
        "linode/debian12",
    )


def test_oversized_user_data_is_refused_before_any_request(provider: LinodeProvider, cloud: SimCloud) -> None:
    with pytest.raises(ProviderError, match="65535"):
        provider.create_instance(spec(user_data="#" * 65536))
    assert len(cloud.sim.log) == 0


def test_region_without_metadata_is_refused(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.sim.tamper(
        lambda body: {**body, "capabilities": [c for c in body["capabilities"] if c != "Metadata"]},
        method="GET",
        path="/v4/regions/us-east",
    )
    with pytest.raises(ProviderError, match="Metadata"):
        provider.create_instance(spec())
    assert cloud.sim.ledger.instances() == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("offline", InstanceStatus.STOPPED),
        ("shutting_down", InstanceStatus.STOPPING),
        ("rebooting", InstanceStatus.BOOTING),
        ("busy", InstanceStatus.BOOTING),
        ("deleting", InstanceStatus.DELETING),
        ("migrating", InstanceStatus.PROVISIONING),
        ("stopped", InstanceStatus.STOPPED),
        ("billing_suspension", InstanceStatus.ERROR),
    ],
)
def test_status_mapping(provider: LinodeProvider, cloud: SimCloud, raw: str, status: InstanceStatus) -> None:
    vm = provider.create_instance(spec())
    cloud.sim.tamper(lambda body: {**body, "status": raw}, method="GET", path="/v4/linode/instances/*")
    got = provider.get_instance(vm.id)
    assert (got.status, got.raw_status) == (status, raw)


def test_running_instance_reports_its_public_ipv4_not_the_private_one(
    provider: LinodeProvider, cloud: SimCloud
) -> None:
    vm = provider.create_instance(spec())
    cloud.advance(120)
    public = cloud.sim.instance(vm.id).ipv4
    # Linode lists private addresses (192.168.128.0/17) in the same array, sometimes first.
    cloud.sim.tamper(
        lambda body: {**body, "ipv4": ["192.168.139.7", *body["ipv4"]]},
        method="GET",
        path="/v4/linode/instances/*",
    )
    got = provider.get_instance(vm.id)
    assert got.status is InstanceStatus.RUNNING and got.public_ipv4 == public


def test_malformed_id_is_not_found_without_a_request(provider: LinodeProvider, cloud: SimCloud) -> None:
    with pytest.raises(NotFound):
        provider.get_instance("i-not-a-linode")
    provider.delete_instance("i-not-a-linode")
    assert provider.get_instance_status("12x") is InstanceStatus.DELETED
    assert len(cloud.sim.log) == 0


def test_a_failing_delete_is_not_read_as_deleted(cloud: SimCloud) -> None:
    provider = make_provider(cloud.sim, max_attempts=2)
    vm = provider.create_instance(spec())
    cloud.sim.faults.add(method="DELETE", path="/v4/linode/instances/*", kind="server_error", times=None)
    with pytest.raises(TransientError):
        provider.delete_instance(vm.id)
    assert vm.id in cloud.running_ids()
    cloud.sim.faults.clear()
    provider.delete_instance(vm.id)
    assert cloud.running_ids() == set()


def test_sold_out_region_is_a_capacity_error(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.sim.set_available(REGION, TYPE_ID, False)  # the simulator's own sell-out, no fault
    with pytest.raises(CapacityError) as info:
        provider.create_instance(spec())
    assert "not currently available" in str(info.value) and info.value.status == 403
    assert not isinstance(info.value, AuthError)
    assert cloud.sim.ledger.instances() == []
    assert cloud.sim.log.count("POST", "/v4/linode/instances") == 1  # not retried


def test_permission_403_is_an_auth_error(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.sim.faults.add(
        method="GET", path="/v4/linode/instances", kind="no_capacity", message="Unauthorized"
    )
    with pytest.raises(AuthError, match="LINODE_TOKEN"):
        provider.list_instances("maider")


# --------------------------------------------------------------------------------------------
# paging
# --------------------------------------------------------------------------------------------


def test_listing_beyond_one_page(cloud: SimCloud) -> None:
    """30 tagged Linodes, pages of 25 (the API's smallest): one request per page, never a short list."""
    sim = cloud.sim
    provider = make_provider(sim, page_size=25)
    ids = {provider.create_instance(spec()).id for _ in range(30)}

    def listed() -> tuple[set[str], list[Any]]:
        sim.log.clear()
        found = {vm.id for vm in provider.list_instances("maider")}
        return found, [e.query.get("page") for e in sim.log.find("GET", "/v4/linode/instances")]

    # One request per page, the filter on each, the page size asked for on each.
    assert listed() == (ids, [None, ["2"]])
    sent = sim.log.find("GET", "/v4/linode/instances")
    assert {e.headers["x-filter"] for e in sent} == {'{"tags": "maider"}'}
    assert {e.query["page_size"][0] for e in sent} == {"25"}

    # A failed page is asked for again, alone.
    sim.faults.add(method="GET", path="/v4/linode/instances", on_call=2, kind="rate_limit", retry_after=0)
    assert listed() == (ids, [None, ["2"], ["2"]])

    # Page 1 and page 2 disagree on the total (a Linode came or went): read again from the start.
    tampering = {"grow": 0, "short": 0}

    def tamper(body: Any) -> Any:
        if tampering["grow"] and body["page"] == 1:
            tampering["grow"] -= 1
            return {**body, "results": body["results"] + 1}
        if tampering["short"] and body["page"] == 2:  # a page that lost an item but kept the totals
            tampering["short"] -= 1
            return {**body, "data": body["data"][:-1]}
        return body

    sim.tamper(tamper, method="GET", path="/v4/linode/instances")
    tampering["grow"] = 1
    assert listed() == (ids, [None, ["2"], None, ["2"]])
    tampering["short"] = 1
    assert listed() == (ids, [None, ["2"], None, ["2"]])
    # ... and a listing that never settles is an error, not a short answer.
    tampering["short"] = 99
    with pytest.raises(ProviderError, match="kept changing"):
        provider.list_instances("maider")


def test_tag_filter_is_exact(provider: LinodeProvider, cloud: SimCloud) -> None:
    s = spec()
    vm = provider.create_instance(s)
    assert provider.list_instances(s.session_tag[:-1]) == []  # a prefix is another tag
    assert [i.id for i in provider.list_instances(s.session_tag)] == [vm.id]


# --------------------------------------------------------------------------------------------
# SSH keys and firewalls
# --------------------------------------------------------------------------------------------


def test_ssh_key_matched_by_key_material(provider: LinodeProvider, cloud: SimCloud) -> None:
    first = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    body = TEST_PUBLIC_KEY.rsplit(" ", 1)[0]
    assert provider.ensure_ssh_key(body + " another-comment", "other-label") == first
    other = provider.ensure_ssh_key(OTHER_KEY, "maider")
    assert other != first
    assert [k["ssh_key"] for k in cloud.sim.ssh_keys] == [TEST_PUBLIC_KEY, OTHER_KEY]
    assert cloud.sim.log.count("POST", "/v4/profile/sshkeys") == 2


def test_spec_with_key_id_only_installs_that_key(provider: LinodeProvider, cloud: SimCloud) -> None:
    key_id = provider.ensure_ssh_key(OTHER_KEY, "maider")
    vm = provider.create_instance(spec(ssh_public_key="", ssh_key_id=key_id))
    assert cloud.sim.instance(vm.id).attrs["authorized_keys"] == [OTHER_KEY]


def test_a_key_path_is_never_read(provider: LinodeProvider, cloud: SimCloud, tmp_path: Path) -> None:
    # linode_api4 would read a path given as a key and send the file's content.
    path = tmp_path / "id_ed25519.pub"
    path.write_text(TEST_PUBLIC_KEY)
    with pytest.raises(MaiderError):
        provider.ensure_ssh_key(str(path), "maider")
    with pytest.raises(MaiderError):
        provider.create_instance(spec(ssh_public_key=str(path)))
    sk_key = "sk-ssh-ed25519@openssh.com " + TEST_PUBLIC_KEY.split()[1]
    with pytest.raises(ProviderError, match="ed25519, RSA or ECDSA"):
        provider.ensure_ssh_key(sk_key, "maider")
    assert len(cloud.sim.log) == 0


def ssh_rule(ipv4: list[str], ipv6: list[str]) -> dict[str, Any]:
    return {
        "label": "maider-ssh",
        "action": "ACCEPT",
        "protocol": "TCP",
        "ports": "22",
        "addresses": {"ipv4": ipv4, "ipv6": ipv6},
    }


def test_firewall_rules_on_the_wire(provider: LinodeProvider, cloud: SimCloud) -> None:
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32", "2001:db8::1/64"], ("maider", "x"))
    posted = cloud.sim.log.find("POST", "/v4/networking/firewalls")
    assert len(posted) == 1
    assert posted[0].body == {
        "label": "maider-ssh",
        "tags": ["maider", "x"],
        "rules": {
            "inbound_policy": "DROP",
            "inbound": [ssh_rule(["203.0.113.7/32"], ["2001:db8::/64"])],
            "outbound_policy": "ACCEPT",
            "outbound": [],
        },
    }
    assert cloud.sim.firewalls[int(fw)]["tags"] == ["maider", "x"]


def test_bad_cidr_is_refused_before_any_request(provider: LinodeProvider, cloud: SimCloud) -> None:
    with pytest.raises(ProviderError, match="CIDR"):
        provider.ensure_firewall("maider-ssh", ["203.0.113.999/32"], ())
    with pytest.raises(ProviderError, match="at least one"):
        provider.ensure_firewall("maider-ssh", [], ())
    assert len(cloud.sim.log) == 0


@pytest.fixture
def rules_sim(cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard) -> Iterator[LinodeSim]:
    sim = LinodeSim(clock=cloudsim_clock, validate=validate_mode("linode"), token=TOKEN)
    with sim:
        yield sim
    sim.assert_no_violations()


def test_existing_firewall_gets_its_rules_fixed(rules_sim: LinodeSim) -> None:
    provider = make_provider(rules_sim)
    first = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    # Unchanged: found by label and left alone (no PUT).
    assert provider.ensure_firewall("maider-ssh", ["203.0.113.7"], ("maider",)) == first
    assert rules_sim.log.count("PUT", "^/v4/networking/firewalls/") == 0
    # The user's address moved: the same firewall, its rules replaced.
    assert provider.ensure_firewall("maider-ssh", ["198.51.100.0/24"], ("maider",)) == first
    put = rules_sim.log.find("PUT", "^/v4/networking/firewalls/")
    assert [e.path for e in put] == [f"/v4/networking/firewalls/{first}/rules"]
    assert put[0].body["inbound"] == [ssh_rule(["198.51.100.0/24"], [])]
    assert put[0].body["inbound_policy"] == "DROP" and put[0].body["outbound_policy"] == "ACCEPT"
    assert len(rules_sim.firewalls) == 1


# --------------------------------------------------------------------------------------------
# faults: every kind on every operation, and nothing left behind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rate_limit", "server_error", "drop", "lost_response"])
@pytest.mark.parametrize("operation", ["create", "get", "list", "delete", "ssh_key", "firewall", "catalog"])
def test_every_fault_is_survived_without_leaks(cloud: SimCloud, operation: str, kind: str) -> None:
    sim = cloud.sim
    provider = make_provider(sim, retry_initial_wait=0.005, retry_max_wait=0.02)
    known: set[str] = set()
    s = spec()
    target = provider.create_instance(spec()) if operation in ("get", "delete") else None
    if target is not None:
        known.add(target.id)
    extra = {"retry_after": 0} if kind == "rate_limit" else {}
    if operation in ("ssh_key", "firewall"):
        # Both the lookup and the upload fail once: a lost upload must not become two objects.
        path = OPERATIONS[operation][1]
        sim.faults.add(method="GET", path=path, kind=kind, **extra)
        sim.faults.add(method="POST", path=path, kind=kind, **extra)
    else:
        cloud.fail(operation, kind)

    if operation == "create":
        vm = provider.create_instance(s)
        known.add(vm.id)
        assert [r.id for r in sim.ledger.with_tag(s.session_tag)] == [vm.id]
    elif operation == "get":
        assert target is not None and provider.get_instance(target.id).id == target.id
    elif operation == "list":
        assert provider.list_instances("maider-nothing-here") == []
    elif operation == "delete":
        assert target is not None
        provider.delete_instance(target.id)
        assert target.id not in cloud.running_ids()
    elif operation == "ssh_key":
        key_id = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
        assert [str(k["id"]) for k in sim.ssh_keys] == [key_id]
    elif operation == "firewall":
        fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
        assert [str(f) for f in sim.firewalls] == [fw]
    else:
        assert TYPE_ID in provider.fetch_catalog().types

    assert sim.faults.unfired() == []
    assert leaked(sim, known) == []


def test_rate_limit_waits_for_retry_after(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.sim.faults.add(method="GET", path="/v4/linode/instances", kind="rate_limit", retry_after=1)
    started = time.monotonic()
    assert provider.list_instances("maider") == []
    assert time.monotonic() - started >= 1.0


def test_retries_stop_at_max_attempts(cloud: SimCloud) -> None:
    provider = make_provider(cloud.sim, max_attempts=3)
    cloud.sim.faults.add(
        method="GET", path="/v4/linode/instances", kind="rate_limit", retry_after=0, times=None
    )
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert info.value.status == 429
    assert cloud.sim.log.count("GET", "/v4/linode/instances") == 3


def test_request_timeout_applies(cloud: SimCloud) -> None:
    provider = make_provider(cloud.sim, request_timeout=0.2, max_attempts=1)
    cloud.sim.faults.add(method="GET", path="/v4/linode/instances", kind="slow", delay=2.0, times=None)
    started = time.monotonic()
    with pytest.raises(TransientError, match="Timeout"):
        provider.list_instances("maider")
    assert time.monotonic() - started < 1.5  # the SDK alone would have waited for the answer


# --------------------------------------------------------------------------------------------
# secrets, URLs, network
# --------------------------------------------------------------------------------------------


def full_session(provider: LinodeProvider, clock: FakeClock) -> None:
    assert provider.check_credentials().ok
    provider.fetch_catalog()
    key = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    s = spec(ssh_key_id=key, firewall_id=fw)
    vm = provider.create_instance(s)
    clock.advance(120)
    assert provider.get_instance(vm.id).status is InstanceStatus.RUNNING
    assert [i.id for i in provider.list_instances(s.session_tag)] == [vm.id]
    provider.delete_instance(vm.id)
    provider.delete_instance(vm.id)
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED


def test_api_url_override_reaches_every_request(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAIDER_LINODE_TOKEN", TOKEN)
    monkeypatch.setenv("MAIDER_LINODE_API_URL", linode_sim.url + "/")  # a trailing slash is fine
    monkeypatch.setenv("MAIDER_LINODE_REQUEST_TIMEOUT", "7.5")
    sent: list[tuple[str, Any]] = []
    real_send = requests.adapters.HTTPAdapter.send

    def spy(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        timeout = kwargs.get("timeout", args[1] if len(args) > 1 else None)
        sent.append((request.url, timeout))
        return real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", spy)
    provider = LinodeProvider()  # settings from the environment, as the CLI loads them
    full_session(provider, cloudsim_clock)
    assert len(sent) == len(linode_sim.log) > 10
    assert all(url.startswith(linode_sim.url + "/") and "//" not in url[8:] for url, _ in sent)
    assert {timeout for _, timeout in sent} == {7.5}
    assert {e.client for e in linode_sim.log} == {"127.0.0.1"}


def test_no_token_anywhere(provider: LinodeProvider, bad_provider: LinodeProvider, cloud: SimCloud) -> None:
    full_session(provider, cloud.clock)
    errors: list[str] = []
    check = bad_provider.check_credentials()
    assert not check.ok and "LINODE_TOKEN" in check.reason
    errors.append(check.reason)
    for call in (
        lambda: bad_provider.list_instances("maider"),
        lambda: bad_provider.create_instance(spec()),
        lambda: bad_provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider"),
        lambda: provider.get_instance("99999999"),
    ):
        with pytest.raises(ProviderError) as info:
            call()
        errors.append(str(info.value))
        assert "\n" not in str(info.value)
    for secret in (TOKEN, BAD_TOKEN):
        assert not cloud.sim.log.contains(secret, include_responses=True)
        assert all(secret not in text for text in errors)
        assert all(secret not in text for text in cloud.request_texts())
    assert all(e.authenticated or e.path.startswith("/v4/regions") for e in cloud.sim.log if e.status != 401)


def test_missing_token_fails_without_a_request(linode_sim: LinodeSim) -> None:
    provider = make_provider(linode_sim, token=None)
    assert not provider.has_credentials()
    check = provider.check_credentials()
    assert not check.ok and "LINODE_TOKEN" in check.reason
    with pytest.raises(AuthError, match="LINODE_TOKEN"):
        provider.list_instances("maider")
    assert len(linode_sim.log) == 0


def test_default_api_url_is_linodes_and_blocked_here(
    cloudsim_net_guard: NetGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAIDER_LINODE_API_URL")  # tests/conftest.py points it at a closed port
    provider = LinodeProvider(LinodeSettings(token=SecretStr(TOKEN), max_attempts=1))
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert TOKEN not in str(info.value)
    assert any("api.linode.com" in b for b in cloudsim_net_guard.clear())


# --------------------------------------------------------------------------------------------
# live catalog
# --------------------------------------------------------------------------------------------


def test_live_catalog_follows_availability(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.sim.set_available("us-east", TYPE_ID, False)
    live = provider.fetch_catalog()
    assert live.source == "live" and live.provider == "linode"
    assert set(live.types) == set(embedded.GPU_TYPES)
    rtx = live.types[TYPE_ID]
    assert set(rtx.regions) == set(embedded.RTX6000_REGIONS) - {"us-east"}
    assert live.types["g2-gpu-rtx4000a1-s"].regions == tuple(sorted(embedded.RTX4000_REGIONS))
    assert rtx.gpu is embedded.QUADRO_RTX_6000  # the chip's details come from the embedded catalog
    assert (rtx.gpu_count, rtx.vcpus, rtx.ram_gb, rtx.disk_gb) == (1, 8, 32, 640)
    assert rtx.hourly_price.amount == 1.5 and rtx.hourly_price.currency == "USD"
    assert "us-west" not in live.regions  # no GPU Linodes there
    assert live.regions["us-ord"].country == "US"
    gpu_filter = cloud.sim.log.find("GET", "/v4/linode/types")
    assert [e.headers["x-filter"] for e in gpu_filter] == ['{"class": "gpu"}']


def test_live_catalog_reads_region_prices(provider: LinodeProvider, cloud: SimCloud) -> None:
    def priced(body: Any) -> Any:  # Linode's reported shape: $0 base, real prices per region
        for t in body["data"]:
            if t["id"] == TYPE_ID:
                t["price"] = {"hourly": 0.0, "monthly": 0.0}
                t["region_prices"] = [
                    {"id": "us-east", "hourly": 1.5, "monthly": 1000.0},
                    {"id": "ap-west", "hourly": 1.8, "monthly": 1200.0},
                ]
        return body

    cloud.sim.tamper(priced, method="GET", path="/v4/linode/types")
    rtx = provider.fetch_catalog().types[TYPE_ID]
    assert rtx.hourly_price.amount == 1.5
    assert rtx.price_in("ap-west").amount == 1.8 and rtx.price_in("us-east").amount == 1.5
    assert dict(rtx.region_prices) == {"ap-west": rtx.price_in("ap-west")}


def test_live_catalog_drops_regions_without_metadata_and_unknown_gpus(
    provider: LinodeProvider, cloud: SimCloud
) -> None:
    def no_metadata(body: Any) -> Any:
        for r in body["data"]:
            if r["id"] == "ap-west":
                r["capabilities"] = [c for c in r["capabilities"] if c != "Metadata"]
        return body

    def new_chip(body: Any) -> Any:
        for t in body["data"]:
            if t["id"] == "g2-gpu-rtx4000a1-s":
                t["id"], t["label"] = "g9-gpu-mystery-1", "Mystery GPU x1"
        return body

    cloud.sim.tamper(no_metadata, method="GET", path="/v4/regions")
    cloud.sim.tamper(new_chip, method="GET", path="/v4/linode/types")
    live = provider.fetch_catalog()
    assert "ap-west" not in live.regions and "ap-west" not in live.types[TYPE_ID].regions
    assert "g9-gpu-mystery-1" not in live.types
    assert "ap-west" in live.note and "g9-gpu-mystery-1" in live.note


def test_capacity_message_is_the_vendors(provider: LinodeProvider, cloud: SimCloud) -> None:
    cloud.fail("create", "no_capacity")
    with pytest.raises(CapacityError) as info:
        provider.create_instance(spec())
    assert NO_CAPACITY_REASON.split(".")[0] in str(info.value)


# --------------------------------------------------------------------------------------------
# the watchdog's credential (self_destruct): a minted, scoped, expiring personal access token
# --------------------------------------------------------------------------------------------


def _running(provider: LinodeProvider, cloud: SimCloud) -> Any:
    vm = provider.create_instance(spec())
    cloud.advance(120)
    return provider.get_instance(vm.id)


def test_self_destruct_mints_a_linodes_only_token_that_expires(
    provider: LinodeProvider, cloud: SimCloud
) -> None:
    from maider.testing import run_self_destruct

    vm = _running(provider, cloud)
    destruct = provider.self_destruct(vm, valid_for_s=7200, label="maider-watchdog-abc")
    sent = cloud.sim.log.find("POST", "/v4/profile/tokens")[-1].body
    assert sent["scopes"] == "linodes:read_write" and sent["label"] == "maider-watchdog-abc"
    expected_expiry = dt.datetime.fromtimestamp(int(cloud.clock.now() + 7200), tz=dt.timezone.utc)
    assert sent["expiry"] == expected_expiry.strftime("%Y-%m-%dT%H:%M:%S")
    assert destruct.expires_at == expected_expiry
    [call] = destruct.calls
    assert (call.method, call.url) == ("DELETE", f"{cloud.sim.url}/linode/instances/{vm.id}")
    [minted] = cloud.sim.tokens.values()
    assert call.headers == {"Authorization": f"Bearer {minted.token}"} and destruct.secrets == (minted.token,)
    assert destruct.revoke_handle == str(minted.id)
    assert "every other Linode" in destruct.credential and minted.token not in destruct.credential
    assert TOKEN not in json.dumps(call.to_dict())

    # The VM, with only this token, deletes itself: billing stops.
    assert run_self_destruct(destruct) == [200]
    assert cloud.sim.instance(vm.id).deleted_at is not None and vm.id not in cloud.running_ids()
    provider.delete_instance(vm.id)  # `down` afterwards: nothing left, no error
    provider.revoke_self_destruct(destruct.revoke_handle or "")
    assert cloud.sim.log.count("DELETE", f"/v4/profile/tokens/{minted.id}") == 1
    provider.revoke_self_destruct(destruct.revoke_handle or "")  # a 404: already revoked
    assert minted.revoked


def test_self_destruct_token_can_do_nothing_beyond_linodes(provider: LinodeProvider, cloud: SimCloud) -> None:
    vm = _running(provider, cloud)
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-scope")
    narrow = linode_api4.LinodeClient(destruct.secrets[0], base_url=cloud.sim.url, retry=False)
    for attempt in (
        lambda: narrow.profile.token_create(label="escalate", scopes="*"),
        lambda: narrow.profile.token_create(label="same", scopes="linodes:read_write"),
        lambda: list(narrow.profile.ssh_keys()),
        lambda: list(narrow.networking.firewalls()),
        lambda: narrow.profile(),
    ):
        with pytest.raises(linode_api4.ApiError) as info:
            attempt()
        assert info.value.status == 401
        assert "not authorized to use this endpoint" in str(info.value)
    assert len(cloud.sim.tokens) == 1  # nothing minted by the narrow token
    # What the scope does allow, and the docs say so: every Linode of the account.
    assert [i.id for i in narrow.linode.instances()] == [int(vm.id)]


def test_self_destruct_refused_when_the_token_may_not_mint(provider: LinodeProvider, cloud: SimCloud) -> None:
    from maider.provider import SelfDestructUnavailable

    vm = _running(provider, cloud)
    cloud.sim.main_scopes = "linodes:read_write firewall:read_write"  # no account scope
    with pytest.raises(SelfDestructUnavailable) as info:
        provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-x")
    message = str(info.value)
    assert "Account read/write" in message and "\n" not in message and TOKEN not in message
    assert cloud.sim.tokens == {}


def test_self_destruct_lost_answer_revokes_the_unreadable_token(
    provider: LinodeProvider, cloud: SimCloud
) -> None:
    vm = _running(provider, cloud)
    cloud.sim.faults.add(method="POST", path="/v4/profile/tokens", kind="lost_response")
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-lost")
    lost, kept = sorted(cloud.sim.tokens.values(), key=lambda t: t.id)
    assert lost.revoked and not kept.revoked  # the token whose secret never arrived is revoked
    assert destruct.secrets == (kept.token,)


def test_self_destruct_secrets_stay_out_of_errors(provider: LinodeProvider, cloud: SimCloud) -> None:
    vm = _running(provider, cloud)
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-err")
    minted = destruct.secrets[0]
    assert minted not in repr(destruct) and minted not in str(destruct)
    cloud.sim.faults.add(method="DELETE", path="/v4/profile/tokens/*", kind="500", times=10)
    with pytest.raises(ProviderError) as info:
        provider.revoke_self_destruct(destruct.revoke_handle or "")
    assert minted not in str(info.value) and TOKEN not in str(info.value)
    assert not any(minted in text for text in cloud.request_texts())


def test_linode_poweroff_does_not_stop_billing() -> None:
    assert LinodeProvider.poweroff_stops_billing is False
