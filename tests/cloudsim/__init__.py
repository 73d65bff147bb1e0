"""cloudsim: wire-faithful local simulators of the Linode, DigitalOcean and Scaleway APIs.

The real vendor SDKs talk to these over HTTP on 127.0.0.1; see ``tests/conftest_cloudsim.py``
for the pytest fixtures and ``python -m tests.cloudsim linode|digitalocean|scaleway`` to run one
by hand. Importing this package imports no vendor SDK and no OpenAPI machinery (both are loaded
lazily), so it is cheap.
"""

from __future__ import annotations

from .clock import Clock, FakeClock, ScaledClock
from .core import LoopbackAllocator, Reply, Request, SimServer, Violation, running
from .digitalocean import DigitalOceanSim
from .faults import (
    DROP,
    LOST_RESPONSE,
    NO_CAPACITY,
    RATE_LIMIT,
    SERVER_ERROR,
    SLOW,
    STUCK,
    VANISH,
    Fault,
    FaultPlan,
)
from .ledger import GONE, InstanceRecord, Ledger, RequestLog, RequestRecord
from .linode import LinodeSim
from .netguard import NetGuard, loopback_only
from .scaleway import ScalewaySim

SIMULATORS: dict[str, type[SimServer]] = {
    "linode": LinodeSim,
    "digitalocean": DigitalOceanSim,
    "scaleway": ScalewaySim,
}

__all__ = [
    "DROP",
    "GONE",
    "LOST_RESPONSE",
    "NO_CAPACITY",
    "RATE_LIMIT",
    "SERVER_ERROR",
    "SIMULATORS",
    "SLOW",
    "STUCK",
    "VANISH",
    "Clock",
    "DigitalOceanSim",
    "FakeClock",
    "Fault",
    "FaultPlan",
    "InstanceRecord",
    "Ledger",
    "LinodeSim",
    "LoopbackAllocator",
    "NetGuard",
    "Reply",
    "Request",
    "RequestLog",
    "RequestRecord",
    "ScaledClock",
    "ScalewaySim",
    "SimServer",
    "Violation",
    "loopback_only",
    "running",
]
