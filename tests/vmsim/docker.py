"""Docker Engine + Compose v2 on the emulated VM, with stand-in containers.

``docker compose`` reads the compose file(s) from the VM's root, interpolates ``${VAR}`` from
the project's ``.env``, validates the result against the Compose JSON schema
(``$MAIDER_SPECS_DIR/compose/compose-spec.json``), resolves ``env_file`` (missing → compose's
error), and runs each service as a container:

* a service whose image, name or command is vLLM gets the stand-in vLLM (``vllm.py``);
* an ``open-webui`` image gets the stand-in Open WebUI;
* anything else "runs" without doing anything.

Published ports (``127.0.0.1:8000:8000``) map a VM port to the container port the stand-in
listens on; ``resolve()`` is how the SSH server (``-L`` forwards) and the public relays find
the real 127.0.0.1 port behind a VM port. A container that is not running has no published
port (connection refused); a published port whose container does not listen on the target
port is reset, as docker-proxy does. Restart policies restart crashed containers with a
back-off, so a vLLM that fails at every start loops like the real thing.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import posixpath
import re
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import yaml

from .shell import Ctx

if TYPE_CHECKING:
    from .vm import EmulatedVM, Timer

COMPOSE_VERSION = "v2.29.7"
DOCKER_VERSION = "27.3.1"
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")


class ComposeError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Compose files
# ------------------------------------------------------------------------------------------


def parse_env_file(text: str) -> dict[str, str]:
    """A dotenv file as Compose reads it (``KEY=value``, quotes, ``export``, comments)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].encode().decode("unicode_escape") if "\\" in value else value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        env[key] = value
    return env


_VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(obj: Any, env: dict[str, str], warnings: list[str]) -> Any:
    if isinstance(obj, dict):
        return {k: interpolate(v, env, warnings) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interpolate(v, env, warnings) for v in obj]
    if not isinstance(obj, str):
        return obj

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return arg
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        if value is None:
            warnings.append(f'The "{name}" variable is not set. Defaulting to a blank string.')
            return ""
        return value

    return _VAR.sub(sub, obj)


@functools.lru_cache(maxsize=2)
def _compose_validator(path: str) -> Any:
    import jsonschema

    with open(path) as f:
        return jsonschema.Draft7Validator(json.load(f))


def compose_schema_errors(doc: Any) -> list[str] | None:
    from .cloudinit import specs_dir

    path = specs_dir() / "compose" / "compose-spec.json"
    if not path.is_file():
        return None
    out = []
    for e in sorted(_compose_validator(str(path)).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path)
        if e.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' (?:was|were) unexpected", e.message)
            msg = f"additional properties {extra[0]!r} not allowed" if extra else e.message
        else:
            msg = e.message
        out.append(f"{where} {msg}".strip())
    return out


@dataclass(frozen=True)
class Port:
    host_ip: str  # "" for all interfaces
    published: int
    target: int
    protocol: str = "tcp"

    def text(self) -> str:
        ip = self.host_ip or "0.0.0.0"
        return f"{ip}:{self.published}->{self.target}/{self.protocol}"


def parse_ports(specs: list[Any]) -> list[Port]:
    out: list[Port] = []
    for spec in specs or []:
        if isinstance(spec, dict):
            published = spec.get("published")
            target = int(spec["target"])
            out.append(
                Port(
                    str(spec.get("host_ip", "")),
                    int(published) if published not in (None, "") else target,
                    target,
                    str(spec.get("protocol", "tcp")),
                )
            )
            continue
        text = str(spec)
        proto = "tcp"
        if "/" in text:
            text, proto = text.rsplit("/", 1)
        host_ip = ""
        m = re.match(r"^\[([0-9a-fA-F:]+)\]:(.*)$", text)
        if m:
            host_ip, text = m.group(1), m.group(2)
        parts = text.split(":")
        if len(parts) == 3:
            host_ip, pub, tgt = parts
        elif len(parts) == 2:
            pub, tgt = parts
        else:
            pub, tgt = "", parts[0]
        if "-" in tgt or "-" in pub:
            raise ComposeError(f"port ranges ({spec}) are not emulated")
        # An unset host port gets an ephemeral one in Docker; the emulator uses the target.
        out.append(Port(host_ip, int(pub) if pub else int(tgt), int(tgt), proto))
    return out


