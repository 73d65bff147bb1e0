"""The pure parts of the operating commands: vLLM settings from the VM's compose file, the
validate-perf verdicts, and the watch dashboard's text."""

from __future__ import annotations

import datetime as dt

import pytest

from maider.remote.commands import GpuReading
from maider.remote.compose import render_compose
from maider.session import dashboard, health
from maider.session.benchmark import vllm_settings_from_compose
from maider.session.watchdog import WatchdogView
from maider.sizing import VLLMSettings


def test_settings_round_trip_through_the_compose_file() -> None:
    settings = VLLMSettings(
        model="Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        served_model_name="qwen-coder",
        tensor_parallel_size=2,
        max_model_len=24576,
        gpu_memory_utilization=0.85,
        max_num_seqs=8,
        dtype="float16",
        kv_cache_dtype="fp8",
    )
    text = render_compose(
        settings,
        model_id=settings.model,
        vllm_image="vllm/vllm-openai:v0.11.0",
        openwebui_image="ghcr.io/open-webui/open-webui:v0.6.5",
        enable_openwebui=True,
    )
    back = vllm_settings_from_compose(text, quantization="awq")
    assert back == VLLMSettings(**{**settings.__dict__, "quantization": "awq"})


def test_settings_from_a_compose_without_flags_are_vllms_defaults() -> None:
    text = "services:\n  vllm:\n    command: [--model, some/model, --max-model-len=4096]\n"
    s = vllm_settings_from_compose(text)
    assert (s.model, s.max_model_len, s.tensor_parallel_size, s.gpu_memory_utilization) == (
        "some/model",
        4096,
        1,
        0.9,
    )
    with pytest.raises(ValueError, match="no readable vLLM command"):
        vllm_settings_from_compose("services: {}\n")


def _gpu(index: int, util: int, used: int, total: int = 20000) -> GpuReading:
    return GpuReading(index, "NVIDIA L4", used, total, util)


def _verdicts(report: health.Report) -> dict[str, str]:
    return {i.name: i.verdict for i in report.items}


@pytest.mark.parametrize(
    ("utils", "used", "expected"),
    [
        (
            (95, 93),
            (18000, 18000),
            {"GPU utilisation": "PASS", "GPU memory": "PASS", "tensor-parallel balance": "PASS"},
        ),
        (
            (95, 65),
            (18000, 18000),
            {"GPU utilisation": "PASS", "GPU memory": "PASS", "tensor-parallel balance": "WARN"},
        ),
        (
            (45, 40),
            (18000, 18000),
            {"GPU utilisation": "WARN", "GPU memory": "PASS", "tensor-parallel balance": "PASS"},
        ),
        (
            (95, 10),
            (18000, 18000),
            {"GPU utilisation": "FAIL", "GPU memory": "PASS", "tensor-parallel balance": "FAIL"},
        ),
        (
            (95, 95),
            (18000, 12000),
            {"GPU utilisation": "PASS", "GPU memory": "WARN", "tensor-parallel balance": "FAIL"},
        ),
        (
            (95, 95),
            (18000, 3000),
            {"GPU utilisation": "PASS", "GPU memory": "FAIL", "tensor-parallel balance": "FAIL"},
        ),
    ],
)
def test_gpu_verdicts(utils: tuple[int, int], used: tuple[int, int], expected: dict[str, str]) -> None:
    report = health.Report("s")
    idle = [_gpu(0, 0, used[0]), _gpu(1, 0, used[1])]
    busy = [_gpu(0, utils[0], used[0]), _gpu(1, utils[1], used[1])]
    health._judge_gpus(report, [idle, busy], 0.9)
    assert _verdicts(report) == expected


def _level(concurrency: int, tokens: int, wall: float, ttft: float) -> health.LoadRun:
    r = health.StreamResult(output_tokens=tokens, prompt_tokens=10, seconds=wall, ttft_s=ttft)
    return health.LoadRun(concurrency, (r,) * concurrency, wall)


@pytest.mark.parametrize(
    ("c4_wall", "c4_ttft", "scaling", "ttft4"),
    [(1.0, 0.2, "PASS", "PASS"), (3.0, 3.0, "WARN", "WARN"), (4.0, 9.0, "FAIL", "FAIL")],
)
def test_speed_verdicts(c4_wall: float, c4_ttft: float, scaling: str, ttft4: str) -> None:
    report = health.Report("s")
    health._judge_speed(report, _level(1, 100, 1.0, 0.1), _level(4, 100, c4_wall, c4_ttft))
    v = _verdicts(report)
    assert (v["throughput c=1"], v["throughput c=4"], v["TTFT c=1"], v["TTFT c=4"]) == (
        "PASS",
        scaling,
        "PASS",
        ttft4,
    )
    assert report.failed == (scaling == "FAIL")


def test_stream_result_decode_rate() -> None:
    assert health.StreamResult(11, 5, 2.0, 1.0).tokens_per_s == 10.0
    assert health.StreamResult(1, 5, 2.0, 1.0).tokens_per_s is None
    assert health.StreamResult(0, 5, 2.0, None, error="HTTP 500").tokens_per_s is None


def test_dashboard_text() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    frame = dashboard.Frame(at=now, gpus=[_gpu(0, 95, 18000)], tokens_per_s=42.5, runtime_s=3600, cost=1.2)
    assert dashboard.watchdog_text(frame) == "watchdog off"
    assert dashboard.idle_text(frame) == "unknown"
    frame.watchdog = WatchdogView(
        enabled=True,
        last_activity_at=now - dt.timedelta(minutes=3),
        acts_at=now + dt.timedelta(minutes=42),
        reason="idle",
    )
    frame.idle_s = 180
    frame.idle_source = "watchdog"
    assert dashboard.watchdog_text(frame).startswith("acts in 42m00s at ")
    assert dashboard.watchdog_text(frame).endswith("(idle)")
    line = dashboard.plain_line(frame, "ops")
    assert "GPU0 95% 18000/20000 MiB" in line and "42.5 tok/s" in line and "idle 3m00s" in line
    assert "cost $1.20 (1h00m)" in line
    frame.watchdog = WatchdogView(enabled=True)
    assert dashboard.watchdog_text(frame) == "unknown"


def test_the_new_vm_command_is_in_lifecycle_md() -> None:
    from pathlib import Path

    from maider.remote import commands

    design = (Path(__file__).resolve().parents[1] / "docs" / "LIFECYCLE.md").read_text(encoding="utf-8")
    assert f"`{commands.READ_COMPOSE}`" in design


def test_dashboard_renders_on_a_terminal() -> None:
    import io

    from rich.console import Console

    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    frame = dashboard.Frame(at=now, gpus=[_gpu(0, 95, 18000), _gpu(1, 90, 18000)], tokens_per_s=12.0)
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=120).print(dashboard.render(frame, "ops"))
    text = out.getvalue()
    assert "maider watch: ops" in text and "18000/20000 MiB (90%)" in text and "watchdog off" in text
