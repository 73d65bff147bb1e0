"""What the simulators remember: every instance and volume ever created, and every request received.

The ledger is how a test proves that maider cleaned up after itself (``leaked()`` for instances,
``leaked_volumes()`` for block volumes a deleted server left behind), what a run would have cost
(``cost()``), and what user data reached the cloud. The request log is how a test counts API
calls and scans the wire for secrets; it never stores the auth header value, only whether the
request was authenticated.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock

#: Headers that carry credentials: dropped from the request log (see RequestRecord.authenticated).
SECRET_HEADERS = frozenset({"authorization", "x-auth-token", "cookie", "proxy-authorization"})

#: The pseudo-state of an instance the API no longer knows (it answers 404).
GONE = "gone"


@dataclass(frozen=True)
class BillingPolicy:
    """How a vendor turns seconds into money (simplified, but per the vendors' public rules)."""

    #: "create": billed from creation until deletion, even when off (Linode, DigitalOcean).
    #: "power": billed only while powered on (Scaleway GPU instances, per the notes §4.3).
    basis: str = "create"
    #: Billing granularity in seconds: Linode bills by the started hour, DO by the second,
    #: Scaleway GPU instances by the started minute.
    granularity: int = 1
    #: Minimum billed seconds (DO: 60 s).
    minimum: int = 0


LINODE_BILLING = BillingPolicy(basis="create", granularity=3600)
DO_BILLING = BillingPolicy(basis="create", granularity=1, minimum=60)
SCALEWAY_BILLING = BillingPolicy(basis="power", granularity=60)

#: Scaleway Block Storage (SBS) at 5K IOPS, EUR per GB-hour, excluding VAT. An approximation:
#: Scaleway lists about €0.086 per GB and month (730 h), i.e. ~€0.000118/GB/h; the real bill
#: is hourly and the price list changes. A volume is billed from creation until its deletion,
#: attached or not, which is exactly why a detached root volume must not be forgotten.
SBS_5K_EUR_PER_GB_HOUR = 0.000118


@dataclass
class InstanceRecord:
    """One instance as the simulated vendor sees it; its state is computed from the clock."""

    vendor: str
    id: str
    type: str
    region: str
    name: str
    tags: list[str]
    price_per_hour: float
    currency: str
    created_at: float
    clock: Clock = field(repr=False, compare=False)
    billing: BillingPolicy = field(default_factory=BillingPolicy)
    image: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    #: Where an emulated VM's sshd listens (None means the default, 22). Kept for the SSH emulator.
    ssh_port: int | None = None
    #: User data as text, decoded (Linode sends base64, DO plain text, Scaleway a separate PATCH).
    user_data: str | None = None
    #: (time, state) pairs in time order; the state at time t is the last one with time <= t.
    transitions: list[tuple[float, str]] = field(default_factory=list)
    #: When the deletion was accepted (billing stops there), and by whom: "client" or "vendor".
    deleted_at: float | None = None
    deleted_by: str | None = None
    #: True when a fault froze the instance in its first state.
    stuck: bool = False
    #: [start, end] power-on intervals, for power-based billing (end None while running).
    power_intervals: list[list[float | None]] = field(default_factory=list)
    #: The vendor's name for "up and reachable" ("running"; DigitalOcean says "active").
    ready_state: str = "running"
    #: Vendor-specific data the simulator needs to render the object (firewall ids, etc.).
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- lifecycle -------------------------------------------------------------------------

    def schedule(self, at: float, state: str) -> None:
        self.transitions.append((at, state))
        self.transitions.sort(key=lambda t: t[0])

    def cancel_after(self, at: float) -> None:
        """Forget transitions planned after ``at`` (a new action replaces the old plan)."""
        self.transitions = [t for t in self.transitions if t[0] <= at]

    def state_at(self, when: float) -> str:
        state = GONE
        for at, st in self.transitions:
            if at <= when:
                state = st
            else:
                break
        return state

    @property
    def state(self) -> str:
        return self.state_at(self.clock.now())

    @property
    def exists(self) -> bool:
        """Whether the API still knows the instance (does not answer 404)."""
        return self.state != GONE

    @property
    def alive(self) -> bool:
        """Exists and its deletion was never accepted: a leak if nobody tracks it."""
        return self.deleted_at is None and self.exists

    def first_time_in(self, state: str) -> float | None:
        now = self.clock.now()
        for at, st in self.transitions:
            if at > now:
                break
            if st == state:
                return at
        return None

    @property
    def last_change(self) -> float:
        """When the visible state last changed (planned future changes do not count)."""
        now = self.clock.now()
        past = [at for at, _ in self.transitions if at <= now]
        return past[-1] if past else self.created_at

    @property
    def running_at(self) -> float | None:
        return self.first_time_in(self.ready_state)

    @property
    def gone_at(self) -> float | None:
        return self.first_time_in(GONE)

    # -- billing ---------------------------------------------------------------------------

    def billed_seconds(self, now: float | None = None) -> float:
        now = self.clock.now() if now is None else now
        end = now if self.deleted_at is None else min(now, self.deleted_at)
        if self.billing.basis == "power":
            total = 0.0
            for start, stop in self.power_intervals:
                assert start is not None
                stop_at = end if stop is None else min(stop, end)
                total += max(0.0, stop_at - start)
        else:
            total = max(0.0, end - self.created_at)
        if total <= 0:
            return 0.0
        total = max(total, float(self.billing.minimum))
        gran = self.billing.granularity
        return math.ceil(total / gran) * gran if gran > 1 else total

    def cost(self, now: float | None = None) -> float:
        return round(self.billed_seconds(now) / 3600.0 * self.price_per_hour, 6)

    def summary(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "id": self.id,
            "type": self.type,
            "region": self.region,
            "name": self.name,
            "tags": list(self.tags),
            "state": self.state,
            "ipv4": self.ipv4,
            "ssh_port": self.ssh_port,
            "price_per_hour": self.price_per_hour,
            "currency": self.currency,
            "created_at": self.created_at,
            "running_at": self.running_at,
            "deleted_at": self.deleted_at,
            "deleted_by": self.deleted_by,
            "billed_seconds": self.billed_seconds(),
            "cost": self.cost(),
            "user_data": self.user_data,
        }


@dataclass
class VolumeRecord:
    """One block storage volume as the simulated vendor sees it (Scaleway SBS).

    Its status is computed from the clock and from the server it was created with: ``in_use``
    while that server exists and for ``detach_delay`` seconds after it is gone (the real API
    shows the reference "detaching" for about a second, scaleway-cli cassette 2025-06-11), then
    ``available``: detached, and still billed until someone deletes it.
    """

    vendor: str
    id: str
    zone: str
    name: str
    size: int  # bytes
    project: str
    tags: list[str]
    created_at: float
    clock: Clock = field(repr=False, compare=False)
    price_per_gb_hour: float = SBS_5K_EUR_PER_GB_HOUR
    currency: str = "EUR"
    #: The server the volume was created attached to (the root volume of a server create).
    server: InstanceRecord | None = field(default=None, repr=False)
    #: Seconds between the server being gone and the volume reading as detached.
    detach_delay: float = 0.0
    #: When the deletion was accepted (billing stops there), and by whom ("client" or "vendor").
    deleted_at: float | None = None
    deleted_by: str | None = None
    #: Vendor-specific data the simulator needs to render the object.
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def detached_at(self) -> float | None:
        """When the volume stopped being attached (None while it is, or was never attached)."""
        if self.server is None:
            return None
        gone = self.server.gone_at
        if gone is None:
            return None
        at = gone + self.detach_delay
        return at if at <= self.clock.now() else None

    @property
    def attachment(self) -> str | None:
        """The state of its reference to the server: "attached", "detaching", or None (detached)."""
        if self.server is None or self.deleted_at is not None:
            return None
        if self.server.gone_at is None:
            return "attached"
        return None if self.detached_at is not None else "detaching"

    @property
    def status(self) -> str:
        if self.deleted_at is not None:
            return "deleted"
        return "in_use" if self.attachment is not None else "available"

    @property
    def exists(self) -> bool:
        """Whether the API still knows the volume (does not answer 404)."""
        return self.deleted_at is None

    def billed_seconds(self, now: float | None = None) -> float:
        now = self.clock.now() if now is None else now
        end = now if self.deleted_at is None else min(now, self.deleted_at)
        return max(0.0, end - self.created_at)

    def cost(self, now: float | None = None) -> float:
        gb = self.size / 1e9
        return round(self.billed_seconds(now) / 3600.0 * gb * self.price_per_gb_hour, 6)

    def summary(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "id": self.id,
            "zone": self.zone,
            "name": self.name,
            "size": self.size,
            "tags": list(self.tags),
            "status": self.status,
            "server": self.server.id if self.server is not None else None,
            "created_at": self.created_at,
            "detached_at": self.detached_at,
            "deleted_at": self.deleted_at,
            "deleted_by": self.deleted_by,
            "price_per_gb_hour": self.price_per_gb_hour,
            "currency": self.currency,
            "billed_seconds": self.billed_seconds(),
            "cost": self.cost(),
        }


class Ledger:
    """Every instance and volume ever created, across one or several simulators (thread-safe)."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], InstanceRecord] = {}
        self._volumes: dict[tuple[str, str], VolumeRecord] = {}
        self._lock = threading.RLock()

    def add(self, record: InstanceRecord) -> None:
        with self._lock:
            self._records[(record.vendor, record.id)] = record

    def get(self, instance_id: str | int, vendor: str | None = None) -> InstanceRecord:
        key = str(instance_id)
        with self._lock:
            hits = [r for (v, i), r in self._records.items() if i == key and vendor in (None, v)]
        if not hits:
            raise KeyError(f"no instance {key!r} in the ledger")
        return hits[0]

    def __iter__(self) -> Iterator[InstanceRecord]:
        with self._lock:
            return iter(list(self._records.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def instances(self, vendor: str | None = None) -> list[InstanceRecord]:
        return [r for r in self if vendor in (None, r.vendor)]

    def running(self, vendor: str | None = None) -> list[InstanceRecord]:
        """Instances that still exist and were never deleted (billing goes on)."""
        return [r for r in self.instances(vendor) if r.alive]

    def leaked(self, known_ids: Iterable[str | int] = (), vendor: str | None = None) -> list[InstanceRecord]:
        """Alive instances that the caller does not know about (ids compared as strings)."""
        known = {str(i) for i in known_ids}
        return [r for r in self.running(vendor) if r.id not in known]

    def with_tag(self, tag: str) -> list[InstanceRecord]:
        return [r for r in self if tag in r.tags]

    # -- volumes ---------------------------------------------------------------------------

    def add_volume(self, volume: VolumeRecord) -> None:
        with self._lock:
            self._volumes[(volume.vendor, volume.id)] = volume

    def volume(self, volume_id: str, vendor: str | None = None) -> VolumeRecord:
        with self._lock:
            hits = [v for (vd, i), v in self._volumes.items() if i == volume_id and vendor in (None, vd)]
        if not hits:
            raise KeyError(f"no volume {volume_id!r} in the ledger")
        return hits[0]

    def volumes(self, vendor: str | None = None) -> list[VolumeRecord]:
        with self._lock:
            return [v for v in self._volumes.values() if vendor in (None, v.vendor)]

    def leaked_volumes(self, known_ids: Iterable[str] = (), vendor: str | None = None) -> list[VolumeRecord]:
        """Volumes never deleted (so still billed) that the caller does not know about.

        Attached or not: a test that deleted all its servers expects ``[]``. (A volume still
        attached to a live server is listed too; ``detached_volumes()`` lists only orphans.)
        """
        known = {str(i) for i in known_ids}
        return [v for v in self.volumes(vendor) if v.deleted_at is None and v.id not in known]

    def detached_volumes(self, vendor: str | None = None) -> list[VolumeRecord]:
        """Undeleted volumes whose server is gone: billed, and attached to nothing."""
        return [v for v in self.leaked_volumes(vendor=vendor) if v.status == "available"]

    def total_cost(self, currency: str | None = None) -> float:
        """What every instance and volume cost so far."""
        instances = sum(r.cost() for r in self if currency in (None, r.currency))
        volumes = sum(v.cost() for v in self.volumes() if currency in (None, v.currency))
        return round(instances + volumes, 6)

    def summary(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self]

    def volumes_summary(self) -> list[dict[str, Any]]:
        return [v.summary() for v in self.volumes()]


# ------------------------------------------------------------------------------------------
# Request log
# ------------------------------------------------------------------------------------------


def path_matches(pattern: str | None, path: str) -> bool:
    """``None`` matches all; ``^…`` is a regex; otherwise a glob (``*`` spans segments).

    Trailing slashes are ignored on both sides, because python-digitalocean adds them.
    """
    if pattern is None:
        return True
    if pattern.startswith("^"):
        return re.search(pattern, path) is not None
    norm_pat = pattern.rstrip("/") or "/"
    norm_path = path.rstrip("/") or "/"
    return fnmatch.fnmatchcase(norm_path, norm_pat)


@dataclass
class RequestRecord:
    seq: int
    vendor: str
    at: float  # simulated clock
    method: str
    path: str
    query: dict[str, list[str]]
    #: Request headers, lower-cased names, credentials removed.
    headers: dict[str, str]
    #: Parsed JSON body when it was JSON, else the text (or None when empty).
    body: Any
    body_text: str
    #: Whether a well-formed credential header was present (its value is never stored).
    authenticated: bool
    client: str
    status: int | None = None
    response: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)
    fault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "vendor": self.vendor,
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body_text,
            "authenticated": self.authenticated,
            "status": self.status,
            "response": self.response,
            "fault": self.fault,
        }

    def request_text(self) -> str:
        """Everything the client sent (minus credentials), as one string for secret scans."""
        return json.dumps(
            {"path": self.path, "query": self.query, "headers": self.headers, "body": self.body_text},
            ensure_ascii=False,
        )


class RequestLog:
    """Every request a simulator received, in arrival order (thread-safe)."""

    def __init__(self) -> None:
        self._entries: list[RequestRecord] = []
        self._lock = threading.Lock()

    def append(self, rec: RequestRecord) -> None:
        with self._lock:
            self._entries.append(rec)

    def next_seq(self) -> int:
        with self._lock:
            return len(self._entries) + 1

    @property
    def entries(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._entries)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def find(self, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        m = method.upper() if method else None
        return [e for e in self if m in (None, e.method) and path_matches(path, e.path)]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.find(method, path))

    def containing(self, needle: str, *, include_responses: bool = False) -> list[RequestRecord]:
        """Requests whose path, query, headers or body contain ``needle`` (secret scans)."""
        hits = []
        for e in self:
            text = e.request_text()
            if include_responses:
                text += json.dumps(e.response, ensure_ascii=False, default=str)
            if needle in text:
                hits.append(e)
        return hits

    def contains(self, needle: str, *, include_responses: bool = False) -> bool:
        return bool(self.containing(needle, include_responses=include_responses))

    def to_json(self) -> str:
        return json.dumps([e.to_dict() for e in self], indent=1, ensure_ascii=False, default=str)
