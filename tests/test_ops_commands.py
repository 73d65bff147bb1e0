"""`maider check`, `validate-perf`, `benchmark` (+ `history`, `compare`) and `watch`, end to end:
`maider up` on a cloud simulator, then each command against the emulated VM (real OpenSSH, the
real tunnel, the stand-in vLLM and its nvidia-smi)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_providers
from tests.lifecycle_world import World, ledger_id, make_world

#: A reply long enough (200 tokens in the stand-in's counting) for measurable rates.
LONG_REPLY = " ".join(f"token{i}" for i in range(200))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


def _up(world: World, cli: Any, pid: str, region: str, type_id: str, *extra: str) -> Any:
    require_providers(pid)
    world.sim(pid)
    up = cli("up", "-p", pid, "-r", region, "-t", type_id, "--name", "ops", *extra)
    assert up.exit_code == 0, up.output
    [record] = world.records()
    vm = world.farm.vm(ledger_id(record["instance_id"]))
    vm.options.reply = lambda _request, _served: LONG_REPLY
    return vm


def _completions(vm: Any) -> list[dict[str, Any]]:
    return [r for r in vm.vllm.requests if r["path"].startswith("/v1/") and r["method"] == "POST"]


def _record_probe_windows(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The usage maider announces to the watchdogs, window by window (the watchdog module's own
    behaviour is tested with it; here: that every completion of ours is announced, exactly)."""
    import contextlib

    from maider.session import watchdog

    windows: list[Any] = []
    real = watchdog.probe_window

    @contextlib.contextmanager
    def recording(store: Any, record: Any) -> Any:
        with real(store, record) as usage:
            windows.append(usage)
            yield usage

    monkeypatch.setattr(watchdog, "probe_window", recording)
    return windows


def _counters(vm: Any) -> tuple[int, int, int]:
    m = vm.vllm.metrics
    return sum(m.success.values()), m.prompt_tokens, m.generation_tokens


