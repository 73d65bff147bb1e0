"""SSH key pairs maider generates with the system ``ssh-keygen``, and the pinned known_hosts line.

Two kinds of key (docs/LIFECYCLE.md, "Local files"):

- the user key maider manages, ``<data>/ssh/id_ed25519`` (+ ``.pub``): created once, reused by
  every session, uploaded to the provider and put in the VM's authorized keys;
- one host key pair per session, ``<state>/sessions/<id>/host_key`` (+ ``.pub``): generated here,
  delivered to the VM in the user-data, and pinned in the session's ``known_hosts`` before the
  first connection. So the very first SSH connection is already verified: no trust on first use,
  and host key checking is never relaxed.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from maider import paths
from maider.errors import MaiderError
from maider.sshkeys import parse_public_key

USER_KEY_COMMENT = "maider"


class SSHKeyError(MaiderError):
    """ssh-keygen is missing or failed."""


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    public_key: str  # the OpenSSH line, "ssh-ed25519 AAAA… comment"


def user_key_path() -> Path:
    """The private key maider manages (its public half is this path + ``.pub``)."""
    return paths.data_dir() / "ssh" / "id_ed25519"


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SSHKeyError("ssh-keygen not found: install the OpenSSH client (openssh-client / openssh)")
    return found


def _pub_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def generate_keypair(path: Path, comment: str) -> KeyPair:
    """Create a new ed25519 pair at ``path`` and ``path.pub`` (both 0600). Refuses to overwrite.

    The pair is generated in a private temp directory next to ``path`` and then moved into
    place, so a crash never leaves a half-written key where maider will look for one.
    """
    public = _pub_path(path)
    if path.exists() or public.exists():
        raise SSHKeyError(f"{path} already exists; refusing to overwrite an SSH key")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keygen-") as tmp:
        target = Path(tmp) / "key"
        try:
            proc = subprocess.run(
                [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(target)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SSHKeyError(f"ssh-keygen failed to create {path}: {exc}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SSHKeyError(
                f"ssh-keygen failed to create {path}: {detail[-1] if detail else proc.returncode}"
            )
        for produced in (target, _pub_path(target)):
            produced.chmod(0o600)
        # Public half first: a crash in between leaves a public key without its private one,
        # which ensure_user_key() treats as "no key" and regenerates.
        _pub_path(target).replace(public)
        target.replace(path)
    return KeyPair(path, public, public.read_text(encoding="utf-8").strip())


def read_keypair(path: Path) -> KeyPair:
    public = _pub_path(path)
    return KeyPair(path, public, public.read_text(encoding="utf-8").strip())


def ensure_user_key(path: Path | None = None) -> KeyPair:
    """The user key maider manages, created on first use (0600, directory 0700)."""
    from filelock import FileLock

    path = path or user_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    # Two `maider up` at once must not both create (and upload) a key: one of them would lose.
    with FileLock(str(path.parent / ".lock"), timeout=60):
        public = _pub_path(path)
        if path.exists() and not public.exists():
            _restore_public(path)
        if path.exists():
            path.chmod(0o600)
            return read_keypair(path)
        public.unlink(missing_ok=True)  # a public key whose private half is gone is useless
        return generate_keypair(path, USER_KEY_COMMENT)


def _restore_public(path: Path) -> None:
    proc = subprocess.run(
        [_ssh_keygen(), "-y", "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise SSHKeyError(
            f"{path} exists but ssh-keygen cannot read it ({proc.stderr.strip()}); "
            "move it away to let maider create a new key"
        )
    from maider.session.state import atomic_write

    atomic_write(_pub_path(path), proc.stdout.strip() + f" {USER_KEY_COMMENT}\n")


def generate_host_key(path: Path, session_id: str) -> KeyPair:
    """The VM host key pair of one session (``<state>/sessions/<id>/host_key``)."""
    return generate_keypair(path, f"maider-{session_id}")


def known_hosts_line(ip: str, port: int, host_public_key: str) -> str:
    """The known_hosts line that pins ``host_public_key`` for ``ip:port``.

    OpenSSH looks hosts up as ``[ip]:port`` when the port is not 22, and as the bare address
    otherwise; the key's comment is dropped.
    """
    key_type, blob, _ = parse_public_key(host_public_key)
    host = ip if port == 22 else f"[{ip}]:{port}"
    return f"{host} {key_type} {base64.b64encode(blob).decode()}"


def write_known_hosts(path: Path, ip: str, port: int, host_public_key: str) -> None:
    """Pin the VM's host key: the session's known_hosts holds exactly this one line (0600)."""
    from maider.session.state import atomic_write

    atomic_write(path, known_hosts_line(ip, port, host_public_key) + "\n")
