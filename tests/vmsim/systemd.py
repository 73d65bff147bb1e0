"""systemd on the emulated VM: unit files from the VM's root, and ``systemctl``/``journalctl``.

Units are read from ``/etc/systemd/system`` (and the other unit directories) when first
referenced, as systemd loads a new unit on demand; a unit that changed on disk afterwards keeps
its old definition until ``systemctl daemon-reload`` (with systemd's warning). Starting a unit
runs its ``ExecStartPre/ExecStart/ExecStartPost`` lines through the VM's command interpreter,
so ``ExecStart=docker compose -f … up -d`` starts the stand-in containers.

What follows systemd's rules: ``Condition*`` failures skip the start silently (exit 0, unit
stays inactive), ``Assert*`` failures fail it; ``Type=oneshot`` failures fail ``systemctl start``
(``RemainAfterExit=yes`` keeps it active); a ``Type=simple`` unit whose command fails still
starts (exit 0) and ends "failed"; ``enable`` needs an ``[Install]`` section. Units of the image
(docker, ssh, cloud-init…) exist without files and are active.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .shell import BufferSink, Ctx, Shell, Sink

if TYPE_CHECKING:
    from .vm import EmulatedVM

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
IMAGE_UNITS = frozenset(
    {
        "docker.service",
        "docker.socket",
        "containerd.service",
        "ssh.service",
        "sshd.service",
        "cloud-init.service",
        "cloud-init-local.service",
        "cloud-config.service",
        "cloud-final.service",
        "nvidia-persistenced.service",
        "systemd-journald.service",
        "cron.service",
        "multi-user.target",
    }
)


def unit_name(name: str) -> str:
    return name if re.search(r"\.(service|socket|target|timer|mount|path)$", name) else name + ".service"


@dataclass
class UnitFile:
    name: str
    path: str
    text: str
    sections: dict[str, dict[str, list[str]]]

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def value(self, section: str, key: str, default: str = "") -> str:
        vals = self.values(section, key)
        return vals[-1] if vals else default


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if value == "":
            current[key] = []  # an empty assignment resets the list, as in systemd
        else:
            current.setdefault(key, []).append(value)
    return sections


@dataclass
class UnitState:
    active: str = "inactive"  # active, inactive, failed
    sub: str = "dead"  # running, exited, dead, failed
    result: str = "success"
    since: float = 0.0
    skipped_condition: str | None = None
    main_argv: list[str] | None = None
    exec_main_status: int = 0


@dataclass(repr=False, eq=False)
class Systemd:
    vm: EmulatedVM
    loaded: dict[str, UnitFile] = field(default_factory=dict)
    states: dict[str, UnitState] = field(default_factory=dict)
    enabled: set[str] = field(default_factory=set)
    stopped_image_units: set[str] = field(default_factory=set)
    journal: list[tuple[float, str, str]] = field(default_factory=list)  # (time, unit, line)
    #: Background main processes of Type=simple units (python3), by unit.
    processes: dict[str, Any] = field(default_factory=dict)

    # -- inspection ------------------------------------------------------------------------

    def state(self, name: str) -> str:
        """ "active", "inactive" or "failed" (what ``systemctl is-active`` prints)."""
        name = unit_name(name)
        if name in IMAGE_UNITS and name not in self.states:
            return "inactive" if name in self.stopped_image_units else "active"
        st = self.states.get(name)
        return st.active if st else "inactive"

    def unit_journal(self, name: str) -> list[str]:
        name = unit_name(name)
        return [line for _, unit, line in self.journal if unit == name]

    # -- loading ---------------------------------------------------------------------------

    def _find_file(self, name: str) -> str | None:
        for d in UNIT_DIRS:
            path = posixpath.join(d, name)
            if self.vm.fs.is_file(path):
                return path
        return None

    def load(self, name: str, err: Sink | None = None) -> UnitFile | None:
        name = unit_name(name)
        path = self._find_file(name)
        cached = self.loaded.get(name)
        if cached is not None:
            if path is not None and err is not None and self.vm.fs.read_text(path) != cached.text:
                err.write(
                    f"Warning: The unit file, source configuration file or drop-ins of {name} changed on "
                    "disk. Run 'systemctl daemon-reload' to reload units.\n".encode()
                )
            return cached
        if path is None:
            return None
        text = self.vm.fs.read_text(path)
        unit = UnitFile(name, path, text, parse_unit(text))
        self.loaded[name] = unit
        return unit

    def exists(self, name: str) -> bool:
        name = unit_name(name)
        return name in IMAGE_UNITS or name in self.loaded or self._find_file(name) is not None

    # -- actions ---------------------------------------------------------------------------

    def _log(self, unit: str, line: str) -> None:
        self.journal.append((self.vm.now(), unit, line))

    def _shell(self, unit: UnitFile) -> tuple[Shell, dict[str, str]]:
        env: dict[str, str] = {}
        for value in unit.values("Service", "Environment"):
            for item in shlex.split(value):
                k, eq, v = item.partition("=")
                if eq:
                    env[k] = v
        for value in unit.values("Service", "EnvironmentFile"):
            optional = value.startswith("-")
            path = value.lstrip("-")
            if self.vm.fs.is_file(path):
                from .docker import parse_env_file

                env.update(parse_env_file(self.vm.fs.read_text(path)))
            elif not optional:
                raise FileNotFoundError(path)
        cwd = unit.value("Service", "WorkingDirectory", "/").lstrip("-") or "/"
        user = unit.value("Service", "User", "root")
        return Shell(self.vm, source="systemd", user=user, cwd=cwd if cwd != "~" else None, env=env), env

    def _exec(
        self, unit: UnitFile, key: str, shell: Shell, env: dict[str, str]
    ) -> tuple[int, list[str] | None]:
        """Run the unit's ``key`` lines; (exit code of the first failure or 0, last argv)."""
        last: list[str] | None = None
        for line in unit.values("Service", key):
            ignore = False
            while line and line[0] in "-@+!:":
                ignore = ignore or line[0] == "-"
                line = line[1:]
            line = line.replace("%n", unit.name).replace("%N", unit.name.rsplit(".", 1)[0])
            line = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), line)
            line = line.replace("%%", "%")
            try:
                argv = shlex.split(line)
            except ValueError:
                self._log(unit.name, f"{unit.name}: invalid command line: {line}")
                return 203, None
            if not argv:
                continue
            out = BufferSink()
            rc = shell.run_argv(argv, out, out, env)
            last = argv
            prog = posixpath.basename(argv[0])
            for text in out.getvalue().decode(errors="replace").splitlines():
                self._log(unit.name, f"{prog}[{4000 + len(self.journal)}]: {text}")
            if rc != 0 and not ignore:
                return rc, last
        return 0, last

    def start(self, name: str, out: Sink, err: Sink) -> int:
        name = unit_name(name)
        if name in IMAGE_UNITS and self._find_file(name) is None:
            self.stopped_image_units.discard(name)
            return 0
        unit = self.load(name, err)
        if unit is None:
            err.write(f"Failed to start {name}: Unit {name} not found.\n".encode())
            return 5
        st = self.states.setdefault(name, UnitState())
        if st.active == "active":
            return 0
        description = unit.value("Unit", "Description", name)
        for key in ("ConditionPathExists", "AssertPathExists", "ConditionFileNotEmpty", "AssertFileNotEmpty"):
            for value in unit.values("Unit", key):
                negate = value.startswith("!")
                path = value.lstrip("|!")
                host = self.vm.fs.host(path)
                holds = host.exists() if "PathExists" in key else host.is_file() and host.stat().st_size > 0
                if holds == negate:
                    if key.startswith("Condition"):
                        st.skipped_condition = f"{key}={value}"
                        self._log(
                            name,
                            f"{description} was skipped because of an unmet condition check ({key}={value}).",
                        )
                        return 0
                    self._log(name, f"{description} was skipped because of a failed assertion check.")
                    err.write(f"Assertion failed on job for {name}.\n".encode())
                    return 1
        st.skipped_condition = None
        kind = unit.value("Service", "Type", "simple")
        try:
            shell, env = self._shell(unit)
        except FileNotFoundError as e:
            self._log(
                name, f"{name}: Failed to load environment files: No such file or directory ({e.args[0]})"
            )
            return self._failed(name, st, description, err, 1, kind)
        self._log(name, f"Starting {name} - {description}...")
        rc, _ = self._exec(unit, "ExecStartPre", shell, env)
        if rc != 0:
            return self._failed(name, st, description, err, rc, kind, control=True)
        if kind == "simple" and self._background_argv(unit, env) is not None:
            rc, main = self._spawn(name, unit, env)
        else:
            rc, main = self._exec(unit, "ExecStart", shell, env)
        st.exec_main_status = rc
        if rc != 0:
            return self._failed(name, st, description, err, rc, kind)
        rc, _ = self._exec(unit, "ExecStartPost", shell, env)
        if rc != 0:
            return self._failed(name, st, description, err, rc, kind, control=True)
        st.main_argv = main
        st.since = self.vm.now()
        if kind == "oneshot":
            if unit.value("Service", "RemainAfterExit", "no").lower() in ("yes", "true", "1", "on"):
                st.active, st.sub = "active", "exited"
            else:
                st.active, st.sub = "inactive", "dead"
            self._log(name, f"Finished {name} - {description}.")
        else:
            st.active, st.sub = "active", "running"
            self._log(name, f"Started {name} - {description}.")
        st.result = "success"
        return 0

    # -- background main processes (python3: a real host process, see python.py) -------------

    def _background_argv(self, unit: UnitFile, env: dict[str, str]) -> list[str] | None:
        """The ExecStart argv when it is a long-running program vmsim runs for real (python3)."""
        lines = unit.values("Service", "ExecStart")
        if len(lines) != 1:
            return None
        line = lines[0].lstrip("-@+!:")
        line = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), line)
        try:
            argv = shlex.split(line)
        except ValueError:
            return None
        if argv and posixpath.basename(argv[0]) in ("python3", "python"):
            return argv
        return None

    def _spawn(self, name: str, unit: UnitFile, env: dict[str, str]) -> tuple[int, list[str] | None]:
        argv = self._background_argv(unit, env)
        assert argv is not None
        prog = posixpath.basename(argv[1]) if len(argv) > 1 else argv[0]
        holder: dict[str, int] = {}

        def on_line(text: str) -> None:
            self._log(name, f"{prog}[{holder.get('pid', 0)}]: {text}")

        def on_exit(rc: int) -> None:
            with self.vm.lock:
                if self.processes.get(name) is not proc:
                    return  # stopped on purpose
                self.processes.pop(name, None)
                st = self.states.setdefault(name, UnitState())
                st.exec_main_status = rc
                st.main_argv = None
                self._log(name, f"{name}: Main process exited, code=exited, status={rc}")
                policy = unit.value("Service", "Restart", "no")
                restart = policy == "always" or (policy in ("on-failure", "on-abnormal") and rc != 0)
                st.active, st.sub = ("failed", "failed") if rc != 0 else ("inactive", "dead")
                if restart and self.vm.state not in ("off", "destroyed"):
                    delay = float(unit.value("Service", "RestartSec", "0.1").rstrip("s") or 0.1)
                    self._log(name, f"{name}: Scheduled restart job.")
                    self.vm.schedule(lambda: self.start(name, BufferSink(), BufferSink()), real=delay)

        proc_or_error = self.vm.python.spawn(argv, on_line, on_exit)
        if isinstance(proc_or_error, str):
            on_line(proc_or_error)
            return 2, argv
        proc = proc_or_error
        holder["pid"] = proc.pid
        self.processes[name] = proc
        return 0, argv

    def _terminate(self, name: str) -> bool:
        proc = self.processes.pop(name, None)
        if proc is None:
            return False
        self.vm.python.terminate(proc)
        return True

    def _failed(
        self, name: str, st: UnitState, description: str, err: Sink, rc: int, kind: str, control: bool = False
    ) -> int:
        st.active, st.sub, st.result = "failed", "failed", "exit-code"
        st.since = self.vm.now()
        self._log(name, f"{name}: Main process exited, code=exited, status={rc}/FAILURE")
        self._log(name, f"{name}: Failed with result 'exit-code'.")
        self._log(name, f"Failed to start {name} - {description}.")
        if kind == "simple" and not control:
            return 0  # the fork succeeded: systemctl start does not wait for the outcome
        what = "the control process" if kind == "oneshot" or control else "the service process"
        err.write(
            f'Job for {name} failed because {what} exited with error code.\nSee "systemctl status {name}" '
            f'and "journalctl -xeu {name}" for details.\n'.encode()
        )
        return 1

    def stop(self, name: str, out: Sink, err: Sink) -> int:
        name = unit_name(name)
        if name in IMAGE_UNITS and self._find_file(name) is None:
            self.stopped_image_units.add(name)
            return 0
        unit = self.load(name, err)
        if unit is None:
            err.write(f"Failed to stop {name}: Unit {name} not loaded.\n".encode())
            return 5
        st = self.states.setdefault(name, UnitState())
        if st.active != "active":
            st.active, st.sub = "inactive", "dead"
            return 0
        self._log(name, f"Stopping {name} - {unit.value('Unit', 'Description', name)}...")
        try:
            shell, env = self._shell(unit)
        except FileNotFoundError:
            shell, env = Shell(self.vm, source="systemd", cwd="/"), {}
        if unit.values("Service", "ExecStop"):
            self._exec(unit, "ExecStop", shell, env)
        if self._terminate(name):
            pass  # SIGTERM to the background main process
        elif st.main_argv is not None and st.sub == "running":
            # SIGTERM to the main process: a foreground `docker compose up` stops its containers.
            argv = st.main_argv
            if "compose" in argv and "up" in argv and not {"-d", "--detach"} & set(argv):
                stop_argv = [*argv[: argv.index("up")], "stop"]
                out_buf = BufferSink()
                shell.run_argv(stop_argv, out_buf, out_buf, env)
        self._exec(unit, "ExecStopPost", shell, env)
        st.active, st.sub, st.main_argv = "inactive", "dead", None
        self._log(name, f"Stopped {name} - {unit.value('Unit', 'Description', name)}.")
        return 0

    def enable(self, name: str, out: Sink, err: Sink) -> int:
        name = unit_name(name)
        if name in IMAGE_UNITS and self._find_file(name) is None:
            return 0
        unit = self.load(name, err)
        if unit is None:
            err.write(f"Failed to enable unit: Unit file {name} does not exist.\n".encode())
            return 1
        wanted = unit.values("Install", "WantedBy") + unit.values("Install", "RequiredBy")
        if not wanted:
            err.write(
                b"The unit files have no installation config (WantedBy=, RequiredBy=, UpheldBy=, Also=, or "
                b"Alias= settings in the [Install] section, and DefaultInstance= for template units). This "
                b"means they are not meant to be enabled or disabled using systemctl.\n"
            )
            return 0
        if name not in self.enabled:
            self.enabled.add(name)
            for target in " ".join(wanted).split():
                err.write(
                    f"Created symlink /etc/systemd/system/{target}.wants/{name} → {unit.path}.\n".encode()
                )
        return 0

    # -- power -----------------------------------------------------------------------------

    def power_on(self) -> None:
        """Start the enabled units, as at boot (after a power cycle)."""
        for name in sorted(self.enabled):
            self.start(name, BufferSink(), BufferSink())

    def power_off(self) -> None:
        for name, st in list(self.states.items()):
            if st.active == "active":
                self.stop(name, BufferSink(), BufferSink())

    # -- commands --------------------------------------------------------------------------

    def systemctl(self, ctx: Ctx) -> int:
        flags: set[str] = set()
        props: list[str] = []
        args: list[str] = []
        it = iter(ctx.argv[1:])
        for a in it:
            if a in ("-p", "--property"):
                props.extend(next(it, "").split(","))
            elif a.startswith("--property="):
                props.extend(a.split("=", 1)[1].split(","))
            elif a.startswith("-"):
                flags.add(a)
            else:
                args.append(a)
        if "--user" in flags:
            return ctx.fail("Failed to connect to bus: No medium found")
        if not args:
            ctx.vm.note_not_emulated("systemctl (list-units)", source=ctx.shell.source)
            return 0
        verb, units = args[0], [unit_name(u) for u in args[1:]]
        quiet = bool({"-q", "--quiet"} & flags)
        if verb in ("poweroff", "halt"):
            # Outside the VM lock: the simulator's lock comes first (its delete hook locks the VM).
            return ctx.vm.guest_poweroff()
        with ctx.vm.lock:
            if verb == "daemon-reload":
                self.loaded.clear()
                return 0
            if verb in (
                "start",
                "stop",
                "restart",
                "try-restart",
                "reload-or-restart",
                "reload",
                "enable",
                "disable",
            ):
                if not units:
                    return ctx.fail("Too few arguments.")
                rc = 0
                for u in units:
                    rc = self._verb(verb, u, ctx, flags) or rc
                return rc
            if verb == "is-active":
                states = [self.state(u) for u in units]
                if not quiet:
                    for s in states:
                        ctx.print(s)
                return 0 if states and all(s == "active" for s in states) else 3
            if verb == "is-failed":
                states = [self.state(u) for u in units]
                if not quiet:
                    for s in states:
                        ctx.print(s)
                return 0 if any(s == "failed" for s in states) else 1
            if verb == "is-enabled":
                rc = 0
                for u in units:
                    if not self.exists(u):
                        ctx.eprint(f"Failed to get unit file state for {u}: No such file or directory")
                        rc = 1
                        continue
                    state = "enabled" if u in self.enabled or u in IMAGE_UNITS else "disabled"
                    if not quiet:
                        ctx.print(state)
                    rc = rc or (0 if state == "enabled" else 1)
                return rc
            if verb == "status":
                return self._status(ctx, units)
            if verb == "show":
                return self._show(ctx, units, props, "--value" in flags)
            if verb == "cat":
                rc = 0
                for u in units:
                    unit = self.load(u)
                    if unit is None:
                        rc = ctx.fail(f"No files found for {u}.")
                        continue
                    ctx.print(f"# {unit.path}")
                    ctx.out.write(unit.text.encode())
                return rc
        ctx.vm.note_not_emulated(f"systemctl {verb}", source=ctx.shell.source)
        return ctx.fail(f"Unknown command verb '{verb}'.")

    def _verb(self, verb: str, u: str, ctx: Ctx, flags: set[str]) -> int:
        if verb == "start":
            return self.start(u, ctx.out, ctx.err)
        if verb == "stop":
            return self.stop(u, ctx.out, ctx.err)
        if verb in ("restart", "reload-or-restart", "reload"):
            if not self.exists(u):
                ctx.eprint(f"Failed to {verb} {u}: Unit {u} not found.")
                return 5
            self.stop(u, ctx.out, ctx.err)
            return self.start(u, ctx.out, ctx.err)
        if verb == "try-restart":
            if self.state(u) != "active":
                return 0
            self.stop(u, ctx.out, ctx.err)
            return self.start(u, ctx.out, ctx.err)
        if verb == "enable":
            rc = self.enable(u, ctx.out, ctx.err)
            if rc == 0 and "--now" in flags:
                rc = self.start(u, ctx.out, ctx.err)
            return rc
        if verb == "disable":
            if u in self.enabled:
                self.enabled.discard(u)
                ctx.eprint(f'Removed "/etc/systemd/system/multi-user.target.wants/{u}".')
            if "--now" in flags:
                return self.stop(u, ctx.out, ctx.err)
            return 0
        return 1

    def _status(self, ctx: Ctx, units: list[str]) -> int:
        rc = 0
        for u in units:
            if not self.exists(u):
                ctx.eprint(f"Unit {u} could not be found.")
                rc = 4
                continue
            unit = self.load(u)
            st = self.states.get(u, UnitState())
            active = self.state(u)
            sub = st.sub if u in self.states else ("running" if active == "active" else "dead")
            since = datetime.fromtimestamp(st.since or self.vm.now(), tz=timezone.utc)
            desc = unit.value("Unit", "Description", u) if unit else u
            path = unit.path if unit else f"/lib/systemd/system/{u}"
            enabled = "enabled" if u in self.enabled or u in IMAGE_UNITS else "disabled"
            dot = "●" if active != "failed" else "×"
            ctx.print(f"{dot} {u} - {desc}")
            ctx.print(f"     Loaded: loaded ({path}; {enabled}; preset: enabled)")
            ctx.print(f"     Active: {active} ({sub}) since {since:%a %Y-%m-%d %H:%M:%S UTC}")
            if st.skipped_condition:
                ctx.print(f"  Condition: start condition unmet at {since:%a %Y-%m-%d %H:%M:%S UTC}")
                ctx.print(f"             └─ {st.skipped_condition} was not met")
            lines = self.unit_journal(u)[-10:]
            if lines:
                ctx.print("")
                for line in lines:
                    ctx.print(line)
            if active != "active":
                rc = rc or 3
        return rc

    def _show(self, ctx: Ctx, units: list[str], props: list[str], value_only: bool) -> int:
        for u in units:
            st = self.states.get(u, UnitState())
            values = {
                "Id": u,
                "ActiveState": self.state(u),
                "SubState": st.sub,
                "Result": st.result,
                "LoadState": "loaded" if self.exists(u) else "not-found",
                "UnitFileState": "enabled" if u in self.enabled else "disabled",
                "ExecMainStatus": str(st.exec_main_status),
            }
            for p in props or list(values):
                if p in values:
                    ctx.print(values[p] if value_only else f"{p}={values[p]}")
        return 0

    def journalctl(self, ctx: Ctx) -> int:
        units: list[str] = []
        lines: int | None = None
        it = iter(ctx.argv[1:])
        for a in it:
            if a in ("-u", "--unit"):
                units.append(unit_name(next(it, "")))
            elif a.startswith("--unit="):
                units.append(unit_name(a.split("=", 1)[1]))
            elif a in ("-n", "--lines"):
                lines = int(next(it, "10"))
            elif a.startswith("--lines="):
                lines = int(a.split("=", 1)[1])
            elif re.fullmatch(r"-n\d+", a):
                lines = int(a[2:])
        host = "localhost"
        entries = [(t, u, line) for t, u, line in self.journal if not units or u in units]
        if lines is not None:
            entries = entries[-lines:] if lines else []
        if not entries:
            ctx.print("-- No entries --")
            return 0
        for t, _, line in entries:
            stamp = datetime.fromtimestamp(t, tz=timezone.utc)
            ctx.print(
                f"{stamp:%b %d %H:%M:%S} {host} {line if '[' in line.split(':')[0] else 'systemd[1]: ' + line}"
            )
        return 0
