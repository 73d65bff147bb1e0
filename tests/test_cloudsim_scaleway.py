"""The Scaleway simulator, driven by the real scaleway SDK (InstanceUtilsV1API, BlockV1Alpha1API, IamV1Alpha1API)."""

from __future__ import annotations

import base64
import time
import types
from typing import Any

import pytest

from tests.cloudsim import FakeClock, ScalewaySim
from tests.cloudsim.catalogs import SCW_TYPES
from tests.cloudsim.ledger import SBS_5K_EUR_PER_GB_HOUR
from tests.cloudsim.testing import SCW_ACCESS_KEY, SCW_PROJECT_ID, SCW_SECRET_KEY

pytest_plugins = ["tests.conftest_cloudsim"]

scaleway = pytest.importorskip("scaleway")
custom_api = pytest.importorskip("scaleway.instance.v1.custom_api")
instance_v1 = pytest.importorskip("scaleway.instance.v1")
iam_v1alpha1 = pytest.importorskip("scaleway.iam.v1alpha1")
block_v1alpha1 = pytest.importorskip("scaleway.block.v1alpha1")
scaleway_core_api = pytest.importorskip("scaleway_core.api")
requests = pytest.importorskip("requests")  # comes with every SDK

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0000000000000 me@laptop"
CLOUD_INIT = "#cloud-config\npackages: [htop]\n"
ZONE = "fr-par-2"
ScalewayException = scaleway_core_api.ScalewayException
OTHER_PROJECT = "99999999-8888-4777-8666-555555555555"


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


# --------------------------------------------------------------------------------------------
# Block Storage (SBS): the root volume a server create makes, and what its deletion leaves
# --------------------------------------------------------------------------------------------


def block(a: Any) -> Any:
    return block_v1alpha1.BlockV1Alpha1API(a.client)


def test_root_volume_is_detached_not_deleted_with_its_server(
    scaleway_env: ScalewaySim, cloudsim_clock: FakeClock
) -> None:
    sim = scaleway_env
    a = api(sim)
    blk = block(a)
    server = create(a)  # an sbs_volume root of 100 GB
    root = server.volumes["0"]
    # The Instance API names the volume and nothing more (as the real answer does).
    assert (str(root.volume_type), root.boot, root.zone) == ("sbs_volume", False, ZONE)
    assert root.size is None and root.name is None and root.state is None

    vol = blk.get_volume(volume_id=root.id)
    assert (str(vol.status), vol.size, vol.project_id, vol.tags, vol.zone) == (
        "in_use",
        100_000_000_000,
        SCW_PROJECT_ID,
        [],
        ZONE,
    )
    assert vol.name == "ubuntu_noble_gpu_os_12_sbs_volume_0" and vol.type_ == "sbs_5k"
    assert (str(vol.specs.class_), vol.specs.perf_iops) == ("sbs", 5000)
    assert [(r.product_resource_type, r.product_resource_id, str(r.status)) for r in vol.references] == [
        ("instance_server", server.id, "attached")
    ]
    with pytest.raises(ScalewayException) as err:  # in use: refused
        blk.delete_volume(volume_id=root.id)
    body = err.value.response.json()
    assert err.value.status_code == 412
    assert (body["type"], body["precondition"]) == ("precondition_failed", "resource_still_in_use")

    tagged = blk.update_volume(volume_id=root.id, tags=["maider", "maider-session-x"])
    assert tagged.tags == ["maider", "maider-session-x"] and str(tagged.status) == "in_use"
    assert sim.log.find("PATCH", f"/block/v1alpha1/zones/{ZONE}/volumes/*")[0].body == {
        "tags": ["maider", "maider-session-x"]
    }

    a.server_action(server_id=server.id, action="poweron")
    cloudsim_clock.advance(45)
    a.server_action(server_id=server.id, action="terminate")
    assert str(blk.get_volume(volume_id=root.id).status) == "in_use"  # while terminating
    cloudsim_clock.advance(20)
    with pytest.raises(ScalewayException):
        a.get_server(server_id=server.id)  # the server is gone...
    detaching = blk.get_volume(volume_id=root.id)  # ...its volume is let go a moment later
    assert str(detaching.status) == "in_use" and [str(r.status) for r in detaching.references] == [
        "detaching"
    ]
    cloudsim_clock.advance(2)
    freed = blk.get_volume(volume_id=root.id)
    assert str(freed.status) == "available" and freed.references == [] and freed.last_detached_at is not None
    assert freed.tags == ["maider", "maider-session-x"]  # findable by tag

    rec = sim.ledger.volume(root.id)
    assert sim.ledger.running() == [] and sim.ledger.detached_volumes() == [
        rec
    ]  # billed, attached to nothing
    assert sim.ledger.leaked_volumes() == [rec] and rec.deleted_at is None
    cloudsim_clock.advance(3600)
    blk.delete_volume(volume_id=root.id)
    for call in (blk.get_volume, blk.delete_volume):
        with pytest.raises(ScalewayException) as err:
            call(volume_id=root.id)
        assert err.value.status_code == 404 and err.value.response.json()["type"] == "not_found"
    assert sim.ledger.leaked_volumes() == [] and rec.deleted_by == "client"
    # Billed from creation to deletion, attached or not: 100 GB for 45 + 20 + 2 + 3600 s.
    assert rec.billed_seconds() == 3667
    assert rec.cost() == pytest.approx(100 * SBS_5K_EUR_PER_GB_HOUR * 3667 / 3600, abs=1e-6)
    assert sim.ledger.total_cost() == pytest.approx(sim.instance(server.id).cost() + rec.cost(), abs=1e-6)


