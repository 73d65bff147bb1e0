"""Running commands on the VM with the system OpenSSH client: pinned host key, one master per VM.

Every invocation starts from :func:`ssh_base_args`, which is docs/LIFECYCLE.md ("SSH") option for
option: ``-F none`` (no user or system ssh_config can change anything), BatchMode (never a
prompt), IdentitiesOnly with maider's key, ``StrictHostKeyChecking=yes`` against the session's
own known_hosts (the VM's host key is generated locally and pinned before the first connection;
host key checking is never relaxed), and a ControlMaster so the commands of one session
share one TCP connection. The only addition is ``GlobalKnownHostsFile=/dev/null``: a system-wide
known_hosts must not have a say in which key this VM may present.

Commands go to ssh as argv (never through a local shell). Secrets go on stdin, never in argv
(argv is visible to every local user in ``ps``): :func:`run` refuses a command that contains one.

Failures of ssh itself (exit 255) are classified from ssh's stderr into typed errors:
:class:`HostKeyMismatch` (the wrong machine answers: never retried), :class:`AuthFailed`,
:class:`ConnectionFailed`; a remote command that fails is a :class:`Result` with its exit code, and
:meth:`Result.check` turns that into :class:`CommandFailed`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maider.errors import MaiderError

if TYPE_CHECKING:  # pragma: no cover
    from maider.session.state import SessionRecord, SessionStore

CONNECT_TIMEOUT = 10  # seconds, ssh's own ConnectTimeout
CONTROL_PERSIST = 600  # seconds a master with no client stays up
#: A unix socket path is limited to ~104 bytes (macOS) / 108 (Linux), and ssh first binds a
#: temporary name (the path + "." + 16 random characters) before renaming it into place.
MAX_CONTROL_PATH = 80


# ------------------------------------------------------------------------------------ errors


class SSHError(MaiderError):
    """ssh could not do what was asked. ``stderr`` holds ssh's own message (secrets scrubbed)."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class ConnectionFailed(SSHError):
    """No SSH conversation: refused, timed out, unreachable, closed during the handshake."""


class HostKeyMismatch(SSHError):
    """The host did not present the pinned key: another machine answers at that address."""


class AuthFailed(SSHError):
    """The host refused maider's key."""


class CommandFailed(SSHError):
    """The remote command ran and exited non-zero."""

    def __init__(self, message: str, *, exit_code: int, stderr: str = "", stdout: str = "") -> None:
        super().__init__(message, stderr=stderr)
        self.exit_code = exit_code
        self.stdout = stdout


class CommandTimeout(SSHError):
    """The command (or the connection) did not finish in time; the local ssh was killed."""


# ------------------------------------------------------------------------------------ target


@dataclass(frozen=True, kw_only=True)
class SSHTarget:
    """Where and how to reach one VM. ``control_path`` None: a short per-target socket path."""

    host: str
    port: int = 22
    user: str = "root"
    key_path: Path
    known_hosts_path: Path
    control_path: Path | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def socket(self) -> Path:
        return self.control_path if self.control_path is not None else default_control_path(self)

    def describe(self) -> str:
        return f"{self.destination}:{self.port}" if self.port != 22 else self.destination


def session_target(store: SessionStore, record: SessionRecord, key_path: Path) -> SSHTarget:
    """The target of a session: its recorded address and port, its own pinned known_hosts."""
    if record.ip is None:
        raise MaiderError(f"session {record.label} has no IP address yet (status {record.status.value})")
    return SSHTarget(
        host=record.ip,
        port=record.ssh_port,
        key_path=key_path,
        known_hosts_path=store.known_hosts_path(record.id),
    )


