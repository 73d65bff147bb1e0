"""cloud-init, as it runs once per instance on the emulated VM's first boot.

The user-data (``InstanceRecord.user_data``) must be a ``#cloud-config`` document. It is
validated against cloud-init's JSON schema (``$MAIDER_SPECS_DIR/cloud-init/…``), then applied
in cloud-init's module order:

init stage   bootcmd → write_files (not deferred) → hostname → users_groups → ssh (host keys,
             authorized keys; sshd starts after this)
final stage  packages (not emulated) → write_files (defer: true) → runcmd → final_message

The final stage runs when the configured delay has passed (``cloudinit_seconds`` /
``cloudinit_sim_seconds``); ``cloud-init status`` reads "running" until then. Every module
failure is kept in ``errors`` with cloud-init's own wording, and ``status`` ends "error" (or
"degraded done" for warnings when ``strict_schema`` is off).
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .shell import BufferSink, Shell

if TYPE_CHECKING:
    from .vm import EmulatedVM

SCHEMA_FILE = "cloud-init/schema-cloud-config-v1.json"

#: Users a fresh Ubuntu image has before cloud-init's users_groups module runs.
SYSTEM_USERS = frozenset(
    {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy"}
    | {"www-data", "backup", "list", "irc", "nobody", "systemd-network", "systemd-resolve"}
    | {"messagebus", "systemd-timesync", "syslog", "_apt", "sshd", "uuidd", "tcpdump", "polkitd"}
)

#: Modules the emulator applies (the rest of a document is recorded as not emulated).
HANDLED = frozenset(
    {"write_files", "users", "ssh_authorized_keys", "ssh_keys", "disable_root", "bootcmd", "runcmd"}
    | {"hostname", "fqdn", "preserve_hostname", "final_message", "ssh_deletekeys", "ssh_genkeytypes"}
    | {"ssh_pwauth", "disable_root_opts", "allow_public_ssh_keys", "ssh_quiet_keygen"}
)

DATASOURCES = {
    "linode": ("akamai", "DataSourceAkamai"),
    "digitalocean": ("digitalocean", "DataSourceDigitalOcean"),
    "scaleway": ("scaleway", "DataSourceScaleway"),
}


def formatdate(ts: float) -> str:
    """cloud-init's last_update format ("Tue, 15 Aug 2023 17:50:15 +0000")."""
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


def specs_dir() -> Path:
    from tests.cloudsim.spec import specs_dir as cloudsim_specs_dir

    return cloudsim_specs_dir()


@functools.lru_cache(maxsize=4)
def _validator(path: str) -> Any:
    import jsonschema

    with open(path) as f:
        schema = json.load(f)
    return jsonschema.Draft4Validator(schema)


def schema_path() -> Path | None:
    path = specs_dir() / SCHEMA_FILE
    return path if path.is_file() else None


def schema_errors(config: Any) -> list[str] | None:
    """cloud-init's "key.path: message" list, or None when the schema is not available."""
    path = schema_path()
    if path is None:
        return None
    errors = sorted(_validator(str(path)).iter_errors(config), key=lambda e: list(e.absolute_path))
    out = []
    for e in errors:
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        out.append(f"{where}: {e.message}")
    return out


class _ModuleFailure(Exception):
    pass


@dataclass
class WrittenFile:
    path: str
    mode: int
    owner: str
    size: int
    deferred: bool
    append: bool


@dataclass
class UserKeys:
    """Public keys that may log in as a user; ``restricted`` keys only get root's
    "Please login as …" message (disable_root)."""

    keys: list[str] = field(default_factory=list)
    restricted: list[str] = field(default_factory=list)


