"""API calls per provider operation, measured against the cloud simulators.

Run from the repository root with every provider installed (e.g. `uv run python bench/api_calls.py`).
Each operation runs through the real SDK against tests/cloudsim; the figure is the number of
HTTP requests the simulator received for it. Fewer calls mean fewer chances to hit a rate limit
and faster commands. Prints a table; exits 0 unless an operation fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maider.provider import InstanceStatus, Provider
from maider.testing import TEST_PUBLIC_KEY, USER_DATA

SETUPS: dict[str, tuple[str, str, str]] = {
    # provider id: (settings class path, region, type)
    "linode": ("maider_linode.settings:LinodeSettings", "us-east", "g1-gpu-rtx6000-1"),
    "digitalocean": ("maider_digitalocean.settings:DigitalOceanSettings", "tor1", "gpu-h100x1-80gb"),
    "scaleway": ("maider_scaleway.settings:ScalewaySettings", "fr-par-2", "L4-1-24G"),
}


def _settings(pid: str, sim: Any) -> Any:
    import importlib

    from tests.cloudsim.testing import DO_TOKEN, SCW_ACCESS_KEY, SCW_PROJECT_ID, SCW_SECRET_KEY

    module, _, cls_name = SETUPS[pid][0].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if pid == "scaleway":
        return cls(
            access_key=SCW_ACCESS_KEY, secret_key=SCW_SECRET_KEY, project_id=SCW_PROJECT_ID, api_url=sim.url
        )
    return cls(token=DO_TOKEN if pid == "digitalocean" else "bench-token", api_url=sim.url)


def measure(pid: str) -> list[tuple[str, int]]:
    from maider import plugins
    from maider.provider import InstanceSpec
    from tests.cloudsim import SIMULATORS, FakeClock

    provider_cls = plugins.get_provider_class(pid)
    clock = FakeClock()
    sim_kwargs: dict[str, Any] = {"clock": clock, "validate": False}
    if pid == "digitalocean":
        from tests.cloudsim.testing import DO_TOKEN

        sim_kwargs["token"] = DO_TOKEN
    sim = SIMULATORS[pid](**sim_kwargs)
    rows: list[tuple[str, int]] = []
    with sim:
        provider: Provider = provider_cls(_settings(pid, sim))
        if hasattr(
            provider, "sleep"
        ):  # providers that wait (Scaleway's volume cleanup) follow the fake clock
            provider.sleep, provider.clock = clock.sleep, clock.now
        _, region, type_id = SETUPS[pid]

        def count(name: str, fn: Callable[[], Any]) -> Any:
            before = len(sim.log)
            result = fn()
            rows.append((name, len(sim.log) - before))
            return result

        count("check_credentials", provider.check_credentials)
        count("fetch_catalog", provider.fetch_catalog)
        key = count("ensure_ssh_key (new)", lambda: provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider-bench"))
        count("ensure_ssh_key (exists)", lambda: provider.ensure_ssh_key(TEST_PUBLIC_KEY, "maider-bench"))
        fw = count(
            "ensure_firewall (new)",
            lambda: provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",)),
        )
        count(
            "ensure_firewall (exists)",
            lambda: provider.ensure_firewall("maider-ssh", ["203.0.113.7/32"], ("maider",)),
        )
        spec = InstanceSpec(
            name="maider-bench",
            region=region,
            type_id=type_id,
            user_data=USER_DATA,
            tags=("maider", "maider-session-bench"),
            session_tag="maider-session-bench",
            ssh_public_key=TEST_PUBLIC_KEY,
            ssh_key_id=key,
            firewall_id=fw,
        )
        vm = count("create_instance", lambda: provider.create_instance(spec))
        polls = 0
        before = len(sim.log)
        while provider.get_instance(vm.id).status is not InstanceStatus.RUNNING:
            clock.advance(15)
            polls += 1
        rows.append((f"get_instance until running ({polls + 1} polls)", len(sim.log) - before))
        count("list_instances (1 session)", lambda: provider.list_instances("maider"))
        provider.wall_time = clock.now  # type: ignore[method-assign]  # expiries in the sim's time
        running = provider.get_instance(vm.id)
        destruct = count(
            "self_destruct (watchdog credential)",
            lambda: provider.self_destruct(running, valid_for_s=3600, label="maider-bench-watchdog"),
        )
        count("delete_instance", lambda: provider.delete_instance(vm.id))
        if destruct is not None and destruct.revoke_handle is not None:
            handle = destruct.revoke_handle
            count("revoke_self_destruct", lambda: provider.revoke_self_destruct(handle))
    return rows


def main() -> int:
    from maider import plugins

    installed = [p for p in SETUPS if p in plugins.installed_ids()]
    if not installed:
        print("no built-in provider installed; install maider[all]")
        return 1
    for pid in installed:
        print(f"\n{pid}")
        for name, calls in measure(pid):
            print(f"  {name:45} {calls:3d} API call(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
