"""ScalewayProvider through the real scaleway SDK against the Scaleway simulator (tests/cloudsim).

The contract suite (maider.testing.ProviderContract) runs first; the tests after it cover what is
Scaleway's own: zone-scoped ids and listings across every GPU zone, manual paging, the
create-stopped → user data → poweron sequence, the Block Storage root volume (tagged at create,
deleted after its server, found by tag when the server vanished), security groups on the wire
(and copied to the instance's zone), every fault kind at every step of a create and a delete,
the API URL override, request timeouts (the SDK sets none), secrets, and the live catalog.

Every test ends with no billed server *and no billed volume* left (the ``cloud`` fixture).
A delete waits for its server to be gone; the provider's ``sleep``/``clock`` are the
simulator's fake clock here (``make_provider``), so those waits are simulated seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("scaleway")
pytest.importorskip("maider_scaleway")
requests = pytest.importorskip("requests")  # comes with scaleway-core

# After the importorskips, on purpose (E402).
from maider.provider import (  # noqa: E402
    AuthError,
    CapacityError,
    InstanceSpec,
    InstanceStatus,
    NotFound,
    ProviderError,
)
from maider.retry import RetryPolicy, TransientError  # noqa: E402
from maider.testing import TEST_PUBLIC_KEY, USER_DATA, ProviderContract  # noqa: E402
from maider_scaleway.provider import ScalewayProvider, _status, server_tag  # noqa: E402
from maider_scaleway.settings import ScalewaySettings  # noqa: E402
from tests.cloudsim import FakeClock, NetGuard, ScalewaySim  # noqa: E402
from tests.cloudsim.catalogs import ScwType  # noqa: E402
from tests.cloudsim.ledger import SBS_5K_EUR_PER_GB_HOUR, VolumeRecord  # noqa: E402
from tests.cloudsim.scaleway import DEFAULT_ORG  # noqa: E402
from tests.cloudsim.testing import SCW_PROJECT_ID  # noqa: E402

# The simulator's fixture secret equals its project id, which rightly appears in queries: these
# credentials are distinct, so a scan for the secret means something.
SECRET = "0badc0de-7e57-4000-8000-5ec2e75ec2e7"
BAD_SECRET = "deadbeef-0000-4000-8000-00000000b0d5"
ACCESS = "SCWMAIDERTESTKEY0001"
ZONE = "fr-par-2"
TYPE_ID = "H100-1-80G"


def _ed25519_line(seed: int, comment: str) -> str:
    """A well-formed ssh-ed25519 public key line (random-looking bytes, nobody's key)."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes((seed * 7 + i) % 256 for i in range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


OTHER_KEY = _ed25519_line(1, "other")

Z = r"^/instance/v1/zones/[a-z]{2}-[a-z]{3}-[1-9]"
U = r"[0-9a-f-]{36}"
#: The contract's operation names → (method, path pattern) in the simulator's request log.
#: "delete" is the action endpoint (terminate), which poweron shares.
OPERATIONS: dict[str, tuple[str | None, str]] = {
    "create": ("POST", Z + "/servers$"),
    "get": ("GET", Z + f"/servers/{U}$"),
    "list": ("GET", Z + "/servers$"),
    "delete": ("POST", Z + f"/servers/{U}/action$"),
    "ssh_key": (None, "^/iam/v1alpha1/ssh-keys"),
    "firewall": (None, Z + "/security_groups"),
    "catalog": ("GET", Z + "/products/servers"),
}


class ScalewayCloud:
    """The contract suite's CloudDouble over a ScalewaySim."""

    def __init__(self, sim: ScalewaySim, clock: FakeClock, secrets: list[str]) -> None:
        self.sim, self.clock, self.secrets = sim, clock, secrets

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def running_ids(self) -> set[str]:
        return {f"{r.region}/{r.id}" for r in self.sim.ledger.running("scaleway")}

    def fail(self, operation: str, kind: str, *, on_call: int = 1, times: int = 1) -> None:
        method, path = OPERATIONS[operation]
        # Retry-After 0 keeps the suite fast; that the header is honoured is tested below.
        self.sim.faults.add(method=method, path=path, kind=kind, on_call=on_call, times=times, retry_after=0)

    def vanish(self, instance_id: str) -> None:
        self.sim.vanish(instance_id.partition("/")[2])

    def request_texts(self) -> list[str]:
        return [e.request_text() for e in self.sim.log]

    def count(self, operation: str) -> int:
        method, path = OPERATIONS[operation]
        return self.sim.log.count(method, path)


class FastRetrySettings(ScalewaySettings):
    """A 10 ms first backoff instead of 0.5 s, so exhausting the retries stays quick.

    The waits themselves are maider.retry's (tests/test_retry.py); the contract suite below
    runs with the real policy.
    """

    def retry_policy(self) -> RetryPolicy:
        return dataclasses.replace(super().retry_policy(), initial_wait=0.01)


def make_provider(
    sim: ScalewaySim, secret: str = SECRET, *, fast: bool = True, **overrides: Any
) -> ScalewayProvider:
    values: dict[str, Any] = {
        "access_key": ACCESS,
        "secret_key": secret,
        "project_id": SCW_PROJECT_ID,
        "api_url": sim.url,
        "zone": ZONE,
        "max_attempts": 4,
        "retry_max_seconds": 10,
    }
    values.update(overrides)
    provider = ScalewayProvider((FastRetrySettings if fast else ScalewaySettings)(**values))
    # A delete waits for its server to be gone: in simulated time, on the simulator's clock.
    provider.sleep = sim.clock.sleep  # type: ignore[attr-defined]
    provider.clock = sim.clock.now
    provider.wall_time = sim.clock.now  # type: ignore[method-assign]  # API key expiries in the sim's time
    return provider


@pytest.fixture
def cloud(
    scaleway_sim: ScalewaySim, cloudsim_clock: FakeClock, cloudsim_net_guard: NetGuard
) -> Iterator[ScalewayCloud]:
    scaleway_sim.token = SECRET  # the fixture's simulator accepts any key; this one only ours
    yield ScalewayCloud(scaleway_sim, cloudsim_clock, [SECRET, ACCESS])
    # Every test, the contract's included, ends with no billed server it did not delete, and no
    # Block Storage volume either (a deleted server only detaches its root volume).
    assert alive(scaleway_sim) == [], "servers left running"
    assert [v.id for v in scaleway_sim.ledger.leaked_volumes()] == [], "volumes left behind"


@pytest.fixture
def sim(cloud: ScalewayCloud) -> ScalewaySim:
    return cloud.sim


@pytest.fixture
def provider(cloud: ScalewayCloud, request: pytest.FixtureRequest) -> ScalewayProvider:
    # The contract suite runs with the real retry policy; the Scaleway tests with a fast one.
    return make_provider(cloud.sim, fast=request.cls is not TestContract)


@pytest.fixture
def bad_provider(cloud: ScalewayCloud) -> ScalewayProvider:
    return make_provider(cloud.sim, secret=BAD_SECRET)


class TestContract(ProviderContract):
    region = ZONE
    type_id = TYPE_ID

    def test_vanished_instance_reads_as_deleted(self, provider: Any, cloud: Any) -> None:
        super().test_vanished_instance_reads_as_deleted(provider, cloud)
        # Scaleway: the vanished server left its root volume detached and billed. The lifecycle
        # deletes every instance it tracks; that delete finds the volume by its tag.
        (volume,) = cloud.sim.ledger.leaked_volumes()
        assert volume.server is not None and not volume.server.exists
        provider.delete_instance(f"{volume.zone}/{volume.server.id}")
        assert cloud.sim.ledger.leaked_volumes() == []


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def spec(session: str | None = None, **overrides: Any) -> InstanceSpec:
    session = session or uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "name": f"maider-{session}",
        "region": ZONE,
        "type_id": TYPE_ID,
        "user_data": USER_DATA,
        "tags": ("maider", f"maider-session-{session}"),
        "session_tag": f"maider-session-{session}",
        "ssh_public_key": TEST_PUBLIC_KEY,
    }
    values.update(overrides)
    return InstanceSpec(**values)


