"""The VM emulator (tests/vmsim), driven by the real OpenSSH client against a simulated Linode.

Each test creates an instance through the simulator's HTTP API with a hand-written
cloud-config, moves the fake clock until the instance runs, and talks to the emulated VM the
way maider will (docs/LIFECYCLE.md): ``/usr/bin/ssh`` with a pinned host key, a ControlMaster,
``-O forward`` tunnels and ``-O exit``.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cloudsim import FakeClock, LinodeSim, LoopbackAllocator, ScalewaySim
from tests.cloudsim.testing import SCW_PROJECT_ID, SCW_SECRET_KEY
from tests.vmsim import EmulatedVM, StandInOptions, VLLMFailure, VMFarm
from tests.vmsim.cloudinit import schema_path
from tests.vmsim.docker import ComposeError, interpolate, parse_ports
from tests.vmsim.shell import ShellSyntaxError, parse
from tests.vmsim.vllm import VLLMConfig

pytest_plugins = ["tests.conftest_cloudsim", "tests.vmsim.fixtures"]

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
if not (Path(SSH).exists() and Path(SSH_KEYGEN).exists()):
    pytest.skip("needs the OpenSSH client (ssh, ssh-keygen)", allow_module_level=True)

API_KEY = "vmsim-api-key-8c1f"
HF_TOKEN = "hf_vmsimTOKEN123"

COMPOSE = """\
name: maider
services:
  vllm:
    image: vllm/vllm-openai:v0.11.0
    entrypoint: [vllm, serve]
    command: [Qwen/Qwen2.5-Coder-7B-Instruct, --served-model-name, "{served}", --max-model-len, "32768",
              --gpu-memory-utilization, "0.9"]
    env_file: [/opt/maider/secrets.env]
    ports: ["127.0.0.1:8000:8000"]
    ipc: host
    restart: unless-stopped
    deploy:
      resources:
        reservations:
          devices: [{{driver: nvidia, count: all, capabilities: [gpu]}}]
  open-webui:
    image: ghcr.io/open-webui/open-webui:main
    ports: ["127.0.0.1:3000:8080"]
    environment:
      OPENAI_API_BASE_URL: http://vllm:8000/v1
    restart: unless-stopped
"""

UNIT = """\
[Unit]
Description=maider stack (vLLM + Open WebUI)
After=docker.service
Requires=docker.service
ConditionPathExists=/opt/maider/secrets.env

