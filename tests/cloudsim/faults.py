"""Fault injection: make the Nth call to an endpoint fail the way the real clouds fail.

    sim.faults.add(method="POST", path="/v4/linode/instances", on_call=1, kind="no_capacity")
    sim.faults.add(path="/v4/linode/instances/*", kind="429", retry_after=1, times=2)

Each fault counts the calls that match it (method and path); it fires on calls ``on_call`` to
``on_call + times - 1`` (``times=None``: every matching call from ``on_call`` on;
``on_call=None``: every matching call). The first firing fault wins; every matching fault
still counts the call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .ledger import path_matches

RATE_LIMIT = "rate_limit"  # 429 + Retry-After, in the vendor's error shape
SERVER_ERROR = "server_error"  # 500 (or status=502/503), in the vendor's error shape
DROP = "drop"  # close the socket without any response, before processing
SLOW = "slow"  # sleep ``delay`` seconds (bounded), then answer normally
NO_CAPACITY = "no_capacity"  # the vendor's own "no capacity / size unavailable / out of stock"
LOST_RESPONSE = "lost_response"  # process the request (instance recorded), then drop the socket
STUCK = "stuck"  # on a create (or Scaleway poweron): the instance never leaves its first state
VANISH = "vanish"  # delete the instance named in the path (or target_id) behind the client's back

KINDS = frozenset({RATE_LIMIT, SERVER_ERROR, DROP, SLOW, NO_CAPACITY, LOST_RESPONSE, STUCK, VANISH})

#: Shorthands: kind="429" is a rate limit, kind="502" a server error with that status.
ALIASES: dict[str, tuple[str, int]] = {
    "429": (RATE_LIMIT, 429),
    "500": (SERVER_ERROR, 500),
    "502": (SERVER_ERROR, 502),
    "503": (SERVER_ERROR, 503),
}

#: Upper bound for SLOW, so a typo cannot hang a test run.
MAX_DELAY = 30.0


@dataclass
class Fault:
    kind: str
    method: str | None = None
    path: str | None = None
    on_call: int | None = 1
    times: int | None = 1
    status: int | None = None
    retry_after: int = 1
    delay: float = 1.0
    message: str | None = None
    #: For VANISH when the path names no instance (e.g. a list call): the instance to delete.
    target_id: str | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and path_matches(
            self.path, path
        )

    def _fires_on(self, call: int) -> bool:
        if self.on_call is None:
            return True
        if call < self.on_call:
            return False
        return self.times is None or call < self.on_call + self.times


class FaultPlan:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(
        self,
        *,
        kind: str,
        method: str | None = None,
        path: str | None = None,
        on_call: int | None = 1,
        times: int | None = 1,
        **options: Any,
    ) -> Fault:
        status = options.pop("status", None)
        if kind in ALIASES:
            kind, status = ALIASES[kind][0], status or ALIASES[kind][1]
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(KINDS | set(ALIASES))}")
        if kind == SERVER_ERROR and status is None:
            status = 500
        if kind == SERVER_ERROR and status not in (500, 502, 503, 504):
            raise ValueError("server_error status must be 500, 502, 503 or 504")
        delay = float(options.pop("delay", 1.0))
        if not 0 <= delay <= MAX_DELAY:
            raise ValueError(f"delay must be within 0..{MAX_DELAY} s")
        fault = Fault(
            kind=kind,
            method=method.upper() if method else None,
            path=path,
            on_call=on_call,
            times=times,
            status=status,
            delay=delay,
            **options,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def check(self, method: str, path: str) -> Fault | None:
        """Count this call against every matching fault; return the first that fires."""
        chosen = None
        with self._lock:
            for f in self._faults:
                if not f.matches(method, path):
                    continue
                f.seen += 1
                if chosen is None and f._fires_on(f.seen):
                    f.fired += 1
                    chosen = f
        return chosen

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def unfired(self) -> list[Fault]:
        """Faults that never fired: usually a test whose path or method does not match."""
        return [f for f in self.faults if f.fired == 0]
