"""One emulated VM: its root directory, cloud-init, systemd, docker, GPUs, and what it was asked.

The :class:`~tests.vmsim.farm.VMFarm` creates it when the simulated instance first reads
"running", boots it (cloud-init init stage, then sshd), powers it off and on with the
instance, and destroys it when the instance is deleted. Its timers run on the farm's poller
thread: a timer is due when both its real-time and its simulator-clock delays have passed.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cloudinit import CloudInit
from .docker import Container, Docker
from .options import GPUModel, StandInOptions
from .shell import BufferSink, BytesStdin, CommandRecord, Ctx, LazyStdin, Shell, Stdin, _split_opts
from .systemd import Systemd
from .vfs import VMFS

if TYPE_CHECKING:
    from tests.cloudsim.core import SimServer
    from tests.cloudsim.ledger import InstanceRecord

    from .farm import VMFarm
    from .vllm import VLLMStandIn


#: The vendor's state of an instance powered off from inside (the simulators' own words).
GUEST_OFF_STATE = {"linode": "offline", "digitalocean": "off", "scaleway": "stopped_in_place"}


@dataclass(eq=False)
class Timer:
    fn: Callable[[], None]
    real_at: float
    sim_at: float
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ExecRecord:
    """One SSH exec request (or ``vm.run()`` call) and what it returned. Stdin is not kept
    (secrets travel there); ``stdin_bytes`` says how much was read."""

    source: str
    user: str
    command: str | None
    rc: int
    stdout: bytes
    stderr: bytes
    started: float
    duration: float
    stdin_bytes: int = 0

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


@dataclass
class ForwardRecord:
    """One direct-tcpip (ssh -L) channel request and where it went."""

    dest_host: str
    dest_port: int
    outcome: str  # "forwarded:<real port>", "refused", "reset", "denied"


class _CountingStdin(Stdin):
    def __init__(self, inner: Stdin) -> None:
        self.inner = inner
        self.count = 0

    def read(self) -> bytes:
        data = self.inner.read()
        self.count += len(data)
        return data


@dataclass(repr=False, eq=False)
class EmulatedVM:
    farm: VMFarm
    sim: SimServer
    record: InstanceRecord
    options: StandInOptions
    root: Path
    gpus: tuple[GPUModel, ...]
    #: "created", "booting", "up", "off" or "destroyed".
    state: str = "created"
    #: Every simple command any shell ran (ssh, bootcmd, runcmd, systemd), in order.
    command_log: list[CommandRecord] = field(default_factory=list)
    exec_log: list[ExecRecord] = field(default_factory=list)
    forwards: list[ForwardRecord] = field(default_factory=list)
    #: "source: command or feature" for everything that ran without a stand-in.
    not_emulated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    boots: int = 0
    sshd_port: int | None = None

    def __post_init__(self) -> None:
        self.vendor = self.record.vendor
        self.id = self.record.id
        self.ipv4: str = self.record.ipv4 or "127.0.0.1"
        self.fs = VMFS(self.root)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        #: Set when the VM is destroyed: aborts sleeps and waits of running commands.
        self.stopped = threading.Event()
        self.cloudinit = CloudInit(self)
        self.systemd = Systemd(self)
        self.docker = Docker(self)
        self.ssh_connections: set[Any] = set()
        self._timers: list[Timer] = []
        self._tlock = threading.Lock()
        self._restart_after_power: list[str] = []
        self.commands: dict[str, Callable[[Ctx], int]] = {
            "cloud-init": self._cloud_init,
            "systemctl": self.systemd.systemctl,
            "journalctl": self.systemd.journalctl,
            "docker": self.docker.docker,
            "docker-compose": self.docker.docker_compose_v1,
            "python3": self._python3,
            "python": self._python3,
            "wall": self._wall,
            "shutdown": self._shutdown,
        }
        from .python import PythonHost

        #: Runs the VM's Python programs as host processes (see python.py).
        self.python = PythonHost(self)
        if any(g.nvidia for g in self.gpus):
            self.commands["nvidia-smi"] = self._nvidia_smi

    def __repr__(self) -> str:
        return f"<EmulatedVM {self.vendor} {self.id} {self.ipv4}:{self.ssh_port} {self.state}>"

    # -- inspection ------------------------------------------------------------------------

    @property
    def destroyed(self) -> bool:
        return self.state == "destroyed"

    @property
    def ssh_port(self) -> int:
        return self.sshd_port or self.record.ssh_port or 22

    @property
    def sshd_listening(self) -> bool:
        return self.farm.sshd_listening(self)

    def path(self, vm_path: str) -> Path:
        """The host file behind a VM path."""
        return self.fs.host(vm_path)

    def read_text(self, vm_path: str) -> str:
        return self.fs.read_text(vm_path)

    def container(self, service: str) -> Container | None:
        with self.lock:
            return self.docker.container(service)

    @property
    def vllm(self) -> VLLMStandIn | None:
        """The stand-in vLLM of the running ``vllm`` container (None when none runs)."""
        from .vllm import VLLMStandIn

        with self.lock:
            for c in self.docker.containers.values():
                if c.state == "running" and isinstance(c.standin, VLLMStandIn):
                    return c.standin
        return None

    def vllm_logs(self) -> str:
        """All log lines of the vllm container (as ``docker compose logs --no-log-prefix``)."""
        with self.lock:
            for c in self.docker.containers.values():
                if c.spec.kind == "vllm":
                    return "\n".join(line for _, line in list(c.logs))
        return ""

    def unit_state(self, unit: str) -> str:
        return self.systemd.state(unit)

    def local_port(self, port: int, host: str = "127.0.0.1") -> int | None:
        """The real 127.0.0.1 port behind ``host:port`` on the VM (None: refused or reset)."""
        target = self.docker.resolve(host, port)
        return target if isinstance(target, int) else None

    def commands_run(self, source: str | None = None) -> list[str]:
        return [r.line for r in self.command_log if source in (None, r.source)]

    def now(self) -> float:
        return self.record.clock.now()

    # -- bookkeeping -----------------------------------------------------------------------

    def note_not_emulated(self, what: str, source: str = "ssh") -> None:
        entry = f"{source}: {what}"
        if entry not in self.not_emulated:
            self.not_emulated.append(entry)

    def record_command(self, rec: CommandRecord) -> None:
        self.command_log.append(rec)

    def farm_error(self, message: str) -> None:
        self.errors.append(message)
        self.farm.error(f"{self.vendor} {self.id}: {message}")

    def vendor_keys(self) -> list[str]:
        attrs = self.record.attrs
        keys = list(attrs.get("authorized_keys") or []) + list(attrs.get("ssh_keys") or [])
        if self.vendor == "scaleway":
            keys += [str(k.get("public_key", "")) for k in getattr(self.sim, "ssh_keys", [])]
        return [k for k in keys if k]

    # -- timers ----------------------------------------------------------------------------

    def schedule(self, fn: Callable[[], None], *, real: float = 0.0, sim: float = 0.0) -> Timer:
        t = Timer(fn, time.monotonic() + real, self.now() + sim)
        with self._tlock:
            self._timers.append(t)
        return t

    def tick(self) -> None:
        """Run the timers that are due (the farm's poller calls this)."""
        with self.lock:
            for _ in range(100):
                now_real, now_sim = time.monotonic(), self.now()
                with self._tlock:
                    due = [
                        t
                        for t in self._timers
                        if not t.cancelled and t.real_at <= now_real and t.sim_at <= now_sim
                    ]
                    self._timers = [t for t in self._timers if not t.cancelled and t not in due]
                if not due:
                    break
                for t in due:
                    if self.destroyed:
                        return
                    try:
                        t.fn()
                    except Exception as e:
                        self.farm_error(f"timer {getattr(t.fn, '__name__', t.fn)!r} failed: {e!r}")

    # -- lifecycle -------------------------------------------------------------------------

    def boot(self) -> None:
        """First boot: cloud-init's init stage, sshd, then (after the delay) the final stage."""
        with self.lock:
            self.state = "booting"
            self.boots += 1
            self.fs.prepare()
            self.cloudinit.init_stage(self.record.user_data)
            opts = self.options
            final_due = opts.cloudinit_seconds <= 0 and opts.cloudinit_sim_seconds <= 0
            sshd_due = opts.sshd_seconds <= 0 and opts.sshd_sim_seconds <= 0
            if final_due:
                self.cloudinit.final_stage()
            else:
                self.schedule(
                    self.cloudinit.final_stage, real=opts.cloudinit_seconds, sim=opts.cloudinit_sim_seconds
                )
            if sshd_due:
                self._start_sshd()
            else:
                self.schedule(self._start_sshd, real=opts.sshd_seconds, sim=opts.sshd_sim_seconds)

    def _start_sshd(self) -> None:
        if self.destroyed or self.state == "off":
            return
        self.state = "up"
        if not self.cloudinit.host_keys:
            self.farm_error("sshd: no hostkeys available -- exiting (every ssh_keys private key was invalid)")
            return
        try:
            self.sshd_port = self.farm.start_sshd(self)
        except OSError as e:
            self.farm_error(
                f"sshd could not listen on {self.ipv4}:{self.ssh_port}: {e} "
                "(port 22 needs root; use VMFarm(ssh_ports='assign') or sim.set_ssh_port())"
            )

    def power_off(self) -> None:
        with self.lock:
            if self.state in ("off", "destroyed"):
                return
            self.state = "off"
            self.farm.stop_sshd(self)
            self.systemd.power_off()
            self._restart_after_power = self.docker.power_off()

    def power_on(self) -> None:
        with self.lock:
            if self.state != "off":
                return
            self.state = "booting"
            self.boots += 1
            if self.cloudinit.config.get("bootcmd"):  # bootcmd runs on every boot
                before = len(self.cloudinit.errors)
                self.cloudinit.run_module("bootcmd")
                if len(self.cloudinit.errors) > before:
                    self.cloudinit.status = "error"
            self.docker.power_on(self._restart_after_power)
            self.systemd.power_on()
            self._start_sshd()

    def destroy(self) -> None:
        with self.lock:
            if self.state == "destroyed":
                return
            self.state = "destroyed"
            self.stopped.set()
            self.cond.notify_all()
            with self._tlock:
                for t in self._timers:
                    t.cancel()
                self._timers = []
            self.farm.stop_sshd(self)
            self.docker.shutdown()
            self.python.close()
            self.farm.set_public_ports(self, [])

    def refresh_public_ports(self) -> None:
        if not self.destroyed:
            self.farm.set_public_ports(self, self.docker.public_ports())

    # -- running commands ------------------------------------------------------------------

    def run(
        self,
        command: str | None,
        *,
        user: str = "root",
        stdin: bytes | Callable[[], bytes] = b"",
        source: str = "api",
    ) -> ExecRecord:
        """Run a command as sshd would (``bash -c command``); None runs stdin as a script."""
        inner: Stdin = BytesStdin(stdin) if isinstance(stdin, bytes) else LazyStdin(stdin)
        counted = _CountingStdin(inner)
        shell = Shell(self, source=source, user=user, stdin=counted)
        out, err = BufferSink(), BufferSink()
        started = time.monotonic()
        script = command
        if script is None:
            script = counted.read().decode(errors="replace")
            shell.stdin = Stdin()
        rc = shell.run(script, out, err)
        rec = ExecRecord(
            source, user, command, rc, out.getvalue(), err.getvalue(), self.now(), time.monotonic() - started
        )
        rec.stdin_bytes = counted.count
        self.exec_log.append(rec)
        return rec

    # -- stand-in commands -----------------------------------------------------------------

    def guest_poweroff(self) -> int:
        """``systemctl poweroff`` / ``shutdown -h now``: the instance reads as stopped in the
        simulator from now on (still billed where the vendor bills stopped instances: the ledger
        keeps billing Linode and DigitalOcean; Scaleway's guest shutdown leaves the server
        allocated, "stopped in place", which the ledger also keeps billing); the farm then powers
        the VM off as it would for an API power-off."""
        state = GUEST_OFF_STATE.get(self.vendor, "stopped")
        lock = getattr(self.sim, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            if self.record.deleted_at is None and self.record.state == self.record.ready_state:
                now = self.now()
                self.record.cancel_after(now)
                self.record.schedule(now, state)
        self.systemd.journal.append((self.now(), "systemd-logind.service", "The system will power off now!"))
        return 0

    def _python3(self, ctx: Ctx) -> int:
        return self.python.run(ctx)

    def _wall(self, ctx: Ctx) -> int:
        message = " ".join(ctx.argv[1:]) or ctx.stdin.read().decode(errors="replace").strip()
        self.systemd.journal.append((self.now(), "wall", f"Broadcast message from root: {message}"))
        return 0

    def _shutdown(self, ctx: Ctx) -> int:
        args = ctx.argv[1:]
        if ("-h" in args or "-P" in args or "--poweroff" in args) and ("now" in args or "+0" in args):
            return self.guest_poweroff()
        self.note_not_emulated(shlex.join(ctx.argv), source=ctx.shell.source)
        return ctx.fail("vmsim: only `shutdown -h now` is emulated")

    def _cloud_init(self, ctx: Ctx) -> int:
        args = ctx.argv[1:]
        if not args:
            ctx.eprint(
                "usage: /usr/bin/cloud-init [-h] [--version] [--debug] [--force] [--all-stages] {init,modules,…}"
            )
            return 2
        if args[0] in ("--version", "-v"):
            ctx.print("/usr/bin/cloud-init 24.4.1-0ubuntu0~24.04.1")
            return 0
        if args[0] != "status":
            ctx.vm.note_not_emulated(f"cloud-init {args[0]}", source=ctx.shell.source)
            return ctx.fail(f"vmsim: cloud-init {args[0]} is not emulated")
        fmt, long_, wait = "tabular", False, False
        for opt, val in _split_opts(args[1:]):
            if opt == "--format":
                fmt = val or "tabular"
            elif opt in ("--long", "-l"):
                long_ = True
            elif opt in ("--wait", "-w"):
                wait = True
            elif opt == "" and val in ("json", "yaml", "tabular"):
                fmt = val
        if wait:
            dots = fmt == "tabular"
            while self.cloudinit.status in ("running", "not started") and not self.stopped.is_set():
                if dots:
                    ctx.out.write(b".")
                self.tick()
                self.stopped.wait(0.05)
            if dots:
                ctx.out.write(b"\n")
        self.tick()
        ci = self.cloudinit
        data = ci.status_json()
        if fmt == "json":
            import json

            ctx.print(json.dumps(data, indent=2, sort_keys=True))
        elif fmt == "yaml":
            import yaml

            ctx.out.write(yaml.safe_dump(data, sort_keys=True).encode())
        else:
            ctx.print(f"status: {data['status'] if ci.status != 'degraded' else 'done'}")
            if long_:
                ctx.print(f"extended_status: {data['extended_status']}")
                ctx.print(f"boot_status_code: {data['boot_status_code']}")
                ctx.print(f"last_update: {data['last_update']}")
                ctx.print(f"detail: {data['detail']}")
                ctx.print("errors:" + ("" if data["errors"] else " []"))
                for e in data["errors"]:
                    ctx.print(f"\t- {e}")
                ctx.print("recoverable_errors:" + ("" if ci.warnings else " {}"))
                for w in ci.warnings:
                    ctx.print(f"WARNING:\n\t- {w}")
        return ci.exit_code()

    NVIDIA_FIELDS = frozenset(
        {"index", "name", "uuid", "memory.used", "memory.total", "memory.free", "utilization.gpu"}
        | {
            "utilization.memory",
            "temperature.gpu",
            "power.draw",
            "driver_version",
            "compute_cap",
            "pci.bus_id",
        }
        | {"count", "persistence_mode", "pstate"}
    )

    def _nvidia_smi(self, ctx: Ctx) -> int:
        args = ctx.argv[1:]
        query: list[str] | None = None
        fmt: set[str] = set()
        for a in args:
            if a.startswith("--query-gpu="):
                query = [f.strip() for f in a.split("=", 1)[1].split(",") if f.strip()]
            elif a.startswith("--format="):
                fmt = {f.strip() for f in a.split("=", 1)[1].split(",")}
        nvidia = [(i, g) for i, g in enumerate(self.gpus) if g.nvidia]
        if "-L" in args or "--list-gpus" in args:
            for i, g in nvidia:
                ctx.print(f"GPU {i}: {g.name} (UUID: {self._gpu_uuid(i)})")
            return 0
        used = {i: 0 for i, _ in nvidia}
        busy = {i: False for i, _ in nvidia}
        for c in self.docker.running():
            if c.standin is not None:
                for i in used:
                    used[i] += c.standin.gpu_memory_used_mib(i)
                    busy[i] = busy[i] or c.standin.gpu_busy(i)
        util = {i: self.options.gpu_busy_pct.get(i, 95) if busy[i] else 0 for i in used}
        if query is None:
            ctx.print(
                "+-----------------------------------------------------------------------------------------+"
            )
            ctx.print(
                "| NVIDIA-SMI 570.172.08             Driver Version: 570.172.08     CUDA Version: 12.8     |"
            )
            ctx.print(
                "|-----------------------------------------+------------------------+----------------------+"
            )
            for i, g in nvidia:
                ctx.print(
                    f"|   {i}  {g.name:<34}|  {used[i]:>6}MiB / {g.memory_mib:>6}MiB |  {util[i]:>3}%  |"
                )
            ctx.print(
                "+-----------------------------------------------------------------------------------------+"
            )
            return 0
        bad = [f for f in query if f not in self.NVIDIA_FIELDS]
        if bad:
            return ctx.fail(f'Field "{bad[0]}" is not a valid field to query.', 2)
        units = "nounits" not in fmt
        unit_of = {"memory.used": "MiB", "memory.total": "MiB", "memory.free": "MiB"}
        unit_of |= {"utilization.gpu": "%", "utilization.memory": "%", "power.draw": "W"}
        if "csv" in fmt and "noheader" not in fmt:
            ctx.print(", ".join(f"{f} [{unit_of[f]}]" if units and f in unit_of else f for f in query))
        for i, g in nvidia:
            values = {
                "index": str(i),
                "name": g.name,
                "uuid": self._gpu_uuid(i),
                "memory.used": str(used[i]),
                "memory.total": str(g.memory_mib),
                "memory.free": str(g.memory_mib - used[i]),
                "utilization.gpu": str(util[i]),
                "utilization.memory": str(40 if busy[i] else 0),
                "temperature.gpu": str(62 if busy[i] else 34),
                "power.draw": "250.00" if busy[i] else "31.00",
                "driver_version": "570.172.08",
                "compute_cap": str(g.compute_capability),
                "pci.bus_id": f"00000000:{i + 1:02X}:00.0",
                "count": str(len(nvidia)),
                "persistence_mode": "Enabled",
                "pstate": "P0" if busy[i] else "P8",
            }
            row = [values[f] + (f" {unit_of[f]}" if units and f in unit_of else "") for f in query]
            ctx.print(", ".join(row))
        return 0

    def _gpu_uuid(self, index: int) -> str:
        import hashlib

        h = hashlib.md5(f"{self.vendor}/{self.id}/{index}".encode(), usedforsecurity=False).hexdigest()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def close_quietly(obj: Any) -> None:
    with contextlib.suppress(Exception):
        obj.close()
