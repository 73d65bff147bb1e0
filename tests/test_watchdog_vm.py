"""The idle watchdog ON THE VM, end to end: `maider up` against the cloud simulators and emulated
VMs; the real watchdog program runs as the VM's systemd service (vmsim runs python3 for real)
and acts through the real provider API (or powers the VM off) with no laptop process at all.

Timeouts are shortened through the settings (MAIDER_IDLE_TIMEOUT_MINUTES etc.): seconds, not
minutes. Every test checks the simulator's ledger, and the session record after `maider list`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import (
    PROVIDERS,
    SCW_SECRET,
    SETUPS,
    TOKENS,
    World,
    ledger_id,
    make_world,
)

pytestmark = pytest.mark.timeout(180)

DO_WATCHDOG_TOKEN = "do-watchdog-scoped-token-77aa"

#: Seconds, for the tests: idle 3 s, warned 1.2 s before, poll 0.3 s.
FAST = {
    "MAIDER_IDLE_TIMEOUT_MINUTES": "0.05",
    "MAIDER_MAX_LIFETIME_HOURS": "1",
    "MAIDER_WATCHDOG_WARN_MINUTES": "0.02",
    "MAIDER_WATCHDOG_POLL_SECONDS": "0.3",
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


def _has_self_destruct(pid: str) -> bool:
    from maider import plugins
    from maider.provider import Provider

    cls = plugins.get_provider_class(pid)
    return cls.self_destruct is not Provider.self_destruct


def _up(world: World, cli: Any, pid: str, **settings: str) -> tuple[dict[str, Any], Any]:
    """`maider up`, then stop the laptop side: only the VM acts from here on. The record gets
    ``up_output`` (not a record field: what `up` printed)."""
    require_providers(pid)
    sim = world.sim(pid)
    world.set(**{**FAST, **settings})
    region, type_id = SETUPS[pid]
    up = cli("up", "-p", pid, "-r", region, "-t", type_id)
    assert up.exit_code == 0, up.output
    [record] = world.records()
    _stop_laptop_side(world, record["id"])
    rec = sim.ledger.get(ledger_id(record["instance_id"]), pid)
    return {**record, "up_output": up.stdout}, rec


def _stop_laptop_side(world: World, session_id: str) -> None:
    from maider.session import laptop_watchdog
    from maider.session.state import SessionStore

    store = SessionStore()
    laptop_watchdog.stop(store, store.get(session_id))


def _wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


def _vm(world: World, pid: str, rec: Any) -> Any:
    return world.farm.vm(rec.id, pid)


def _vm_state(world: World, pid: str, rec: Any) -> dict[str, Any]:
    return json.loads(_vm(world, pid, rec).read_text("/var/lib/maider/watchdog/state.json"))


def _journal(world: World, pid: str, rec: Any) -> str:
    return "\n".join(_vm(world, pid, rec).systemd.unit_journal("maider-watchdog.service"))


def _chat(world: World, record: dict[str, Any]) -> dict[str, Any]:
    """One completion through the tunnel; its usage block."""
    from maider.session.state import SessionStore

    key = SessionStore().read_api_key(record["id"])
    body = json.dumps({"model": record["served_model_name"], "prompt": "hi", "max_tokens": 2})
    req = urllib.request.Request(
        f"http://127.0.0.1:{record['api_port']}/v1/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return dict(json.loads(resp.read())["usage"])


# --------------------------------------------------------------------------------------------
# Power-off mode (no deletion credential)
# --------------------------------------------------------------------------------------------


def _poweroff_mode(monkeypatch: pytest.MonkeyPatch, pid: str) -> None:
    """Make the provider offer no credential, as a provider without one does."""
    from maider import plugins

    cls = plugins.get_provider_class(pid)
    monkeypatch.setattr(cls, "self_destruct", lambda self, instance, *, valid_for_s, label: None)


@pytest.mark.parametrize("pid", ["linode", "digitalocean"])
def test_idle_without_credential_powers_off_still_billed_and_down_deletes(
    pid: str, world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    record, rec = _up(world, cli, pid)
    assert record["watchdog"]["mode"] == "poweroff" and record["watchdog"]["enabled"] is True
    assert (
        "watchdog    on the VM: acts after 0.05 min without inference requests, or 1 h" in record["up_output"]
    )
    assert "STILL BILLS a powered-off VM until `maider down`" in record["up_output"]
    vm = _vm(world, pid, rec)
    assert not vm.fs.host("/etc/maider/watchdog-destroy.json").exists()

    took = _wait("the VM powers itself off", lambda: rec.state != rec.ready_state, 30)
    assert took >= 2.0  # not before the idle timeout (3 s from vLLM's readiness, minus up's tail)
    assert vm.state == "off" or _wait("the farm powers the VM off", lambda: vm.state == "off", 5) >= 0
    journal = _journal(world, pid, rec)
    assert "no deletion credential on this VM: powering off (idle)" in journal
    walls = [line for _, unit, line in vm.systemd.journal if unit == "wall"]
    assert any("Broadcast message from root: maider: this VM powers off in" in w for w in walls), walls
    # Powered off, it still exists and still bills (Linode and DigitalOcean bill stopped VMs).
    assert rec.alive and rec.billing.basis == "create"
    assert rec.billed_seconds(rec.clock.now() + 7200) > rec.billed_seconds()

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)["sessions"]
    assert row["vm_state"] == "stopped"
    from maider.session import watchdog
    from maider.session.state import SessionStore

    store = SessionStore()
    after = watchdog.note_vm_state(store, store.get(record["id"]), row["vm_state"])
    assert (
        after.last_error
        == "powered off by the watchdog on the VM (idle); it still bills: `maider down` deletes it"
    )
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    assert not rec.alive
    assert world.records() == []


# --------------------------------------------------------------------------------------------
# Delete mode (the provider's narrow credential): parametrized over the providers that have it
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", PROVIDERS)
def test_idle_vm_deletes_itself_and_list_updates_the_record(pid: str, world: World, cli: Any) -> None:
    require_providers(pid)
    if not _has_self_destruct(pid):
        pytest.skip(f"{pid} has no self_destruct yet (power-off mode is tested above)")
    extra = {}
    if pid == "digitalocean":  # the user makes this token in the control panel; maider cannot mint one
        world.sim(pid).add_token(DO_WATCHDOG_TOKEN, ["droplet:read", "droplet:delete"])  # type: ignore[attr-defined]
        extra["MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN"] = DO_WATCHDOG_TOKEN
    record, rec = _up(world, cli, pid, **extra)
    assert record["watchdog"]["mode"] == "delete", record["watchdog"]
    assert "deletes the VM through the" in record["up_output"]
    vm = _vm(world, pid, rec)
    assert vm.fs.mode("/etc/maider/watchdog-destroy.json") & 0o777 == 0o600
    _wait("the VM deletes itself", lambda: not rec.alive, 40)
    assert "acting: idle" in _journal(world, pid, rec)

    if pid == "scaleway":  # terminate only detaches the Block Storage root volume: it still bills
        assert world.sim(pid).ledger.leaked_volumes() != []

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    [after] = world.records()
    assert after["status"] == "deleted"
    assert "watchdog" in (after.get("end_reason") or "") and "idle" in after["end_reason"]
    _assert_no_main_secret_on_vm(world, pid, rec)
    if pid == "scaleway":  # noticing the self-deletion releases what the VM could not delete
        assert world.sim(pid).ledger.leaked_volumes() == []

    # `down` forgets the record and revokes the credential maider minted (where it minted one).
    handle = record["watchdog"].get("revoke_handle")
    sim = world.sim(pid)
    before = _revocations(sim)
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    assert world.records() == []
    assert (_revocations(sim) > before) == bool(handle)
    if pid == "linode":
        assert handle and not sim.tokens[int(handle)].active(sim.clock.now())  # type: ignore[attr-defined]


def _revocations(sim: Any) -> int:
    """DELETE requests to the vendor's credential endpoints (Linode tokens, Scaleway IAM)."""
    return sum(
        1 for r in sim.log if r.method == "DELETE" and ("/profile/tokens/" in r.path or "/iam/" in r.path)
    )


