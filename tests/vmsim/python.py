"""``python3`` on the emulated VM: runs the VM's Python program as a real host subprocess.

vmsim interprets shell commands, but maider's idle watchdog is a Python program
(``/opt/maider/watchdog/maider_watchdog.py``, standard library only). ``python3 FILE ARGS`` runs
the host's interpreter on the file behind the VM path, with the environment variables the
program honours for exactly this purpose (and a real VM never sets):

- ``MAIDER_WATCHDOG_ROOT``: the VM's root directory, prefixed to every path it opens;
- ``MAIDER_WATCHDOG_VLLM_URL``: a loopback relay that stands for the VM's ``127.0.0.1:8000``
  (resolved per connection, so it follows the stand-in vLLM across restarts; refused while no
  container publishes the port).

Commands the program runs (``systemctl poweroff``, ``wall``) run inside the VM: ``PATH`` starts
with a directory of small shims that send their argv to the VM's command interpreter over a
loopback socket and return its output and exit code.

Foreground (an SSH exec): stdin is passed, stdout/stderr returned. A ``Type=simple`` systemd
unit whose ExecStart is ``python3 …`` runs in the background (:meth:`PythonHost.spawn`): its
output goes to the unit's journal, ``systemctl stop``/power-off/destroy terminate it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .shell import Ctx
    from .vm import EmulatedVM

_SHIM = """#!{python}
import json, os, socket, sys
with socket.create_connection(("127.0.0.1", int(os.environ["VMSIM_EXEC_PORT"])), timeout=120) as s:
    s.sendall(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]).encode() + b"\\n")
    reply = json.loads(s.makefile("rb").read() or b'{{"rc": 1, "out": "", "err": "vmsim: no reply\\\\n"}}')
sys.stdout.write(reply["out"])
sys.stderr.write(reply["err"])
sys.exit(reply["rc"])
"""
SHIMMED = ("systemctl", "wall", "shutdown")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class PythonHost:
    """Per VM: the vLLM relay, the command server for the shims, and the background processes."""

    def __init__(self, vm: EmulatedVM) -> None:
        self.vm = vm
        self._lock = threading.Lock()
        self._relay: _Server | None = None
        self._exec: _Server | None = None
        self._bin: Path | None = None
        self.processes: list[subprocess.Popen[bytes]] = []
        self.threads: list[threading.Thread] = []
        #: Set by close(): exit callbacks no longer run (the VM is gone).
        self.closed = False

    # -- plumbing --------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._relay is not None:
                return
            vm = self.vm

            class Relay(socketserver.BaseRequestHandler):
                def handle(self) -> None:
                    port = vm.local_port(8000)
                    if port is None or vm.destroyed or vm.state == "off":
                        return  # closed at once: as good as refused for an HTTP client
                    try:
                        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
                    except OSError:
                        return
                    _pipe(self.request, upstream)

            class Exec(socketserver.StreamRequestHandler):
                def handle(self) -> None:
                    argv = json.loads(self.rfile.readline() or b"[]")
                    if not argv:
                        return
                    rec = vm.run(shlex.join(argv), source="python")
                    reply = {"rc": rec.rc, "out": rec.out, "err": rec.err}
                    with contextlib.suppress(OSError):
                        self.wfile.write(json.dumps(reply).encode())

            self._relay = _Server(("127.0.0.1", 0), Relay)
            self._exec = _Server(("127.0.0.1", 0), Exec)
            for server in (self._relay, self._exec):
                t = threading.Thread(
                    target=server.serve_forever, args=(0.05,), name=f"vmsim-python-{vm.id}", daemon=True
                )
                t.start()
                self.threads.append(t)
            self._bin = Path(tempfile.mkdtemp(prefix="vmsim-bin-"))
            for name in SHIMMED:
                shim = self._bin / name
                shim.write_text(_SHIM.format(python=sys.executable))
                shim.chmod(0o755)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        self._start()
        assert self._relay is not None and self._exec is not None and self._bin is not None
        env = {
            "PATH": f"{self._bin}:/usr/bin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "MAIDER_WATCHDOG_ROOT": str(self.vm.root),
            "MAIDER_WATCHDOG_VLLM_URL": f"http://127.0.0.1:{self._relay.server_address[1]}",
            "VMSIM_EXEC_PORT": str(self._exec.server_address[1]),
        }
        env.update(extra or {})
        return env

    def argv(self, ctx_argv: list[str]) -> list[str] | str:
        """The host argv for ``python3 FILE ARGS`` (or an error message)."""
        args = ctx_argv[1:]
        if not args or args[0].startswith("-"):
            return "vmsim: only `python3 FILE [ARGS]` is emulated"
        host = self.vm.fs.host(args[0])
        if not host.is_file():
            return f"python3: can't open file '{args[0]}': [Errno 2] No such file or directory"
        # -B: no __pycache__ in the VM root (a real VM would write one; nothing reads it).
        return [sys.executable, "-B", str(host), *args[1:]]

    # -- the command -----------------------------------------------------------------------

    def run(self, ctx: Ctx) -> int:
        argv = self.argv(ctx.argv)
        if isinstance(argv, str):
            return ctx.fail(argv, 2)
        done = subprocess.run(
            argv,
            input=ctx.stdin.read(),
            capture_output=True,
            env=self.env(),
            cwd="/",
            timeout=120,
            check=False,
        )
        ctx.out.write(done.stdout)
        ctx.err.write(done.stderr)
        return done.returncode

    def spawn(
        self, argv_in: list[str], on_line: Callable[[str], None], on_exit: Callable[[int], None]
    ) -> subprocess.Popen[bytes] | str:
        """Start ``python3 FILE ARGS`` in the background: the process, or why it could not start."""
        argv = self.argv(argv_in)
        if isinstance(argv, str):
            return argv
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd="/",
        )
        self.processes.append(proc)

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                on_line(raw.decode(errors="replace").rstrip("\n"))
            rc = proc.wait()
            if not self.closed:
                on_exit(rc)

        t = threading.Thread(target=read, name=f"vmsim-python-{self.vm.id}-{proc.pid}", daemon=True)
        t.start()
        self.threads.append(t)
        return proc

    @staticmethod
    def terminate(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def close(self) -> None:
        """The VM is deleted: its processes vanish at once (SIGKILL), its sockets close."""
        self.closed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for server in (self._relay, self._exec):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self.threads:
            t.join(timeout=5)
        if self._bin is not None:
            for f in self._bin.iterdir():
                f.unlink()
            self._bin.rmdir()
            self._bin = None
        self._relay = self._exec = None

    def alive_threads(self) -> list[threading.Thread]:
        return [t for t in self.threads if t.is_alive()]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join(timeout=30)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.close()
