"""vLLM's Prometheus ``/metrics`` text → a snapshot; the idle signal and the throughput.

Inference traffic is the only signal that means "somebody uses the model" (shared notes,
peers.md §0.2 and §7): SSH sessions do not show a ``-N`` tunnel, and the previous generation's
container-log grep saw Open WebUI instead of vLLM and counted its own health checks
(prior-art-maider.md §5). vLLM counts finished requests and tokens itself, and ``GET
/metrics`` or ``GET /health`` do not go through the engine, so scraping does not count as use.

The parser is a small implementation of the text exposition format 0.0.4 (what vLLM serves
through ``prometheus_client``): ``# HELP``/``# TYPE`` lines, samples with optional labels
(``\\\\``, ``\\"`` and ``\\n`` escapes) and an optional timestamp, ``NaN``/``+Inf``/``-Inf``
values, and an OpenMetrics ``# EOF``. ``prometheus_client`` itself is not a dependency of maider.

Metric names, from vllm/engine/metrics.py (V0) and vllm/v1/metrics/loggers.py (V1). Counters are
exposed with the ``_total`` suffix; V1 adds ``engine="0"`` next to ``model_name``:

- ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` (gauges)
- ``vllm:request_success_total{finished_reason="stop"|"length"|"abort"…}`` (counter)
- ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` (counters)
- ``vllm:time_to_first_token_seconds`` (histogram: ``_bucket``, ``_count``, ``_sum``)
- ``vllm:kv_cache_usage_perc`` (newer) or ``vllm:gpu_cache_usage_perc`` (older, deprecated
  since the rename; both are served for a while): a fraction, 1 = full.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
REQUEST_SUCCESS = "vllm:request_success"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
TTFT = "vllm:time_to_first_token_seconds"
#: Newest first: the first one present is used.
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


class MetricsParseError(ValueError):
    """The text is not valid exposition format, or not vLLM's metrics."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    value: float = 0.0
    #: Milliseconds since the epoch, when the line carries one (vLLM's do not).
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Exposition:
    """Everything one scrape said: the samples in order, and each family's TYPE and HELP."""

    samples: tuple[Sample, ...]
    types: Mapping[str, str] = field(default_factory=dict, hash=False)
    helps: Mapping[str, str] = field(default_factory=dict, hash=False)

    def select(self, name: str, **labels: str) -> list[Sample]:
        """The samples called ``name`` whose labels include ``labels``."""
        return [
            s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every label set (engines, finish reasons). NaN samples are skipped."""
        return math.fsum(s.value for s in self.select(name, **labels) if not math.isnan(s.value))


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"})


def parse_exposition(text: str) -> Exposition:
    """Parse Prometheus text exposition format. Raises :class:`MetricsParseError` with the line."""
    samples: list[Sample] = []
    types: dict[str, str] = {}
    helps: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line[1:].strip().split(None, 2)
            if parts and parts[0] == "EOF":
                break
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                name = parts[1]
                rest = parts[2] if len(parts) == 3 else ""
                if not _METRIC_NAME.fullmatch(name):
                    raise MetricsParseError(f"line {number}: bad metric name {name!r}")
                if parts[0] == "TYPE":
                    if rest not in _TYPES:
                        raise MetricsParseError(f"line {number}: unknown metric type {rest!r}")
                    types[name] = rest
                else:
                    helps[name] = _unescape_help(rest)
            continue  # any other comment
        try:
            samples.append(_parse_sample(line))
        except MetricsParseError as exc:
            raise MetricsParseError(f"line {number}: {exc}") from None
    return Exposition(tuple(samples), types, helps)


def _parse_sample(line: str) -> Sample:
    m = _METRIC_NAME.match(line)
    if not m:
        raise MetricsParseError(f"no metric name in {line[:80]!r}")
    name = m.group()
    pos = m.end()
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        pos = _parse_labels(line, pos + 1, labels)
    rest = line[pos:].split()
    if not rest or len(rest) > 2 or (pos < len(line) and not line[pos].isspace()):
        raise MetricsParseError(f"expected a value after {name!r}")
    value = _parse_float(rest[0])
    timestamp = None
    if len(rest) == 2:
        try:
            timestamp = int(rest[1])
        except ValueError:
            raise MetricsParseError(f"bad timestamp {rest[1]!r}") from None
    return Sample(name, labels, value, timestamp)


def _parse_labels(line: str, pos: int, labels: dict[str, str]) -> int:
    """Parse ``name="value",…}`` from ``pos``; returns the position after the brace."""
    n = len(line)
    while True:
        pos = _skip_blanks(line, pos)
        if pos < n and line[pos] == "}":
            return pos + 1
        m = _LABEL_NAME.match(line, pos)
        if not m:
            raise MetricsParseError(f"bad label name at column {pos + 1}")
        key = m.group()
        pos = m.end()
        pos = _skip_blanks(line, pos)
        if line[pos : pos + 1] != "=":
            raise MetricsParseError(f'expected =" after label {key!r}')
        pos = _skip_blanks(line, pos + 1)
        if line[pos : pos + 1] != '"':
            raise MetricsParseError(f'expected =" after label {key!r}')
        pos += 1
        chars: list[str] = []
        while True:
            if pos >= n:
                raise MetricsParseError(f"unterminated value of label {key!r}")
            c = line[pos]
            if c == "\\" and pos + 1 < n:
                nxt = line[pos + 1]
                chars.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                pos += 2
                continue
            if c == '"':
                pos += 1
                break
            chars.append(c)
            pos += 1
        if key in labels:
            raise MetricsParseError(f"label {key!r} given twice")
        labels[key] = "".join(chars)
        pos = _skip_blanks(line, pos)
        if pos < n and line[pos] == ",":
            pos += 1
        elif pos < n and line[pos] == "}":
            return pos + 1
        else:
            raise MetricsParseError(f"expected , or }} after label {key!r}")


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _parse_float(text: str) -> float:
    low = text.lower()
    if low in ("nan", "+inf", "-inf", "inf"):
        return float(low)
    try:
        return float(text)
    except ValueError:
        raise MetricsParseError(f"bad value {text!r}") from None


def _unescape_help(text: str) -> str:
    """HELP text escapes only ``\\\\`` and ``\\n``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "n\\":
            out.append("\n" if text[i + 1] == "n" else "\\")
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------
# vLLM snapshot
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSnapshot:
    """The figures of one scrape of vLLM that maider uses. Counters are summed over labels."""

    requests_running: float = 0.0
    requests_waiting: float = 0.0
    #: Finished requests, any finish reason (stop, length, abort …).
    request_success_total: float = 0.0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    #: Time-to-first-token histogram: observations and their sum, in seconds.
    ttft_count: float = 0.0
    ttft_sum: float = 0.0
    #: KV-cache usage, 0-1 (the fullest engine), or None when vLLM does not export it.
    kv_cache_usage: float | None = None
    #: The ``model_name`` labels seen (the served model names).
    models: tuple[str, ...] = ()

    @property
    def ttft_mean_s(self) -> float | None:
        return self.ttft_sum / self.ttft_count if self.ttft_count > 0 else None