def uuid_of(instance_id: str) -> str:
    return instance_id.partition("/")[2]


def alive(sim: ScalewaySim) -> list[str]:
    return [f"{r.region}/{r.id}" for r in sim.ledger.running("scaleway")]


def actions(sim: ScalewaySim, server_uuid: str) -> list[str]:
    return [
        e.body["action"]
        for e in sim.log.find("POST", f"*/servers/{server_uuid}/action")
        if isinstance(e.body, dict) and e.status == 202
    ]


BLOCK = r"^/block/v1alpha1/zones/[a-z]{2}-[a-z]{3}-[1-9]/volumes"
VOLUME_PATH = BLOCK + f"/{U}$"


def root_volume(sim: ScalewaySim, instance_id: str) -> VolumeRecord:
    """The Block Storage volume the simulator made for this server."""
    (volume,) = [
        v
        for v in sim.ledger.volumes("scaleway")
        if v.server is not None and v.server.id == uuid_of(instance_id)
    ]
    return volume


def terminate_all(provider: ScalewayProvider, cloud: ScalewayCloud) -> None:
    for vm_id in alive(cloud.sim):
        provider.delete_instance(vm_id)
    cloud.advance(60)
    assert alive(cloud.sim) == []


# --------------------------------------------------------------------------------------------
# create: the wire, the sequence, user data, tags
# --------------------------------------------------------------------------------------------


