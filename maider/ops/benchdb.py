"""Benchmark history in SQLite: record runs, list them, compare GPUs, models and providers.

The file is passed in (the CLI will use ``<data>/benchmarks.sqlite3``). What the previous
generation got wrong (prior-art-maider.md §6), and what this module does instead:

- It stored hardcoded vLLM settings (TP = GPU count, 32768, 0.90). Here a run stores the settings
  vLLM really ran with (:func:`vllm_settings_record` of the session's
  :class:`~maider.sizing.VLLMSettings`, after any healing).
- Its ``compare`` ignored the GPU, model and provider filters. Here every filter is a ``WHERE``
  clause, and the tests check each one alone and combined.
- Its JSON file was read, modified and written back without one lock around the three, so
  concurrent writers lost runs. Here every write is one SQLite transaction (``BEGIN
  IMMEDIATE``) in WAL mode with a busy timeout: writers queue, readers never block them.

Schema changes go through :data:`MIGRATIONS` (version ``n`` → ``n + 1``), run inside the same
transaction that reads the version, so two processes opening an old file upgrade it once.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from maider.errors import MaiderError
from maider.ops.prompts import cost_per_million_tokens
from maider.sizing import VLLMSettings

#: Version of the schema this maider writes; ``len(MIGRATIONS)``.
SCHEMA_VERSION = 1

#: How long a writer waits for another one before giving up. Writes take milliseconds.
BUSY_TIMEOUT_S = 30.0

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class BenchDBError(MaiderError):
    """The benchmark database cannot be used (newer schema, not a database, locked too long)."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptResult:
    """One prompt of a run, as measured by the client (streaming)."""

    prompt_id: str
    output_tokens: int
    #: Request sent → last token.
    seconds: float
    #: Request sent → first token; None when no token came.
    ttft_s: float | None
    #: Decode rate: tokens after the first / time after the first token. None with < 2 tokens.
    tokens_per_s: float | None
    #: Set when the request failed; the other figures then describe what came before.
    error: str | None = None

    @classmethod
    def measured(
        cls,
        prompt_id: str,
        *,
        output_tokens: int,
        seconds: float,
        ttft_s: float | None,
        error: str | None = None,
    ) -> PromptResult:
        """Derive ``tokens_per_s`` from the timings."""
        rate = None
        if ttft_s is not None and output_tokens >= 2 and seconds > ttft_s:
            rate = (output_tokens - 1) / (seconds - ttft_s)
        return cls(prompt_id, output_tokens, seconds, ttft_s, rate, error)


def vllm_settings_record(settings: VLLMSettings) -> dict[str, Any]:
    """The vLLM settings a run is stored with: what decides its speed and memory."""
    return {
        "tensor_parallel_size": settings.tensor_parallel_size,
        "max_model_len": settings.max_model_len,
        "dtype": settings.dtype,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "quantization": settings.quantization,
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class BenchmarkRun:
    """One benchmark run: where, what, with which settings, and the per-prompt results.

    The aggregates are derived from ``results`` (and stored alongside, so the database can
    filter and sort by them).
    """

    provider: str
    region: str
    gpu_type: str
    gpu_name: str
    gpu_count: int
    model: str
    #: :func:`vllm_settings_record` of the settings vLLM ran with.
    vllm: Mapping[str, Any] = field(hash=False)
    prompt_set: str
    prompt_set_version: int
    results: tuple[PromptResult, ...]
    #: The session's price per hour when the run was made, and its currency (None: unknown).
    hourly_price: float | None = None
    currency: str | None = None
    session_id: str | None = None
    timestamp: dt.datetime = field(default_factory=_now)
    run_id: str = field(default_factory=_new_run_id)

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError("BenchmarkRun.timestamp must be timezone-aware")
        if self.gpu_count < 1:
            raise ValueError(f"gpu_count must be at least 1, got {self.gpu_count}")
        if (self.hourly_price is None) != (self.currency is None):
            raise ValueError("hourly_price and currency go together")

    @property
    def ok_results(self) -> tuple[PromptResult, ...]:
        return tuple(r for r in self.results if r.error is None)

    @property
    def median_tokens_per_s(self) -> float | None:
        return _median(r.tokens_per_s for r in self.ok_results)

    @property
    def median_ttft_s(self) -> float | None:
        return _median(r.ttft_s for r in self.ok_results)

    @property
    def total_output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.results)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    @property
    def throughput_tokens_per_s(self) -> float | None:
        """Output tokens per second of the whole run, waiting for first tokens included."""
        return self.total_output_tokens / self.total_seconds if self.total_seconds > 0 else None

    @property
    def cost_per_million_output_tokens(self) -> float | None:
        """The price of a million output tokens at the run's end-to-end throughput (one stream).

        End-to-end, not the median decode rate: time to first token is paid for too.
        """
        rate = self.throughput_tokens_per_s
        if self.hourly_price is None or not rate:
            return None
        return cost_per_million_tokens(self.hourly_price, rate)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class BenchFilter:
    """Restricts ``history`` and ``compare``. Every field set is one more condition (AND)."""

    gpu_type: str | None = None
    model: str | None = None
    provider: str | None = None
    region: str | None = None
    gpu_name: str | None = None
    session_id: str | None = None
    prompt_set: str | None = None
    prompt_set_version: int | None = None
    #: Runs at or after this time.
    since: dt.datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column in (
            "gpu_type",
            "model",
            "provider",
            "region",
            "gpu_name",
            "session_id",
            "prompt_set",
            "prompt_set_version",
        ):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(_format_time(self.since))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


