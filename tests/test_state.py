"""Session records on disk: atomic, locked, private, loud about anything it cannot read."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from maider.errors import MaiderError
from maider.provider import Price
from maider.session import state
from maider.session.state import (
    SessionExists,
    SessionNotFound,
    SessionRecord,
    SessionStatus,
    SessionStore,
    StateError,
    validate_name,
)

REPO = Path(__file__).resolve().parent.parent


def make_record(store: SessionStore, name: str | None = None, **fields: object) -> SessionRecord:
    data: dict[str, object] = {
        "id": store.new_id(),
        "name": name,
        "provider": "linode",
        "region": "us-ord",
        "type_id": "g2-gpu-rtx4000a1-s",
        "hourly_price": Price(0.52, "USD"),
        "model": "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ",
        "served_model_name": "coder",
        "max_model_len": 32768,
    }
    data.update(fields)
    return store.create(SessionRecord.model_validate(data))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store() -> SessionStore:
    return SessionStore()


def test_store_lives_in_the_state_dir(store: SessionStore) -> None:
    assert store.root == Path(os.environ["MAIDER_STATE_DIR"])


def test_create_writes_a_private_record(store: SessionStore) -> None:
    record = make_record(store, "qwen")
    path = store.record_path(record.id)
    assert path == store.root / "sessions" / record.id / "session.json"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    assert data["status"] == "creating"
    assert data["instance_id"] is None
    assert data["hourly_price"] == {"amount": 0.52, "currency": "USD"}
    again = store.get(record.id)
    assert again == record
    assert again.hourly_price == Price(0.52, "USD")
    assert record.vm_name == f"maider-{record.id}"
    assert record.tags == ["maider", f"maider-session-{record.id}"]


def test_ids_are_fresh(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_record(store)
    assert state.ID_RE.match(first.id)
    values = iter([first.id[1:], "0badcafe"])
    monkeypatch.setattr(state.secrets, "token_hex", lambda n: next(values))
    assert store.new_id() == "s0badcafe"  # the existing id was skipped


def test_create_never_overwrites(store: SessionStore) -> None:
    record = make_record(store, "qwen", ip="203.0.113.5")
    with pytest.raises(SessionExists, match="refusing to overwrite"):
        store.create(record.model_copy(update={"ip": "198.51.100.1"}))
    assert store.get(record.id).ip == "203.0.113.5"


def test_a_live_name_is_not_reused(store: SessionStore) -> None:
    first = make_record(store, "qwen")
    with pytest.raises(SessionExists, match="already used by"):
        make_record(store, "qwen")
    store.update(first.id, status=SessionStatus.DELETED)
    second = make_record(store, "qwen")  # the old one is gone: the name is free again
    assert store.resolve("qwen").id == second.id


@pytest.mark.parametrize("name", ["qwen", "a", "qwen-coder-32b", "x" * 40])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Qwen", "-qwen", "qwen-", "qwen_coder", "q w", "x" * 41, "../etc", "s0badcafe"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(MaiderError, match="session name"):
        validate_name(name)


def test_update_changes_fields_and_keeps_others(store: SessionStore) -> None:
    record = make_record(store, "qwen")
    updated = store.update(record.id, status="booting", instance_id="12345", ip="203.0.113.5")
    assert updated.status is SessionStatus.BOOTING
    assert store.get(record.id).instance_id == "12345"
    assert store.get(record.id).model == record.model
    store.record_phase(record.id, "create", 12.34567)
    store.record_phase(record.id, "ssh", 3)
    assert store.get(record.id).phases == {"create": 12.346, "ssh": 3.0}


def test_update_rejects_unknown_fields_and_bad_values(store: SessionStore) -> None:
    record = make_record(store)
    with pytest.raises(ValueError, match="colour"):
        store.update(record.id, colour="blue")
    with pytest.raises(ValueError, match="id"):
        store.update(record.id, id="s00000000")
    with pytest.raises(ValueError, match="invalid update"):
        store.update(record.id, status="sleeping")
    assert store.get(record.id) == record


def test_unknown_fields_of_a_newer_maider_survive_an_update(store: SessionStore) -> None:
    record = make_record(store)
    path = store.record_path(record.id)
    data = json.loads(path.read_text())
    data["watchdog"] = {"idle_minutes": 30}
    path.write_text(json.dumps(data))
    store.update(record.id, ip="203.0.113.5")
    assert json.loads(path.read_text())["watchdog"] == {"idle_minutes": 30}


def test_api_key_lives_apart_from_the_record(store: SessionStore) -> None:
    record = make_record(store)
    key = state.generate_api_key()
    store.write_api_key(record.id, key)
    assert store.read_api_key(record.id) == key
    assert mode(store.api_key_path(record.id)) == 0o600
    for path in store.session_dir(record.id).iterdir():
        if path.name != "api_key":
            assert key not in path.read_text()
    assert key not in repr(store.get(record.id))


def test_every_state_file_is_private(store: SessionStore) -> None:
    record = make_record(store, "qwen")
    store.write_api_key(record.id, "k")
    store.set_current(record.id)
    store.update(record.id, ip="203.0.113.5")
    files = [p for p in store.root.rglob("*") if p.is_file() and p.name != "lock"]
    assert {p.name for p in files} == {"session.json", "api_key", "current"}
    assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
    assert mode(store.root) == 0o700


_CRASH = """
import os, signal, sys
from pathlib import Path
from maider.session.state import SessionStore

