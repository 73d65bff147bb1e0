"""The on-VM watchdog program's parts without a VM: its subcommands against a tiny stand-in of
vLLM's /health and /metrics on loopback, the deletion calls against a loopback HTTP server, and
the user-data that carries it (size limits, files, nothing when off)."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maider.remote import commands, vm_watchdog

SECRET = "watchdog-narrow-credential-0123456789"


class FakeVLLM:
    """/health and /metrics with counters a test moves."""

    def __init__(self) -> None:
        self.healthy = True
        self.running = 0
        self.requests = 0
        self.prompt = 0
        self.generated = 0
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.answers: list[int] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._reply(200 if owner.healthy else 503)
                elif self.path == "/metrics":
                    self._reply(200, owner.metrics())
                else:
                    self._reply(404)

            def do_DELETE(self) -> None:
                owner.calls.append(("DELETE", self.path, dict(self.headers)))
                self._reply(owner.answers.pop(0) if owner.answers else 204)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def metrics(self) -> str:
        lab = 'engine="0",model_name="m"'
        return (
            f"vllm:num_requests_running{{{lab}}} {self.running}.0\n"
            f"vllm:num_requests_waiting{{{lab}}} 0.0\n"
            f'vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} {self.requests}.0\n'
            f"vllm:prompt_tokens_total{{{lab}}} {self.prompt}.0\n"
            f"vllm:generation_tokens_total{{{lab}}} {self.generated}.0\n"
        )

    def serve(self, prompt: int = 5, generated: int = 3) -> None:
        self.requests += 1
        self.prompt += prompt
        self.generated += generated

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    fake = FakeVLLM()
    yield fake
    fake.close()


@pytest.fixture
def vm_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vllm: FakeVLLM) -> Path:
    root = tmp_path / "vm"
    config = root / "etc/maider/watchdog.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps(
            {
                "idle_timeout_s": 60,
                "max_lifetime_s": 3600,
                "warn_before_s": 10,
                "poll_s": 0.1,
                "destroy_retry_s": 2,
            }
        )
    )
    monkeypatch.setenv("MAIDER_WATCHDOG_ROOT", str(root))
    monkeypatch.setenv("MAIDER_WATCHDOG_VLLM_URL", vllm.url)
    return root


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert vm_watchdog.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _tick(now: float) -> Any:
    doc, decision = vm_watchdog.tick(vm_watchdog.load_settings(), now)
    return doc, decision


def test_idle_counts_from_vllm_readiness_and_traffic_moves_it(vm_root: Path, vllm: FakeVLLM) -> None:
    vllm.healthy = False
    _tick(1000.0)
    doc, _ = _tick(1500.0)  # still loading the model: idle time does not run
    assert doc.status["ready_at"] is None and doc.state.last_activity_at == 1500.0
    assert doc.state.started_at == 1000.0  # the lifetime does run
    vllm.healthy = True
    doc, _ = _tick(1600.0)
    assert doc.status["ready_at"] == 1600.0
    doc, decision = _tick(1650.0)  # no traffic: idle since readiness
    assert doc.state.last_activity_at == 1600.0 and decision.action == "warn" and decision.reason == "idle"
    vllm.serve()
    doc, decision = _tick(1655.0)
    assert doc.state.last_activity_at == 1655.0 and decision.action == "none"
    assert doc.status["phase"] == "watching"
    doc, decision = _tick(1716.0)
    assert decision.action == "destroy" and doc.status["phase"] == "destroying"
    assert doc.status["acted_reason"] == "idle"


def test_a_running_request_is_activity(vm_root: Path, vllm: FakeVLLM) -> None:
    _tick(1000.0)
    _tick(1001.0)
    vllm.running = 1  # a long generation that has not finished yet
    doc, _ = _tick(1050.0)
    assert doc.state.last_activity_at == 1050.0


def test_the_state_survives_a_restart(vm_root: Path, vllm: FakeVLLM) -> None:
    _tick(1000.0)
    doc, _ = _tick(5000.0)
    assert doc.state.started_at == 1000.0  # not reset: the lifetime counts from the first start
    assert (vm_root / "var/lib/maider/watchdog/state.json").is_file()


def test_probes_inside_a_window_do_not_count_but_user_traffic_does(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _tick(1000.0)
    first = _main(capsys, "status")["state"]["last_activity_at"]
    _main(capsys, "probe-begin")
    vllm.serve(prompt=7, generated=1)  # maider's probe
    vllm.running = 1  # still running at a tick during the window: not judged
    doc, _ = _tick(2000.0)
    assert doc.state.last_activity_at == first
    vllm.running = 0
    report = _main(capsys, "probe-end", "--requests", "1", "--prompt-tokens", "7", "--generation-tokens", "1")
    assert report["state"]["last_activity_at"] == first
    assert report["status"]["probe"] is None
    # A user's request inside a window is more than the probe's totals: it counts.
    _main(capsys, "probe-begin")
    vllm.serve(prompt=7, generated=1)
    vllm.serve(prompt=3, generated=9)
    report = _main(capsys, "probe-end", "--requests", "1", "--prompt-tokens", "7", "--generation-tokens", "1")
    assert report["state"]["last_activity_at"] > first


def test_a_stale_probe_window_closes(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _main(capsys, "probe-begin")
    settings = vm_watchdog.load_settings()
    doc = vm_watchdog.Doc.load(settings, 0)
    assert vm_watchdog.probe_open(doc.status, settings, doc.status["probe"]["since"] + 1)
    assert not vm_watchdog.probe_open(doc.status, settings, doc.status["probe"]["since"] + 601)


def test_extend_postpones_and_is_capped(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _main(capsys, "extend", "--seconds", "600")
    assert report["decision"]["extended"] is True
    assert report["state"]["extended_until"] == pytest.approx(report["now"] + 600, abs=2)
    report = _main(capsys, "extend", "--seconds", str(100 * 3600))
    assert report["state"]["extended_until"] <= report["now"] + 8 * 3600 + 1
    assert vm_watchdog.main(["extend", "--seconds", "-5"]) == 1
    assert "--seconds must be positive" in capsys.readouterr().err


def _destroy_file(root: Path, vllm: FakeVLLM) -> None:
    path = root / "etc/maider/watchdog-destroy.json"
    call = {
        "method": "DELETE",
        "url": f"{vllm.url}/v4/linode/instances/42?x={SECRET}",
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "json": None,
        "ok_statuses": [200, 204, 404],
    }
    path.write_text(json.dumps({"calls": [call], "secrets": [SECRET], "credential": "a token"}))
    path.chmod(0o600)


def test_destroy_retries_then_succeeds_and_never_prints_the_credential(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _destroy_file(vm_root, vllm)
    vllm.answers = [500, 429]
    outcome = vm_watchdog.destroy(
        vm_watchdog.load_settings() | {"destroy_retry_s": 30}, "idle", lambda: False
    )
    assert outcome == "destroyed"
    assert len(vllm.calls) == 3 and vllm.calls[-1][2]["Authorization"] == f"Bearer {SECRET}"
    out = capsys.readouterr()
    assert "answered HTTP 500" in out.err and "answered HTTP 204" in out.err
    assert SECRET not in out.err + out.out


def test_destroy_gives_up_and_powers_off_when_the_api_keeps_failing(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _destroy_file(vm_root, vllm)
    vllm.answers = [403] * 10
    assert vm_watchdog.destroy(vm_watchdog.load_settings(), "idle", lambda: False) == "powering-off"
    assert SECRET not in capsys.readouterr().err


def test_without_a_credential_file_it_powers_off(vm_root: Path, vllm: FakeVLLM) -> None:
    assert vm_watchdog.destroy(vm_watchdog.load_settings(), "idle", lambda: False) == "powering-off"


def test_the_shipped_program_runs_standalone(tmp_path: Path, vm_root: Path, vllm: FakeVLLM) -> None:
    """As on the VM: the three files in one directory, no maider package importable."""
    from maider.remote import cloudinit

    install = tmp_path / "opt"
    install.mkdir()
    for name, source in cloudinit.watchdog_sources().items():
        (install / name).write_text(source)
    env = {
        "MAIDER_WATCHDOG_ROOT": str(vm_root),
        "MAIDER_WATCHDOG_VLLM_URL": vllm.url,
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-I", "-B", str(install / "maider_watchdog.py"), "status"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert commands.parse_watchdog_status(done.stdout)["decision"]["reason"] == "idle"


def test_paths_agree_with_the_command_module() -> None:
    assert vm_watchdog.PROGRAM_PATH == commands.WATCHDOG_PROGRAM
    assert vm_watchdog.CONFIG_PATH == commands.WATCHDOG_CONFIG_PATH
    assert vm_watchdog.DESTROY_PATH == commands.WATCHDOG_DESTROY_PATH
    assert vm_watchdog.STATE_PATH == commands.WATCHDOG_STATE_PATH


def test_command_strings() -> None:
    assert commands.watchdog_extend(3600) == (
        "/usr/bin/python3 /opt/maider/watchdog/maider_watchdog.py extend --seconds 3600"
    )
    assert commands.watchdog_probe_end(1, 2, 3).endswith(
        "probe-end --requests 1 --prompt-tokens 2 --generation-tokens 3"
    )
    with pytest.raises(ValueError):
        commands.watchdog_probe_end(-1, 0, 0)
    with pytest.raises(ValueError):
        commands.watchdog_extend(0)
    with pytest.raises(ValueError):
        commands.parse_watchdog_status("not json")


# --------------------------------------------------------------------------------------------
# The user-data
# --------------------------------------------------------------------------------------------


def _user_data(tmp_path: Path, *, watchdog: bool, extra: int = 0) -> str:
    from maider.config import load_settings
    from maider.remote import cloudinit
    from maider.remote.keys import generate_host_key
    from maider.session.watchdog import vm_config
    from maider.testing import TEST_PUBLIC_KEY

    host = generate_host_key(tmp_path / "host_key", "s00000000")
    settings = load_settings({"watchdog": watchdog})
    compose = "services:\n  vllm:\n    image: x\n" + "".join(f"    # {'x' * 70}\n" for _ in range(extra))
    return cloudinit.render_user_data(
        ssh_public_key=TEST_PUBLIC_KEY,
        host_key_private=host.private_path.read_text(),
        host_key_public=host.public_key,
        compose_yaml=compose,
        install_gpu_stack=True,  # the longest preparation script (Linode)
        vllm_image="vllm/vllm-openai:v0.11.0",
        openwebui_image="ghcr.io/open-webui/open-webui:v0.6.30",
        extra_packages=("nvtop", "htop", "tmux"),
        watchdog_config=vm_config(settings),
    )


def test_user_data_with_the_watchdog_stays_under_both_limits(tmp_path: Path) -> None:
    text = _user_data(tmp_path, watchdog=True, extra=40)  # a long compose file too
    raw = len(text.encode())
    assert raw < 64 * 1024  # DigitalOcean: 64 KiB of plain text
    assert len(base64.b64encode(text.encode())) <= 65535  # Linode: 65535 bytes after base64
    import yaml

    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    program = files["/opt/maider/watchdog/maider_watchdog.py"]
    assert program["encoding"] == "gz+b64"
    assert (
        gzip.decompress(base64.b64decode(program["content"])).decode()
        == Path(vm_watchdog.__file__).read_text()
    )
    assert "Restart=always" in files["/etc/systemd/system/maider-watchdog.service"]["content"]
    config = json.loads(files["/etc/maider/watchdog.json"]["content"])
    assert config["idle_timeout_s"] == 45 * 60 and config["max_lifetime_s"] == 8 * 3600
    assert ["systemctl", "enable", "--now", "maider-watchdog.service"] in doc["runcmd"]
    # The watchdog starts before the host preparation, which may fail.
    runcmd = doc["runcmd"]
    assert runcmd.index(["systemctl", "enable", "--now", "maider-watchdog.service"]) < runcmd.index(
        ["bash", "/opt/maider/prepare-host.sh"]
    )


def test_user_data_without_the_watchdog_has_none_of_it(tmp_path: Path) -> None:
    text = _user_data(tmp_path, watchdog=False)
    assert "watchdog" not in text


def test_user_data_over_the_linode_base64_limit_is_refused(tmp_path: Path) -> None:
    from maider.remote.cloudinit import UserDataTooLarge

    with pytest.raises(UserDataTooLarge, match="65535"):
        _user_data(tmp_path, watchdog=True, extra=500)


def test_powered_on_again_after_a_power_off_gives_time_to_extend(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _tick(1000.0)
    settings = vm_watchdog.load_settings()
    vm_watchdog._set_phase(settings, "powering-off")
    vm_watchdog._after_power_on(settings, 99_000.0)
    doc = vm_watchdog.Doc.load(settings, 99_000.0)
    assert doc.status["phase"] == "watching"
    assert doc.state.extended_until is not None and doc.state.extended_until >= 99_060.0


def test_extend_stops_where_the_deletion_credential_expires(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _destroy_file(vm_root, vllm)
    path = vm_root / "etc/maider/watchdog-destroy.json"
    doc = json.loads(path.read_text())
    now = __import__("time").time()
    doc["expires_at"] = now + 3600  # the credential is refused after that: the VM could only power off
    path.write_text(json.dumps(doc))
    report = _main(capsys, "extend", "--seconds", str(3 * 3600))
    limit = now + 3600 - vm_watchdog.CREDENTIAL_EXPIRY_MARGIN_S
    assert report["state"]["extended_until"] == pytest.approx(limit, abs=2)
    assert report["status"]["extend_capped_at"] == pytest.approx(limit, abs=2)


def test_extend_is_refused_once_the_watchdog_acted(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _tick(1000.0)
    _tick(1001.0)
    doc, _ = _tick(1000.0 + 3601)  # past the max lifetime
    assert doc.status["phase"] == "destroying"
    assert vm_watchdog.main(["extend", "--seconds", "600"]) == 1
    assert "too late to extend" in capsys.readouterr().err


def test_an_open_probe_window_defers_the_idle_rule_but_not_the_lifetime(
    vm_root: Path, vllm: FakeVLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    _tick(1000.0)
    _tick(1001.0)
    _main(capsys, "probe-begin")  # `maider benchmark` runs: somebody is there
    settings = vm_watchdog.load_settings() | {"probe_stale_s": 10**9}
    doc, decision = vm_watchdog.tick(settings, 1001.0 + 61)
    assert doc.status["phase"] in ("watching", "warned") and decision.action == "none"
    doc, decision = vm_watchdog.tick(settings, 1000.0 + 3601)
    assert doc.status["phase"] == "destroying" and doc.status["acted_reason"] == "max_lifetime"


@pytest.mark.parametrize(
    ("provider", "env", "says"),
    [
        ("linode", {}, "Linode token minted for the session (linodes:read_write only"),
        ("scaleway", {}, "Scaleway IAM key minted for the session"),
        ("digitalocean", {}, "the VM powers itself off (still billed)"),
        (
            "digitalocean",
            {"MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN": "dop_v1_scoped_watchdog"},
            "your MAIDER_DIGITALOCEAN",
        ),
        ("linode", {"MAIDER_WATCHDOG": "false"}, "no idle watchdog (watchdog = false)"),
    ],
)
def test_the_dry_run_says_what_the_watchdog_will_do_and_hold(
    cli: Any, monkeypatch: pytest.MonkeyPatch, provider: str, env: dict[str, str], says: str
) -> None:
    from tests.conftest import require_providers

    require_providers(provider)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MAIDER_IDLE_TIMEOUT_MINUTES", "20")
    result = cli("up", "--dry-run", "-p", provider)
    assert result.exit_code == 0, result.output
    assert says in result.stdout
    if "MAIDER_WATCHDOG" not in env:
        assert "deletes it after 20 min without inference requests or 8 h after start" in result.stdout
    plan = json.loads(cli("up", "--dry-run", "--json", "-p", provider).stdout)
    assert plan["watchdog"]["enabled"] is ("MAIDER_WATCHDOG" not in env)
