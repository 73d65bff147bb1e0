"""API calls and SSH connections per `maider up` / `list` / `down`, and how long after the model is
ready `up` notices it, measured against the cloud simulators and emulated VMs.

Run from the repository root with every provider installed and OpenSSH present (root, or port 22
bindable on 127.x, for the emulated VMs): `.venv/bin/python bench/lifecycle.py [--poll 5]`.

For each installed provider it runs, in-process through the real CLI (Typer):

- `up` with the stand-in vLLM taking ``--load`` seconds to load, at ``--poll`` seconds between
  status checks (the `poll_interval` setting; 5 s by default, as for users);
- `list` with three sessions of that provider;
- `down` of each session.

Figures: HTTP requests the provider's simulator received (by phase for `up`), SSH TCP connections
the VM's sshd accepted, ssh processes maider started, and the delay between the model becoming
ready on the VM and `up` returning "ready". Prints a table; exits 0 unless a command fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Counter:
    """Counts the TCP connections every emulated VM's sshd accepts."""

    def __init__(self) -> None:
        from tests.vmsim import sshd

        self.count = 0
        original = sshd.VMSSHServer.connection_made

        def counting(server: Any, conn: Any) -> None:
            self.count += 1
            original(server, conn)

        sshd.VMSSHServer.connection_made = counting  # type: ignore[method-assign]


def _ssh_processes(world: Any) -> int:
    return len(world.ssh_argv().splitlines())


def measure(pid: str, poll: float, load: float) -> list[tuple[str, str]]:
    import pytest
    from typer.testing import CliRunner

    from maider import plugins
    from maider.cli import app
    from tests.lifecycle_world import SETUPS, World, ledger_id

    home = Path(tempfile.mkdtemp(prefix=f"maider-bench-{pid}-"))
    monkeypatch = pytest.MonkeyPatch()
    for name in list(os.environ):
        if name.startswith(("MAIDER_", "SCW_", "LINODE_", "DIGITALOCEAN_")) or name in ("HF_TOKEN",):
            monkeypatch.delenv(name)
    for kind in ("STATE", "CACHE", "DATA"):
        monkeypatch.setenv(f"MAIDER_{kind}_DIR", str(home / kind.lower()))
    monkeypatch.setenv("MAIDER_CONFIG", str(home / "config.toml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tempfile.mkdtemp(dir=home))
    world = World(home, monkeypatch)
    counter = _Counter()
    rows: list[tuple[str, str]] = []
    try:
        sim = world.sim(pid)
        world.set(MAIDER_POLL_INTERVAL=str(poll))
        world.farm.options.load_seconds = load
        region, type_id = SETUPS[pid]
        runner = CliRunner()

        def run(*args: str) -> Any:
            plugins.reset_cache()
            result = runner.invoke(app, list(args), catch_exceptions=False)
            if result.exit_code != 0:
                raise SystemExit(f"{pid}: maider {' '.join(args)} failed:\n{result.output}")
            return result

        # Warm the catalog cache, so `up` is measured as a user's second and later runs are.
        run("list-types", "--provider", pid, "--refresh")

        def up(name: str) -> tuple[int, int, int, float]:
            calls, conns, procs = len(sim.log), counter.count, _ssh_processes(world)
            run("up", "-p", pid, "-r", region, "-t", type_id, "--name", name)
            returned = time.monotonic()
            [record] = [r for r in world.records() if r["name"] == name]
            vm = world.farm.vm(ledger_id(record["instance_id"]), pid)
            assert vm.vllm is not None
            ready = vm.vllm.started_real + world.farm.options.load_seconds
            return (
                len(sim.log) - calls,
                counter.count - conns,
                _ssh_processes(world) - procs,
                returned - ready,
            )

        calls, conns, procs, lag = up("bench-1")
        polls = sum(1 for r in sim.log.entries if r.method == "GET" and _is_poll(pid, r.path))
        rows.append(("up: API calls", f"{calls} ({polls} status polls)"))
        rows.append(("up: SSH connections (ssh processes)", f"{conns} ({procs})"))
        rows.append((f"up: noticed the model ready after (poll {poll:g} s)", f"{lag:.2f} s"))
        for name in ("bench-2", "bench-3"):
            up(name)
        calls, conns = len(sim.log), counter.count
        run("list", "--json")
        rows.append(("list (3 sessions): API calls", str(len(sim.log) - calls)))
        rows.append(("list: SSH connections", str(counter.count - conns)))
        for name in ("bench-1", "bench-2", "bench-3"):
            calls, conns, procs = len(sim.log), counter.count, _ssh_processes(world)
            run("down", name, "-y")
            if name == "bench-1":
                rows.append(("down: API calls", str(len(sim.log) - calls)))
                rows.append(
                    (
                        "down: SSH connections (ssh processes)",
                        f"{counter.count - conns} ({_ssh_processes(world) - procs})",
                    )
                )
        if world.alive(pid):
            raise SystemExit(f"{pid}: VMs still billed after the bench: {world.alive(pid)}")
    finally:
        world.close()
        monkeypatch.undo()
        shutil.rmtree(home, ignore_errors=True)
    return rows


def _is_poll(pid: str, path: str) -> bool:
    parts = path.rstrip("/").split("/")
    return {
        "linode": len(parts) >= 2 and parts[-2] == "instances",
        "digitalocean": len(parts) >= 2 and parts[-2] == "droplets",
        "scaleway": len(parts) >= 2 and parts[-2] == "servers",
    }[pid]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--poll", type=float, default=5.0, help="poll_interval, seconds (default 5, as for users)"
    )
    parser.add_argument("--load", type=float, default=3.0, help="seconds the stand-in vLLM takes to load")
    args = parser.parse_args()
    from maider import plugins
    from tests.lifecycle_world import PROVIDERS

    installed = [p for p in PROVIDERS if p in plugins.installed_ids()]
    if not installed:
        print("no built-in provider installed; install maider[all]")
        return 1
    for pid in installed:
        print(f"\n{pid}")
        for name, value in measure(pid, args.poll, args.load):
            print(f"  {name:48} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
