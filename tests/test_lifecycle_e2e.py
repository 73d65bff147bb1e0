"""`maider up` → list → status → tunnel → env → chat → down, for real, against each provider's
simulator and emulated VMs (real OpenSSH, real tunnel, stand-in vLLM)."""

from __future__ import annotations

import json
import shlex
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import PROVIDERS, SETUPS, World, ledger_cost_text, ledger_id, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


def _exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def _chat(base: str, key: str, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})
    req = urllib.request.Request(
        f"{base}/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("pid", PROVIDERS)
def test_up_list_status_tunnel_env_chat_down(pid: str, world: World, cli: Any) -> None:
    require_providers(pid)
    sim = world.sim(pid)
    region, type_id = SETUPS[pid]

    up = cli("up", "-p", pid, "-r", region, "-t", type_id, "--name", "e2e")
    assert up.exit_code == 0, up.output
    assert "ready: session" in up.stdout

    [rec] = sim.ledger.running(pid)
    assert "maider" in rec.tags
    [record] = world.records()
    assert record["status"] == "ready" and ledger_id(record["instance_id"]) == rec.id
    assert f"maider-session-{record['id']}" in rec.tags

    listed = cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    [row] = data["sessions"]
    assert row["status"] == "ready" and row["vm_state"] == "running" and row["ip"] == rec.ipv4
    assert row["tunnel_alive"] and row["api_port"] and data["orphans"] == []

    status = cli("status", "e2e")
    assert status.exit_code == 0, status.output
    assert "phases" in status.stdout and "vllm" in status.stdout

    tunnel = cli("tunnel")
    assert tunnel.exit_code == 0, tunnel.output
    assert f"127.0.0.1:{row['api_port']}" in tunnel.stdout  # the same port, reused

    env = cli("env")
    assert env.exit_code == 0, env.output
    exports = _exports(env.stdout)
    answer = _chat(
        exports["OPENAI_API_BASE"], exports["OPENAI_API_KEY"], exports["AIDER_MODEL"].removeprefix("openai/")
    )
    assert answer["choices"][0]["message"]["content"]

    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    assert not rec.alive and rec.deleted_by == "client"
    assert ledger_cost_text(rec.cost(), rec.currency) in down.stdout, (down.stdout, rec.cost())
    assert world.records() == [] and sim.ledger.running() == []
    assert json.loads(cli("list", "--json").stdout)["sessions"] == []


def _scan_secrets(world: World, sim: Any, api_key: str, outputs: list[str]) -> list[str]:
    """Where the HF token, the provider credentials and the vLLM API key leaked, if anywhere."""
    from tests.lifecycle_world import SECRETS

    found = []
    for secret in SECRETS:
        if sim.log.contains(secret):
            found.append(f"a request to {sim.vendor} carries {secret[:6]}…")
        for rec in sim.ledger:
            if secret in (rec.user_data or ""):
                found.append(f"user-data of {rec.id} carries {secret[:6]}…")
        for path in world.state_dir().rglob("*"):
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(f"{path} carries {secret[:6]}…")
        if secret in world.ssh_argv():
            found.append(f"an ssh command line carries {secret[:6]}…")
        if any(secret in text for text in outputs):
            found.append(f"maider's output carries {secret[:6]}…")
    # The session's vLLM key: in its own 0600 file and `maider env`, nowhere else maider writes.
    if sim.log.contains(api_key) or any(api_key in (rec.user_data or "") for rec in sim.ledger):
        found.append("the vLLM API key reached the provider")
    if api_key in world.ssh_argv():
        found.append("the vLLM API key is on an ssh command line")
    for path in world.state_dir().rglob("*"):
        if path.is_file() and path.name != "api_key" and api_key.encode() in path.read_bytes():
            found.append(f"{path} carries the vLLM API key")
    for vm in world.farm.vms:
        for entry in vm.exec_log:
            if any(s in entry.command for s in (*SECRETS, api_key)):
                found.append(f"a command run on the VM carries a secret: {entry.command[:40]}")
    return found


@pytest.mark.parametrize("pid", PROVIDERS)
def test_secrets_travel_only_over_ssh_stdin(pid: str, world: World, cli: Any) -> None:
    """The HF token and the API credentials appear in no request, user-data, state file, output
    or ssh argv; the vLLM key only in its 0600 file (and `maider env`); both reach the VM."""
    from tests.lifecycle_world import HF_TOKEN

    require_providers(pid)
    sim = world.sim(pid)
    region, type_id = SETUPS[pid]
    up = cli("up", "-p", pid, "-r", region, "-t", type_id)
    assert up.exit_code == 0, up.output
    [record] = world.records()
    key_file = world.state_dir() / "sessions" / record["id"] / "api_key"
    api_key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    [vm] = [v for v in world.farm.vms if v.id == ledger_id(record["instance_id"])]
    secrets_env = vm.read_text("/opt/maider/secrets.env")
    assert f"HF_TOKEN={HF_TOKEN}" in secrets_env and f"VLLM_API_KEY={api_key}" in secrets_env
    assert vm.fs.mode("/opt/maider/secrets.env") == 0o600
    assert vm.vllm is not None and vm.vllm.api_key == api_key
    outputs = [up.output, cli("list", "--json").output, cli("status").output]
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    outputs.append(down.output)
    assert _scan_secrets(world, sim, api_key, outputs) == []


def test_two_sessions_on_two_providers_have_separate_tunnels(world: World, cli: Any) -> None:
    require_providers("linode", "digitalocean")
    world.sim("linode")
    world.sim("digitalocean")
    a = cli("up", "-p", "linode", "-r", SETUPS["linode"][0], "-t", SETUPS["linode"][1], "--name", "alpha")
    assert a.exit_code == 0, a.output
    b = cli(
        "up",
        "-p",
        "digitalocean",
        "-r",
        SETUPS["digitalocean"][0],
        "-t",
        SETUPS["digitalocean"][1],
        "--name",
        "beta",
    )
    assert b.exit_code == 0, b.output

    listed = json.loads(cli("list", "--json").stdout)["sessions"]
    assert {r["name"] for r in listed} == {"alpha", "beta"}
    ports = {r["name"]: (r["api_port"], r["webui_port"]) for r in listed}
    assert len({p for pair in ports.values() for p in pair}) == 4  # four distinct local ports
    assert all(r["tunnel_alive"] and r["vm_state"] == "running" for r in listed)
    current = {r["name"] for r in listed if r["current"]}
    assert current == {"beta"}  # the last `up` became current

    # Each tunnel reaches its own VM's vLLM.
    answered = {}
    for name in ("alpha", "beta"):
        exports = _exports(cli("env", name).stdout)
        assert exports["OPENAI_API_BASE"] == f"http://127.0.0.1:{ports[name][0]}/v1"
        _chat(
            exports["OPENAI_API_BASE"],
            exports["OPENAI_API_KEY"],
            exports["AIDER_MODEL"].removeprefix("openai/"),
        )
        answered[name] = exports["OPENAI_API_KEY"]
    assert answered["alpha"] != answered["beta"]  # per-session keys
    by_vendor = {vm.vendor: vm for vm in world.farm.vms}
    assert all(vm.vllm is not None and vm.vllm.requests for vm in by_vendor.values())

    # `use` moves the current session, and `env` follows it.
    assert cli("use", "alpha").exit_code == 0
    assert f"127.0.0.1:{ports['alpha'][0]}" in cli("env").stdout

    # `down` of one leaves the other (and its tunnel) alone.
    assert cli("down", "alpha", "-y").exit_code == 0
    [left] = json.loads(cli("list", "--json").stdout)["sessions"]
    assert left["name"] == "beta" and left["tunnel_alive"]
    assert cli("down", "-y").exit_code == 0  # the only one left
    assert world.alive() == [] and world.records() == []
