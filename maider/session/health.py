"""`maider check` and `maider validate-perf`: is a running session healthy, and is it fast?

UI-free: each function returns a result object (items with a verdict and a detail line) and the
CLI prints it. Also home to what the operating commands share: :class:`SessionLink` (a ready
session with its tunnel open, its API key and its SSH target) and :func:`stream_completion`
(one streamed chat completion measured from the client: time to first token, output tokens
from the usage block, decode rate).

maider's own completions go through :func:`maider.session.watchdog.probe_window`, so neither
watchdog counts them as use (shared notes, prior-art-maider.md §5: the previous generation's
watchdog kept VMs alive with its own health checks). ``GET /health``, ``/v1/models`` and
``/metrics`` never reach vLLM's engine, so they are not counted by vLLM to begin with.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from maider.errors import MaiderError
from maider.remote import commands, ssh
from maider.session.lifecycle import local_opener
from maider.session.state import SessionRecord, SessionStatus, SessionStore

if TYPE_CHECKING:  # pragma: no cover
    from maider.config import MaiderSettings
    from maider.session.watchdog import ProbeUsage

Verdict = Literal["PASS", "WARN", "FAIL"]

#: Per-call timeout of the read-only SSH commands (nvidia-smi, cat).
SSH_TIMEOUT = 30.0
#: Longest silence between two streamed chunks before a request counts as failed.
STREAM_TIMEOUT = 120.0

# -- check -----------------------------------------------------------------------------------
#: The one short completion of `check`: short enough to keep the command near 30 s on a cold
#: GPU, long enough (tens of tokens) for a decode rate that means something.
CHECK_PROMPT = "Write a Python function that returns the sum of the squares of a list of integers."
CHECK_MAX_TOKENS = 64

# -- validate-perf ---------------------------------------------------------------------------
VALIDATE_PROMPT = (
    "Write a Python module with a function that parses an ISO 8601 duration such as 'P1DT2H30M' "
    "into seconds, with docstrings and pytest tests."
)
#: Output tokens per request: long enough that the GPUs are seen busy while the requests run.
VALIDATE_MAX_TOKENS = 256
#: Requests run one after another at concurrency 1, and together at concurrency 4.
VALIDATE_SEQUENTIAL = 2
VALIDATE_CONCURRENCY = 4
#: How often nvidia-smi is read while the concurrent requests run.
GPU_SAMPLE_INTERVAL = 0.3

#: nvidia-smi's utilization.gpu is the share of the last sample period in which a kernel ran. A
#: GPU serving four streams runs kernels nearly all the time; one that stays below these while
#: the requests stream is not doing the work (wrong device, a CPU fallback, a stuck TP rank).
UTIL_PASS_PCT = 60
UTIL_WARN_PCT = 30
#: vLLM pre-allocates ``gpu_memory_utilization`` of each GPU (weights + KV cache) at start-up.
#: Using less than this share of that budget means it did not get its memory (another process,
#: a lowered setting); less than UTIL_MEMORY_FAIL of the GPU means the model is not on it.
MEMORY_PASS_SHARE_OF_BUDGET = 0.8
MEMORY_FAIL_SHARE_OF_GPU = 0.25
#: Tensor-parallel ranks hold equal shards and run the same kernels: a spread between the
#: GPUs' memory (share of a GPU) or peak utilization (points) above these means one rank
#: holds more than its share or waits for the others.
TP_MEMORY_SPREAD_PASS = 0.10
TP_MEMORY_SPREAD_WARN = 0.25
TP_UTIL_SPREAD_PASS = 20
TP_UTIL_SPREAD_WARN = 40
#: vLLM batches concurrent requests: four streams together should produce well over one
#: stream's tokens per second. Near 1× means requests queue (max_num_seqs 1, or a saturated GPU).
SCALING_PASS = 1.5
SCALING_WARN = 1.1
#: Time to first token of a short prompt. aider feels interactive when the answer starts within
#: about a second; four requests batched together may take a little longer to prefill.
TTFT_C1_PASS_S = 1.0
TTFT_C1_WARN_S = 3.0
TTFT_C4_PASS_S = 2.0
TTFT_C4_WARN_S = 6.0


class OpsError(MaiderError):
    """The session cannot be operated on (not ready, no tunnel, no API key)."""


# ------------------------------------------------------------------------------------ the link


@dataclass
class SessionLink:
    """A ready session: its record, the local tunnel port of vLLM, its API key, its SSH target."""

    store: SessionStore
    record: SessionRecord
    api_key: str = field(repr=False)
    target: ssh.SSHTarget
    #: True when the tunnel was down and had to be opened again.
    reopened_tunnel: bool = False

    @property
    def port(self) -> int:
        assert self.record.api_port is not None
        return self.record.api_port

    @property
    def served(self) -> str:
        return self.record.served_model_name

    def get(self, path: str, *, auth: bool = False, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` of vLLM through the tunnel: (status, body)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if auth else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with local_opener().open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def gpus(self) -> list[commands.GpuReading]:
        """nvidia-smi over SSH (no inference traffic). Raises SSHError or ValueError."""
        result = ssh.run(self.target, commands.NVIDIA_SMI_QUERY, timeout=SSH_TIMEOUT)
        if not result.ok:
            raise ssh.CommandFailed(
                f"nvidia-smi failed on the VM (exit {result.exit_code}): {result.stderr.strip()[:200]}",
                exit_code=result.exit_code,
                stderr=result.stderr,
            )
        return commands.parse_nvidia_smi(result.stdout)

    def metrics_text(self) -> str:
        """vLLM's /metrics (served without the API key; never counted as a request by vLLM)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise OpsError(f"vLLM's /metrics answers {status}")
        return body.decode("utf-8", "replace")