def _assert_no_main_secret_on_vm(world: World, pid: str, rec: Any) -> None:
    vm = _vm(world, pid, rec)
    main = [TOKENS.get(pid), SCW_SECRET]
    for path in vm.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in filter(None, main):
                assert secret.encode() not in data, f"the main credential is in {path}"
    for secret in filter(None, main):
        assert secret not in rec.user_data


# --------------------------------------------------------------------------------------------
# Traffic, extend, max lifetime, probes
# --------------------------------------------------------------------------------------------


def test_traffic_keeps_the_vm_past_the_idle_timeout(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = "linode"
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    record, rec = _up(world, cli, pid)
    end = time.monotonic() + 7  # more than twice the idle timeout
    while time.monotonic() < end:
        _chat(world, record)
        assert rec.state == rec.ready_state, _journal(world, pid, rec)
        time.sleep(1)
    assert rec.state == rec.ready_state
    # ... and once the traffic stops, it goes.
    _wait("the VM powers off once idle", lambda: rec.state != rec.ready_state, 30)


def test_extend_postpones(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = "linode"
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    record, rec = _up(world, cli, pid)
    from maider.session import watchdog
    from maider.session.state import SessionStore

    store = SessionStore()
    view = watchdog.extend(store, store.get(record["id"]), 8)
    assert view.source == "vm" and view.extended_until is not None
    live = watchdog.view(store, store.get(record["id"]))
    assert live is not None and live.source == "vm" and live.mode == "poweroff"
    assert live.acts_at == view.extended_until and live.reason == "idle" and live.phase == "watching"
    local = watchdog.view(store, store.get(record["id"]), live=False)  # the last reading, no SSH
    assert local is not None and local.source == "record" and local.acts_at == live.acts_at
    started = time.monotonic()
    time.sleep(5)  # past the idle timeout
    assert rec.state == rec.ready_state, _journal(world, pid, rec)
    _wait("the VM powers off after the extension", lambda: rec.state != rec.ready_state, 30)
    assert time.monotonic() - started >= 7


def test_max_lifetime_acts_even_under_traffic(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = "linode"
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    # Lifetime 12 s, idle 1 h: only the lifetime rule can act.
    record, rec = _up(world, cli, pid, MAIDER_IDLE_TIMEOUT_MINUTES="60", MAIDER_MAX_LIFETIME_HOURS="0.0034")
    end = time.monotonic() + 40
    while rec.state == rec.ready_state and time.monotonic() < end:
        _chat(world, record)
        time.sleep(0.5)
    assert rec.state != rec.ready_state
    assert "powering off (max lifetime reached)" in _journal(world, pid, rec)


def test_maiders_own_probes_do_not_count(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = "linode"
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    # Idle 6 s: probes every second for 8 s must not keep the VM.
    record, rec = _up(world, cli, pid, MAIDER_IDLE_TIMEOUT_MINUTES="0.1")
    from maider.session import watchdog
    from maider.session.state import SessionStore

    store = SessionStore()
    session = store.get(record["id"])
    # `up`'s own readiness completion is not in a probe window: let the watchdog see it first.
    time.sleep(1)
    began = time.time()  # the VM's clock is this machine's
    deadline = time.monotonic() + 12
    while rec.state == rec.ready_state and time.monotonic() < deadline:
        with watchdog.probe_window(store, session) as usage:
            try:
                answer = _chat(world, record)
            except OSError:
                break  # powered off between the check and the request
            usage.add(answer["prompt_tokens"], answer["completion_tokens"])
        assert not usage.notes or rec.state != rec.ready_state, usage.notes  # off mid-window: expected
        time.sleep(0.5)
    assert rec.state != rec.ready_state, "maider's own probes kept the VM alive"
    assert _vm_state(world, pid, rec)["state"]["last_activity_at"] < began


def test_watchdog_off_installs_nothing_and_up_says_so(world: World, cli: Any) -> None:
    pid = "linode"
    record, rec = _up(world, cli, pid, MAIDER_WATCHDOG="false")
    assert record["watchdog"]["enabled"] is False
    assert "watchdog    off (watchdog = false)" in record["up_output"]
    assert "maider-watchdog" not in rec.user_data and "maider_watchdog" not in rec.user_data
    vm = _vm(world, pid, rec)
    assert not vm.fs.host("/opt/maider/watchdog").exists()
    assert not vm.fs.host("/etc/systemd/system/maider-watchdog.service").exists()
    assert vm.unit_state("maider-watchdog.service") == "inactive"
    assert not vm.python.processes


def test_open_webui_page_use_does_not_count(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only chats (which reach vLLM) count: a browser tab polling Open WebUI keeps nothing alive."""
    pid = "linode"
    require_providers(pid)
    _poweroff_mode(monkeypatch, pid)
    record, rec = _up(world, cli, pid)
    assert record["webui_port"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    polled = 0
    end = time.monotonic() + 30
    while rec.state == rec.ready_state and time.monotonic() < end:
        for path in ("/", "/api/config", "/api/version", "/health"):
            try:
                with opener.open(f"http://127.0.0.1:{record['webui_port']}{path}", timeout=5) as resp:
                    resp.read()
                    polled += 1
            except OSError:
                break
        time.sleep(0.3)
    assert polled > 8, "Open WebUI was not reachable through the tunnel"
    assert rec.state != rec.ready_state, "Open WebUI page use kept the VM alive"


def test_a_failed_mint_warns_and_up_still_succeeds_in_poweroff_mode(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = "linode"
    require_providers(pid)
    from maider import plugins
    from maider.provider import ProviderError

    def refuse(self: Any, instance: Any, *, valid_for_s: float, label: str) -> None:
        raise ProviderError("the token may not create tokens (HTTP 401)", provider=pid)

    monkeypatch.setattr(plugins.get_provider_class(pid), "self_destruct", refuse)
    world.sim(pid)
    world.set(**{**FAST, "MAIDER_IDLE_TIMEOUT_MINUTES": "60"})
    region, type_id = SETUPS[pid]
    up = cli("up", "-p", pid, "-r", region, "-t", type_id)
    assert up.exit_code == 0, up.output
    # The progress reporter prints its warnings with the progress lines.
    assert "the watchdog's deletion credential could not be created" in up.output
    assert "the token may not create tokens" in up.output
    [record] = world.records()
    assert record["watchdog"]["mode"] == "poweroff" and record["status"] == "ready"
    assert "STILL BILLS" in up.stdout
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output


def test_a_failed_up_revokes_the_credential_it_minted(world: World, cli: Any) -> None:
    """vLLM never starts (the model does not exist): `up` deletes the VM and the Linode token it
    minted for the watchdog, which could otherwise manage every Linode until it expires."""
    from tests.vmsim import VLLMFailure

    pid = "linode"
    require_providers(pid)
    sim = world.sim(pid)
    world.set(**FAST)
    world.farm.configure_next(vllm_failure=VLLMFailure.model_not_found())
    region, type_id = SETUPS[pid]
    up = cli("up", "-p", pid, "-r", region, "-t", type_id)
    assert up.exit_code != 0 and "was deleted" in up.output, up.output
    minted = list(sim.tokens.values())  # type: ignore[attr-defined]
    assert minted, "up got as far as minting the watchdog's token"
    assert not any(token.active(sim.clock.now()) for token in minted)
    assert world.records() == [] and world.alive(pid) == []


def test_cleanup_keeps_a_self_deleted_session_while_its_disk_still_bills(world: World, cli: Any) -> None:
    """Scaleway: the VM terminated itself and left its Block Storage root volume. While deleting
    that volume fails, neither `list` nor `cleanup` forgets the session (the record is the last
    thing that knows the volume bills); once it works, the volume goes and then the record."""
    pid = "scaleway"
    require_providers(pid)
    _, rec = _up(world, cli, pid)
    _wait("the VM deletes itself", lambda: not rec.alive, 40)
    sim = world.sim(pid)
    assert sim.ledger.leaked_volumes() != []
    sim.faults.add(method="DELETE", path="*/volumes/*", kind="503", times=None)
    assert cli("list", "--json").exit_code == 0
    [after] = world.records()
    assert after["status"] == "deleted" and "disk may still bill" in (after.get("last_error") or "")
    kept = cli("cleanup", "-y")
    assert kept.exit_code == 0, kept.output
    assert len(world.records()) == 1 and sim.ledger.leaked_volumes() != []
    sim.faults.clear()
    done = cli("cleanup", "-y")
    assert done.exit_code == 0, done.output
    assert world.records() == [] and sim.ledger.leaked_volumes() == []