def _counter(expo: Exposition, base: str) -> float:
    """A counter, whether exposed as ``base_total`` (prometheus_client) or ``base``."""
    total = base + "_total"
    return expo.total(total) if expo.has(total) else expo.total(base)


def snapshot_from_exposition(expo: Exposition) -> MetricsSnapshot:
    if not (expo.has(RUNNING) or expo.has(WAITING) or any(expo.has(n) for n in KV_CACHE_USAGE)):
        raise MetricsParseError(
            f"not vLLM metrics: neither {RUNNING} nor {WAITING} is in the text (is this vLLM's /metrics?)"
        )
    kv: float | None = None
    for name in KV_CACHE_USAGE:
        values = [s.value for s in expo.select(name) if not math.isnan(s.value)]
        if values:
            kv = max(values)
            break
    models = sorted({s.labels["model_name"] for s in expo.samples if "model_name" in s.labels})
    return MetricsSnapshot(
        requests_running=expo.total(RUNNING),
        requests_waiting=expo.total(WAITING),
        request_success_total=_counter(expo, REQUEST_SUCCESS),
        prompt_tokens_total=_counter(expo, PROMPT_TOKENS),
        generation_tokens_total=_counter(expo, GENERATION_TOKENS),
        ttft_count=expo.total(TTFT + "_count"),
        ttft_sum=expo.total(TTFT + "_sum"),
        kv_cache_usage=kv,
        models=tuple(models),
    )


def parse_metrics(text: str) -> MetricsSnapshot:
    """vLLM's ``/metrics`` text → :class:`MetricsSnapshot`. Raises :class:`MetricsParseError`.

    A caller that cannot parse a scrape learns nothing about activity from it: it keeps the
    previous good snapshot as its baseline. The on-VM watchdog lets idle time run meanwhile (a vLLM
    that does not answer serves nobody); the laptop side treats it as no signal either way.
    """
    return snapshot_from_exposition(parse_exposition(text))


def _delta(prev: float, cur: float) -> float:
    """Increase of a counter; a counter that went down was reset (vLLM restarted): count from 0."""
    return cur - prev if cur >= prev else cur


def activity_between(
    prev: MetricsSnapshot,
    cur: MetricsSnapshot,
    *,
    exclude_requests: int = 0,
    exclude_prompt_tokens: int = 0,
    exclude_generation_tokens: int = 0,
) -> bool:
    """Whether anybody used the model between two scrapes: the idle watchdog's signal.

    True when, beyond maider's own traffic, requests finished, prompt tokens were processed
    (also for requests aborted before their first output token) or tokens were generated, or
    when requests are running or waiting at ``cur``.

    maider's own probes (the 1-token completion of the readiness check, a benchmark) are
    subtracted with ``exclude_*``: the request count and the token counts of the probes sent
    between the two scrapes (the usage block of each response gives them). Scrape after a probe
    has finished, never during one, or it shows as a running request.
    """
    if min(exclude_requests, exclude_prompt_tokens, exclude_generation_tokens) < 0:
        raise ValueError("exclusions cannot be negative")
    if cur.requests_running + cur.requests_waiting > 0:
        return True
    finished = _delta(prev.request_success_total, cur.request_success_total) - exclude_requests
    prompt = _delta(prev.prompt_tokens_total, cur.prompt_tokens_total) - exclude_prompt_tokens
    generated = _delta(prev.generation_tokens_total, cur.generation_tokens_total) - exclude_generation_tokens
    return finished > 0 or prompt > 0 or generated > 0


def tokens_per_second(prev: MetricsSnapshot, cur: MetricsSnapshot, seconds: float) -> float:
    """Generated tokens per second between two scrapes ``seconds`` apart (all requests together)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return _delta(prev.generation_tokens_total, cur.generation_tokens_total) / seconds
