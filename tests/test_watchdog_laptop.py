"""The laptop side of the idle watchdog, end to end: `maider up` against a cloud simulator and an
emulated VM starts a detached watchdog process; it deletes an idle VM through the API (after a
desktop notification), keeps a used one, honours `maider extend`, caps the lifetime, deletes a VM
its VM side powered off, explains a VM that vanished, and `maider down` stops it.

Timings are shrunk through the settings (idle 6 s, poll 0.3 s). The desktop is the boundary that
is faked: a `notify-send` first on PATH records its argv.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import SETUPS, World, ledger_id, make_world, run_maider, wait_until

PID = "linode"  # one provider is enough: the watchdog talks to it only through the contract
INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    require_providers(PID)
    for w in make_world(tmp_path, monkeypatch):
        w.notify_log = tmp_path / "notify.log"  # type: ignore[attr-defined]
        fake = w.bin / "notify-send"
        fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {w.notify_log}\n")  # type: ignore[attr-defined]
        fake.chmod(0o755)
        w.set(
            MAIDER_IDLE_TIMEOUT_MINUTES="0.1",  # 6 s
            MAIDER_WATCHDOG_WARN_MINUTES="0.07",  # warn 4.2 s before
            MAIDER_WATCHDOG_POLL_SECONDS="0.3",
        )
        yield w


def _up(world: World, cli: Any, name: str = "wd") -> dict[str, Any]:
    region, type_id = SETUPS[PID]
    world.sim(PID)
    result = cli("up", "-p", PID, "-r", region, "-t", type_id, "--name", name)
    assert result.exit_code == 0, result.output
    [record] = [r for r in world.records() if r["name"] == name]
    return record


def _record(world: World, session_id: str) -> dict[str, Any]:
    [record] = [r for r in world.records() if r["id"] == session_id]
    return record


def _ledger(world: World, record: dict[str, Any]) -> Any:
    return world.sims[PID].ledger.get(ledger_id(record["instance_id"]), PID)


def _stop_vm_side(world: World) -> None:
    """Make the VM's own watchdog unable to act, so what happens is the laptop side's doing."""
    from maider.remote.commands import WATCHDOG_UNIT_NAME

    [vm] = world.farm.vms
    result = vm.run(f"systemctl stop {WATCHDOG_UNIT_NAME}")
    assert result.rc == 0, result
    assert vm.unit_state(WATCHDOG_UNIT_NAME) != "active"


def _alive(pid: int) -> bool:
    from maider.session.laptop_watchdog import start_token

    return start_token(pid) is not None


def _vllm(world: World) -> Any:
    [vm] = world.farm.vms
    assert vm.vllm is not None
    return vm.vllm


def _inference_requests(vllm: Any) -> int:
    """Completions the stand-in vLLM served (its request log outlives the VM)."""
    return sum(1 for r in list(vllm.requests) if r.get("path") in INFERENCE_PATHS)


def _chat(world: World, record: dict[str, Any]) -> None:
    key = (world.state_dir() / "sessions" / record["id"] / "api_key").read_text().strip()
    body = json.dumps(
        {
            "model": record["served_model_name"],
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        }
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{record['api_port']}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        assert resp.status == 200


def _notifications(world: World) -> list[str]:
    path: Path = world.notify_log  # type: ignore[attr-defined]
    return path.read_text().splitlines() if path.exists() else []


def _watchdog_log(world: World, record: dict[str, Any]) -> str:
    path = world.state_dir() / "sessions" / record["id"] / "watchdog-laptop.log"
    return path.read_text() if path.exists() else ""


def test_survives_up_warns_then_deletes_idle_vm(world: World, tmp_path: Path, cli: Any) -> None:
    """A real `python -m maider up` exits; its watchdog lives on, warns on the desktop, deletes the
    idle VM through the API, and leaves a record that says why and what it cost."""
    region, type_id = SETUPS[PID]
    world.sim(PID)
    proc = run_maider(world, ["up", "-p", PID, "-r", region, "-t", type_id, "--name", "idle"], tmp_path)
    assert proc.wait(90) == 0, proc.output
    _stop_vm_side(world)
    assert "laptop watchdog started" in proc.output
    [record] = world.records()
    pid = record["laptop_watchdog_pid"]
    assert isinstance(pid, int) and _alive(pid), "the watchdog died with `maider up`"
    vllm = _vllm(world)
    requests_at_ready = _inference_requests(vllm)
    rec = _ledger(world, record)
    assert rec.alive

    wait_until(lambda: not rec.alive, timeout=30, what="the laptop watchdog to delete the idle VM")
    assert rec.deleted_by == "client"
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    final = _record(world, record["id"])
    assert final["end_reason"] == "deleted by the laptop watchdog: idle 0.1 min", final
    assert final["final_cost"] is not None and final["ended_at"]
    assert final["laptop_watchdog_pid"] is None

    notes = _notifications(world)
    assert notes and "will be deleted at" in notes[0] and "maider extend idle" in notes[0], notes
    assert any("deleted by the laptop watchdog" in n for n in notes[1:]), notes
    wait_until(lambda: not _alive(pid), timeout=10, what="the watchdog to exit once the VM is gone")
    # It only ever read /metrics: no inference request came from it.
    assert _inference_requests(vllm) == requests_at_ready
    assert any(r.get("path") == "/metrics" for r in vllm.requests)  # …which it did read
    assert "Traceback" not in _watchdog_log(world, record)
    assert (
        oct((world.state_dir() / "sessions" / record["id"] / "watchdog-laptop.log").stat().st_mode & 0o777)
        == "0o600"
    )

    listed = json.loads(cli("list", "--json").stdout)
    [row] = listed["sessions"]
    assert row["status"] == "deleted" and row["end_reason"].startswith("deleted by the laptop watchdog")
    assert row["cost"] == final["final_cost"] and row["watchdog"] is None
    assert world.invariant_problems() == []
    table = cli("list")
    assert "deleted by the laptop watchdog: idle" in table.stdout
    # `down` of an ended session only forgets the record.
    down = cli("down", "-y", "idle")
    assert down.exit_code == 0 and "already over" in down.stdout, down.output
    assert world.records() == []


def test_traffic_keeps_the_vm_then_idle_deletes_it(world: World, cli: Any) -> None:
    record = _up(world, cli)
    _stop_vm_side(world)
    rec = _ledger(world, record)
    started = time.monotonic()
    while time.monotonic() - started < 10:  # well past the 6 s idle timeout
        _chat(world, record)
        time.sleep(1.0)
    assert rec.alive, _watchdog_log(world, record)
    status = cli("status", "wd")
    assert status.exit_code == 0, status.output
    assert "last inference request" in status.stdout and " s ago" in status.stdout, status.stdout
    assert "acts at" in status.stdout and "(idle)" in status.stdout and "laptop side running" in status.stdout
    data = json.loads(cli("status", "--json").stdout)["watchdog"]
    assert data["enabled"] and data["reason"] == "idle" and data["laptop_process_alive"]
    assert data["acts_at"] > data["last_activity_at"]
    listed = cli("list")
    assert "acts at" in listed.stdout and "ago" in listed.stdout, listed.stdout

    stopped = time.monotonic()
    wait_until(lambda: not rec.alive, timeout=30, what="deletion once the traffic stopped")
    assert time.monotonic() - stopped >= 4.0  # idle counts from the last request, not from `up`
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    assert world.invariant_problems() == []


def test_extend_postpones_and_down_stops_the_process(world: World, cli: Any) -> None:
    record = _up(world, cli)
    rec = _ledger(world, record)
    pid = record["laptop_watchdog_pid"]
    result = cli("extend", "wd", "--minutes", "1")  # both sides: the VM's service keeps running
    assert result.exit_code == 0, result.output
    assert "the watchdog will not act before" in result.stdout
    time.sleep(10)  # past the 6 s idle deadline
    assert rec.alive, _watchdog_log(world, record)
    watch = json.loads(cli("status", "--json").stdout)["watchdog"]
    assert watch["source"] == "vm", watch  # read from the VM: its side was extended too
    until = dt.datetime.fromisoformat(watch["extended_until"])
    assert until > dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=40), watch
    assert "acts at" in cli("status").stdout
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    assert not rec.alive and world.records() == []
    assert not _alive(pid), "`down` left the laptop watchdog running"


@pytest.mark.parametrize(
    ("minutes", "message"), [("0", "between 1 and 480"), ("481", "between 1 and 480"), ("nan", "between")]
)
def test_extend_bad_minutes_is_one_line(world: World, cli: Any, minutes: str, message: str) -> None:
    result = cli("extend", "--minutes", minutes)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output


def test_watchdog_off(world: World, cli: Any) -> None:
    world.set(MAIDER_WATCHDOG="false")
    record = _up(world, cli)
    assert record.get("laptop_watchdog_pid") is None
    result = cli("extend")
    assert result.exit_code == 1 and "has no watchdog" in result.stderr, result.output
    assert "watchdog off" in cli("status").stdout
    assert json.loads(cli("list", "--json").stdout)["sessions"][0]["watchdog"]["enabled"] is False
    assert cli("down", "-y").exit_code == 0


def test_max_lifetime_deletes_even_under_traffic(world: World, cli: Any) -> None:
    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45", MAIDER_MAX_LIFETIME_HOURS="0.004")  # 14.4 s
    record = _up(world, cli)
    _stop_vm_side(world)
    rec = _ledger(world, record)
    deadline = time.monotonic() + 40
    while rec.alive and time.monotonic() < deadline:
        try:
            _chat(world, record)
        except OSError:
            break  # the tunnel closed: the VM is being deleted
        time.sleep(0.5)
    wait_until(lambda: not rec.alive, timeout=10, what="deletion at the max lifetime")
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    final = _record(world, record["id"])
    assert final["end_reason"] == "deleted by the laptop watchdog: max lifetime 0.004 h"
    ran = rec.deleted_at - rec.created_at
    assert 13.4 <= ran < 25, ran  # Linode's `created` has whole seconds: up to 1 s early


def test_powered_off_vm_is_deleted_at_once(world: World, cli: Any) -> None:
    """Power-off mode: the VM side could only power the VM off; the laptop deletes it."""
    from maider.remote.commands import WATCHDOG_STATE_PATH

    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45")
    record = _up(world, cli)
    _stop_vm_side(world)
    [vm] = world.farm.vms
    # What the VM's service writes just before `systemctl poweroff`.
    state_file = vm.path(WATCHDOG_STATE_PATH)
    doc = json.loads(state_file.read_text())
    doc["status"]["phase"] = "powering-off"
    state_file.write_text(json.dumps(doc))
    wait_until(
        lambda: (
            (_record(world, record["id"]).get("watchdog") or {}).get("last_seen", {}).get("phase")
            == "powering-off"
        ),
        timeout=10,
        what="the laptop side to read the VM side's phase",
    )
    rec = _ledger(world, record)
    with world.sims[PID].lock:  # what the VM's `poweroff` looks like through the API
        rec.schedule(world.clock.now(), "offline")
    wait_until(lambda: not rec.alive, timeout=15, what="the laptop watchdog to delete the stopped VM")
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    assert "powered it off" in _record(world, record["id"])["end_reason"]


def test_a_vm_stopped_by_someone_else_is_kept_until_the_deadline(world: World, cli: Any) -> None:
    """Host maintenance or the provider's console stopped it: no watchdog acted, so the laptop
    does not delete it at once (the idle deadline still applies)."""
    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45")
    record = _up(world, cli)
    _stop_vm_side(world)
    rec = _ledger(world, record)
    with world.sims[PID].lock:
        rec.schedule(world.clock.now(), "offline")
    wait_until(
        lambda: "no watchdog acted" in _watchdog_log(world, record),
        timeout=15,
        what="the laptop side to notice",
    )
    time.sleep(1.0)  # a few more ticks
    assert rec.alive and _record(world, record["id"])["status"] == "ready"


def test_vm_side_acts_when_the_laptop_side_is_gone(world: World, cli: Any) -> None:
    """The laptop watchdog is dead (laptop asleep); the VM deletes itself through the API at its
    deadline; `list` then shows a deleted record that says the VM's watchdog did it, and its cost."""
    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="0.05")  # 3 s
    record = _up(world, cli)
    rec = _ledger(world, record)
    os.killpg(record["laptop_watchdog_pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(record["laptop_watchdog_pid"]), timeout=5, what="the kill")
    wait_until(lambda: not rec.alive, timeout=30, what="the VM's own watchdog to delete it")
    listed = json.loads(cli("list", "--json").stdout)
    [row] = listed["sessions"]
    assert row["status"] == "deleted", row
    assert row["end_reason"] == "deleted by the VM's watchdog: idle 0.05 min"
    assert row["cost"] is not None and row["cost"] <= rec.cost() + 0.01
    assert "deleted by the VM's watchdog" in cli("status").stdout
    assert world.invariant_problems() == []
    cleaned = cli("cleanup", "-y")
    assert cleaned.exit_code == 0 and world.records() == [], cleaned.output


def test_vm_deleted_outside_is_noticed_by_the_running_watchdog(world: World, cli: Any) -> None:
    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45")
    record = _up(world, cli)
    pid = record["laptop_watchdog_pid"]
    from maider import plugins

    plugins.reset_cache()
    plugins.get_provider_class(PID)().delete_instance(record["instance_id"])
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    assert "deleted outside maider" in _record(world, record["id"])["end_reason"]
    wait_until(lambda: not _alive(pid), timeout=10, what="the watchdog to exit")


def test_second_start_is_a_no_op(world: World, cli: Any) -> None:
    import subprocess
    import sys

    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45")
    record = _up(world, cli)
    wait_until(
        lambda: "watching session" in _watchdog_log(world, record), timeout=20, what="the first to run"
    )
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "maider.session.laptop_watchdog",
            "--state-dir",
            str(world.state_dir()),
            record["id"],
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert second.returncode == 0 and "already watches" in second.stderr, second.stderr
    assert _record(world, record["id"])["laptop_watchdog_pid"] == record["laptop_watchdog_pid"]
    assert _alive(record["laptop_watchdog_pid"])
    assert cli("down", "-y").exit_code == 0


def test_a_failed_down_leaves_the_laptop_side_to_finish_the_delete(world: World, cli: Any) -> None:
    """`down` got 503s (the delete may or may not have happened): the record is kept and the
    laptop side, stopped for the delete, starts again and deletes the VM once the API answers."""
    world.set(MAIDER_IDLE_TIMEOUT_MINUTES="45")
    record = _up(world, cli)
    first_pid = _record(world, record["id"])["laptop_watchdog_pid"]
    sim = world.sims[PID]
    sim.faults.add(method="DELETE", path="*/linode/instances/*", kind="503", times=None)
    down = cli("down", "-y")
    assert down.exit_code != 0 and "run `maider down" in down.stderr
    again = _record(world, record["id"])
    assert again["status"] == "deleting" and again["laptop_watchdog_pid"] not in (None, first_pid)
    assert _alive(again["laptop_watchdog_pid"])
    sim.faults.clear()
    rec = _ledger(world, record)
    wait_until(lambda: not rec.alive, timeout=20, what="the laptop side to finish the delete")
    wait_until(lambda: _record(world, record["id"])["status"] == "deleted", timeout=10, what="record update")
    assert "finishing a `maider down`" in _record(world, record["id"])["end_reason"]
