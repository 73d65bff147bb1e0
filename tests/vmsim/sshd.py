"""The emulated VM's sshd (asyncssh): host keys and authorized keys from the user-data.

* Host keys: the ``ssh_keys`` private keys cloud-init installed (or the key it generated when
  the user-data had none), so a client that pinned maider's key verifies the VM, and one that
  pinned another key fails host key verification.
* Authentication: public keys only, from the keys cloud-init set up for the user
  (``ssh_authorized_keys``, ``users[].ssh_authorized_keys``). Root keys restricted by
  ``disable_root: true`` log in but only get cloud-init's "Please login as …" message (142).
* Sessions: exec requests run through the VM's command interpreter in a worker thread
  (stdin is read only when a command reads it); a session without a command runs its stdin
  as a script; the ``sftp`` subsystem is served chrooted to the VM's root.
* ``direct-tcpip`` (``ssh -L``, also added later through a ControlMaster with ``-O forward``):
  the destination is resolved inside the VM (``docker.resolve``): a published port reaches
  the stand-in behind it, anything else is refused. Remote forwards (``-R``) are refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import TYPE_CHECKING, Any

import asyncssh

from .vm import ForwardRecord

if TYPE_CHECKING:
    from .farm import VMFarm
    from .vm import EmulatedVM


def key_access(vm: EmulatedVM, username: str, key: asyncssh.SSHKey) -> str | None:
    """ "ok", "restricted" (disable_root) or None for a public key offered as ``username``."""
    entry = vm.cloudinit.users.get(username)
    if entry is None:
        return None
    blob = key.public_data

    def matches(lines: list[str]) -> bool:
        for line in lines:
            try:
                if asyncssh.import_public_key(line.strip()).public_data == blob:
                    return True
            except (asyncssh.KeyImportError, ValueError):
                continue
        return False

    if matches(entry.keys):
        return "ok"
    if matches(entry.restricted):
        return "restricted"
    return None


class _ResetSession(asyncssh.SSHTCPSession[bytes]):
    """docker-proxy accepted, but nothing listens behind it: the connection closes at once."""

    def connection_made(self, chan: Any) -> None:
        chan.close()


class _SFTPServer(asyncssh.SFTPServer):
    """The sftp subsystem, chrooted to the VM's root; it ends with exit status 0, as OpenSSH's
    sftp-server does (scp, which runs over SFTP since OpenSSH 9, fails without one)."""

    def exit(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.exit(0)


class VMSSHServer(asyncssh.SSHServer):
    def __init__(self, vm: EmulatedVM) -> None:
        self.vm = vm
        self.conn: asyncssh.SSHServerConnection | None = None
        self.access: dict[str, str] = {}

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.vm.ssh_connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.vm.ssh_connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        access = key_access(self.vm, username, key)
        if access is not None:
            self.access[username] = access
        return access is not None

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        user = self.conn.get_extra_info("username") if self.conn is not None else ""
        if self.access.get(user) == "restricted":
            self.vm.forwards.append(ForwardRecord(dest_host, dest_port, "denied"))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "open failed")
        target = self.vm.docker.resolve(dest_host, dest_port)
        if target is None:
            self.vm.forwards.append(ForwardRecord(dest_host, dest_port, "refused"))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")
        if target == "reset":
            self.vm.forwards.append(ForwardRecord(dest_host, dest_port, "reset"))
            return _ResetSession()
        self.vm.forwards.append(ForwardRecord(dest_host, dest_port, f"forwarded:{target}"))
        assert self.conn is not None
        return self.conn.forward_connection("127.0.0.1", int(target))

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.vm.note_not_emulated(f"remote forward (-R) {listen_host}:{listen_port}", source="ssh")
        return False


def make_process_handler(farm: VMFarm, vm: EmulatedVM, server_of: dict[Any, VMSSHServer]) -> Any:
    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        loop = asyncio.get_running_loop()
        conn = process.channel.get_connection()
        username = str(process.get_extra_info("username") or "")
        server = server_of.get(conn)
        if server is not None and server.access.get(username) == "restricted":
            process.stdout.write(
                f'Please login as the user "{vm.options.default_user}" rather than the user "root".\n\n'.encode()
            )
            process.exit(142)
            return
        command = process.command
        if command is None and process.get_terminal_type() is not None:
            process.stderr.write(b"vmsim: interactive shells are not emulated; run a command\r\n")
            process.exit(1)
            return

        def fetch_stdin() -> bytes:
            fut = asyncio.run_coroutine_threadsafe(process.stdin.read(), loop)
            while True:
                try:
                    return fut.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    if vm.stopped.is_set() or farm.closing:
                        fut.cancel()
                        return b""
                except Exception:
                    return b""

        try:
            rec = await loop.run_in_executor(
                farm.executor, lambda: vm.run(command, user=username, stdin=fetch_stdin, source="ssh")
            )
        except (RuntimeError, concurrent.futures.CancelledError):  # the farm is shutting down
            process.exit(255)
            return
        try:
            if rec.stdout:
                process.stdout.write(rec.stdout)
            if rec.stderr:
                process.stderr.write(rec.stderr)
            process.exit(rec.rc)
        except (OSError, asyncssh.Error):
            pass  # the client went away

    return handle


async def start_server(farm: VMFarm, vm: EmulatedVM, sock: Any) -> asyncssh.SSHAcceptor:
    keys = [asyncssh.import_private_key(k) for k in vm.cloudinit.host_keys]
    servers: dict[Any, VMSSHServer] = {}

    def factory() -> VMSSHServer:
        server = VMSSHServer(vm)
        original = server.connection_made

        def made(conn: asyncssh.SSHServerConnection) -> None:
            servers[conn] = server
            original(conn)

        server.connection_made = made  # type: ignore[method-assign]
        return server

    root = bytes(str(vm.fs.root), "utf-8")
    return await asyncssh.create_server(
        factory,
        sock=sock,
        server_host_keys=keys,
        process_factory=make_process_handler(farm, vm, servers),
        sftp_factory=lambda chan: _SFTPServer(chan, chroot=root),
        encoding=None,
        x11_forwarding=False,
        agent_forwarding=False,
        allow_scp=False,
        line_editor=False,
        login_timeout=30,
    )
