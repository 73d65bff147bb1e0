"""vLLM's /metrics text: the exposition-format parser, the snapshot, the idle signal, throughput.

The texts are shaped like what vLLM serves through prometheus_client: process and Python
collectors first, HELP/TYPE lines, counters with ``_total`` and a ``_created`` gauge after them,
histograms as ``_bucket``/``_count``/``_sum``, labels ``model_name`` and (V1) ``engine``.
"""

from __future__ import annotations

import math

import pytest

from maider.ops.metrics import (
    MetricsParseError,
    MetricsSnapshot,
    activity_between,
    parse_exposition,
    parse_metrics,
    tokens_per_second,
)

PROCESS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 18230.0
python_gc_objects_collected_total{generation="1"} 4291.0
# HELP python_info Python platform information
# TYPE python_info gauge
python_info{implementation="CPython",major="3",minor="12",patchlevel="11",version="3.12.11"} 1.0
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.75218712043e+09
"""


def v1_metrics(
    *,
    running: int = 0,
    waiting: int = 0,
    stop: int = 10,
    length: int = 2,
    abort: int = 1,
    prompt: int = 12345,
    generation: int = 5678,
    ttft_count: int = 13,
    ttft_sum: float = 3.25,
    kv: float = 0.0,
    model: str = "coder",
) -> str:
    labels = f'engine="0",model_name="{model}"'
    return (
        PROCESS
        + f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{labels}}} {float(running)}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{labels}}} {float(waiting)}
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{{labels}}} 0.99
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{labels}}} {kv}
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{{labels}}} {float(prompt)}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{{labels}}} {float(generation)}
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{model}"}} {float(stop)}
vllm:request_success_total{{engine="0",finished_reason="length",model_name="{model}"}} {float(length)}
vllm:request_success_total{{engine="0",finished_reason="abort",model_name="{model}"}} {float(abort)}
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{model}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{model}"}} 4.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="1.0",model_name="{model}"}} 12.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{model}"}} {float(ttft_count)}
vllm:time_to_first_token_seconds_count{{{labels}}} {float(ttft_count)}
vllm:time_to_first_token_seconds_sum{{{labels}}} {ttft_sum}
# HELP vllm:time_to_first_token_seconds_created Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds_created gauge
vllm:time_to_first_token_seconds_created{{{labels}}} 1.7521871204e+09
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{{{labels}}} 1.7521871204e+09
"""
    )