def connect(
    name: str | None = None,
    *,
    store: SessionStore | None = None,
    settings: MaiderSettings | None = None,
) -> SessionLink:
    """The session ``name`` (default: the current one), ready, with its tunnel open.

    A tunnel that died (laptop asleep, network change) is opened again, as `maider tunnel` does.
    """
    from maider.config import load_settings
    from maider.session import lifecycle

    store = store or SessionStore()
    settings = settings or load_settings()
    record = store.resolve(name)
    if record.status is not SessionStatus.READY or record.ip is None:
        raise OpsError(
            f"session {record.label} is {record.status.value}, not ready"
            + (f" ({record.last_error})" if record.last_error else "")
            + f": see `maider status {record.label}`"
        )
    reopened = False
    if not lifecycle.tunnel_alive(record):
        record = lifecycle.reopen_tunnel(record.id, store=store, settings=settings)
        reopened = True
    if record.api_port is None:
        raise OpsError(f"session {record.label} has no tunnel port: run `maider tunnel {record.label}`")
    key = store.read_api_key(record.id)
    target = ssh.session_target(store, record, lifecycle.user_keypair(settings).private_path)
    return SessionLink(store, record, key, target, reopened)


# ------------------------------------------------------------------------------------ streaming


@dataclass(frozen=True)
class StreamResult:
    """One streamed completion as the client saw it."""

    output_tokens: int
    prompt_tokens: int
    #: Request sent → last byte.
    seconds: float
    #: Request sent → first chunk with text; None when no text came.
    ttft_s: float | None
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode rate: tokens after the first over the time after the first token."""
        if self.ttft_s is None or self.output_tokens < 2 or self.seconds <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.seconds - self.ttft_s)


def stream_completion(
    port: int,
    api_key: str,
    model: str,
    messages: Sequence[dict[str, str]],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    timeout: float = STREAM_TIMEOUT,
) -> StreamResult:
    """POST a streaming chat completion through the tunnel and time it.

    Output tokens come from the usage block (``stream_options.include_usage``), which counts
    tokens as the model's tokenizer does; without one, the number of text chunks is used (vLLM
    sends one token per chunk). Never raises for an HTTP or connection problem: ``error`` says it.
    """
    body = {
        "model": model,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    start = time.monotonic()
    first: float | None = None
    chunks = 0
    usage: dict[str, Any] = {}
    error: str | None = None
    try:
        with local_opener().open(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if text:
                        chunks += 1
                        if first is None:
                            first = time.monotonic()
    except urllib.error.HTTPError as exc:
        error = f"HTTP {exc.code}: {_error_text(exc.read())}"
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    end = time.monotonic()
    return StreamResult(
        output_tokens=int(usage.get("completion_tokens") or chunks),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        seconds=end - start,
        ttft_s=None if first is None else first - start,
        error=error,
    )


def _error_text(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message"))[:200]
    return str(err or data)[:200]


def probed(usage: ProbeUsage, result: StreamResult) -> StreamResult:
    """Announce one of maider's own completions to the watchdog (what the VM counted for it)."""
    if result.output_tokens or result.prompt_tokens or result.error is None:
        usage.add(result.prompt_tokens, result.output_tokens)
    return result


