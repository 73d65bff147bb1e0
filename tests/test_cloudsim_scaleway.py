"""The Scaleway simulator, driven by the real scaleway SDK (InstanceUtilsV1API + IamV1Alpha1API)."""

from __future__ import annotations

import time
import types
from typing import Any

import pytest

from tests.cloudsim import FakeClock, ScalewaySim
from tests.cloudsim.catalogs import SCW_TYPES
from tests.cloudsim.testing import SCW_ACCESS_KEY, SCW_PROJECT_ID, SCW_SECRET_KEY

pytest_plugins = ["tests.conftest_cloudsim"]

scaleway = pytest.importorskip("scaleway")
custom_api = pytest.importorskip("scaleway.instance.v1.custom_api")
instance_v1 = pytest.importorskip("scaleway.instance.v1")
iam_v1alpha1 = pytest.importorskip("scaleway.iam.v1alpha1")
scaleway_core_api = pytest.importorskip("scaleway_core.api")
requests = pytest.importorskip("requests")  # comes with every SDK

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0000000000000 me@laptop"
CLOUD_INIT = "#cloud-config\npackages: [htop]\n"
ZONE = "fr-par-2"
ScalewayException = scaleway_core_api.ScalewayException


def api(sim: ScalewaySim) -> Any:
    client = scaleway.Client.from_config_file_and_env()  # scaleway_env points it at the simulator
    assert client.api_url == sim.url and client.secret_key == SCW_SECRET_KEY
    return custom_api.InstanceUtilsV1API(client)


def create(a: Any, name: str = "maider-1", ctype: str = "H100-1-80G", **kw: Any) -> Any:
    kw.setdefault("tags", ["maider"])
    vol = instance_v1.VolumeServerTemplate(volume_type="sbs_volume", size=100_000_000_000)
    return a.create_server(
        commercial_type=ctype,
        name=name,
        image="ubuntu_noble_gpu_os_12",
        dynamic_ip_required=True,
        volumes={"0": vol},
        **kw,
    ).server


def test_catalog_types_availability_and_paging(scaleway_env: ScalewaySim) -> None:
    a = api(scaleway_env)
    everything = a.list_servers_types(zone=ZONE)
    expected = {t.name: t for t in SCW_TYPES if ZONE in t.zones}
    assert set(everything.servers) == set(expected) and int(everything.total_count) == len(expected)
    h100 = everything.servers["H100-1-80G"]
    assert (h100.hourly_price, h100.gpu, h100.gpu_info.gpu_name) == (2.8665, 1, "H100")
    assert h100.volumes_constraint.max_size == 0 and h100.ram == 240 * 1024**3

    # There is no _all helper for types: page by hand with per_page and X-Total-Count.
    seen: dict[str, Any] = {}
    page = 1
    while True:
        chunk = a.list_servers_types(zone=ZONE, per_page=5, page=page)
        assert int(chunk.total_count) == len(expected)
        if not chunk.servers:
            break
        seen.update(chunk.servers)
        page += 1
    assert set(seen) == set(expected) and page == 5  # 17 types: 5+5+5+2, then an empty page

    avail = a.get_server_types_availability(zone=ZONE).servers
    assert str(avail["H100-1-80G"].availability) == "available"
    assert str(avail["B300-SXM-8-288G"].availability) == "shortage"
    assert str(a.list_servers_types(zone="fr-par-1").servers["RENDER-S"].hourly_price) == "1.221"


def test_catalog_is_public(scaleway_sim: ScalewaySim) -> None:
    url = f"{scaleway_sim.url}/instance/v1/zones/{ZONE}/products/servers"
    assert requests.get(url, timeout=5).status_code == 200
    denied = requests.get(f"{scaleway_sim.url}/instance/v1/zones/{ZONE}/servers", timeout=5)
    assert denied.status_code == 401 and denied.json()["type"] == "denied_authentication"


