"""The SSH tunnel: vLLM (and Open WebUI) of the VM on free ports of 127.0.0.1, one pair per session.

The previous generation forwarded fixed ports without ExitOnForwardFailure, so a second session's
tunnel failed to bind silently and its "ready" check talked to the first session's VM. Here:

- each session gets its own free local ports, chosen away from the ports other sessions recorded
  (and reserved in this session's record under the state lock before ssh binds them);
- the tunnel is its own ssh process, ``ssh -f -N -o ExitOnForwardFailure=yes -L … -L …``, run as
  a master on a socket of its own. With ExitOnForwardFailure, ssh exits non-zero instead of
  backgrounding when a bind fails, so the exit status of the ``-f`` parent says whether every
  forward listens; a lost bind race then picks other ports and retries. The forwards are then
  checked by connecting to them, and the master's pid is recorded (``ssh -O check``);
- :func:`close` stops it with ``ssh -O exit`` on that socket.

Why not ``ssh -O forward`` on the session's command master: that master runs with
``ControlPersist=600`` and exits after ten minutes without a client *session*; forwards do not count
(OpenSSH's channel_still_open ignores listeners), so the tunnel would vanish while aider sits idle.
The tunnel master has no ControlPersist and lives until ``maider down`` (or until the VM stops
answering ServerAlive probes for a minute).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maider.errors import MaiderError
from maider.remote import ssh
from maider.remote.commands import OPENWEBUI_REMOTE_PORT, VLLM_REMOTE_PORT

if TYPE_CHECKING:  # pragma: no cover
    from maider.session.state import SessionStore

#: How many times a bind race (another program took the port between the choice and ssh's
#: bind) is retried with new ports.
ATTEMPTS = 5
START_TIMEOUT = 40.0  # ssh -f returns after connect + auth + binds: ConnectTimeout (10 s) + margin

_BIND_FAILED = re.compile(
    r"Address already in use|cannot listen to port|Could not request local forwarding|bind \[",
)


class TunnelError(MaiderError):
    pass


@dataclass(frozen=True)
class TunnelPorts:
    api: int
    webui: int | None = None
    pid: int | None = None  # the tunnel's ssh process

    @property
    def ports(self) -> list[int]:
        return [p for p in (self.api, self.webui) if p is not None]


def tunnel_control_path(target: ssh.SSHTarget) -> Path:
    """The tunnel master's socket: next to the session's command master, suffixed ``t``."""
    return ssh.default_control_path(target, suffix="t")


# ------------------------------------------------------------------------------------ ports


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether ``127.0.0.1:port`` can be bound right now (a listener there means no)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As ssh binds its forwards: connections the previous tunnel closed linger in TIME_WAIT
        # on this port, which blocks a plain bind() but not a listener with SO_REUSEADDR.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(avoid: Collection[int] = ()) -> int:
    """A port of 127.0.0.1 that is free now and not in ``avoid`` (ports other sessions own)."""
    for _ in range(200):
        port = _ephemeral_port()
        if port not in avoid:
            return port
    raise TunnelError("no free local port found for the tunnel; close some programs or sessions and retry")


def is_alive(ports: TunnelPorts, timeout: float = 1.0) -> bool:
    """Whether every local end of the tunnel accepts connections."""
    for port in ports.ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                pass
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------------ tunnel


def start(
    target: ssh.SSHTarget,
    *,
    webui: bool = True,
    avoid: Collection[int] = (),
    preferred: TunnelPorts | None = None,
    attempts: int = ATTEMPTS,
    remote_api: int = VLLM_REMOTE_PORT,
    remote_webui: int = OPENWEBUI_REMOTE_PORT,
    log_path: Path | None = None,
) -> TunnelPorts:
    """Open the tunnel of ``target``; returns the local ports and the tunnel's pid.

    ``preferred`` ports (the session's previous ones, so aider's settings stay valid) are used
    when free. A tunnel already open for this target is closed first.
    """
    close(target)
    avoid = set(avoid)
    choice = preferred
    last_error = ""
    for _ in range(max(1, attempts)):
        ports = _choose(choice, webui=webui, avoid=avoid)
        choice = None
        done, stderr = _launch(
            target, ports, remote_api=remote_api, remote_webui=remote_webui, log_path=log_path
        )
        if done == 0:
            pid = ssh.master_pid(target, control_path=tunnel_control_path(target))
            result = TunnelPorts(ports.api, ports.webui, pid)
            if _wait_listening(result):
                return result
            close(target, result)
            raise TunnelError(
                f"the SSH tunnel to {target.describe()} started but 127.0.0.1:{result.api} does not "
                "accept connections; retry with `maider tunnel`"
            )
        if _BIND_FAILED.search(stderr):
            # Lost a race for the port: never reuse it in this call, try others.
            avoid.update(ports.ports)
            last_error = ssh._tail(stderr)
            continue
        error = ssh.classify(stderr, target)
        if error is not None:
            raise error
        raise TunnelError(
            f"the SSH tunnel to {target.describe()} failed: {ssh._tail(stderr) or f'exit {done}'}"
        )
    raise TunnelError(f"could not bind local ports for the tunnel after {attempts} attempts: {last_error}")


def _choose(preferred: TunnelPorts | None, *, webui: bool, avoid: set[int]) -> TunnelPorts:
    if preferred is not None:
        wanted = [preferred.api] + ([preferred.webui] if webui and preferred.webui else [])
        if len(wanted) == (2 if webui else 1) and all(p not in avoid and port_is_free(p) for p in wanted):
            return TunnelPorts(wanted[0], wanted[1] if webui else None)
    api = free_port(avoid)
    webui_port = free_port(avoid | {api}) if webui else None
    return TunnelPorts(api, webui_port)


def _launch(
    target: ssh.SSHTarget,
    ports: TunnelPorts,
    *,
    remote_api: int,
    remote_webui: int,
    log_path: Path | None,
) -> tuple[int, str]:
    forwards = ["-L", f"127.0.0.1:{ports.api}:127.0.0.1:{remote_api}"]
    if ports.webui is not None:
        forwards += ["-L", f"127.0.0.1:{ports.webui}:127.0.0.1:{remote_webui}"]
    control_path = tunnel_control_path(target)
    ssh.ensure_socket_dir(control_path.parent)
    logging: list[str] = []
    if log_path is not None:
        # -E: ssh logs there for the tunnel's whole life (a backgrounded ssh otherwise sends its
        # errors to /dev/null), so `maider status` can say why a tunnel died.
        from maider.session.state import atomic_write

        atomic_write(log_path, b"")
        logging = ["-E", str(log_path)]
    argv = ssh.ssh_base_args(
        target,
        "-o",
        "ExitOnForwardFailure=yes",
        *logging,
        "-f",
        "-N",
        *forwards,
        control_master="yes",
        control_path=control_path,
        control_persist="no",
    )
    try:
        done = ssh._exec(argv, stdin=None, timeout=START_TIMEOUT, detach=True)
    except subprocess.TimeoutExpired:
        raise ssh.ConnectionFailed(
            f"the SSH tunnel to {target.describe()} did not come up within {START_TIMEOUT:g} s"
        ) from None
    text = done.stderr.decode("utf-8", "replace")
    if log_path is not None:
        text += log_path.read_text(encoding="utf-8", errors="replace")
    return done.returncode, text


def _wait_listening(ports: TunnelPorts, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if is_alive(ports, timeout=0.5):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def close(target: ssh.SSHTarget, ports: TunnelPorts | None = None) -> None:
    """Stop the tunnel of ``target`` (``ssh -O exit`` on its socket), or its recorded process."""
    if ssh.close_master(target, control_path=tunnel_control_path(target)):
        if ports is not None:
            _wait_closed(ports)
        return
    if ports is not None and ports.pid is not None and _is_our_tunnel(ports):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ports.pid, signal.SIGTERM)
        _wait_closed(ports)


def _wait_closed(ports: TunnelPorts, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(port_is_free(p) for p in ports.ports) and (ports.pid is None or _process_gone(ports.pid)):
            return
        time.sleep(0.05)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie nobody reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _is_our_tunnel(ports: TunnelPorts) -> bool:
    """Whether ``ports.pid`` is still the ssh that forwards ``ports.api`` (pids get reused)."""
    assert ports.pid is not None
    cmdline = Path(f"/proc/{ports.pid}/cmdline")
    try:
        if cmdline.exists():
            text = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        else:  # macOS and other systems without /proc
            text = subprocess.run(
                ["ps", "-o", "command=", "-p", str(ports.pid)], capture_output=True, text=True, check=False
            ).stdout
    except OSError:
        return False
    return "ssh" in text and f"127.0.0.1:{ports.api}:" in text


# ------------------------------------------------------------------------------------ sessions


def open_session_tunnel(
    store: SessionStore, session_id: str, target: ssh.SSHTarget, *, webui: bool = True
) -> TunnelPorts:
    """Open the tunnel of a session and record its ports and pid in the session.

    Ports recorded by other live sessions are avoided, and the session's own previous ports are
    reused when free. The chosen ports are recorded under the state lock before ssh binds them,
    so two maider processes opening tunnels at once do not pick the same ports.
    """
    record = store.get(session_id)
    preferred = TunnelPorts(record.api_port, record.webui_port) if record.api_port else None
    if record.api_port is not None and record.tunnel_pid is not None:
        # A tunnel of an earlier run: stop it, even if its socket is gone (a cleaned /tmp).
        close(target, TunnelPorts(record.api_port, record.webui_port, record.tunnel_pid))
    with store.lock():
        avoid = store.used_ports(exclude=session_id)
        first = _choose(preferred, webui=webui, avoid=avoid)
        store.update(session_id, api_port=first.api, webui_port=first.webui, tunnel_pid=None)
    try:
        ports = start(
            target, webui=webui, avoid=avoid, preferred=first, log_path=store.tunnel_log_path(session_id)
        )
    except BaseException:
        store.update(session_id, tunnel_pid=None)
        raise
    store.update(session_id, api_port=ports.api, webui_port=ports.webui, tunnel_pid=ports.pid)
    return ports


def close_session_tunnel(store: SessionStore, session_id: str, target: ssh.SSHTarget) -> None:
    """Close a session's tunnel; its ports stay recorded (reused by the next tunnel if free)."""
    record = store.get(session_id)
    if record.api_port is not None:
        close(target, TunnelPorts(record.api_port, record.webui_port, record.tunnel_pid))
    else:
        close(target)
    store.update(session_id, tunnel_pid=None)