# ------------------------------------------------------------------------------------ check


@dataclass(frozen=True)
class Item:
    """One line of a report: what was checked, its verdict, and the figures behind it."""

    name: str
    verdict: Verdict
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "verdict": self.verdict, "detail": self.detail}


@dataclass
class Report:
    session: str
    items: list[Item] = field(default_factory=list)
    #: Figures for --json (tokens/s, TTFT, GPUs …).
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, verdict: Verdict, detail: str) -> None:
        self.items.append(Item(name, verdict, detail))

    @property
    def failed(self) -> bool:
        return any(i.verdict == "FAIL" for i in self.items)

    @property
    def verdict(self) -> Verdict:
        verdicts = {i.verdict for i in self.items}
        return "FAIL" if "FAIL" in verdicts else "WARN" if "WARN" in verdicts else "PASS"

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "verdict": self.verdict,
            "checks": [i.to_json() for i in self.items],
            **self.figures,
        }


def _gpu_line(g: commands.GpuReading) -> str:
    mem = (
        f"{g.memory_used_mib}/{g.memory_total_mib} MiB"
        if g.memory_used_mib is not None and g.memory_total_mib is not None
        else "memory n/a"
    )
    util = f"{g.utilization_pct}%" if g.utilization_pct is not None else "n/a"
    return f"GPU {g.index} {g.name}: {mem}, {util} busy"


def check(link: SessionLink) -> Report:
    """GPUs (nvidia-smi), vLLM health and model list, and one short completion with its speed."""
    from maider.session import watchdog

    report = Report(link.record.label)
    try:
        gpus = link.gpus()
        if gpus:
            report.add("GPUs", "PASS", "; ".join(_gpu_line(g) for g in gpus))
        else:
            report.add("GPUs", "FAIL", "nvidia-smi lists no GPU")
        report.figures["gpus"] = [g.__dict__ for g in gpus]
    except (ssh.SSHError, ValueError) as exc:
        report.add("GPUs", "FAIL", f"nvidia-smi: {exc}")
    try:
        status, _ = link.get("/health")
        report.add("vLLM health", "PASS" if status == 200 else "FAIL", f"/health answers {status}")
        status, body = link.get("/v1/models", auth=True)
        names = [m.get("id") for m in json.loads(body or b"{}").get("data", [])] if status == 200 else []
        if link.served in names:
            report.add("model", "PASS", f"serves {link.served}")
        else:
            report.add("model", "FAIL", f"/v1/models answers {status} with {names or 'no model'}")
    except (OSError, ValueError, AttributeError) as exc:
        report.add("vLLM health", "FAIL", f"vLLM does not answer through the tunnel ({exc})")
        return report
    with watchdog.probe_window(link.store, link.record) as usage:
        result = probed(
            usage,
            stream_completion(
                link.port,
                link.api_key,
                link.served,
                [{"role": "user", "content": CHECK_PROMPT}],
                max_tokens=CHECK_MAX_TOKENS,
            ),
        )
    if result.error or not result.output_tokens:
        report.add("completion", "FAIL", result.error or "the completion returned no text")
    else:
        rate = result.tokens_per_s
        report.add(
            "completion",
            "PASS",
            f"{result.output_tokens} tokens in {result.seconds:.2f} s, first after "
            f"{result.ttft_s or 0:.2f} s" + (f", {rate:.1f} tokens/s" if rate else ""),
        )
    report.figures["completion"] = {
        "output_tokens": result.output_tokens,
        "seconds": round(result.seconds, 3),
        "ttft_s": None if result.ttft_s is None else round(result.ttft_s, 3),
        "tokens_per_s": None if result.tokens_per_s is None else round(result.tokens_per_s, 2),
    }
    return report