def test_lifecycle_create_userdata_poweron_list_terminate(
    scaleway_env: ScalewaySim, cloudsim_clock: FakeClock
) -> None:
    sim = scaleway_env
    a = api(sim)
    iam = iam_v1alpha1.IamV1Alpha1API(a.client)
    key = iam.create_ssh_key(public_key=PUBKEY, name="maider")
    assert [k.id for k in iam.list_ssh_keys_all()] == [key.id]

    sg = a.create_security_group(
        description="maider",
        stateful=True,
        name="maider",
        inbound_default_policy="drop",
        outbound_default_policy="accept",
        tags=["maider"],
    ).security_group
    rule = instance_v1.SetSecurityGroupRulesRequestRule(
        action="accept",
        protocol="TCP",
        direction="inbound",
        ip_range="203.0.113.7/32",
        position=1,
        editable=True,
        dest_port_from=22,
    )
    rules = a.set_security_group_rules(security_group_id=sg.id, rules=[rule]).rules
    assert [(r.dest_port_from, r.dest_port_to) for r in rules] == [(22, None)]

    server = create(a, security_group=sg.id)
    assert server.state == "stopped" and server.public_ip is None  # created stopped
    a.set_server_user_data(server_id=server.id, key="cloud-init", content=CLOUD_INIT.encode())
    patch = sim.log.find("PATCH", "*/user_data/cloud-init")[0]
    assert patch.headers["content-type"] == "text/plain" and patch.body_text == CLOUD_INIT
    assert sim.instance(server.id).user_data == CLOUD_INIT

    task = a.server_action(server_id=server.id, action="poweron").task
    assert str(task.status) == "pending"
    assert a.get_server(server_id=server.id).server.state == "starting"
    cloudsim_clock.advance(45)
    up = a.get_server(server_id=server.id).server
    assert up.state == "running" and up.public_ip.address.startswith("127.3.")
    assert up.public_ips[0].address == up.public_ip.address

    assert [s.id for s in a.list_servers_all(tags=["maider"])] == [server.id]
    assert a.list_servers_all(tags=["maider", "other"]) == []

    a.server_action(server_id=server.id, action="terminate")
    assert a.get_server(server_id=server.id).server.state == "stopping"
    cloudsim_clock.advance(20)
    with pytest.raises(ScalewayException) as err:
        a.get_server(server_id=server.id)
    assert err.value.status_code == 404 and err.value.response.json()["type"] == "not_found"
    rec = sim.instance(server.id)
    # Billed per started minute, only while powered on (45 s starting/running before terminate).
    assert rec.currency == "EUR" and rec.billed_seconds() == 60
    assert sim.ledger.running() == []


def test_sdk_waiter_with_the_fake_clock(
    scaleway_env: ScalewaySim, cloudsim_clock: FakeClock, monkeypatch: Any
) -> None:
    # wait_instance_server sleeps 0.01 s, 0.02 s, … up to an hour between polls (notes §2.3):
    # let it sleep on the simulated clock instead of the wall clock.
    monkeypatch.setattr(custom_api, "time", types.SimpleNamespace(time=time.time, sleep=cloudsim_clock.sleep))
    a = api(scaleway_env)
    server = create(a)
    a.server_action(server_id=server.id, action="poweron")
    assert a.wait_instance_server(server_id=server.id, zone=ZONE).server.state == "running"
    assert cloudsim_clock.now() - server.creation_date.timestamp() >= 45


def test_server_list_ends_on_an_empty_page(scaleway_env: ScalewaySim) -> None:
    a = api(scaleway_env)
    ids = {create(a, name=f"maider-{n}").id for n in range(5)}
    assert {s.id for s in a.list_servers_all(tags=["maider"], per_page=2)} == ids
    lists = scaleway_env.log.find("GET", f"/instance/v1/zones/{ZONE}/servers")
    assert [e.query["page"] for e in lists] == [["1"], ["2"], ["3"], ["4"]]
    assert lists[-1].response == {"servers": []} and lists[0].response_headers["X-Total-Count"] == "5"
    assert lists[0].query["project"] == [SCW_PROJECT_ID] and lists[0].query["tags"] == ["maider"]


def test_out_of_stock_is_the_vendors_answer(scaleway_env: ScalewaySim) -> None:
    a = api(scaleway_env)
    with pytest.raises(ScalewayException) as err:
        create(a, ctype="B300-SXM-8-288G")  # availability "shortage"
    body = err.value.response.json()
    assert (
        err.value.status_code == 412
        and body["type"] == "out_of_stock"
        and body["resource"] == "B300-SXM-8-288G"
    )


def test_validation_errors(scaleway_env: ScalewaySim) -> None:
    a = api(scaleway_env)
    with pytest.raises(scaleway_core_api.ValidationError):
        a.list_servers_all(per_page=500)
    with pytest.raises(ScalewayException) as err:  # GPU types take no local volume
        a.create_server(
            commercial_type="L4-1-24G",
            image="ubuntu_noble_gpu_os_12",
            volumes={"0": instance_v1.VolumeServerTemplate(volume_type="l_ssd", size=20_000_000_000)},
        )
    assert err.value.status_code == 400
    assert scaleway_env.take_violations() == []  # per_page=500 is within what the SDK may send


