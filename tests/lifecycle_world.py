"""A world for `maider up`/`down` to run in: cloud simulators, emulated VMs, and the settings that
point maider at them. Shared by the lifecycle test modules and bench/lifecycle.py.

- The simulators run on a :class:`ScaledClock` at speed 1 (simulated seconds are real seconds,
  with short provisioning timings), so the run time maider measures on the wall clock and the
  one the ledger bills agree, and ``down``'s cost summary can be compared with the ledger.
- Every simulator gets its own random 127.x.0.0/16 for instance addresses, so two test runs on
  one machine (CI sessions, another engineer's run) never bind the same emulated VM address.
- ``ssh`` is wrapped on PATH to record every argv (the secrets scan reads them).
- maider gets fake credentials, the simulators' URLs, short timeouts, a fast poll interval and
  ``allowed_ssh_cidrs=127.0.0.1/32`` (nothing leaves loopback), through the environment: the
  same settings reach an in-process run (monkeypatch) and a subprocess (``env()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloudsim import SIMULATORS, LoopbackAllocator, ScaledClock, SimServer
from tests.cloudsim.testing import SCW_ACCESS_KEY, SCW_PROJECT_ID, validate_mode

PROVIDERS = ("linode", "digitalocean", "scaleway")
HF_TOKEN = "hf_lifecycleSECRETtoken0123456789"
TOKENS = {"linode": "lifecycle-linode-token-5f3a", "digitalocean": "lifecycle-do-token-9c1e"}
#: Not tests.cloudsim's SCW_SECRET_KEY: that one equals the (public) project id, so a scan for it
#: would find every request that names the project.
SCW_SECRET = "7e1d2c3b-4a5f-4e6d-8c9b-0a1b2c3d4e5f"
SECRETS = (HF_TOKEN, *TOKENS.values(), SCW_SECRET)

#: What each test asks for: a type and region every simulator sells (and the live catalog lists).
SETUPS = {
    "linode": ("us-east", "g1-gpu-rtx6000-1"),
    "digitalocean": ("tor1", "gpu-h100x1-80gb"),
    "scaleway": ("fr-par-2", "L4-1-24G"),
}

#: Simulated seconds per lifecycle step: short, but long enough to be seen polling.
FAST_TIMINGS = {
    "linode": {"provision": 0.2, "boot": 0.2, "delete": 0.0},
    "digitalocean": {"provision": 0.3, "delete": 0.0},
    "scaleway": {"boot": 0.3, "stop": 0.1, "terminate": 0.0, "detach": 0.0},
}

SSH_REAL = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")


def require_ssh() -> None:
    """The E2E needs the system OpenSSH client, and port 22 on 127.x addresses for the emulated
    VMs: maider connects to port 22 because that is what the providers' APIs say (root, or
    ``sysctl net.ipv4.ip_unprivileged_port_start=22``)."""
    from tests.cloudsim.testing import in_ci
    from tests.vmsim.farm import _can_bind_privileged

    reason = None
    if SSH_REAL is None or SSH_KEYGEN is None:
        reason = "needs the OpenSSH client (ssh, ssh-keygen): install openssh-client"
    elif not _can_bind_privileged():
        reason = (
            "need port 22 on 127.x.y.z for the emulated VMs: run as root, or "
            "`sysctl -w net.ipv4.ip_unprivileged_port_start=22`"
        )
    if reason is None:
        return
    if in_ci():  # CI must not lose the lifecycle tests to a skip
        pytest.fail(f"CI=true and the lifecycle tests {reason}", pytrace=False)
    pytest.skip(reason)


def ledger_id(instance_id: str) -> str:
    """The simulator's id of an instance maider knows by ``instance_id`` (Scaleway: ``zone/uuid``)."""
    return str(instance_id).rsplit("/", 1)[-1]


def _random_network(taken: set[str]) -> str:
    while True:
        octet = random.randint(20, 250)
        net = f"127.{octet}.0.0/16"
        if net not in taken:
            taken.add(net)
            return net


class World:
    """Simulators (started on demand), one VM farm, and maider's environment."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.clock = ScaledClock(speed=1.0)
        self.sims: dict[str, SimServer] = {}
        self._nets: set[str] = set()
        from tests.vmsim import StandInOptions, VMFarm

        self.vm_options = StandInOptions()
        self.farm = VMFarm(stand_in_options=self.vm_options, root=tmp / "vms", ssh_ports="record")
        self.runtime = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))  # short: socket paths
        self.argv_log = tmp / "ssh-argv.log"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        self.ssh_faults = tmp / "ssh-faults.tsv"
        wrapper.write_text(
            f"""#!/bin/sh
# Records every ssh command line (for the secrets scan), then runs the real ssh, unless a line
# of {self.ssh_faults} ("pattern<TAB>fail" or "pattern<TAB>sleep<TAB>seconds") matches it.
printf '%s\\n' "$*" >> {self.argv_log}
if [ -f {self.ssh_faults} ]; then
    while IFS='	' read -r pattern action arg; do
        case "$*" in
            *"$pattern"*)
                case "$action" in
                    fail) echo "Connection to host closed by remote host." >&2; exit 255 ;;
                    sleep) sleep "$arg" ;;
                esac ;;
        esac
    done < {self.ssh_faults}
