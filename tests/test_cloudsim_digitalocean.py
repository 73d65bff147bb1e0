"""The DigitalOcean simulator, driven by the real python-digitalocean SDK."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cloudsim import DigitalOceanSim, FakeClock
from tests.cloudsim.catalogs import DO_SIZES
from tests.cloudsim.digitalocean import NO_CAPACITY_MESSAGE, NOT_FOUND_MESSAGE
from tests.cloudsim.testing import DO_TOKEN, require_spec

pytest_plugins = ["tests.conftest_cloudsim"]
# python-digitalocean 1.17 calls jsonpickle in a way it deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:keys will default to True:DeprecationWarning")

digitalocean = pytest.importorskip("digitalocean")
requests = pytest.importorskip("requests")  # comes with every SDK

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheSimulatorOnly0000000000000 me@laptop"
CLOUD_INIT = "#cloud-config\npackages: [htop]\n"
H100 = "gpu-h100x1-80gb"


def manager() -> Any:
    return digitalocean.Manager(token=DO_TOKEN)


def droplet(name: str = "maider-1", size: str = H100, region: str = "tor1", **kw: Any) -> Any:
    kw.setdefault("tags", ["maider"])
    d = digitalocean.Droplet(
        token=DO_TOKEN, name=name, region=region, size_slug=size, image="gpu-h100x1-base", **kw
    )
    d.create()
    return d


def test_catalog_regions_and_gpu_sizes(digitalocean_env: DigitalOceanSim) -> None:
    m = manager()
    regions = {r.slug: r for r in m.get_all_regions()}
    assert {"tor1", "nyc2", "atl1", "ams3"} <= set(regions)
    sizes = {s.slug: s for s in m.get_all_sizes()}
    for expected in DO_SIZES:
        got = sizes[expected.slug]
        assert (got.price_hourly, got.vcpus) == (expected.hourly, expected.vcpus)
    h100 = sizes[H100]
    assert h100.gpu_info == {"count": 1, "model": "nvidia_h100", "vram": {"amount": 80, "unit": "gib"}}
    assert [d["type"] for d in h100.disk_info] == ["local", "scratch"]
    assert set(h100.regions) == {"ams3", "nyc2", "tor1"} and H100 in regions["tor1"].sizes
    # The SDK asks for 200 a page on every GET, with its trailing slash.
    first = digitalocean_env.log.entries[0]
    assert (first.path, first.query) == ("/v2/regions/", {"per_page": ["200"]})


def test_lifecycle_create_boot_list_delete(
    digitalocean_env: DigitalOceanSim, cloudsim_clock: FakeClock
) -> None:
    sim = digitalocean_env
    fw = digitalocean.Firewall(
        token=DO_TOKEN,
        name="maider-fw",
        inbound_rules=[
            digitalocean.InboundRule("tcp", "22", digitalocean.Sources(addresses=["203.0.113.7/32"]))
        ],
        outbound_rules=[
            digitalocean.OutboundRule("tcp", "all", digitalocean.Destinations(addresses=["0.0.0.0/0"]))
        ],
        tags=["maider"],
    )
    fw.create()
    assert fw.status == "waiting"

    d = droplet(ssh_keys=[PUBKEY], user_data=CLOUD_INIT)  # uploads the key on the way
    assert d.action_ids and sim.log.count("POST", "/v2/account/keys") == 1
    assert fw.add_droplets([d.id]) is True and fw.add_tags(["gpu"]) is True

    m = manager()
    first = m.get_droplet(d.id)
    assert first.status == "new" and first.networks == {"v4": [], "v6": []}
    cloudsim_clock.advance(60)
    up = m.get_droplet(d.id)
    assert up.status == "active" and up.ip_address.startswith("127.2.")
    assert up.gpu_info["model"] == "nvidia_h100"

    # GPU droplets are hidden from the default list (as the real API does); type=gpus shows them.
    assert m.get_all_droplets() == []
    assert m.get_all_droplets(tag_name="maider") == []
    assert [x.id for x in m.get_all_droplets(params={"type": "gpus"})] == [d.id]
    with pytest.raises(digitalocean.DataReadError, match="can not be combined"):
        m.get_all_droplets(tag_name="maider", params={"type": "gpus"})

    rec = sim.instance(d.id)
    assert rec.user_data == CLOUD_INIT and rec.attrs["ssh_keys"] == [PUBKEY]
    assert rec.running_at == rec.created_at + 60

    assert up.destroy() is True
    with pytest.raises(digitalocean.NotFoundError):
        m.get_droplet(d.id)
    assert sim.ledger.running() == []
    assert rec.billed_seconds() == 60 and rec.cost() == pytest.approx(3.39 / 60)


def test_paths_with_and_without_slash_and_error_shape(digitalocean_env: DigitalOceanSim) -> None:
    d = droplet()
    auth = {"Authorization": f"Bearer {DO_TOKEN}"}
    base = digitalocean_env.url
    for path in (f"droplets/{d.id}", f"droplets/{d.id}/", f"droplets/{d.id}?per_page=200"):
        assert requests.get(base + path, headers=auth, timeout=5).json()["droplet"]["id"] == d.id
    missing = requests.get(base + "droplets/1", headers=auth, timeout=5)
    assert missing.status_code == 404
    body = missing.json()
    assert (body["id"], body["message"]) == ("not_found", NOT_FOUND_MESSAGE) and body["request_id"]
    unauth = requests.get(base + "droplets", timeout=5)
    assert unauth.status_code == 401 and unauth.json()["id"] == "unauthorized"


def test_pagination_follows_absolute_next_links(digitalocean_env: DigitalOceanSim) -> None:
    sim = digitalocean_env
    ids = {droplet(name=f"maider-{n}").id for n in range(5)}
    got = manager().get_all_droplets(params={"type": "gpus", "per_page": 2})
    assert {x.id for x in got} == ids
    pages = sim.log.find("GET", "/v2/droplets")
    assert [e.query.get("page") for e in pages] == [None, ["2"], ["3"]]
    first = pages[0].response
    assert first["meta"] == {"total": 5}
    assert first["links"]["pages"]["next"].startswith(sim.root_url + "/v2/droplets?page=2&per_page=2")
    assert "type=gpus" in first["links"]["pages"]["next"]
    assert pages[-1].response["links"]["pages"].keys() == {"first", "prev"}


def test_size_not_available_is_the_vendors_answer(digitalocean_env: DigitalOceanSim) -> None:
    with pytest.raises(digitalocean.DataReadError, match=NO_CAPACITY_MESSAGE):
        droplet(region="sfo3")  # not sold there
    with pytest.raises(digitalocean.DataReadError, match=NO_CAPACITY_MESSAGE):
        droplet(size="gpu-4000adax1-20gb")  # listed, but available: false
    assert digitalocean_env.log.entries[-1].response["id"] == "unprocessable_entity"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("429", "API Rate limit exceeded."),
        ("500", "Server was unable"),
        ("502", "Server was unable"),
        ("503", "Server was unable"),
        ("no_capacity", NO_CAPACITY_MESSAGE),
    ],
)
def test_error_faults_raise_data_read_error(
    digitalocean_env: DigitalOceanSim, kind: str, message: str
) -> None:
    digitalocean_env.faults.add(method="POST", path="/v2/droplets", kind=kind)
    with pytest.raises(digitalocean.DataReadError, match=message):
        droplet()
    status = digitalocean_env.log.entries[-1].status
    assert status == {"429": 429, "500": 500, "502": 502, "503": 503, "no_capacity": 422}[kind]
    assert droplet().id  # the next call goes through


def test_dropped_connection_and_lost_response(digitalocean_env: DigitalOceanSim) -> None:
    sim = digitalocean_env
    sim.faults.add(method="GET", path="/v2/sizes", kind="drop")
    with pytest.raises(requests.ConnectionError):
        manager().get_all_sizes()
    sim.faults.add(method="POST", path="/v2/droplets", kind="lost_response")
    with pytest.raises(requests.ConnectionError):
        droplet()
    assert [r.name for r in sim.ledger.leaked(known_ids=[])] == ["maider-1"]


def test_slow_answer_past_the_client_timeout(digitalocean_env: DigitalOceanSim, monkeypatch: Any) -> None:
    monkeypatch.setenv("PYTHON_DIGITALOCEAN_REQUEST_TIMEOUT_SEC", "0.2")
    digitalocean_env.faults.add(method="GET", path="/v2/regions", kind="slow", delay=1.0)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        manager().get_all_regions()
    assert time.monotonic() - started < 1.0
    assert manager().get_all_regions()


def test_stuck_and_vanished_droplets(digitalocean_env: DigitalOceanSim, cloudsim_clock: FakeClock) -> None:
    sim = digitalocean_env
    sim.faults.add(method="POST", path="/v2/droplets", kind="stuck")
    stuck = droplet(name="stuck")
    cloudsim_clock.advance(3600)
    assert manager().get_droplet(stuck.id).status == "new"

    sim.faults.add(method="GET", path="/v2/droplets/*", kind="vanish")
    with pytest.raises(digitalocean.NotFoundError):
        manager().get_droplet(stuck.id)
    assert sim.instance(stuck.id).deleted_by == "vendor"


def test_request_log_keeps_no_token(digitalocean_env: DigitalOceanSim) -> None:
    droplet(user_data=CLOUD_INIT)
    manager().get_all_droplets(params={"type": "gpus"})
    assert all(e.authenticated and "authorization" not in e.headers for e in digitalocean_env.log)
    assert not digitalocean_env.log.contains(DO_TOKEN)
    assert digitalocean_env.log.contains("#cloud-config")
    assert {e.client for e in digitalocean_env.log} == {"127.0.0.1"}


def test_forgotten_end_point_is_caught(
    digitalocean_sim: DigitalOceanSim, monkeypatch: Any, cloudsim_net_guard: Any
) -> None:
    monkeypatch.delenv("DIGITALOCEAN_END_POINT", raising=False)
    with pytest.raises(requests.ConnectionError):
        digitalocean.Manager(token=DO_TOKEN).get_all_regions()
    assert any("api.digitalocean.com" in b for b in cloudsim_net_guard.clear())


def test_spec_violations_are_caught(digitalocean_env: DigitalOceanSim) -> None:
    require_spec("digitalocean")
    sim = digitalocean_env
    # A size without the required "regions" field must not pass unnoticed.
    sim.tamper(
        lambda b: {**b, "sizes": [{k: v for k, v in s.items() if k != "regions"} for s in b["sizes"]]},
        method="GET",
        path="/v2/sizes",
    )
    manager().get_all_sizes()
    # A create without "size": the API answers 422 and the request is flagged.
    requests.post(
        sim.url + "droplets",
        json={"name": "x", "image": "gpu-h100x1-base"},
        headers={"Authorization": "Bearer t"},
        timeout=5,
    )
    found = sim.take_violations()
    assert [(v.kind, v.path) for v in found] == [("response", "/v2/sizes/"), ("request", "/v2/droplets")]
    assert "regions" in found[0].message and "size" in found[1].message


def test_sdk_traffic_is_spec_valid(digitalocean_env: DigitalOceanSim, cloudsim_clock: FakeClock) -> None:
    require_spec("digitalocean")
    assert digitalocean_env.checker is not None
    d = droplet(ssh_keys=[PUBKEY], user_data=CLOUD_INIT)
    cloudsim_clock.advance(120)
    manager().get_all_droplets(params={"type": "gpus"})
    manager().get_droplet(d.id).destroy()
    assert digitalocean_env.violations == []
    # python-digitalocean's nulls for unset optional fields are tolerated, and said so.
    assert any("vpc_uuid" in t for t in digitalocean_env.tolerated)


def test_custom_scoped_token(digitalocean_env: DigitalOceanSim, cloudsim_clock: FakeClock) -> None:
    narrow_token = "dop_v1_narrow0000000000000000000000000000000000000000000000000000000"
    digitalocean_env.add_token(narrow_token, ["droplet:read"], expires_at=cloudsim_clock.now() + 60)
    d = droplet()
    read = digitalocean.Droplet(token=narrow_token, id=d.id)
    read.load()  # droplet:read
    assert read.name == "maider-1"
    with pytest.raises(digitalocean.DataReadError, match="You do not have permission"):
        read.destroy()  # no droplet:delete
    assert digitalocean_env.log.find("DELETE")[-1].status == 403
    with pytest.raises(digitalocean.DataReadError):
        digitalocean.Manager(token=narrow_token).get_all_sshkeys()
    cloudsim_clock.advance(61)
    with pytest.raises(digitalocean.DataReadError, match="Unable to authenticate you"):
        digitalocean.Droplet(token=narrow_token, id=d.id).load()  # expired: 401
    digitalocean.Droplet(token=DO_TOKEN, id=d.id).destroy()  # the main token may do anything