@pytest.mark.parametrize(
    ("kind", "status", "type_"),
    [
        ("429", 429, "too_many_requests"),
        ("500", 500, "internal_error"),
        ("502", 502, "internal_error"),
        ("503", 503, "internal_error"),
        ("no_capacity", 412, "out_of_stock"),
    ],
)
def test_error_faults_raise_scaleway_exception(
    scaleway_env: ScalewaySim, kind: str, status: int, type_: str
) -> None:
    a = api(scaleway_env)
    scaleway_env.faults.add(method="POST", path=f"/instance/v1/zones/{ZONE}/servers", kind=kind)
    with pytest.raises(ScalewayException) as err:
        create(a)
    assert err.value.status_code == status and err.value.response.json()["type"] == type_
    assert create(a).state == "stopped"


def test_dropped_connection_lost_response_and_slow(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    a = api(sim)
    sim.faults.add(method="GET", path="*/products/servers", kind="drop")
    with pytest.raises(requests.ConnectionError):
        a.list_servers_types(zone=ZONE)
    sim.faults.add(method="POST", path="*/servers", kind="lost_response")
    with pytest.raises(requests.ConnectionError):
        create(a)
    assert [r.name for r in sim.ledger.leaked(known_ids=[])] == ["maider-1"]
    assert [s.name for s in a.list_servers_all(tags=["maider"])] == ["maider-1"]  # findable by tag

    sim.faults.add(method="GET", path="*/products/servers", kind="slow", delay=0.3)
    started = time.monotonic()
    a.list_servers_types(zone=ZONE)  # the SDK sets no timeout at all: it just waits
    assert time.monotonic() - started >= 0.3


def test_stuck_starting_and_vanished(scaleway_env: ScalewaySim, cloudsim_clock: FakeClock) -> None:
    sim = scaleway_env
    a = api(sim)
    server = create(a)
    sim.faults.add(method="POST", path="*/action", kind="stuck")
    a.server_action(server_id=server.id, action="poweron")
    cloudsim_clock.advance(3600)
    assert a.get_server(server_id=server.id).server.state == "starting"

    sim.vanish(server.id)
    with pytest.raises(ScalewayException) as err:
        a.get_server(server_id=server.id)
    assert err.value.status_code == 404 and sim.instance(server.id).deleted_by == "vendor"


def test_request_log_keeps_no_secret(scaleway_env: ScalewaySim, monkeypatch: Any) -> None:
    # The fixture's fake secret equals the fake project id, which rightly appears in queries:
    # use a secret of its own so the scan means something.
    secret = "0badc0de-0000-4000-8000-5ec2e75ec2e7"
    monkeypatch.setenv("SCW_SECRET_KEY", secret)
    a = custom_api.InstanceUtilsV1API(scaleway.Client.from_config_file_and_env())
    server = create(a)
    a.set_server_user_data(server_id=server.id, key="cloud-init", content=CLOUD_INIT.encode())
    assert all(e.authenticated and "x-auth-token" not in e.headers for e in scaleway_env.log)
    assert not scaleway_env.log.contains(secret)
    assert not scaleway_env.log.contains(SCW_ACCESS_KEY)  # the access key never goes on the wire
    # The SDK's {} body on GET is read and logged, not misparsed.
    gets = [e for e in scaleway_env.log if e.method == "GET"]
    assert all(e.body_text in ("", "{}") for e in gets)
    assert {e.client for e in scaleway_env.log} == {"127.0.0.1"}


def test_schema_violations_are_caught(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    a = api(sim)
    sim.tamper(
        lambda b: {"server": {**b["server"], "state": "exploded"}} if "server" in b else b,
        method="POST",
        path="*/servers",
    )
    create(a)
    requests.post(
        f"{sim.url}/instance/v1/zones/{ZONE}/servers",
        json={"commercial_type": "L4-1-24G", "projet": SCW_PROJECT_ID},
        headers={"x-auth-token": SCW_SECRET_KEY},
        timeout=5,
    )
    found = sim.take_violations()
    assert [(v.kind, v.status) for v in found] == [("response", 201), ("request", None)]
    assert "exploded" in found[0].message and "projet" in found[1].message
