"""DigitalOceanProvider through the real python-digitalocean SDK, against the DigitalOcean simulator.

Every test runs with ``DIGITALOCEAN_END_POINT`` unset (the SDK's own way to be pointed elsewhere):
the provider must reach the simulator through its ``api_url`` setting alone, and the net guard
fails any test that tried to reach api.digitalocean.com. The simulator checks every exchange
against DigitalOcean's OpenAPI spec and fails the test at teardown on a violation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

digitalocean = pytest.importorskip("digitalocean")
pytest.importorskip("maider_digitalocean")

import requests  # noqa: E402 - comes with the SDK

from maider.provider import (  # noqa: E402
    AuthError,
    CapacityError,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    ProviderError,
    VMInstance,
)
from maider.retry import TransientError  # noqa: E402
from maider.sshkeys import fingerprint_md5  # noqa: E402
from maider.testing import TEST_PUBLIC_KEY, USER_DATA, ProviderContract  # noqa: E402
from maider_digitalocean import catalog as embedded_catalog  # noqa: E402
from maider_digitalocean.provider import DigitalOceanProvider  # noqa: E402
from maider_digitalocean.settings import DigitalOceanSettings, normalize_api_url  # noqa: E402
from tests.cloudsim import DigitalOceanSim, FakeClock, NetGuard  # noqa: E402
from tests.cloudsim.catalogs import DOSize  # noqa: E402
from tests.cloudsim.contract import SimCloud  # noqa: E402
from tests.cloudsim.core import Reply, Request  # noqa: E402

# python-digitalocean 1.17 calls jsonpickle in a way it deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:keys will default to True:DeprecationWarning")

TOKEN = "dop_v1_5ecre7t0ken0f7he5imu1a7edacc0un7000000000000000000000000000000"
BAD_TOKEN = "dop_v1_wr0ngt0ken000000000000000000000000000000000000000000000000000"
H100 = "gpu-h100x1-80gb"
CIDR = "203.0.113.7/32"

#: Contract operation → (HTTP method or None for any, path regex) on DigitalOcean's API.
OPERATIONS: dict[str, tuple[str | None, str]] = {
    "create": ("POST", r"^/v2/droplets/?$"),
    "get": ("GET", r"^/v2/droplets/\d+/?$"),
    "list": ("GET", r"^/v2/droplets/?$"),
    "delete": ("DELETE", r"^/v2/droplets/\d+/?$"),
    "ssh_key": (None, r"^/v2/account/keys"),
    "firewall": (None, r"^/v2/firewalls"),
    "catalog": ("GET", r"^/v2/(sizes|regions)/?$"),
}


def make_provider(sim: DigitalOceanSim, token: str | None = TOKEN, **settings: Any) -> DigitalOceanProvider:
    fields: dict[str, Any] = {"api_url": sim.url, "max_attempts": 4, "retry_max_seconds": 10, **settings}
    secret = SecretStr(token) if token is not None else None
    return DigitalOceanProvider(DigitalOceanSettings(token=secret, **fields))


@pytest.fixture
def sim(digitalocean_sim: DigitalOceanSim, monkeypatch: pytest.MonkeyPatch) -> DigitalOceanSim:
    # The SDK's environment variables stay unset: api_url alone must carry every request.
    for name in (
        "DIGITALOCEAN_END_POINT",
        "DIGITALOCEAN_ACCESS_TOKEN",
        "PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC",
    ):
        monkeypatch.delenv(name, raising=False)
    digitalocean_sim.token = TOKEN  # only the right token is accepted
    return digitalocean_sim


@pytest.fixture
def cloud(sim: DigitalOceanSim, cloudsim_clock: FakeClock) -> SimCloud:
    return SimCloud(sim, cloudsim_clock, OPERATIONS, [TOKEN, BAD_TOKEN])


#: The user's custom-scoped token for the watchdog (droplet:read and droplet:delete only).
WATCHDOG_TOKEN = "dop_v1_wa7chd0g0n1yde1e7e0000000000000000000000000000000000000000000"


@pytest.fixture
def provider(sim: DigitalOceanSim) -> DigitalOceanProvider:
    sim.add_token(WATCHDOG_TOKEN, ["droplet:read", "droplet:delete"])
    return make_provider(sim, watchdog_token=SecretStr(WATCHDOG_TOKEN))


@pytest.fixture
def bad_provider(sim: DigitalOceanSim) -> DigitalOceanProvider:
    return make_provider(sim, token=BAD_TOKEN)


class TestContract(ProviderContract):
    region: ClassVar[str] = "tor1"
    type_id: ClassVar[str] = H100


# -- helpers -------------------------------------------------------------------------------------


def spec(session: str, **overrides: Any) -> InstanceSpec:
    fields: dict[str, Any] = {
        "name": f"maider-{session}",
        "region": "tor1",
        "type_id": H100,
        "user_data": USER_DATA,
        "tags": ("maider", f"maider-session-{session}"),
        "session_tag": f"maider-session-{session}",
        "ssh_public_key": TEST_PUBLIC_KEY,
    }
    fields.update(overrides)
    return InstanceSpec(**fields)


def create_many(provider: DigitalOceanProvider, n: int) -> list[VMInstance]:
    return [provider.create_instance(spec(f"many{i}")) for i in range(n)]


def droplet_pages(sim: DigitalOceanSim, **query: str) -> list[Any]:
    """The GET /v2/droplets requests whose query has these values, in order."""
    return [
        e for e in sim.log.find("GET", "/v2/droplets") if all(e.query.get(k) == [v] for k, v in query.items())
    ]


@pytest.fixture
def outgoing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every URL requests sends, whatever the host (python-digitalocean uses both Session and
    module-level requests.post; both end in HTTPAdapter.send)."""
    sent: list[str] = []
    real_send = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(request.url))
        return real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    yield sent


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8/v2/", "http://127.0.0.1:8/v2/"),
        ("http://127.0.0.1:8/v2", "http://127.0.0.1:8/v2/"),
        ("http://127.0.0.1:8", "http://127.0.0.1:8/v2/"),
        ("https://proxy.example/do/", "https://proxy.example/do/v2/"),
    ],
)
def test_api_url_is_normalized_to_the_v2_root(given: str, expected: str) -> None:
    assert normalize_api_url(given) == expected
    assert DigitalOceanSettings(api_url=given).end_point == expected