def test_vanished_and_deleted_servers_leave_their_volume_too(
    scaleway_env: ScalewaySim, cloudsim_clock: FakeClock
) -> None:
    sim = scaleway_env
    a = api(sim)
    blk = block(a)
    vanished, stopped = create(a, name="maider-a"), create(a, name="maider-b")
    sim.vanish(vanished.id)
    a.delete_server(server_id=stopped.id)  # DELETE: for a stopped server, immediate
    cloudsim_clock.advance(2)
    for server in (vanished, stopped):
        assert str(blk.get_volume(volume_id=server.volumes["0"].id).status) == "available"
    assert len(sim.ledger.detached_volumes()) == 2


def test_volume_listing_filters_and_pages(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    a = api(sim)
    blk = block(a)
    servers = [create(a, name=f"maider-{n}") for n in range(5)]
    vols = [s.volumes["0"].id for s in servers]
    blk.update_volume(volume_id=vols[0], tags=["maider-session-a"])
    blk.update_volume(volume_id=vols[1], tags=["maider-session-b", "x"])

    assert [v.id for v in blk.list_volumes_all(page_size=2)] == vols  # oldest first
    pages = sim.log.find("GET", f"/block/v1alpha1/zones/{ZONE}/volumes")
    assert [(e.query["page"], e.query["page_size"]) for e in pages] == [
        (["1"], ["2"]),
        (["2"], ["2"]),
        (["3"], ["2"]),  # short: the SDK stops there
    ]
    assert pages[0].query["project_id"] == [SCW_PROJECT_ID] and pages[0].response["total_count"] == 5
    assert "X-Total-Count" not in pages[0].response_headers  # in the body, like IAM

    assert [v.id for v in blk.list_volumes_all(tags=["maider-session-a"])] == [vols[0]]
    # Several tags: one matching is enough (the SDK sends the parameter once per tag).
    assert [v.id for v in blk.list_volumes_all(tags=["maider-session-a", "x"])] == vols[:2]
    assert sim.log.find("GET", f"/block/v1alpha1/zones/{ZONE}/volumes")[-1].query["tags"] == [
        "maider-session-a",
        "x",
    ]
    assert [v.id for v in blk.list_volumes_all(product_resource_id=servers[2].id)] == [vols[2]]
    assert blk.list_volumes_all(project_id=OTHER_PROJECT) == []
    assert blk.list_volumes_all(zone="pl-waw-2") == []
    assert blk.list_volumes(page=9, page_size=2).volumes == []  # past the end: empty
    with pytest.raises(scaleway_core_api.ValidationError):
        blk.list_volumes(page_size=500)


def test_update_security_group(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    a = api(sim)
    sg = a.create_security_group(
        name="maider",
        description="",
        stateful=False,
        inbound_default_policy="accept",
        outbound_default_policy="accept",
    ).security_group
    up = a.update_security_group(security_group_id=sg.id, inbound_default_policy="drop", stateful=True)
    group = up.security_group
    assert (str(group.inbound_default_policy), str(group.outbound_default_policy), group.stateful) == (
        "drop",
        "accept",
        True,
    )
    assert group.name == "maider" and group.id == sg.id
    patch = sim.log.find("PATCH", f"/instance/v1/zones/{ZONE}/security_groups/*")[0]
    assert patch.status == 200 and patch.body == {"inbound_default_policy": "drop", "stateful": True}
    with pytest.raises(ScalewayException) as err:
        a.update_security_group(security_group_id="00000000-0000-4000-8000-000000000000", stateful=True)
    assert err.value.status_code == 404


def test_iam_keys_page_by_page_size(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    iam = iam_v1alpha1.IamV1Alpha1API(api(sim).client)
    for n in range(3):
        blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + bytes([n]) * 32).decode()
        iam.create_ssh_key(public_key=f"ssh-ed25519 {blob} k{n}", name=f"k{n}", project_id=SCW_PROJECT_ID)
    first = iam.list_ssh_keys(page=1, page_size=2)
    assert len(first.ssh_keys) == 2 and first.total_count == 3
    assert len(iam.list_ssh_keys(page=2, page_size=2).ssh_keys) == 1
    assert sim.log.find("GET", "/iam/v1alpha1/ssh-keys")[0].query["page_size"] == ["2"]
    url = f"{sim.url}/iam/v1alpha1/ssh-keys?per_page=1"  # the Instance API's name works too
    answer = requests.get(url, headers={"x-auth-token": SCW_SECRET_KEY}, timeout=5).json()
    assert len(answer["ssh_keys"]) == 1 and answer["total_count"] == 3
    with pytest.raises(scaleway_core_api.ValidationError):
        iam.list_ssh_keys(page_size=101)


def test_block_schema_violations_are_caught(scaleway_env: ScalewaySim) -> None:
    sim = scaleway_env
    a = api(sim)
    vol_id = create(a).volumes["0"].id
    url = f"{sim.url}/block/v1alpha1/zones/{ZONE}/volumes/{vol_id}"
    headers = {"x-auth-token": SCW_SECRET_KEY}
    requests.patch(url, json={"tagz": ["x"]}, headers=headers, timeout=5)  # a typo in a request
    sim.tamper(lambda b: {**b, "status": "melting"}, method="GET", path="*/volumes/*")
    block(a).get_volume(volume_id=vol_id)  # an answer that drifted from the schema
    found = sim.take_violations()
    assert [(v.kind, v.method) for v in found] == [("request", "PATCH"), ("response", "GET")]
    assert "tagz" in found[0].message and "melting" in found[1].message


# -- IAM applications, policies and API keys (the watchdog's credential) -----------------------


def test_iam_minted_key_permissions_expiry_and_revocation(
    scaleway_env: ScalewaySim, cloudsim_clock: FakeClock
) -> None:
    import datetime as dt

    a = api(scaleway_env)
    server = create(a)
    a.server_action(server_id=server.id, action="poweron")
    cloudsim_clock.advance(60)
    iam = iam_v1alpha1.IamV1Alpha1API(a.client)
    app = iam.create_application(name="watchdog", description="d", organization_id=server.organization)
    rule = iam_v1alpha1.RuleSpecs(
        condition=None, permission_set_names=["InstancesFullAccess"], project_ids=[SCW_PROJECT_ID]
    )
    policy = iam.create_policy(name="watchdog", description="d", application_id=app.id, rules=[rule])
    assert (policy.nb_rules, policy.nb_permission_sets) == (1, 1)
    expires = dt.datetime.fromtimestamp(cloudsim_clock.now() + 600, tz=dt.timezone.utc)
    key = iam.create_api_key(
        application_id=app.id, description="d", expires_at=expires, default_project_id=SCW_PROJECT_ID
    )
    assert key.secret_key and key.expires_at == expires
    assert iam.get_api_key(access_key=key.access_key).secret_key is None  # shown once only

    narrow = scaleway.Client(
        access_key=key.access_key,
        secret_key=key.secret_key,
        default_project_id=SCW_PROJECT_ID,
        default_zone=ZONE,
        api_url=scaleway_env.url,
    )
    na = custom_api.InstanceUtilsV1API(narrow)
    assert na.get_server(server_id=server.id).server.id == server.id
    with pytest.raises(ScalewayException) as info:
        iam_v1alpha1.IamV1Alpha1API(narrow).create_application(
            name="x", description="x", organization_id=server.organization
        )
    assert info.value.status_code == 403
    assert info.value.response.json()["type"] == "permissions_denied"
    with pytest.raises(ScalewayException) as info:
        block_v1alpha1.BlockV1Alpha1API(narrow).list_volumes(zone=ZONE)
    assert info.value.status_code == 403

    cloudsim_clock.advance(601)  # expired
    with pytest.raises(ScalewayException) as info:
        na.get_server(server_id=server.id)
    assert info.value.status_code == 401

    # Deleting the application deletes its keys (the SDK's docstring says so).
    iam.delete_application(application_id=app.id)
    assert scaleway_env.api_keys == {}
    iam.delete_policy(policy_id=policy.id)
    with pytest.raises(ScalewayException) as info:
        iam.delete_policy(policy_id=policy.id)
    assert info.value.status_code == 404
    a.server_action(server_id=server.id, action="terminate")
    cloudsim_clock.advance(60)
    for vol in scaleway_env.volumes():
        vol.deleted_at = cloudsim_clock.now()  # not this test's subject