def gpu_request(svc: dict[str, Any]) -> int | str | None:
    """How many GPUs the service asks for ("all", a count, or None: no GPU access)."""
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
    for dev in devices or []:
        caps = {c for group in [dev.get("capabilities") or []] for c in group}
        if "gpu" in caps or dev.get("driver") == "nvidia":
            if dev.get("device_ids"):
                return len(dev["device_ids"])
            count = dev.get("count", "all")
            return "all" if count in ("all", -1) else int(count)
    gpus = svc.get("gpus")
    if gpus is not None:
        if gpus == "all" or gpus == -1:
            return "all"
        if isinstance(gpus, list):
            for dev in gpus:
                count = dev.get("count", "all") if isinstance(dev, dict) else "all"
                return "all" if count in ("all", -1) else int(count)
        return int(gpus)
    if svc.get("runtime") == "nvidia":
        return "all"
    return None


def _as_argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _parse_size(text: Any) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", str(text).strip().lower())
    if m is None:
        return 0
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


@dataclass
class Service:
    name: str
    image: str
    entrypoint: list[str] | None
    command: list[str] | None
    environment: dict[str, str]
    ports: list[Port]
    restart: str
    ipc: str | None
    shm_size: int
    network_mode: str | None
    gpus: int | str | None
    healthcheck: dict[str, Any] | None
    depends_on: list[str]
    raw: dict[str, Any]

    @property
    def config_hash(self) -> str:
        blob = json.dumps({"raw": self.raw, "env": self.environment}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def kind(self) -> str:
        argv = " ".join((self.entrypoint or []) + (self.command or []))
        if "open-webui" in self.image:
            return "webui"
        if "vllm" in self.image or self.name == "vllm" or re.search(r"\bvllm\b", argv):
            return "vllm"
        return "generic"

    def argv(self) -> list[str]:
        return (self.entrypoint or []) + (self.command or [])


@dataclass
class Project:
    name: str
    workdir: str
    files: list[str]
    config: dict[str, Any]
    services: dict[str, Service]
    warnings: list[str]


def _project_name(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", text.lower()) or "default"


def load_project(
    vm: EmulatedVM,
    files: list[str],
    *,
    cwd: str,
    project_name: str | None = None,
    project_dir: str | None = None,
    env_files: list[str] | None = None,
    shell_env: dict[str, str] | None = None,
) -> Project:
    fs = vm.fs
    if not files:
        for candidate in COMPOSE_FILES:
            if fs.is_file(candidate, cwd):
                files = [fs.normalize(candidate, cwd)]
                break
        else:
            raise ComposeError("no configuration file provided: not found")
    files = [fs.normalize(f, cwd) for f in files]
    workdir = fs.normalize(project_dir, cwd) if project_dir else posixpath.dirname(files[0])
    env: dict[str, str] = {}
    for env_file in env_files or [posixpath.join(workdir, ".env")]:
        if fs.is_file(env_file, cwd):
            env.update(parse_env_file(fs.read_text(env_file, cwd)))
        elif env_files:
            raise ComposeError(f"couldn't find env file: {fs.normalize(env_file, cwd)}")
    env.update(shell_env or {})
    merged: dict[str, Any] = {}
    for f in files:
        if not fs.is_file(f):
            raise ComposeError(f"open {f}: no such file or directory")
        try:
            doc = yaml.safe_load(fs.read_text(f))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ComposeError(f"yaml: {where}{getattr(e, 'problem', None) or e}") from None
        if not isinstance(doc, dict):
            raise ComposeError(f"Top-level object must be a mapping ({f})")
        for key, value in doc.items():
            if key == "services" and isinstance(value, dict):
                merged_services = merged.setdefault("services", {})
                for sname, sval in value.items():
                    merged_services[sname] = {**(merged_services.get(sname) or {}), **(sval or {})}
            else:
                merged[key] = value
    warnings: list[str] = []
    config = interpolate(merged, env, warnings)
    problems = compose_schema_errors(config)
    if problems:
        raise ComposeError(f"validating {files[0]}: {problems[0]}")
    if "services" not in config or not config["services"]:
        raise ComposeError("no service selected")
    name = _project_name(project_name or str(config.get("name") or posixpath.basename(workdir)))
    services: dict[str, Service] = {}
    for sname, raw in config["services"].items():
        raw = raw or {}
        environment: dict[str, str] = {}
        env_file_spec = raw.get("env_file")
        if isinstance(env_file_spec, (str, dict)):
            env_file_spec = [env_file_spec]
        for entry in env_file_spec or []:
            path, required = (
                (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
            )
            full = fs.normalize(path, workdir)
            if fs.is_file(full):
                environment.update(parse_env_file(fs.read_text(full)))
            elif required:
                raise ComposeError(f"env file {full} not found: stat {full}: no such file or directory")
        env_spec = raw.get("environment") or {}
        if isinstance(env_spec, list):
            for item in env_spec:
                k, eq, v = str(item).partition("=")
                if eq:
                    environment[k] = v
                elif k in env:
                    environment[k] = env[k]
        else:
            for k, v in env_spec.items():
                environment[k] = "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        image = str(raw.get("image") or f"{name}-{sname}")
        depends = raw.get("depends_on") or []
        services[sname] = Service(
            name=sname,
            image=image,
            entrypoint=_as_argv(raw.get("entrypoint")),
            command=_as_argv(raw.get("command")),
            environment=environment,
            ports=parse_ports(raw.get("ports") or []),
            restart=str(raw.get("restart", "no")),
            ipc=raw.get("ipc"),
            shm_size=_parse_size(raw.get("shm_size", 0)),
            network_mode=raw.get("network_mode"),
            gpus=gpu_request(raw),
            healthcheck=raw.get("healthcheck"),
            depends_on=list(depends) if isinstance(depends, (list, dict)) else [],
            raw=raw,
        )
    return Project(name, workdir, files, config, services, warnings)


# ------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------


class StandIn:
    """The process inside a container. Subclasses serve HTTP on real 127.0.0.1 ports."""

    #: Container port -> real 127.0.0.1 port the stand-in listens on.
    ports: dict[int, int]
    #: The process binds 127.0.0.1 inside the container: unreachable through a published port.
    loopback_only: bool = False

    def __init__(self, docker: Docker, container: Container) -> None:
        self.docker = docker
        self.container = container
        self.vm = docker.vm
        self.ports = {}
        self.exited = False

    def start(self) -> None:
        """Begin; may call ``self.exit(code)`` right away (a failure with no delay)."""

    def stop(self) -> None:
        """SIGTERM: shut down (close the servers)."""

    def close(self) -> None:
        """Release the servers (called once the process is gone)."""

    def health(self) -> str:
        return "healthy"

    def gpu_memory_used_mib(self, index: int) -> int:
        return 0

    def gpu_busy(self, index: int) -> bool:
        return False

    def log(self, line: str) -> None:
        self.container.log(line)

    def exit(self, code: int) -> None:
        """The process ended by itself (a crash); docker applies the restart policy."""
        if self.exited:
            return
        self.exited = True
        self.close()
        self.docker.container_exited(self.container, self, code)


@dataclass(repr=False, eq=False)
class Container:
    id: str
    name: str
    project: str
    service: str
    spec: Service
    created_at: float
    number: int = 1
    state: str = "created"  # created, running, restarting, exited, removed
    exit_code: int = 0
    started_real: float = 0.0
    finished_real: float = 0.0
    logs: list[tuple[float, str]] = field(default_factory=list)
    standin: StandIn | None = None
    starts: int = 0
    restarts: int = 0
    stopped_by_user: bool = False
    restart_timer: Timer | None = None
    clock: Any = None

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.state} exit={self.exit_code} starts={self.starts}>"

    def log(self, line: str) -> None:
        now = self.clock() if self.clock is not None else time.time()
        for part in line.splitlines() or [""]:
            self.logs.append((now, part))

    @property
    def image(self) -> str:
        return self.spec.image

    def status_text(self) -> str:
        if self.state == "running":
            up = _human(time.monotonic() - self.started_real)
            health = self.health()
            return f"Up {up}" + (f" ({health})" if health else "")
        if self.state == "restarting":
            return f"Restarting ({self.exit_code}) {_human(time.monotonic() - self.finished_real)} ago"
        if self.state == "exited":
            return f"Exited ({self.exit_code}) {_human(time.monotonic() - self.finished_real)} ago"
        return "Created"

    def health(self) -> str:
        if not self.spec.healthcheck or self.spec.healthcheck.get("disable"):
            return ""
        if self.state != "running" or self.standin is None:
            return "unhealthy"
        return self.standin.health()


def _human(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s < 60:
        return f"{s} second{'s' if s != 1 else ''}"
    if s < 3600:
        return f"{s // 60} minute{'s' if s // 60 != 1 else ''}"
    return f"{s // 3600} hour{'s' if s // 3600 != 1 else ''}"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Published:
    host_ip: str
    port: int
    container: Container
    target: int


class Docker:
    def __init__(self, vm: EmulatedVM) -> None:
        self.vm = vm
        self.containers: dict[str, Container] = {}
        self.images: set[str] = set()
        #: Every image pull (compose pull, up, docker pull), in order.
        self.pulls: list[str] = []
        self.networks: set[str] = set()
        #: Containers removed (down, recreate), kept for inspection.
        self.removed: list[Container] = []
        #: What is published right now (rebuilt on every change; read without the lock).
        self.published: tuple[Published, ...] = ()
        self._seq = 0

    # -- inspection ------------------------------------------------------------------------

    def container(self, service: str, project: str | None = None) -> Container | None:
        hits = [
            c
            for c in self.containers.values()
            if c.state != "removed" and c.service == service and project in (None, c.project)
        ]
        return hits[-1] if hits else None

    def running(self) -> list[Container]:
        return [c for c in self.containers.values() if c.state == "running"]

    def resolve(self, host: str, port: int) -> int | str | None:
        """Where a connection from inside the VM to host:port goes: a real 127.0.0.1 port,
        "reset" (something accepts, then closes), or None (refused)."""
        if is_loopback(host):
            scope = "loopback"
        elif host in (self.vm.ipv4, "0.0.0.0", "::"):
            scope = "public"
        else:
            return None
        for pub in self.published:
            if pub.port != port:
                continue
            any_if = pub.host_ip in ("", "0.0.0.0", "::")
            if not (any_if or (scope == "loopback" and is_loopback(pub.host_ip)) or pub.host_ip == host):
                continue
            standin = pub.container.standin
            if pub.container.state != "running" or standin is None:
                return "reset"
            if pub.container.spec.network_mode == "host":
                if standin.loopback_only and scope != "loopback":
                    return None
                return standin.ports.get(pub.target) or None
            if standin.loopback_only:
                return "reset"
            return standin.ports.get(pub.target) or "reset"
        return None

    def public_ports(self) -> list[int]:
        """VM ports reachable on the VM's public address (published on all interfaces)."""
        out = set()
        for pub in self.published:
            if pub.host_ip not in ("", "0.0.0.0", "::", self.vm.ipv4):
                continue
            standin = pub.container.standin
            if pub.container.spec.network_mode == "host" and standin is not None and standin.loopback_only:
                continue
            out.add(pub.port)
        return sorted(out)

    def _republish(self) -> None:
        pubs: list[Published] = []
        for c in self.containers.values():
            if c.state != "running" or c.standin is None:
                continue
            if c.spec.network_mode == "host":
                for cport in c.standin.ports:
                    pubs.append(
                        Published("" if not c.standin.loopback_only else "127.0.0.1", cport, c, cport)
                    )
                continue
            for p in c.spec.ports:
                if p.protocol == "tcp":
                    pubs.append(Published(p.host_ip, p.published, c, p.target))
        self.published = tuple(pubs)
        self.vm.refresh_public_ports()

    # -- lifecycle -------------------------------------------------------------------------

    def _new_id(self, name: str) -> str:
        self._seq += 1
        return hashlib.sha256(f"{self.vm.id}/{name}/{self._seq}".encode()).hexdigest()

    def _make_standin(self, c: Container) -> StandIn:
        from .vllm import GenericStandIn, VLLMStandIn, WebUIStandIn

        kind = c.spec.kind
        if kind == "vllm":
            return VLLMStandIn(self, c)
        if kind == "webui":
            return WebUIStandIn(self, c)
        return GenericStandIn(self, c)

    def start_container(self, c: Container) -> None:
        if c.restart_timer is not None:
            c.restart_timer.cancel()
            c.restart_timer = None
        if self.vm.destroyed or self.vm.state == "off":
            return  # a command that raced the VM's deletion or power-off
        c.state = "running"
        c.starts += 1
        c.started_real = time.monotonic()
        c.stopped_by_user = False
        standin = self._make_standin(c)
        c.standin = standin
        standin.start()
        self._republish()

    def stop_container(self, c: Container, *, by_user: bool = True) -> None:
        if c.restart_timer is not None:
            c.restart_timer.cancel()
            c.restart_timer = None
        if c.state == "running" and c.standin is not None:
            standin = c.standin
            standin.exited = True
            standin.stop()
            standin.close()
            c.exit_code = 0
            c.finished_real = time.monotonic()
        if c.state in ("running", "restarting", "created"):
            c.state = "exited"
        c.stopped_by_user = by_user
        self._republish()

    def remove_container(self, c: Container) -> None:
        self.stop_container(c)
        c.state = "removed"
        self.containers.pop(c.name, None)
        self.removed.append(c)
        self._republish()

    def container_exited(self, c: Container, standin: StandIn, code: int) -> None:
        with self.vm.lock:
            if c.standin is not standin or c.state != "running":
                return
            c.state = "exited"
            c.exit_code = code
            c.finished_real = time.monotonic()
            policy = c.spec.restart
            restart = policy in ("always", "unless-stopped") or (
                policy.startswith("on-failure") and code != 0
            )
            if policy.startswith("on-failure:"):
                restart = restart and c.restarts < int(policy.split(":", 1)[1])
            if restart and not self.vm.destroyed:
                c.state = "restarting"
                delay = min(self.vm.options.restart_backoff * (2 ** min(c.restarts, 6)), 5.0)
                c.restarts += 1
                c.restart_timer = self.vm.schedule(lambda: self._restart(c), real=delay)
            self._republish()

    def _restart(self, c: Container) -> None:
        c.restart_timer = None
        if c.state == "restarting" and self.containers.get(c.name) is c:
            self.start_container(c)

    def power_off(self) -> list[str]:
        """Stop every container; names of those docker restarts at boot."""
        again = []
        for c in list(self.containers.values()):
            was_up = c.state in ("running", "restarting")
            self.stop_container(c, by_user=False)
            # Docker restarts "always" containers at boot, "unless-stopped" ones if they were up.
            if (was_up and c.spec.restart == "unless-stopped") or c.spec.restart == "always":
                again.append(c.name)
        return again

    def power_on(self, names: list[str]) -> None:
        for name in names:
            c = self.containers.get(name)
            if c is not None and c.state == "exited":
                self.start_container(c)

    def shutdown(self) -> None:
        for c in list(self.containers.values()):
            if c.restart_timer is not None:
                c.restart_timer.cancel()
            if c.standin is not None and not c.standin.exited:
                c.standin.exited = True
                c.standin.close()
            if c.state in ("running", "restarting"):
                c.state = "exited"
        self.published = ()

    # -- docker CLI ------------------------------------------------------------------------

    def docker(self, ctx: Ctx) -> int:
        args = ctx.argv[1:]
        while args and args[0].startswith("-") and args[0] not in ("-v", "--version"):
            args = args[1:]
        if not args:
            return ctx.fail("Usage:  docker [OPTIONS] COMMAND")
        sub = args[0]
        if sub in ("-v", "--version", "version"):
            ctx.print(f"Docker version {DOCKER_VERSION}, build ce12230")
            return 0
        if sub == "compose":
            return self.compose(ctx, args[1:])
        with self.vm.lock:
            if sub == "pull":
                images = [a for a in args[1:] if not a.startswith("-")]
                for img in images:
                    self._pull(ctx, img, quiet="-q" in args or "--quiet" in args)
                return 0 if images else ctx.fail('"docker pull" requires exactly 1 argument.')
            if sub == "ps":
                return self._docker_ps(ctx, args[1:])
            if sub == "logs":
                names = [a for a in args[1:] if not a.startswith("-") and not a.isdigit()]
                c = self.containers.get(names[-1]) if names else None
                if c is None:
                    return ctx.fail(
                        f"Error response from daemon: No such container: {names[-1] if names else ''}"
                    )
                for _, line in c.logs[-_tail(args[1:]) :] if _tail(args[1:]) >= 0 else c.logs:
                    ctx.print(line)
                return 0
            if sub == "info":
                ctx.print(f"Server Version: {DOCKER_VERSION}\nRuntimes: io.containerd.runc.v2 nvidia runc")
                return 0
        ctx.vm.note_not_emulated(f"docker {sub}", source=ctx.shell.source)
        if ctx.boot:
            return 0
        return ctx.fail(f"docker: unknown command: docker {sub} (vmsim: not emulated)")

    def docker_compose_v1(self, ctx: Ctx) -> int:
        return self.compose(ctx, ctx.argv[1:])

    def _pull(self, ctx: Ctx, image: str, quiet: bool = False) -> None:
        self.pulls.append(image)
        self.images.add(image)
        if quiet:
            ctx.print(image if "/" in image else f"docker.io/library/{image}")
            return
        repo, _, tag = image.partition(":")
        ctx.print(f"{tag or 'latest'}: Pulling from {repo if '/' in repo else 'library/' + repo}")
        digest = hashlib.sha256(image.encode()).hexdigest()
        ctx.print(f"Digest: sha256:{digest}")
        ctx.print(f"Status: Downloaded newer image for {image}")
        ctx.print(image if "/" in image else f"docker.io/library/{image}")

    def _docker_ps(self, ctx: Ctx, args: list[str]) -> int:
        show_all = any(a in ("-a", "--all") for a in args)
        fmt = _opt(args, "--format")
        rows = [c for c in self.containers.values() if show_all or c.state == "running"]
        if fmt == "json":
            for c in rows:
                ctx.print(json.dumps(self._ps_json(c, short=True)))
            return 0
        ctx.print("CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES")
        for c in rows:
            ports = ", ".join(p.text() for p in c.spec.ports)
            ctx.print(f'{c.id[:12]}   {c.image}   "{_cmd_text(c)}"   {c.status_text()}   {ports}   {c.name}')
        return 0

    # -- docker compose --------------------------------------------------------------------

    def compose(self, ctx: Ctx, args: list[str]) -> int:
        files: list[str] = []
        project_name: str | None = None
        project_dir: str | None = None
        env_files: list[str] = []
        i = 0
        while i < len(args) and args[i].startswith("-"):
            a = args[i]
            name, eq, inline = a.partition("=")
            takes = {"-f", "--file", "-p", "--project-name", "--project-directory", "--env-file"}
            takes |= {"--profile", "--ansi", "--progress", "--parallel"}
            if name in takes:
                value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
                i += 1 if eq else 2
                if name in ("-f", "--file"):
                    files.append(value)
                elif name in ("-p", "--project-name"):
                    project_name = value
                elif name == "--project-directory":
                    project_dir = value
                elif name == "--env-file":
                    env_files.append(value)
                continue
            if a in ("-v", "--version"):
                ctx.print(f"Docker Compose version {COMPOSE_VERSION}")
                return 0
            i += 1
        if i >= len(args):
            return ctx.fail("Usage:  docker compose [OPTIONS] COMMAND")
        sub, sub_args = args[i], args[i + 1 :]
        if sub == "version":
            ctx.print(f"Docker Compose version {COMPOSE_VERSION}")
            return 0
        handlers = {
            "up": self._up,
            "ps": self._ps,
            "logs": self._logs,
            "down": self._down,
            "stop": self._stop,
            "start": self._start_cmd,
            "restart": self._restart_cmd,
            "pull": self._pull_cmd,
            "config": self._config,
        }
        handler = handlers.get(sub)
        if handler is None:
            ctx.vm.note_not_emulated(f"docker compose {sub}", source=ctx.shell.source)
            if ctx.boot:
                return 0
            return ctx.fail(f'unknown docker command: "compose {sub}" (vmsim: not emulated)')
        with self.vm.lock:
            try:
                project = load_project(
                    self.vm,
                    files,
                    cwd=ctx.cwd,
                    project_name=project_name,
                    project_dir=project_dir,
                    env_files=env_files or None,
                )
            except ComposeError as e:
                if sub in ("down", "ps", "logs", "stop") and project_name and not files:
                    project = Project(_project_name(project_name), ctx.cwd, [], {}, {}, [])
                else:
                    return ctx.fail(str(e), 15 if str(e).startswith("validating") else 1)
            for w in project.warnings:
                ctx.eprint(f'time="{_rfc3339(self.vm.now())}" level=warning msg="{w}"')
            return handler(ctx, project, sub_args)

    def _project_containers(self, project: Project, services: list[str] | None = None) -> list[Container]:
        return [
            c
            for c in self.containers.values()
            if c.project == project.name and c.state != "removed" and (not services or c.service in services)
        ]

    def _ordered(self, project: Project, services: list[str]) -> list[str]:
        order: list[str] = []

        def visit(name: str, seen: tuple[str, ...] = ()) -> None:
            if name in order or name in seen or name not in project.services:
                return
            for dep in project.services[name].depends_on:
                visit(dep, (*seen, name))
            order.append(name)

        for s in services:
            visit(s)
        return order

    def _up(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        force = "--force-recreate" in args
        no_recreate = "--no-recreate" in args
        remove_orphans = "--remove-orphans" in args
        wait = "--wait" in args
        wait_timeout = float(_opt(args, "--wait-timeout") or 300)
        wanted = [a for a in _operands(args, {"--wait-timeout", "--pull", "--scale", "-t", "--timeout"})]
        unknown = [s for s in wanted if s not in project.services]
        if unknown:
            return ctx.fail(f"no such service: {unknown[0]}")
        services = self._ordered(project, wanted or list(project.services))
        # Port conflicts with other projects' running containers (docker-proxy bind).
        for sname in services:
            for p in project.services[sname].ports:
                for pub in self.published:
                    if pub.port == p.published and pub.container.project != project.name:
                        ip = p.host_ip or "0.0.0.0"
                        return ctx.fail(
                            f"Error response from daemon: driver failed programming external connectivity on "
                            f"endpoint {project.name}-{sname}-1: Bind for {ip}:{p.published} failed: port is "
                            f"already allocated"
                        )
            if project.services[sname].gpus is not None and not any(g.nvidia for g in self.vm.gpus):
                return ctx.fail(
                    'Error response from daemon: could not select device driver "nvidia" with '
                    "capabilities: [[gpu]]"
                )
        orphans = [c for c in self._project_containers(project) if c.service not in project.services]
        if orphans:
            if remove_orphans:
                for orphan in orphans:
                    ctx.eprint(f" Container {orphan.name}  Stopping")
                    self.remove_container(orphan)
                    ctx.eprint(f" Container {orphan.name}  Removed")
            else:
                names = ", ".join(c.name for c in orphans)
                ctx.eprint(
                    f'time="{_rfc3339(self.vm.now())}" level=warning msg="Found orphan containers ([{names}]) '
                    f"for this project. If you removed or renamed this service in your compose file, you can run "
                    f'this command with the --remove-orphans flag to clean it up."'
                )
        for sname in services:
            spec = project.services[sname]
            if spec.image not in self.images:
                ctx.eprint(f" {sname} Pulling")
                self.pulls.append(spec.image)
                self.images.add(spec.image)
                ctx.eprint(f" {sname} Pulled")
        net = f"{project.name}_default"
        if net not in self.networks:
            self.networks.add(net)
            ctx.eprint(f" Network {net}  Creating")
            ctx.eprint(f" Network {net}  Created")
        for sname in services:
            spec = project.services[sname]
            name = f"{project.name}-{sname}-1"
            c = self.containers.get(name)
            if c is not None and (force or (c.spec.config_hash != spec.config_hash and not no_recreate)):
                ctx.eprint(f" Container {name}  Recreate")
                self.remove_container(c)
                c = self._create(project, spec, name)
                ctx.eprint(f" Container {name}  Recreated")
            elif c is None:
                ctx.eprint(f" Container {name}  Creating")
                c = self._create(project, spec, name)
                ctx.eprint(f" Container {name}  Created")
            if c.state == "running":
                ctx.eprint(f" Container {name}  Running")
                continue
            ctx.eprint(f" Container {name}  Starting")
            self.start_container(c)
            ctx.eprint(f" Container {name}  Started")
        if wait:
            return self._wait_healthy(ctx, project, services, wait_timeout)
        return 0

    def _create(self, project: Project, spec: Service, name: str) -> Container:
        c = Container(
            id=self._new_id(name),
            name=name,
            project=project.name,
            service=spec.name,
            spec=spec,
            created_at=self.vm.now(),
            clock=self.vm.now,
        )
        self.containers[name] = c
        return c

    def _wait_healthy(self, ctx: Ctx, project: Project, services: list[str], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pending = []
            for sname in services:
                c = self.containers.get(f"{project.name}-{sname}-1")
                if c is None or c.state in ("exited", "restarting"):
                    code = c.exit_code if c else 1
                    return ctx.fail(f"container {project.name}-{sname}-1 exited ({code})")
                if c.health() not in ("", "healthy"):
                    pending.append(c)
            if not pending:
                for sname in services:
                    ctx.eprint(f" Container {project.name}-{sname}-1  Healthy")
                return 0
            if time.monotonic() > deadline or self.vm.stopped.is_set():
                return ctx.fail(f"container {pending[0].name} is unhealthy")
            self.vm.cond.wait(0.05)  # releases the VM lock (all levels) while waiting

    def _ps_json(self, c: Container, *, short: bool = False) -> dict[str, Any]:
        publishers = [
            {
                "URL": p.host_ip or "0.0.0.0",
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "Protocol": p.protocol,
            }
            for p in c.spec.ports
        ]
        created = datetime.fromtimestamp(c.created_at, tz=timezone.utc)
        out: dict[str, Any] = {
            "Command": f'"{_cmd_text(c)}"',
            "CreatedAt": f"{created:%Y-%m-%d %H:%M:%S} +0000 UTC",
            "ExitCode": c.exit_code,
            "Health": c.health(),
            "ID": c.id[:12],
            "Image": c.image,
            "Labels": f"com.docker.compose.project={c.project},com.docker.compose.service={c.service}",
            "LocalVolumes": "0",
            "Mounts": "",
            "Name": c.name,
            "Names": c.name,
            "Networks": f"{c.project}_default",
            "Ports": ", ".join(p.text() for p in c.spec.ports) if c.state == "running" else "",
            "Project": c.project,
            "Publishers": publishers,
            "RunningFor": f"{_human(time.monotonic() - c.started_real) if c.started_real else 'Less than a second'} ago",
            "Service": c.service,
            "Size": "0B",
            "State": c.state,
            "Status": c.status_text(),
        }
        if short:
            for key in ("Project", "Publishers", "Service", "Health", "ExitCode", "Name"):
                out.pop(key, None)
        return out

    def _ps(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        show_all = any(a in ("-a", "--all") for a in args)
        fmt = _opt(args, "--format")
        status_filter = _opt(args, "--status")
        wanted = _operands(args, {"--format", "--status", "--filter"})
        rows = [
            c
            for c in self._project_containers(project, wanted or None)
            if (show_all or c.state in ("running", "restarting")) and status_filter in (None, c.state)
        ]
        rows.sort(key=lambda c: c.name)
        if "--services" in args:
            for c in rows:
                ctx.print(c.service)
            return 0
        if "-q" in args or "--quiet" in args:
            for c in rows:
                ctx.print(c.id)
            return 0
        if fmt == "json":
            for c in rows:
                ctx.print(json.dumps(self._ps_json(c)))
            return 0
        header = ("NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS")
        table = [header] + [
            (
                c.name,
                c.image,
                f'"{_cmd_text(c)[:20]}…"',
                c.service,
                f"{_human(time.monotonic() - c.started_real)} ago",
                c.status_text(),
                ", ".join(p.text() for p in c.spec.ports) if c.state == "running" else "",
            )
            for c in rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            ctx.print("   ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
        return 0

    def _logs(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        tail = _tail(args)
        prefix = "--no-log-prefix" not in args
        stamps = "-t" in args or "--timestamps" in args
        wanted = _operands(args, {"--tail", "-n", "--since", "--until", "--index"})
        unknown = [s for s in wanted if project.services and s not in project.services]
        if unknown:
            return ctx.fail(f"no such service: {unknown[0]}")
        if "-f" in args or "--follow" in args:
            ctx.vm.note_not_emulated(
                "docker compose logs --follow (prints and returns)", source=ctx.shell.source
            )
        containers = sorted(self._project_containers(project, wanted or None), key=lambda c: c.name)
        width = max((len(f"{c.service}-{c.number}") for c in containers), default=0)
        for c in containers:
            lines = c.logs[-tail:] if tail >= 0 else c.logs
            if tail == 0:
                lines = []
            label = f"{c.service}-{c.number}".ljust(width)
            for t, line in lines:
                text = line
                if stamps:
                    text = f"{_rfc3339(t)} {text}"
                ctx.print(f"{label}  | {text}" if prefix else text)
        return 0

    def _down(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        containers = self._project_containers(project)
        if "--remove-orphans" not in args and project.services:
            containers = [c for c in containers if c.service in project.services]
        for c in containers:
            ctx.eprint(f" Container {c.name}  Stopping")
            ctx.eprint(f" Container {c.name}  Stopped")
            ctx.eprint(f" Container {c.name}  Removing")
            self.remove_container(c)
            ctx.eprint(f" Container {c.name}  Removed")
        net = f"{project.name}_default"
        if net in self.networks and not self._project_containers(project):
            self.networks.discard(net)
            ctx.eprint(f" Network {net}  Removing")
            ctx.eprint(f" Network {net}  Removed")
        return 0

    def _stop(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        for c in self._project_containers(project, _operands(args, {"-t", "--timeout"}) or None):
            if c.state in ("running", "restarting"):
                ctx.eprint(f" Container {c.name}  Stopping")
                self.stop_container(c)
                ctx.eprint(f" Container {c.name}  Stopped")
        return 0

    def _start_cmd(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        for c in self._project_containers(project, _operands(args, set()) or None):
            if c.state != "running":
                ctx.eprint(f" Container {c.name}  Starting")
                self.start_container(c)
                ctx.eprint(f" Container {c.name}  Started")
        return 0

    def _restart_cmd(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        for c in self._project_containers(project, _operands(args, {"-t", "--timeout"}) or None):
            ctx.eprint(f" Container {c.name}  Restarting")
            self.stop_container(c)
            self.start_container(c)
            ctx.eprint(f" Container {c.name}  Started")
        return 0

    def _pull_cmd(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        wanted = _operands(args, {"--policy"}) or list(project.services)
        for sname in wanted:
            spec = project.services.get(sname)
            if spec is None:
                return ctx.fail(f"no such service: {sname}")
            ctx.eprint(f" {sname} Pulling")
            self.pulls.append(spec.image)
            self.images.add(spec.image)
            ctx.eprint(f" {sname} Pulled")
        return 0

    def _config(self, ctx: Ctx, project: Project, args: list[str]) -> int:
        if "--services" in args:
            for s in project.services:
                ctx.print(s)
            return 0
        if "-q" in args or "--quiet" in args:
            return 0
        ctx.out.write(yaml.safe_dump({"name": project.name, **project.config}, sort_keys=False).encode())
        return 0


def _opt(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _operands(args: list[str], with_value: set[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            if a in with_value or a in ("--format", "--tail", "-n", "--status", "--filter"):
                skip = True
            continue
        out.append(a)
    return out


def _tail(args: list[str]) -> int:
    value = _opt(args, "--tail") or _opt(args, "-n")
    if value is None or value == "all":
        return -1
    try:
        return int(value)
    except ValueError:
        return -1


def _cmd_text(c: Container) -> str:
    return " ".join(c.spec.argv()) or c.image


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