def test_default_end_point_is_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAIDER_DIGITALOCEAN_API_URL")  # the isolated fixture points it at a closed port
    assert DigitalOceanSettings().end_point == "https://api.digitalocean.com/v2/"


# -- the end point reaches every request -----------------------------------------------------------


def test_api_url_reaches_every_request_with_the_sdk_variable_unset(
    sim: DigitalOceanSim, cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard, outgoing: list[str]
) -> None:
    assert "DIGITALOCEAN_END_POINT" not in os.environ
    provider = make_provider(sim, api_url=sim.root_url + "/v2")  # no trailing slash: normalized
    provider.page_size = 2  # so lists take several pages (links.pages.next)
    assert provider.check_credentials().ok
    key_id = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    fw = provider.ensure_firewall("maider-ssh", [CIDR], ("maider",))
    assert provider.ensure_firewall("maider-ssh", [CIDR], ("maider",)) == fw
    vms = [
        provider.create_instance(spec("a", firewall_id=fw)),  # SSH key by id
        provider.create_instance(spec("b", ssh_key_id=key_id)),
        provider.create_instance(spec("c")),
    ]
    cloudsim_clock.advance(60)
    assert provider.get_instance(vms[0].id).status is InstanceStatus.RUNNING
    assert len(provider.list_instances("maider")) == 3
    assert provider.fetch_catalog() is not None
    for vm in vms:
        provider.delete_instance(vm.id)
    provider.delete_instance(vms[0].id)  # 404: already gone
    assert provider.get_instance_status(vms[0].id) is InstanceStatus.DELETED

    # Every request the SDK sent went to the simulator, and the simulator saw every one of them.
    assert outgoing and all(url.startswith(sim.url) for url in outgoing), outgoing
    assert len(outgoing) == len(sim.log)
    assert all(e.authenticated for e in sim.log)
    assert len(droplet_pages(sim, type="gpus")) == 2  # 3 GPU droplets, 2 per page
    assert cloudsim_net_guard.blocked == []


