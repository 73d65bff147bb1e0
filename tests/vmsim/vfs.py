"""The file system of an emulated VM: a directory on the host that stands for the VM's ``/``.

Every VM path goes through :meth:`VMFS.host`, which normalises it as an absolute POSIX path
first (``/../etc`` is ``/etc``), so nothing the VM is told to write lands outside its root.
File modes are real (``install -m 600`` gives a 0600 host file); owners are only recorded.
"""

from __future__ import annotations

import os
import posixpath
import threading
from pathlib import Path

#: Files a fresh Ubuntu cloud image has that the emulated commands or maider may read.
BASE_FILES: dict[str, str] = {
    "/etc/os-release": (
        'PRETTY_NAME="Ubuntu 24.04.3 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\n'
        'VERSION="24.04.3 LTS (Noble Numbat)"\nVERSION_CODENAME=noble\nID=ubuntu\nID_LIKE=debian\n'
    ),
    "/etc/hostname": "localhost\n",
}
BASE_DIRS = (
    "/root",
    "/home",
    "/tmp",
    "/etc/ssh",
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/opt",
    "/var/log",
    "/var/lib/cloud/instance",
    "/run/cloud-init",
    "/dev",
)


class VMFS:
    def __init__(self, root: Path) -> None:
        self.root = root
        #: VM path -> "user:group", for files the emulator created with an owner.
        self.owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        for d in BASE_DIRS:
            self.host(d).mkdir(parents=True, exist_ok=True)
        for path, text in BASE_FILES.items():
            target = self.host(path)
            if not target.exists():
                target.write_text(text)

    @staticmethod
    def normalize(path: str, cwd: str = "/") -> str:
        joined = posixpath.join(cwd, path) if not path.startswith("/") else path
        norm = posixpath.normpath(joined)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        return norm

    def host(self, path: str, cwd: str = "/") -> Path:
        norm = self.normalize(path, cwd)
        rel = norm.lstrip("/")
        return self.root / rel if rel else self.root

    def exists(self, path: str, cwd: str = "/") -> bool:
        return self.host(path, cwd).exists()

    def is_file(self, path: str, cwd: str = "/") -> bool:
        return self.host(path, cwd).is_file()

    def is_dir(self, path: str, cwd: str = "/") -> bool:
        return self.host(path, cwd).is_dir()

    def read_bytes(self, path: str, cwd: str = "/") -> bytes:
        return self.host(path, cwd).read_bytes()

    def read_text(self, path: str, cwd: str = "/") -> str:
        return self.host(path, cwd).read_text(errors="replace")

    def write_bytes(
        self,
        path: str,
        data: bytes,
        *,
        mode: int | None = None,
        append: bool = False,
        cwd: str = "/",
        owner: str | None = None,
        replace: bool = False,
    ) -> Path:
        """Write a file (its parent must exist). ``replace`` unlinks first, as install(1) does,
        so the content never sits in a file with the old mode."""
        target = self.host(path, cwd)
        if not target.parent.is_dir():
            raise FileNotFoundError(path)
        if target.is_dir():
            raise IsADirectoryError(path)
        if replace and target.exists():
            target.unlink()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        fd = os.open(target, flags, 0o600 if mode is None else mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        if mode is not None:
            target.chmod(mode)
        if owner is not None:
            with self._lock:
                self.owners[self.normalize(path, cwd)] = owner
        return target

    def mkdir(self, path: str, *, parents: bool = False, mode: int = 0o755, cwd: str = "/") -> None:
        target = self.host(path, cwd)
        if parents:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.mkdir()
        target.chmod(mode)

    def mode(self, path: str, cwd: str = "/") -> int:
        return self.host(path, cwd).stat().st_mode & 0o7777

    def chmod(self, path: str, mode: int, cwd: str = "/") -> None:
        self.host(path, cwd).chmod(mode)

    def chown(self, path: str, owner: str, cwd: str = "/") -> None:
        if not self.exists(path, cwd):
            raise FileNotFoundError(path)
        with self._lock:
            self.owners[self.normalize(path, cwd)] = owner

    def owner(self, path: str, cwd: str = "/") -> str:
        with self._lock:
            return self.owners.get(self.normalize(path, cwd), "root:root")
