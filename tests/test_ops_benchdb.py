"""Benchmark history in SQLite (record, history, compare, migrations, several writers) and the
benchmark prompt set it records."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from maider.ops import benchdb, prompts
from maider.ops.benchdb import (
    BenchDB,
    BenchDBError,
    BenchFilter,
    BenchmarkRun,
    PromptResult,
    connect,
    migrate,
    vllm_settings_record,
)
from maider.sizing import VLLMSettings

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 7, 1, 12, 0, 0, 123456, tzinfo=UTC)

#: The digest of every released prompt-set version. Editing a prompt without bumping
#: PROMPT_SET_VERSION (and adding its digest here) fails test_prompt_set_is_frozen.
PROMPT_SET_DIGESTS = {1: "18759713d2fbd7eedc3c36ae64e8015c78cf74b60ebcf79d503aebf6030abf31"}


def results(rate: float, ttft: float = 0.2, tokens: int = 100) -> tuple[PromptResult, ...]:
    # seconds chosen so that the decode rate is exactly `rate`: (tokens - 1) / (seconds - ttft).
    return tuple(
        PromptResult.measured(p.id, output_tokens=tokens, seconds=ttft + (tokens - 1) / rate, ttft_s=ttft)
        for p in prompts.PROMPTS[:3]
    )


def make_run(
    *,
    provider: str = "linode",
    region: str = "us-ord",
    gpu_type: str = "g2-gpu-rtx4000a1-s",
    gpu_name: str = "RTX 4000 Ada",
    gpu_count: int = 1,
    model: str = "Qwen/Qwen2.5-Coder-7B-Instruct",
    rate: float = 50.0,
    price: float | None = 0.52,
    currency: str | None = "USD",
    when: dt.datetime = T0,
    session_id: str | None = "s0123abcd",
    version: int = prompts.PROMPT_SET_VERSION,
) -> BenchmarkRun:
    return BenchmarkRun(
        provider=provider,
        region=region,
        gpu_type=gpu_type,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        model=model,
        vllm=vllm_settings_record(
            VLLMSettings(
                model=model, tensor_parallel_size=gpu_count, max_model_len=24576, gpu_memory_utilization=0.85
            )
        ),
        prompt_set=prompts.PROMPT_SET_NAME,
        prompt_set_version=version,
        results=results(rate),
        hourly_price=price,
        currency=currency,
        session_id=session_id,
        timestamp=when,
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[BenchDB]:
    with BenchDB(tmp_path / "data" / "benchmarks.sqlite3") as database:
        yield database


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def test_prompt_set_is_frozen() -> None:
    assert prompts.digest() == PROMPT_SET_DIGESTS[prompts.PROMPT_SET_VERSION], (
        "the benchmark prompts changed: bump PROMPT_SET_VERSION and add the new digest here"
    )


def test_prompt_set_shape() -> None:
    ids = [p.id for p in prompts.PROMPTS]
    assert 6 <= len(ids) <= 10
    assert len(set(ids)) == len(ids)
    assert {p.length for p in prompts.PROMPTS} == {"short", "medium", "long"}
    assert {"implement", "tests", "refactor", "explain"} <= {p.category for p in prompts.PROMPTS}
    limits = {"short": 256, "medium": 1024, "long": 2048}
    assert all(0 < p.max_tokens <= limits[p.length] for p in prompts.PROMPTS)
    assert prompts.by_id("write-tests").category == "tests"
    with pytest.raises(KeyError):
        prompts.by_id("nope")


def test_cost_per_million_tokens() -> None:
    # $3.60/h at 100 tok/s: 360 000 tokens per hour → $10 per million.
    assert prompts.cost_per_million_tokens(3.6, 100) == pytest.approx(10.0)
    assert prompts.cost_per_million_tokens(0, 10) == 0
    for price, rate in ((1.0, 0), (1.0, -5), (-1.0, 10), (float("nan"), 10)):
        with pytest.raises(ValueError):
            prompts.cost_per_million_tokens(price, rate)


# --------------------------------------------------------------------------------------------
# Records and aggregates
# --------------------------------------------------------------------------------------------


def test_prompt_result_rates() -> None:
    r = PromptResult.measured("x", output_tokens=101, seconds=2.5, ttft_s=0.5)
    assert r.tokens_per_s == pytest.approx(50.0)
    assert PromptResult.measured("x", output_tokens=1, seconds=0.5, ttft_s=0.5).tokens_per_s is None
    assert (
        PromptResult.measured("x", output_tokens=0, seconds=30, ttft_s=None, error="timeout").tokens_per_s
        is None
    )


def test_run_aggregates() -> None:
    run = make_run(rate=50.0)
    assert run.median_tokens_per_s == pytest.approx(50.0)
    assert run.median_ttft_s == pytest.approx(0.2)
    assert run.total_output_tokens == 300
    assert run.total_seconds == pytest.approx(3 * (0.2 + 99 / 50))
    expected = 0.52 / (300 / run.total_seconds * 3600) * 1e6
    assert run.cost_per_million_output_tokens == pytest.approx(expected)
    free = make_run(price=None, currency=None)
    assert free.cost_per_million_output_tokens is None
    failed = replace(run, results=(*run.results, PromptResult("boom", 0, 30.0, None, None, "HTTP 500")))
    assert failed.median_tokens_per_s == pytest.approx(50.0)  # failures do not count
    with pytest.raises(ValueError, match="timezone"):
        make_run(when=dt.datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="together"):
        make_run(price=1.0, currency=None)


def test_vllm_settings_record_holds_the_real_settings() -> None:
    s = VLLMSettings(
        model="m",
        tensor_parallel_size=2,
        max_model_len=12288,
        dtype="float16",
        kv_cache_dtype="fp8",
        gpu_memory_utilization=0.8,
        max_num_seqs=4,
        quantization="awq",
    )
    assert vllm_settings_record(s) == {
        "tensor_parallel_size": 2,
        "max_model_len": 12288,
        "dtype": "float16",
        "kv_cache_dtype": "fp8",
        "gpu_memory_utilization": 0.8,
        "max_num_seqs": 4,
        "quantization": "awq",
    }


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------


def test_record_and_history_round_trip(db: BenchDB) -> None:
    run = make_run()
    db.record(run)
    [back] = db.history()
    assert back == run
    assert back.vllm["max_model_len"] == 24576 and back.vllm["gpu_memory_utilization"] == 0.85
    assert back.timestamp == T0 and back.timestamp.tzinfo is not None
    assert back.results == run.results
    with pytest.raises(BenchDBError, match="already recorded"):
        db.record(run)


def test_file_is_wal_with_a_version_table(db: BenchDB) -> None:
    assert db.schema_version == benchdb.SCHEMA_VERSION
    conn = sqlite3.connect(db.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        conn.close()


def test_history_is_newest_first_and_limited(db: BenchDB) -> None:
    for hours in (0, 2, 1):
        db.record(make_run(when=T0 + dt.timedelta(hours=hours), rate=10 + hours))
    got = db.history()
    assert [r.timestamp for r in got] == [T0 + dt.timedelta(hours=h) for h in (2, 1, 0)]
    assert len(db.history(limit=2)) == 2
    since = db.history(BenchFilter(since=T0 + dt.timedelta(minutes=30)))
    assert len(since) == 2


def _seed(db: BenchDB) -> None:
    db.record(make_run(provider="linode", gpu_type="g2-gpu-rtx4000a1-s", model="qwen-7b", rate=50))
    db.record(make_run(provider="linode", gpu_type="g2-gpu-rtx4000a1-s", model="qwen-7b", rate=54))
    db.record(make_run(provider="linode", gpu_type="g2-gpu-rtx4000a1-s", model="qwen-32b", rate=15))
    db.record(make_run(provider="linode", gpu_type="g1-gpu-rtx6000-1", model="qwen-7b", rate=40))
    db.record(
        make_run(
            provider="digitalocean",
            region="tor1",
            gpu_type="gpu-l40sx1-48gb",
            gpu_name="L40S",
            model="qwen-7b",
            rate=90,
            price=1.57,
        )
    )
    db.record(
        make_run(
            provider="scaleway",
            region="fr-par-2",
            gpu_type="L4-1-24G",
            gpu_name="L4",
            model="qwen-32b",
            rate=12,
            price=0.75,
            currency="EUR",
        )
    )


def _keys(rows: list[benchdb.CompareRow]) -> set[tuple[object, ...]]:
    return {tuple(r.key.values()) for r in rows}


def test_each_filter_changes_the_comparison(db: BenchDB) -> None:
    _seed(db)
    everything = db.compare()
    assert len(everything) == 5
    assert sum(r.runs for r in everything) == 6

    by_type = db.compare(BenchFilter(gpu_type="g2-gpu-rtx4000a1-s"))
    assert _keys(by_type) == {
        ("g2-gpu-rtx4000a1-s", "qwen-7b", "linode"),
        ("g2-gpu-rtx4000a1-s", "qwen-32b", "linode"),
    }
    by_model = db.compare(BenchFilter(model="qwen-32b"))
    assert _keys(by_model) == {
        ("g2-gpu-rtx4000a1-s", "qwen-32b", "linode"),
        ("L4-1-24G", "qwen-32b", "scaleway"),
    }
    by_provider = db.compare(BenchFilter(provider="linode"))
    assert {k[2] for k in _keys(by_provider)} == {"linode"} and len(by_provider) == 3
    combined = db.compare(BenchFilter(gpu_type="g2-gpu-rtx4000a1-s", model="qwen-7b", provider="linode"))
    assert _keys(combined) == {("g2-gpu-rtx4000a1-s", "qwen-7b", "linode")}
    assert combined[0].runs == 2
    assert combined[0].median_tokens_per_s == pytest.approx(52.0)
    nothing = db.compare(BenchFilter(gpu_type="g2-gpu-rtx4000a1-s", provider="digitalocean"))
    assert nothing == []
    # The same filters apply to history.
    assert len(db.history(BenchFilter(provider="linode", model="qwen-7b"))) == 3
    assert len(db.history(BenchFilter(region="tor1"))) == 1
    assert len(db.history(BenchFilter(gpu_name="L4"))) == 1


def test_compare_orders_groups_and_handles_currencies(db: BenchDB) -> None:
    _seed(db)
    rows = db.compare(group_by=("gpu_name",))
    assert [r.key["gpu_name"] for r in rows] == ["L40S", "RTX 4000 Ada", "L4"]  # fastest first
    l40s = rows[0]
    assert (l40s.currency, l40s.runs) == ("USD", 1)
    assert l40s.median_cost_per_million_output_tokens is not None
    assert l40s.prompt_sets == (f"{prompts.PROMPT_SET_NAME}@{prompts.PROMPT_SET_VERSION}",)
    assert l40s.latest == T0
    by_model = {r.key["model"]: r for r in db.compare(group_by=("model",))}
    # qwen-32b ran in USD (Linode) and EUR (Scaleway): no single cost figure.
    assert by_model["qwen-32b"].currency is None
    assert by_model["qwen-32b"].median_cost_per_million_output_tokens is None
    assert by_model["qwen-7b"].currency == "USD"
    with pytest.raises(ValueError, match="group_by"):
        db.compare(group_by=("gpu_type; DROP TABLE runs",))
    with pytest.raises(ValueError, match="group_by"):
        db.compare(group_by=())


def test_compare_shows_mixed_prompt_set_versions(db: BenchDB) -> None:
    db.record(make_run(version=1))
    db.record(make_run(version=2))
    [row] = db.compare()
    assert row.prompt_sets == (f"{prompts.PROMPT_SET_NAME}@1", f"{prompts.PROMPT_SET_NAME}@2")
    assert len(db.compare(BenchFilter(prompt_set_version=2))) == 1
    assert db.compare(BenchFilter(prompt_set_version=2))[0].runs == 1


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------


def test_migration_hook_upgrades_in_order_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with BenchDB(path) as first:
        first.record(make_run())

    calls: list[int] = []

    def add_notes(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE runs ADD COLUMN notes TEXT")

    steps = {**benchdb.MIGRATIONS, 1: add_notes}
    conn = connect(path)
    try:
        assert migrate(conn, steps, target=2) == 1
        assert migrate(conn, steps, target=2) == 2  # already there: nothing runs
        assert calls == [1]
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        assert conn.execute("SELECT count(*), max(notes) FROM runs").fetchone() == (1, None)
    finally:
        conn.close()
    # This maider (schema 1) refuses the newer file rather than writing into it.
    with pytest.raises(BenchDBError, match="upgrade maider"):
        BenchDB(path)


def test_a_failing_migration_leaves_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    BenchDB(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE runs ADD COLUMN half TEXT")
        raise RuntimeError("step failed")

    conn = connect(path)
    try:
        with pytest.raises(RuntimeError):
            migrate(conn, {**benchdb.MIGRATIONS, 1: broken}, target=2)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert "half" not in columns
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        with pytest.raises(BenchDBError, match="no migration from"):
            migrate(conn, benchdb.MIGRATIONS, target=3)
    finally:
        conn.close()


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BenchDBError, match="not a usable SQLite database"):
        BenchDB(path)


# --------------------------------------------------------------------------------------------
# Several processes
# --------------------------------------------------------------------------------------------


WRITERS = 4
RUNS_PER_WRITER = 15


def _writer(path: str, writer: int, start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    # Each process opens the (new) file itself: schema creation races too.
    with BenchDB(path) as db:
        for i in range(RUNS_PER_WRITER):
            db.record(make_run(session_id=f"s{writer:08x}", rate=10 + i, when=T0 + dt.timedelta(seconds=i)))


@pytest.mark.timeout(120)
def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared" / "benchmarks.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with BenchDB(path) as db:
        runs = db.history()
        assert len(runs) == WRITERS * RUNS_PER_WRITER
        assert len({r.run_id for r in runs}) == len(runs)
        assert all(len(r.results) == 3 for r in runs)
        assert {r.session_id for r in runs} == {f"s{w:08x}" for w in range(WRITERS)}
        assert db.schema_version == benchdb.SCHEMA_VERSION