class CloudInit:
    def __init__(self, vm: EmulatedVM) -> None:
        self.vm = vm
        self.user_data: str | None = None
        #: "not started", "running", "done", "error" or "degraded".
        self.status = "not started"
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.config: dict[str, Any] = {}
        #: None: the schema file was not found, so nothing was checked.
        self.schema_checked: bool | None = None
        self.files: list[WrittenFile] = []
        #: (module, line, exit code) of every bootcmd/runcmd line.
        self.script_lines: list[tuple[str, str, int]] = []
        self.users: dict[str, UserKeys] = {}
        self.disable_root = False
        self.host_keys: list[str] = []
        self.generated_host_key = False
        self.output: list[str] = []
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.final_stage_done = False
        self._known_users: set[str] = set(SYSTEM_USERS)

    # -- inspection ------------------------------------------------------------------------

    @property
    def not_emulated(self) -> list[str]:
        return [n for n in self.vm.not_emulated if n.startswith(("cloud-init:", "bootcmd:", "runcmd:"))]

    @property
    def failed_lines(self) -> list[tuple[str, str, int]]:
        return [t for t in self.script_lines if t[2] != 0]

    def file(self, path: str) -> WrittenFile | None:
        return next((f for f in reversed(self.files) if f.path == path), None)

    # -- stages ----------------------------------------------------------------------------

    def init_stage(self, user_data: str | None) -> None:
        self.user_data = user_data
        self.status = "running"
        self.started_at = self.vm.now()
        self._log(f"Cloud-init v. 24.4.1-0ubuntu0~24.04.1 running 'init' at {formatdate(self.started_at)}.")
        self.config = self._load(user_data)
        for key in sorted(set(self.config) - HANDLED):
            self.vm.note_not_emulated(f"cloud-init module for {key!r}", source="cloud-init")
        self._module("bootcmd", self._bootcmd)
        self._module("write_files", lambda: self._write_files(deferred=False))
        self._module("set_hostname", self._hostname)
        self._module("users_groups", self._users)
        self._module("ssh", self._ssh)

    def final_stage(self) -> None:
        if self.final_stage_done:
            return
        self.final_stage_done = True
        self._module("write_files_deferred", lambda: self._write_files(deferred=True))
        self._module("scripts_user", self._runcmd)
        self.finished_at = self.vm.now()
        if self.errors:
            self.status = "error"
        elif self.warnings:
            self.status = "degraded"
        else:
            self.status = "done"
        self._log(
            f"Cloud-init v. 24.4.1-0ubuntu0~24.04.1 finished at {formatdate(self.finished_at)}. "
            f"Datasource {self._datasource()[1]}.  Up {self.finished_at - (self.started_at or 0):.2f} seconds"
        )
        fs = self.vm.fs
        fs.write_bytes("/var/lib/cloud/instance/boot-finished", f"{self.finished_at}\n".encode(), mode=0o644)
        result = {"v1": {"datasource": self._datasource()[1], "errors": list(self.errors)}}
        fs.write_bytes("/run/cloud-init/result.json", json.dumps(result, indent=1).encode(), mode=0o644)
        fs.write_bytes(
            "/run/cloud-init/status.json", json.dumps(self.status_json(), indent=1).encode(), mode=0o644
        )

    # -- parsing ---------------------------------------------------------------------------

    def _load(self, text: str | None) -> dict[str, Any]:
        if text is None:
            self._log("No user-data: nothing to apply.")
            return {}
        first = text.lstrip("\ufeff").split("\n", 1)[0].rstrip()
        if first != "#cloud-config":
            if first.startswith("#!"):
                self.errors.append("vmsim: shell-script user-data (#!) is not emulated; send #cloud-config")
            elif "multipart" in text[:500].lower():
                self.errors.append("vmsim: MIME multi-part user-data is not emulated; send #cloud-config")
            else:
                self.errors.append(
                    f"Unhandled non-multipart (text/x-not-multipart) userdata: '{text[:40]!r}...'"
                )
            return {}
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e)
            self.errors.append(f'Failed loading yaml blob. Invalid format{where}: "{problem}"')
            return {}
        if config is None:
            return {}
        if not isinstance(config, dict):
            self.errors.append(f"Cloud config schema errors: <root>: {config!r} is not of type 'object'")
            return {}
        problems = schema_errors(config)
        self.schema_checked = problems is not None
        if problems:
            message = "Cloud config schema errors: " + ", ".join(problems)
            (self.errors if self.vm.options.strict_schema else self.warnings).append(message)
        return config

    def run_module(self, name: str) -> None:
        """Run one module again (bootcmd at every boot)."""
        self._module(name, {"bootcmd": self._bootcmd, "runcmd": self._runcmd}[name])

    def _module(self, name: str, fn: Any) -> None:
        try:
            fn()
        except _ModuleFailure as e:
            self.errors.append(f"('{name}', {e.args[0]})")
            self._log(f"Failed to run module {name}: {e.args[0]}")
        except Exception as e:  # a malformed value the schema would have caught
            self.errors.append(f"('{name}', {type(e).__name__}({str(e)!r}))")
            self._log(f"Failed to run module {name}: {e!r}")

    def _log(self, line: str) -> None:
        self.output.append(line)
        path = self.vm.fs.host("/var/log/cloud-init-output.log")
        if path.parent.is_dir():
            with open(path, "a") as f:
                f.write(line + "\n")

    def _datasource(self) -> tuple[str, str]:
        return DATASOURCES.get(self.vm.vendor, ("none", "DataSourceNone"))

    # -- modules ---------------------------------------------------------------------------

    def _script(self, module: str, items: Any) -> None:
        if not items:
            return
        if not isinstance(items, list):
            raise _ModuleFailure(f"TypeError('{module} must be a list, not {type(items).__name__}')")
        lines = []
        for item in items:
            if isinstance(item, list):
                lines.append(shlex.join(str(x) for x in item))
            else:
                lines.append(str(item))
        shell = Shell(self.vm, source=module, cwd="/")
        out = BufferSink()
        rcs = shell.run_lines(lines, out, out)
        for line, rc in zip(lines, rcs, strict=False):
            self.script_lines.append((module, line, rc))
        for text in out.getvalue().decode(errors="replace").splitlines():
            self._log(text)
        failed = [rc for rc in rcs if rc != 0]
        # Not strict: /bin/sh runs the script without -e, so only the last line's status counts.
        failing = bool(failed) if self.vm.options.strict_runcmd else bool(rcs) and rcs[-1] != 0
        if failing:
            if module == "runcmd":
                raise _ModuleFailure(
                    f"RuntimeError('Runparts: {len(failed) or 1} failures (runcmd) in 1 attempted commands')"
                )
            raise _ModuleFailure(
                f"ProcessExecutionError('Unexpected error while running command.\\n"
                f"Command: [\\'/bin/sh\\', \\'/var/lib/cloud/instance/boothooks/bootcmd\\']\\n"
                f"Exit code: {failed[-1]}')"
            )

    def _bootcmd(self) -> None:
        self._script("bootcmd", self.config.get("bootcmd"))

    def _runcmd(self) -> None:
        self._script("runcmd", self.config.get("runcmd"))

    def _write_files(self, *, deferred: bool) -> None:
        entries = self.config.get("write_files") or []
        for entry in entries:
            if not isinstance(entry, dict) or bool(entry.get("defer", False)) != deferred:
                continue
            path = str(entry.get("path", ""))
            if not path:
                raise _ModuleFailure("ValueError('write_files entry without a path')")
            if "source" in entry:
                self.vm.note_not_emulated(f"cloud-init write_files source: for {path}", source="cloud-init")
                raise _ModuleFailure(f"vmsim: write_files 'source' ({path}) is not emulated")
            data = _decode(entry.get("content", ""), str(entry.get("encoding", "text/plain")), path)
            perms = entry.get("permissions", "0o644")
            try:
                mode = perms if isinstance(perms, int) else int(str(perms), 8)
            except ValueError:
                raise _ModuleFailure(
                    f"TypeError('Invalid permissions {perms!r} for {path}: not an octal string')"
                ) from None
            owner = str(entry.get("owner", "root:root"))
            user = owner.split(":", 1)[0]
            if user not in self._known_users:
                raise _ModuleFailure(f"KeyError(\"getpwnam(): name not found: '{user}'\")")
            append = bool(entry.get("append", False))
            target = self.vm.fs.host(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.vm.fs.write_bytes(path, data, mode=mode, append=append, owner=owner)
            self.files.append(WrittenFile(path, mode, owner, len(data), deferred, append))

    def _hostname(self) -> None:
        name = self.config.get("fqdn") or self.config.get("hostname")
        if name and not self.config.get("preserve_hostname"):
            self.vm.fs.write_bytes("/etc/hostname", f"{str(name).split('.')[0]}\n".encode(), mode=0o644)

    def _users(self) -> None:
        users = self.config.get("users", ["default"])
        if isinstance(users, (str, dict)):
            users = [users]
        default = self.vm.options.default_user
        top_level = [str(k) for k in self.config.get("ssh_authorized_keys") or []]
        self.disable_root = bool(self.config.get("disable_root", False))
        root = self.users.setdefault("root", UserKeys())
        vendor = self.vm.vendor_keys() if self.vm.options.accept_vendor_keys else []
        # cc_ssh gives root the default user's keys: usable, or only the "Please login" message.
        (root.restricted if self.disable_root else root.keys).extend(top_level + vendor)
        for u in users or []:
            if u == "default" or (isinstance(u, str) and u == default):
                self._add_user(default, top_level)
                continue
            if isinstance(u, str):
                for name in u.split(","):
                    self._add_user(name.strip(), [])
                continue
            if not isinstance(u, dict) or "name" not in u:
                raise _ModuleFailure(f"TypeError('users entry {u!r} has no name')")
            keys = u.get("ssh_authorized_keys", u.get("ssh-authorized-keys")) or []
            self._add_user(str(u["name"]), [str(k) for k in keys])

    def _add_user(self, name: str, keys: list[str]) -> None:
        self._known_users.add(name)
        entry = self.users.setdefault(name, UserKeys())
        entry.keys.extend(keys)
        home = "/root" if name == "root" else f"/home/{name}"
        self.vm.fs.host(home).mkdir(parents=True, exist_ok=True)

    def _ssh(self) -> None:
        import asyncssh

        keys = self.config.get("ssh_keys") or {}
        fs = self.vm.fs
        for name, value in keys.items():
            kind, _, part = str(name).rpartition("_")
            if not kind or part not in ("private", "public", "certificate"):
                continue
            suffix = {"private": "", "public": ".pub", "certificate": "-cert.pub"}[part]
            path = f"/etc/ssh/ssh_host_{kind}_key{suffix}"
            fs.write_bytes(path, str(value).encode(), mode=0o600 if part == "private" else 0o644)
            if part == "private":
                try:
                    asyncssh.import_private_key(str(value))
                except (asyncssh.KeyImportError, ValueError) as e:
                    self._log(f"sshd: could not load host key {path}: {e}")
                    continue
                self.host_keys.append(str(value))
        if not keys:
            key = asyncssh.generate_private_key("ssh-ed25519")
            self.host_keys.append(key.export_private_key().decode())
            self.generated_host_key = True
            fs.write_bytes("/etc/ssh/ssh_host_ed25519_key", key.export_private_key(), mode=0o600)
            fs.write_bytes("/etc/ssh/ssh_host_ed25519_key.pub", key.export_public_key(), mode=0o644)
        for user, entry in self.users.items():
            home = "/root" if user == "root" else f"/home/{user}"
            lines = list(entry.keys)
            message = (
                f'echo \'Please login as the user \\"{self.vm.options.default_user}\\" rather than the user '
                '\\"root\\".\';echo;sleep 10;exit 142'
            )
            lines += [
                f'no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="{message}" {k}'
                for k in entry.restricted
            ]
            if lines:
                fs.host(f"{home}/.ssh").mkdir(parents=True, exist_ok=True)
                fs.write_bytes(f"{home}/.ssh/authorized_keys", ("\n".join(lines) + "\n").encode(), mode=0o600)

    # -- status ----------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        status = self.status
        extended = {
            "done": "done",
            "running": "running",
            "error": "error - done",
            "degraded": "degraded done",
            "not started": "not started",
        }[status]
        ds, ds_class = self._datasource()
        start = self.started_at or 0.0
        end = self.finished_at
        stage: dict[str, Any] = {"errors": [], "finished": end, "recoverable_errors": {}, "start": start}
        final = dict(stage, errors=list(self.errors))
        return {
            "boot_status_code": "enabled-by-generator",
            "datasource": ds if status != "not started" else "",
            "detail": f"{ds_class}"
            if status != "not started"
            else "Cloud-init enabled by systemd cloud-init-generator",
            "errors": list(self.errors),
            "extended_status": extended,
            "init": dict(stage, finished=start),
            "init-local": dict(stage, finished=start),
            "last_update": formatdate(end if end is not None else start or time.time()),
            "modules-config": dict(stage, finished=end),
            "modules-final": final if end is not None else dict(stage, finished=None),
            "recoverable_errors": {"WARNING": list(self.warnings)} if self.warnings else {},
            "stage": "modules-final" if status == "running" else None,
            "status": "done" if status == "degraded" else status,
        }

    def exit_code(self) -> int:
        return {"error": 1, "degraded": 2}.get(self.status, 0)


def _decode(content: Any, encoding: str, path: str) -> bytes:
    enc = encoding.lower()
    raw = content if isinstance(content, bytes) else str(content if content is not None else "").encode()
    try:
        if enc in ("b64", "base64"):
            return base64.b64decode(raw)
        if enc in ("gz", "gzip"):
            return gzip.decompress(raw)
        if enc in ("gz+b64", "gzip+b64", "gz+base64", "gzip+base64"):
            return gzip.decompress(base64.b64decode(raw))
    except (binascii.Error, OSError, EOFError) as e:
        raise _ModuleFailure(f"ValueError('cannot decode {path} as {encoding}: {e}')") from None
    return raw
