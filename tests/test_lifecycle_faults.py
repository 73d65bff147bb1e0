"""The fault matrix: a fault at every API call and every SSH phase of `up` and `down`, per provider.

After each fault the invariant must hold: every VM the ledger bills is known to maider's state
(by its instance id, or by the session tag of a record whose create answer was lost), and no
record points at a VM that is gone (except a "deleting" one: the delete was sent, not confirmed).
Then the faults are lifted and `maider down` must be able to remove whatever is left, so the
ledger ends with nothing running.

- API faults: a clean `up` + `down` is recorded first; every distinct request it made (method
  and path, ids wildcarded) then gets, on its first occurrence, a 5xx and a timeout that last as
  long as the retry budget (so the call fails), and the create call also a lost answer and a
  sold-out answer.
- SSH faults: sshd never answering, cloud-init failing, and the SSH connection dropping while
  cloud-init is read, the secrets are written, the stack starts, the tunnel opens; vLLM crashing
  or never loading; and, in `down`, closing the tunnel failing.
- SIGINT: a `python -m maider up` subprocess per phase (each phase made slow enough to be hit),
  all of one provider's run at once; plus one during `down`.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import (
    PREPARE_RESULT,
    PROVIDERS,
    SETUPS,
    World,
    make_world,
    run_maider,
)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


#: Tries per API call in the matrix (the retry budget a fault must outlast to fail the call).
ATTEMPTS = 2
REQUEST_TIMEOUT = 0.3  # seconds; a "timeout" fault answers after TIMEOUT_DELAY
TIMEOUT_DELAY = 0.45

_ID_SEGMENT = re.compile(
    # ... and Scaleway IAM access keys (SCW + 17), which the watchdog's credential is revoked by.
    r"^(\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|SCW[A-Z0-9]{17})$",
    re.IGNORECASE,
)


def _pattern(path: str) -> str:
    """A request path with its ids wildcarded, as a fault path glob."""
    return "/".join("*" if _ID_SEGMENT.match(seg) else seg for seg in path.split("?")[0].split("/"))


@dataclasses.dataclass
class Case:
    name: str
    op: str  # "up" or "down"
    arm: Callable[[World, Any], None]
    expect: str = "fail"  # "fail", "ok" or "any"


@dataclasses.dataclass
class Outcome:
    case: str
    exit_code: int
    message: str
    seconds: float = 0.0


def _up_args(pid: str) -> list[str]:
    region, type_id = SETUPS[pid]
    return ["up", "-p", pid, "-r", region, "-t", type_id]


def _faulted_settings(pid: str) -> dict[str, str]:
    """What the faulted command runs with: a retry budget a fault can outlast, a request timeout
    a "timeout" fault exceeds, and short waits for the SSH phases. Setting up and recovering run
    with the world's roomier defaults, so a loaded machine does not fail them."""
    prefix = f"MAIDER_{pid.upper()}_"
    return {
        f"{prefix}MAX_ATTEMPTS": str(ATTEMPTS),
        f"{prefix}REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "MAIDER_TIMEOUT_SSH": "1.5",
        "MAIDER_TIMEOUT_CLOUD_INIT": "1.5",
        "MAIDER_TIMEOUT_VLLM": "1.5",
    }


