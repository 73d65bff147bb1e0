"""Diagnosis of vLLM start-up failures from its own log, and the fixes planned for them.

The logs are shaped like ``docker compose logs --no-color vllm`` output: the ``vllm-1  | ``
prefix, INFO lines around the failure, the traceback, and what vLLM prints after it. The error
texts are vLLM's, PyTorch's, NCCL's and huggingface_hub's own (see maider/ops/heal.py for where
each comes from).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from maider.ops import heal
from maider.ops.heal import (
    MAX_ATTEMPTS,
    Diagnosis,
    Fix,
    HealAttempt,
    Kind,
    Outcome,
    diagnose,
    last_error,
    plan_fix,
    unhealable_reason,
)
from maider.sizing import VLLMSettings


def compose(*lines: str, prefix: str = "vllm-1  | ") -> str:
    return "\n".join(prefix + line for line in lines) + "\n"


BANNER = [
    "INFO 07-11 06:20:01 [__init__.py:244] Automatically detected platform cuda.",
    "INFO 07-11 06:20:04 [api_server.py:1395] vLLM API server version 0.9.2",
    "INFO 07-11 06:20:04 [cli_args.py:325] non-default args: {'model': 'Qwen/Qwen2.5-Coder-32B-Instruct-AWQ', "
    "'max_model_len': 32768, 'served_model_name': ['coder'], 'gpu_memory_utilization': 0.9, 'max_num_seqs': 8}",
    "INFO 07-11 06:20:12 [config.py:1472] Using max model len 32768",
    "INFO 07-11 06:20:14 [core.py:526] Waiting for init message from front-end.",
]

#: A normal start: the CUDA-graph hint mentions out-of-memory errors and must not be diagnosed.
HEALTHY = compose(
    *BANNER,
    "INFO 07-11 06:22:42 [gpu_model_runner.py:1801] Model loading took 18.1425 GiB and 139.9 seconds",
    "INFO 07-11 06:23:01 [gpu_worker.py:232] Available KV cache memory: 9.42 GiB",
    "INFO 07-11 06:23:01 [kv_cache_utils.py:716] GPU KV cache size: 38,576 tokens",
    "INFO 07-11 06:23:01 [kv_cache_utils.py:720] Maximum concurrency for 32,768 tokens per request: 1.18x",
    "INFO 07-11 06:23:02 [model_runner.py:1530] Capturing cudagraphs for decoding. This may lead to "
    "unexpected consequences if the model is not static. To run the model in eager mode, set "
    "'enforce_eager=True' or use '--enforce-eager' in the CLI. If out-of-memory error occurs during "
    "cudagraph capture, consider decreasing `gpu_memory_utilization` or switching to eager mode. You "
    "can also reduce the `max_num_seqs` as needed to decrease memory usage.",
    "INFO 07-11 06:23:20 [gpu_model_runner.py:2326] Graph capturing finished in 18 secs, took 0.45 GiB",
    "INFO 07-11 06:23:21 [api_server.py:1457] Starting vLLM API server 0 on http://0.0.0.0:8000",
    "INFO:     Started server process [1]",
    "INFO:     Application startup complete.",
    'INFO:     127.0.0.1:51514 - "GET /health HTTP/1.1" 200 OK',
    # A client with a wrong vLLM API key: uvicorn's access log, not a Hugging Face 401.
    'INFO:     127.0.0.1:51520 - "POST /v1/completions HTTP/1.1" 401 Unauthorized',
)

ENGINE_TRACEBACK = [
    "ERROR 07-11 06:23:01 [core.py:586] EngineCore failed to start.",
    "ERROR 07-11 06:23:01 [core.py:586] Traceback (most recent call last):",
    'ERROR 07-11 06:23:01 [core.py:586]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py",'
    " line 577, in run_engine_core",
    "ERROR 07-11 06:23:01 [core.py:586]     engine_core = EngineCoreProc(*args, **kwargs)",
    'ERROR 07-11 06:23:01 [core.py:586]   File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py",'
    " line 162, in _initialize_kv_caches",
    "ERROR 07-11 06:23:01 [core.py:586]     kv_cache_configs = [",
]

AFTER_FAILURE = [
    "Process EngineCore_0:",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap',
    "    self.run()",
    "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    "[rank0]:[W711 06:23:02.912382100 ProcessGroupNCCL.cpp:1250] Warning: WARNING: process group has NOT been "
    "destroyed before we destruct ProcessGroupNCCL. On normal program exit, the application should call "
    "destroy_process_group to ensure that any pending NCCL operations have finished in this process.",
]

KV_V1 = compose(
    *BANNER,
    "INFO 07-11 06:22:42 [gpu_model_runner.py:1801] Model loading took 18.1425 GiB and 139.9 seconds",
    "INFO 07-11 06:23:01 [gpu_worker.py:232] Available KV cache memory: 6.41 GiB",
    *ENGINE_TRACEBACK,
    "ERROR 07-11 06:23:01 [core.py:586] ValueError: To serve at least one request with the models's max seq "
    "len (32768), (8.00 GiB KV cache is needed, which is larger than the available KV cache memory (6.41 GiB). "
    "Based on the available memory, the estimated maximum model length is 26240. Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
    *AFTER_FAILURE,
)

KV_V0 = compose(
    "INFO 09-10 10:01:02 api_server.py:495] vLLM API server version 0.6.0",
    "INFO 09-10 10:03:11 model_runner.py:1025] Loading model weights took 14.9888 GB",
    "INFO 09-10 10:03:14 gpu_executor.py:122] # GPU blocks: 1640, # CPU blocks: 4096",
    "Process SpawnProcess-1:",
    "Traceback (most recent call last):",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/worker/worker.py", line 522, in raise_if_cache_size_invalid',
    "    raise ValueError(",
    "ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be "
    "stored in KV cache (26240). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
    "initializing the engine.",
)

TORCH_OOM = compose(
    *BANNER,
    "INFO 07-11 06:22:42 [gpu_model_runner.py:1801] Model loading took 20.9 GiB and 139.9 seconds",
    *ENGINE_TRACEBACK,
    'ERROR 07-11 06:23:01 [core.py:586]   File "/usr/local/lib/python3.12/dist-packages/torch/nn/functional.py",'
    " line 1702, in silu",
    "ERROR 07-11 06:23:01 [core.py:586] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. "
    "GPU 0 has a total capacity of 22.04 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process "
    "has 21.01 GiB memory in use. Of the allocated memory 20.11 GiB is allocated by PyTorch, and 455.70 MiB is "
    "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.",
    *AFTER_FAILURE,
)

CUDA_RUNTIME_OOM = compose(
    *BANNER,
    "(VllmWorker rank=0 pid=412) ERROR 07-11 06:23:09 [multiproc_executor.py:470] WorkerProc hit an exception.",
    "(VllmWorker rank=0 pid=412) ERROR 07-11 06:23:09 [multiproc_executor.py:470] RuntimeError: CUDA error: "
    "out of memory",
    "(VllmWorker rank=0 pid=412) ERROR 07-11 06:23:09 [multiproc_executor.py:470] CUDA kernel errors might be "
    "asynchronously reported at some other API call, so the stacktrace below might be incorrect.",
)

NCCL_P2P = compose(
    *BANNER,
    "(VllmWorker rank=1 pid=283) INFO 03-10 11:02:03 [pynccl.py:69] vLLM is using nccl==2.21.5",
    "(VllmWorker rank=1 pid=283) ERROR 03-10 11:02:05 [multiproc_executor.py:470] WorkerProc failed to start.",
    "(VllmWorker rank=1 pid=283) ERROR 03-10 11:02:05 [multiproc_executor.py:470] Traceback (most recent call last):",
    '(VllmWorker rank=1 pid=283) ERROR 03-10 11:02:05 [multiproc_executor.py:470]   File "/usr/local/lib/'
    'python3.12/dist-packages/vllm/distributed/device_communicators/pynccl_wrapper.py", line 256, in NCCL_CHECK',
    '(VllmWorker rank=1 pid=283) ERROR 03-10 11:02:05 [multiproc_executor.py:470]     raise RuntimeError(f"NCCL '
    'error: {error_str}")',
    "(VllmWorker rank=1 pid=283) ERROR 03-10 11:02:05 [multiproc_executor.py:470] RuntimeError: NCCL error: "
    "unhandled system error (run with NCCL_DEBUG=INFO for details)",
)

NCCL_TORCH = compose(
    *BANNER,
    "[rank1]: torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
    "ProcessGroupNCCL.cpp:1970, unhandled cuda error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5",
    "[rank1]: ncclUnhandledCudaError: Call to CUDA function failed.",
    "[rank1]: Last error:",
    "[rank1]: Cuda failure 'peer access is not supported between these two devices'",
)

NCCL_OOM = compose(
    *BANNER,
    "torch.distributed.DistBackendError: NCCL error in: .../ProcessGroupNCCL.cpp:3699, unhandled cuda error, "
    "NCCL version 2.27.3",
    "ncclUnhandledCudaError: Call to CUDA function failed.",
    "Last error:",
    "Cuda failure 2 'out of memory'",
)

NCCL_TIMEOUT = compose(
    *BANNER,
    "[rank0]:[E311 09:12:44.123 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds "
    "before timing out.",
)

TP_HEADS = compose(
    "INFO 07-11 06:20:04 [api_server.py:1395] vLLM API server version 0.9.2",
    "Traceback (most recent call last):",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/config.py", line 1089, in verify_with_parallel_config',
    "    raise ValueError(",
    "ValueError: Total number of attention heads (40) must be divisible by tensor parallel size (3).",
)

TP_WORLD = compose(
    "(APIServer pid=1) INFO 10-02 08:00:01 [api_server.py:1896] vLLM API server version 0.11.0",
    "(APIServer pid=1) pydantic_core._pydantic_core.ValidationError: 1 validation error for ParallelConfig",
    "(APIServer pid=1)   Value error, World size (2) is larger than the number of available GPUs (1) in this "
    "node. If this is intentional and you are using:",
    "(APIServer pid=1) - ray, set '--distributed-executor-backend ray'.",
    "(APIServer pid=1) - multiprocessing, set '--nnodes' appropriately. [type=value_error, input_value=ArgsKwargs"
    "((), {'tensor_parallel_size': 2}), input_type=ArgsKwargs]",
)

TP_MP = compose(
    "INFO 02-01 12:00:00 api_server.py:620] vLLM API server version 0.7.0",
    "AssertionError: please set tensor_parallel_size (4) to less than max local gpu count (2)",
)

TP_RAY_WARNING_ONLY = compose(
    *BANNER,
    "WARNING 02-01 12:00:10 ray_utils.py:220] The number of required GPUs exceeds the total number of available "
    "GPUs in the placement group.",
    "INFO 02-01 12:00:20 ray_utils.py:230] Waiting for creating a placement group of specs for 10 seconds.",
)

BF16 = compose(
    *BANNER,
    *ENGINE_TRACEBACK,
    "ERROR 07-11 06:23:01 [core.py:586] ValueError: Bfloat16 is only supported on GPUs with compute capability "
    "of at least 8.0. Your Tesla T4 GPU has compute capability 7.5. You can use float16 instead by explicitly "
    "setting the`dtype` flag in CLI, for example: --dtype=half.",
)

GATED_NO_TOKEN = compose(
    *BANNER,
    "Traceback (most recent call last):",
    '  File "/usr/local/lib/python3.12/dist-packages/huggingface_hub/utils/_http.py", line 406, in hf_raise_for_status',
    "    response.raise_for_status()",
    "requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: "
    "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json",
    "",
    "The above exception was the direct cause of the following exception:",
    "",
    "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-66e0a1b2-0c1d2e3f4a5b6c7d8e9f0a1b)",
    "",
    "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.",
    "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it and be "
    "authenticated to access it. Please log in.",
)

GATED_NOT_ACCEPTED = compose(
    *BANNER,
    "OSError: You are trying to access a gated repo.",
    "Make sure to have access to it at https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1.",
    "403 Client Error. (Request ID: Root=1-688b505e-01cc67f573bc583469af8f8e)",
    "",
    "Cannot access gated repo for url https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1/resolve/main/"
    "config.json.",
    "Access to model mistralai/Mistral-7B-Instruct-v0.1 is restricted and you are not in the authorized list. "
    "Visit https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1 to ask for access.",
)

NOT_FOUND = compose(
    *BANNER,
    "Traceback (most recent call last):",
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/transformers_utils/config.py", line 306, in get_config',
    "    raise ValueError(error_message) from e",
    "ValueError: Invalid repository ID or local directory specified: 'Qwen/Qwen2.5-Coder-7B-Instruc'.",
    "Please verify the following requirements:",
    "1. Provide a valid Hugging Face repository ID.",
    "2. Specify a local directory that contains a recognized configuration file.",
    "   - For Hugging Face models: ensure the presence of a 'config.json'.",
)

NOT_FOUND_HUB = compose(
    *BANNER,
    "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-68dc0000-1234567890abcdef)",
    "",
    "Repository Not Found for url: https://huggingface.co/api/models/Qwen/Qwen3-Coder-14B-Instruct/revision/main.",
    "Please make sure you specified the correct `repo_id` and `repo_type`.",
    "If you are trying to access a private or gated repo, make sure you are authenticated.",
    "Invalid username or password.",
)

BAD_TOKEN = compose(
    *BANNER,
    "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-68dc0000-abcdef)",
    "",
    "Repository Not Found for url: https://huggingface.co/api/models/Qwen/Qwen2.5-Coder-7B-Instruct/revision/main.",
    "Please make sure you specified the correct `repo_id` and `repo_type`.",
    "If you are trying to access a private or gated repo, make sure you are authenticated.",
    "Invalid credentials in Authorization header",
)

FREE_MEMORY = compose(
    *BANNER,
    "(EngineCore_DP0 pid=268) ERROR 10-21 00:35:03 [core.py:708] ValueError: Free memory on device cuda:0 "
    "(19.5/22.04 GiB) on startup is less than desired GPU memory utilization (0.9, 19.84 GiB). Decrease GPU memory "
    "utilization or reduce GPU memory used by other processes.",
)

NO_KV = compose(
    "INFO 09-10 10:01:02 api_server.py:495] vLLM API server version 0.6.0",
    "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
    "initializing the engine.",
)


def settings(**kw: object) -> VLLMSettings:
    base = VLLMSettings(
        model="Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        served_model_name="coder",
        max_model_len=32768,
        gpu_memory_utilization=0.9,
        quantization="awq",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def fix_for(
    d: Diagnosis, current: VLLMSettings, *, configured: float = 0.9, gpus: int = 1, attempt: int = 1
) -> Fix:
    fix = plan_fix(d, current, configured_utilization=configured, gpu_count=gpus, attempt=attempt)
    assert fix is not None, unhealable_reason(
        d, current, configured_utilization=configured, gpu_count=gpus, attempt=attempt
    )
    return fix


def reason_for(
    d: Diagnosis, current: VLLMSettings, *, configured: float = 0.9, gpus: int = 1, attempt: int = 1
) -> str:
    kw = {"configured_utilization": configured, "gpu_count": gpus, "attempt": attempt}
    assert plan_fix(d, current, **kw) is None  # type: ignore[arg-type]
    reason = unhealable_reason(d, current, **kw)  # type: ignore[arg-type]
    assert reason
    return reason


def must(log: str) -> Diagnosis:
    d = diagnose(log)
    assert d is not None
    return d


# --------------------------------------------------------------------------------------------
# diagnose
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "kind"),
    [
        (KV_V1, Kind.KV_CACHE_TOO_SMALL),
        (KV_V0, Kind.KV_CACHE_TOO_SMALL),
        (TORCH_OOM, Kind.CUDA_OOM),
        (CUDA_RUNTIME_OOM, Kind.CUDA_OOM),
        (NCCL_OOM, Kind.CUDA_OOM),
        (NCCL_P2P, Kind.NCCL),
        (NCCL_TORCH, Kind.NCCL),
        (NCCL_TIMEOUT, Kind.NCCL),
        (TP_HEADS, Kind.TP_MISMATCH),
        (TP_WORLD, Kind.TP_MISMATCH),
        (TP_MP, Kind.TP_MISMATCH),
        (BF16, Kind.BF16_UNSUPPORTED),
        (GATED_NO_TOKEN, Kind.GATED),
        (GATED_NOT_ACCEPTED, Kind.GATED),
        (NOT_FOUND, Kind.MODEL_NOT_FOUND),
        (NOT_FOUND_HUB, Kind.MODEL_NOT_FOUND),
        (BAD_TOKEN, Kind.UNAUTHORIZED),
        (FREE_MEMORY, Kind.GPU_MEMORY_IN_USE),
        (NO_KV, Kind.NO_KV_CACHE_MEMORY),
    ],
)
def test_each_failure_is_recognised(log: str, kind: Kind) -> None:
    d = must(log)
    assert d.kind is kind
    assert d.evidence and "vllm-1  |" not in d.evidence
    assert d.summary


@pytest.mark.parametrize(
    "log",
    [
        HEALTHY,
        TP_RAY_WARNING_ONLY,
        "",
        # Words that contain "oom" or talk about memory without an error.
        compose(
            *BANNER,
            "INFO 07-11 06:20:05 [config.py:1200] Resolved architecture: BloomForCausalLM (bigscience/bloomz-7b1)",
            "INFO 07-11 06:20:05 [config.py:1201] Plenty of room in the KV cache; zoom level irrelevant.",
            "WARNING 07-11 06:20:06 [utils.py:10] Possibly OOM-prone setting: consider --enforce-eager.",
            "INFO 07-11 06:20:06 [gpu_worker.py:232] Memory profiling takes 4.12 seconds",
        ),
        # The ProcessGroupNCCL shutdown warning on its own is not an NCCL failure.
        compose(*BANNER, AFTER_FAILURE[-1]),
    ],
)
def test_healthy_or_harmless_logs_are_not_diagnosed(log: str) -> None:
    assert diagnose(log) is None


def test_kv_figures_are_captured_in_both_versions() -> None:
    for log in (KV_V1, KV_V0):
        d = must(log)
        assert (d.max_model_len, d.kv_cache_tokens) == (32768, 26240)
        assert "ValueError" in d.evidence


def test_kv_v1_without_estimate_is_scaled_down_from_the_gib_figures() -> None:
    log = compose(
        *BANNER,
        "ERROR 07-11 06:23:01 [core.py:586] ValueError: To serve at least one request with the model's max seq "
        "len (32768), (8.00 GiB KV cache is needed, which is larger than the available KV cache memory (6.00 GiB). "
        "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. See "
        "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.",
    )
    d = must(log)
    assert d.kind is Kind.KV_CACHE_TOO_SMALL
    assert d.kv_cache_tokens == 24576  # 32768 × 6 / 8


def test_only_the_last_start_counts() -> None:
    # An OOM in an earlier run, then a restart that failed on the KV cache: the KV cache it is.
    assert must(TORCH_OOM + KV_V1).kind is Kind.KV_CACHE_TOO_SMALL
    # An earlier failure followed by a clean start: nothing to heal.
    assert diagnose(TORCH_OOM + HEALTHY) is None


def test_prefixes_and_line_endings_of_compose_versions() -> None:
    old_compose = compose(
        *BANNER, "ValueError: No available memory for the cache blocks.", prefix="maider-vllm-1  | "
    )
    assert must(old_compose.replace("\n", "\r\n")).kind is Kind.NO_KV_CACHE_MEMORY
    bare = "\n".join([*BANNER, "RuntimeError: CUDA error: out of memory"])
    assert must(bare).kind is Kind.CUDA_OOM


def test_hf_model_id_and_remedies() -> None:
    gated = must(GATED_NO_TOKEN)
    assert gated.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert "HF_TOKEN" in gated.summary and "licence" in gated.summary
    assert "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct" in gated.summary

    not_accepted = must(GATED_NOT_ACCEPTED)
    assert not_accepted.model == "mistralai/Mistral-7B-Instruct-v0.1"
    assert "accept its licence" in not_accepted.summary

    missing = must(NOT_FOUND)
    assert missing.model == "Qwen/Qwen2.5-Coder-7B-Instruc"
    assert "check the id" in missing.summary
    assert must(NOT_FOUND_HUB).model == "Qwen/Qwen3-Coder-14B-Instruct"

    bad = must(BAD_TOKEN)
    assert "HF_TOKEN" in bad.summary and "settings/tokens" in bad.summary


def test_tp_figures() -> None:
    heads = must(TP_HEADS)
    assert (heads.attention_heads, heads.tensor_parallel_size) == (40, 3)
    world = must(TP_WORLD)
    assert (world.tensor_parallel_size, world.visible_gpus) == (2, 1)
    mp = must(TP_MP)
    assert (mp.tensor_parallel_size, mp.visible_gpus) == (4, 2)


def test_bf16_names_the_gpu() -> None:
    assert "Tesla T4" in must(BF16).summary and "7.5" in must(BF16).summary


def test_long_evidence_is_truncated() -> None:
    d = must(TORCH_OOM)
    assert len(d.evidence) <= 300
    assert d.evidence.endswith("…")


def test_last_error_for_unknown_failures() -> None:
    unknown = compose(
        *BANNER,
        *ENGINE_TRACEBACK,
        "ERROR 07-11 06:23:01 [core.py:586] KeyError: 'model.layers.0.mlp.experts.w13_weight'",
        *AFTER_FAILURE,
    )
    assert diagnose(unknown) is None
    line = last_error(unknown)
    assert line is not None and line.endswith("KeyError: 'model.layers.0.mlp.experts.w13_weight'")
    only_generic = compose(*BANNER, AFTER_FAILURE[-2])
    assert (last_error(only_generic) or "").startswith("RuntimeError: Engine core initialization failed")
    assert last_error(HEALTHY) is None
    assert "ValueError: To serve" in (last_error(KV_V1) or "")


# --------------------------------------------------------------------------------------------
# plan_fix
# --------------------------------------------------------------------------------------------


def test_oom_lowers_utilization_stepwise_from_the_configured_value() -> None:
    d = must(TORCH_OOM)
    current = settings()
    seen = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        fix = fix_for(d, current, attempt=attempt)
        assert fix.kind is Kind.CUDA_OOM and not fix.env
        current = fix.settings
        seen.append(current.gpu_memory_utilization)
    assert seen == [0.85, 0.8, 0.75]
    assert current.max_model_len == 32768
    assert current.model == "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ" and current.served_model_name == "coder"


def test_oom_counts_from_the_configured_utilization_not_from_090() -> None:
    fix = fix_for(must(TORCH_OOM), settings(gpu_memory_utilization=0.8), configured=0.8)
    assert fix.settings.gpu_memory_utilization == 0.75
    assert "0.8 → 0.75" in fix.description


def test_oom_at_the_floor_shortens_the_context() -> None:
    d = must(TORCH_OOM)
    first = fix_for(d, settings(gpu_memory_utilization=0.72), configured=0.72)
    assert first.settings.gpu_memory_utilization == 0.70
    second = fix_for(d, first.settings, configured=0.72, attempt=2)
    assert second.settings.gpu_memory_utilization == 0.70
    assert second.settings.max_model_len == 16384
    assert "--max-model-len 32768 → 16384" in second.description


def test_oom_at_the_floor_never_goes_below_a_useful_context() -> None:
    d = must(TORCH_OOM)
    fix = fix_for(d, settings(gpu_memory_utilization=0.7, max_model_len=12288), configured=0.7)
    assert fix.settings.max_model_len == 8192
    reason = reason_for(d, settings(gpu_memory_utilization=0.7, max_model_len=8192), configured=0.7)
    assert "more GPU memory" in reason


def test_kv_cache_sets_the_context_to_what_fits_never_above() -> None:
    fix = fix_for(must(KV_V1), settings())
    assert fix.settings.max_model_len == 25600  # 26240 rounded down to 1024
    assert fix.settings.max_model_len <= 26240
    assert fix.settings.gpu_memory_utilization == 0.9
    small = replace(must(KV_V1), kv_cache_tokens=5000, max_model_len=6000)
    fix = fix_for(small, settings(max_model_len=6000))
    assert fix.settings.max_model_len == 4864  # a multiple of 256 below 8192


def test_kv_cache_too_small_for_aider_is_not_healed() -> None:
    d = replace(must(KV_V1), kv_cache_tokens=7000)
    assert "too few for aider" in reason_for(d, settings())
    same = replace(must(KV_V1), kv_cache_tokens=40000)
    assert "nothing to shorten" in reason_for(same, settings())


def test_no_kv_memory_raises_utilization_up_to_a_ceiling() -> None:
    d = must(NO_KV)
    fix = fix_for(d, settings())
    assert fix.settings.gpu_memory_utilization == 0.95
    assert "quantized" in reason_for(d, fix.settings)


def test_gpu_memory_in_use_fits_utilization_under_what_was_free() -> None:
    d = must(FREE_MEMORY)
    assert (d.free_gib, d.total_gib) == (19.5, 22.04)
    fix = fix_for(d, settings())
    assert fix.settings.gpu_memory_utilization == 0.86  # 19.5 / 22.04 = 0.885, minus 0.02
    busy = replace(d, free_gib=7.34, total_gib=15.49)
    assert "nvidia-smi" in reason_for(busy, settings())


def test_nccl_disables_p2p_and_infiniband_once() -> None:
    d = must(NCCL_P2P)
    fix = fix_for(d, settings(tensor_parallel_size=2), gpus=2)
    assert dict(fix.env) == {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    assert fix.settings == settings(tensor_parallel_size=2)
    again = plan_fix(
        d, fix.settings, configured_utilization=0.9, gpu_count=2, attempt=2, current_env=dict(fix.env)
    )
    assert again is None
    reason = unhealable_reason(
        d, fix.settings, configured_utilization=0.9, gpu_count=2, attempt=2, current_env=dict(fix.env)
    )
    assert reason and "single GPU" in reason


def test_tp_follows_the_gpus_when_they_divide_the_heads() -> None:
    d = must(TP_HEADS)
    fix = fix_for(d, settings(tensor_parallel_size=3), gpus=4)
    assert fix.settings.tensor_parallel_size == 4
    reason = reason_for(d, settings(tensor_parallel_size=3), gpus=3)
    assert "40 attention heads" in reason and "1, 2, 4, 8 GPUs" in reason


def test_tp_uses_the_gpu_count_vllm_saw() -> None:
    fix = fix_for(must(TP_WORLD), settings(tensor_parallel_size=2), gpus=2)
    assert fix.settings.tensor_parallel_size == 1
    fix = fix_for(must(TP_MP), settings(tensor_parallel_size=4), gpus=4)
    assert fix.settings.tensor_parallel_size == 2
    # Nothing to change when TP already equals what vLLM sees.
    assert "rejects" in reason_for(must(TP_MP), settings(tensor_parallel_size=2), gpus=2)


def test_bf16_switches_to_float16_once() -> None:
    fix = fix_for(must(BF16), settings())
    assert fix.settings.dtype == "float16"
    assert "--dtype float16" in fix.description
    assert reason_for(must(BF16), fix.settings)


@pytest.mark.parametrize(
    ("log", "words"),
    [
        (GATED_NO_TOKEN, ("licence", "HF_TOKEN")),
        (NOT_FOUND, ("check the id",)),
        (BAD_TOKEN, ("HF_TOKEN",)),
    ],
)
def test_account_problems_are_not_healable(log: str, words: tuple[str, ...]) -> None:
    d = must(log)
    assert not d.healable
    reason = reason_for(d, settings())
    assert all(w in reason for w in words)


def test_attempts_are_bounded() -> None:
    d = must(TORCH_OOM)
    assert "after 3 healing attempts" in reason_for(d, settings(), attempt=MAX_ATTEMPTS + 1)
    with pytest.raises(ValueError, match="attempt"):
        plan_fix(d, settings(), configured_utilization=0.9, gpu_count=1, attempt=0)


def test_heal_attempt_round_trips_through_json() -> None:
    d = must(TORCH_OOM)
    fix = fix_for(d, settings())
    record = HealAttempt(1, d.kind, fix.description, Outcome.PENDING, d.summary)
    done = record.with_outcome(Outcome.HEALED)
    data = json.loads(json.dumps(done.to_dict()))
    assert data["kind"] == "cuda_oom" and data["outcome"] == "healed"
    assert HealAttempt.from_dict(data) == done
    refused = HealAttempt(1, Kind.GATED, None, Outcome.NOT_HEALABLE, "gated")
    assert HealAttempt.from_dict(refused.to_dict()) == refused


def test_import_is_light() -> None:
    code = (
        "import sys, maider.ops.heal, maider.ops.metrics, maider.ops.benchdb, maider.ops.watchdog_policy, "
        "maider.ops.prompts\n"
        "heavy = [m for m in ('pydantic', 'pydantic_settings', 'typer', 'rich', 'huggingface_hub', 'tenacity', "
        "'linode_api4', 'digitalocean', 'scaleway', 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_module_constants() -> None:
    assert heal.MAX_ATTEMPTS == 3
    assert {Kind.MODEL_NOT_FOUND, Kind.GATED, Kind.UNAUTHORIZED} == heal.NOT_HEALABLE