def test_create_sends_stopped_server_then_user_data_then_poweron(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    s = spec(firewall_id=fw, user_data="#cloud-config\n# é ünïcode survives\nruncmd: [[echo, hi]]\n")
    vm = provider.create_instance(s)

    zone, server_uuid = vm.id.split("/")
    assert zone == ZONE and fw.startswith(f"{ZONE}/")
    assert (vm.status, vm.raw_status, vm.region, vm.type_id) == (
        InstanceStatus.BOOTING,
        "starting",
        ZONE,
        TYPE_ID,
    )

    post = sim.log.find("POST", OPERATIONS["create"][1])[0]
    body = post.body
    assert body["commercial_type"] == TYPE_ID and body["image"] == "ubuntu_noble_gpu_os_12"
    assert body["tags"] == list(s.tags) and body["name"] == s.name
    assert body["security_group"] == uuid_of(fw) and body["dynamic_ip_required"] is True
    assert body["project"] == SCW_PROJECT_ID
    assert body["volumes"]["0"]["volume_type"] == "sbs_volume" and body["volumes"]["0"]["size"] == 200 * 10**9

    # Order on the wire: create (stopped) → PATCH cloud-init → poweron.
    seq = [
        (e.method, e.path.rsplit("/", 1)[-1])
        for e in sim.log
        if e.path.startswith(f"/instance/v1/zones/{ZONE}/servers")
    ]
    assert seq == [("POST", "servers"), ("PATCH", "cloud-init"), ("POST", "action")]
    patch = sim.log.find("PATCH", "*/user_data/cloud-init")[0]
    assert patch.headers["content-type"] == "text/plain"
    rec = sim.instance(server_uuid)
    assert rec.user_data == s.user_data  # exactly, decoded as UTF-8 like the API does
    assert rec.tags == list(s.tags) and rec.attrs["security_group"] == uuid_of(fw)
    assert actions(sim, server_uuid) == ["poweron"]

    cloud.advance(45)
    running = provider.get_instance(vm.id)
    assert running.status is InstanceStatus.RUNNING and running.public_ipv4 == rec.ipv4
    assert running.tags == s.tags and running.name == s.name
    terminate_all(provider, cloud)


def test_spec_image_and_root_volume_size_are_used(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, root_volume_gb=500)
    provider.create_instance(spec(image="ubuntu_jammy_gpu_os_12"))
    body = sim.log.find("POST", OPERATIONS["create"][1])[0].body
    assert body["image"] == "ubuntu_jammy_gpu_os_12" and body["volumes"]["0"]["size"] == 500 * 10**9
    terminate_all(provider, cloud)


def test_state_mapping_through_a_lifecycle(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    vm = provider.create_instance(spec())
    assert provider.get_instance(vm.id).status is InstanceStatus.BOOTING
    cloud.advance(45)
    assert provider.get_instance(vm.id).status is InstanceStatus.RUNNING
    # delete_instance waits for the server to go; what another process sees meanwhile:
    seen: list[tuple[InstanceStatus, str]] = []
    second: list[int] = []

    def sleep(seconds: float) -> None:
        if not seen:
            deleting = provider.get_instance(vm.id)
            seen.append((deleting.status, deleting.raw_status))
            before = len(actions(sim, uuid_of(vm.id)))
            other = make_provider(sim, delete_wait_seconds=0)
            with pytest.raises(ProviderError, match="still billed"):
                other.delete_instance(vm.id)  # a second delete while terminating sends nothing
            second.append(len(actions(sim, uuid_of(vm.id))) - before)
        cloud.advance(seconds)

    provider.sleep = sleep
    provider.delete_instance(vm.id)
    assert seen == [(InstanceStatus.DELETING, "stopping")] and second == [0]
    assert actions(sim, uuid_of(vm.id)) == ["poweron", "terminate"]
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED
    assert sim.instance(uuid_of(vm.id)).deleted_by == "client"


@pytest.mark.parametrize(
    ("state", "detail", "status"),
    [
        ("stopped", "", InstanceStatus.PROVISIONING),
        ("starting", "provisioning node", InstanceStatus.BOOTING),
        ("running", "booted", InstanceStatus.RUNNING),
        ("stopping", "terminating", InstanceStatus.DELETING),
        ("stopping", "", InstanceStatus.STOPPING),
        ("stopped_in_place", "", InstanceStatus.STOPPED),
        ("locked", "", InstanceStatus.ERROR),
        ("exploded", "", InstanceStatus.UNKNOWN),
    ],
)
def test_status_table(state: str, detail: str, status: InstanceStatus) -> None:
    assert _status(state, detail) is status


def test_bad_ids_are_errors_not_not_found(provider: ScalewayProvider, cloud: ScalewayCloud) -> None:
    for bad in ("12345", "fr-par-2", f"{ZONE}/not-a-uuid", f"nowhere/{uuid.uuid4()}"):
        with pytest.raises(ProviderError) as info:
            provider.get_instance(bad)
        assert not isinstance(info.value, NotFound)
    with pytest.raises(NotFound):
        provider.get_instance(f"{ZONE}/{uuid.uuid4()}")
    provider.delete_instance(f"{ZONE}/{uuid.uuid4()}")  # unknown: gone, not an error


def test_stopped_server_is_deleted_not_terminated(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    # A server left stopped (its create failed before poweron) cannot be terminated, only deleted.
    sim.faults.add(method="POST", path=OPERATIONS["delete"][1], kind="server_error", times=None)
    sim.faults.add(method="DELETE", path=OPERATIONS["get"][1], kind="server_error", times=None)
    with pytest.raises(ProviderError):
        provider.create_instance(spec())
    (left,) = alive(sim)
    assert provider.get_instance(left).status is InstanceStatus.PROVISIONING
    sim.faults.clear()
    provider.delete_instance(left)
    assert sim.log.find("DELETE", OPERATIONS["get"][1])[-1].status == 204
    assert alive(sim) == [] and actions(sim, uuid_of(left)) == []


# --------------------------------------------------------------------------------------------
# zones and pagination
# --------------------------------------------------------------------------------------------


def test_ids_carry_the_zone_and_listing_covers_every_gpu_zone(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    a = provider.create_instance(spec(session="paris"))
    b = provider.create_instance(spec(session="warsaw", region="pl-waw-2"))
    c = provider.create_instance(spec(session="render", region="fr-par-1", type_id="RENDER-S"))
    assert [a.id.split("/")[0], b.id.split("/")[0], c.id.split("/")[0]] == [
        "fr-par-2",
        "pl-waw-2",
        "fr-par-1",
    ]
    sim.log.clear()
    listed = provider.list_instances("maider")
    assert {v.id for v in listed} == {a.id, b.id, c.id}
    assert {v.id: v.region for v in listed} == {a.id: "fr-par-2", b.id: "pl-waw-2", c.id: "fr-par-1"}
    zones = sorted(e.path.split("/")[4] for e in sim.log.find("GET", OPERATIONS["list"][1]))
    assert zones == ["fr-par-1", "fr-par-2", "pl-waw-2"]  # one page per zone, every GPU zone
    assert provider.get_instance(b.id).region == "pl-waw-2"
    assert [v.id for v in provider.list_instances("maider-session-warsaw")] == [b.id]
    terminate_all(provider, cloud)


def test_listing_pages_beyond_one_page(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, page_size=2)
    made = {provider.create_instance(spec(session=f"page{n}")).id for n in range(5)}
    sim.log.clear()
    assert {v.id for v in provider.list_instances("maider")} == made
    pages = [
        (e.path.split("/")[4], e.query["page"][0], e.query["per_page"][0])
        for e in sim.log.find("GET", OPERATIONS["list"][1])
    ]
    # fr-par-2 holds 5: pages 1-3 of 2, and no request for the empty page 4 (X-Total-Count says 5).
    assert [p for p in pages if p[0] == ZONE] == [(ZONE, "1", "2"), (ZONE, "2", "2"), (ZONE, "3", "2")]
    assert sorted(p[0] for p in pages if p[0] != ZONE) == ["fr-par-1", "pl-waw-2"]
    terminate_all(provider, cloud)


def test_a_listing_without_a_total_walks_to_a_short_page(cloud: ScalewayCloud) -> None:
    # The SDK reads a missing X-Total-Count as total_count=0: that must not end the walk early.
    provider = make_provider(cloud.sim, page_size=2)
    pages = [["a", "b"], ["c", "d"], ["e"]]
    asked: list[int] = []

    def fetch(page: int, size: int) -> Any:
        asked.append(page)
        return types.SimpleNamespace(servers=pages[page - 1] if page <= len(pages) else [], total_count=0)

    assert provider._collect(fetch, "servers") == ["a", "b", "c", "d", "e"] and asked == [1, 2, 3]


def test_a_failing_page_is_retried_alone(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, page_size=2)
    made = {provider.create_instance(spec(session=f"retry{n}")).id for n in range(3)}
    sim.log.clear()
    sim.faults.add(method="GET", path=OPERATIONS["list"][1], kind="rate_limit", on_call=3, retry_after=0)
    assert {v.id for v in provider.list_instances("maider")} == made
    fr2 = [e.query["page"][0] for e in sim.log.find("GET", f"/instance/v1/zones/{ZONE}/servers")]
    assert fr2 == ["1", "2", "2"]  # page 2 failed once and was asked again; page 1 was not
    terminate_all(provider, cloud)


# --------------------------------------------------------------------------------------------
# faults at every step: never a VM the caller does not know about
# --------------------------------------------------------------------------------------------

ACTION = OPERATIONS["delete"][1]
USER_DATA_PATH = Z + f"/servers/{U}/user_data/cloud-init$"


@pytest.mark.parametrize(
    ("method", "path", "kind", "times", "outcome"),
    [
        # the POST itself
        ("POST", OPERATIONS["create"][1], "rate_limit", 1, "ok"),
        ("POST", OPERATIONS["create"][1], "server_error", 1, "ok"),
        ("POST", OPERATIONS["create"][1], "drop", 1, "ok"),
        ("POST", OPERATIONS["create"][1], "lost_response", 1, "ok"),
        ("POST", OPERATIONS["create"][1], "server_error", 2, "ok"),
        ("POST", OPERATIONS["create"][1], "no_capacity", 1, CapacityError),
        ("POST", OPERATIONS["create"][1], "server_error", None, TransientError),
        # the cloud-init PATCH
        ("PATCH", USER_DATA_PATH, "lost_response", 1, "ok"),
        ("PATCH", USER_DATA_PATH, "server_error", None, TransientError),
        # poweron
        ("POST", ACTION, "lost_response", 1, "ok"),
        ("POST", ACTION, "drop", 1, "ok"),
        ("POST", ACTION, "no_capacity", 1, CapacityError),
        # the tag lookup create_once makes after a lost create answer
        ("GET", OPERATIONS["list"][1], "drop", 1, "lookup"),
        # the root volume's tags (Block Storage PATCH, before user data and poweron)
        ("PATCH", VOLUME_PATH, "lost_response", 1, "ok"),
        ("PATCH", VOLUME_PATH, "rate_limit", 1, "ok"),
        ("PATCH", VOLUME_PATH, "server_error", None, TransientError),
    ],
)
def test_create_faults_leave_no_unknown_vm(
    provider: ScalewayProvider,
    cloud: ScalewayCloud,
    sim: ScalewaySim,
    method: str,
    path: str,
    kind: str,
    times: int | None,
    outcome: Any,
) -> None:
    s = spec()
    if outcome == "lookup":
        sim.faults.add(method="POST", path=OPERATIONS["create"][1], kind="lost_response")
    sim.faults.add(method=method, path=path, kind=kind, times=times, retry_after=0)
    if outcome in ("ok", "lookup"):
        vm = provider.create_instance(s)
        assert alive(sim) == [vm.id]  # exactly one server, and it is the one returned
        assert actions(sim, uuid_of(vm.id)) == ["poweron"]  # never powered on twice
        assert sim.instance(uuid_of(vm.id)).user_data == s.user_data
        cloud.advance(45)
        assert provider.get_instance(vm.id).status is InstanceStatus.RUNNING
        terminate_all(provider, cloud)
    else:
        with pytest.raises(outcome) as info:
            provider.create_instance(s)
        for secret in cloud.secrets:
            assert secret not in str(info.value)
        sim.faults.clear()
        # A server that existed was deleted, not left behind powered off.
        assert alive(sim) == [] and provider.list_instances(s.session_tag) == []
    assert [f for f in sim.faults.faults if f.fired == 0] == []


def test_cleanup_failure_is_reported_and_the_server_is_findable(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    s = spec()
    sim.faults.add(method="PATCH", path=USER_DATA_PATH, kind="server_error", times=None)
    sim.faults.add(method="DELETE", path=OPERATIONS["get"][1], kind="server_error", times=None)
    with pytest.raises(TransientError) as info:
        provider.create_instance(s)
    (left,) = alive(sim)
    assert left in str(info.value) and s.session_tag in str(info.value)
    sim.faults.clear()
    assert [v.id for v in provider.list_instances(s.session_tag)] == [left]
    provider.delete_instance(left)
    assert alive(sim) == []


@pytest.mark.parametrize("kind", ["lost_response", "drop", "server_error", "rate_limit"])
def test_delete_faults(provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim, kind: str) -> None:
    vm = provider.create_instance(spec())
    cloud.advance(45)
    sim.faults.add(method="POST", path=ACTION, kind=kind, retry_after=0)
    provider.delete_instance(vm.id)
    assert actions(sim, uuid_of(vm.id)) == ["poweron", "terminate"]  # never terminated twice
    cloud.advance(20)
    assert alive(sim) == [] and provider.get_instance_status(vm.id) is InstanceStatus.DELETED


def test_delete_propagates_errors_other_than_not_found(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    vm = provider.create_instance(spec())
    cloud.advance(45)
    sim.faults.add(method="POST", path=ACTION, kind="server_error", times=None)
    with pytest.raises(TransientError):
        provider.delete_instance(vm.id)
    sim.faults.clear()
    assert alive(sim) == [vm.id]  # an error is never read as "deleted"
    sim.faults.add(method="GET", path=OPERATIONS["get"][1], kind="no_capacity")
    with pytest.raises(CapacityError):
        provider.delete_instance(vm.id)
    provider.delete_instance(vm.id)
    cloud.advance(20)
    assert alive(sim) == []


@pytest.mark.parametrize("kind", ["rate_limit", "server_error", "drop", "lost_response"])
def test_get_faults_are_retried(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim, kind: str
) -> None:
    vm = provider.create_instance(spec())
    sim.faults.add(method="GET", path=OPERATIONS["get"][1], kind=kind, retry_after=0)
    assert provider.get_instance(vm.id).id == vm.id
    terminate_all(provider, cloud)


def test_retry_after_is_honoured(provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    sim.faults.add(method="GET", path=OPERATIONS["list"][1], kind="rate_limit", retry_after=1)
    started = time.monotonic()
    assert provider.list_instances("maider") == []
    assert time.monotonic() - started >= 1.0


def test_non_json_error_answer_keeps_its_status(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    # A proxy's HTML 502: the SDK raises a bare JSONDecodeError; the status still decides.
    sim.faults.add(method="GET", path=f"/instance/v1/zones/{ZONE}/servers", kind="server_error", status=502)
    sim.tamper(lambda body: b"<html>502 Bad Gateway</html>" if "type" in body else body, method="GET")
    assert provider.list_instances("maider") == []
    sim.faults.add(
        method="GET", path=f"/instance/v1/zones/{ZONE}/servers", kind="server_error", status=502, times=None
    )
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert "HTTP 502" in str(info.value) and "Bad Gateway" in str(info.value)
    assert {v.kind for v in sim.take_violations()} == {"response"}  # the HTML body, on purpose


# --------------------------------------------------------------------------------------------
# the Block Storage root volume: tagged at create, deleted after its server, never left behind
# --------------------------------------------------------------------------------------------


def test_root_volume_is_tagged_and_deleted_after_its_server(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    s = spec()
    vm = provider.create_instance(s)
    volume = root_volume(sim, vm.id)
    server_uuid = uuid_of(vm.id)
    assert (volume.size, volume.zone, volume.project, volume.status) == (
        200 * 10**9,
        ZONE,
        SCW_PROJECT_ID,
        "in_use",
    )
    # The instance's tags plus its own: found by session, and by server once the server is gone.
    assert volume.tags == [*s.tags, server_tag(server_uuid)]
    created = sim.log.find("POST", OPERATIONS["create"][1])[0].response["server"]
    assert created["volumes"] == {
        "0": {"boot": False, "volume_type": "sbs_volume", "id": volume.id, "zone": ZONE}
    }
    # Tagged first (the create body cannot carry volume tags), then user data, then poweron.
    writes = [(e.method, e.path.rsplit("/", 1)[-1]) for e in sim.log if e.method in ("PATCH", "POST")][1:]
    assert writes == [("PATCH", volume.id), ("PATCH", "cloud-init"), ("POST", "action")]

    cloud.advance(45 + 3600)  # an hour of use
    sim.log.clear()
    started = cloud.clock.now()
    provider.delete_instance(vm.id)
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED
    assert volume.deleted_by == "client" and sim.ledger.leaked_volumes() == []
    assert actions(sim, server_uuid) == ["terminate"]  # the log was cleared after poweron
    # It waited for the server (20 s to terminate) and the detach (2 s), polling, then deleted.
    (deleted,) = sim.log.find("DELETE", VOLUME_PATH)
    gone_at = sim.instance(server_uuid).gone_at
    assert deleted.status == 204 and gone_at is not None and deleted.at >= gone_at + sim.timings["detach"]
    reads = [
        (e.response["status"], [r["status"] for r in e.response["references"]])
        for e in sim.log.find("GET", VOLUME_PATH)
    ]
    assert reads == [("in_use", ["detaching"]), ("available", [])]
    assert deleted.at - started < 60  # polls every few seconds, not a minute
    # Billed from its creation until its deletion, per GB-hour.
    assert volume.billed_seconds() == deleted.at - volume.created_at
    hours = volume.billed_seconds() / 3600
    assert volume.cost() == pytest.approx(200 * SBS_5K_EUR_PER_GB_HOUR * hours, abs=1e-6)
    provider.delete_instance(vm.id)  # again: server and volume gone, nothing to do
    assert sim.log.count("DELETE", VOLUME_PATH) == 1


@pytest.mark.parametrize("kind", [None, "rate_limit", "server_error", "drop"])
def test_vanished_server_volume_is_found_by_tag(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim, kind: str | None
) -> None:
    other = provider.create_instance(spec())  # another session's server and volume: untouched
    vm = provider.create_instance(spec())
    cloud.advance(45)
    sim.vanish(uuid_of(vm.id))  # deleted behind maider's back
    cloud.advance(60)
    volume = root_volume(sim, vm.id)
    assert volume.status == "available" and sim.ledger.detached_volumes() == [volume]  # billed, orphaned
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED
    sim.log.clear()
    if kind is not None:
        sim.faults.add(method="GET", path=BLOCK + "$", kind=kind, retry_after=0)
    provider.delete_instance(vm.id)
    listings = sim.log.find("GET", BLOCK + "$")
    assert {e.query["tags"][0] for e in listings} == {server_tag(uuid_of(vm.id))}
    assert listings[-1].query["project_id"] == [SCW_PROJECT_ID]
    assert volume.deleted_by == "client" and root_volume(sim, other.id).status == "in_use"
    provider.delete_instance(vm.id)  # idempotent: nothing left to find
    assert sim.log.count("DELETE", VOLUME_PATH) == 1
    terminate_all(provider, cloud)


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", VOLUME_PATH, "rate_limit"),
        ("GET", VOLUME_PATH, "drop"),
        ("GET", VOLUME_PATH, "server_error"),
        ("DELETE", VOLUME_PATH, "lost_response"),
        ("DELETE", VOLUME_PATH, "drop"),
        ("DELETE", VOLUME_PATH, "server_error"),
        ("DELETE", VOLUME_PATH, "rate_limit"),
        ("GET", OPERATIONS["get"][1], "lost_response"),  # a poll while waiting for the server
    ],
)
def test_volume_delete_faults_leave_no_volume(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim, method: str, path: str, kind: str
) -> None:
    vm = provider.create_instance(spec())
    cloud.advance(45)
    sim.faults.add(method=method, path=path, kind=kind, on_call=2 if path == OPERATIONS["get"][1] else 1)
    provider.delete_instance(vm.id)
    assert [f.fired for f in sim.faults.faults] == [1]
    assert sim.ledger.leaked_volumes() == [] and alive(sim) == []
    assert [e.status for e in sim.log.find("DELETE", VOLUME_PATH)][-1] in (204, 404)


def test_server_outliving_the_wait_is_reported_with_its_volume(
    cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    provider = make_provider(sim, delete_wait_seconds=60)
    sim.timings["terminate"] = 3600  # a terminate that takes an hour
    vm = provider.create_instance(spec())
    cloud.advance(45)
    volume = root_volume(sim, vm.id)
    with pytest.raises(ProviderError) as info:
        provider.delete_instance(vm.id)
    assert f"{ZONE}/{volume.id}" in str(info.value) and "still billed" in str(info.value)
    assert vm.id in str(info.value) and "\n" not in str(info.value)
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETING and volume.deleted_at is None
    cloud.advance(3600)
    provider.delete_instance(vm.id)  # the server is gone by now: its tag finds the volume
    assert volume.deleted_by == "client"


def test_volume_left_in_use_is_reported_then_deleted(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, delete_wait_seconds=120)
    sim.timings["detach"] = 3600  # the volume stays attached long after its server
    vm = provider.create_instance(spec())
    volume = root_volume(sim, vm.id)
    with pytest.raises(ProviderError) as info:
        provider.delete_instance(vm.id)
    assert f"{ZONE}/{volume.id}" in str(info.value) and "still in_use" in str(info.value)
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED  # the server is gone
    assert sim.log.count("DELETE", VOLUME_PATH) == 0  # never sent while in use
    cloud.advance(3600)
    provider.delete_instance(vm.id)
    assert volume.deleted_by == "client"


def test_refused_volume_delete_waits_and_tries_again(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    # The volume reads "available" too early (a race the real API may have): the DELETE is refused
    # as still in use (412), and the provider waits and tries again rather than failing.
    vm = provider.create_instance(spec())
    sim.tamper(lambda body: {**body, "status": "available"}, method="GET", path=VOLUME_PATH)
    provider.delete_instance(vm.id)
    statuses = [e.status for e in sim.log.find("DELETE", VOLUME_PATH)]
    assert statuses[0] == 412 and statuses[-1] == 204 and set(statuses[1:-1]) <= {412}
    refused = sim.log.find("DELETE", VOLUME_PATH)[0].response
    assert (refused["type"], refused["precondition"]) == ("precondition_failed", "resource_still_in_use")


def test_volume_delete_error_names_the_volume_and_keeps_its_type(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    vm = provider.create_instance(spec())
    volume = root_volume(sim, vm.id)
    sim.faults.add(method="DELETE", path=VOLUME_PATH, kind="server_error", times=None)
    with pytest.raises(TransientError) as info:
        provider.delete_instance(vm.id)
    assert f"{ZONE}/{volume.id}" in str(info.value) and "still billed" in str(info.value)
    assert provider.get_instance_status(vm.id) is InstanceStatus.DELETED and volume.deleted_at is None
    sim.faults.clear()
    provider.delete_instance(vm.id)
    assert volume.deleted_by == "client"


def test_block_permission_error_is_an_auth_error(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    # A key whose IAM policy lacks BlockStorageFullAccess: the create is undone, the error says what to add.
    sim.tamper(
        lambda body: {"message": "insufficient permissions", "type": "permissions_denied"},
        method="PATCH",
        path=VOLUME_PATH,
    )
    sim.faults.add(method="PATCH", path=VOLUME_PATH, kind="no_capacity", status=403)
    with pytest.raises(AuthError, match="BlockStorageFullAccess"):
        provider.create_instance(spec())
    assert alive(sim) == []  # and the fixture checks that its volume went too


def test_firewall_policies_are_repaired(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    group = sim.security_groups[uuid_of(fw)]
    group.update(inbound_default_policy="accept", stateful=False)  # changed by hand in the console
    assert provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",)) == fw
    (patch,) = sim.log.find("PATCH", Z + f"/security_groups/{U}$")
    assert patch.status == 200 and patch.body == {
        "inbound_default_policy": "drop",
        "outbound_default_policy": "accept",
        "stateful": True,
    }
    assert (group["inbound_default_policy"], group["outbound_default_policy"], group["stateful"]) == (
        "drop",
        "accept",
        True,
    )
    provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    assert sim.log.count("PATCH", Z + f"/security_groups/{U}$") == 1  # right already: not patched again


# --------------------------------------------------------------------------------------------
# timeouts, the URL override, the network, secrets
# --------------------------------------------------------------------------------------------


def test_request_timeout_reaches_every_request(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, request_timeout=0.3)
    sim.faults.add(method="GET", path=OPERATIONS["list"][1], kind="slow", delay=5)
    started = time.monotonic()
    assert provider.list_instances("maider") == []  # the slow answer timed out and was retried
    assert time.monotonic() - started < 3
    once = make_provider(sim, request_timeout=0.3, max_attempts=1)
    sim.faults.add(method="GET", path=OPERATIONS["list"][1], kind="slow", delay=5)
    with pytest.raises(TransientError) as info:
        once.list_instances("maider")
    assert "timed out" in str(info.value)


def test_timeout_hook_leaves_other_sdk_users_alone(sim: ScalewaySim) -> None:
    # Only maider's API objects get a timeout; a plain SDK client keeps the SDK's behaviour.
    import scaleway
    import scaleway_core.api
    from scaleway.instance.v1.custom_api import InstanceUtilsV1API

    import maider_scaleway.api  # noqa: F401 - installs the hook

    seen: list[Any] = []
    real = scaleway_core.api.requests._real  # type: ignore[attr-defined]

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            seen.append(kwargs.get("timeout"))
            return real.request(method, url, **kwargs)

    hook = scaleway_core.api.requests
    hook._real = Spy()  # type: ignore[attr-defined]
    try:
        client = scaleway.Client(
            access_key=ACCESS,
            secret_key=SECRET,
            default_project_id=SCW_PROJECT_ID,
            default_zone=ZONE,
            api_url=sim.url,
        )
        InstanceUtilsV1API(client).list_servers_types()
        make_provider(sim, request_timeout=7.5).list_instances("maider")
    finally:
        hook._real = real  # type: ignore[attr-defined]
    assert seen[0] is None and set(seen[1:]) == {7.5}


def test_api_url_override_reaches_every_request(
    cloud: ScalewayCloud, sim: ScalewaySim, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    real_send = requests.adapters.HTTPAdapter.send

    def spy(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(request.url)
        return real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", spy)
    # The trailing slash the SDK would refuse is tolerated.
    provider = make_provider(sim, api_url=sim.url + "/")
    assert provider.check_credentials().ok
    provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    fw = provider.ensure_firewall("maider-ssh", ["198.51.100.0/24"], ("maider",))
    vm = provider.create_instance(spec(firewall_id=fw, region="pl-waw-2", type_id="L4-1-24G"))
    provider.get_instance(vm.id)
    provider.list_instances("maider")
    assert provider.fetch_catalog() is not None
    provider.delete_instance(vm.id)
    assert sent and all(url.startswith(sim.url + "/") for url in sent)
    assert len(sent) == len(sim.log)  # every request we made is one the simulator received
    assert {e.client for e in sim.log} == {"127.0.0.1"}


def test_env_override_reaches_the_sdk(
    sim: ScalewaySim, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # A developer's scw profile (here one pointing elsewhere, with another key) is never read.
    profile = tmp_path / "scw.yaml"
    profile.write_text(
        f"access_key: SCWPROFILEKEY0000000\nsecret_key: {BAD_SECRET}\napi_url: http://127.0.0.1:9\n"
        f"default_project_id: {SCW_PROJECT_ID}\n"
    )
    monkeypatch.setenv("SCW_CONFIG_PATH", str(profile))
    monkeypatch.setenv("MAIDER_SCALEWAY_API_URL", sim.url)
    monkeypatch.setenv("SCW_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("SCW_SECRET_KEY", SECRET)
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", SCW_PROJECT_ID)
    monkeypatch.setenv("MAIDER_SCALEWAY_ZONE", "pl-waw-2")
    provider = ScalewayProvider()  # settings from the environment, as the CLI loads them
    assert provider.check_credentials().ok
    check = sim.log.find("GET", OPERATIONS["list"][1])[-1]
    assert check.path == "/instance/v1/zones/pl-waw-2/servers" and check.authenticated
    monkeypatch.delenv("MAIDER_SCALEWAY_API_URL")
    monkeypatch.setenv("SCW_API_URL", sim.url)  # the vendor's own variable works too
    before = len(sim.log)
    assert ScalewayProvider().list_instances("maider") == []
    assert len(sim.log) == before + 3


def test_default_url_is_scaleways_and_never_reached(sim: ScalewaySim, cloudsim_net_guard: NetGuard) -> None:
    provider = make_provider(sim, api_url=None, max_attempts=2)
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert "cannot reach the Scaleway API" in str(info.value)
    assert cloudsim_net_guard.blocked and all("api.scaleway.com" in b for b in cloudsim_net_guard.blocked)
    cloudsim_net_guard.blocked.clear()  # blocked on purpose: the guard did its job
    assert len(sim.log) == 0


def test_secrets_stay_out_of_the_wire_and_of_errors(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    vm = provider.create_instance(spec(firewall_id=provider.ensure_firewall("fw", ["10.0.0.1/32"], ())))
    provider.delete_instance(vm.id)
    assert all(e.authenticated for e in sim.log)
    for secret in (SECRET, ACCESS):
        assert not sim.log.contains(secret)
    # Even a vendor message that quotes the key is scrubbed.
    sim.faults.add(
        method="GET",
        path=OPERATIONS["list"][1],
        kind="server_error",
        times=None,
        message=f"bad {SECRET} {ACCESS}",
    )
    with pytest.raises(TransientError) as info:
        provider.list_instances("maider")
    assert SECRET not in str(info.value) and ACCESS not in str(info.value) and "***" in str(info.value)


def test_auth_errors_name_the_variables(
    cloud: ScalewayCloud, sim: ScalewaySim, bad_provider: ScalewayProvider
) -> None:
    check = bad_provider.check_credentials()
    assert not check.ok and "SCW_SECRET_KEY" in check.reason and BAD_SECRET not in check.reason
    with pytest.raises(AuthError) as info:
        bad_provider.get_instance(f"{ZONE}/{uuid.uuid4()}")
    assert "authentication is denied" in str(info.value) and "\n" not in str(info.value)
    assert sim.log.count("GET", OPERATIONS["get"][1]) == 1  # an auth error is not retried

    missing = ScalewayProvider(ScalewaySettings(api_url=sim.url))
    assert not missing.check_credentials().ok
    with pytest.raises(AuthError, match="missing: set SCW_ACCESS_KEY"):
        missing.list_instances("maider")
    malformed = make_provider(sim, secret="not-a-uuid-but-secret")
    with pytest.raises(AuthError) as info:
        malformed.list_instances("maider")
    assert "secret key must be a UUID" in str(info.value) and "not-a-uuid-but-secret" not in str(info.value)


def test_vendor_error_types(provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    """Each error answer Scaleway gives on a create, typed (the body is rewritten per case)."""
    answer: dict[str, str] = {}
    sim.tamper(
        lambda body: dict(answer) if body.get("type") == "out_of_stock" else body,
        method="POST",
        path="*/servers",
    )
    cases: list[tuple[int, str, str, type[ProviderError], str]] = [
        (
            403,
            "quotas_exceeded",
            "Quota exceeded for instances_h100_1_80g",
            ProviderError,
            "Organization → Quotas",
        ),
        (403, "permissions_denied", "insufficient permissions", AuthError, "InstancesFullAccess"),
        (401, "denied_authentication", "authentication is denied", AuthError, "SCW_SECRET_KEY"),
        (400, "invalid_arguments", "image is not compatible", ProviderError, "image is not compatible"),
        (412, "out_of_stock", "H100-1-80G is out of stock", CapacityError, "no capacity"),
    ]
    for status, kind, message, error, text in cases:
        answer.update(type=kind, message=message)
        sim.faults.add(method="POST", path=OPERATIONS["create"][1], kind="no_capacity", status=status)
        with pytest.raises(ProviderError) as info:
            provider.create_instance(spec())
        assert type(info.value) is error and text in str(info.value) and info.value.status == status
    assert sim.log.count("POST", OPERATIONS["create"][1]) == len(cases)  # none of them is retried
    assert alive(sim) == []


# --------------------------------------------------------------------------------------------
# SSH keys and security groups
# --------------------------------------------------------------------------------------------


def test_ssh_key_is_uploaded_once_to_the_project(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    first = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider-laptop")
    (key,) = sim.ssh_keys
    assert key["id"] == first and key["project_id"] == SCW_PROJECT_ID and key["name"] == "maider-laptop"
    # Same key material with another comment and spacing: the same key.
    body = TEST_PUBLIC_KEY.split()[:2]
    assert provider.ensure_ssh_key(f"  {body[0]}   {body[1]}  renamed\n", "x") == first
    other = provider.ensure_ssh_key(OTHER_KEY, "other")
    assert other != first and len(sim.ssh_keys) == 2
    listing = sim.log.find("GET", "/iam/v1alpha1/ssh-keys")[0]
    assert listing.query["project_id"] == [SCW_PROJECT_ID]


def test_ssh_key_lost_upload_answer_is_not_a_second_key(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    sim.faults.add(method="POST", path="/iam/v1alpha1/ssh-keys", kind="lost_response")
    key_id = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    assert [k["id"] for k in sim.ssh_keys] == [key_id]
    assert [e.status for e in sim.log.find("POST", "/iam/v1alpha1/ssh-keys")] == [200, 409]


def test_ssh_key_found_on_a_later_page(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    provider = make_provider(sim, page_size=20)
    for n in range(25):
        provider.ensure_ssh_key(_ed25519_line(n + 10, f"filler-{n}"), f"filler-{n}")
    wanted = provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider")
    sim.log.clear()
    assert provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider") == wanted
    listings = sim.log.find("GET", "/iam/v1alpha1/ssh-keys")
    # IAM's page size is page_size (the SDK's name, which the simulator honours): 20 + 6.
    assert [(e.query["page"], e.query["page_size"]) for e in listings] == [(["1"], ["20"]), (["2"], ["20"])]
    assert [len(e.response["ssh_keys"]) for e in listings] == [20, 6]
    assert sim.log.count("POST", "/iam/v1alpha1/ssh-keys") == 0


def test_firewall_rules_on_the_wire(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    _, group_id = fw.split("/")
    created = sim.log.find("POST", Z + "/security_groups$")[0].body
    assert created["inbound_default_policy"] == "drop" and created["outbound_default_policy"] == "accept"
    assert (
        created["stateful"] is True and created["tags"] == ["maider"] and created["project"] == SCW_PROJECT_ID
    )
    put = sim.log.find("PUT", f"*/security_groups/{group_id}/rules")[-1].body["rules"]
    assert [
        (
            r["direction"],
            r["action"],
            r["protocol"],
            r["ip_range"],
            r["dest_port_from"],
            r.get("dest_port_to"),
        )
        for r in put
    ] == [("inbound", "accept", "TCP", "203.0.113.7/32", 22, 0)]  # the SDK sends 0 for "no range"
    assert [(r["ip_range"], r["dest_port_from"], r["dest_port_to"]) for r in sim.rules[group_id]] == [
        ("203.0.113.7/32", 22, None)
    ]

    # Reused by name, its rules made right (a host address is written as its /32 network).
    again = provider.ensure_firewall("maider-ssh", ["198.51.100.9", "2001:db8::/64", "198.51.100.9/32"], ())
    assert again == fw and len(sim.security_groups) == 1
    assert [r["ip_range"] for r in sim.rules[group_id]] == ["198.51.100.9/32", "2001:db8::/64"]
    assert sim.log.count("POST", Z + "/security_groups$") == 1
    # No CIDR: no rule, so inbound SSH is dropped by the default policy.
    provider.ensure_firewall("maider-ssh", [], ())
    assert sim.rules[group_id] == []
    with pytest.raises(ProviderError, match="not an IP network"):
        provider.ensure_firewall("maider-ssh", ["not-a-cidr"], ())
    # Another group with a longer name is not mistaken for it.
    assert provider.ensure_firewall("maider-ssh-2", ["203.0.113.7/32"], ()) != fw


@pytest.mark.parametrize("kind", ["lost_response", "drop", "server_error"])
def test_firewall_create_faults_make_one_group(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim, kind: str
) -> None:
    sim.faults.add(method="POST", path=Z + "/security_groups$", kind=kind)
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    assert list(sim.security_groups) == [fw.split("/")[1]]
    assert [r["ip_range"] for r in sim.rules[fw.split("/")[1]]] == ["203.0.113.7/32"]
    cloud.fail("firewall", "server_error")  # the rules PUT, or any group call, is retried too
    assert provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",)) == fw


def test_firewall_is_copied_to_the_instances_zone(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    fw = provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",))
    a = provider.create_instance(spec(region="pl-waw-2", type_id="L4-1-24G", firewall_id=fw))
    b = provider.create_instance(spec(region="pl-waw-2", type_id="L4-1-24G", firewall_id=fw))
    groups = {g["zone"]: g for g in sim.security_groups.values()}
    assert sorted(groups) == ["fr-par-2", "pl-waw-2"] and len(sim.security_groups) == 2  # copied once
    copy = groups["pl-waw-2"]
    assert (
        copy["name"] == "maider-ssh"
        and copy["inbound_default_policy"] == "drop"
        and copy["tags"] == ["maider"]
    )
    assert [r["ip_range"] for r in sim.rules[copy["id"]]] == ["203.0.113.7/32"]
    for vm in (a, b):
        assert sim.instance(uuid_of(vm.id)).attrs["security_group"] == copy["id"]
    with pytest.raises(ProviderError, match="not a Scaleway firewall id"):
        provider.create_instance(spec(firewall_id="sg-123"))
    terminate_all(provider, cloud)


# --------------------------------------------------------------------------------------------
# the live catalog
# --------------------------------------------------------------------------------------------


def test_live_catalog(provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    sim.set_availability("pl-waw-2", "L4-1-24G", "shortage")
    sim.set_availability("fr-par-2", "L40S-1-48G", "scarce")
    sim.types.append(ScwType("L4-16-24G", 16, "L4", 24, 128, 768, 12.6, ("pl-waw-2",)))
    cat = provider.fetch_catalog()
    assert cat is not None and cat.source == "live" and cat.provider == "scaleway"
    assert cat.as_of == dt.date.today()
    h100 = cat.types["H100-1-80G"]
    assert h100.regions == ("fr-par-2", "pl-waw-2") and h100.hourly_price.amount == 2.8665
    assert h100.hourly_price.currency == "EUR" and h100.region_prices == {}
    assert (h100.gpu.name, h100.gpu.architecture, h100.gpu.compute_capability) == (
        "H100 PCIe",
        "Hopper",
        (9, 0),
    )
    assert (h100.gpu.vram_gb, h100.gpu_count, h100.vcpus, h100.ram_gb) == (80, 1, 24, 240)
    assert cat.types["L4-1-24G"].regions == ("fr-par-2",)  # shortage in pl-waw-2
    assert "scarce in fr-par-2" in cat.types["L40S-1-48G"].notes
    assert "B300-SXM-8-288G" not in cat.types and "B300-SXM-8-288G" in cat.note  # shortage everywhere
    assert cat.types["RENDER-S"].regions == ("fr-par-1",) and cat.types["RENDER-S"].gpu.name == "Tesla P100"
    assert "DEV1-S" not in cat.types and "POP2-2C-8G" not in cat.types  # no GPU
    new = cat.types["L4-16-24G"]  # unknown to the embedded catalog: the GPU is recognised by name
    assert (new.gpu.name, new.gpu.architecture, new.gpu_count, new.label) == (
        "L4",
        "Ada Lovelace",
        16,
        "L4 x16",
    )
    assert (
        set(cat.regions) == {"fr-par-1", "fr-par-2", "pl-waw-2"} and cat.regions["pl-waw-2"].country == "PL"
    )
    # Two listings per GPU zone, one page each.
    assert sim.log.count("GET", OPERATIONS["catalog"][1]) == 6


def test_live_catalog_pages_by_hand_and_needs_no_key(cloud: ScalewayCloud, sim: ScalewaySim) -> None:
    full = make_provider(sim).fetch_catalog()
    sim.log.clear()
    public = ScalewayProvider(ScalewaySettings(api_url=sim.url, page_size=5))
    paged = public.fetch_catalog()
    assert paged is not None and full is not None and paged.types == full.types
    fr2 = [e.query["page"][0] for e in sim.log.find("GET", f"/instance/v1/zones/{ZONE}/products/servers")]
    assert fr2 == ["1", "2", "3", "4"]  # 17 types in fr-par-2: 5+5+5+2, no empty page asked for
    assert not any(e.authenticated for e in sim.log)


def test_catalog_faults_are_retried(
    provider: ScalewayProvider, cloud: ScalewayCloud, sim: ScalewaySim
) -> None:
    for n, kind in enumerate(("rate_limit", "server_error", "drop"), start=1):
        cloud.fail("catalog", kind, on_call=n)
    cat = provider.fetch_catalog()
    assert cat is not None and TYPE_ID in cat.types
    cloud.fail("catalog", "server_error", times=100)
    with pytest.raises(TransientError):
        provider.fetch_catalog()


# --------------------------------------------------------------------------------------------
# the watchdog's credential: an IAM application + policy + expiring API key, minted per session
# --------------------------------------------------------------------------------------------


def _running_server(provider: ScalewayProvider, cloud: ScalewayCloud) -> Any:
    vm = provider.create_instance(spec())
    cloud.advance(120)
    return provider.get_instance(vm.id)


def test_self_destruct_mints_a_project_scoped_expiring_key(
    provider: ScalewayProvider, cloud: ScalewayCloud
) -> None:
    from maider.testing import run_self_destruct

    sim = cloud.sim
    vm = _running_server(provider, cloud)
    destruct = provider.self_destruct(vm, valid_for_s=7200, label="maider-watchdog-s1")
    [app_body] = [e.body for e in sim.log.find("POST", "/iam/v1alpha1/applications")]
    [policy_body] = [e.body for e in sim.log.find("POST", "/iam/v1alpha1/policies")]
    [key_body] = [e.body for e in sim.log.find("POST", "/iam/v1alpha1/api-keys")]
    [app] = sim.applications.values()
    assert app_body["name"] == "maider-watchdog-s1"
    assert policy_body["application_id"] == app["id"]
    assert policy_body["rules"] == [
        {"permission_set_names": ["InstancesFullAccess"], "project_ids": [SCW_PROJECT_ID]}
    ]
    expected = dt.datetime.fromtimestamp(int(cloud.clock.now() + 7200), tz=dt.timezone.utc)
    assert dt.datetime.fromisoformat(key_body["expires_at"]) == expected == destruct.expires_at
    assert key_body["application_id"] == app["id"] and key_body["default_project_id"] == SCW_PROJECT_ID
    [key] = sim.api_keys.values()
    [policy] = sim.policies.values()
    assert destruct.revoke_handle == f"{app['id']}/{policy['id']}/{key.access_key}"
    [call] = destruct.calls
    assert (call.method, call.json_body) == ("POST", {"action": "terminate"})
    assert call.url == f"{sim.url}/instance/v1/zones/{ZONE}/servers/{uuid_of(vm.id)}/action"
    assert call.headers["X-Auth-Token"] == key.secret_key and destruct.secrets == (key.secret_key,)
    assert key.secret_key not in repr(destruct) and SECRET not in str(call.to_dict())
    # The minted secret only ever travelled in the create answer, never in a request.
    assert not any(key.secret_key in text for text in cloud.request_texts())

    # The VM terminates itself: the server is gone and its compute billing stops ...
    assert run_self_destruct(destruct) == [202]
    cloud.advance(60)
    assert alive(sim) == []
    # ... but its Block Storage root volume is only detached, still billed, until the laptop
    # side's delete_instance (maider down / cleanup) finds it by its tag and deletes it.
    [volume] = sim.ledger.leaked_volumes()
    assert volume.deleted_at is None
    provider.delete_instance(vm.id)
    assert sim.ledger.leaked_volumes() == []

    provider.revoke_self_destruct(destruct.revoke_handle or "")
    assert sim.api_keys == {} and sim.policies == {} and sim.applications == {}
    provider.revoke_self_destruct(destruct.revoke_handle or "")  # every part 404s: fine


def test_minted_key_reaches_only_instances_of_its_project(
    provider: ScalewayProvider, cloud: ScalewayCloud
) -> None:
    sim = cloud.sim
    vm = _running_server(provider, cloud)
    destruct = provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-s2")
    narrow = make_provider(sim, secret=destruct.secrets[0])
    assert narrow.get_instance(vm.id).id == vm.id  # its project's servers: yes
    # No IAM: it cannot mint keys (nor read SSH keys), and no Block Storage.
    iam = narrow._iam_api()
    with pytest.raises(AuthError) as info:
        narrow._attempt(
            lambda: iam.create_application(name="x", description="x", organization_id=DEFAULT_ORG)
        )
    assert info.value.status == 403 and destruct.secrets[0] not in str(info.value)
    with pytest.raises(AuthError):
        narrow.ensure_ssh_key(TEST_PUBLIC_KEY, "x")
    block = narrow._block_api()
    with pytest.raises(AuthError):
        narrow._attempt(lambda: block.list_volumes(zone=ZONE))
    assert sim.log.find(None, "/iam/v1alpha1/applications")[-1].response["type"] == "permissions_denied"
    # Another project's server: refused.
    other = str(uuid.uuid4())
    sim.instance(uuid_of(vm.id)).attrs["project"] = other
    with pytest.raises(AuthError):
        narrow.get_instance(vm.id)
    sim.instance(uuid_of(vm.id)).attrs["project"] = SCW_PROJECT_ID
    provider.delete_instance(vm.id)
    provider.revoke_self_destruct(destruct.revoke_handle or "")


def test_self_destruct_refused_without_iam_permissions(
    provider: ScalewayProvider, cloud: ScalewayCloud
) -> None:
    from maider.provider import SelfDestructUnavailable

    vm = _running_server(provider, cloud)
    cloud.sim.main_permissions = {"InstancesFullAccess", "BlockStorageFullAccess", "SSHKeysFullAccess"}
    with pytest.raises(SelfDestructUnavailable) as info:
        provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-s3")
    message = str(info.value)
    assert "IAMManager" in message and "\n" not in message and SECRET not in message
    assert cloud.sim.applications == {}
    provider.delete_instance(vm.id)


def test_self_destruct_failing_midway_leaves_nothing(
    provider: ScalewayProvider, cloud: ScalewayCloud
) -> None:
    vm = _running_server(provider, cloud)
    cloud.sim.faults.add(method="POST", path="/iam/v1alpha1/api-keys", kind="500")
    with pytest.raises(ProviderError):
        provider.self_destruct(vm, valid_for_s=3600, label="maider-watchdog-s4")
    assert cloud.sim.log.count("POST", "/iam/v1alpha1/api-keys") == 1  # never sent twice
    assert cloud.sim.applications == {} and cloud.sim.policies == {} and cloud.sim.api_keys == {}
    provider.delete_instance(vm.id)


def test_scaleway_internal_poweroff_is_still_billed() -> None:
    assert ScalewayProvider.poweroff_stops_billing is False
