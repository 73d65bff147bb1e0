"""A guard that keeps a test's traffic on the loopback interface.

While active, name lookups of anything but loopback names fail (as if DNS had no answer), and
socket connections to non-loopback addresses are refused. Every attempt is recorded in
``blocked`` so a fixture can fail the test that tried: a stray request to api.linode.com would
otherwise be a silent, real-network dependency (and python-digitalocean makes one as soon as
DIGITALOCEAN_END_POINT is forgotten).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_loopback_host(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetGuard:
    def __init__(self) -> None:
        self.blocked: list[str] = []
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}

    def _note(self, what: str) -> None:
        with self._lock:
            self.blocked.append(what)

    def clear(self) -> list[str]:
        with self._lock:
            out, self.blocked = self.blocked, []
        return out

    def install(self) -> None:
        if self._saved:
            return
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex
        guard = self

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _is_loopback_host(host):
                guard._note(f"lookup {host}")
                raise socket.gaierror(socket.EAI_NONAME, f"cloudsim: {host} is off-limits (loopback only)")
            return real_getaddrinfo(host, *args, **kwargs)

        def _check(sock: socket.socket, address: Any) -> bool:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback_host(address[0]):
                guard._note(f"connect {address[0]}:{address[1]}")
                return False
            return True

        def connect(sock: socket.socket, address: Any) -> None:
            if not _check(sock, address):
                raise OSError(errno.ENETUNREACH, f"cloudsim: {address[0]} is off-limits (loopback only)")
            real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if not _check(sock, address):
                return errno.ENETUNREACH
            return int(real_connect_ex(sock, address))

        self._saved = {
            "getaddrinfo": real_getaddrinfo,
            "connect": real_connect,
            "connect_ex": real_connect_ex,
        }
        # setattr: the patched functions are wider than typeshed's signatures, on purpose.
        setattr(socket, "getaddrinfo", getaddrinfo)  # noqa: B010
        setattr(socket.socket, "connect", connect)  # noqa: B010
        setattr(socket.socket, "connect_ex", connect_ex)  # noqa: B010

    def uninstall(self) -> None:
        if not self._saved:
            return
        setattr(socket, "getaddrinfo", self._saved["getaddrinfo"])  # noqa: B010
        setattr(socket.socket, "connect", self._saved["connect"])  # noqa: B010
        setattr(socket.socket, "connect_ex", self._saved["connect_ex"])  # noqa: B010
        self._saved = {}


@contextlib.contextmanager
def loopback_only() -> Iterator[NetGuard]:
    guard = NetGuard()
    guard.install()
    try:
        yield guard
    finally:
        guard.uninstall()