#: Columns ``compare`` can group by.
GROUP_COLUMNS = (
    "gpu_type",
    "gpu_name",
    "gpu_count",
    "model",
    "provider",
    "region",
    "prompt_set",
    "prompt_set_version",
)


@dataclass(frozen=True)
class CompareRow:
    #: The group: one value per ``group_by`` column, in that order.
    key: Mapping[str, Any] = field(hash=False)
    runs: int
    #: Medians over the group's runs of each run's figure.
    median_tokens_per_s: float | None
    median_ttft_s: float | None
    #: None when the group mixes currencies (``currency`` is then None too) or has no price.
    median_cost_per_million_output_tokens: float | None
    currency: str | None
    #: The prompt sets the runs used, "name@version": more than one means mixed versions.
    prompt_sets: tuple[str, ...]
    latest: dt.datetime


# --------------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------------


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    conn.execute(
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            session_id TEXT,
            provider TEXT NOT NULL,
            region TEXT NOT NULL,
            gpu_type TEXT NOT NULL,
            gpu_name TEXT NOT NULL,
            gpu_count INTEGER NOT NULL,
            model TEXT NOT NULL,
            vllm_settings TEXT NOT NULL,
            prompt_set TEXT NOT NULL,
            prompt_set_version INTEGER NOT NULL,
            median_tokens_per_s REAL,
            median_ttft_s REAL,
            total_output_tokens INTEGER NOT NULL,
            total_seconds REAL NOT NULL,
            hourly_price REAL,
            currency TEXT,
            cost_per_million_output_tokens REAL
        )
        """
    )
    conn.execute("CREATE INDEX runs_by_type_model_provider ON runs (gpu_type, model, provider)")
    conn.execute("CREATE INDEX runs_by_time ON runs (created_at)")
    conn.execute(
        """
        CREATE TABLE results (
            run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            prompt_id TEXT NOT NULL,
            output_tokens INTEGER NOT NULL,
            seconds REAL NOT NULL,
            ttft_s REAL,
            tokens_per_s REAL,
            error TEXT,
            PRIMARY KEY (run, position)
        )
        """
    )


Migration = Callable[[sqlite3.Connection], None]

#: MIGRATIONS[n] turns a version-n database into a version-(n + 1) one; version 0 is an empty
#: file. Add the next step here and bump :data:`SCHEMA_VERSION`; never edit a released step.
MIGRATIONS: dict[int, Migration] = {0: _schema_v1}


def _read_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: sqlite3.Connection, migrations: Mapping[int, Migration] = MIGRATIONS, target: int = SCHEMA_VERSION
) -> int:
    """Bring the database to ``target`` inside one write transaction; returns the old version.

    A database newer than ``target`` is refused (an older maider must not write into it).
    """
    with _write(conn):
        version = _read_version(conn)
        if version > target:
            raise BenchDBError(
                f"the benchmark database has schema version {version}, newer than this maider "
                f"knows ({target}): upgrade maider"
            )
        start = version
        while version < target:
            step = migrations.get(version)
            if step is None:
                raise BenchDBError(f"no migration from benchmark schema version {version}")
            step(conn)
            version += 1
        if version != start:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        return start


class _write:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken first,
    so two writers never both read and then both fail to upgrade to a write lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def connect(path: Path | str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """Open (creating if needed) the database in WAL mode with a busy timeout; not migrated."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(p, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as exc:
        raise BenchDBError(f"cannot open the benchmark database {p}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        _enable_wal(conn, busy_timeout_s)
        conn.execute("PRAGMA foreign_keys = ON")
        # Durable at every checkpoint, not every commit: losing the last run on a power cut is
        # acceptable, corrupting the file is not (WAL guarantees that either way).
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.OperationalError as exc:  # locked for longer than the busy timeout, read-only…
        conn.close()
        raise BenchDBError(f"cannot open the benchmark database {p}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BenchDBError(f"{p} is not a usable SQLite database: {exc}") from None
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    # Switching a new file to WAL needs an exclusive lock for a moment; when several processes
    # open the same new file at once SQLite may answer "locked" without calling the busy
    # handler, so retry until the busy timeout.
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BenchDBError(f"the benchmark database cannot use WAL mode (got {mode})")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------


def _format_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return value.astimezone(dt.timezone.utc).strftime(_TIME_FORMAT)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


_RUN_COLUMNS = (
    "id, run_id, created_at, session_id, provider, region, gpu_type, gpu_name, gpu_count, model, "
    "vllm_settings, prompt_set, prompt_set_version, hourly_price, currency"
)


class BenchDB:
    """The benchmark history at ``path``. One connection; use as a context manager or close()."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, busy_timeout_s=busy_timeout_s)
        try:
            migrate(self._conn)
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise BenchDBError(f"cannot prepare the benchmark database {self.path}: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BenchDB:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return _read_version(self._conn)

    # -- writing -----------------------------------------------------------------------------

    def record(self, run: BenchmarkRun) -> int:
        """Store ``run`` and its results in one transaction; returns its row id."""
        try:
            with _write(self._conn) as conn:
                cur = conn.execute(
                    """
                    INSERT INTO runs (
                        run_id, created_at, session_id, provider, region, gpu_type, gpu_name,
                        gpu_count, model, vllm_settings, prompt_set, prompt_set_version,
                        median_tokens_per_s, median_ttft_s, total_output_tokens, total_seconds,
                        hourly_price, currency, cost_per_million_output_tokens
                    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (
                        run.run_id,
                        _format_time(run.timestamp),
                        run.session_id,
                        run.provider,
                        run.region,
                        run.gpu_type,
                        run.gpu_name,
                        run.gpu_count,
                        run.model,
                        json.dumps(dict(run.vllm), sort_keys=True),
                        run.prompt_set,
                        run.prompt_set_version,
                        run.median_tokens_per_s,
                        run.median_ttft_s,
                        run.total_output_tokens,
                        run.total_seconds,
                        run.hourly_price,
                        run.currency,
                        run.cost_per_million_output_tokens,
                    ),
                )
                row_id = int(cur.lastrowid or 0)
                conn.executemany(
                    """
                    INSERT INTO results (run, position, prompt_id, output_tokens, seconds, ttft_s,
                                         tokens_per_s, error)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    [
                        (
                            row_id,
                            i,
                            r.prompt_id,
                            r.output_tokens,
                            r.seconds,
                            r.ttft_s,
                            r.tokens_per_s,
                            r.error,
                        )
                        for i, r in enumerate(run.results)
                    ],
                )
        except sqlite3.IntegrityError as exc:
            raise BenchDBError(f"benchmark run {run.run_id} is already recorded ({exc})") from None
        except sqlite3.OperationalError as exc:
            raise BenchDBError(f"cannot write to the benchmark database {self.path}: {exc}") from None
        return row_id

    # -- reading -----------------------------------------------------------------------------

    def history(self, filters: BenchFilter | None = None, *, limit: int | None = None) -> list[BenchmarkRun]:
        """The runs matching ``filters``, newest first."""
        where, params = (filters or BenchFilter()).where()
        sql = f"SELECT {_RUN_COLUMNS} FROM runs{where} ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, int(limit)]
        rows = self._conn.execute(sql, params).fetchall()
        results = self._results([row[0] for row in rows])
        return [_run_from_row(row, results.get(row[0], ())) for row in rows]

    def _results(self, run_ids: Sequence[int]) -> dict[int, tuple[PromptResult, ...]]:
        out: dict[int, list[PromptResult]] = {}
        # SQLite limits bound parameters (999 in old builds): read in chunks.
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for run, prompt_id, tokens, seconds, ttft, rate, error in self._conn.execute(
                "SELECT run, prompt_id, output_tokens, seconds, ttft_s, tokens_per_s, error "
                f"FROM results WHERE run IN ({marks}) ORDER BY run, position",
                chunk,
            ):
                out.setdefault(run, []).append(PromptResult(prompt_id, tokens, seconds, ttft, rate, error))
        return {k: tuple(v) for k, v in out.items()}

    def compare(
        self, filters: BenchFilter | None = None, group_by: Sequence[str] = ("gpu_type", "model", "provider")
    ) -> list[CompareRow]:
        """Runs matching ``filters`` grouped by ``group_by`` columns, fastest group first."""
        columns = tuple(group_by)
        unknown = [c for c in columns if c not in GROUP_COLUMNS]
        if unknown or not columns:
            raise ValueError(f"group_by takes one or more of {', '.join(GROUP_COLUMNS)}; got {list(columns)}")
        where, params = (filters or BenchFilter()).where()
        # Column names come from GROUP_COLUMNS only (checked above), never from the caller's text.
        sql = (
            f"SELECT {', '.join(columns)}, median_tokens_per_s, median_ttft_s, "
            "cost_per_million_output_tokens, currency, prompt_set, prompt_set_version, created_at "
            f"FROM runs{where}"
        )
        groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for row in self._conn.execute(sql, params):
            groups.setdefault(tuple(row[: len(columns)]), []).append(tuple(row[len(columns) :]))
        out = [_compare_row(columns, key, rows) for key, rows in groups.items()]
        out.sort(key=lambda r: (-(r.median_tokens_per_s or 0.0), [str(v) for v in r.key.values()]))
        return out


def _run_from_row(row: Sequence[Any], results: tuple[PromptResult, ...]) -> BenchmarkRun:
    (
        _id,
        run_id,
        created_at,
        session_id,
        provider,
        region,
        gpu_type,
        gpu_name,
        gpu_count,
        model,
        vllm_json,
        prompt_set,
        prompt_set_version,
        hourly_price,
        currency,
    ) = row
    return BenchmarkRun(
        provider=provider,
        region=region,
        gpu_type=gpu_type,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        model=model,
        vllm=json.loads(vllm_json),
        prompt_set=prompt_set,
        prompt_set_version=prompt_set_version,
        results=results,
        hourly_price=hourly_price,
        currency=currency,
        session_id=session_id,
        timestamp=_parse_time(created_at),
        run_id=run_id,
    )


def _compare_row(columns: tuple[str, ...], key: tuple[Any, ...], rows: list[tuple[Any, ...]]) -> CompareRow:
    currencies = {r[3] for r in rows if r[3] is not None}
    currency = next(iter(currencies)) if len(currencies) == 1 else None
    costs = [r[2] for r in rows if r[2] is not None] if currency else []
    return CompareRow(
        key=dict(zip(columns, key, strict=True)),
        runs=len(rows),
        median_tokens_per_s=_median(r[0] for r in rows),
        median_ttft_s=_median(r[1] for r in rows),
        median_cost_per_million_output_tokens=_median(costs),
        currency=currency,
        prompt_sets=tuple(sorted({f"{r[4]}@{r[5]}" for r in rows})),
        latest=max(_parse_time(r[6]) for r in rows),
    )
