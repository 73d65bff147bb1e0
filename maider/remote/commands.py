"""The commands maider runs on the VM over SSH, and pure parsers for what they print.

Every string here is the one in docs/LIFECYCLE.md ("Commands maider runs over SSH"): the VM
emulator in ``tests/vmsim`` interprets exactly these, so change that document first, then here.
Only the standard library is imported: the lifecycle imports this module on every command.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from maider.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Paths and ports on the VM
# --------------------------------------------------------------------------------------------

REMOTE_DIR = "/opt/maider"
COMPOSE_PATH = f"{REMOTE_DIR}/compose.yaml"
#: HF_TOKEN and VLLM_API_KEY, written over SSH after boot (never in user-data), mode 0600.
SECRETS_PATH = f"{REMOTE_DIR}/secrets.env"
#: Installs (Linode) or checks (images with a GPU stack) Docker, compose and the GPU runtime.
PREPARE_SCRIPT_PATH = f"{REMOTE_DIR}/prepare-host.sh"
UNIT_NAME = "maider-stack.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
#: The compose project name, fixed so `ps`/`logs` find the stack whatever the working directory.
COMPOSE_PROJECT = "maider"
VLLM_SERVICE = "vllm"
OPENWEBUI_SERVICE = "openwebui"
#: Where the services are published on the VM (127.0.0.1 only): the tunnel's remote ends.
VLLM_REMOTE_PORT = 8000
OPENWEBUI_REMOTE_PORT = 3000

_COMPOSE = f"docker compose -f {COMPOSE_PATH}"

#: The idle watchdog (maider/remote/vm_watchdog.py, installed by the user-data; the same paths
#: are constants there, where maider cannot be imported).
WATCHDOG_DIR = f"{REMOTE_DIR}/watchdog"
WATCHDOG_PROGRAM = f"{WATCHDOG_DIR}/maider_watchdog.py"
WATCHDOG_UNIT_NAME = "maider-watchdog.service"
WATCHDOG_UNIT_PATH = f"/etc/systemd/system/{WATCHDOG_UNIT_NAME}"
#: Non-secret: the timeouts (user-data).
WATCHDOG_CONFIG_PATH = "/etc/maider/watchdog.json"
#: The SelfDestruct calls with their credential: 0600, written over SSH stdin after boot.
WATCHDOG_DESTROY_PATH = "/etc/maider/watchdog-destroy.json"
WATCHDOG_STATE_PATH = "/var/lib/maider/watchdog/state.json"
_WATCHDOG = f"/usr/bin/python3 {WATCHDOG_PROGRAM}"

# --------------------------------------------------------------------------------------------
# Commands (docs/LIFECYCLE.md)
# --------------------------------------------------------------------------------------------

#: Boot progress; see :func:`parse_cloud_init_status`. Never `--wait`: it blocks without a
#: timeout and exits non-zero on errors, which is how the previous generation missed them.
CLOUD_INIT_STATUS = "cloud-init status --format json"
START_STACK = f"systemctl start {UNIT_NAME}"
#: Stops (compose down) and starts (compose up) the stack, so containers are recreated and
#: re-read secrets.env. `docker compose restart` would not, which broke the old self-heal.
RESTART_STACK = f"systemctl restart {UNIT_NAME}"
COMPOSE_PS = f"{_COMPOSE} ps --format json"
#: After compose.yaml changed on the VM: recreate the containers with the new configuration.
RECREATE = f"{_COMPOSE} up -d --force-recreate"
NVIDIA_SMI_QUERY = (
    "nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits"
)
#: The compose file as it is on the VM: the vLLM flags really running (after any heal or
#: switch-model), which `benchmark` stores with its results. It holds no secret.
READ_COMPOSE = f"cat {COMPOSE_PATH}"


# The watchdog's subcommands: each prints one JSON object (see :func:`parse_watchdog_status`).
WATCHDOG_STATUS = f"{_WATCHDOG} status"
WATCHDOG_PROBE_BEGIN = f"{_WATCHDOG} probe-begin"


def watchdog_extend(seconds: float) -> str:
    """Keep the VM at least ``seconds`` longer (the VM caps it at its max extension)."""
    if not (isinstance(seconds, (int, float)) and seconds > 0 and seconds < float("inf")):
        raise ValueError(f"seconds must be positive, not {seconds!r}")
    return f"{_WATCHDOG} extend --seconds {float(seconds):g}"


def watchdog_probe_end(requests: int, prompt_tokens: int, generation_tokens: int) -> str:
    """Close maider's probe window: the watchdog subtracts these totals from vLLM's counters."""
    values = (requests, prompt_tokens, generation_tokens)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"probe totals must be non-negative integers, not {values!r}")
    return (
        f"{_WATCHDOG} probe-end --requests {requests} --prompt-tokens {prompt_tokens} "
        f"--generation-tokens {generation_tokens}"
    )


def parse_watchdog_status(stdout: str) -> dict[str, Any]:
    """The JSON object every watchdog subcommand prints (``config``, ``state``, ``status``,
    ``decision``, ``now``: the VM's clock)."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1] if stdout.strip() else "")
    except json.JSONDecodeError as exc:
        raise ValueError(f"the VM's watchdog printed invalid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("state", "decision", "now")):
        raise ValueError("the VM's watchdog printed JSON without state/decision/now")
    return data


def write_secret_file(path: str = SECRETS_PATH) -> str:
    """Write stdin to ``path`` with mode 0600 (the content travels on SSH stdin, never argv)."""
    return f"install -m 600 /dev/stdin {shlex.quote(path)}"


#: Healing and switch-model: replace compose.yaml with the content on SSH stdin (mode 0644, as
#: cloud-init wrote it; it holds no secret), then :data:`RECREATE`.
WRITE_COMPOSE = f"install -m 644 /dev/stdin {COMPOSE_PATH}"


def vllm_logs(tail: int = 200) -> str:
    """The last ``tail`` lines of the vLLM service's log (that service, not the newest container)."""
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
        raise ValueError(f"tail must be a positive integer, not {tail!r}")
    return f"{_COMPOSE} logs --no-color --tail {tail} {VLLM_SERVICE}"


# --------------------------------------------------------------------------------------------
# The secrets file
# --------------------------------------------------------------------------------------------

#: Characters allowed in a secret value. docker compose parses env files like dotenv: quotes are
#: stripped, `${X}` is interpolated, ` #` starts a comment. Tokens (hf_…, URL-safe keys) never
#: need anything else, so anything else is refused rather than escaped.
_SAFE_SECRET = re.compile(r"[A-Za-z0-9._~+/=:@%-]+")


def _check_secret(name: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{name} is empty")
    if _SAFE_SECRET.fullmatch(value):
        return
    # Never echo the value: say what is wrong with it.
    if "\n" in value or "\r" in value:
        problem = "a line break"
    elif any(c in value for c in "'\"`"):
        problem = "a quote"
    elif any(c.isspace() for c in value):
        problem = "whitespace"
    else:
        problem = "a character other than A-Z a-z 0-9 . _ ~ + / = : @ % -"
    raise ConfigError(f"{name} contains {problem}, which cannot go in the VM's env file: check the value")


def render_secrets_env(hf_token: str | None, api_key: str) -> str:
    """The content of secrets.env (``KEY=value`` lines). It goes over SSH stdin only.

    ``HF_TOKEN`` is omitted when there is none (public models). vLLM reads ``VLLM_API_KEY``
    itself; Open WebUI gets the same key through its entrypoint (see compose.py).
    """
    _check_secret("the vLLM API key", api_key)
    lines = []
    if hf_token:
        _check_secret("the Hugging Face token (hf_token)", hf_token)
        lines.append(f"HF_TOKEN={hf_token}")
    lines.append(f"VLLM_API_KEY={api_key}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# cloud-init status
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudInitStatus:
    """cloud-init's state, normalised.

    ``status`` is one of "not started", "running", "done", "error", "disabled". ``done`` means
    the user-data was applied (possibly with recoverable problems: ``degraded``); ``failed``
    means it was not and never will be, so the VM is useless (errors are reported as soon as
    they happen, even while cloud-init is still running).
    """

    status: str
    errors: tuple[str, ...]
    done: bool
    failed: bool
    degraded: bool = False
    recoverable_errors: tuple[str, ...] = ()
    extended_status: str = ""

    @property
    def running(self) -> bool:
        return not self.done and not self.failed


_TEXT_STATUS = re.compile(r"^\s*\.*\s*status:\s*(?P<status>.+?)\s*$", re.MULTILINE)
_TEXT_EXTENDED = re.compile(r"^\s*extended_status:\s*(?P<status>.+?)\s*$", re.MULTILINE)
_TEXT_ERROR_ITEM = re.compile(r"^\s+-\s+(?P<error>.+?)\s*$")


def parse_cloud_init_status(stdout: str) -> CloudInitStatus:
    """Parse ``cloud-init status --format json`` (any version), or the text format.

    cloud-init ≥ 23.4 prints ``status`` ("running", "done", "error", …) with ``extended_status``
    ("degraded done", "error - running", …) and ``recoverable_errors``; older versions print
    ``status`` and ``errors`` only; versions without ``--format`` print ``status: done``.
    """
    text = stdout.strip()
    if not text:
        raise ValueError("cloud-init status printed nothing")
    if text[0] in '{["':
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cloud-init status printed invalid JSON: {exc}") from None
        if isinstance(data, str):  # a bare JSON string: "done"
            return _status(data, "", [], [])
        if not isinstance(data, dict) or "status" not in data:
            raise ValueError("cloud-init status JSON has no 'status' field")
        errors = [str(e) for e in data.get("errors") or []]
        recoverable = _flatten_recoverable(data.get("recoverable_errors"))
        return _status(str(data["status"]), str(data.get("extended_status") or ""), errors, recoverable)
    match = _TEXT_STATUS.search(text)
    if match is None:
        raise ValueError(f"cannot read cloud-init's status from: {text[:200]!r}")
    extended = _TEXT_EXTENDED.search(text)
    return _status(match["status"], extended["status"] if extended else "", _text_errors(text), [])


def _flatten_recoverable(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [f"{level}: {message}" for level, messages in value.items() for message in (messages or [])]


def _text_errors(text: str) -> list[str]:
    """The items under ``errors:`` in ``cloud-init status --long``."""
    errors: list[str] = []
    collecting = False
    for line in text.splitlines():
        if re.match(r"^\s*errors:", line):
            collecting = True
            continue
        if collecting:
            item = _TEXT_ERROR_ITEM.match(line)
            if item is None:
                break
            errors.append(item["error"])
    return errors


def _status(status: str, extended: str, errors: list[str], recoverable: list[str]) -> CloudInitStatus:
    word = status.strip().strip('"').lower().replace("_", " ")
    ext = extended.strip().lower()
    degraded = word.startswith("degraded") or ext.startswith("degraded")
    if word.startswith("degraded"):  # "degraded done" / "degraded running" (and the emulator's "degraded")
        word = word.removeprefix("degraded").strip() or "done"
    if word in ("not run", "not started", "not running"):
        word = "not started"
    if word == "error" or ext.startswith("error"):
        return CloudInitStatus(
            "error",
            tuple(errors) or ("cloud-init reported an error (see /var/log/cloud-init-output.log)",),
            done=False,
            failed=True,
            degraded=degraded,
            recoverable_errors=tuple(recoverable),
            extended_status=extended,
        )
    if word == "disabled":
        return CloudInitStatus(
            "disabled",
            (*errors, "cloud-init is disabled on this image, so maider's user-data was never applied"),
            done=False,
            failed=True,
            extended_status=extended,
        )
    if word not in ("not started", "running", "done"):
        raise ValueError(f"unknown cloud-init status {status!r}")
    return CloudInitStatus(
        word,
        tuple(errors),
        done=word == "done",
        failed=False,
        degraded=degraded,
        recoverable_errors=tuple(recoverable),
        extended_status=extended,
    )


# --------------------------------------------------------------------------------------------
# docker compose ps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publisher:
    url: str
    target_port: int
    published_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ServiceState:
    """One container of the stack, as ``docker compose ps --format json`` describes it."""

    service: str
    name: str
    state: str  # "running", "restarting", "exited", "created", "paused", "dead", "removing"
    health: str  # "healthy", "unhealthy", "starting", or "" without a healthcheck
    exit_code: int
    status: str  # human text: "Up 3 minutes (healthy)"
    image: str = ""
    publishers: tuple[Publisher, ...] = field(default_factory=tuple)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def healthy(self) -> bool:
        return self.running and self.health in ("healthy", "")


def parse_compose_ps(stdout: str) -> list[ServiceState]:
    """Parse ``docker compose ps --format json``.

    Compose ≥ 2.21 prints one JSON object per line; 2.0-2.20 print one JSON array. No container
    prints nothing (new versions) or ``[]`` (old ones).
    """
    text = stdout.strip()
    if not text:
        return []
    items: list[Any]
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"docker compose ps printed invalid JSON: {exc}") from None
        if not isinstance(items, list):
            raise ValueError("docker compose ps printed JSON that is not a list")
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"docker compose ps line {number} is not JSON: {exc}") from None
    return [_service_state(item) for item in items]


def _service_state(item: Any) -> ServiceState:
    if not isinstance(item, dict):
        raise ValueError("docker compose ps printed an entry that is not a JSON object")
    publishers = tuple(
        Publisher(
            url=str(p.get("URL") or ""),
            target_port=int(p.get("TargetPort") or 0),
            published_port=int(p.get("PublishedPort") or 0),
            protocol=str(p.get("Protocol") or "tcp"),
        )
        for p in item.get("Publishers") or []
        if isinstance(p, dict)
    )
    return ServiceState(
        service=str(item.get("Service") or ""),
        name=str(item.get("Name") or ""),
        state=str(item.get("State") or "").lower(),
        health=str(item.get("Health") or "").lower(),
        exit_code=int(item.get("ExitCode") or 0),
        status=str(item.get("Status") or ""),
        image=str(item.get("Image") or ""),
        publishers=publishers,
    )


# --------------------------------------------------------------------------------------------
# nvidia-smi
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuReading:
    """One GPU from :data:`NVIDIA_SMI_QUERY`. Figures are None where the GPU reports "[N/A]"."""

    index: int
    name: str
    memory_used_mib: int | None
    memory_total_mib: int | None
    utilization_pct: int | None


def parse_nvidia_smi(stdout: str) -> list[GpuReading]:
    """Parse :data:`NVIDIA_SMI_QUERY` output: ``0, NVIDIA H100 80GB HBM3, 1, 81559, 0`` per GPU."""
    text = stdout.strip()
    if not text or text.startswith("No devices were found"):
        return []
    readings = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi output: {line[:200]!r}")
        # A name never contains a comma today; joining the middle fields keeps one that does.
        used, total, util = (_number(f) for f in fields[-3:])
        readings.append(GpuReading(int(fields[0]), ", ".join(fields[1:-3]), used, total, util))
    return readings


def _number(text: str) -> int | None:
    try:
        return round(float(text))
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"