def runtime_dir() -> Path:
    """A private directory for sockets: $MAIDER_RUNTIME_DIR, $XDG_RUNTIME_DIR/maider or /tmp/maider-<uid>.

    Not the platform cache or state dir: on macOS those paths are too long for a unix socket.
    """
    override = os.environ.get("MAIDER_RUNTIME_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir() and os.access(xdg, os.W_OK):
        candidate = Path(xdg) / "maider"
        if len(str(candidate)) <= MAX_CONTROL_PATH - 20:
            return candidate
    return Path(f"/tmp/maider-{os.getuid()}")


def default_control_path(target: SSHTarget, suffix: str = "") -> Path:
    """``<runtime>/ssh/<12 hex>``: one socket per (user, host, port, known_hosts file).

    The known_hosts file is per session, so a recycled IP reached by a new session never reuses
    the master of an old one.
    """
    key = f"{target.user}@{target.host}:{target.port}|{target.known_hosts_path.resolve()}"
    name = hashlib.sha256(key.encode()).hexdigest()[:12] + suffix
    path = runtime_dir() / "ssh" / name
    if len(str(path)) > MAX_CONTROL_PATH:
        path = Path(f"/tmp/maider-{os.getuid()}") / "ssh" / name
    return path


def ensure_socket_dir(directory: Path) -> None:
    """Create the socket directory 0700, refusing one that another user owns.

    ``/tmp/maider-<uid>`` is predictable: another local user could create it first and watch or
    replace the sockets. So both it and its ``ssh`` subdirectory must be ours and private.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    parts = [directory]
    if directory.parent.name.startswith("maider"):
        parts.append(directory.parent)
    for part in parts:
        info = part.stat()
        if info.st_uid != os.getuid():
            raise MaiderError(
                f"{part} belongs to another user: remove it, or set MAIDER_RUNTIME_DIR to a private directory"
            )
        if info.st_mode & 0o077:
            part.chmod(0o700)


# ------------------------------------------------------------------------------------ argv


def ssh_executable() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise MaiderError("ssh not found: install the OpenSSH client (openssh-client / openssh)")
    return found


def ssh_options(
    target: SSHTarget,
    *,
    control_master: str = "auto",
    control_path: Path | None = None,
    control_persist: str = str(CONTROL_PERSIST),
) -> list[str]:
    """The options of docs/LIFECYCLE.md, without the executable and the destination."""
    return [
        "-F",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(target.key_path),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={target.known_hosts_path}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        f"ControlMaster={control_master}",
        "-o",
        f"ControlPath={control_path or target.socket}",
        "-o",
        f"ControlPersist={control_persist}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-p",
        str(target.port),
    ]


def ssh_base_args(
    target: SSHTarget,
    *extra: str,
    control_master: str = "auto",
    control_path: Path | None = None,
    control_persist: str = str(CONTROL_PERSIST),
) -> list[str]:
    """``ssh <options> <extra> user@host``: append the remote command, if any, after this.

    ``extra`` goes before the destination (ssh stops parsing options at the destination). The
    keywords are for the tunnel, which runs its own master (see :mod:`maider.remote.tunnel`).
    """
    options = ssh_options(
        target, control_master=control_master, control_path=control_path, control_persist=control_persist
    )
    return [ssh_executable(), *options, *extra, target.destination]


# ------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self, what: str = "remote command") -> Result:
        """Self if the command succeeded, else :class:`CommandFailed` with the end of stderr."""
        if self.exit_code != 0:
            tail = _tail(self.stderr) or _tail(self.stdout) or "no output"
            raise CommandFailed(
                f"{what} failed on the VM (exit {self.exit_code}): {tail}",
                exit_code=self.exit_code,
                stderr=self.stderr,
                stdout=self.stdout,
            )
        return self


@dataclass(frozen=True)
class _Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def _exec(argv: list[str], *, stdin: bytes | None, timeout: float, detach: bool = False) -> _Completed:
    """The one place that starts ssh (tests wrap it to inspect every argv).

    ``detach``: for ``ssh -f``, whose backgrounded process would inherit our pipes and keep them
    open (and the caller waiting) for its whole life; its stderr goes through a temp file instead.
    """
    if detach:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=timeout,
                check=False,
            )
            err.seek(0)
            return _Completed(proc.returncode, b"", err.read())
    done = subprocess.run(
        argv,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return _Completed(done.returncode, done.stdout, done.stderr)


def _refuse_secrets_in_argv(argv: Sequence[str], secrets: Sequence[str]) -> None:
    for secret in secrets:
        if secret and any(secret in arg for arg in argv):
            # A programming error, not a user one: say so without echoing the secret.
            raise ValueError("a secret would appear in the ssh command line; send it on stdin instead")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def run(
    target: SSHTarget,
    command: str,
    *,
    stdin: bytes | None = None,
    timeout: float,
    secrets: Sequence[str] = (),
) -> Result:
    """Run ``command`` on the VM (through the session's master) and return its result.

    ``stdin`` is fed to the command (use it for secrets). ``secrets`` are strings that must never
    appear in argv (checked) and are scrubbed from the output. Raises :class:`ConnectionFailed`,
    :class:`HostKeyMismatch`, :class:`AuthFailed` or :class:`CommandTimeout`; a non-zero exit of
    the command itself is returned (see :meth:`Result.check`).
    """
    ensure_socket_dir(target.socket.parent)
    argv = [*ssh_base_args(target, "-T"), command]
    _refuse_secrets_in_argv(argv, secrets)
    try:
        done = _exec(argv, stdin=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(
            f"ssh {target.describe()} {_short(command)!r} did not finish within {timeout:g} s"
        ) from None
    stdout = _scrub(done.stdout.decode("utf-8", "replace"), secrets)
    stderr = _scrub(done.stderr.decode("utf-8", "replace"), secrets)
    if done.returncode == 255:
        error = classify(stderr, target)
        if error is not None:
            raise error
    return Result(done.returncode, stdout, stderr)


_MUX_NOISE = re.compile(r"Control ?[Ss]ocket|mux_client|ControlPath")
_HOST_KEY = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "host key is known for",
)
_AUTH = ("Permission denied", "Too many authentication failures", "No supported authentication methods")
_CONNECTION = re.compile(
    r"Connection refused|Connection timed out|Operation timed out|timed out during banner exchange|"
    r"No route to host|Network is unreachable|Connection reset|Connection closed by|"
    r"kex_exchange_identification|Could not resolve hostname|Broken pipe|Timeout, server|"
    r"Connection to .* closed|connect to host|^ssh: ",
    re.MULTILINE,
)


def classify(stderr: str, target: SSHTarget) -> SSHError | None:
    """The typed error for an ssh exit 255, or None when ssh itself reported nothing wrong
    (then the remote command exited 255)."""
    where = target.describe()
    # ssh warns about a stale control socket and then connects directly: not a failure.
    stderr = "\n".join(line for line in stderr.splitlines() if not _MUX_NOISE.search(line))
    tail = _tail(stderr)
    if any(marker in stderr for marker in _HOST_KEY):
        return HostKeyMismatch(
            f"{where} did not present the host key pinned in {target.known_hosts_path}: another machine "
            "answers at that address (the VM was replaced, or its IP reused). maider will not connect; "
            "check the session with `maider status` and recreate it if the VM is gone",
            stderr=stderr,
        )
    if any(marker in stderr for marker in _AUTH):
        return AuthFailed(
            f"{where} refused maider's SSH key {target.key_path} ({tail}); the VM may not have "
            "finished installing it yet, or it was created with another key",
            stderr=stderr,
        )
    if _CONNECTION.search(stderr):
        return ConnectionFailed(f"cannot reach {where} over SSH: {tail}", stderr=stderr)
    return None


def _tail(text: str) -> str:
    lines = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not line.startswith("@") and not _MUX_NOISE.search(line)
    ]
    return lines[-1] if lines else ""


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


def wait_for_ssh(
    target: SSHTarget,
    deadline: float,
    on_attempt: Callable[[int, SSHError], object] | None = None,
    *,
    interval: float = 2.0,
    retry_auth: bool = True,
) -> int:
    """Wait until the VM answers SSH with the pinned key; returns the number of attempts.

    ``deadline`` is a :func:`time.monotonic` value. Connection failures (refused, timeouts: sshd
    not up yet) are retried until then; so are auth failures when ``retry_auth`` (sshd can start
    before cloud-init has installed the authorized key). :class:`HostKeyMismatch` is raised at
    once: another machine answers, and waiting will not change that. ``on_attempt(n, error)`` is
    called after each failed attempt. The successful attempt leaves the master running.
    """
    attempt = 0
    last: SSHError | None = None
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0 and attempt > 1:
            break
        try:
            run(target, "true", timeout=max(1.0, min(remaining, CONNECT_TIMEOUT + 5.0))).check("ssh probe")
            return attempt
        except HostKeyMismatch:
            raise
        except AuthFailed as exc:
            if not retry_auth:
                raise
            last = exc
        except (ConnectionFailed, CommandTimeout, CommandFailed) as exc:
            last = exc
        if on_attempt is not None:
            on_attempt(attempt, last)
        pause = min(interval, deadline - time.monotonic())
        if pause <= 0:
            break
        time.sleep(pause)
    assert last is not None
    if isinstance(last, AuthFailed):
        raise last
    raise ConnectionFailed(
        f"{target.describe()} did not answer SSH in time ({attempt} attempts); last error: {last}",
        stderr=last.stderr,
    )


# ------------------------------------------------------------------------------------ master


def _control(target: SSHTarget, operation: str, *extra: str, control_path: Path | None = None) -> _Completed:
    argv = ssh_base_args(target, "-O", operation, *extra, control_path=control_path or target.socket)
    return _exec(argv, stdin=None, timeout=CONNECT_TIMEOUT + 5)


def master_pid(target: SSHTarget, *, control_path: Path | None = None) -> int | None:
    """The pid of the running master (``ssh -O check``), or None when there is none."""
    path = control_path or target.socket
    if not path.exists():
        return None
    done = _control(target, "check", control_path=path)
    match = re.search(rb"pid=(\d+)", done.stderr + done.stdout)
    return int(match.group(1)) if done.returncode == 0 and match else None


def close_master(target: SSHTarget, *, control_path: Path | None = None) -> bool:
    """Stop the master (``ssh -O exit``): True if one was running."""
    path = control_path or target.socket
    if not path.exists():
        return False
    done = _control(target, "exit", control_path=path)
    if done.returncode != 0:
        # The master died and left its socket behind: remove it so the next run starts afresh.
        path.unlink(missing_ok=True)
        return False
    return True
