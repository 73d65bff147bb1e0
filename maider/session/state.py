"""Session records on disk: one directory per session, written atomically under one lock.

Layout (docs/LIFECYCLE.md, "Local files")::

    <state>/sessions/<id>/session.json   the record (this module's SessionRecord), 0600
    <state>/sessions/<id>/api_key        the session's vLLM API key (a secret), 0600
    <state>/sessions/<id>/known_hosts    the VM's pinned host key (remote.keys), 0600
    <state>/sessions/<id>/host_key(.pub) the VM's host key pair (remote.keys), 0600
    <state>/current                      id of the current session, 0600 (global, not per cwd)
    <state>/lock                         the filelock every writer holds

What the previous generation got wrong, and what this module does instead:

- A custom name silently overwrote the record of another live VM. Here :meth:`SessionStore.create`
  refuses an existing id, and a name already used by a live session.
- The current session was a symlink in the working directory. Here it is one global file.
- Writers raced. Here every write is a read-modify-write under ``<state>/lock`` and lands with
  write-temp + fsync + ``os.replace``, so a crash leaves the old record or the new one, never half.
- A record that cannot be read (corrupt, or written by a newer maider) is reported with the file
  name and what to do. It is never skipped silently and never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maider import paths
from maider.errors import MaiderError
from maider.provider import Price

#: Version of the session.json layout. Bump it for an incompatible change and add the step that
#: converts the previous layout to MIGRATIONS.
SCHEMA_VERSION = 1

#: MIGRATIONS[n] turns the raw dict of a schema-n record into a schema-(n+1) one. They run on
#: read; the upgraded record is written back at the next update.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

ID_RE = re.compile(r"^s[0-9a-f]{8}$")
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
NAME_MAX = 40

#: How long a writer waits for another maider process to release the state lock. Writers hold
#: it for milliseconds (a read and an atomic write), so hitting this means a stuck process.
LOCK_TIMEOUT = 30.0

RECORD_FILE = "session.json"
API_KEY_FILE = "api_key"
KNOWN_HOSTS_FILE = "known_hosts"
HOST_KEY_FILE = "host_key"
TUNNEL_LOG_FILE = "tunnel.log"


class StateError(MaiderError):
    """A state file cannot be used as it is (corrupt, or from a newer maider)."""


class SessionNotFound(MaiderError):
    pass


class SessionExists(MaiderError):
    pass


class SessionStatus(str, enum.Enum):
    CREATING = "creating"  # record written, create_instance not answered yet
    PROVISIONING = "provisioning"  # the provider is building the VM
    BOOTING = "booting"  # running; waiting for SSH and cloud-init
    STARTING = "starting"  # secrets written, stack started, waiting for vLLM
    READY = "ready"
    FAILED = "failed"  # up failed; the VM was (or is being) deleted
    KEPT = "kept"  # up failed and the VM was kept on purpose (--keep-on-failure): still billed
    DELETING = "deleting"
    DELETED = "deleted"


#: Statuses in which a VM may exist and bill (everything but the end state).
LIVE_STATUSES = frozenset(SessionStatus) - {SessionStatus.DELETED}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def validate_name(name: str) -> str:
    """A session name: lowercase letters, digits and inner hyphens, at most 40 characters."""
    if not NAME_RE.match(name):
        raise MaiderError(
            f"invalid session name {name!r}: use lowercase letters, digits and hyphens "
            f"(not at either end), at most {NAME_MAX} characters, e.g. 'qwen-coder'"
        )
    if ID_RE.match(name):
        raise MaiderError(f"invalid session name {name!r}: it looks like a session id; pick another name")
    return name


class SessionRecord(BaseModel):
    """Everything maider knows about one session. No secret belongs here (see api_key)."""

    # Unknown fields are kept (and written back), so a newer maider's additions survive an
    # older maider's update of the same schema version.
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    id: str
    name: str | None = None
    provider: str
    region: str
    type_id: str
    instance_id: str | None = None  # None until create_instance answers
    status: SessionStatus = SessionStatus.CREATING
    created_at: dt.datetime = Field(default_factory=_utcnow)
    ready_at: dt.datetime | None = None
    ip: str | None = None
    ssh_port: int = 22
    hourly_price: Price | None = None  # as quoted when the VM was created
    model: str
    served_model_name: str
    max_model_len: int | None = None
    api_port: int | None = None  # local tunnel end of vLLM (127.0.0.1)
    webui_port: int | None = None  # local tunnel end of Open WebUI, if forwarded
    tunnel_pid: int | None = None  # the ssh process that holds the forwards
    phases: dict[str, float] = Field(default_factory=dict)  # phase name → seconds
    last_error: str | None = None
    keep_on_failure: bool = False
    #: The vLLM settings running on the VM (maider.sizing.VLLMSettings as a dict), the extra
    #: container environment healing added, and what else re-renders compose.yaml (images,
    #: Open WebUI, GPU vendor/count, the utilization the plan chose): see maider.session.healing.
    vllm: dict[str, Any] | None = None
    vllm_env: dict[str, str] = Field(default_factory=dict)
    stack: dict[str, Any] | None = None
    #: Every healing try of this session (maider.ops.heal.HealAttempt.to_dict() + "during").
    heal_attempts: list[dict[str, Any]] = Field(default_factory=list)
    # The laptop watchdog (maider.session.laptop_watchdog): its pid and that process's start
    # token (a pid alone may have been reused by another program since).
    laptop_watchdog_pid: int | None = None
    laptop_watchdog_started: str | None = None
    # A session whose VM a watchdog deleted keeps its record (status deleted) saying why and when,
    # and what it cost, until `maider cleanup` forgets it.
    ended_at: dt.datetime | None = None
    end_reason: str | None = None
    final_cost: float | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not ID_RE.match(value):
            raise ValueError(f"session id must be 's' + 8 lowercase hex digits, not {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not NAME_RE.match(value) or ID_RE.match(value)):
            raise ValueError(f"invalid session name {value!r}")
        return value

    @property
    def label(self) -> str:
        """How to name the session to the user: its name when it has one, else its id."""
        return self.name or self.id

    @property
    def vm_name(self) -> str:
        return f"maider-{self.id}"

    @property
    def tags(self) -> list[str]:
        return ["maider", f"maider-session-{self.id}"]

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    def describe(self) -> str:
        """One line for lists in error messages."""
        name = f" ({self.name})" if self.name else ""
        return f"{self.id}{name}: {self.status.value}, {self.provider} {self.type_id} in {self.region}"


def generate_api_key() -> str:
    """A per-session vLLM API key. Hex only: it goes into an env file on the VM as is."""
    return "sk-maider-" + secrets.token_hex(24)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write ``path`` so that readers (and a crash) see the old content or the new, never a mix.

    The temp file is created 0600 in the same directory, synced, then renamed over ``path``; the
    directory is synced too, so the rename survives a power cut. A crash leaves at most a
    ``.<name>.*.tmp`` file, which readers ignore.
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class SessionStore:
    """The session records under ``root`` (default: the platform state dir)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.state_dir()
        self.sessions_dir = self.root / "sessions"
        self.lock_path = self.root / "lock"
        self.current_path = self.root / "current"
        self._lock: Any = None

    # ---------------------------------------------------------------------------- paths

    def session_dir(self, session_id: str) -> Path:
        _check_id(session_id)
        return self.sessions_dir / session_id

    def record_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / RECORD_FILE

    def api_key_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / API_KEY_FILE

    def known_hosts_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / KNOWN_HOSTS_FILE

    def host_key_path(self, session_id: str) -> Path:
        """The VM's private host key; the public half is the same path + ``.pub``."""
        return self.session_dir(session_id) / HOST_KEY_FILE

    def tunnel_log_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / TUNNEL_LOG_FILE

    # ---------------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state lock (re-entrant in one thread): for read-modify-write sequences."""
        from filelock import FileLock, Timeout

        if self._lock is None:
            _private_dir(self.root)
            # One lock object per store: re-entrant within a thread, exclusive across
            # processes and across threads (each thread gets its own descriptor).
            self._lock = FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT)
        try:
            with self._lock:
                yield
        except Timeout:
            raise MaiderError(
                f"another maider process has held the state lock {self.lock_path} for "
                f"{LOCK_TIMEOUT:.0f} s; wait for it to finish and retry"
            ) from None

    # ---------------------------------------------------------------------------- records

    def new_id(self) -> str:
        """A fresh session id, unused by any session directory."""
        while True:
            candidate = "s" + secrets.token_hex(4)
            if not (self.sessions_dir / candidate).exists():
                return candidate

    def create(self, record: SessionRecord) -> SessionRecord:
        """Store a new record. Refuses an id that exists and a name a live session uses."""
        with self.lock():
            directory = self.session_dir(record.id)
            if (directory / RECORD_FILE).exists():
                raise SessionExists(f"session {record.id} already exists; refusing to overwrite its record")
            if record.name is not None:
                self._check_name_free(record.name, record.id)
            _private_dir(self.sessions_dir)
            directory.mkdir(mode=0o700, exist_ok=True)
            directory.chmod(0o700)
            self._write(record)
        return record

    def get(self, session_id: str) -> SessionRecord:
        path = self.record_path(session_id)
        if not path.exists():
            raise SessionNotFound(f"no session {session_id}; `maider list` shows the sessions")
        return _load(path, session_id)

    def update(self, session_id: str, **changes: Any) -> SessionRecord:
        """Change some fields of a record (read-modify-write under the lock); returns the result."""
        bad = sorted(
            (set(changes) - set(SessionRecord.model_fields)) | (set(changes) & {"id", "schema_version"})
        )
        if bad:
            raise ValueError(f"cannot update session field(s) {', '.join(bad)}")
        return self.mutate(session_id, lambda data: data.update(changes))

    def record_phase(self, session_id: str, phase: str, seconds: float) -> SessionRecord:
        """Record how long a phase took, keeping the other phases (even concurrent ones)."""
        return self.mutate(session_id, lambda data: data["phases"].update({phase: round(seconds, 3)}))

    def mutate(self, session_id: str, change: Callable[[dict[str, Any]], object]) -> SessionRecord:
        """Apply ``change`` to the record's field dict under the lock, validate, write."""
        with self.lock():
            current = self.get(session_id)
            data = current.model_dump()
            change(data)
            data["id"] = current.id
            data["schema_version"] = SCHEMA_VERSION
            try:
                record = SessionRecord.model_validate(data)
            except ValidationError as exc:
                raise ValueError(f"invalid update of session {session_id}: {exc}") from None
            if record.name is not None and record.name != current.name:
                self._check_name_free(record.name, record.id)
            self._write(record)
            return record

    def scan(self) -> tuple[list[SessionRecord], list[StateError]]:
        """Every record that reads, and one error per record that does not (oldest first)."""
        records: list[SessionRecord] = []
        problems: list[StateError] = []
        if not self.sessions_dir.is_dir():
            return records, problems
        for directory in sorted(self.sessions_dir.iterdir()):
            path = directory / RECORD_FILE
            if not ID_RE.match(directory.name) or not path.exists():
                continue  # temp files, or a directory whose create never wrote a record
            try:
                records.append(_load(path, directory.name))
            except StateError as exc:
                problems.append(exc)
        records.sort(key=lambda r: (r.created_at, r.id))
        return records, problems

    def all(self) -> list[SessionRecord]:
        """Every record; raises the first unreadable one rather than hiding it."""
        records, problems = self.scan()
        if problems:
            raise problems[0]
        return records

    def delete(self, session_id: str) -> None:
        """Remove the session's directory (record, keys, API key). Clears `current` if it was."""
        with self.lock():
            directory = self.session_dir(session_id)
            if directory.exists():
                shutil.rmtree(directory)
            if self._read_current() == session_id:
                self.current_path.unlink(missing_ok=True)

    def used_ports(self, exclude: str | None = None) -> set[int]:
        """Local ports recorded by live sessions other than ``exclude``."""
        records, _ = self.scan()
        used: set[int] = set()
        for record in records:
            if record.id == exclude or not record.is_live:
                continue
            used.update(p for p in (record.api_port, record.webui_port) if p)
        return used

    # ---------------------------------------------------------------------------- API key

    def write_api_key(self, session_id: str, key: str) -> None:
        with self.lock():
            if not self.record_path(session_id).exists():
                raise SessionNotFound(f"no session {session_id}")
            atomic_write(self.api_key_path(session_id), key + "\n")

    def read_api_key(self, session_id: str) -> str:
        path = self.api_key_path(session_id)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise StateError(f"session {session_id} has no API key file ({path})") from None
        if not key:
            raise StateError(f"the API key file {path} is empty")
        return key

    # ---------------------------------------------------------------------------- current

    def current(self) -> str | None:
        """The id of the current session, or None (none set, or its record is gone)."""
        session_id = self._read_current()
        if session_id is None or not self.record_path(session_id).exists():
            return None
        return session_id

    def set_current(self, session_id: str | None) -> None:
        with self.lock():
            if session_id is None:
                self.current_path.unlink(missing_ok=True)
                return
            self.get(session_id)  # must exist
            atomic_write(self.current_path, session_id + "\n")

    def _read_current(self) -> str | None:
        try:
            text = self.current_path.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return text if ID_RE.match(text) else None

    # ---------------------------------------------------------------------------- lookup

    def resolve(self, name_or_id: str | None = None) -> SessionRecord:
        """The session a user means: an id, a name, or (None) the current or only live session."""
        records, problems = self.scan()
        unreadable = f"; unreadable: {'; '.join(str(p) for p in problems)}" if problems else ""
        if name_or_id is None:
            current = self.current()
            if current is not None:
                return self.get(current)
            live = [r for r in records if r.is_live]
            if len(live) == 1:
                return live[0]
            if not live:
                raise SessionNotFound(f"no session: start one with `maider up`{unreadable}")
            raise SessionNotFound(
                f"{len(live)} sessions, none current: name one ({_listing(live)}), or pick one with `maider use`"
            )
        if ID_RE.match(name_or_id):
            if self.record_path(name_or_id).exists():
                return self.get(name_or_id)
        else:
            named = [r for r in records if r.name == name_or_id]
            live = [r for r in named if r.is_live]
            if len(live) == 1 or (len(named) == 1 and not live):
                return (live or named)[0]
            if named:
                raise SessionNotFound(
                    f"several sessions are named {name_or_id!r}: use an id ({_listing(live or named)})"
                )
        known = f"sessions: {_listing(records)}" if records else "there are no sessions"
        raise SessionNotFound(f"no session with id or name {name_or_id!r}; {known}{unreadable}")

    # ---------------------------------------------------------------------------- internals

    def _check_name_free(self, name: str, own_id: str) -> None:
        validate_name(name)
        records, _ = self.scan()
        for other in records:
            if other.name == name and other.id != own_id and other.is_live:
                raise SessionExists(
                    f"session name {name!r} is already used by {other.describe()}; pick another name "
                    f"or `maider down {name}` first"
                )

    def _write(self, record: SessionRecord) -> None:
        text = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
        atomic_write(self.record_path(record.id), text)


