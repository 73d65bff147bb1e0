"""VMFarm: an emulated VM behind every running instance of the attached cloud simulators.

The farm watches the simulators' ledgers (a poller thread, every ``poll_interval`` real seconds,
plus the simulators' ``on_create``/``on_delete`` hooks, plus ``sync()`` on demand):

* instance reads its vendor's "running" state for the first time → the VM boots (cloud-init's
  init stage, sshd listens on ``ipv4:ssh_port``; before that connections are refused);
* instance stops (Scaleway poweroff, Linode shutdown…) → sshd and the containers stop; it
  boots again (bootcmd, enabled units, restart policies) when it runs again;
* instance deleted → the VM is destroyed: listeners closed, SSH connections cut, stand-ins
  stopped. Its root directory stays for inspection until the farm closes.

One asyncio loop thread runs every VM's sshd and public port relays; commands run in a
thread pool. The loop never waits for a VM lock, so a command holding one can always use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .options import GPUModel, StandInOptions, gpus_for_type
from .vm import EmulatedVM

if TYPE_CHECKING:
    import concurrent.futures

    from tests.cloudsim.core import SimServer
    from tests.cloudsim.ledger import InstanceRecord

SSHPortPolicy = Literal["record", "assign", "auto"]


def _can_bind_privileged() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.254.254.253", 22))
        except OSError:
            return False
    return True


def _bind_listener(host: str, port: int, attempts: int = 20) -> socket.socket:
    """Bind host:port, retrying briefly while an old listener there is still closing."""
    import time

    for attempt in range(attempts):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return sock
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


class VMFarm:
    """Emulated VMs for the instances of one or more cloud simulators.

    ``stand_in_options``: the defaults of every VM (``StandInOptions``).
    ``ssh_ports``: "record" listens on ``record.ssh_port or 22`` (22 needs root or a low
    ``ip_unprivileged_port_start``); "assign" gives every new instance whose record has no
    port a free one (written to ``record.ssh_port`` at create time, before the API answers);
    "auto" is "record" when port 22 can be bound here, else "assign" ($VMSIM_SSH_PORTS=record|assign
    forces one).
    ``gpu_map``: instance type id → GPUs, overriding the simulators' catalogs.
    ``root``: where the VMs' root directories go (default: a temporary directory, removed on
    close).
    """

    def __init__(
        self,
        *sims: SimServer,
        stand_in_options: StandInOptions | None = None,
        ssh_ports: SSHPortPolicy = "auto",
        gpu_map: Mapping[str, Sequence[GPUModel]] | None = None,
        root: Path | None = None,
        poll_interval: float = 0.02,
        max_workers: int = 16,
    ) -> None:
        import concurrent.futures

        self.options = stand_in_options or StandInOptions()
        if ssh_ports == "auto":
            forced = os.environ.get("VMSIM_SSH_PORTS", "")
            if forced in ("record", "assign"):
                ssh_ports = "record" if forced == "record" else "assign"
            else:
                ssh_ports = "record" if _can_bind_privileged() else "assign"
        self.ssh_ports: SSHPortPolicy = ssh_ports
        self.gpu_map = dict(gpu_map or {})
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="vmsim-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.poll_interval = poll_interval
        #: Emulator failures (a stand-in crashed, sshd could not listen…): a test should fail.
        self.errors: list[str] = []
        self.closing = False
        self._vms: dict[tuple[str, str], EmulatedVM] = {}
        self._sims: list[SimServer] = []
        self._hooks: dict[int, tuple[Any, Any]] = {}
        self._per_instance: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._next: list[dict[str, Any]] = []
        self._reserved: dict[tuple[str, str], socket.socket] = {}
        self._acceptors: dict[int, Any] = {}
        self._relays: dict[int, dict[int, asyncio.AbstractServer]] = {}
        self._lock = threading.RLock()
        self._err_lock = threading.Lock()
        self.executor: concurrent.futures.ThreadPoolExecutor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="vmsim-exec"
        )
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="vmsim-loop", daemon=True)
        self._loop_thread.start()
        self._stop_poll = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="vmsim-poller", daemon=True)
        self._poller.start()
        for sim in sims:
            self.attach(sim)

    # -- public API ------------------------------------------------------------------------

    def attach(self, sim: SimServer) -> VMFarm:
        """Give the simulator's instances emulated VMs (existing ones included)."""
        with self._lock:
            if sim in self._sims:
                return self
            self._sims.append(sim)

            def on_create(rec: InstanceRecord, farm: VMFarm = self, sim: SimServer = sim) -> None:
                farm._on_create(sim, rec)

            def on_delete(rec: InstanceRecord, farm: VMFarm = self, sim: SimServer = sim) -> None:
                farm._reconcile(sim, rec)

            sim.on_create.append(on_create)
            sim.on_delete.append(on_delete)
            self._hooks[id(sim)] = (on_create, on_delete)
        self.sync()
        return self

    def detach(self, sim: SimServer) -> None:
        with self._lock:
            if sim not in self._sims:
                return
            self._sims.remove(sim)
            on_create, on_delete = self._hooks.pop(id(sim))
            with contextlib.suppress(ValueError):
                sim.on_create.remove(on_create)
            with contextlib.suppress(ValueError):
                sim.on_delete.remove(on_delete)
            for (vendor, iid), vm in list(self._vms.items()):
                if vm.sim is sim:
                    vm.destroy()
                    self._release(vendor, iid)

    def configure(self, instance_id: str | int, vendor: str | None = None, **changes: Any) -> None:
        """Options for one instance's VM (before it boots; a booted VM: set ``vm.options``)."""
        StandInOptions().copy(**changes)  # fail now on a misspelt option
        with self._lock:
            self._per_instance.setdefault((vendor, str(instance_id)), {}).update(changes)
            for (v, iid), vm in self._vms.items():
                if iid == str(instance_id) and vendor in (None, v):
                    for key, value in changes.items():
                        setattr(vm.options, key, value)

    def configure_next(self, **changes: Any) -> None:
        """Options for the next instance any attached simulator creates (queue: one per call)."""
        StandInOptions().copy(**changes)
        with self._lock:
            self._next.append(changes)

    def vm(self, instance_id: str | int, vendor: str | None = None) -> EmulatedVM:
        """The VM of an instance that has booted (KeyError otherwise)."""
        self.sync()
        with self._lock:
            hits = [vm for (v, i), vm in self._vms.items() if i == str(instance_id) and vendor in (None, v)]
        if not hits:
            raise KeyError(f"no emulated VM for instance {instance_id!r} (not running yet?)")
        return hits[-1]

    def wait_vm(
        self,
        instance_id: str | int,
        vendor: str | None = None,
        *,
        timeout: float = 5.0,
        cloud_init: bool = False,
    ) -> EmulatedVM:
        """Wait (real time) until the instance's sshd listens, and optionally cloud-init ended."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                vm = self.vm(instance_id, vendor)
                if vm.errors:
                    raise RuntimeError(f"{vm!r} failed to boot: {'; '.join(vm.errors)}")
                if vm.sshd_listening and (
                    not cloud_init or vm.cloudinit.status not in ("running", "not started")
                ):
                    return vm
            except KeyError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {instance_id!r}: no listening VM after {timeout} s")
            time.sleep(0.01)

    @property
    def vms(self) -> list[EmulatedVM]:
        with self._lock:
            return list(self._vms.values())

    def sync(self) -> None:
        """Bring the VMs in line with the simulators now (the poller does it continuously)."""
        with self._lock:
            for sim in list(self._sims):
                for rec in sim.ledger.instances(sim.vendor):
                    self._reconcile(sim, rec)

    def error(self, message: str) -> None:
        with self._err_lock:
            self.errors.append(message)

    def threads(self) -> list[threading.Thread]:
        """The threads this farm started that are still alive (empty after close())."""
        threads: list[threading.Thread] = [self._poller, self._loop_thread]
        threads += list(getattr(self.executor, "_threads", ()))
        for vm in self.vms:
            for c in list(vm.docker.containers.values()) + vm.docker.removed:
                thread = getattr(c.standin, "thread", None)
                if isinstance(thread, threading.Thread):
                    threads.append(thread)
            threads += vm.python.alive_threads()
        return [t for t in threads if t.is_alive()]

    def take_errors(self) -> list[str]:
        """Return and forget the emulator errors (for tests that provoke one on purpose)."""
        with self._err_lock:
            out, self.errors = self.errors, []
        return out

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self._stop_poll.set()
        self._poller.join(timeout=5)
        with self._lock:
            for sim in list(self._sims):
                self.detach(sim)
            for vm in self._vms.values():
                vm.destroy()
            for sock in self._reserved.values():
                sock.close()
            self._reserved.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._call(self._close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
        self.loop.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> VMFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reconciliation --------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop_poll.wait(self.poll_interval):
            try:
                self.sync()
                for vm in self.vms:
                    if not vm.destroyed:
                        vm.tick()
            except Exception as e:  # keep polling; the test sees the error
                self.error(f"poller: {e!r}")

    def _on_create(self, sim: SimServer, rec: InstanceRecord) -> None:
        with self._lock:
            if self._next:
                self._per_instance.setdefault((rec.vendor, rec.id), {}).update(self._next.pop(0))
            if self.ssh_ports == "assign" and rec.ssh_port is None and rec.ipv4:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((rec.ipv4, 0))  # reserved, not listening: connections are refused
                self._reserved[(rec.vendor, rec.id)] = sock
                rec.ssh_port = int(sock.getsockname()[1])

    def _options_for(self, rec: InstanceRecord) -> StandInOptions:
        changes: dict[str, Any] = {}
        changes.update(self._per_instance.get((None, rec.id), {}))
        changes.update(self._per_instance.get((rec.vendor, rec.id), {}))
        return self.options.copy(**changes)

    def _gpus_for(self, rec: InstanceRecord) -> tuple[GPUModel, ...]:
        if rec.type in self.gpu_map:
            return tuple(self.gpu_map[rec.type])
        return gpus_for_type(rec.vendor, rec.type)

    def _reconcile(self, sim: SimServer, rec: InstanceRecord) -> None:
        if self.closing:
            return
        with self._lock:
            key = (rec.vendor, rec.id)
            vm = self._vms.get(key)
            state = rec.state
            if rec.deleted_at is not None or state == "gone":
                if vm is not None and not vm.destroyed:
                    vm.destroy()
                self._release(*key)
                return
            if state == rec.ready_state:
                if vm is None:
                    vm = EmulatedVM(
                        farm=self,
                        sim=sim,
                        record=rec,
                        options=self._options_for(rec),
                        root=self.root / f"{rec.vendor}-{rec.id}",
                        gpus=self._gpus_for(rec),
                    )
                    self._vms[key] = vm
                    vm.boot()
                elif vm.state == "off":
                    vm.power_on()
            elif vm is not None and vm.state in ("booting", "up"):
                vm.power_off()

    def _release(self, vendor: str, iid: str) -> None:
        sock = self._reserved.pop((vendor, iid), None)
        if sock is not None:
            sock.close()

    # -- the event loop --------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        if self.loop.is_closed() or not self._loop_thread.is_alive():
            coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sshd_listening(self, vm: EmulatedVM) -> bool:
        return id(vm) in self._acceptors

    def start_sshd(self, vm: EmulatedVM) -> int:
        """Listen for SSH on the VM's address; returns the port."""
        from .sshd import start_server

        if id(vm) in self._acceptors:
            return vm.ssh_port
        port = vm.record.ssh_port or 22
        sock = self._reserved.pop((vm.vendor, vm.id), None)
        if sock is not None and sock.getsockname()[1] != port:
            sock.close()  # the test moved the port (sim.set_ssh_port) after create
            sock = None
        if sock is None:
            sock = _bind_listener(vm.ipv4, port)
        sock.listen(100)
        sock.setblocking(False)
        try:
            acceptor = self._call(start_server(self, vm, sock))
        except Exception:
            sock.close()
            raise
        self._acceptors[id(vm)] = acceptor
        return port

    def stop_sshd(self, vm: EmulatedVM) -> None:
        acceptor = self._acceptors.pop(id(vm), None)
        if acceptor is None:
            return

        async def stop() -> None:
            acceptor.close()
            for conn in list(vm.ssh_connections):
                conn.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(acceptor.wait_closed(), 2)

        self._call(stop())

    def set_public_ports(self, vm: EmulatedVM, ports: list[int]) -> None:
        """Listen on ``vm.ipv4:port`` for ports published on all interfaces (docker-proxy)."""
        wanted = set(ports) if not vm.destroyed else set()
        if not wanted and id(vm) not in self._relays:
            return

        async def apply() -> None:
            current = self._relays.setdefault(id(vm), {})
            for port in list(current):
                if port not in wanted:
                    server = current.pop(port)
                    server.close()
            for port in wanted - set(current):

                def handler(
                    r: asyncio.StreamReader, w: asyncio.StreamWriter, port: int = port
                ) -> Coroutine[Any, Any, None]:
                    return self._relay(vm, port, r, w)

                try:
                    current[port] = await asyncio.start_server(
                        handler,
                        host=vm.ipv4,
                        port=port,
                        reuse_address=True,
                    )
                except OSError as e:
                    if e.errno != errno.EADDRINUSE or port != vm.ssh_port:
                        self.error(f"{vm.vendor} {vm.id}: cannot publish {vm.ipv4}:{port}: {e}")

        self._call(apply())

    async def _relay(
        self, vm: EmulatedVM, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = vm.docker.resolve(vm.ipv4, port)
        if not isinstance(target, int):
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _close_all(self) -> None:
        for servers in self._relays.values():
            for server in servers.values():
                server.close()
        self._relays.clear()
        for acceptor in list(self._acceptors.values()):
            acceptor.close()
        self._acceptors.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
