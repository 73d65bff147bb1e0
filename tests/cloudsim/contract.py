"""A maider.testing.CloudDouble over any of the simulators (the contract suite's view of a cloud)."""

from __future__ import annotations

from typing import Any

from .clock import FakeClock
from .core import SimServer
from .ledger import InstanceRecord


class SimCloud:
    """Maps the contract's operation names to (method, path pattern) in the simulator's log.

    Subclass and override `public_id`/`sim_id` when the provider's instance ids differ from the
    simulator's (Scaleway's "zone/uuid").
    """

    def __init__(
        self,
        sim: SimServer,
        clock: FakeClock,
        operations: dict[str, tuple[str | None, str]],
        secrets: list[str],
    ) -> None:
        self.sim, self.clock, self.operations, self.secrets = sim, clock, operations, secrets

    def public_id(self, record: InstanceRecord) -> str:
        return str(record.id)

    def sim_id(self, instance_id: str) -> str:
        return instance_id

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def running_ids(self) -> set[str]:
        return {self.public_id(r) for r in self.sim.ledger.running(self.sim.vendor)}

    def fail(self, operation: str, kind: str, *, on_call: int = 1, times: int = 1) -> None:
        method, path = self.operations[operation]
        # Retry-After 0 keeps the suite fast; that the header is honoured is tested per provider.
        extra: dict[str, Any] = {"retry_after": 0} if kind in ("rate_limit", "429") else {}
        self.sim.faults.add(method=method, path=path, kind=kind, on_call=on_call, times=times, **extra)

    def vanish(self, instance_id: str) -> None:
        self.sim.vanish(self.sim_id(instance_id))

    def request_texts(self) -> list[str]:
        return [e.request_text() for e in self.sim.log]

    def count(self, operation: str) -> int:
        method, path = self.operations[operation]
        return self.sim.log.count(method, path)