def test_check_validate_benchmark_watch(world: World, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = _up(world, cli, "scaleway", "fr-par-2", "L4-1-24G")
    vm.options.token_delay = 0.002
    windows = _record_probe_windows(monkeypatch)
    start = _counters(vm)

    # check: GPUs from nvidia-smi, health, model, and one streamed completion with its speed
    before = len(_completions(vm))
    check = cli("check", "ops")
    assert check.exit_code == 0, check.output
    assert "NVIDIA L4" in check.stdout and "tokens/s" in check.stdout
    assert "verdict: PASS" in check.stdout
    assert len(_completions(vm)) == before + 1
    assert _completions(vm)[-1]["stream"] is True
    assert "nvidia-smi --query-gpu" in " ".join(vm.commands_run("ssh"))

    data = json.loads(cli("check", "--json").stdout)
    assert data["verdict"] == "PASS" and data["completion"]["output_tokens"] == 64  # CHECK_MAX_TOKENS
    assert data["gpus"][0]["name"] == "NVIDIA L4"

    # validate-perf: every check passes on a healthy GPU (four streams batch together)
    perf = cli("validate-perf", "--json")
    assert perf.exit_code == 0, perf.output
    report = json.loads(perf.stdout)
    verdicts = {c["check"]: c["verdict"] for c in report["checks"]}
    assert verdicts == {
        "GPU utilisation": "PASS",
        "GPU memory": "PASS",
        "tensor-parallel balance": "PASS",
        "throughput c=1": "PASS",
        "throughput c=4": "PASS",
        "TTFT c=1": "PASS",
        "TTFT c=4": "PASS",
    }, report
    assert report["load"]["4"]["tokens_per_s"] > 1.5 * report["load"]["1"]["tokens_per_s"]

    # benchmark: the frozen prompt set, streamed, stored with the settings vLLM really runs with
    from maider.ops.benchdb import BenchDB
    from maider.ops.prompts import PROMPTS
    from maider.session.benchmark import db_path

    bench = cli("benchmark")
    assert bench.exit_code == 0, bench.output
    assert f"[{len(PROMPTS)}/{len(PROMPTS)}]" in bench.stdout
    assert "per million output tokens" in bench.stdout and "€" in bench.stdout  # Scaleway bills EUR
    assert cli("benchmark", "ops").exit_code == 0  # the session named as the group's argument
    with BenchDB(db_path()) as db:
        runs = db.history()
    assert len(runs) == 2
    run = runs[0]
    [record] = world.records()
    assert (run.provider, run.gpu_type, run.gpu_name, run.gpu_count) == (
        "scaleway",
        "L4-1-24G",
        "NVIDIA L4",
        1,
    )
    assert run.model == record["model"] and run.currency == "EUR" and run.session_id == record["id"]
    assert run.vllm["gpu_memory_utilization"] == vm.vllm.config.gpu_memory_utilization
    assert run.vllm["max_model_len"] == vm.vllm.max_model_len
    assert run.vllm["tensor_parallel_size"] == 1
    assert [r.prompt_id for r in run.results] == [p.id for p in PROMPTS]
    assert all(r.error is None and r.ttft_s is not None for r in run.results)
    # output tokens come from the usage block: capped by each prompt's max_tokens
    assert [r.output_tokens for r in run.results] == [min(p.max_tokens, 200) for p in PROMPTS]
    assert run.cost_per_million_output_tokens is not None

    hist = cli("benchmark", "history", "--gpu", "L4-1-24G", "--json")
    assert hist.exit_code == 0, hist.output
    assert len(json.loads(hist.stdout)) == 2
    assert json.loads(cli("benchmark", "history", "--gpu", "H100-1-80G", "--json").stdout) == []
    compare = cli("benchmark", "compare", "--provider", "scaleway", "--json")
    assert compare.exit_code == 0, compare.output
    [row] = json.loads(compare.stdout)
    assert row["runs"] == 2 and row["gpu_type"] == "L4-1-24G" and row["currency"] == "EUR"

    # every completion maider sent was announced to the watchdogs with what vLLM counted for it
    end = _counters(vm)
    announced = (
        sum(w.requests for w in windows),
        sum(w.prompt_tokens for w in windows),
        sum(w.generation_tokens for w in windows),
    )
    assert len(windows) == 5  # check ×2, validate-perf, benchmark ×2
    assert announced == (end[0] - start[0], end[1] - start[1], end[2] - start[2])

    # watch: GET /metrics and nvidia-smi only, never an inference request
    seen = len(vm.vllm.requests)
    execs = len(vm.exec_log)
    watch = cli("watch", "--once")
    assert watch.exit_code == 0, watch.output
    line = watch.stdout.strip()
    assert "GPU0" in line and "running 0 waiting 0" in line and "cost €" in line
    assert "watchdog off" in line or "acts in" in line
    new = vm.vllm.requests[seen:]
    assert new and {(r["method"], r["path"]) for r in new} == {("GET", "/metrics")}
    commands = [e.command for e in vm.exec_log[execs:]]
    assert commands and all(c.startswith("nvidia-smi") or "maider_watchdog" in c for c in commands), commands

    frames = cli("watch", "--count", "2", "--interval", "0.2", "--json")
    assert frames.exit_code == 0, frames.output
    parsed = [json.loads(x) for x in frames.stdout.splitlines()]
    assert len(parsed) == 2 and parsed[1]["gpus"][0]["memory_total_mib"] == 23034

    assert cli("down", "-y").exit_code == 0


def test_watch_sees_other_traffic_and_reopens_a_dead_tunnel(world: World, cli: Any) -> None:
    """A user's request shows up as tokens/s and busy GPUs in watch; a dead tunnel is reopened."""
    import threading
    import urllib.request

    vm = _up(world, cli, "digitalocean", "tor1", "gpu-h100x1-80gb")
    vm.options.token_delay = 0.01
    [record] = world.records()
    key = (world.state_dir() / "sessions" / record["id"] / "api_key").read_text().strip()

    def user_request() -> None:
        body = json.dumps({"model": record["served_model_name"], "prompt": "def", "max_tokens": 200})
        req = urllib.request.Request(
            f"http://127.0.0.1:{record['api_port']}/v1/completions",
            data=body.encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=30) as resp:
            resp.read()

    t = threading.Thread(target=user_request)
    t.start()
    try:
        watch = cli("watch", "--once", "--interval", "0.5", "--json")
    finally:
        t.join()
    assert watch.exit_code == 0, watch.output
    frame = json.loads(watch.stdout)
    assert frame["tokens_per_s"] and frame["tokens_per_s"] > 0, frame
    assert frame["requests_running"] == 1 and frame["gpus"][0]["utilization_pct"] == 95

    os.kill(record["tunnel_pid"], signal.SIGTERM)
    from maider.remote import tunnel
    from tests.lifecycle_world import wait_until

    wait_until(lambda: tunnel.port_is_free(record["api_port"]), what="the tunnel to close")
    check = cli("check")
    assert check.exit_code == 0, check.output
    assert "reopened" in check.stderr
    assert world.records()[0]["tunnel_pid"] != record["tunnel_pid"]
    assert cli("down", "-y").exit_code == 0


def test_validate_perf_fails_when_requests_queue_and_a_gpu_idles(world: World, cli: Any) -> None:
    """max_num_seqs 1: four requests run one after another (no batching), and one of the two
    tensor-parallel GPUs barely works: FAIL verdicts and a non-zero exit."""
    vm = _up(world, cli, "scaleway", "fr-par-2", "L4-2-24G", "--max-num-seqs", "1")
    vm.options.token_delay = 0.002
    vm.options.gpu_busy_pct = {1: 10}
    assert vm.vllm.config.max_num_seqs == 1 and len(vm.vllm.used_gpus) == 2

    perf = cli("validate-perf")
    assert perf.exit_code == 1, perf.output
    out = perf.stdout
    assert "verdict: FAIL" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "FAIL" in rows["throughput c=4"], out
    assert "FAIL" in rows["GPU utilisation"] and "GPU 1 10%" in rows["GPU utilisation"], out
    assert "FAIL" in rows["tensor-parallel balance"], out
    assert "PASS" in rows["GPU memory"], out
    assert cli("down", "-y").exit_code == 0


def test_ops_commands_refuse_a_session_that_is_not_ready(cli: Any) -> None:
    from maider.session.state import SessionRecord, SessionStatus, SessionStore

    store = SessionStore()
    sid = store.new_id()
    store.create(
        SessionRecord(
            id=sid,
            name="half",
            provider="linode",
            region="us-east",
            type_id="g1-gpu-rtx6000-1",
            status=SessionStatus.BOOTING,
            model="m",
            served_model_name="m",
        )
    )
    for command in ("check", "validate-perf", "benchmark", "watch"):
        result = cli(command, "half")
        assert result.exit_code == 1, (command, result.output)
        lines = result.stderr.strip().splitlines()
        assert lines == ["error: session half is booting, not ready: see `maider status half`"], command


# ------------------------------------------------------------------------------------ history


def _run(provider: str, gpu_type: str, model: str, rate: float, currency: str = "USD") -> Any:
    from maider.ops.benchdb import BenchmarkRun, PromptResult

    results = (PromptResult.measured("p", output_tokens=int(rate * 10) + 1, seconds=10.1, ttft_s=0.1),)
    return BenchmarkRun(
        provider=provider,
        region="r",
        gpu_type=gpu_type,
        gpu_name="GPU",
        gpu_count=1,
        model=model,
        vllm={"tensor_parallel_size": 1, "max_model_len": 8192, "gpu_memory_utilization": 0.9},
        prompt_set="maider-coding",
        prompt_set_version=1,
        results=results,
        hourly_price=1.0,
        currency=currency,
        timestamp=dt.datetime.now(dt.timezone.utc),
    )


@pytest.fixture
def history() -> None:
    from maider.ops.benchdb import BenchDB
    from maider.session.benchmark import db_path

    with BenchDB(db_path()) as db:
        db.record(_run("linode", "g1-gpu-rtx6000-1", "qwen-a", 30))
        db.record(_run("linode", "g2-gpu-l40s-1", "qwen-b", 60))
        db.record(_run("digitalocean", "gpu-h100x1-80gb", "qwen-a", 90))
        db.record(_run("scaleway", "L4-1-24G", "qwen-a", 20, "EUR"))


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {"g1-gpu-rtx6000-1", "g2-gpu-l40s-1", "gpu-h100x1-80gb", "L4-1-24G"}),
        (("--gpu", "L4-1-24G"), {"L4-1-24G"}),
        (("--model", "qwen-b"), {"g2-gpu-l40s-1"}),
        (("--provider", "linode"), {"g1-gpu-rtx6000-1", "g2-gpu-l40s-1"}),
        (("--provider", "linode", "--model", "qwen-a"), {"g1-gpu-rtx6000-1"}),
        (("--gpu", "nope"), set()),
    ],
)
def test_history_and_compare_filters_filter(cli: Any, args: tuple[str, ...], expected: set[str]) -> None:
    hist = cli("benchmark", "history", *args, "--json")
    assert hist.exit_code == 0, hist.output
    assert {r["gpu_type"] for r in json.loads(hist.stdout)} == expected
    compare = cli("benchmark", "compare", *args, "--json")
    assert compare.exit_code == 0, compare.output
    rows = json.loads(compare.stdout)
    assert {r["gpu_type"] for r in rows} == expected
    rates = [r["median_tokens_per_s"] for r in rows]
    assert rates == sorted(rates, reverse=True)  # fastest first


@pytest.mark.usefixtures("history")
def test_history_and_compare_tables(cli: Any) -> None:
    hist = cli("benchmark", "history", "--provider", "scaleway")
    assert hist.exit_code == 0, hist.output
    assert "L4-1-24G" in hist.stdout and "€" in hist.stdout and "g1-gpu" not in hist.stdout
    compare = cli("benchmark", "compare")
    assert compare.exit_code == 0, compare.output
    text = compare.stdout
    # fastest group first
    assert text.index("gpu-h100x1-80gb") < text.index("g2-gpu-l40s-1") < text.index("g1-gpu-rtx6000-1")


def test_benchmark_routing_without_sessions(cli: Any) -> None:
    """`benchmark` and `benchmark NAME` run (and say there is no session); the subcommands parse."""
    for args in (("benchmark",), ("benchmark", "mysession"), ("benchmark", "run", "mysession")):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: no session"), (args, result.stderr)
    empty = cli("benchmark", "history", "--gpu", "L4")
    assert empty.exit_code == 0 and "no benchmark runs match" in empty.stdout
    assert cli("benchmark", "compare", "--provider", "linode").exit_code == 0
    assert cli("benchmark", "history", "--bogus").exit_code == 2
