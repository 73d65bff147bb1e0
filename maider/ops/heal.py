"""Why vLLM did not start, read from its own log, and the settings change that fixes it.

Pure: no I/O. The caller fetches the log (``docker compose logs --no-color --tail 200 vllm``,
docs/LIFECYCLE.md), calls :func:`diagnose`, then :func:`plan_fix`; it applies a :class:`Fix` by
re-rendering the compose file and **recreating** the container (``up -d --force-recreate``), and
records a :class:`HealAttempt` per try. At most :data:`MAX_ATTEMPTS` tries.

What the previous generation got wrong (shared notes: prior-art-maider.md §3 step 12, §6), and
what this module does instead:

- It read the logs of the newest container, usually Open WebUI. Here the caller passes the vLLM
  service's log, and :func:`diagnose` only looks at the last start of vLLM in it (from the last
  ``vLLM API server version`` banner), so an error from an earlier run is not diagnosed again.
- ``out of memory|OOM`` case-insensitively matched "room" and "zoom", and any ``cuda error`` or
  ``tensor … parallel`` line counted. Here every rule is an exact phrase that vLLM, PyTorch, NCCL
  or huggingface_hub prints (the sources are given next to each pattern), and the harmless lines
  that mention the same words (vLLM's CUDA-graph hint about out-of-memory errors, the
  ProcessGroupNCCL shutdown warning, uvicorn's ``401 Unauthorized`` access log) are not matched.
- The OOM step started from 0.90 whatever was configured. Here it starts from the configured
  utilization, and once at the floor it shortens the context, as promised but never done.
- A fix went into ``.env`` with ``sed`` (new keys never appended) and ``docker compose restart``
  (which does not re-read it). Here a :class:`Fix` is a new :class:`~maider.sizing.VLLMSettings`
  plus environment variables; how to apply it is the caller's job (recreate, not restart).
- "Healthy" meant "no pattern in the log". Here the caller decides success by vLLM answering
  (/health, /v1/models, a 1-token completion), and only then records ``healed``.

Each pattern's comment quotes the message it matches and names the source file it comes from
(vllm-project/vllm, huggingface/huggingface_hub, PyTorch, NCCL); the texts were checked against
those sources and against logs users posted. vLLM rewords messages between versions, so where it
did (KV cache V0/V1, "models's"/"model's", the TP checks) every wording is matched.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from maider.sizing import MIN_USEFUL_CONTEXT, VLLMSettings

#: Healing tries per start of the stack. Each try recreates the container and reloads the
#: weights (minutes for a large model), so a fourth rarely pays for itself.
MAX_ATTEMPTS = 3

#: Out of memory: lower ``gpu_memory_utilization`` by this much per attempt, from the configured
#: value. vLLM's own advice for OOMs during profiling or CUDA-graph capture is "decrease
#: gpu_memory_utilization": what runs outside its budget (activations, graphs, NCCL buffers)
#: needs the room.
UTILIZATION_STEP = 0.05
#: ... but not below this: under 0.70 the KV cache of a model sized to fit at 0.90 shrinks to
#: little or nothing, so the context is shortened instead.
UTILIZATION_FLOOR = 0.70
#: "No available memory for the cache blocks" raises the utilization up to this much: above it
#: the CUDA context and NCCL have too little slack (vLLM's default is 0.90).
UTILIZATION_CEILING = 0.95
#: When something else holds GPU memory at start-up, leave this fraction free below what was free.
FREE_MEMORY_MARGIN = 0.02

#: The NCCL fix (see :func:`_plan_nccl`).
NCCL_ENV: Mapping[str, str] = {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}

#: Tensor-parallel sizes offered in hints (the GPU counts VM types come with).
_TP_SIZES = (1, 2, 4, 8)


class Kind(str, enum.Enum):
    """What went wrong. The value is what the session record stores."""

    #: PyTorch/CUDA ran out of GPU memory (profiling, CUDA graphs, NCCL buffers).
    CUDA_OOM = "cuda_oom"
    #: The KV cache holds fewer tokens than ``max_model_len``: vLLM refuses to start.
    KV_CACHE_TOO_SMALL = "kv_cache_too_small"
    #: The weights leave no memory at all for the KV cache at this utilization.
    NO_KV_CACHE_MEMORY = "no_kv_cache_memory"
    #: Less GPU memory was free at start-up than the utilization asks for (another process).
    GPU_MEMORY_IN_USE = "gpu_memory_in_use"
    #: NCCL (the GPUs' communication library) failed or timed out: tensor parallelism only.
    NCCL = "nccl"
    #: The tensor-parallel size does not match the GPUs or does not divide the attention heads.
    TP_MISMATCH = "tp_mismatch"
    #: bfloat16 on a GPU older than compute capability 8.0 (T4, V100, RTX 6000/8000).
    BF16_UNSUPPORTED = "bf16_unsupported"
    #: Hugging Face has no such model, or it is private and no token was sent.
    MODEL_NOT_FOUND = "model_not_found"
    #: The model is gated: its licence was not accepted, or no token was sent.
    GATED = "gated"
    #: Hugging Face rejected the token itself.
    UNAUTHORIZED = "unauthorized"


#: Kinds no settings change can fix: the user must act (token, licence, model id).
NOT_HEALABLE = frozenset({Kind.MODEL_NOT_FOUND, Kind.GATED, Kind.UNAUTHORIZED})


@dataclass(frozen=True)
class Diagnosis:
    """One diagnosed start-up failure, with the figures vLLM printed."""

    kind: Kind
    #: The log line that gave it away (container prefix removed, at most 300 characters).
    evidence: str
    #: One line: what went wrong and, for the kinds maider cannot heal, what the user does.
    summary: str
    #: KV_CACHE_TOO_SMALL: the ``max_model_len`` vLLM was started with.
    max_model_len: int | None = None
    #: KV_CACHE_TOO_SMALL: the tokens that fit in the KV cache (vLLM's figure or estimate).
    kv_cache_tokens: int | None = None
    #: TP_MISMATCH: the model's attention heads and the tensor-parallel size vLLM rejected.
    attention_heads: int | None = None
    tensor_parallel_size: int | None = None
    #: TP_MISMATCH: the GPUs vLLM could see, when it said.
    visible_gpus: int | None = None
    #: GPU_MEMORY_IN_USE: free and total GPU memory at start-up, in GiB.
    free_gib: float | None = None
    total_gib: float | None = None
    #: MODEL_NOT_FOUND / GATED / UNAUTHORIZED: the repository named in the error, if any.
    model: str | None = None

    @property
    def healable(self) -> bool:
        return self.kind not in NOT_HEALABLE


@dataclass(frozen=True)
class Fix:
    """A change to try: new vLLM settings and/or extra environment variables for the container."""

    kind: Kind
    settings: VLLMSettings
    #: Extra environment variables for the vLLM container (added to what it already has).
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: One line for the user, e.g. "lower --gpu-memory-utilization 0.9 → 0.85 (CUDA out of memory)".
    description: str = ""


class Outcome(str, enum.Enum):
    PENDING = "pending"  # the fix is applied, vLLM is starting again
    HEALED = "healed"  # vLLM answered after this fix
    FAILED = "failed"  # vLLM failed again (the next attempt has the new diagnosis)
    NOT_HEALABLE = "not_healable"  # nothing was applied: the user must act (see detail)


@dataclass(frozen=True)
class HealAttempt:
    """What the session stores per healing try."""

    attempt: int
    kind: Kind
    #: :attr:`Fix.description`, or None when nothing was applied.
    fix: str | None
    outcome: Outcome
    #: The diagnosis summary or the reason nothing could be done.
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "kind": self.kind.value,
            "fix": self.fix,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealAttempt:
        return cls(
            attempt=int(data["attempt"]),
            kind=Kind(data["kind"]),
            fix=data.get("fix"),
            outcome=Outcome(data["outcome"]),
            detail=str(data.get("detail", "")),
        )

    def with_outcome(self, outcome: Outcome, detail: str | None = None) -> HealAttempt:
        return replace(self, outcome=outcome, detail=self.detail if detail is None else detail)


# --------------------------------------------------------------------------------------------
# Reading the log
# --------------------------------------------------------------------------------------------

#: ``docker compose logs`` prefixes each line with the container ("vllm-1  | ", older compose:
#: "maider-vllm-1  | ").
_COMPOSE_PREFIX = re.compile(r"^[A-Za-z0-9][\w.-]*\s*\|\s?", re.MULTILINE)
#: Printed once at every start of ``vllm serve`` (vllm/entrypoints/openai/api_server.py).
_START_BANNER = re.compile(r"vLLM API server version")
_EVIDENCE_MAX = 300


def _strip_prefixes(log: str) -> str:
    return _COMPOSE_PREFIX.sub("", log.replace("\r\n", "\n"))


def _current_run(text: str) -> str:
    """The text from the last start banner on (all of it if the tail does not reach one)."""
    starts = [m.start() for m in _START_BANNER.finditer(text)]
    if not starts:
        return text
    return text[text.rfind("\n", 0, starts[-1]) + 1 :]


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end >= 0 else len(text)].strip()
    return line if len(line) <= _EVIDENCE_MAX else line[: _EVIDENCE_MAX - 1] + "…"


# -- Hugging Face (huggingface_hub/utils/_http.py: hf_raise_for_status; transformers; vLLM) ---

#: The token itself was rejected: the Hub's body for a bad ``Authorization`` header. Older
#: huggingface_hub versions wrap it in a RepositoryNotFoundError; newer ones keep it out of that
#: class for exactly this reason. Either way it wins over "not found".
_HF_BAD_TOKEN = re.compile(r"Invalid credentials in Authorization header")
#: GatedRepoError: "Cannot access gated repo for url <url>." then the Hub's "Access to model
#: <id> is restricted and you are not in the authorized list. Visit … to ask for access." (token
#: sent, licence not accepted) or "… is restricted. You must have access to it and be
#: authenticated to access it. Please log in." (no token). transformers wraps it as "You are
#: trying to access a gated repo."
_HF_GATED = re.compile(
    r"GatedRepoError|Cannot access gated repo for url|You are trying to access a gated repo"
)
_HF_GATED_NOT_AUTHORIZED = re.compile(r"not in the authorized list")
#: RepositoryNotFoundError ("Repository Not Found for url: <url>. Please make sure you specified
#: the correct `repo_id` …"), vLLM's own wrapper (vllm/transformers_utils/config.py: "Invalid
#: repository ID or local directory specified: '<id>'."), and transformers' OSError.
_HF_NOT_FOUND = re.compile(
    r"RepositoryNotFoundError|Repository Not Found for url"
    r"|Invalid repository ID or local directory specified"
    r"|is not a local folder and is not a valid model identifier"
)
#: requests' HTTPError text for any other 401 from the Hub. uvicorn's access log line
#: ('"POST /v1/completions HTTP/1.1" 401 Unauthorized', a client with a wrong vLLM API key) is
#: deliberately not matched: it is not a start-up failure.
_HF_401 = re.compile(r"401 Client Error")

_HF_MODEL_ID = (
    re.compile(r"Access to model (?P<id>[\w.-]+/[\w.-]+) is restricted"),
    re.compile(r"Invalid repository ID or local directory specified:\s*'(?P<id>[^']+)'"),
    re.compile(r"https://huggingface\.co/(?:api/models/)?(?P<id>[\w.-]+/[\w.-]+)/(?:resolve|revision|tree)/"),
    re.compile(r"(?P<id>[\w.-]+/[\w.-]+) is not a local folder"),
)

# -- vLLM configuration ---------------------------------------------------------------------

#: vllm/worker/worker.py (V0) and vllm/platforms/cuda.py (V1): "Bfloat16 is only supported on
#: GPUs with compute capability of at least 8.0. Your Tesla T4 GPU has compute capability 7.5.
#: You can use float16 instead by explicitly setting the`dtype` flag in CLI, for example:
#: --dtype=half."
_BF16 = re.compile(
    r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0\."
    r"(?:\s*Your (?P<gpu>.+?) GPU (?:has compute capability (?P<cc>\d+\.\d+)|does not have))?"
)
#: vllm/config.py ModelConfig.verify_with_parallel_config: "Total number of attention heads (40)
#: must be divisible by tensor parallel size (3)."
_TP_HEADS = re.compile(
    r"Total number of attention heads \((?P<heads>\d+)\)\s*must be divisible by tensor parallel size"
    r" \((?P<tp>\d+)\)"
)
#: The multiprocessing executor (vllm/executor/multiproc_gpu_executor.py, later
#: vllm/v1/executor/multiproc_executor.py): "please set tensor_parallel_size (4) to less than max
#: local gpu count (2)"; older versions print it without the figures.
_TP_GPUS = re.compile(
    r"please set tensor_parallel_size(?: \((?P<tp>\d+)\))? to less than max local gpu count"
    r"(?: \((?P<gpus>\d+)\))?"
)
#: vllm/config/parallel.py (pydantic validation of ParallelConfig): "World size (4) is larger
#: than the number of available GPUs (1) in this node."
_TP_WORLD = re.compile(
    r"World size \((?P<tp>\d+)\) is larger than the number of available GPUs \((?P<gpus>\d+)\)"
)
#: The Ray executor (vllm/executor/ray_utils.py). The same words also appear as a WARNING while
#: Ray waits for a placement group, so only the raised error counts.
_TP_RAY = re.compile(
    r"(?:Error|Exception): The number of required GPUs exceeds the total number of available GPUs"
)

# -- Memory ----------------------------------------------------------------------------------

#: V0 (vllm/worker/worker.py raise_if_cache_size_invalid): "The model's max seq len (32768) is
#: larger than the maximum number of tokens that can be stored in KV cache (26240). Try
#: increasing `gpu_memory_utilization` or decreasing `max_model_len` …"
_KV_V0 = re.compile(
    r"The model's max seq len \((?P<len>\d+)\) is larger than the maximum number of tokens that can"
    r"\s+be stored in KV cache \((?P<fits>\d+)\)"
)
#: V1 (vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory): "To serve at least one
#: request with the models's max seq len (118000), (6.30 GiB KV cache is needed, which is larger
#: than the available KV cache memory (6.11 GiB). Based on the available memory, the estimated
#: maximum model length is 114432. Try increasing …". "models's" was corrected to "model's" in
#: later versions; the estimate is left out when it is 0.
_KV_V1 = re.compile(
    r"To serve at least one request with the models?'s max seq len \((?P<len>\d+)\),\s*"
    r"\((?P<need>[\d.]+) GiB KV cache is needed, which is larger than the available KV cache"
    r"\s+memory \((?P<avail>[\d.]+) GiB\)\.(?:\s*Based on the available memory,\s*the estimated"
    r"\s+maximum model length is (?P<fits>\d+)\.)?"
)
#: V0 and V1: "No available memory for the cache blocks. Try increasing `gpu_memory_utilization`
#: when initializing the engine."
_NO_KV = re.compile(r"No available memory for the cache blocks")
#: V1 (vllm/v1/worker/gpu_worker.py, later vllm/utils/mem_utils.py): "Free memory on device
#: cuda:0 (15.32/22.04 GiB) on startup is less than desired GPU memory utilization (0.88, 19.39
#: GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
_FREE_MEMORY = re.compile(
    r"Free memory on device(?: \S+)? \((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup is less"
    r"\s+than desired GPU memory utilization"
)
#: PyTorch's allocator ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB.
#: GPU 0 has a total capacity of …"; torch < 2.5: torch.cuda.OutOfMemoryError), the CUDA runtime
#: ("RuntimeError: CUDA error: out of memory"), the driver API name, and NCCL's allocation
#: failure ("Cuda failure 2 'out of memory'", raised as an NCCL error but an OOM all the same).
#: Not matched: vLLM's INFO hint "If out-of-memory error occurs during cudagraph capture,
#: consider decreasing `gpu_memory_utilization` …", printed at every normal start.
_OOM = re.compile(
    r"CUDA out of memory|CUDA error: out of memory|\btorch\.(?:cuda\.)?OutOfMemoryError\b"
    r"|CUDA_ERROR_OUT_OF_MEMORY|Cuda failure 2 'out of memory'"
)

# -- NCCL ------------------------------------------------------------------------------------

#: vLLM's pynccl wrapper ("RuntimeError: NCCL error: unhandled cuda error (run with
#: NCCL_DEBUG=INFO for details)"), torch's ProcessGroupNCCL ("torch.distributed.DistBackendError:
#: NCCL error in: …/ProcessGroupNCCL.cpp:1970, unhandled system error …", then
#: "ncclSystemError: …"), and torch's collective watchdog when NCCL hangs ("Watchdog caught
#: collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE …) ran for 600000
#: milliseconds before timing out"). Not matched: ProcessGroupNCCL's "process group has NOT been
#: destroyed" warning, printed after any failure in a tensor-parallel run.
_NCCL = re.compile(
    r"\bNCCL error\b"
    r"|\bnccl(?:UnhandledCuda|System|Internal|InvalidArgument|InvalidUsage|Remote)Error\b"
    r"|Watchdog caught collective operation timeout"
)


def _hf_model(text: str) -> str | None:
    for pattern in _HF_MODEL_ID:
        m = pattern.search(text)
        if m:
            return m.group("id")
    return None


def _detect_hf(text: str) -> Diagnosis | None:
    if m := _HF_BAD_TOKEN.search(text):
        return Diagnosis(
            Kind.UNAUTHORIZED,
            _line_at(text, m.start()),
            "Hugging Face rejected the token (401 Invalid credentials): create a read token at "
            "https://huggingface.co/settings/tokens and set HF_TOKEN (or MAIDER_HF_TOKEN)",
            model=_hf_model(text),
        )
    if m := _HF_GATED.search(text):
        model = _hf_model(text)
        page = f"https://huggingface.co/{model}" if model else "the model's page on huggingface.co"
        if _HF_GATED_NOT_AUTHORIZED.search(text):
            how = f"accept its licence at {page} with the account whose token is in HF_TOKEN"
        else:
            how = f"accept its licence at {page} and set HF_TOKEN to a read token of that account"
        return Diagnosis(
            Kind.GATED,
            _line_at(text, m.start()),
            f"{model or 'the model'} is gated: {how}",
            model=model,
        )
    if m := _HF_NOT_FOUND.search(text):
        model = _hf_model(text)
        return Diagnosis(
            Kind.MODEL_NOT_FOUND,
            _line_at(text, m.start()),
            f"Hugging Face has no model {model or 'of that id'} (or it is private): check the id "
            "(maider recommend --list-models), or set HF_TOKEN to a token that can read it",
            model=model,
        )
    if m := _HF_401.search(text):
        return Diagnosis(
            Kind.UNAUTHORIZED,
            _line_at(text, m.start()),
            "Hugging Face answered 401 Unauthorized: set HF_TOKEN to a valid read token "
            "(https://huggingface.co/settings/tokens)",
            model=_hf_model(text),
        )
    return None


def _detect_bf16(text: str) -> Diagnosis | None:
    m = _BF16.search(text)
    if not m:
        return None
    gpu = m.group("gpu")
    cc = m.group("cc")
    on = f" ({gpu}, compute capability {cc})" if gpu and cc else ""
    return Diagnosis(
        Kind.BF16_UNSUPPORTED,
        _line_at(text, m.start()),
        f"this GPU cannot run bfloat16{on}; vLLM needs compute capability 8.0 for it",
    )


def _detect_tp(text: str) -> Diagnosis | None:
    if m := _TP_HEADS.search(text):
        heads, tp = int(m.group("heads")), int(m.group("tp"))
        return Diagnosis(
            Kind.TP_MISMATCH,
            _line_at(text, m.start()),
            f"the model's {heads} attention heads cannot be split across tensor_parallel_size {tp}",
            attention_heads=heads,
            tensor_parallel_size=tp,
        )
    for pattern in (_TP_WORLD, _TP_GPUS):
        if m := pattern.search(text):
            asked_tp = _int_or_none(m.group("tp"))
            gpus = _int_or_none(m.group("gpus"))
            seen = f" but vLLM sees {gpus} GPU{'s' if gpus != 1 else ''}" if gpus is not None else ""
            asked = f" {asked_tp}" if asked_tp is not None else ""
            return Diagnosis(
                Kind.TP_MISMATCH,
                _line_at(text, m.start()),
                f"tensor_parallel_size{asked} needs more GPUs than the VM has{seen}",
                tensor_parallel_size=asked_tp,
                visible_gpus=gpus,
            )
    if m := _TP_RAY.search(text):
        return Diagnosis(
            Kind.TP_MISMATCH,
            _line_at(text, m.start()),
            "tensor_parallel_size needs more GPUs than the VM has",
        )
    return None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def _detect_memory(text: str) -> Diagnosis | None:
    if m := _KV_V0.search(text):
        length, fits = int(m.group("len")), int(m.group("fits"))
        return _kv_diagnosis(text, m, length, fits)
    if m := _KV_V1.search(text):
        length = int(m.group("len"))
        if m.group("fits"):
            fits = int(m.group("fits"))
        else:
            # vLLM left its estimate out. The KV cache grows linearly with the context for
            # full-attention layers and slower for sliding-window ones, so scaling by
            # available/needed never overestimates what fits.
            need, avail = float(m.group("need")), float(m.group("avail"))
            fits = math.floor(length * avail / need) if need > 0 else 0
        return _kv_diagnosis(text, m, length, fits)
    if m := _NO_KV.search(text):
        return Diagnosis(
            Kind.NO_KV_CACHE_MEMORY,
            _line_at(text, m.start()),
            "the model's weights leave no GPU memory for the KV cache at this gpu_memory_utilization",
        )
    if m := _FREE_MEMORY.search(text):
        free, total = float(m.group("free")), float(m.group("total"))
        return Diagnosis(
            Kind.GPU_MEMORY_IN_USE,
            _line_at(text, m.start()),
            f"only {free:g} of {total:g} GiB of GPU memory was free when vLLM started "
            "(another process holds the rest)",
            free_gib=free,
            total_gib=total,
        )
    if m := _OOM.search(text):
        return Diagnosis(Kind.CUDA_OOM, _line_at(text, m.start()), "CUDA ran out of GPU memory")
    return None


def _kv_diagnosis(text: str, m: re.Match[str], length: int, fits: int) -> Diagnosis:
    return Diagnosis(
        Kind.KV_CACHE_TOO_SMALL,
        _line_at(text, m.start()),
        f"the KV cache holds {fits} tokens, fewer than max_model_len {length}",
        max_model_len=length,
        kv_cache_tokens=fits,
    )


def _detect_nccl(text: str) -> Diagnosis | None:
    m = _NCCL.search(text)
    if not m:
        return None
    return Diagnosis(
        Kind.NCCL,
        _line_at(text, m.start()),
        "NCCL (GPU-to-GPU communication for tensor parallelism) failed",
    )


#: Checked in this order; the first that matches wins. Account and configuration errors come
#: first: they are raised before any memory is allocated, and the memory or NCCL lines that can
#: follow them in the same run are consequences. The KV-cache and free-memory checks precede
#: the generic OOM patterns because they are exact. An NCCL allocation failure ("Cuda failure 2
#: 'out of memory'") is an OOM, so the OOM rule runs before the NCCL one.
_DETECTORS: tuple[Callable[[str], Diagnosis | None], ...] = (
    _detect_hf,
    _detect_bf16,
    _detect_tp,
    _detect_memory,
    _detect_nccl,
)


def diagnose(log: str) -> Diagnosis | None:
    """The reason vLLM did not start, from its service log, or None if no known cause is in it.

    ``log`` is the output of ``docker compose logs --no-color vllm`` (``vllm-1  | `` prefixes
    are removed). Only the last start of vLLM in it is considered.
    """
    text = _current_run(_strip_prefixes(log))
    for detect in _DETECTORS:
        found = detect(text)
        if found is not None:
            return found
    return None


#: The last exception line of a traceback ("ValueError: …", "torch.OutOfMemoryError: …").
_EXCEPTION_LINE = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception)\b:\s*\S")


def last_error(log: str) -> str | None:
    """The last exception line of vLLM's last start, to show when :func:`diagnose` finds no known
    cause. vLLM's closing "Engine core initialization failed. See root cause above." is skipped
    when another exception precedes it: that one is the cause."""
    text = _current_run(_strip_prefixes(log))
    found = list(_EXCEPTION_LINE.finditer(text))
    if not found:
        return None
    specific = [m for m in found if "See root cause above" not in _line_at(text, m.start())]
    return _line_at(text, (specific or found)[-1].start())


# --------------------------------------------------------------------------------------------
# Planning a fix
# --------------------------------------------------------------------------------------------


def plan_fix(
    diagnosis: Diagnosis,
    current: VLLMSettings,
    *,
    configured_utilization: float,
    gpu_count: int,
    attempt: int,
    current_env: Mapping[str, str] | None = None,
) -> Fix | None:
    """The change to try for ``diagnosis``, or None when no change can fix it.

    ``current`` is what vLLM was just started with (after earlier fixes);
    ``configured_utilization`` what the plan chose before any healing (the OOM steps count from
    it); ``gpu_count`` the GPUs on the VM; ``attempt`` this try's number, from 1;
    ``current_env`` the extra variables earlier fixes set. When the result is None,
    :func:`unhealable_reason` says why, in one line for the user.
    """
    result = _plan(diagnosis, current, configured_utilization, gpu_count, attempt, current_env or {})
    return result if isinstance(result, Fix) else None


def unhealable_reason(
    diagnosis: Diagnosis,
    current: VLLMSettings,
    *,
    configured_utilization: float,
    gpu_count: int,
    attempt: int,
    current_env: Mapping[str, str] | None = None,
) -> str | None:
    """Why :func:`plan_fix` returns None for these arguments (one line), or None if it does not."""
    result = _plan(diagnosis, current, configured_utilization, gpu_count, attempt, current_env or {})
    return result if isinstance(result, str) else None


def _plan(
    d: Diagnosis,
    current: VLLMSettings,
    configured_utilization: float,
    gpu_count: int,
    attempt: int,
    env: Mapping[str, str],
) -> Fix | str:
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if not d.healable:
        return d.summary
    if attempt > MAX_ATTEMPTS:
        return f"vLLM still fails after {MAX_ATTEMPTS} healing attempts ({d.summary})"
    if d.kind is Kind.CUDA_OOM:
        return _plan_oom(current, configured_utilization, attempt)
    if d.kind is Kind.KV_CACHE_TOO_SMALL:
        return _plan_kv(d, current)
    if d.kind is Kind.NO_KV_CACHE_MEMORY:
        return _plan_no_kv(current)
    if d.kind is Kind.GPU_MEMORY_IN_USE:
        return _plan_memory_in_use(d, current, configured_utilization)
    if d.kind is Kind.NCCL:
        return _plan_nccl(current, env)
    if d.kind is Kind.TP_MISMATCH:
        return _plan_tp(d, current, gpu_count)
    if d.kind is Kind.BF16_UNSUPPORTED:
        return _plan_bf16(current)
    raise AssertionError(f"no plan for {d.kind}")  # pragma: no cover


def _round2(value: float) -> float:
    """Two decimals, rounded down (0.85 stays 0.85 despite 0.9 - 0.05 = 0.8500000000000001)."""
    return math.floor(value * 100 + 1e-6) / 100


def _round_context_down(tokens: int) -> int:
    """A multiple of 1024 (256 below 8192 tokens), never above ``tokens``."""
    step = 1024 if tokens >= MIN_USEFUL_CONTEXT else 256
    return (tokens // step) * step


def _too_short(new_len: int, current: VLLMSettings) -> bool:
    """Below what aider can work with, when the user had asked for at least that much."""
    return new_len < MIN_USEFUL_CONTEXT <= current.max_model_len or new_len <= 0


def _plan_oom(current: VLLMSettings, configured: float, attempt: int) -> Fix | str:
    floor = min(UTILIZATION_FLOOR, configured)
    now = current.gpu_memory_utilization
    if now > floor + 1e-9:
        target = _round2(configured - UTILIZATION_STEP * attempt)
        new = max(floor, min(target, _round2(now - UTILIZATION_STEP)))
        return Fix(
            Kind.CUDA_OOM,
            replace(current, gpu_memory_utilization=new),
            description=f"lower --gpu-memory-utilization {now:g} → {new:g} "
            "(CUDA out of memory: more room outside vLLM's budget)",
        )
    # At the floor: a shorter context shrinks what profiling and the scheduler allocate.
    new_len = _round_context_down(
        max(current.max_model_len // 2, min(MIN_USEFUL_CONTEXT, current.max_model_len))
    )
    if new_len >= current.max_model_len or _too_short(new_len, current):
        return (
            f"CUDA runs out of memory even at --gpu-memory-utilization {now:g} with "
            f"--max-model-len {current.max_model_len}: choose a type with more GPU memory, or a "
            "smaller or quantized model"
        )
    return Fix(
        Kind.CUDA_OOM,
        replace(current, max_model_len=new_len),
        description=f"shorten --max-model-len {current.max_model_len} → {new_len} (CUDA out of "
        f"memory at the {now:g} utilization floor)",
    )


def _plan_kv(d: Diagnosis, current: VLLMSettings) -> Fix | str:
    fits = d.kv_cache_tokens or 0
    new_len = _round_context_down(fits)
    if _too_short(new_len, current):
        return (
            f"only {fits} tokens fit in the KV cache, too few for aider (at least "
            f"{MIN_USEFUL_CONTEXT}): choose a type with more GPU memory, or a smaller or quantized model"
        )
    if new_len >= current.max_model_len:
        return (
            f"vLLM reports a KV cache of {fits} tokens, not shorter than --max-model-len "
            f"{current.max_model_len}: nothing to shorten"
        )
    return Fix(
        Kind.KV_CACHE_TOO_SMALL,
        replace(current, max_model_len=new_len),
        description=f"shorten --max-model-len {current.max_model_len} → {new_len} (the KV cache "
        f"holds {fits} tokens)",
    )


def _plan_no_kv(current: VLLMSettings) -> Fix | str:
    now = current.gpu_memory_utilization
    if now >= UTILIZATION_CEILING - 1e-9:
        return (
            f"the model's weights fill the GPU memory even at --gpu-memory-utilization {now:g}: "
            "choose a type with more GPU memory or more GPUs, or a quantized model"
        )
    new = min(UTILIZATION_CEILING, _round2(now + UTILIZATION_STEP + 1e-9))
    return Fix(
        Kind.NO_KV_CACHE_MEMORY,
        replace(current, gpu_memory_utilization=new),
        description=f"raise --gpu-memory-utilization {now:g} → {new:g} (no memory was left for the KV cache)",
    )


def _plan_memory_in_use(d: Diagnosis, current: VLLMSettings, configured: float) -> Fix | str:
    free, total = d.free_gib or 0.0, d.total_gib or 0.0
    floor = min(UTILIZATION_FLOOR, configured)
    new = _round2(free / total - FREE_MEMORY_MARGIN) if total > 0 else 0.0
    now = current.gpu_memory_utilization
    if new < floor - 1e-9 or new >= now:
        return (
            f"another process holds GPU memory ({free:g} of {total:g} GiB free at start-up): check "
            "`nvidia-smi` on the VM, or `maider down` and start a new session"
        )
    return Fix(
        Kind.GPU_MEMORY_IN_USE,
        replace(current, gpu_memory_utilization=new),
        description=f"lower --gpu-memory-utilization {now:g} → {new:g} (only {free:g} of "
        f"{total:g} GiB was free at start-up)",
    )


def _plan_nccl(current: VLLMSettings, env: Mapping[str, str]) -> Fix | str:
    """NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1, together, once.

    - ``NCCL_P2P_DISABLE=1``: GPUs in a rented VM are passed through by the hypervisor; PCIe
      peer-to-peer often is reported but broken there (IOMMU/ACS), which makes NCCL fail or hang
      (NVIDIA/nccl#199). Disabled, NCCL copies through host shared memory instead; the compose
      file runs vLLM with ``ipc: host``, so that memory is there. Slower all-reduce, same results.
    - ``NCCL_IB_DISABLE=1``: one VM never uses InfiniBand, but some cloud VMs expose RDMA/verbs
      devices without a working fabric, and NCCL then fails in ``ibv_*`` calls. Sockets and
      shared memory are what a single node uses anyway.

    Both go in one fix because each attempt reloads the weights (minutes), and neither costs
    anything on one node that the other would spare.
    """
    if all(env.get(k) == v for k, v in NCCL_ENV.items()):
        return (
            "NCCL still fails with GPU peer-to-peer and InfiniBand disabled: choose a type whose "
            f"single GPU fits the model (tensor_parallel_size is {current.tensor_parallel_size})"
        )
    return Fix(
        Kind.NCCL,
        current,
        env=dict(NCCL_ENV),
        description="set NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1 (NCCL failed; GPUs talk "
        "through host memory instead)",
    )


def _plan_tp(d: Diagnosis, current: VLLMSettings, gpu_count: int) -> Fix | str:
    # The GPUs vLLM itself saw win over the catalog's count.
    target = d.visible_gpus if d.visible_gpus is not None else gpu_count
    heads = d.attention_heads
    if target < 1:
        return "vLLM sees no GPU on the VM: check `nvidia-smi` there, or `maider down` and retry"
    if heads is not None and heads % target != 0:
        usable = ", ".join(str(n) for n in _TP_SIZES if heads % n == 0)
        return (
            f"the model's {heads} attention heads cannot be split across the VM's {target} GPUs: "
            f"choose a type with {usable} GPUs"
        )
    if target == current.tensor_parallel_size:
        return f"vLLM rejects tensor_parallel_size {target} on this VM's {target} GPUs: {d.summary}"
    return Fix(
        Kind.TP_MISMATCH,
        replace(current, tensor_parallel_size=target),
        description=f"set --tensor-parallel-size {current.tensor_parallel_size} → {target} "
        f"(the VM has {target} GPU{'s' if target != 1 else ''})",
    )


def _plan_bf16(current: VLLMSettings) -> Fix | str:
    if current.dtype == "float16":
        return f"vLLM still asks for bfloat16 with --dtype float16: {current.model} cannot run on this GPU"
    return Fix(
        Kind.BF16_UNSUPPORTED,
        replace(current, dtype="float16"),
        description="set --dtype float16 (this GPU has no bfloat16; a few bf16-trained models "
        "lose accuracy in float16)",
    )