store = SessionStore(Path(sys.argv[1]))
def crash(*args, **kwargs):  # the power goes out between writing the temp file and the rename
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = crash
store.update(sys.argv[2], ip="198.51.100.7", status="booting")
"""


def test_a_crash_mid_write_leaves_the_old_record(store: SessionStore) -> None:
    record = make_record(store, "qwen", ip="203.0.113.5")
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(store.root), record.id], cwd=REPO, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = list(store.session_dir(record.id).glob(".session.json.*.tmp"))
    assert len(leftovers) == 1  # the half-done write is there...
    assert "198.51.100.7" in leftovers[0].read_text()
    assert store.get(record.id).ip == "203.0.113.5"  # ...and ignored
    assert [r.id for r in store.all()] == [record.id]
    assert store.update(record.id, ip="198.51.100.8").ip == "198.51.100.8"  # and the lock was freed


def test_a_corrupt_record_is_reported_and_left_alone(store: SessionStore) -> None:
    good = make_record(store, "good")
    bad = make_record(store, "bad")
    path = store.record_path(bad.id)
    path.write_text('{"schema_version": 1, "id": "' + bad.id + '", "provi')
    before = path.read_bytes()
    with pytest.raises(StateError, match=r"cannot be read .*move .* aside") as info:
        store.get(bad.id)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    records, problems = store.scan()
    assert [r.id for r in records] == [good.id]
    assert len(problems) == 1 and bad.id in str(problems[0])
    with pytest.raises(StateError):
        store.all()  # never silently without it
    with pytest.raises(StateError):
        store.update(bad.id, ip="203.0.113.5")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"id": "s00000001"}', "no valid schema_version"),
        ('{"schema_version": "1"}', "no valid schema_version"),
        (
            '{"schema_version": 1, "id": "s00000001", "provider": "linode"}',
            r"invalid \(region: Field required",
        ),
    ],
)
def test_malformed_records(store: SessionStore, content: str, message: str) -> None:
    path = store.sessions_dir / "s00000001" / "session.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(StateError, match=message):
        store.get("s00000001")


def test_a_record_from_another_session_dir_is_refused(store: SessionStore) -> None:
    record = make_record(store)
    other = store.sessions_dir / "s00000001"
    other.mkdir()
    (other / "session.json").write_text(store.record_path(record.id).read_text())
    with pytest.raises(StateError, match="holds id"):
        store.get("s00000001")


def test_a_newer_schema_asks_for_an_upgrade(store: SessionStore) -> None:
    record = make_record(store)
    path = store.record_path(record.id)
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(StateError, match=r"newer maider .*upgrade maider"):
        store.get(record.id)
    with pytest.raises(StateError):
        store.update(record.id, ip="203.0.113.5")
    assert json.loads(path.read_text())["schema_version"] == 2


def test_migrations_run_on_read_and_persist_on_write(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = make_record(store)
    path = store.record_path(record.id)
    old = json.loads(path.read_text())
    old["hourly_usd"] = old.pop("hourly_price")["amount"]  # what a schema-1 file of a future looks like
    path.write_text(json.dumps(old))

    def one_to_two(data: dict[str, object]) -> dict[str, object]:
        data["hourly_price"] = {"amount": data.pop("hourly_usd"), "currency": "USD"}
        return data

    monkeypatch.setattr(state, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(state.MIGRATIONS, 1, one_to_two)
    migrated = store.get(record.id)
    assert migrated.hourly_price == Price(0.52, "USD")
    assert migrated.schema_version == 2
    assert json.loads(path.read_text())["schema_version"] == 1  # reading never writes
    store.update(record.id, ip="203.0.113.5")
    assert json.loads(path.read_text())["schema_version"] == 2


def test_a_missing_migration_is_an_error(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    record = make_record(store)
    monkeypatch.setattr(state, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(state.MIGRATIONS, 1, lambda data: data)
    with pytest.raises(StateError, match="cannot migrate"):
        store.get(record.id)


def test_ids_never_reach_the_filesystem_unchecked(store: SessionStore) -> None:
    for bad in ("../../etc", "s1234", "S0BADCAFE", "qwen"):
        with pytest.raises(SessionNotFound, match="not a session id"):
            store.get(bad)
        with pytest.raises(SessionNotFound):
            store.delete(bad)


def test_current_is_global_not_per_directory(
    store: SessionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_record(store, "first")
    second = make_record(store, "second")
    assert store.current() is None
    store.set_current(second.id)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert SessionStore().current() == second.id
    assert SessionStore().resolve().id == second.id
    assert mode(store.current_path) == 0o600
    with pytest.raises(SessionNotFound):
        store.set_current("s00000001")
    store.delete(second.id)
    assert store.current() is None
    assert not store.current_path.exists()
    assert store.resolve().id == first.id  # the only live session


def test_delete_removes_the_session_directory(store: SessionStore) -> None:
    record = make_record(store)
    store.write_api_key(record.id, "k")
    store.delete(record.id)
    assert not store.session_dir(record.id).exists()
    with pytest.raises(SessionNotFound):
        store.get(record.id)
    store.delete(record.id)  # idempotent


def test_resolve(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound, match="no session: start one with `maider up`"):
        store.resolve()
    a = make_record(store, "alpha")
    b = make_record(store)
    assert store.resolve(a.id).id == a.id
    assert store.resolve("alpha").id == a.id
    assert store.resolve(b.id).id == b.id
    with pytest.raises(SessionNotFound, match="2 sessions, none current") as info:
        store.resolve()
    assert a.id in str(info.value) and b.id in str(info.value)
    with pytest.raises(SessionNotFound, match="no session with id or name 'beta'") as info:
        store.resolve("beta")
    assert f"{a.id} (alpha): creating, linode" in str(info.value)
    with pytest.raises(SessionNotFound, match="no session with id or name"):
        store.resolve("s00000001")


def test_resolve_ambiguous_names(store: SessionStore) -> None:
    a = make_record(store, "alpha")
    # Two live records with one name can only come from outside (a copied directory, an old
    # maider): resolve must not pick one at random.
    twin = a.model_copy(update={"id": "s00000001"})
    (store.sessions_dir / twin.id).mkdir()
    store.record_path(twin.id).write_text(twin.model_dump_json())
    with pytest.raises(SessionNotFound, match="several sessions are named 'alpha': use an id"):
        store.resolve("alpha")
    store.update(twin.id, status="deleted")
    assert store.resolve("alpha").id == a.id  # the live one wins over a deleted namesake


def test_resolve_mentions_unreadable_records(store: SessionStore) -> None:
    broken = store.sessions_dir / "s00000001"
    broken.mkdir(parents=True)
    (broken / "session.json").write_text("{")
    with pytest.raises(SessionNotFound, match=r"unreadable: session record .*s00000001"):
        store.resolve()


def test_used_ports_skip_self_and_deleted(store: SessionStore) -> None:
    a = make_record(store, api_port=41001, webui_port=41002)
    make_record(store, api_port=41003)
    make_record(store, api_port=41005, webui_port=41006, status="deleted")
    assert store.used_ports() == {41001, 41002, 41003}
    assert store.used_ports(exclude=a.id) == {41003}


def test_the_lock_times_out_with_a_clear_message(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from filelock import FileLock

    record = make_record(store)
    monkeypatch.setattr(state, "LOCK_TIMEOUT", 0.2)
    other = SessionStore()
    holder = FileLock(str(store.lock_path))
    # A lock held by another process: a thread with its own descriptor behaves the same.
    import threading

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait(5)
        with pytest.raises(MaiderError, match="held the state lock"):
            other.update(record.id, ip="203.0.113.5")
    finally:
        release.set()
        thread.join()
    assert other.update(record.id, ip="203.0.113.5").ip == "203.0.113.5"


# ------------------------------------------------------------------------------------ concurrency

WORKERS = 4
UPDATES = 15
FIELDS = {0: "ip", 1: "last_error", 2: "instance_id", 3: "type_id"}


def _worker(root: str, session_id: str, index: int) -> None:
    store = SessionStore(Path(root))
    for step in range(UPDATES):
        store.update(session_id, **{FIELDS[index]: f"w{index}-{step}"})
        store.record_phase(session_id, f"w{index}-{step}", step)


def test_concurrent_processes_lose_no_update(store: SessionStore) -> None:
    record = make_record(store)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_worker, args=(str(store.root), record.id, i)) for i in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    final = store.get(record.id)
    for index, field in FIELDS.items():
        assert getattr(final, field) == f"w{index}-{UPDATES - 1}"
    assert len(final.phases) == WORKERS * UPDATES
    assert not list(store.session_dir(record.id).glob("*.tmp"))
