"""Stand-in processes for the containers: vLLM's OpenAI-compatible server, Open WebUI, and a no-op.

The stand-in vLLM reads its configuration the way the real container gets it: the compose
service's ``entrypoint`` + ``command`` (``vllm serve <model> …``, ``--model X``, or the
``python -m vllm.entrypoints.openai.api_server`` form) and its environment (``env_file``:
``VLLM_API_KEY``, ``HF_TOKEN``). It serves, on a real ephemeral 127.0.0.1 port:

GET  /health /ping /version /metrics        no auth (as vLLM: only /v1/* is protected)
GET  /v1/models                             the served model name(s)
POST /v1/completions /v1/chat/completions   non-streaming and SSE streaming, with usage

While loading (``load_seconds``/``load_sim_seconds``) every route answers 503. Failure modes
(``VLLMFailure``) and realism checks write the log text real vLLM writes, then the process
exits (code 1) and docker's restart policy applies. Metrics use vLLM's names and labels.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar

from .docker import Container, Docker, StandIn
from .options import LOAD_FAILURES, VLLMFailure

if TYPE_CHECKING:
    from .vm import Timer

TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TTFT_BUCKETS += (20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS: tuple[float, ...] = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
)
E2E_BUCKETS += (240.0, 480.0, 960.0, 1920.0, 7680.0)
TPOT_BUCKETS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS += (20.0, 40.0, 80.0)

#: vLLM options that take several values (argparse nargs="+").
MULTI_VALUE = frozenset({"served-model-name", "allowed-origins", "allowed-methods", "allowed-headers"})
SHORT_ALIASES = {"-tp": "tensor-parallel-size", "-pp": "pipeline-parallel-size", "-dp": "data-parallel-size"}
TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words and punctuation marks."""
    return len(TOKEN_RE.findall(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _parse_len(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if m is None:
        raise ValueError(text)
    mult = {"": 1, "k": 1000, "K": 1024, "m": 1000_000, "M": 1024 * 1024}[m.group(2)]
    return int(float(m.group(1)) * mult)


class VLLMConfig:
    """The vLLM arguments of a compose service, parsed like ``vllm serve``'s argparse would."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        if "serve" in argv:
            args = argv[argv.index("serve") + 1 :]
        elif "vllm.entrypoints.openai.api_server" in argv:
            args = argv[argv.index("vllm.entrypoints.openai.api_server") + 1 :]
        else:  # the vllm/vllm-openai image's ENTRYPOINT is `vllm serve`: command = arguments
            args = list(argv)
        self.options: dict[str, Any] = {}
        self.positionals: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            if a in SHORT_ALIASES:
                a = "--" + SHORT_ALIASES[a]
            if a.startswith("--"):
                key, eq, value = a[2:].partition("=")
                key = key.replace("_", "-")
                if eq:
                    self.options[key] = [value] if key in MULTI_VALUE else value
                    i += 1
                    continue
                values: list[str] = []
                j = i + 1
                while j < len(args) and not args[j].startswith("-"):
                    values.append(args[j])
                    j += 1
                    if key not in MULTI_VALUE:
                        break
                if key.startswith("no-") and not values:
                    self.options[key[3:]] = False
                elif key in MULTI_VALUE:
                    self.options[key] = values
                else:
                    self.options[key] = values[0] if values else True
                i = j
                continue
            self.positionals.append(a)
            i += 1
        model = self.positionals[0] if self.positionals else self.options.get("model")
        self.model = str(model) if model else "facebook/opt-125m"  # vLLM's default
        served = self.options.get("served-model-name")
        self.served_names: list[str] = list(served) if served else [self.model]
        self.max_model_len: int | None = (
            _parse_len(str(self.options["max-model-len"])) if "max-model-len" in self.options else None
        )
        self.tensor_parallel_size = int(self.options.get("tensor-parallel-size", 1))
        self.pipeline_parallel_size = int(self.options.get("pipeline-parallel-size", 1))
        self.gpu_memory_utilization = float(self.options.get("gpu-memory-utilization", 0.9))
        self.dtype = str(self.options.get("dtype", "auto"))
        self.port = int(self.options.get("port", 8000))
        self.host = self.options.get("host")
        api_key = self.options.get("api-key")
        self.api_key: str | None = str(api_key) if api_key not in (None, True) else None
        self.max_num_seqs = int(self.options.get("max-num-seqs", 256))
        self.quantization = self.options.get("quantization")


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, le in enumerate(self.buckets):
            if value <= le:
                self.counts[i] += 1


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = {"stop": 0, "length": 0, "abort": 0}
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.e2e = _Histogram(E2E_BUCKETS)
        self.tpot = _Histogram(TPOT_BUCKETS)

    def render(self, model_name: str, kv_usage: float) -> str:
        labels = f'engine="0",model_name="{model_name}"'
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for suffix_labels, value in samples:
                out.append(f"{name}{suffix_labels} {float(value)!r}")

        def hist(name: str, help_text: str, h: _Histogram) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} histogram")
            for le, count in zip(h.buckets, h.counts, strict=True):
                out.append(
                    f'{name}_bucket{{engine="0",le="{le}",model_name="{model_name}"}} {float(count)!r}'
                )
            out.append(f'{name}_bucket{{engine="0",le="+Inf",model_name="{model_name}"}} {float(h.count)!r}')
            out.append(f"{name}_count{{{labels}}} {float(h.count)!r}")
            out.append(f"{name}_sum{{{labels}}} {float(h.sum)!r}")

        with self.lock:
            metric(
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                [(f"{{{labels}}}", self.running)],
            )
            metric(
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                [(f"{{{labels}}}", self.waiting)],
            )
            metric(
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                [(f"{{{labels}}}", kv_usage)],
            )
            metric(
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prefill tokens processed.",
                [(f"{{{labels}}}", self.prompt_tokens)],
            )
            metric(
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens processed.",
                [(f"{{{labels}}}", self.generation_tokens)],
            )
            metric(
                "vllm:request_success_total",
                "counter",
                "Count of successfully processed requests.",
                [
                    (f'{{engine="0",finished_reason="{reason}",model_name="{model_name}"}}', n)
                    for reason, n in self.success.items()
                ],
            )
            hist(
                "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft
            )
            hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e)
            hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                self.tpot,
            )
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
# HTTP plumbing
# ------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: HTTPStandIn, handler: type[BaseHTTPRequestHandler]) -> None:
        self.owner = owner
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "uvicorn"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, payload: Any = None, content_type: str = "application/json") -> None:
        if isinstance(payload, (bytes, str)):
            data = payload.encode() if isinstance(payload, str) else payload
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload).encode()
        self.send_response(status)
        if data or content_type != "application/json":
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.server.owner.access_log(self, status)

    def start_chunked(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self.server.owner.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.owner.handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.owner.handle(self, "DELETE")

    def do_PUT(self) -> None:
        self.server.owner.handle(self, "PUT")


class HTTPStandIn(StandIn):
    """A stand-in that serves HTTP for one container port."""

    process_label: ClassVar[str] = ""

    def __init__(self, docker: Docker, container: Container) -> None:
        super().__init__(docker, container)
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None
        self.timers: list[Timer] = []
        self._closed = threading.Event()

    def serve(self, container_port: int) -> None:
        server = _Server(self, _Handler)
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"vmsim-{self.container.name}",
            daemon=True,
        )
        self.thread.start()
        self.ports = {container_port: int(server.server_address[1])}

    def schedule(self, fn: Any, *, real: float = 0.0, sim: float = 0.0) -> None:
        self.timers.append(self.vm.schedule(fn, real=real, sim=sim))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for t in self.timers:
            t.cancel()
        server, self.server = self.server, None
        self.ports = {}
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.conns_lock:
            conns = list(server.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)

    def access_log(self, handler: _Handler, status: int) -> None:
        pass

    def handle(self, handler: _Handler, method: str) -> None:
        handler.reply(404, {"detail": "Not Found"})

    def stamp(self) -> str:
        return datetime.fromtimestamp(self.vm.now(), tz=timezone.utc).strftime("%m-%d %H:%M:%S")


class GenericStandIn(StandIn):
    """A container the emulator has no stand-in for: it runs and does nothing."""


# ------------------------------------------------------------------------------------------
# vLLM
# ------------------------------------------------------------------------------------------


class VLLMStandIn(HTTPStandIn):
    def __init__(self, docker: Docker, container: Container) -> None:
        super().__init__(docker, container)
        self.options = self.vm.options
        self.config = VLLMConfig(container.spec.argv())
        self.env = dict(container.spec.environment)
        self.api_key: str | None = self.config.api_key or self.env.get("VLLM_API_KEY") or None
        self.max_model_len = self.config.max_model_len or self.options.default_max_model_len
        self.state = "loading"  # loading, ready, dead
        self.failure: VLLMFailure | None = None
        self.started_real = time.monotonic()
        self.started_sim = self.vm.now()
        self.metrics = Metrics()
        #: Every HTTP request: method, path, status, and for completions model/stream/usage.
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max(1, self.config.max_num_seqs))
        gpus = self.vm.gpus
        request = container.spec.gpus
        if request is None:
            visible = 0
        elif request == "all":
            visible = len(gpus)
        else:
            visible = min(int(request), len(gpus))
        self.visible_gpus = [i for i in range(visible) if gpus[i].nvidia]
        self.used_gpus = self.visible_gpus[
            : max(1, self.config.tensor_parallel_size * self.config.pipeline_parallel_size)
        ]

    # -- inspection ------------------------------------------------------------------------

    @property
    def served_names(self) -> list[str]:
        return self.config.served_names

    @property
    def model(self) -> str:
        return self.config.model

    def health(self) -> str:
        return "healthy" if self.is_ready() else "starting"

    def gpu_memory_used_mib(self, index: int) -> int:
        if index not in self.used_gpus or self.state == "dead":
            return 0
        total = self.vm.gpus[index].memory_mib
        share = (
            self.config.gpu_memory_utilization if self.is_ready() else self.config.gpu_memory_utilization / 2
        )
        return int(total * share)

    def gpu_busy(self, index: int) -> bool:
        return index in self.used_gpus and self.metrics.running > 0

    # -- lifecycle -------------------------------------------------------------------------

    def _p(self, line: str, *, engine: bool = False, level: str = "INFO", where: str = "") -> None:
        who = "(EngineCore_DP0 pid=150)" if engine else "(APIServer pid=1)"
        self.log(f"{who} {level} {self.stamp()} [{where}] {line}" if where else f"{who} {line}")

    def start(self) -> None:
        cfg = self.config
        self.log(f"INFO {self.stamp()} [__init__.py:216] Automatically detected platform cuda.")
        self._p(f"vLLM API server version {self.options.vllm_version}", where="api_server.py:1839")
        non_default: dict[str, Any] = {"model_tag": cfg.model, "model": cfg.model}
        for key, value in cfg.options.items():
            non_default[key.replace("-", "_")] = value
        self._p(f"non-default args: {non_default}", where="utils.py:233")
        self.failure = self._decide_failure()
        immediate = (
            self.failure is not None and self.failure.kind in LOAD_FAILURES and self.failure.after <= 0
        )
        if not immediate:
            self.serve(cfg.port)
        # --host 127.0.0.1: unreachable through a published port (bridge network), and only from
        # the VM itself with network_mode: host.
        self.loopback_only = str(cfg.host) in ("127.0.0.1", "localhost", "::1")
        self._p("Resolved architecture: Qwen2ForCausalLM", where="model.py:547")
        self._p(f"Using max model len {self.max_model_len}", where="model.py:1510")
        if self.failure is not None and self.failure.kind in LOAD_FAILURES:
            failure = self.failure
            if failure.after <= 0:
                self._fail(failure)
            else:
                self.schedule(lambda: self._fail(failure), real=failure.after)
            return
        self._p(f"Starting to load model {cfg.model}...", engine=True, where="gpu_model_runner.py:2602")
        self.schedule(self._check_ready, real=self.options.load_seconds, sim=self.options.load_sim_seconds)
        self._check_ready()

    def _decide_failure(self) -> VLLMFailure | None:
        cfg, spec = self.config, self.container.spec
        if self.options.realism_checks:
            if spec.gpus is None or not self.visible_gpus:
                return VLLMFailure.no_gpu()
            need = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
            if need > len(self.visible_gpus):
                return VLLMFailure("oom", detail={"tp_error": need})
            if cfg.dtype in ("bfloat16", "bf16"):
                low = [
                    self.vm.gpus[i] for i in self.used_gpus if (self.vm.gpus[i].compute_capability or 0) < 8.0
                ]
                if low:
                    return VLLMFailure.bf16()
            if need > 1 and spec.ipc != "host" and spec.shm_size <= 64 * 1024 * 1024:
                return VLLMFailure.nccl()
        failure = self.options.vllm_failure
        if failure is None:
            return None
        if failure.times is not None and self.container.starts > failure.times:
            return None
        if failure.models is not None and cfg.model not in failure.models:
            return None
        valid = failure.detail.get("valid_token")
        if failure.kind == "gated" and valid is not None and self.env.get("HF_TOKEN") == valid:
            return None
        if self._cured(failure):
            return None
        return failure

    def _cured(self, failure: VLLMFailure) -> bool:
        """Whether the settings real vLLM would start with avoid ``failure`` (options.VLLMFailure)."""
        cfg = self.config
        if failure.kind == "kv_cache":
            return self.max_model_len <= int(failure.detail.get("max_tokens", 18000))
        if failure.kind == "nccl":
            # GPU peer-to-peer through a hypervisor is the usual culprit; without it NCCL copies
            # through host shared memory.
            return self.env.get("NCCL_P2P_DISABLE") == "1"
        if failure.kind == "bf16":
            return cfg.dtype in ("float16", "half")
        if failure.kind == "oom" and "fits_at" in failure.detail:
            return cfg.gpu_memory_utilization <= float(failure.detail["fits_at"]) + 1e-9
        return False

    def _ready_due(self) -> bool:
        return (
            time.monotonic() - self.started_real >= self.options.load_seconds
            and self.vm.now() - self.started_sim >= self.options.load_sim_seconds
        )

    def is_ready(self) -> bool:
        if self.state == "loading" and (self.failure is None or self.failure.kind not in LOAD_FAILURES):
            self._check_ready()
        return self.state == "ready"

    def _check_ready(self) -> None:
        with self._lock:
            if self.state != "loading" or not self._ready_due() or self.exited:
                return
            if self.failure is not None and self.failure.kind in LOAD_FAILURES:
                return
            self.state = "ready"
        cfg = self.config
        gpu = self.vm.gpus[self.used_gpus[0]] if self.used_gpus else None
        total_gib = (gpu.memory_mib / 1024) if gpu else 24.0
        kv_gib = max(0.5, total_gib * cfg.gpu_memory_utilization * 0.3)
        kv_tokens = int(kv_gib * 1024 * 1024 * 1024 / (128 * 1024))
        self._p(
            "Model loading took 14.2488 GiB and 35.12 seconds", engine=True, where="gpu_model_runner.py:2653"
        )
        self._p(f"Available KV cache memory: {kv_gib:.2f} GiB", engine=True, where="gpu_worker.py:298")
        self._p(f"GPU KV cache size: {kv_tokens:,} tokens", engine=True, where="kv_cache_utils.py:1087")
        self._p(
            f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
            f"{kv_tokens / self.max_model_len:.2f}x",
            engine=True,
            where="kv_cache_utils.py:1091",
        )
        host = cfg.host or "0.0.0.0"
        self._p(f"Starting vLLM API server 0 on http://{host}:{cfg.port}", where="api_server.py:1912")
        self._p("Available routes are:", where="launcher.py:34")
        for route in (
            "/health",
            "/metrics",
            "/version",
            "/v1/models",
            "/v1/completions",
            "/v1/chat/completions",
        ):
            self._p(f"Route: {route}", where="launcher.py:42")
        self._p("INFO:     Started server process [1]")
        self._p("INFO:     Waiting for application startup.")
        self._p("INFO:     Application startup complete.")
        if self.failure is not None and self.failure.kind == "crash":
            self.schedule(self._crash, real=self.failure.after)

    def _fail(self, failure: VLLMFailure) -> None:
        if self.exited:
            return
        self.state = "dead"
        for line in self._failure_text(failure):
            self.log(line)
        self.exit(1)

    def _crash(self) -> None:
        if self.exited:
            return
        self.state = "dead"
        for line in self._failure_text(VLLMFailure.crash()):
            self.log(line)
        self.exit(1)

    def crash_now(self, kind: str = "crash") -> None:
        """Kill the process now with the log of ``kind`` (a test knob)."""
        if self.exited:
            return
        self.state = "dead"
        for line in self._failure_text(VLLMFailure(kind)):  # type: ignore[arg-type]
            self.log(line)
        self.exit(1)

    def _failure_text(self, failure: VLLMFailure) -> list[str]:
        cfg = self.config
        e = f"(EngineCore_DP0 pid=150) ERROR {self.stamp()} [core.py:708]"
        api = f"(APIServer pid=1) ERROR {self.stamp()} [api_server.py:1872]"
        tb = [
            f"{e} EngineCore failed to start.",
            f"{e} Traceback (most recent call last):",
            f'{e}   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 699, '
            "in run_engine_core",
            f"{e}     engine_core = EngineCoreProc(*args, **kwargs)",
        ]
        tail = [
            f"{api} RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {}",
        ]
        gpu = self.vm.gpus[self.used_gpus[0]] if self.used_gpus else None
        req = f"(Request ID: Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};{uuid.uuid4()})"
        kind = failure.kind
        if kind == "oom" and "tp_error" in failure.detail:
            need = failure.detail["tp_error"]
            return [
                *tb,
                f"{e} ValueError: please set tensor_parallel_size ({need}) to less than max local gpu "
                f"count ({len(self.visible_gpus)})",
                *tail,
            ]
        if kind == "oom":
            total = (gpu.memory_mib / 1024) if gpu else 23.55
            tried = float(failure.detail.get("tried_gib", 1.02))
            return [
                *tb,
                f"{e} torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {tried:.2f} GiB. GPU 0 has a "
                f"total capacity of {total:.2f} GiB of which 512.00 MiB is free. Including non-PyTorch memory, "
                f"this process has {total - 0.5:.2f} GiB memory in use. Of the allocated memory "
                f"{total - 1.06:.2f} GiB is allocated by PyTorch, and 101.12 MiB is reserved by PyTorch but "
                "unallocated. If reserved but unallocated memory is large try setting "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
                "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
                *tail,
            ]
        if kind == "kv_cache":
            tokens = int(failure.detail.get("max_tokens", 18000))
            return [
                *tb,
                f"{e} ValueError: The model's max seq len ({self.max_model_len}) is larger than the maximum "
                f"number of tokens that can be stored in KV cache ({tokens}). Try increasing "
                "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
                *tail,
            ]
        if kind == "model_not_found":
            return [
                f"{api} huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. {req}",
                f"{api} ",
                f"{api} Repository Not Found for url: https://huggingface.co/api/models/{cfg.model}/tree/main"
                "?recursive=True&expand=False.",
                f"{api} Please make sure you specified the correct `repo_id` and `repo_type`.",
                f"{api} If you are trying to access a private or gated repo, make sure you are authenticated. "
                "For more details, see https://huggingface.co/docs/huggingface_hub/authentication",
                f"{api} OSError: {cfg.model} is not a local folder and is not a valid model identifier listed "
                "on 'https://huggingface.co/models'",
                f"{api} If this is a private repository, make sure to pass a token having permission to this "
                "repo either by logging in with `hf auth login` or by passing `token=<your_token>`",
            ]
        if kind == "gated":
            url = f"https://huggingface.co/{cfg.model}/resolve/main/config.json"
            if self.env.get("HF_TOKEN"):
                return [
                    f"{api} huggingface_hub.errors.GatedRepoError: 403 Client Error. {req}",
                    f"{api} ",
                    f"{api} Cannot access gated repo for url {url}.",
                    f"{api} Access to model {cfg.model} is restricted and you are not in the authorized list. "
                    f"Visit https://huggingface.co/{cfg.model} to ask for access.",
                ]
            return [
                f"{api} huggingface_hub.errors.GatedRepoError: 401 Client Error. {req}",
                f"{api} ",
                f"{api} Cannot access gated repo for url {url}.",
                f"{api} Access to model {cfg.model} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            ]
        if kind == "nccl":
            w = f"(Worker_TP1 pid={200}) ERROR {self.stamp()} [multiproc_executor.py:671]"
            return [
                *tb,
                f"{w} torch.distributed.DistBackendError: NCCL error in: "
                "/pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled system error (run "
                "with NCCL_DEBUG=INFO for details), NCCL version 2.26.2",
                f"{w} ncclSystemError: System call (e.g. socket, malloc) or external library call failed or "
                "device error. ",
                f"{w} Last error:",
                f"{w} Error while creating shared memory segment /dev/shm/nccl-7Uj6Qa (size 9637888)",
                *tail,
            ]
        if kind == "bf16":
            name = gpu.name if gpu else "Quadro RTX 6000"
            cc = gpu.compute_capability if gpu else 7.5
            return [
                *tb,
                f"{e} ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0. "
                f"Your {name} GPU has compute capability {cc}. You can use float16 instead by explicitly "
                "setting the `dtype` flag in CLI, for example: --dtype=half.",
                *tail,
            ]
        if kind == "no_gpu":
            return [
                f"{api} RuntimeError: Failed to infer device type, please set the environment variable "
                "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue.",
            ]
        # crash after start
        c = f"(EngineCore_DP0 pid=150) ERROR {self.stamp()} [core.py:710]"
        return [
            f"{c} EngineCore encountered a fatal error.",
            f"{c} Traceback (most recent call last):",
            f"{c} RuntimeError: CUDA error: an illegal memory access was encountered",
            f"{c} CUDA kernel errors might be asynchronously reported at some other API call, so the "
            "stacktrace below might be incorrect.",
            f"(APIServer pid=1) ERROR {self.stamp()} [async_llm.py:480] AsyncLLM output_handler failed.",
            "(APIServer pid=1) vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. "
            "See stack trace (above) for the root cause.",
            "(APIServer pid=1) INFO:     Shutting down",
            "(APIServer pid=1) INFO:     Finished server process [1]",
        ]

    def stop(self) -> None:
        self.state = "dead"
        self._p("INFO:     Shutting down")
        self._p("INFO:     Waiting for application shutdown.")
        self._p("INFO:     Application shutdown complete.")
        self._p("INFO:     Finished server process [1]")

    # -- HTTP ------------------------------------------------------------------------------

    def access_log(self, handler: _Handler, status: int) -> None:
        phrase = {
            200: "OK",
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            503: "Service Unavailable",
        }
        client = handler.client_address
        self._p(
            f'INFO:     {client[0]}:{client[1]} - "{handler.command} {handler.path} HTTP/1.1" '
            f"{status} {phrase.get(status, '')}".rstrip()
        )

    def _record(self, **entry: Any) -> dict[str, Any]:
        with self._lock:
            self.requests.append(entry)
        return entry

    def handle(self, h: _Handler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        raw = h.body() if method in ("POST", "PUT") else b""
        entry = self._record(method=method, path=path, status=None)
        if not self.is_ready():
            entry["status"] = 503
            h.reply(
                503, None if path in ("/health", "/ping") else {"detail": "vmsim: the model is still loading"}
            )
            return
        if path in ("/health", "/ping") and method == "GET":
            entry["status"] = 200
            h.reply(200)
            return
        if path == "/version" and method == "GET":
            entry["status"] = 200
            h.reply(200, {"version": self.options.vllm_version})
            return
        if path == "/metrics" and method == "GET":
            entry["status"] = 200
            kv = min(1.0, self.metrics.running * 0.01)
            h.reply(
                200, self.metrics.render(self.served_names[0], kv), "text/plain; version=0.0.4; charset=utf-8"
            )
            return
        if path.startswith("/v1") and self.api_key is not None and method != "OPTIONS":
            entry["authorized"] = h.headers.get("Authorization") == f"Bearer {self.api_key}"
            if not entry["authorized"]:
                entry["status"] = 401
                h.reply(401, {"error": "Unauthorized"})
                return
        if path == "/v1/models" and method == "GET":
            entry["status"] = 200
            created = int(self.vm.now())
            data = [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": self.config.model,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{uuid.uuid4().hex}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
                for name in self.served_names
            ]
            h.reply(200, {"object": "list", "data": data})
            return
        if path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            self._completion(h, raw, chat=path.endswith("chat/completions"), entry=entry)
            return
        entry["status"] = 404
        h.reply(404, {"detail": "Not Found"})

    def _error(
        self, h: _Handler, entry: dict[str, Any], status: int, kind: str, message: str, param: Any = None
    ) -> None:
        entry["status"] = status
        h.reply(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def _completion(self, h: _Handler, raw: bytes, *, chat: bool, entry: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._error(h, entry, 400, "BadRequestError", f"JSON decode error: {e}")
            return
        model = body.get("model") or self.served_names[0]
        entry.update(model=model, stream=bool(body.get("stream")))
        if model not in self.served_names:
            self._error(h, entry, 404, "NotFoundError", f"The model `{model}` does not exist.", "model")
            return
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self._error(h, entry, 400, "BadRequestError", "messages: Field required", "messages")
                return
            prompt_tokens = 3 + sum(
                3 + count_tokens(_content_text(m.get("content"))) for m in messages if isinstance(m, dict)
            )
            request: Any = messages
        else:
            prompt = body.get("prompt")
            if prompt is None:
                self._error(h, entry, 400, "BadRequestError", "prompt: Field required", "prompt")
                return
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            prompt_tokens = 1 + count_tokens(text)
            request = prompt
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            self._error(h, entry, 400, "BadRequestError", f"max_tokens must be at least 1, got {max_tokens}.")
            return
        limit = self.max_model_len - prompt_tokens
        if prompt_tokens + (max_tokens or 0) > self.max_model_len or limit <= 0:
            self._error(
                h,
                entry,
                400,
                "BadRequestError",
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the messages, {max_tokens or 0} "
                "in the completion). Please reduce the length of the messages or completion.",
            )
            return
        reply = self.options.reply(request, model)
        pieces = re.findall(r"\s*\S+", reply) or [""]
        cap = max_tokens if max_tokens is not None else limit
        finish = "stop"
        if len(pieces) > cap:
            pieces, finish = pieces[:cap], "length"
        with self.metrics.lock:
            self.metrics.waiting += 1
        self._slots.acquire()
        with self.metrics.lock:
            self.metrics.waiting -= 1
            self.metrics.running += 1
            self.metrics.prompt_tokens += prompt_tokens
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(pieces)}
        usage["completion_tokens"] = len(pieces)
        usage["prompt_tokens_details"] = None  # type: ignore[assignment]
        entry["usage"] = {k: v for k, v in usage.items() if v is not None}
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(self.vm.now())
        outcome = "abort"
        first_token_at: float | None = None
        try:
            if body.get("stream"):
                entry["status"] = 200
                first_token_at = self._stream(h, body, chat, rid, created, model, pieces, finish, usage)
            else:
                for _ in pieces:  # generated one engine step at a time, counted as they are
                    if self.options.token_delay:
                        self.vm.stopped.wait(self.options.token_delay)
                    with self.metrics.lock:
                        self.metrics.generation_tokens += 1
                first_token_at = time.monotonic()
                text = "".join(pieces)
                choice: dict[str, Any]
                if chat:
                    choice = {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": None,
                            "audio": None,
                            "function_call": None,
                            "tool_calls": [],
                            "reasoning_content": None,
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                    }
                else:
                    choice = {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                        "prompt_logprobs": None,
                    }
                entry["status"] = 200
                h.reply(
                    200,
                    {
                        "id": rid,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [choice],
                        "service_tier": None,
                        "system_fingerprint": None,
                        "usage": usage,
                        "prompt_logprobs": None,
                        "kv_transfer_params": None,
                    },
                )
            outcome = finish
        except (BrokenPipeError, ConnectionResetError, OSError):
            outcome = "abort"
        finally:
            end = time.monotonic()
            with self.metrics.lock:
                self.metrics.running -= 1
                self.metrics.success[outcome] += 1
                # Generated tokens were counted as they were produced (above and in _stream).
                if outcome != "abort":
                    ttft = (first_token_at or end) - t0
                    self.metrics.ttft.observe(ttft)
                    self.metrics.e2e.observe(end - t0)
                    if len(pieces) > 1:
                        self.metrics.tpot.observe((end - (first_token_at or t0)) / (len(pieces) - 1))
            self._slots.release()
            entry["finish_reason"] = outcome

    def _stream(
        self,
        h: _Handler,
        body: dict[str, Any],
        chat: bool,
        rid: str,
        created: int,
        model: str,
        pieces: list[str],
        finish: str,
        usage: dict[str, Any],
    ) -> float | None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"
        h.start_chunked(200, "text/event-stream; charset=utf-8")
        h.server.owner.access_log(h, 200)

        def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            payload = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            h.chunk(f"data: {json.dumps(payload)}\n\n".encode())

        first: float | None = None
        if chat:
            send(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        for i, piece in enumerate(pieces):
            if i and self.options.token_delay and self.vm.stopped.wait(self.options.token_delay):
                raise ConnectionResetError("server shutting down")
            if self.exited:
                raise ConnectionResetError("server shutting down")
            last = i == len(pieces) - 1
            reason = finish if last else None
            if chat:
                send(
                    [
                        {
                            "index": 0,
                            "delta": {"content": piece},
                            "logprobs": None,
                            "finish_reason": reason,
                            "stop_reason": None,
                        }
                    ]
                )
            else:
                send(
                    [
                        {
                            "index": 0,
                            "text": piece,
                            "logprobs": None,
                            "finish_reason": reason,
                            "stop_reason": None,
                        }
                    ]
                )
            if first is None:
                first = time.monotonic()
            # Real vLLM counts generated tokens every engine step, not when a request ends, so a
            # scrape during a long answer already shows its tokens (`maider watch` relies on it).
            with self.metrics.lock:
                self.metrics.generation_tokens += 1
        if include_usage:
            send([], usage=usage)
        h.chunk(b"data: [DONE]\n\n")
        h.end_chunks()
        return first


# ------------------------------------------------------------------------------------------
# Open WebUI
# ------------------------------------------------------------------------------------------


class WebUIStandIn(HTTPStandIn):
    VERSION = "0.6.36"

    def __init__(self, docker: Docker, container: Container) -> None:
        super().__init__(docker, container)
        self.env = dict(container.spec.environment)
        self.port = int(self.env.get("PORT", 8080))
        self.started_real = time.monotonic()
        self.requests: list[dict[str, Any]] = []

    def start(self) -> None:
        self.log("Loading WEBUI_SECRET_KEY from file, not provided as an environment variable.")
        self.log("INFO:     Started server process [1]")
        self.serve(self.port)
        self.log("INFO:     Waiting for application startup.")
        self.log(f"v{self.VERSION} - building the best AI user interface.")
        self.log("INFO:     Application startup complete.")
        self.log(f"INFO:     Uvicorn running on http://0.0.0.0:{self.port} (Press CTRL+C to quit)")

    def is_ready(self) -> bool:
        return time.monotonic() - self.started_real >= self.vm.options.webui_load_seconds

    def health(self) -> str:
        return "healthy" if self.is_ready() else "starting"

    def stop(self) -> None:
        self.log("INFO:     Shutting down")
        self.log("INFO:     Finished server process [1]")

    def handle(self, h: _Handler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append({"method": method, "path": path})
        if not self.is_ready():
            h.reply(503, {"detail": "starting"})
            return
        if path == "/health":
            h.reply(200, {"status": True})
        elif path == "/api/version":
            h.reply(200, {"version": self.VERSION})
        elif path == "/api/config":
            h.reply(
                200,
                {
                    "status": True,
                    "name": "Open WebUI",
                    "version": self.VERSION,
                    "default_locale": "",
                    "oauth": {"providers": {}},
                    "features": {"auth": self.env.get("WEBUI_AUTH", "True").lower() != "false"},
                },
            )
        elif path == "/" or not path.startswith("/api"):
            h.reply(
                200,
                '<!doctype html><html lang="en"><head><meta charset="utf-8" /><title>Open WebUI</title>'
                '</head><body><div id="app"></div></body></html>',
                "text/html; charset=utf-8",
            )
        else:
            h.reply(404, {"detail": "Not Found"})