def test_explicit_end_point_and_token_beat_the_sdk_environment(
    sim: DigitalOceanSim, monkeypatch: pytest.MonkeyPatch, outgoing: list[str]
) -> None:
    # A user's own SDK settings (another account, another endpoint) must not leak in.
    monkeypatch.setenv("DIGITALOCEAN_END_POINT", "http://127.0.0.1:9/v2/")
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", BAD_TOKEN)
    provider = make_provider(sim)
    vm = provider.create_instance(spec("env"))
    assert [i.id for i in provider.list_instances("maider")] == [vm.id]
    provider.delete_instance(vm.id)
    assert all(url.startswith(sim.url) for url in outgoing)
    assert all(e.authenticated for e in sim.log)  # the simulator accepts TOKEN only


def test_next_links_naming_another_host_stay_on_the_api_url(
    sim: DigitalOceanSim, cloudsim_net_guard: NetGuard, outgoing: list[str]
) -> None:
    provider = make_provider(sim)
    provider.page_size = 2
    ids = {vm.id for vm in create_many(provider, 5)}

    def elsewhere(body: Any) -> Any:
        pages = body.get("links", {}).get("pages", {})
        for rel, url in pages.items():
            pages[rel] = re.sub(r"^http://127\.0\.0\.1:\d+", "https://api.digitalocean.com", url)
        return body

    sim.tamper(elsewhere, method="GET", path="/v2/droplets")
    assert {vm.id for vm in provider.list_instances("maider")} == ids
    assert [e.query.get("page") for e in droplet_pages(sim, type="gpus")] == [None, ["2"], ["3"]]
    assert not any("digitalocean.com" in url for url in outgoing)
    assert cloudsim_net_guard.blocked == []


# -- listing: GPU droplets, pagination, truncation -----------------------------------------------


@pytest.mark.parametrize("tag_name_shows_gpus", [False, True])
def test_list_reads_every_page_of_gpu_droplets(sim: DigitalOceanSim, tag_name_shows_gpus: bool) -> None:
    sim.tag_name_shows_gpus = tag_name_shows_gpus  # unverified on the real API: both must work
    provider = make_provider(sim)
    provider.page_size = 2
    vms = create_many(provider, 5)
    listed = provider.list_instances("maider")
    assert [vm.id for vm in listed] == [vm.id for vm in vms]  # each once, in id order
    assert [vm.id for vm in provider.list_instances(vms[3].tags[1])] == [vms[3].id]
    pages = droplet_pages(sim, type="gpus")
    assert [p.query.get("page") for p in pages[:3]] == [None, ["2"], ["3"]]
    assert pages[0].response["meta"] == {"total": 5}
    assert all(p.query.get("per_page") == ["2"] for p in pages)


