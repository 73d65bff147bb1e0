"""The Linode simulator, driven by the real linode_api4 SDK."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.cloudsim import FakeClock, LinodeSim
from tests.cloudsim.catalogs import LINODE_TYPES, RTX4000_REGIONS, RTX6000_REGIONS
from tests.cloudsim.linode import NO_CAPACITY_REASON
from tests.cloudsim.testing import require_spec

pytest_plugins = ["tests.conftest_cloudsim"]

linode_api4 = pytest.importorskip("linode_api4")
requests = pytest.importorskip("requests")  # comes with every SDK

TOKEN = "linode-sekrit-token-4f9d2c"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0000000000000 me@laptop"
CLOUD_INIT = "#cloud-config\npackages: [htop]\n"
FIREWALL_RULES = {
    "inbound_policy": "DROP",
    "outbound_policy": "ACCEPT",
    "inbound": [
        {
            "action": "ACCEPT",
            "protocol": "TCP",
            "ports": "22",
            "addresses": {"ipv4": ["203.0.113.7/32"], "ipv6": []},
        }
    ],
    "outbound": [],
}


def client(sim: LinodeSim, **kw: Any) -> Any:
    kw.setdefault("retry", False)  # faults must surface at once, not after SDK retries
    return linode_api4.LinodeClient(TOKEN, base_url=sim.url, **kw)


def create(
    c: Any, label: str = "maider-1", ltype: str = "g1-gpu-rtx6000-1", region: str = "us-east", **kw: Any
) -> Any:
    kw.setdefault("tags", ["maider"])
    return c.linode.instance_create(
        ltype, region, image="linode/ubuntu24.04", authorized_keys=[PUBKEY], label=label, **kw
    )


def test_catalog_regions_availability_and_gpu_types(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    regions = {r.id: r for r in c.regions()}
    gpu_regions = {rid for rid, r in regions.items() if "GPU Linodes" in r.capabilities}
    assert gpu_regions == set(RTX6000_REGIONS) | set(RTX4000_REGIONS)
    assert "Metadata" in regions["us-east"].capabilities

    gpu_types = list(c.linode.types(linode_api4.Type.type_class == "gpu"))
    expected = {t.id: t for t in LINODE_TYPES if t.cls == "gpu"}
    assert len(gpu_types) == 13 == len(expected)
    for t in gpu_types:
        assert (t.price.hourly, t.price.monthly, t.gpus) == (
            expected[t.id].hourly,
            expected[t.id].monthly,
            expected[t.id].gpus,
        )
    sent = linode_sim.log.find("GET", "/v4/linode/types")[-1]
    assert sent.headers["x-filter"] == '{"class": "gpu"}'

    avail = {(a.region, a.plan): a.available for a in c.regions.availability()}
    assert avail[("us-east", "g1-gpu-rtx6000-1")] is True
    assert avail[("us-east", "g2-gpu-rtx4000a1-s")] is False
    assert avail[("us-ord", "g2-gpu-rtx4000a1-s")] is True


def test_catalog_is_public_but_the_account_is_not(linode_sim: LinodeSim) -> None:
    # The spec gives GET /regions and /linode/types no security; the real API serves them anonymously.
    assert requests.get(linode_sim.url + "/linode/types", timeout=5).status_code == 200
    r = requests.get(linode_sim.url + "/linode/instances", timeout=5)
    assert r.status_code == 401
    assert r.json() == {"errors": [{"reason": "Invalid Token"}]}
    assert linode_sim.log.entries[-1].authenticated is False


def test_wrong_token_is_refused(cloudsim_clock: FakeClock, cloudsim_net_guard: Any) -> None:
    sim = LinodeSim(clock=cloudsim_clock, token="the-right-one", validate=False)
    with sim, pytest.raises(linode_api4.ApiError) as err:
        list(client(sim).linode.instances())
    assert err.value.status == 401


def test_lifecycle_create_boot_list_delete(linode_sim: LinodeSim, cloudsim_clock: FakeClock) -> None:
    c = client(linode_sim)
    key = c.profile.ssh_key_upload(PUBKEY, "maider-key")
    assert [k.id for k in c.profile.ssh_keys()] == [key.id]
    fw = c.networking.firewall_create("maider-fw", FIREWALL_RULES, tags=["maider"])

    inst = create(
        c, firewall=fw, booted=True, metadata=c.linode.build_instance_metadata(user_data=CLOUD_INIT)
    )
    assert inst.status == "provisioning"
    ip = inst.ipv4[0]
    assert ip.startswith("127.1.")

    states = []
    for _ in range(4):
        states.append(c.load(linode_api4.Instance, inst.id).status)
        cloudsim_clock.advance(30)
    assert states == ["provisioning", "provisioning", "booting", "running"]

    by_contains = [i.id for i in c.linode.instances(linode_api4.Instance.tags.contains("maid"))]
    by_equals = [i.id for i in c.linode.instances(linode_api4.Instance.tags == "maider")]
    assert by_contains == by_equals == [inst.id]
    assert list(c.linode.instances(linode_api4.Instance.tags == "other")) == []
    assert [d.entity.id for d in fw.devices] == [inst.id]

    rec = linode_sim.instance(inst.id)
    assert rec.user_data == CLOUD_INIT  # base64 on the wire, decoded in the ledger
    assert rec.type == "g1-gpu-rtx6000-1" and rec.tags == ["maider"] and rec.price_per_hour == 1.5
    assert rec.running_at == rec.created_at + 90
    wire = linode_sim.log.find("POST", "/v4/linode/instances")[0].body
    assert base64.b64decode(wire["metadata"]["user_data"]).decode() == CLOUD_INIT
    assert linode_sim.ledger.leaked(known_ids=[inst.id]) == []
    assert [r.id for r in linode_sim.ledger.leaked()] == [str(inst.id)]

    c.load(linode_api4.Instance, inst.id).delete()
    with pytest.raises(linode_api4.ApiError) as err:
        c.load(linode_api4.Instance, inst.id)
    assert err.value.status == 404 and "Not found" in str(err.value)
    assert linode_sim.ledger.running() == []
    assert rec.deleted_by == "client"
    # Linode bills each started hour: 2 simulated minutes cost one hour.
    assert rec.billed_seconds() == 3600 and rec.cost() == pytest.approx(1.5)


def test_pagination_has_consistent_totals(linode_sim: LinodeSim) -> None:
    c = client(linode_sim, page_size=25)
    ids = {create(c, label=f"maider-{n:02d}").id for n in range(30)}
    listed = c.linode.instances(linode_api4.Instance.tags == "maider")
    assert len(listed) == 30  # "results" from page 1
    assert {i.id for i in listed} == ids  # iterating fetches page 2
    pages = [
        (e.query.get("page"), e.query.get("page_size"))
        for e in linode_sim.log.find("GET", "/v4/linode/instances")
    ]
    assert pages == [(None, ["25"]), (["2"], ["25"])]
    assert all(
        e.headers["x-filter"] == '{"tags": "maider"}'
        for e in linode_sim.log.find("GET", "/v4/linode/instances")
    )

    # Totals are live: the SDK notices (as with the real API) when the list changes between pages.
    listed = c.linode.instances()
    create(c, label="maider-extra")
    with pytest.raises(RuntimeError, match="has changed"):
        list(listed)


def test_no_capacity_is_the_vendors_answer(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    linode_sim.set_available("us-east", "g1-gpu-rtx6000-1", False)  # sold out, without a fault
    with pytest.raises(linode_api4.ApiError) as err:
        create(c)
    assert err.value.status == 403 and NO_CAPACITY_REASON in err.value.errors
    with pytest.raises(linode_api4.ApiError):  # not sold in that region at all
        create(c, ltype="g2-gpu-rtx4000a1-s", region="us-east")
    assert linode_sim.ledger.instances() == []


@pytest.mark.parametrize(
    ("kind", "status"), [("429", 429), ("500", 500), ("502", 502), ("503", 503), ("no_capacity", 403)]
)
def test_error_faults_raise_api_error(linode_sim: LinodeSim, kind: str, status: int) -> None:
    c = client(linode_sim)
    linode_sim.faults.add(method="POST", path="/v4/linode/instances", on_call=1, kind=kind)
    with pytest.raises(linode_api4.ApiError) as err:
        create(c)
    assert err.value.status == status
    if kind == "429":
        assert linode_sim.log.entries[-1].response_headers["Retry-After"] == "1"
    assert create(c).status == "provisioning"  # the second call is fine
    assert len(linode_sim.ledger) == 1


def test_rate_limit_is_retried_by_the_sdk(linode_sim: LinodeSim) -> None:
    c = client(linode_sim, retry=True, retry_rate_limit_interval=0.01)
    linode_sim.faults.add(method="GET", path="/v4/linode/instances", kind="429", retry_after=0, times=2)
    assert list(c.linode.instances()) == []
    assert linode_sim.log.count("GET", "/v4/linode/instances") == 3


def test_dropped_connection_and_lost_response(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    linode_sim.faults.add(method="GET", path="/v4/regions", kind="drop")
    with pytest.raises(requests.ConnectionError):
        list(c.regions())
    assert len(list(c.regions())) > 0

    linode_sim.faults.add(method="POST", path="/v4/linode/instances", kind="lost_response")
    with pytest.raises(requests.ConnectionError):
        create(c)
    # The create happened although the client never heard of it: a leak it must find by tag.
    leaked = linode_sim.ledger.leaked(known_ids=[])
    assert [r.name for r in leaked] == ["maider-1"]
    assert [i.label for i in c.linode.instances(linode_api4.Instance.tags == "maider")] == ["maider-1"]


def test_slow_answer(linode_sim: LinodeSim) -> None:
    linode_sim.faults.add(method="GET", path="/v4/regions", kind="slow", delay=0.3, times=2)
    started = time.monotonic()
    assert len(list(client(linode_sim).regions())) > 0  # linode_api4 has no timeout: it just waits
    assert time.monotonic() - started >= 0.3
    with pytest.raises(requests.ReadTimeout):  # a client with a timeout gives up
        requests.get(linode_sim.url + "/regions", timeout=0.1)


def test_stuck_in_provisioning(linode_sim: LinodeSim, cloudsim_clock: FakeClock) -> None:
    c = client(linode_sim)
    linode_sim.faults.add(method="POST", path="/v4/linode/instances", kind="stuck")
    inst = create(c)
    cloudsim_clock.advance(3600)
    assert c.load(linode_api4.Instance, inst.id).status == "provisioning"
    assert linode_sim.instance(inst.id).stuck


def test_instance_vanishes_behind_the_clients_back(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    first, second = create(c, label="maider-a"), create(c, label="maider-b")
    linode_sim.vanish(first.id)
    linode_sim.faults.add(method="GET", path="/v4/linode/instances/*", kind="vanish")
    with pytest.raises(linode_api4.ApiError) as err:
        c.load(linode_api4.Instance, second.id)
    assert err.value.status == 404
    assert {r.deleted_by for r in linode_sim.ledger} == {"vendor"}
    assert linode_sim.ledger.running() == []


def test_request_log_keeps_no_token_and_stays_on_loopback(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    create(c, metadata=c.linode.build_instance_metadata(user_data=CLOUD_INIT))
    list(c.linode.instances())
    assert len(linode_sim.log) == 2
    assert all(e.authenticated for e in linode_sim.log)
    assert not linode_sim.log.contains(TOKEN)
    assert all("authorization" not in e.headers for e in linode_sim.log)
    assert linode_sim.log.contains("maider-1")  # the scan does see the rest of the request
    assert {e.client for e in linode_sim.log} == {"127.0.0.1"}


def test_net_guard_blocks_the_real_api(linode_sim: LinodeSim, cloudsim_net_guard: Any) -> None:
    real = linode_api4.LinodeClient(TOKEN, retry=False)  # default base_url: api.linode.com
    with pytest.raises(requests.ConnectionError):
        list(real.regions())
    assert any("api.linode.com" in b for b in cloudsim_net_guard.clear())


def test_spec_violations_are_caught(linode_sim: LinodeSim) -> None:
    require_spec("linode")
    c = client(linode_sim)
    # A response that drifted from the spec (a field the spec does not allow) ...
    linode_sim.tamper(lambda body: {**body, "unexpected": 1}, method="GET", path="/v4/regions")
    list(c.regions())
    # ... and a request the spec rejects (page_size below 25) are both recorded.
    requests.get(
        linode_sim.url + "/linode/instances?page_size=10", headers={"Authorization": "Bearer x"}, timeout=5
    )
    found = linode_sim.take_violations()
    assert [(v.kind, v.path) for v in found] == [
        ("response", "/v4/regions"),
        ("request", "/v4/linode/instances"),
    ]
    assert "unexpected" in found[0].message and "page_size" in found[1].message


def test_sdk_traffic_is_spec_valid(linode_sim: LinodeSim, cloudsim_clock: FakeClock) -> None:
    require_spec("linode")
    assert linode_sim.checker is not None
    c = client(linode_sim)
    fw = c.networking.firewall_create("maider-fw", FIREWALL_RULES, tags=["maider"])
    inst = create(c, metadata=c.linode.build_instance_metadata(user_data=CLOUD_INIT))
    fw.device_create(inst.id, "linode")
    cloudsim_clock.advance(120)
    list(c.linode.instances(linode_api4.Instance.tags.contains("maider")))
    c.load(linode_api4.Instance, inst.id).delete()
    assert linode_sim.violations == []  # (the fixture checks this too)


# -- personal access tokens (the watchdog's credential) ---------------------------------------


def test_minted_token_scopes_expiry_and_revocation(linode_sim: LinodeSim, cloudsim_clock: FakeClock) -> None:
    import datetime as dt

    c = client(linode_sim)
    inst = create(c)
    expiry = dt.datetime.fromtimestamp(cloudsim_clock.now() + 600, tz=dt.timezone.utc).replace(tzinfo=None)
    pat = c.profile.token_create(label="watchdog", expiry=expiry, scopes="linodes:read_write")
    assert len(pat.token) == 64 and pat.scopes == "linodes:read_write"
    listed = list(c.profile.tokens())
    assert [t.token for t in listed] == [pat.token[:16]]  # the full token is shown once only

    narrow = linode_api4.LinodeClient(pat.token, base_url=linode_sim.url, retry=False)
    assert [i.id for i in narrow.linode.instances()] == [inst.id]
    with pytest.raises(linode_api4.ApiError) as info:
        list(narrow.networking.firewalls())
    assert info.value.status == 401 and "not authorized to use this endpoint" in str(info.value)
    with pytest.raises(linode_api4.ApiError) as info:
        narrow.profile.token_create(label="more", scopes="*")
    assert info.value.status == 401

    cloudsim_clock.advance(601)  # expired: refused like a revoked token
    with pytest.raises(linode_api4.ApiError) as info:
        list(narrow.linode.instances())
    assert info.value.status == 401 and "Invalid Token" in str(info.value)
    assert list(c.profile.tokens()) == []


def test_revoked_token_is_refused_and_a_second_revoke_is_404(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    pat = c.profile.token_create(label="watchdog", scopes="linodes:read_write")
    assert pat.expiry is None  # no expiry asked: valid until revoked
    linode_api4.PersonalAccessToken(c, pat.id).delete()
    narrow = linode_api4.LinodeClient(pat.token, base_url=linode_sim.url, retry=False)
    with pytest.raises(linode_api4.ApiError) as info:
        list(narrow.linode.instances())
    assert info.value.status == 401
    with pytest.raises(linode_api4.ApiError) as info:
        linode_api4.PersonalAccessToken(c, pat.id).delete()
    assert info.value.status == 404


def test_a_token_cannot_mint_beyond_its_scopes(linode_sim: LinodeSim) -> None:
    c = client(linode_sim)
    middle = c.profile.token_create(label="middle", scopes="account:read_write linodes:read_only")
    m = linode_api4.LinodeClient(middle.token, base_url=linode_sim.url, retry=False)
    with pytest.raises(linode_api4.ApiError) as info:
        m.profile.token_create(label="wider", scopes="linodes:read_write")
    assert info.value.status == 400
    narrower = m.profile.token_create(label="narrower", scopes="linodes:read_only")
    assert narrower.scopes == "linodes:read_only"
    with pytest.raises(linode_api4.ApiError):
        c.profile.token_create(label="bad", scopes="linodes:everything")
    # An expiry already past is refused (guess: the real API's check).
    with pytest.raises(linode_api4.ApiError) as info:
        c.profile.token_create(label="old", expiry="2001-01-01T00:00:00", scopes="linodes:read_only")
    assert info.value.status == 400