def _calls(
    world: World, cli: Any, pid: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """The distinct (method, path pattern) pairs of a catalog refresh, a clean `up` (with a
    fresh catalog cache), and a clean `down`."""
    sim = world.sim(pid)

    def distinct(records: list[Any]) -> list[tuple[str, str]]:
        return list(dict.fromkeys((r.method, _pattern(r.path)) for r in records))

    start = len(sim.log)
    refresh = cli("list-types", "--provider", pid, "--refresh")
    assert refresh.exit_code == 0, refresh.output
    catalog = distinct(sim.log.entries[start:])
    start = len(sim.log)
    up = cli(*_up_args(pid))
    assert up.exit_code == 0, up.output
    middle = len(sim.log)
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output
    entries = sim.log.entries
    return catalog, distinct(entries[start:middle]), distinct(entries[middle:])


def _catalog_cases(pid: str, calls: list[tuple[str, str]]) -> Iterator[Case]:
    """A failed automatic catalog refresh: `up` plans with the embedded catalog instead."""
    for method, path in calls:

        def arm(world: World, cli: Any, method: str = method, path: str = path) -> None:
            from maider.paths import cache_dir

            for suffix in ("json", "failed"):  # the cache, and the marker of a failed refresh
                (cache_dir() / "catalogs" / f"{pid}.{suffix}").unlink(missing_ok=True)
            world.sim(pid).faults.add(method=method, path=path, kind="503", times=ATTEMPTS)

        yield Case(f"5xx on up (catalog refresh) {method} {path}", "up", arm, "any")


def _api_cases(
    pid: str, up_calls: list[tuple[str, str]], down_calls: list[tuple[str, str]]
) -> Iterator[Case]:
    def fault(method: str, path: str, **kw: Any) -> Callable[[World, Any], None]:
        def arm(world: World, cli: Any) -> None:
            world.sim(pid).faults.add(method=method, path=path, **kw)

        return arm

    for op, calls in (("up", up_calls), ("down", down_calls)):
        for method, path in calls:
            where = f"{op} {method} {path}"
            # A fault on a catalog read or a lookup the flow can do without is absorbed: "any".
            yield Case(f"5xx on {where}", op, fault(method, path, kind="503", times=ATTEMPTS), "any")
            yield Case(
                f"timeout on {where}",
                op,
                fault(method, path, kind="slow", delay=TIMEOUT_DELAY, times=ATTEMPTS),
                "any",
            )
            if op == "up" and method == "POST" and _is_create(pid, path):
                yield Case(f"lost answer on {where}", op, fault(method, path, kind="lost_response"), "any")
                anywhere = re.sub(r"/zones/[^/]+/", "/zones/*/", path)  # sold out in every zone
                yield Case(
                    f"no capacity anywhere on {where}",
                    op,
                    fault(method, anywhere, kind="no_capacity", times=None),
                    "fail",
                )


def _is_create(pid: str, path: str) -> bool:
    return {
        "linode": path.endswith("/linode/instances"),
        "digitalocean": path.rstrip("/").endswith("/v2/droplets"),
        "scaleway": path.endswith("/servers"),
    }[pid]


def _ssh_fault(pattern: str, action: str = "fail", arg: str = "") -> Callable[[World, Any], None]:
    def arm(world: World, cli: Any) -> None:
        world.ssh_fault(pattern, action, arg)

    return arm


def _vm_option(**options: Any) -> Callable[[World, Any], None]:
    def arm(world: World, cli: Any) -> None:
        for key, value in options.items():
            setattr(world.farm.options, key, value)

    return arm


def _prepare_fails(world: World, cli: Any) -> None:
    PREPARE_RESULT[0] = 1


def _ssh_cases() -> Iterator[Case]:
    from tests.vmsim import VLLMFailure

    yield Case("sshd never answers", "up", _vm_option(sshd_seconds=999.0))
    yield Case("cloud-init fails", "up", _prepare_fails)
    yield Case("SSH drops reading cloud-init", "up", _ssh_fault("cloud-init status"))
    yield Case("SSH drops writing the secrets", "up", _ssh_fault("install -m 600"))
    yield Case("SSH drops starting the stack", "up", _ssh_fault("systemctl start"))
    yield Case("the tunnel cannot start", "up", _ssh_fault("ExitOnForwardFailure"))
    yield Case(
        "vLLM crashes while loading", "up", _vm_option(vllm_failure=VLLMFailure.oom(), restart_backoff=5.0)
    )
    yield Case("vLLM never loads", "up", _vm_option(load_seconds=999.0))
    yield Case("closing the tunnel fails", "down", _ssh_fault("-O exit"), "ok")


def _reset(world: World, pid: str) -> None:
    from tests.vmsim import StandInOptions

    world.sim(pid).faults.clear()
    world.clear_ssh_faults()
    PREPARE_RESULT[0] = 0
    defaults = StandInOptions()
    for f in dataclasses.fields(defaults):
        setattr(world.farm.options, f.name, getattr(defaults, f.name))


def _settle(world: World, cli: Any, pid: str, case: str, slow: bool) -> None:
    """Check the invariant, then lift every fault and remove what is left with `maider down`."""
    _reset(world, pid)
    if slow:
        time.sleep(TIMEOUT_DELAY + 0.15)  # requests the client gave up on are still carried out
    problems = world.invariant_problems()
    assert not problems, f"{pid}: after {case}: {problems}"
    for record in world.records():
        down = cli("down", record["id"], "-y")
        assert down.exit_code == 0, f"{pid}: recovering after {case}: {down.output}"
    alive = world.alive(pid)
    assert not alive, f"{pid}: after {case}, still billed: {alive}"
    volumes = world.sim(pid).ledger.leaked_volumes()
    assert not volumes, f"{pid}: after {case}, volumes still billed: {volumes}"
    assert world.records() == []


def _report(request: pytest.FixtureRequest, text: str) -> None:
    """Print past pytest's output capture: the matrix size belongs in every run's output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        print(text)
        return
    with capman.global_and_fixture_disabled():
        print(text, flush=True)


@pytest.mark.parametrize("pid", PROVIDERS)
def test_fault_matrix(pid: str, world: World, cli: Any, request: pytest.FixtureRequest) -> None:
    require_providers(pid)
    sim = world.sim(pid)
    world.set(MAIDER_TIMEOUT_INSTANCE="10", MAIDER_TIMEOUT_DELETE="10")
    catalog_calls, up_calls, down_calls = _calls(world, cli, pid)
    cases = [*_catalog_cases(pid, catalog_calls), *_api_cases(pid, up_calls, down_calls), *_ssh_cases()]
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for case in cases:
        t0 = time.monotonic()
        if case.op == "down":
            ready = cli(*_up_args(pid))
            assert ready.exit_code == 0, f"{pid}: setting up {case.name}: {ready.output}"
        else:
            world.reset_account(pid)
        case.arm(world, cli)
        with world.settings(**_faulted_settings(pid)):
            result = cli(*_up_args(pid)) if case.op == "up" else cli("down", "-y")
        fired = [f for f in sim.faults.faults if f.fired]
        if case.expect == "fail":
            assert result.exit_code != 0, f"{pid}: {case.name} did not fail:\n{result.output}"
        elif case.expect == "ok":
            assert result.exit_code == 0, f"{pid}: {case.name} failed:\n{result.output}"
        assert "Traceback" not in result.output and "error: internal error" not in result.output, (
            result.output
        )
        if result.exit_code != 0:
            assert result.stderr.startswith("error: "), result.output
        outcomes.append(Outcome(case.name, result.exit_code, (result.stderr or result.stdout).strip()[:160]))
        assert fired or not case.name.startswith(("5xx", "timeout", "lost", "no capacity")), (
            f"{pid}: the fault of {case.name!r} never fired"
        )
        # Only a write the client gave up on can still change something when it is carried out.
        _settle(world, cli, pid, case.name, slow=case.name.startswith("timeout") and " GET " not in case.name)
        outcomes[-1].seconds = time.monotonic() - t0
    assert sim.ledger.running() == []
    failed = sum(1 for o in outcomes if o.exit_code)
    _report(
        request,
        f"\nfault matrix {pid}: {len(cases)} cases ({len(catalog_calls)} catalog, {len(up_calls)} other API calls "
        f"in up, {len(down_calls)} in down, "
        f"{len(list(_ssh_cases()))} SSH/VM faults), {failed} made the command fail, every invariant held "
        f"({time.monotonic() - started:.0f} s)",
    )
    for o in outcomes:
        print(f"  [{o.exit_code}] {o.seconds:4.1f}s {o.case}: {o.message}")


# ------------------------------------------------------------------------------------ SIGINT


#: The phases of `up` interrupted, each made to last at least SLOW seconds.
SLOW_PHASES = ("prepare", "create", "instance", "ssh", "cloud-init", "stack", "tunnel", "vllm")
SLOW = 1.5
#: The line each phase's interrupt waits for: inside "create", the request itself must be in flight.
MARKERS = {"create": r"creating the VM: "}


def _slow_everything(world: World, pid: str) -> None:
    """Make every phase of `up` last at least SLOW seconds, for every VM of the batch."""
    sim = world.sim(pid)
    delay = str(SLOW)
    sim.faults.add(method="GET", path=_key_list_path(pid), kind="slow", delay=SLOW, on_call=None, times=None)
    create = {"linode": "*/linode/instances", "digitalocean": "*/v2/droplets", "scaleway": "*/servers"}[pid]
    sim.faults.add(method="POST", path=create, kind="slow", delay=SLOW, on_call=None, times=None)
    sim.timings[{"linode": "provision", "digitalocean": "provision", "scaleway": "boot"}[pid]] = SLOW
    world.farm.options.sshd_seconds = SLOW  # after the VM runs
    world.farm.options.cloudinit_seconds = 2.5 * SLOW  # after the VM runs, so 1.5 SLOW after sshd
    world.farm.options.load_seconds = 2 * SLOW
    world.ssh_fault("systemctl start", "sleep", delay)
    world.ssh_fault("ExitOnForwardFailure", "sleep", delay)
    world.set(MAIDER_TIMEOUT_VLLM="30", MAIDER_TIMEOUT_SSH="30", MAIDER_TIMEOUT_CLOUD_INIT="30")


def _key_list_path(pid: str) -> str:
    return {"linode": "*/profile/sshkeys", "digitalocean": "*/account/keys", "scaleway": "*/ssh-keys"}[pid]


@pytest.mark.parametrize("pid", PROVIDERS)
def test_sigint_at_every_phase(
    pid: str, world: World, cli: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to `python -m maider up`) in each phase: the VM is deleted, or, if the create
    may still be carried out, the record is kept; nothing bills unknown to maider."""
    from maider.session.lifecycle import PHASES

    require_providers(pid)
    world.sim(pid)
    _slow_everything(world, pid)
    procs = []
    for phase in SLOW_PHASES:
        home = tmp_path / f"sigint-{phase}"
        (home / "work").mkdir(parents=True)
        world.set(MAIDER_STATE_DIR=str(home / "state"))
        procs.append((phase, home, run_maider(world, _up_args(pid), home / "work")))
    errors: list[str] = []

    def interrupt_in(phase: str, proc: Any) -> None:
        try:
            proc.wait_for(MARKERS.get(phase, re.escape(f"… {PHASES[phase]}")), timeout=90)
            time.sleep(0.3)  # into the phase (it lasts at least SLOW seconds)
            proc.interrupt()
        except AssertionError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=interrupt_in, args=(phase, proc)) for phase, _, proc in procs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    for phase, _, proc in procs:
        code = proc.wait(timeout=90)
        assert code == 130, f"{pid} {phase}: exit {code}:\n{proc.output}"
        assert f"interrupted during {PHASES[phase]}" in proc.output, f"{pid} {phase}:\n{proc.output}"
        assert "Traceback" not in proc.output, proc.output
    _reset(world, pid)
    time.sleep(SLOW + 0.3)  # slow creates the client gave up on are still carried out
    problems = world.invariant_problems([home / "state" for _, home, _ in procs])
    assert not problems, f"{pid}: after the SIGINT batch: {problems}"
    # The ledger as a whole: every VM still alive is known to one of the state dirs.
    known = set()
    for phase, home, _ in procs:
        world.set(MAIDER_STATE_DIR=str(home / "state"))
        for record in world.records():
            known.add(record["id"])
            down = cli("down", record["id"], "-y")
            assert down.exit_code == 0, f"{pid} {phase}: recovering: {down.output}"
    assert world.alive(pid) == [], f"{pid}: still billed after the SIGINT batch: {world.alive(pid)}"
    _report(
        request,
        f"\nSIGINT matrix {pid}: {len(procs)} phases interrupted, {len(known)} record(s) kept and downed",
    )


def test_sigint_during_down_finishes_the_delete(world: World, cli: Any, tmp_path: Path) -> None:
    """Ctrl-C while `down` deletes: it warns and finishes (a second Ctrl-C would abandon it)."""
    pid = "linode"
    require_providers(pid)
    sim = world.sim(pid)
    up = cli(*_up_args(pid))
    assert up.exit_code == 0, up.output
    sim.faults.add(method="DELETE", path="*/linode/instances/*", kind="slow", delay=1.5)
    proc = run_maider(world, ["down", "-y"], tmp_path)
    proc.wait_for(r"deleting the VM", timeout=30)
    time.sleep(0.3)
    proc.interrupt()
    assert proc.wait(timeout=30) == 0, proc.output
    assert "cleaning up" in proc.output
    assert world.records() == [] and sim.ledger.running() == []