def test_list_also_finds_a_non_gpu_droplet_with_the_tag(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    cpu = provider.create_instance(spec("cpu", type_id="s-1vcpu-1gb", image="ubuntu-24-04-x64"))
    gpu = provider.create_instance(spec("gpu"))
    assert {vm.id for vm in provider.list_instances("maider")} == {cpu.id, gpu.id}


def test_a_tag_unknown_to_digitalocean_lists_as_nothing(sim: DigitalOceanSim) -> None:
    """Whether GET /v2/droplets?tag_name=<unknown> answers 404 or an empty list is unverified:
    a 404 there means "no such tag", hence no droplet with it; the GPU list is still read."""
    provider = make_provider(sim)
    vm = provider.create_instance(spec("tag"))

    def tags_unknown(req: Request) -> Reply:
        return sim.not_found() if req.arg("tag_name") else sim.list_droplets(req)

    sim._routes.insert(0, ("GET", re.compile("/v2/droplets"), tags_unknown))
    assert [i.id for i in provider.list_instances("maider")] == [vm.id]
    assert provider.list_instances("maider-session-none") == []
    assert [e.status for e in sim.log.find("GET", "/v2/droplets")][-2:] == [200, 404]


def test_a_later_page_that_fails_is_never_a_short_list(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    provider.page_size = 2
    create_many(provider, 3)

    def broken_next(body: Any) -> Any:  # page 2 now points at a droplet that does not exist: 404
        pages = body.get("links", {}).get("pages", {})
        if "next" in pages:
            pages["next"] = pages["next"].replace("/v2/droplets?", "/v2/droplets/1?")
        return body

    sim.tamper(broken_next, method="GET", path="/v2/droplets")
    before = len(sim.log)
    with pytest.raises(ProviderError, match="cut short") as info:
        provider.list_instances("maider")
    assert not isinstance(info.value, (NotFound, TransientError))  # neither "gone" nor retried
    assert [e.status for e in sim.log.entries[before:]] == [200, 404]


def test_a_later_page_with_a_server_error_is_read_again(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    provider.page_size = 2
    vms = create_many(provider, 5)
    sim.faults.add(method="GET", path="/v2/droplets", on_call=2, kind="server_error")
    assert len(provider.list_instances("maider")) == len(vms)
    assert [e.status for e in droplet_pages(sim, type="gpus")][:2] == [200, 500]


def test_a_listing_shorter_than_meta_total_is_refused(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim, max_attempts=2)
    create_many(provider, 2)
    sim.tamper(lambda b: {**b, "meta": {"total": b["meta"]["total"] + 1}}, method="GET", path="/v2/droplets")
    with pytest.raises(ProviderError, match="truncated: 2 of 3"):
        provider.list_instances("maider")


# -- create: user data, tags, keys, images, firewall ------------------------------------------------


@pytest.mark.parametrize(
    ("type_id", "region", "image"),
    [
        (H100, "tor1", "gpu-h100x1-base"),
        ("gpu-h100x8-640gb", "ams3", "gpu-h100x8-base"),
        ("gpu-mi300x1-192gb", "atl1", "gpu-amd-base"),
    ],
)
def test_create_sends_user_data_tags_key_id_and_the_gpu_image(
    sim: DigitalOceanSim, type_id: str, region: str, image: str
) -> None:
    provider = make_provider(sim)
    s = spec("ud", type_id=type_id, region=region)
    vm = provider.create_instance(s)
    assert (vm.status, vm.region, vm.type_id, vm.tags) == (
        InstanceStatus.PROVISIONING,
        region,
        type_id,
        s.tags,
    )
    rec = sim.instance(vm.id)
    assert rec.user_data == USER_DATA  # DO takes plain text: byte for byte what maider sent
    assert tuple(rec.tags) == s.tags and rec.image == image
    assert rec.attrs["ssh_keys"] == [TEST_PUBLIC_KEY]
    body = sim.log.find("POST", "/v2/droplets")[-1].body
    key = sim.ssh_keys[0]
    assert body["ssh_keys"] == [key["id"]] and key["fingerprint"] == fingerprint_md5(TEST_PUBLIC_KEY)
    assert (body["name"], body["size"], body["region"], body["user_data"]) == (
        s.name,
        type_id,
        region,
        USER_DATA,
    )


def test_firewall_rules_on_the_wire_and_attachment_by_droplet_id(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    fw_id = provider.ensure_firewall("maider-ssh", [CIDR], ("maider",))
    body = sim.log.find("POST", "/v2/firewalls")[0].body
    assert body["name"] == "maider-ssh"
    [rule] = body["inbound_rules"]  # nothing else inbound: DO drops what no rule allows
    assert (rule["protocol"], rule["ports"], rule["sources"]["addresses"]) == ("tcp", "22", [CIDR])
    assert not any(v for k, v in rule["sources"].items() if k != "addresses")
    assert {
        (r["protocol"], r["ports"], tuple(r["destinations"]["addresses"])) for r in body["outbound_rules"]
    } == {(p, "0", ("0.0.0.0/0", "::/0")) for p in ("tcp", "udp", "icmp")}
    assert not body["tags"] and not body["droplet_ids"]

    vm = provider.create_instance(spec("fw", firewall_id=fw_id))
    attach = sim.log.find("POST", f"/v2/firewalls/{fw_id}/droplets")
    assert [e.body for e in attach] == [{"droplet_ids": [int(vm.id)]}]
    assert attach[0].seq > sim.log.find("POST", "/v2/droplets")[0].seq
    assert sim.firewalls[fw_id]["droplet_ids"] == [int(vm.id)]


def test_an_existing_firewall_with_other_rules_is_corrected(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    vm = provider.create_instance(spec("old"))
    old = digitalocean.Firewall(
        token=TOKEN,
        end_point=sim.url,
        name="maider-ssh",
        inbound_rules=[
            digitalocean.InboundRule("tcp", "22", digitalocean.Sources(addresses=["0.0.0.0/0"])),
            digitalocean.InboundRule("tcp", "8000", digitalocean.Sources(addresses=["0.0.0.0/0"])),
        ],
        outbound_rules=[],
        droplet_ids=[int(vm.id)],
        tags=[],
    ).create()
    assert provider.ensure_firewall("maider-ssh", [CIDR], ("maider",)) == old.id
    [put] = sim.log.find("PUT", f"/v2/firewalls/{old.id}")
    assert put.body["droplet_ids"] == [int(vm.id)]  # a PUT resets what it omits: kept
    fw = sim.firewalls[old.id]
    assert [(r["protocol"], r["ports"], r["sources"]) for r in fw["inbound_rules"]] == [
        ("tcp", "22", {"addresses": [CIDR]})
    ]
    assert len(fw["outbound_rules"]) == 3
    # Right rules now: reused as is, no second PUT and no new firewall.
    assert provider.ensure_firewall("maider-ssh", [CIDR], ()) == old.id
    assert sim.log.count("PUT") == 1 and len(sim.firewalls) == 1


def test_a_firewall_that_cannot_be_attached_takes_its_droplet_down(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    s = spec("nofw", firewall_id="0f0f0f0f-0000-4000-8000-000000000000")
    with pytest.raises(ProviderError, match="the droplet was deleted"):
        provider.create_instance(s)
    assert sim.ledger.running() == []
    assert provider.list_instances(s.session_tag) == []


def test_ssh_key_is_matched_by_fingerprint_not_comment(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    kind, body, _ = TEST_PUBLIC_KEY.split(" ", 2)
    first = provider.ensure_ssh_key(f"{kind} {body} laptop", "mine")
    uploads = sim.log.count("POST", "/v2/account/keys")
    assert provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider") == first
    assert sim.log.count("POST", "/v2/account/keys") == uploads == 1
    assert sim.log.find("POST", "/v2/account/keys")[0].body == {
        "name": "mine",
        "public_key": f"{kind} {body} laptop",
    }


def test_an_ssh_key_upload_whose_answer_was_lost_is_not_repeated(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    sim.faults.add(method="POST", path="/v2/account/keys", kind="lost_response")
    key_id = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    assert [str(k["id"]) for k in sim.ssh_keys] == [key_id]
    assert sim.log.count("POST", "/v2/account/keys") == 1


def test_a_firewall_create_whose_answer_was_lost_is_not_repeated(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    sim.faults.add(method="POST", path="/v2/firewalls", kind="lost_response")
    fw_id = provider.ensure_firewall("maider-ssh", [CIDR], ())
    assert list(sim.firewalls) == [fw_id]


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("type_id", "region"), [(H100, "sfo3"), ("gpu-4000adax1-20gb", "tor1")])
def test_size_not_available_is_a_capacity_error(sim: DigitalOceanSim, type_id: str, region: str) -> None:
    provider = make_provider(sim)
    s = spec("cap", type_id=type_id, region=region)
    with pytest.raises(CapacityError, match="Size is not available in this region"):
        provider.create_instance(s)
    assert sim.log.count("POST", "/v2/droplets") == 1  # not retried
    assert sim.ledger.running() == []


def test_other_rejections_are_provider_errors_with_the_vendors_message(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim)
    with pytest.raises(ProviderError, match="invalid image") as info:
        provider.create_instance(spec("img", image="no-such-image"))
    assert type(info.value) is ProviderError and info.value.status == 422
    assert sim.log.count("POST", "/v2/droplets") == 1


@pytest.mark.parametrize("kind", ["rate_limit", "server_error", "drop", "lost_response", "no_capacity"])
def test_no_fault_on_create_leaves_an_unknown_droplet(
    sim: DigitalOceanSim, cloud: SimCloud, kind: str
) -> None:
    provider = make_provider(sim)
    s = spec(f"fault-{kind.replace('_', '-')}")
    cloud.fail("create", kind)
    known: set[str] = set()
    try:
        known.add(provider.create_instance(s).id)
    except CapacityError:
        assert kind == "no_capacity"
    known |= {vm.id for vm in provider.list_instances(s.session_tag)}
    assert len(known) == (0 if kind == "no_capacity" else 1)
    assert sim.ledger.leaked(known_ids=known) == []
    for vm_id in known:
        provider.delete_instance(vm_id)
    assert sim.ledger.running() == []


@pytest.mark.parametrize("operation", ["get", "delete", "ssh_key", "firewall", "catalog"])
@pytest.mark.parametrize("kind", ["rate_limit", "server_error", "drop"])
def test_transient_faults_on_every_operation_are_retried(
    sim: DigitalOceanSim, cloud: SimCloud, operation: str, kind: str
) -> None:
    provider = make_provider(sim)
    vm = provider.create_instance(spec("t"))
    cloud.fail(operation, kind)
    if operation == "get":
        assert provider.get_instance(vm.id).id == vm.id
    elif operation == "delete":
        provider.delete_instance(vm.id)
        assert sim.ledger.running() == []
    elif operation == "ssh_key":
        assert provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider") == str(sim.ssh_keys[0]["id"])
    elif operation == "firewall":
        assert provider.ensure_firewall("maider-ssh", [CIDR], ()) in sim.firewalls
    else:
        assert H100 in provider.fetch_catalog().types  # type: ignore[union-attr]
    assert [f.fired for f in sim.faults.faults] == [1]


def test_rate_limit_carries_retry_after(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim, max_attempts=1)
    sim.faults.add(method="GET", path="/v2/droplets", kind="rate_limit", retry_after=7)
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert (info.value.status, info.value.retry_after) == (429, 7.0)


def test_request_timeout_is_applied_to_sdk_requests(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim, request_timeout=0.3)
    vm = provider.create_instance(spec("slow"))
    sim.faults.add(method="GET", path=r"^/v2/droplets/\d+", kind="slow", delay=3.0)
    started = time.monotonic()
    assert provider.get_instance(vm.id).id == vm.id  # timed out once, then retried
    assert time.monotonic() - started < 2.5


def test_delete_propagates_errors_other_than_not_found(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim, max_attempts=2)
    vm = provider.create_instance(spec("del"))
    sim.faults.add(method="DELETE", path=r"^/v2/droplets/\d+", kind="server_error", times=None)
    with pytest.raises(TransientError):
        provider.delete_instance(vm.id)
    assert vm.id in {r.id for r in sim.ledger.running()}
    sim.faults.clear()
    provider.delete_instance(vm.id)
    assert sim.ledger.running() == []


def test_get_instance_follows_the_droplet(sim: DigitalOceanSim, cloudsim_clock: FakeClock) -> None:
    provider = make_provider(sim)
    vm = provider.create_instance(spec("st"))
    first = provider.get_instance(vm.id)
    assert (first.status, first.raw_status, first.public_ipv4) == (InstanceStatus.PROVISIONING, "new", None)
    cloudsim_clock.advance(60)
    up = provider.get_instance(vm.id)
    assert (up.status, up.raw_status) == (InstanceStatus.RUNNING, "active")
    assert up.public_ipv4 == sim.instance(vm.id).ipv4 and up.created_at is not None
    before = len(sim.log)
    with pytest.raises(NotFound):
        provider.get_instance("not-a-droplet-id")
    assert len(sim.log) == before  # no request for an id that cannot exist


def test_no_secret_in_requests_logs_or_errors(
    sim: DigitalOceanSim, bad_provider: DigitalOceanProvider
) -> None:
    provider = make_provider(sim)
    provider.create_instance(spec("sec"))
    # A vendor message that echoes the token must come out scrubbed.
    sim.faults.add(
        method="POST",
        path="/v2/droplets",
        kind="no_capacity",
        message=f"Size is not available in this region ({TOKEN})",
    )
    with pytest.raises(CapacityError) as info:
        provider.create_instance(spec("sec2"))
    assert TOKEN not in str(info.value) and "***" in str(info.value)
    with pytest.raises(AuthError) as auth:
        bad_provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    assert "DIGITALOCEAN_TOKEN" in str(auth.value) and BAD_TOKEN not in str(auth.value)
    assert "\n" not in str(auth.value)
    for secret in (TOKEN, BAD_TOKEN):
        assert not sim.log.contains(secret)
    assert all("authorization" not in e.headers for e in sim.log)


def test_without_a_token_nothing_is_sent(sim: DigitalOceanSim) -> None:
    provider = make_provider(sim, token=None)
    check = provider.check_credentials()
    assert not check.ok and "DIGITALOCEAN_TOKEN" in check.reason
    with pytest.raises(AuthError, match="DIGITALOCEAN_TOKEN"):
        provider.list_instances("maider")
    assert len(sim.log) == 0


# -- catalog ---------------------------------------------------------------------------------------


def test_live_catalog_reads_sizes_and_regions(sim: DigitalOceanSim) -> None:
    h100 = next(s for s in sim.sizes if s.slug == H100)
    sim.sizes.append(
        DOSize(
            "gpu-b200x8-1440gb",
            "GPU B200 x8",
            240,
            2048 * 1024,
            2046,
            60,
            41.0,
            ("nyc2",),
            gpu_count=8,
            gpu_model="nvidia_b200",
            vram_gib=180,
        )
    )
    sim.sizes[sim.sizes.index(h100)] = dataclasses.replace(h100, hourly=4.41)
    live = make_provider(sim).fetch_catalog()
    assert live is not None and live.source == "live" and live.as_of == dt.date.today()
    assert set(live.types) == {s.slug for s in sim.sizes if s.is_gpu}  # CPU sizes left out
    t = live.types[H100]
    assert t.hourly_price.amount == 4.41 and t.hourly_price.currency == "USD"
    assert t.regions == ("ams3", "nyc2", "tor1") and (t.vcpus, t.ram_gb, t.gpu_count) == (20, 240, 1)
    assert t.gpu == embedded_catalog.H100  # architecture and compute capability from the embedded data
    assert live.types["gpu-mi300x1-192gb"].gpu == embedded_catalog.MI300X
    assert live.types["gpu-4000adax1-20gb"].regions == ()  # listed, but not available anywhere
    b200 = live.types["gpu-b200x8-1440gb"]
    assert (b200.gpu.name, b200.gpu.vram_gb, b200.gpu_count, b200.gpu.vendor) == ("B200", 180, 8, "NVIDIA")
    assert set(live.regions) == {"ams3", "atl1", "nyc2", "tor1"}
    assert live.regions["tor1"].country == "CA" and live.regions["tor1"].label == "Toronto 1"


# --------------------------------------------------------------------------------------------
# the watchdog's credential: the user's own custom-scoped token (DigitalOcean cannot mint one)
# --------------------------------------------------------------------------------------------


def _running_droplet(provider: DigitalOceanProvider, cloud: SimCloud) -> VMInstance:
    vm = provider.create_instance(spec(uuid.uuid4().hex[:8]))
    cloud.advance(120)
    return provider.get_instance(vm.id)


def test_self_destruct_uses_the_watchdog_token_and_deletes_the_droplet(
    provider: DigitalOceanProvider, cloud: SimCloud
) -> None:
    from maider.testing import run_self_destruct

    vm = _running_droplet(provider, cloud)
    before = len(cloud.sim.log)
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog")
    assert len(cloud.sim.log) == before  # nothing minted, not even a request
    assert destruct is not None and destruct.revoke_handle is None and destruct.expires_at is None
    [call] = destruct.calls
    assert (call.method, call.url) == ("DELETE", f"{cloud.sim.url}droplets/{vm.id}")
    assert call.headers == {"Authorization": f"Bearer {WATCHDOG_TOKEN}"}
    assert destruct.secrets == (WATCHDOG_TOKEN,) and WATCHDOG_TOKEN not in repr(destruct)
    assert not any(WATCHDOG_TOKEN in text for text in cloud.request_texts())  # the laptop never sends it
    assert run_self_destruct(destruct) == [204]
    assert vm.id not in cloud.running_ids()
    assert cloud.sim.instance(vm.id).deleted_at is not None
    provider.revoke_self_destruct("anything")  # nothing to revoke: a no-op


def test_watchdog_token_cannot_create_droplets_or_touch_anything_else(
    provider: DigitalOceanProvider, cloud: SimCloud
) -> None:
    narrow = make_provider(cloud.sim, token=WATCHDOG_TOKEN)
    with pytest.raises(AuthError) as info:
        narrow.create_instance(spec(uuid.uuid4().hex[:8]))
    assert info.value.status == 403 and WATCHDOG_TOKEN not in str(info.value)
    with pytest.raises(AuthError):
        narrow.ensure_firewall("maider-ssh", [CIDR], ("maider",))
    with pytest.raises(AuthError):
        narrow.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    assert cloud.sim.ledger.instances() == []
    # The create itself, sent by hand with the narrow token: DigitalOcean's 403.
    sdk = digitalocean.Droplet(
        token=WATCHDOG_TOKEN, end_point=cloud.sim.url, name="x", region="tor1", size_slug=H100, image="x"
    )
    with pytest.raises(digitalocean.DataReadError, match="You do not have permission"):
        sdk.create()
    assert cloud.sim.log.find("POST", r"^/v2/droplets/?$")[-1].status == 403
    # droplet:read is all it reads: the droplets of the account.
    assert narrow.list_instances("maider") == []


def test_expired_watchdog_token_is_refused(provider: DigitalOceanProvider, cloud: SimCloud) -> None:
    from maider.testing import run_self_destruct

    vm = _running_droplet(provider, cloud)
    cloud.sim.scoped_tokens[WATCHDOG_TOKEN].expires_at = cloud.clock.now() + 60
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog")
    assert destruct is not None
    cloud.advance(61)
    assert run_self_destruct(destruct) == [401]
    assert vm.id in cloud.running_ids()  # still billed: the laptop side must delete it
    provider.delete_instance(vm.id)


def test_no_watchdog_token_means_no_self_destruct(sim: DigitalOceanSim, cloud: SimCloud) -> None:
    plain = make_provider(sim)
    vm = plain.create_instance(spec(uuid.uuid4().hex[:8]))
    assert plain.self_destruct(vm, valid_for_s=3600, label="maider-watchdog") is None
    assert DigitalOceanProvider.poweroff_stops_billing is False


def test_watchdog_token_equal_to_the_main_token_is_a_config_error(
    sim: DigitalOceanSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maider.errors import ConfigError

    monkeypatch.setenv("MAIDER_DIGITALOCEAN_TOKEN", TOKEN)
    monkeypatch.setenv("MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN", TOKEN)
    with pytest.raises(ConfigError) as info:
        DigitalOceanProvider.load_settings()
    message = str(info.value)
    assert "watchdog_token" in message and "droplet:delete" in message
    assert TOKEN not in message and "\n" not in message
    monkeypatch.setenv("MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN", WATCHDOG_TOKEN)
    loaded = DigitalOceanProvider.load_settings()
    assert loaded.watchdog_token.get_secret_value() == WATCHDOG_TOKEN  # type: ignore[attr-defined]


def test_watchdog_token_from_the_config_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[digitalocean]\ntoken = "{TOKEN}"\nwatchdog_token = "{WATCHDOG_TOKEN}"\n')
    monkeypatch.setenv("MAIDER_CONFIG", str(config))
    loaded = DigitalOceanProvider.load_settings()
    assert loaded.watchdog_token.get_secret_value() == WATCHDOG_TOKEN  # type: ignore[attr-defined]