#: vLLM V0 (0.6): no engine label, only the old KV-cache name.
V0 = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 0.0372
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 810.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 412.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="Qwen/Qwen2.5-Coder-7B-Instruct"} 3.0
"""


# --------------------------------------------------------------------------------------------
# The exposition-format parser
# --------------------------------------------------------------------------------------------


def test_parser_reads_types_helps_labels_and_values() -> None:
    expo = parse_exposition(v1_metrics())
    assert expo.types["vllm:time_to_first_token_seconds"] == "histogram"
    assert expo.types["vllm:prompt_tokens_total"] == "counter"
    assert expo.helps["vllm:num_requests_running"] == "Number of requests in model execution batches."
    [stop] = expo.select("vllm:request_success_total", finished_reason="stop")
    assert dict(stop.labels) == {"engine": "0", "finished_reason": "stop", "model_name": "coder"}
    assert stop.value == 10.0
    [inf] = expo.select("vllm:time_to_first_token_seconds_bucket", le="+Inf")
    assert inf.value == 13.0
    assert expo.total("python_gc_objects_collected_total") == 18230.0 + 4291.0
    assert expo.total("process_start_time_seconds") == 1.75218712043e09


def test_parser_escapes_special_values_and_timestamps() -> None:
    text = (
        "# HELP odd A help with a backslash \\\\ and a\\nnewline.\n"
        "# TYPE odd gauge\n"
        'odd{path="C:\\\\models\\\\x",quote="say \\"hi\\", ok",nl="a\\nb",} 1 1700000000000\n'
        'odd{kind="nan"} NaN\n'
        'odd{kind="pinf"} +Inf\n'
        'odd{ kind = "minf" } -Inf\n'
        "bare 2.5e-3\n"
        "# a free comment\n"
        "\n"
        "# EOF\n"
        "ignored after eof {{{\n"
    )
    expo = parse_exposition(text)
    assert expo.helps["odd"] == "A help with a backslash \\ and a\nnewline."
    first = expo.samples[0]
    assert dict(first.labels) == {"path": "C:\\models\\x", "quote": 'say "hi", ok', "nl": "a\nb"}
    assert first.timestamp_ms == 1700000000000
    assert math.isnan(expo.select("odd", kind="nan")[0].value)
    assert expo.select("odd", kind="pinf")[0].value == math.inf
    assert expo.select("odd", kind="minf")[0].value == -math.inf
    assert expo.select("bare")[0].value == 0.0025
    assert expo.total("odd", kind="nan") == 0.0  # NaN is skipped in sums


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('vllm:num_requests_running{model_name="x"}\n', "line 1: expected a value"),
        ('foo{a="b} 1\n', "unterminated"),
        ('foo{a="1",a="2"} 1\n', "given twice"),
        ("foo abc\n", "bad value"),
        ("foo 1 12.5\n", "bad timestamp"),
        ('foo{1a="x"} 1\n', "bad label name"),
        ("ok 1\n# TYPE foo bogus\n", "line 2: unknown metric type"),
        ('foo{a="x" b="y"} 1\n', "expected , or }"),
        ("foo-bar 1\n", "expected a value"),
        ('{a="b"} 1\n', "no metric name"),
    ],
)
def test_parser_rejects_malformed_lines(text: str, words: str) -> None:
    with pytest.raises(MetricsParseError, match=words):
        parse_exposition(text)


# --------------------------------------------------------------------------------------------
# The snapshot
# --------------------------------------------------------------------------------------------


def test_v1_snapshot() -> None:
    snap = parse_metrics(v1_metrics(running=1, waiting=2, kv=0.25))
    assert (snap.requests_running, snap.requests_waiting) == (1, 2)
    assert snap.request_success_total == 13  # stop + length + abort
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (12345, 5678)
    assert (snap.ttft_count, snap.ttft_sum) == (13, 3.25)
    assert snap.ttft_mean_s == pytest.approx(0.25)
    assert snap.kv_cache_usage == 0.25  # the new name wins over the deprecated one (0.99)
    assert snap.models == ("coder",)


def test_v0_snapshot_uses_the_old_kv_name_and_tolerates_missing_metrics() -> None:
    snap = parse_metrics(V0)
    assert snap.kv_cache_usage == pytest.approx(0.0372)
    assert (snap.requests_running, snap.requests_waiting, snap.request_success_total) == (1, 2, 3)
    assert (snap.ttft_count, snap.ttft_mean_s) == (0, None)
    assert snap.models == ("Qwen/Qwen2.5-Coder-7B-Instruct",)


def test_counters_without_total_suffix_and_several_engines() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3\n'
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens{engine="0",model_name="m"} 100\n'
        'vllm:generation_tokens{engine="1",model_name="m"} 50\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6\n'
    )
    snap = parse_metrics(text)
    assert snap.requests_running == 3
    assert snap.generation_tokens_total == 150
    assert snap.kv_cache_usage == 0.6  # the fullest engine
    assert snap.requests_waiting == 0


def test_text_that_is_not_vllm_is_refused() -> None:
    with pytest.raises(MetricsParseError, match="not vLLM metrics"):
        parse_metrics(PROCESS)
    with pytest.raises(MetricsParseError):
        parse_metrics("<html><body>502 Bad Gateway</body></html>")


# --------------------------------------------------------------------------------------------
# Activity and throughput
# --------------------------------------------------------------------------------------------


def test_no_change_is_idle() -> None:
    a = parse_metrics(v1_metrics())
    b = parse_metrics(v1_metrics())
    assert not activity_between(a, b)


@pytest.mark.parametrize(
    "change",
    [
        {"stop": 11},  # a request finished
        {"abort": 2, "prompt": 12400},  # an aborted request (client went away)
        {"prompt": 12400},  # prefill only so far
        {"generation": 5679},  # tokens generated
        {"running": 1},  # a request is running now
        {"waiting": 1},  # a request is queued now
    ],
)
def test_any_traffic_is_activity(change: dict[str, int]) -> None:
    a = parse_metrics(v1_metrics())
    b = parse_metrics(v1_metrics(**change))  # type: ignore[arg-type]
    assert activity_between(a, b)


def test_own_probes_can_be_excluded() -> None:
    before = parse_metrics(v1_metrics())
    # maider's readiness probe: one request, 1 prompt token ("test"), 1 generated token.
    after = parse_metrics(v1_metrics(stop=11, prompt=12346, generation=5679))
    assert activity_between(before, after)
    assert not activity_between(
        before, after, exclude_requests=1, exclude_prompt_tokens=1, exclude_generation_tokens=1
    )
    # A real request on top of the probe still counts.
    busier = parse_metrics(v1_metrics(stop=12, prompt=14000, generation=6000))
    assert activity_between(
        before, busier, exclude_requests=1, exclude_prompt_tokens=1, exclude_generation_tokens=1
    )
    with pytest.raises(ValueError):
        activity_between(before, after, exclude_requests=-1)


def test_counter_reset_after_a_restart() -> None:
    before = parse_metrics(v1_metrics(stop=500, length=0, abort=0, prompt=90000, generation=80000))
    restarted_idle = parse_metrics(v1_metrics(stop=0, length=0, abort=0, prompt=0, generation=0))
    assert not activity_between(before, restarted_idle)
    restarted_used = parse_metrics(v1_metrics(stop=1, length=0, abort=0, prompt=20, generation=40))
    assert activity_between(before, restarted_used)
    assert tokens_per_second(before, restarted_used, 10) == 4.0


def test_tokens_per_second() -> None:
    a = MetricsSnapshot(generation_tokens_total=1000)
    b = MetricsSnapshot(generation_tokens_total=1600)
    assert tokens_per_second(a, b, 20) == 30.0
    assert tokens_per_second(b, b, 5) == 0.0
    with pytest.raises(ValueError):
        tokens_per_second(a, b, 0)