[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory=/opt/maider
ExecStart=/usr/bin/docker compose -f /opt/maider/compose.yaml up -d --remove-orphans
ExecStop=/usr/bin/docker compose -f /opt/maider/compose.yaml down

[Install]
WantedBy=multi-user.target
"""

# ------------------------------------------------------------------------------------------
# Keys, cloud-config, instances
# ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _private_loopback_network(request: pytest.FixtureRequest) -> None:
    """Give this test's simulators a random 127.x.y.0/24, so two runs of this file at once
    (parallel sessions, two engineers) never fight over the same VM address and port 22."""
    for name in ("linode_sim", "scaleway_sim", "digitalocean_sim"):
        if name in request.fixturenames:
            sim = request.getfixturevalue(name)
            sim.ip_allocator = LoopbackAllocator(
                f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"
            )


@dataclass
class Keys:
    dir: Path
    client: Path
    client_pub: str
    other_client: Path
    host_private: str
    host_public: str
    other_host_public: str


def _keygen(path: Path, comment: str) -> tuple[str, str]:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    _, client_pub = _keygen(d / "id_ed25519", "me@laptop")
    _keygen(d / "other_ed25519", "intruder")
    host_priv, host_pub = _keygen(d / "host_ed25519", "root@vm")
    _, other_host_pub = _keygen(d / "host2_ed25519", "root@elsewhere")
    return Keys(d, d / "id_ed25519", client_pub, d / "other_ed25519", host_priv, host_pub, other_host_pub)


def cloud_config(keys: Keys, *, served: str = "coder", runcmd: list[Any] | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {
        "ssh_authorized_keys": [keys.client_pub],
        "ssh_keys": {"ed25519_private": keys.host_private, "ed25519_public": keys.host_public},
        "write_files": [
            {
                "path": "/opt/maider/compose.yaml",
                "content": COMPOSE.format(served=served),
                "permissions": "0644",
            },
            {"path": "/etc/systemd/system/maider-stack.service", "content": UNIT, "permissions": "0644"},
            {"path": "/opt/maider/vllm.args", "content": "--max-model-len 32768\n"},
        ],
        "package_update": True,
        "runcmd": runcmd
        if runcmd is not None
        else [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "maider-stack.service"],
            "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o /usr/share/keyrings/nv.gpg",
            ["nvidia-ctk", "runtime", "configure", "--runtime=docker"],
            ["docker", "pull", "vllm/vllm-openai:v0.11.0"],
        ],
        **extra,
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def _api(sim: LinodeSim, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        sim.url + path,
        data=data,
        method=method,
        headers={"Authorization": "Bearer vmsim-linode-token", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def create_instance(sim: LinodeSim, user_data: str | None, label: str = "maider-s3f9a01c2") -> str:
    body: dict[str, Any] = {
        "type": "g1-gpu-rtx6000-1",
        "region": "us-east",
        "image": "linode/ubuntu24.04",
        "label": label,
        "root_pass": "Unused-Root-Passw0rd!",
        "tags": ["maider", f"maider-session-{label[-9:]}"],
    }
    if user_data is not None:
        body["metadata"] = {"user_data": base64.b64encode(user_data.encode()).decode()}
    return str(_api(sim, "POST", "/linode/instances", body)["id"])


def boot(
    sim: LinodeSim, clock: FakeClock, farm: VMFarm, user_data: str | None, label: str = "maider-s3f9a01c2"
) -> EmulatedVM:
    iid = create_instance(sim, user_data, label)
    clock.advance(sim.timings["provision"] + sim.timings["boot"])
    return farm.wait_vm(iid)


# ------------------------------------------------------------------------------------------
# The real OpenSSH client
# ------------------------------------------------------------------------------------------


@dataclass
class SSHClient:
    """ssh as maider runs it (docs/LIFECYCLE.md § SSH), for one VM."""

    host: str
    port: int
    key: Path
    known_hosts: Path
    control: Path
    user: str = "root"
    tunnels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def base(self, *extra: str, control: bool = True) -> list[str]:
        args = [SSH, "-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(self.key)]
        args += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}"]
        if control:
            args += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={self.control}",
                "-o",
                "ControlPersist=60",
            ]
        args += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=5"]
        return [*args, "-p", str(self.port), *extra, f"{self.user}@{self.host}"]

    def scp(self, local: Path, remote: str) -> subprocess.CompletedProcess[str]:
        """scp (SFTP since OpenSSH 9) through the same options and ControlMaster."""
        args = self.base()[1:-1]
        args[args.index("-p")] = "-P"
        return subprocess.run(
            ["scp", *args, str(local), f"{self.user}@[{self.host}]:{remote}"],
            capture_output=True,
            text=True,
            timeout=20,
        )

    def tunnel(self, remote_port: int) -> tuple[subprocess.Popen[bytes], int]:
        """A separate ``ssh -N -L`` process (no ControlMaster), as a plain tunnel is run."""
        local = free_port()
        forward = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]
        proc = subprocess.Popen(self.base(*forward, control=False), stderr=subprocess.PIPE)
        self.tunnels.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", local), 0.5).close()
                return proc, local
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "the tunnel did not come up"
                time.sleep(0.02)

    def run(
        self, command: str, stdin: bytes | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.base(), command],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
        )

    def control_cmd(self, op: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                SSH,
                "-F",
                "none",
                "-o",
                f"ControlPath={self.control}",
                "-O",
                op,
                *extra,
                f"{self.user}@{self.host}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )

    def forward(self, remote_port: int) -> int:
        """``-O forward -L 127.0.0.1:<free>:127.0.0.1:<remote_port>`` through the master."""
        local = free_port()
        proc = self.control_cmd("forward", "-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}")
        assert proc.returncode == 0, proc.stderr
        return local

    def close(self) -> None:
        for proc in self.tunnels:
            proc.terminate()
            proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
        if self.control.exists():
            self.control_cmd("exit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ssh_to(keys: Keys) -> Iterator[Any]:
    """Make SSH clients for VMs; ControlMasters are closed (``-O exit``) at teardown."""
    short = Path(tempfile.mkdtemp(prefix="vs", dir="/tmp"))  # ControlPath sockets need short paths
    clients: list[SSHClient] = []

    def make(vm: EmulatedVM, *, pinned: str | None = None, key: Path | None = None) -> SSHClient:
        n = len(clients)
        known = short / f"known_hosts{n}"
        where = vm.ipv4 if vm.ssh_port == 22 else f"[{vm.ipv4}]:{vm.ssh_port}"
        known.write_text(f"{where} {pinned or keys.host_public}\n")
        client = SSHClient(vm.ipv4, vm.ssh_port, key or keys.client, known, short / f"cm{n}")
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
    shutil.rmtree(short, ignore_errors=True)


def http(
    port: int, path: str, body: Any = None, key: str | None = API_KEY, timeout: float = 10
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, json.loads(raw) if "json" in ctype and raw else raw.decode()
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_stack(client: SSHClient) -> None:
    secrets = f"HF_TOKEN={HF_TOKEN}\nVLLM_API_KEY={API_KEY}\n".encode()
    proc = client.run("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=secrets)
    assert proc.returncode == 0, proc.stderr
    proc = client.run("systemctl start maider-stack.service")
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------
# Boot, host key, authentication
# ------------------------------------------------------------------------------------------


def test_booting_instance_refuses_then_running_vm_reports_cloud_init_done(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    iid = create_instance(linode_sim, cloud_config(keys))
    rec = linode_sim.instance(iid)
    cloudsim_clock.advance(linode_sim.timings["provision"])  # "booting": no VM yet
    vm_farm.sync()
    assert rec.state == "booting"
    with pytest.raises(KeyError):
        vm_farm.vm(iid)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((rec.ipv4, rec.ssh_port or 22), 2):
        pass

    cloudsim_clock.advance(linode_sim.timings["boot"])
    vm = vm_farm.wait_vm(iid)
    assert vm.ipv4 == rec.ipv4 and vm.ssh_port == (rec.ssh_port or 22)
    client = ssh_to(vm)
    proc = client.run("cloud-init status --format json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["status"] == "done" and status["errors"] == [] and status["datasource"] == "akamai"
    assert client.run("cloud-init status").stdout == "status: done\n"

    # What cloud-init did, for tests to inspect.
    ci = vm.cloudinit
    assert [f.path for f in ci.files] == [
        "/opt/maider/compose.yaml",
        "/etc/systemd/system/maider-stack.service",
        "/opt/maider/vllm.args",
    ]
    assert vm.fs.mode("/opt/maider/compose.yaml") == 0o644
    assert ci.schema_checked in (True, None)
    assert vm.systemd.enabled == {"maider-stack.service"}
    not_emulated = "\n".join(vm.not_emulated)
    assert "runcmd: curl -fsSL" in not_emulated and "runcmd: nvidia-ctk runtime" in not_emulated
    assert "cloud-init module for 'package_update'" in not_emulated
    assert vm.docker.pulls == ["vllm/vllm-openai:v0.11.0"]
    assert vm.read_text("/root/.ssh/authorized_keys").strip() == keys.client_pub


def test_pinned_host_key_and_authorized_key_are_enforced(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    wrong = ssh_to(vm, pinned=keys.other_host_public).run("true")
    assert wrong.returncode == 255
    assert (
        "Host key verification failed" in wrong.stderr
        or "REMOTE HOST IDENTIFICATION HAS CHANGED" in wrong.stderr
    )

    intruder = ssh_to(vm, key=keys.other_client).run("true")
    assert intruder.returncode == 255 and "Permission denied (publickey)" in intruder.stderr

    ok = ssh_to(vm)
    first = ok.run("true")
    assert first.returncode == 0, first.stderr
    payload = keys.dir / "payload.txt"
    payload.write_text("over sftp\n")
    scp = ok.scp(payload, "/opt/maider/")
    assert scp.returncode == 0, scp.stderr
    assert vm.read_text("/opt/maider/payload.txt") == "over sftp\n"
    unknown = ok.run("frobnicate --now")
    assert unknown.returncode == 127 and "frobnicate: command not found" in unknown.stderr
    assert "ssh: frobnicate --now" in vm.not_emulated


def test_vm_without_host_key_in_user_data_fails_strict_checking(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    user_data = cloud_config(keys).replace("ssh_keys:", "unused_keys:", 1)
    user_data = "#cloud-config\n" + yaml.safe_dump(
        {k: v for k, v in yaml.safe_load(user_data).items() if k != "unused_keys"}
    )
    vm = boot(linode_sim, cloudsim_clock, vm_farm, user_data)
    assert vm.cloudinit.generated_host_key
    proc = ssh_to(vm).run("true")
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


# ------------------------------------------------------------------------------------------
# Secrets, the stack, the tunnel, vLLM
# ------------------------------------------------------------------------------------------


def test_secrets_stack_tunnel_and_vllm(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    client = ssh_to(vm)

    # Before the secrets exist the unit's condition skips the start (exit 0, nothing runs).
    assert client.run("systemctl start maider-stack.service").returncode == 0
    inactive = client.run("systemctl is-active maider-stack.service")
    assert (inactive.returncode, inactive.stdout.strip()) == (3, "inactive")
    assert vm.vllm is None

    start_stack(client)
    assert vm.fs.mode("/opt/maider/secrets.env") == 0o600
    assert vm.read_text("/opt/maider/secrets.env") == f"HF_TOKEN={HF_TOKEN}\nVLLM_API_KEY={API_KEY}\n"
    assert not any(API_KEY in (r.command or "") for r in vm.exec_log)  # secrets travel on stdin only
    assert client.run("systemctl is-active maider-stack.service").stdout.strip() == "active"
    assert vm.vllm is not None and vm.vllm.served_names == ["coder"] and vm.vllm.api_key == API_KEY
    assert vm.vllm.env["HF_TOKEN"] == HF_TOKEN

    ps = client.run("docker compose -f /opt/maider/compose.yaml ps --format json")
    rows = {r["Service"]: r for r in map(json.loads, ps.stdout.splitlines())}
    assert rows["vllm"]["State"] == "running" and rows["open-webui"]["State"] == "running"
    assert rows["vllm"]["Publishers"][0]["PublishedPort"] == 8000
    logs = client.run("docker compose -f /opt/maider/compose.yaml logs --no-color --tail 200 vllm")
    assert "Application startup complete." in logs.stdout and logs.stdout.startswith("vllm-1  | ")
    assert API_KEY not in logs.stdout and HF_TOKEN not in logs.stdout
    gpus = client.run(
        "nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits"
    )
    index, name, used, total, util = (v.strip() for v in gpus.stdout.strip().split(","))
    assert (index, name, total, util) == ("0", "Quadro RTX 6000", "24576", "0")
    assert int(used) == int(24576 * 0.9)

    # The tunnel: -O forward through the ControlMaster, to the VM's 127.0.0.1:8000 and :3000.
    api = client.forward(8000)
    webui = client.forward(3000)
    assert http(api, "/health", key=None)[0] == 200
    status, models = http(api, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["coder"]
    assert http(api, "/v1/models", key=None) == (401, {"error": "Unauthorized"})
    assert http(api, "/v1/models", key="wrong")[0] == 401
    assert http(webui, "/health", key=None) == (200, {"status": True})

    chat = {"model": "coder", "messages": [{"role": "user", "content": "Write hello world in Python"}]}
    status, reply = http(api, "/v1/chat/completions", chat)
    assert status == 200 and reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] and reply["choices"][0]["finish_reason"] == "stop"
    assert (
        reply["usage"]["total_tokens"]
        == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
    )
    assert http(api, "/v1/chat/completions", chat, key=None)[0] == 401
    status, one = http(api, "/v1/completions", {"model": "coder", "prompt": "def", "max_tokens": 1})
    assert (
        status == 200
        and one["usage"]["completion_tokens"] == 1
        and one["choices"][0]["finish_reason"] == "length"
    )
    assert http(api, "/v1/completions", {"model": "other", "prompt": "x"})[0] == 404

    # Streaming: SSE chunks, usage at the end, [DONE].
    stream = urllib.request.Request(
        f"http://127.0.0.1:{api}/v1/chat/completions",
        json.dumps({**chat, "stream": True, "stream_options": {"include_usage": True}}).encode(),
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(stream, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == reply["choices"][0]["message"]["content"]
    assert (
        chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 2
    )  # role chunk, usage chunk

    # /metrics counted all of it (no auth, as vLLM).
    status, metrics = http(api, "/metrics", key=None)
    assert status == 200
    assert metric(metrics, "vllm:request_success_total") == 3
    assert metric(metrics, "vllm:generation_tokens_total") == 2 * reply["usage"]["completion_tokens"] + 1
    assert metric(metrics, "vllm:prompt_tokens_total") > 0
    assert metric(metrics, "vllm:num_requests_running") == 0
    assert metric(metrics, "vllm:time_to_first_token_seconds_count") == 3
    assert 'model_name="coder"' in metrics

    assert client.control_cmd("check").returncode == 0
    assert client.control_cmd("exit").returncode == 0
    assert next(f.outcome.split(":")[0] for f in vm.forwards if f.dest_port == 8000) == "forwarded"


def test_two_vms_do_not_collide(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    first = create_instance(linode_sim, cloud_config(keys, served="alpha"), label="maider-saaaaaaa1")
    second = create_instance(linode_sim, cloud_config(keys, served="beta"), label="maider-sbbbbbbb2")
    cloudsim_clock.advance(120)
    vms = [vm_farm.wait_vm(first), vm_farm.wait_vm(second)]
    assert vms[0].ipv4 != vms[1].ipv4 and vms[0].root != vms[1].root
    ports = []
    for vm, name in zip(vms, ("alpha", "beta"), strict=True):
        client = ssh_to(vm)
        start_stack(client)
        if name == "alpha":
            api = client.forward(8000)  # -O forward through the ControlMaster
        else:
            _, api = client.tunnel(8000)  # a plain `ssh -N -L` process
        status, models = http(api, "/v1/models")
        assert status == 200 and [m["id"] for m in models["data"]] == [name]
        ports.append(vm.local_port(8000))
    assert None not in ports and ports[0] != ports[1]


def test_public_exposure_follows_the_compose_publish_address(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    exposed = COMPOSE.replace('"127.0.0.1:8000:8000"', '"8000:8000"').format(served="coder")
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    client = ssh_to(vm)
    start_stack(client)
    # Published on 127.0.0.1 only: nothing on the VM's public address.
    with pytest.raises(OSError), socket.create_connection((vm.ipv4, 8000), 2):
        pass
    vm.fs.write_bytes("/opt/maider/compose.yaml", exposed.encode(), mode=0o644)
    assert client.run("docker compose -f /opt/maider/compose.yaml up -d --force-recreate").returncode == 0
    with socket.create_connection((vm.ipv4, 8000), 2) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


# ------------------------------------------------------------------------------------------
# Failures
# ------------------------------------------------------------------------------------------


def test_invalid_cloud_config_reports_error(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    if schema_path() is None:
        pytest.skip("cloud-init schema not found under MAIDER_SPECS_DIR")
    bad = cloud_config(keys) + "write_file:\n  - path: /etc/typo\n"
    vm = boot(linode_sim, cloudsim_clock, vm_farm, bad)
    proc = ssh_to(vm).run("cloud-init status --format json")
    assert proc.returncode == 1
    status = json.loads(proc.stdout)
    assert status["status"] == "error" and status["extended_status"] == "error - done"
    assert "Cloud config schema errors" in status["errors"][0] and "write_file" in status["errors"][0]

    not_yaml = boot(
        linode_sim, cloudsim_clock, vm_farm, "#cloud-config\nruncmd: [a\n", label="maider-sbadyaml1"
    )
    assert not_yaml.cloudinit.status == "error"
    assert not_yaml.cloudinit.errors[0].startswith("Failed loading yaml blob")
    script = boot(linode_sim, cloudsim_clock, vm_farm, "#!/bin/sh\necho hi\n", label="maider-sscript01")
    assert script.cloudinit.status == "error" and "not emulated" in script.cloudinit.errors[0]


def test_failing_runcmd_line_is_an_error(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm = boot(
        linode_sim,
        cloudsim_clock,
        vm_farm,
        cloud_config(keys, runcmd=[["systemctl", "enable", "no-such.service"], "echo ok > /root/ran"]),
    )
    assert vm.cloudinit.status == "error"
    assert "Runparts: 1 failures (runcmd)" in vm.cloudinit.errors[0]
    assert vm.cloudinit.failed_lines == [("runcmd", "systemctl enable no-such.service", 1)]
    assert vm.read_text("/root/ran") == "ok\n"  # later lines still ran, as with /bin/sh
    assert "Unit file no-such.service does not exist" in vm.read_text("/var/log/cloud-init-output.log")


def test_oom_failure_shows_in_logs_and_health_fails(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm_farm.configure_next(vllm_failure=VLLMFailure.oom(), restart_backoff=0.05)
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    client = ssh_to(vm)
    start_stack(client)
    logs = client.run("docker compose -f /opt/maider/compose.yaml logs --no-color --tail 200 vllm").stdout
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB." in logs
    assert "RuntimeError: Engine core initialization failed." in logs
    api = client.forward(8000)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        http(api, "/health", key=None, timeout=3)
    container = vm.container("vllm")
    assert container is not None and container.exit_code == 1
    deadline = time.monotonic() + 5
    while container.restarts < 2 and time.monotonic() < deadline:  # restart: unless-stopped loops
        time.sleep(0.02)
    assert container.restarts >= 2
    assert vm.vllm_logs().count("torch.OutOfMemoryError") >= 2


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            VLLMFailure.kv_cache(max_tokens=18000),
            "larger than the maximum number of tokens that can be stored in KV cache (18000)",
        ),
        (
            VLLMFailure.model_not_found(),
            "Repository Not Found for url: https://huggingface.co/api/models/Qwen",
        ),
        (VLLMFailure.gated(), "Cannot access gated repo for url"),
        (VLLMFailure.nccl(), "NCCL error"),
        (VLLMFailure.bf16(), "Bfloat16 is only supported on GPUs with compute capability of at least 8.0"),
    ],
)
def test_load_failures_write_vllm_text_and_exit(
    linode_sim: LinodeSim,
    cloudsim_clock: FakeClock,
    vm_farm: VMFarm,
    keys: Keys,
    failure: VLLMFailure,
    expected: str,
) -> None:
    vm_farm.configure_next(vllm_failure=failure, restart_backoff=5.0)
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    vm.run("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=f"HF_TOKEN={HF_TOKEN}\n".encode())
    assert vm.run("systemctl start maider-stack").rc == 0
    assert expected in vm.vllm_logs()
    assert vm.vllm is None and vm.local_port(8000) is None
    ps = vm.run("docker compose -f /opt/maider/compose.yaml ps --format json -a")
    states = {
        json.loads(line)["Service"]: json.loads(line)["State"] for line in ps.stdout.decode().splitlines()
    }
    assert states["vllm"] == "restarting" and states["open-webui"] == "running"


def test_gated_model_accepts_the_right_token(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys
) -> None:
    vm_farm.configure_next(vllm_failure=VLLMFailure.gated(valid_token=HF_TOKEN))
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    vm.run("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=f"HF_TOKEN={HF_TOKEN}\n".encode())
    vm.run("systemctl start maider-stack")
    assert vm.vllm is not None and vm.vllm.is_ready()


def test_slow_load_then_crash_after_start(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys
) -> None:
    vm_farm.configure_next(load_seconds=0.3, vllm_failure=VLLMFailure.crash(after=0.2, times=1))
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    vm.run("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=f"VLLM_API_KEY={API_KEY}\n".encode())
    vm.run("systemctl start maider-stack")
    port = vm.local_port(8000)
    assert port is not None
    assert http(port, "/health", key=None)[0] == 503
    assert http(port, "/v1/models")[0] == 503
    deadline = time.monotonic() + 5
    while http(port, "/health", key=None)[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    container = vm.container("vllm")
    assert container is not None
    while container.restarts == 0:  # crashes 0.2 s after ready; restarted once, then healthy
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert "EngineDeadError" in vm.vllm_logs()
    while vm.vllm is None or not vm.vllm.is_ready():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert container.starts == 2


def test_realism_checks_catch_what_real_vllm_refuses(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))  # one Quadro RTX 6000 (cc 7.5)
    vm.run("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=b"VLLM_API_KEY=k\n")
    compose = vm.read_text("/opt/maider/compose.yaml")
    cases = {
        '"0.9"]': ('"0.9", --tensor-parallel-size, "2"]', "please set tensor_parallel_size (2)"),
        "--max-model-len": ("--dtype, bfloat16, --max-model-len", "Bfloat16 is only supported"),
        "    deploy:": ("    x-no-gpu:", "Failed to infer device type"),
    }
    for old, (new, expected) in cases.items():
        vm.fs.write_bytes("/opt/maider/compose.yaml", compose.replace(old, new, 1).encode(), mode=0o644)
        up = vm.run("docker compose -f /opt/maider/compose.yaml up -d --force-recreate")
        assert up.rc == 0, up.err
        assert expected in vm.vllm_logs(), expected
    vm.fs.write_bytes("/opt/maider/compose.yaml", compose.encode(), mode=0o644)
    assert vm.run("docker compose -f /opt/maider/compose.yaml up -d").rc == 0
    assert vm.vllm is not None and vm.vllm.is_ready()


# ------------------------------------------------------------------------------------------
# Lifecycle: cloud-init delay, deletion
# ------------------------------------------------------------------------------------------


def test_cloud_init_runs_on_the_simulator_clock(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm_farm.configure_next(cloudinit_sim_seconds=90)
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    client = ssh_to(vm)
    assert json.loads(client.run("cloud-init status --format json").stdout)["status"] == "running"
    assert vm.systemd.enabled == set()  # runcmd is the final stage
    cloudsim_clock.advance(90)
    assert json.loads(client.run("cloud-init status --format json").stdout)["status"] == "done"
    assert vm.systemd.enabled == {"maider-stack.service"}


def test_deleting_the_instance_stops_its_vm(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))
    client = ssh_to(vm)
    start_stack(client)
    api = client.forward(8000)
    assert http(api, "/health", key=None)[0] == 200
    real = vm.local_port(8000)
    assert real is not None

    _api(linode_sim, "DELETE", f"/linode/instances/{vm.id}")
    assert vm.destroyed and not vm.sshd_listening
    with pytest.raises(ConnectionRefusedError), socket.create_connection((vm.ipv4, vm.ssh_port), 2):
        pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", real), 2):
        pass
    deadline = time.monotonic() + 5
    while client.control_cmd("check").returncode == 0:  # the master lost its connection
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.run("true").returncode == 255


# ------------------------------------------------------------------------------------------
# The command interpreter
# ------------------------------------------------------------------------------------------


def test_command_interpreter(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys))

    def sh(command: str, stdin: bytes = b"") -> tuple[int, str, str]:
        rec = vm.run(command, stdin=stdin)
        return rec.rc, rec.out, rec.err

    assert sh("test -f /opt/maider/compose.yaml && echo yes || echo no") == (0, "yes\n", "")
    assert sh("test -f /opt/maider/secrets.env && echo yes || echo no") == (0, "no\n", "")
    assert sh("mkdir -p /opt/a/b && echo 'x  y' > /opt/a/b/f; cat /opt/a/b/f") == (0, "x  y\n", "")
    assert sh("echo one >> /opt/a/b/f; cat /opt/a/b/f | grep -c .") == (0, "2\n", "")
    assert sh("X=hello; echo \"$X ${Y:-world}\" '$X'") == (0, "hello world $X\n", "")
    assert sh("false; echo $?") == (0, "1\n", "")
    assert sh("cat /nope 2>/dev/null || echo missing") == (0, "missing\n", "")
    assert sh("cat /nope 2>&1") == (1, "cat: /nope: No such file or directory\n", "")
    assert sh("bash -c 'exit 3'") == (3, "", "")
    assert sh("sudo -n cat", stdin=b"piped") == (0, "piped", "")
    assert sh("install -m 0640 /dev/stdin /opt/a/s && stat")[0] == 127
    assert vm.fs.mode("/opt/a/s") == 0o640
    assert sh("if true; then echo; fi")[0] == 2
    assert sh("echo $(id)")[0] == 2
    rc, _, err = sh("docker compose -f /opt/maider/missing.yaml ps")
    assert rc == 1 and "no such file or directory" in err
    rc, _, err = sh("docker compose -f /opt/maider/compose.yaml up -d")
    assert rc == 1 and "env file /opt/maider/secrets.env not found" in err
    assert sh("install -m 600 /dev/stdin /opt/maider/secrets.env", stdin=b"VLLM_API_KEY=k\n")[0] == 0
    assert sh("docker compose -f /opt/maider/compose.yaml config --services") == (0, "vllm\nopen-webui\n", "")
    rc, out, _ = sh("systemctl status maider-stack.service")
    assert rc == 3 and "Loaded: loaded (/etc/systemd/system/maider-stack.service; enabled" in out

    # The unit changed on disk: systemd keeps the old one until daemon-reload.
    vm.fs.write_bytes("/etc/systemd/system/maider-stack.service", UNIT.replace("oneshot", "simple").encode())
    rc, _, err = sh("systemctl restart maider-stack.service")
    assert rc == 0 and "changed on disk" in err
    assert sh("systemctl daemon-reload")[0] == 0
    assert "oneshot" not in vm.systemd.load("maider-stack.service").text  # type: ignore[union-attr]


def test_shell_parser() -> None:
    script = parse("a 'b c' \"d $E\" && f || g; h | i > /tmp/x 2>&1\nj")
    assert len(script) == 3
    assert len(script[0].rest) == 2 and len(script[1].first.cmds) == 2
    assert [r.op for r in script[1].first.cmds[1].redirs] == [">", ">&"]
    for bad in ("a &&", "| a", "echo 'open", "(a)", "a `b`"):
        with pytest.raises(ShellSyntaxError):
            parse(bad)


def test_farm_options_and_errors(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    with VMFarm(
        linode_sim, stand_in_options=StandInOptions(default_user="admin"), ssh_ports="assign", root=tmp_path
    ) as farm:
        iid = create_instance(linode_sim, cloud_config(keys, users=["default"]))
        assert linode_sim.instance(iid).ssh_port not in (None, 22)  # assigned at create time
        with pytest.raises(TypeError):
            farm.configure(iid, no_such_option=1)
        cloudsim_clock.advance(120)
        vm = farm.wait_vm(iid)
        assert vm.ssh_port == linode_sim.instance(iid).ssh_port
        assert set(vm.cloudinit.users) == {"root", "admin"}
        vm.options.vllm_failure = VLLMFailure.crash()
        farm.error("provoked")
        assert farm.take_errors() == ["provoked"] and farm.errors == []
    assert not vm.sshd_listening


def _scw(sim: ScalewaySim, method: str, path: str, body: Any = None, *, text: str | None = None) -> Any:
    data = text.encode() if text is not None else json.dumps(body).encode() if body is not None else None
    ctype = "text/plain" if text is not None else "application/json"
    req = urllib.request.Request(
        sim.url + path,
        data=data,
        method=method,
        headers={"X-Auth-Token": SCW_SECRET_KEY, "Content-Type": ctype},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def test_scaleway_power_cycle_restarts_the_enabled_stack(
    scaleway_sim: ScalewaySim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    zone = "/instance/v1/zones/fr-par-2"
    server = _scw(
        scaleway_sim,
        "POST",
        f"{zone}/servers",
        {
            "name": "maider-s0000cafe",
            "commercial_type": "L4-1-24G",
            "project": SCW_PROJECT_ID,
            "image": "ubuntu_noble_gpu_os_12",
            "tags": ["maider"],
        },
    )["server"]
    sid = server["id"]
    _scw(scaleway_sim, "PATCH", f"{zone}/servers/{sid}/user_data/cloud-init", text=cloud_config(keys))
    _scw(scaleway_sim, "POST", f"{zone}/servers/{sid}/action", {"action": "poweron"})
    cloudsim_clock.advance(scaleway_sim.timings["boot"])
    vm = vm_farm.wait_vm(sid)
    assert vm.gpus[0].name == "NVIDIA L4"
    client = ssh_to(vm)
    start_stack(client)
    assert vm.vllm is not None

    _scw(scaleway_sim, "POST", f"{zone}/servers/{sid}/action", {"action": "poweroff"})
    vm_farm.sync()
    assert vm.state == "off" and not vm.sshd_listening and vm.vllm is None
    assert vm.unit_state("maider-stack.service") == "inactive"  # ExecStop ran: compose down

    cloudsim_clock.advance(scaleway_sim.timings["stop"])
    _scw(scaleway_sim, "POST", f"{zone}/servers/{sid}/action", {"action": "poweron"})
    cloudsim_clock.advance(scaleway_sim.timings["boot"])
    vm_farm.sync()
    assert vm.state == "up" and vm.boots == 2 and vm.sshd_listening
    assert vm.unit_state("maider-stack.service") == "active"  # enabled: started at boot
    assert vm.vllm is not None and vm.vllm.is_ready()
    again = client.run("cloud-init status")
    assert (again.returncode, again.stdout) == (0, "status: done\n"), again.stderr  # once per instance


def test_disable_root_only_prints_please_login(
    linode_sim: LinodeSim, cloudsim_clock: FakeClock, vm_farm: VMFarm, keys: Keys, ssh_to: Any
) -> None:
    vm = boot(linode_sim, cloudsim_clock, vm_farm, cloud_config(keys, disable_root=True))
    proc = ssh_to(vm).run("cloud-init status")
    assert proc.returncode == 142, proc.stderr
    assert 'Please login as the user "ubuntu" rather than the user "root".' in proc.stdout
    assert "no-port-forwarding" in vm.read_text("/root/.ssh/authorized_keys")
    assert vm.read_text("/home/ubuntu/.ssh/authorized_keys").strip() == keys.client_pub


def test_vllm_command_forms_and_compose_parsing() -> None:
    serve = VLLMConfig(["vllm", "serve", "org/model", "--served-model-name", "a", "b", "--max-model-len=16k"])
    assert (serve.model, serve.served_names, serve.max_model_len) == ("org/model", ["a", "b"], 16000)
    image_default = VLLMConfig(
        ["--model", "org/m2", "-tp", "2", "--port", "8001", "--api-key", "k", "--enforce-eager"]
    )
    assert (image_default.model, image_default.served_names) == ("org/m2", ["org/m2"])
    assert (image_default.tensor_parallel_size, image_default.port, image_default.api_key) == (2, 8001, "k")
    assert image_default.options["enforce-eager"] is True
    legacy = VLLMConfig(
        ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "x/y", "--dtype", "half"]
    )
    assert (legacy.model, legacy.dtype, legacy.port) == ("x/y", "half", 8000)

    ports = parse_ports(["127.0.0.1:8000:8000", "3000:8080", "9000", "[::1]:7000:7000/tcp"])
    assert [(p.host_ip, p.published, p.target) for p in ports] == [
        ("127.0.0.1", 8000, 8000),
        ("", 3000, 8080),
        ("", 9000, 9000),
        ("::1", 7000, 7000),
    ]
    warnings: list[str] = []
    doc = interpolate({"a": "${A}-${B:-dflt}-$$-${C}"}, {"A": "1"}, warnings)
    assert doc == {"a": "1-dflt-$-"} and warnings == [
        'The "C" variable is not set. Defaulting to a blank string.'
    ]
    with pytest.raises(ComposeError, match="required variable X is missing a value: set it"):
        interpolate("${X:?set it}", {}, [])
