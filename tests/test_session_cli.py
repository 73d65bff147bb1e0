"""The session commands around `up`: down (idempotent, API errors), list (one listing per
provider, orphans), cleanup, use/env, tunnel, keep-on-failure, capacity fallbacks, launching
aider, and the checks `up` makes before it spends anything."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import PREPARE_RESULT, SETUPS, World, make_world, run_maider


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


def _up(cli: Any, pid: str = "linode", *extra: str) -> Any:
    region, type_id = SETUPS[pid]
    return cli("up", "-p", pid, "-r", region, "-t", type_id, *extra)


def _orphan(pid: str, session_id: str = "sdeadbeef") -> str:
    """A VM tagged maider that this machine has no record of (another machine's, or a lost one)."""
    from maider import plugins
    from maider.provider import InstanceSpec
    from maider.testing import TEST_PUBLIC_KEY, USER_DATA

    region, type_id = SETUPS[pid]
    provider = plugins.get_provider_class(pid)()
    tag = f"maider-session-{session_id}"
    spec = InstanceSpec(
        name=f"maider-{session_id}",
        region=region,
        type_id=type_id,
        user_data=USER_DATA,
        tags=("maider", tag),
        session_tag=tag,
        ssh_public_key=TEST_PUBLIC_KEY,
    )
    return provider.create_instance(spec).id


def test_down_is_idempotent_and_keeps_the_record_on_api_errors(world: World, cli: Any) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    world.set(MAIDER_LINODE_MAX_ATTEMPTS="1")
    assert _up(cli, "linode", "--name", "one").exit_code == 0
    [rec] = sim.ledger.running()

    sim.faults.add(method="DELETE", path="*/linode/instances/*", kind="503", times=None)
    failed = cli("down", "one", "-y")
    assert failed.exit_code == 1
    assert "record is kept" in failed.stderr and failed.stderr.count("error:") == 1
    [record] = world.records()
    assert record["status"] == "deleting" and "down failed" in record["last_error"]
    assert rec.alive  # the provider never deleted it, and maider still knows it

    sim.faults.clear()
    sim.vanish(rec.id)  # meanwhile someone deleted it in the console: gone counts as deleted
    again = cli("down", "one", "-y")
    assert again.exit_code == 0, again.output
    assert world.records() == []

    missing = cli("down", "one", "-y")
    assert missing.exit_code == 1 and "no session" in missing.stderr


def test_down_needs_confirmation_when_not_interactive(world: World, cli: Any) -> None:
    require_providers("linode")
    world.sim("linode")
    assert _up(cli).exit_code == 0
    asked = cli("down")
    assert asked.exit_code == 1 and "-y" in asked.stderr
    assert len(world.records()) == 1 and world.alive()
    assert cli("down", "-y").exit_code == 0


def test_list_is_one_call_per_provider_and_shows_orphans_that_cleanup_deletes(world: World, cli: Any) -> None:
    require_providers("linode", "digitalocean")
    linode = world.sim("linode")
    do = world.sim("digitalocean")
    for name in ("a", "b", "c"):
        assert _up(cli, "linode", "--name", name).exit_code == 0
    orphan_id = _orphan("linode")
    gone = _up(cli, "linode", "--name", "gone")
    assert gone.exit_code == 0
    gone_id = next(r["instance_id"] for r in world.records() if r["name"] == "gone")
    linode.vanish(gone_id)  # deleted behind maider's back: the record points at nothing

    before = (len(linode.log), len(do.log))
    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    calls = (len(linode.log) - before[0], len(do.log) - before[1])
    # One listing per provider, whatever the number of sessions (DigitalOcean's listing is two
    # requests: GPU droplets, then by tag; see CLAUDE.md "API calls per operation").
    assert calls == (1, 2), calls
    data = json.loads(listed.stdout)
    states = {r["name"]: r["vm_state"] for r in data["sessions"]}
    assert states == {"a": "running", "b": "running", "c": "running", "gone": "gone"}
    assert [o["instance_id"] for o in data["orphans"]] == [orphan_id]
    text = cli("list")
    assert "orphan" in text.stdout and orphan_id in text.stdout

    assert cli("cleanup").exit_code == 1  # orphans to delete, not interactive, no -y: nothing happens
    assert linode.ledger.get(orphan_id).alive
    cleaned = cli("cleanup", "-y")
    assert cleaned.exit_code == 0, cleaned.output
    assert not linode.ledger.get(orphan_id).alive
    assert {r["name"] for r in world.records()} == {"a", "b", "c"}
    for name in ("a", "b", "c"):
        assert cli("down", name, "-y").exit_code == 0
    assert world.alive() == []


def test_cleanup_removes_nothing_when_a_listing_fails(world: World, cli: Any) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    world.set(MAIDER_LINODE_MAX_ATTEMPTS="1")
    assert _up(cli, "linode", "--name", "gone").exit_code == 0
    sim.vanish(world.records()[0]["instance_id"])
    orphan_id = _orphan("linode")
    sim.faults.add(method="GET", path="*/linode/instances", kind="503", times=None)
    failed = cli("cleanup", "-y")
    assert failed.exit_code == 1 and "removed nothing" in failed.stderr
    assert len(world.records()) == 1 and sim.ledger.get(orphan_id).alive
    listed = cli("list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout)["errors"]["linode"]
    sim.faults.clear()
    assert cli("cleanup", "-y").exit_code == 0
    assert world.records() == [] and world.alive() == []


def test_tunnel_reopens_on_the_same_ports_and_env_needs_a_ready_session(world: World, cli: Any) -> None:
    require_providers("linode")
    world.sim("linode")
    assert _up(cli, "linode", "--name", "t").exit_code == 0
    [record] = world.records()
    os.kill(record["tunnel_pid"], signal.SIGTERM)  # the tunnel died (laptop slept, network moved…)
    from tests.lifecycle_world import wait_until

    wait_until(
        lambda: not json.loads(cli("list", "--json").stdout)["sessions"][0]["tunnel_alive"],
        what="tunnel down",
    )
    reopened = cli("tunnel", "t")
    assert reopened.exit_code == 0, reopened.output
    [after] = json.loads(cli("list", "--json").stdout)["sessions"]
    assert after["tunnel_alive"] and after["api_port"] == record["api_port"]

    assert cli("down", "-y").exit_code == 0
    none = cli("env")
    assert none.exit_code == 1 and "no session" in none.stderr


def test_keep_on_failure_keeps_the_vm_and_says_so(world: World, cli: Any) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    PREPARE_RESULT[0] = 1  # cloud-init fails on the VM
    result = _up(cli, "linode", "--name", "broken", "--keep-on-failure")
    assert result.exit_code == 1
    assert "cloud-init failed" in result.stderr and "KEPT" in result.stderr
    [record] = world.records()
    assert record["status"] == "kept" and sim.ledger.get(record["instance_id"]).alive
    env = cli("env", "broken")
    assert env.exit_code == 1 and "kept" in env.stderr
    status = cli("status", "broken")
    assert "kept" in status.stdout and "cloud-init failed" in status.stdout
    assert cli("down", "broken", "-y").exit_code == 0
    assert world.alive() == []


def test_sold_out_region_then_failover_with_a_table_of_attempts(world: World, cli: Any) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    region, type_id = SETUPS["linode"]
    # Sold out in us-east only: the same type in the next region that sells it.
    sim.faults.add(method="POST", path="*/linode/instances", kind="no_capacity", times=1)
    moved = _up(cli, "linode", "--name", "moved")
    assert moved.exit_code == 0, moved.output
    assert "create attempts" in moved.stdout and "no capacity" in moved.stdout
    [record] = world.records()
    assert record["type_id"] == type_id and record["region"] != region
    assert cli("down", "-y").exit_code == 0

    # Sold out everywhere: a table of what was tried, nothing created, nothing recorded.
    sim.faults.clear()
    sim.faults.add(method="POST", path="*/linode/instances", kind="no_capacity", times=None)
    refused = _up(cli, "linode", "--name", "refused")
    assert refused.exit_code == 1 and "--failover" in refused.stderr
    assert refused.stdout.count("no capacity") >= 2
    assert world.records() == [] and world.alive() == []

    # --failover: the next cheapest fitting type (the first type stays sold out everywhere).
    sim.faults.clear()
    sim.faults.add(method="POST", path="*/linode/instances", kind="no_capacity", times=4)
    failover = cli("up", "-p", "linode", "-t", type_id, "--failover", "--name", "fo")
    assert failover.exit_code == 0, failover.output
    [record] = world.records()
    assert "created" in failover.stdout
    assert cli("down", "-y").exit_code == 0
    assert world.alive() == []


class _MyIP(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"127.0.0.1\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def my_ip_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MyIP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_firewall_admits_the_detected_public_ip(
    world: World, cli: Any, my_ip_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_providers("linode")
    sim: Any = world.sim("linode")
    monkeypatch.delenv("MAIDER_ALLOWED_SSH_CIDRS")
    world.set(MAIDER_MY_IP_URL=my_ip_server)
    assert _up(cli).exit_code == 0
    [firewall] = sim.firewalls.values()
    assert "127.0.0.1/32" in json.dumps(firewall)
    assert cli("down", "-y").exit_code == 0


def test_nothing_is_created_before_validation_passes(
    world: World, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    assert _up(cli, "linode", "--name", "taken").exit_code == 0
    posts = sim.log.count("POST")

    # A name a live session uses, a token maider cannot put in an env file, an unreachable
    # "what is my IP" service, rejected credentials: each stops `up` before anything is created.
    taken = _up(cli, "linode", "--name", "taken")
    assert taken.exit_code == 1 and "already used" in taken.stderr
    world.set(MAIDER_HF_TOKEN="hf_bad token")
    bad = _up(cli)
    assert bad.exit_code == 1 and "whitespace" in bad.stderr and "hf_bad" not in bad.output
    world.set(MAIDER_HF_TOKEN="hf_fine")
    monkeypatch.delenv("MAIDER_ALLOWED_SSH_CIDRS")
    world.set(MAIDER_MY_IP_URL="http://127.0.0.1:9/")
    noip = _up(cli)
    assert noip.exit_code == 1 and "allowed_ssh_cidrs" in noip.stderr
    world.set(MAIDER_ALLOWED_SSH_CIDRS="127.0.0.1/32")
    sim.token = "another-token"  # the API now rejects maider's token
    rejected = _up(cli)
    assert rejected.exit_code == 1 and "credentials do not work" in rejected.stderr
    sim.token = None
    assert sim.log.count("POST") == posts
    assert len(world.records()) == 1
    assert cli("down", "taken", "-y").exit_code == 0


def test_launch_aider(world: World, cli: Any, tmp_path: Path) -> None:
    """Without aider: one warning, the session stays ready. With it: exec'd with the session's env."""
    require_providers("linode")
    world.sim("linode")
    missing = _up(cli, "linode", "--launch-aider")
    assert missing.exit_code == 0, missing.output
    assert missing.stderr.count("warning:") == 1 and "aider is not installed" in missing.stderr
    assert world.records()[0]["status"] == "ready"
    assert cli("down", "-y").exit_code == 0

    fake = tmp_path / "fakebin"
    fake.mkdir()
    seen = tmp_path / "aider-saw.json"
    (fake / "aider").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(seen)!r}, 'w'))\n"
    )
    (fake / "aider").chmod(0o755)
    world.set(PATH=f"{fake}:{os.environ['PATH']}")
    region, type_id = SETUPS["linode"]
    proc = run_maider(world, ["up", "-p", "linode", "-r", region, "-t", type_id, "--launch-aider"], tmp_path)
    assert proc.wait(timeout=90) == 0, proc.output
    saw = json.loads(seen.read_text())
    [record] = world.records()
    assert saw["argv"] == ["--model", f"openai/{record['served_model_name']}"]
    assert saw["env"]["OPENAI_API_BASE"] == f"http://127.0.0.1:{record['api_port']}/v1"
    assert saw["env"]["AIDER_MODEL"] == f"openai/{record['served_model_name']}"
    assert saw["env"]["OPENAI_API_KEY"].startswith("sk-maider-")
    assert (tmp_path / ".aider.model.metadata.json").exists()
    assert cli("down", "-y").exit_code == 0
    assert world.alive() == []


@pytest.mark.parametrize(
    "args",
    [
        ("use", "nosuch"),
        ("status",),
        ("tunnel",),
        ("env",),
        ("down", "-y"),
        ("down", "../etc", "-y"),
    ],
)
def test_session_commands_without_sessions_say_so_in_one_line(args: tuple[str, ...], cli: Any) -> None:
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output
    assert "session" in result.stderr


def test_list_and_cleanup_without_sessions_or_credentials(cli: Any) -> None:
    listed = cli("list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == {
        "sessions": [],
        "orphans": [],
        "errors": {},
        "unreadable": [],
    }
    assert "no sessions" in cli("list").stdout
    assert "nothing to clean up" in cli("cleanup", "-y").stdout


def test_a_bad_session_name_is_refused_before_anything_is_created(world: World, cli: Any) -> None:
    require_providers("linode")
    sim = world.sim("linode")
    bad = _up(cli, "linode", "--name", "Not_A_Name")
    assert bad.exit_code == 1 and "invalid session name" in bad.stderr
    assert sim.log.count("POST") == 0 and world.records() == []