def _listing(records: list[SessionRecord]) -> str:
    return "; ".join(r.describe() for r in records)


def _check_id(session_id: str) -> None:
    # Ids become path components: anything else (../, names) must never reach the filesystem.
    if not ID_RE.match(session_id):
        raise SessionNotFound(f"{session_id!r} is not a session id (they look like s3f9a01c2)")


def _load(path: Path, session_id: str) -> SessionRecord:
    fix = f"move {path.parent} aside (or fix the file), then rerun; maider never rewrites it as is"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"session record {path} cannot be read ({exc}): {fix}") from None
    if not isinstance(raw, dict):
        raise StateError(f"session record {path} is not a JSON object: {fix}")
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(f"session record {path} has no valid schema_version: {fix}")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"session record {path} was written by a newer maider (schema {version}, this maider "
            f"reads up to {SCHEMA_VERSION}): upgrade maider to manage session {session_id}"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StateError(f"session record {path} has schema {version}, which this maider cannot migrate")
        raw = step(dict(raw))
        version += 1
        raw["schema_version"] = version
    try:
        record = SessionRecord.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise StateError(f"session record {path} is invalid ({where}: {first['msg']}): {fix}") from None
    if record.id != session_id:
        raise StateError(f"session record {path} holds id {record.id!r}, not {session_id!r}: {fix}")
    return record