fi
exec {SSH_REAL} "$@"
"""
        )
        wrapper.chmod(0o755)
        self.env_vars: dict[str, str] = {
            "PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "MAIDER_RUNTIME_DIR": str(self.runtime),
            "MAIDER_ALLOWED_SSH_CIDRS": "127.0.0.1/32",
            "MAIDER_POLL_INTERVAL": "0.1",
            "MAIDER_TIMEOUT_INSTANCE": "30",
            "MAIDER_TIMEOUT_SSH": "30",
            "MAIDER_TIMEOUT_CLOUD_INIT": "30",
            "MAIDER_TIMEOUT_VLLM": "30",
            "MAIDER_TIMEOUT_DELETE": "30",
            "MAIDER_HF_TOKEN": HF_TOKEN,
        }
        for name, value in self.env_vars.items():
            monkeypatch.setenv(name, value)
        _emulate_prepare_script(monkeypatch)

    # -- simulators ------------------------------------------------------------------------

    def sim(self, pid: str) -> SimServer:
        """The simulator of ``pid`` (started, attached to the farm, maider pointed at it)."""
        if pid in self.sims:
            return self.sims[pid]
        cls = SIMULATORS[pid]
        sim = cls(
            clock=self.clock,
            validate=validate_mode(pid) if pid != "scaleway" else None,
            ip_allocator=LoopbackAllocator(_random_network(self._nets)),
        )
        sim.timings.update(FAST_TIMINGS[pid])
        sim.start()
        self.sims[pid] = sim
        self.farm.attach(sim)
        prefix = f"MAIDER_{pid.upper()}_"
        values = {
            f"{prefix}API_URL": sim.url,
            f"{prefix}MAX_ATTEMPTS": "3",
            f"{prefix}RETRY_INITIAL_WAIT": "0.01",
            f"{prefix}RETRY_MAX_WAIT": "0.05",
            f"{prefix}RETRY_MAX_SECONDS": "10",
            f"{prefix}REQUEST_TIMEOUT": "5",
        }
        if pid == "scaleway":
            values.update(
                {
                    "SCW_ACCESS_KEY": SCW_ACCESS_KEY,
                    "SCW_SECRET_KEY": SCW_SECRET,
                    "SCW_DEFAULT_PROJECT_ID": SCW_PROJECT_ID,
                }
            )
        else:
            values[f"{prefix}TOKEN"] = TOKENS[pid]
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
        self.env_vars.update(values)
        return sim

    def reset_account(self, pid: str) -> None:
        """Forget the SSH keys and firewalls (security groups) the account holds, so the next
        `up` makes every call a new user's first `up` makes."""
        sim: Any = self.sim(pid)
        with sim.lock:
            sim.ssh_keys.clear()
            for name in ("firewalls", "devices", "security_groups", "rules"):
                if hasattr(sim, name):
                    getattr(sim, name).clear()

    def set(self, **values: str) -> None:
        """More environment for maider (both in-process and for subprocesses)."""
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)
            self.env_vars[name] = value

    def ssh_fault(self, pattern: str, action: str = "fail", arg: str = "") -> None:
        """Make every ssh command line containing ``pattern`` fail (as a dropped connection,
        exit 255) or sleep ``arg`` seconds first."""
        with self.ssh_faults.open("a") as fh:
            fh.write(f"{pattern}\t{action}\t{arg}\n")

    def clear_ssh_faults(self) -> None:
        self.ssh_faults.unlink(missing_ok=True)

    @contextlib.contextmanager
    def settings(self, **values: str) -> Iterator[None]:
        """Environment for maider within the block only."""
        saved = {name: os.environ.get(name) for name in values}
        self.set(**values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    self.monkeypatch.delenv(name, raising=False)
                    self.env_vars.pop(name, None)
                else:
                    self.set(**{name: value})

    def env(self) -> dict[str, str]:
        """The environment of a maider subprocess (the test's own, which monkeypatch set up)."""
        return dict(os.environ)

    # -- inspection ------------------------------------------------------------------------

    def state_dir(self) -> Path:
        return Path(os.environ["MAIDER_STATE_DIR"])

    def records(self, state_dir: Path | None = None) -> list[dict[str, Any]]:
        root = (state_dir or self.state_dir()) / "sessions"
        if not root.is_dir():
            return []
        out = []
        for path in sorted(root.glob("*/session.json")):
            out.append(json.loads(path.read_text()))
        return out

    def alive(self, pid: str | None = None) -> list[Any]:
        pids = [pid] if pid else list(self.sims)
        return [rec for p in pids for rec in self.sims[p].ledger.running(p)]

    def invariant_problems(self, state_dirs: list[Path] | None = None) -> list[str]:
        """What breaks "maider never loses a VM, and its records match reality" (the records of
        ``state_dirs``, default: the current state dir, against every simulator's ledger)."""
        problems: list[str] = []
        records = [r for d in (state_dirs or [self.state_dir()]) for r in self.records(d)]
        ids = {r["id"] for r in records}
        by_instance = {(r["provider"], ledger_id(r["instance_id"])) for r in records if r.get("instance_id")}
        for pid, sim in self.sims.items():
            for rec in sim.ledger.running(pid):
                tags = [t for t in rec.tags if t.startswith("maider-session-")]
                known = (pid, rec.id) in by_instance or any(
                    t.removeprefix("maider-session-") in ids for t in tags
                )
                if not known:
                    problems.append(f"{pid} instance {rec.id} {rec.tags} bills and no session knows it")
        for r in records:
            if not r.get("instance_id"):
                continue
            sim = self.sims.get(r["provider"])
            if sim is None:
                continue
            try:
                rec = sim.ledger.get(ledger_id(r["instance_id"]), r["provider"])
            except KeyError:
                problems.append(f"record {r['id']} names {r['instance_id']}, which never existed")
                continue
            # A "deleting" record says the deletion was requested but not confirmed: its VM may be gone.
            # A "deleted" record is kept on purpose: a watchdog deleted its VM (it says why).
            if not rec.alive and r["status"] not in ("deleting", "deleted"):
                problems.append(
                    f"record {r['id']} ({r['status']}) points at {r['instance_id']}, which is gone"
                )
        return problems

    def ssh_argv(self) -> str:
        return self.argv_log.read_text() if self.argv_log.exists() else ""

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        from maider.session.laptop_watchdog import start_token

        # Stop the laptop watchdogs `up` started (detached on purpose): they would outlive the test.
        for record in self.records() if "MAIDER_STATE_DIR" in os.environ else []:
            pid = record.get("laptop_watchdog_pid")
            if isinstance(pid, int) and start_token(pid) == record.get("laptop_watchdog_started"):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        # Close any ssh master/tunnel left behind by a failing test: they would outlive it.
        for sock in (self.runtime / "ssh").glob("*") if (self.runtime / "ssh").is_dir() else []:
            with contextlib.suppress(Exception):
                subprocess.run(
                    [SSH_REAL or "ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                    capture_output=True,
                    timeout=5,
                )
        self.farm.close()
        for sim in self.sims.values():
            sim.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def check_clean_teardown(self) -> list[str]:
        problems = []
        if self.farm.threads():
            problems.append(f"VM emulator threads still alive: {self.farm.threads()}")
        if self.farm.errors:
            problems.append("VM emulator errors:\n" + "\n".join(self.farm.errors[:10]))
        for pid, sim in self.sims.items():
            if sim.violations:
                text = "\n\n".join(str(v) for v in sim.violations[:5])
                problems.append(f"{len(sim.violations)} {pid} simulator violation(s):\n{text}")
        return problems


def _emulate_prepare_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for /opt/maider/prepare-host.sh during boot.

    vmsim's shell refuses compound syntax (functions, `if`, `$(…)`), which the real script uses
    to install the NVIDIA driver, Docker and the container toolkit: everything it would do is a
    no-op on an emulated VM anyway. So, at boot only, that one script is recorded as "not
    emulated" and succeeds, like vmsim's other boot-time no-ops (apt-get, curl…). A test can set
    ``PREPARE_RESULT[0]`` to make it fail (cloud-init then reports an error).
    """
    from maider.remote.commands import PREPARE_SCRIPT_PATH
    from tests.vmsim import shell as vmshell

    original = vmshell.BUILTINS["bash"]

    def bash(ctx: Any) -> int:
        if ctx.argv[1:] == [PREPARE_SCRIPT_PATH] and ctx.shell.boot:
            ctx.vm.note_not_emulated(f"bash {PREPARE_SCRIPT_PATH}", source=ctx.shell.source)
            if PREPARE_RESULT[0]:
                ctx.eprint("maider: no headers for the running kernel (prepare-host.sh failed on purpose)")
            return PREPARE_RESULT[0]
        return int(original(ctx))

    PREPARE_RESULT[0] = 0
    monkeypatch.setitem(vmshell.BUILTINS, "bash", bash)


PREPARE_RESULT = [0]


def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The body of each test module's ``world`` fixture: a World, checked and closed after the
    test (emulator errors, leftover threads and simulator spec violations fail it)."""
    require_ssh()
    w = World(tmp_path, monkeypatch)
    try:
        yield w
    finally:
        w.close()
    problems = w.check_clean_teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ------------------------------------------------------------------------------------ subprocess


class MaiderProcess:
    """`python -m maider …` in the background, its output read line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maider", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"maider exited ({self.proc.returncode}) before {pattern!r}:\n{self.output}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.output}")
                self._cond.wait(min(left, 0.2))

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"maider did not exit within {timeout} s:\n{self.output}") from None
        self._reader.join(5)
        return code

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


def run_maider(world: World, args: list[str], cwd: Path) -> MaiderProcess:
    return MaiderProcess(args, world.env(), cwd)


def ledger_cost_text(amount: float, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€"}[currency]
    return f"{symbol}{amount:.2f}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