# ------------------------------------------------------------------------------------ validate-perf


def _grade_high(value: float, passing: float, warning: float) -> Verdict:
    return "PASS" if value >= passing else "WARN" if value >= warning else "FAIL"


def _grade_low(value: float, passing: float, warning: float) -> Verdict:
    return "PASS" if value <= passing else "WARN" if value <= warning else "FAIL"


@dataclass(frozen=True)
class LoadRun:
    """Requests of one concurrency level: each result and the wall time of the whole level."""

    concurrency: int
    results: tuple[StreamResult, ...]
    wall_s: float

    @property
    def ok(self) -> tuple[StreamResult, ...]:
        return tuple(r for r in self.results if r.error is None)

    @property
    def throughput(self) -> float:
        """Output tokens per second of all the level's requests together."""
        return sum(r.output_tokens for r in self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def median_ttft_s(self) -> float | None:
        values = [r.ttft_s for r in self.ok if r.ttft_s is not None]
        return statistics.median(values) if values else None


def _run_level(send: Callable[[], StreamResult], concurrency: int, total: int) -> LoadRun:
    """``total`` requests, ``concurrency`` at a time (1: one after the other)."""
    results: list[StreamResult] = []
    lock = threading.Lock()
    start = time.monotonic()
    if concurrency == 1:
        results = [send() for _ in range(total)]
    else:

        def worker() -> None:
            r = send()
            with lock:
                results.append(r)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(total)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return LoadRun(concurrency, tuple(results), time.monotonic() - start)


def _sample_gpus_while(link: SessionLink, busy: Callable[[], bool]) -> list[list[commands.GpuReading]]:
    """nvidia-smi readings taken while ``busy()`` (the load is running)."""
    samples: list[list[commands.GpuReading]] = []
    while busy():
        try:
            samples.append(link.gpus())
        except (ssh.SSHError, ValueError):
            pass
        time.sleep(GPU_SAMPLE_INTERVAL)
    return samples


def validate_perf(link: SessionLink, *, gpu_memory_utilization: float | None = None) -> Report:
    """Throughput and TTFT at concurrency 1 and 4, GPU utilisation and memory under load, TP balance.

    ``gpu_memory_utilization``: the share vLLM runs with (from the VM's compose file); None
    judges memory against the GPU only.
    """
    from maider.session import watchdog

    report = Report(link.record.label)
    messages = [{"role": "user", "content": VALIDATE_PROMPT}]

    def send() -> StreamResult:
        return stream_completion(
            link.port, link.api_key, link.served, messages, max_tokens=VALIDATE_MAX_TOKENS
        )

    with watchdog.probe_window(link.store, link.record) as usage:
        c1 = _run_level(send, 1, VALIDATE_SEQUENTIAL)
        done = threading.Event()
        holder: list[LoadRun] = []

        def load() -> None:
            try:
                holder.append(_run_level(send, VALIDATE_CONCURRENCY, VALIDATE_CONCURRENCY))
            finally:
                done.set()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        samples = _sample_gpus_while(link, lambda: not done.is_set())
        loader.join()
        c4 = holder[0]
        for r in (*c1.results, *c4.results):
            probed(usage, r)

    failures = [r.error for r in (*c1.results, *c4.results) if r.error]
    if failures:
        report.add(
            "requests",
            "FAIL",
            f"{len(failures)} of {len(c1.results) + len(c4.results)} failed: {failures[0]}",
        )
    if not c1.ok or not c4.ok:
        return report

    _judge_gpus(report, samples, gpu_memory_utilization)
    _judge_speed(report, c1, c4)
    report.figures["load"] = {
        str(run.concurrency): {
            "requests": len(run.results),
            "tokens_per_s": round(run.throughput, 2),
            "median_ttft_s": None if run.median_ttft_s is None else round(run.median_ttft_s, 3),
        }
        for run in (c1, c4)
    }
    return report


def _judge_gpus(
    report: Report, samples: list[list[commands.GpuReading]], gpu_memory_utilization: float | None
) -> None:
    if not samples or not samples[0]:
        report.add("GPU utilisation", "FAIL", "nvidia-smi could not be read under load")
        return
    peak_util: dict[int, int] = {}
    memory: dict[int, tuple[int, int]] = {}
    for sample in samples:
        for g in sample:
            peak_util[g.index] = max(peak_util.get(g.index, 0), g.utilization_pct or 0)
            if g.memory_used_mib is not None and g.memory_total_mib:
                used = max(memory.get(g.index, (0, 0))[0], g.memory_used_mib)
                memory[g.index] = (used, g.memory_total_mib)
    least = min(peak_util, key=lambda i: peak_util[i])
    report.add(
        "GPU utilisation",
        _grade_high(peak_util[least], UTIL_PASS_PCT, UTIL_WARN_PCT),
        "peak under load "
        + ", ".join(f"GPU {i} {u}%" for i, u in sorted(peak_util.items()))
        + f" (pass ≥ {UTIL_PASS_PCT}%)",
    )
    if memory:
        shares = {i: used / total for i, (used, total) in memory.items()}
        low = min(shares.values())
        budget = gpu_memory_utilization or 1.0
        verdict: Verdict = (
            "FAIL"
            if low < MEMORY_FAIL_SHARE_OF_GPU
            else "PASS"
            if low >= MEMORY_PASS_SHARE_OF_BUDGET * budget
            else "WARN"
        )
        why = (
            f" (vLLM's budget {budget:.0%}; pass ≥ {MEMORY_PASS_SHARE_OF_BUDGET * budget:.0%})"
            if gpu_memory_utilization
            else ""
        )
        report.add(
            "GPU memory",
            verdict,
            ", ".join(
                f"GPU {i} {memory[i][0]}/{memory[i][1]} MiB ({s:.0%})" for i, s in sorted(shares.items())
            )
            + why,
        )
    if len(peak_util) < 2:
        report.add("tensor-parallel balance", "PASS", "one GPU: nothing to balance")
        return
    util_spread = max(peak_util.values()) - min(peak_util.values())
    mem_spread = (max(shares.values()) - min(shares.values())) if memory else 0.0
    verdict = max(
        _grade_low(mem_spread, TP_MEMORY_SPREAD_PASS, TP_MEMORY_SPREAD_WARN),
        _grade_low(util_spread, TP_UTIL_SPREAD_PASS, TP_UTIL_SPREAD_WARN),
        key=("PASS", "WARN", "FAIL").index,
    )
    report.add(
        "tensor-parallel balance",
        verdict,
        f"memory spread {mem_spread:.0%} of a GPU (pass ≤ {TP_MEMORY_SPREAD_PASS:.0%}), "
        f"utilisation spread {util_spread} points (pass ≤ {TP_UTIL_SPREAD_PASS})",
    )


def _judge_speed(report: Report, c1: LoadRun, c4: LoadRun) -> None:
    scaling = c4.throughput / c1.throughput if c1.throughput > 0 else 0.0
    report.add(
        "throughput c=1",
        "PASS" if c1.throughput > 0 else "FAIL",
        f"{c1.throughput:.1f} tokens/s ({len(c1.results)} requests one after another)",
    )
    report.add(
        "throughput c=4",
        _grade_high(scaling, SCALING_PASS, SCALING_WARN),
        f"{c4.throughput:.1f} tokens/s together, {scaling:.2f}× c=1 (pass ≥ {SCALING_PASS}×)",
    )
    for run, passing, warning in ((c1, TTFT_C1_PASS_S, TTFT_C1_WARN_S), (c4, TTFT_C4_PASS_S, TTFT_C4_WARN_S)):
        ttft = run.median_ttft_s
        if ttft is None:
            report.add(f"TTFT c={run.concurrency}", "FAIL", "no first token")
            continue
        report.add(
            f"TTFT c={run.concurrency}",
            _grade_low(ttft, passing, warning),
            f"median {ttft:.2f} s (pass ≤ {passing:g} s)",
        )
