"""Does model M with context C fit on GPU VM type T, and with which vLLM settings?

Pure functions, no I/O. The estimate mirrors how vLLM itself budgets memory at start-up: on each
GPU it may use ``gpu_memory_utilization × total memory``; from that it subtracts the weights (split
across GPUs by tensor parallelism) and what profiling measures (CUDA context, activations, CUDA
graphs); what is left becomes the KV-cache pool, and vLLM refuses to start unless one sequence of
``max_model_len`` tokens fits in that pool. Concurrent requests share the pool, so maider requires
exactly that (one full-length sequence) and reports how many full-length sequences fit: aider and
Open WebUI rarely send several long prompts at once, and vLLM queues requests rather than failing
when the pool is full.

Memory figures are in GiB (2**30 bytes), per GPU, because that is what vLLM logs and what
``nvidia-smi`` shows. Vendor "GB" figures for GPU memory are binary in practice (an "80 GB" H100
has 80 GiB of HBM) and are converted with :func:`visible_vram_gib`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from maider.models import ModelSpec, unquantized_sibling
from maider.provider import GPUModel, VMType

GIB = 1024**3
GB = 1000**3

# --------------------------------------------------------------------------------------------
# Constants (all per GPU unless stated). Each is a judgement call; the reasons are given so they
# can be revisited against real vLLM logs ("Model loading took X GiB", "Available KV cache
# memory: Y GiB").
# --------------------------------------------------------------------------------------------

#: vLLM's own default: leaves 10% for the allocator, NCCL and anything profiling misses.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90

#: Concurrent requests vLLM schedules. One aider session sends one main request at a time plus
#: short side requests (commit messages, chat summaries with the weak model), and Open WebUI
#: fires title/tag/follow-up generation next to a chat: 8 covers both with room to spare. It
#: reserves no memory (sequences share the KV pool) and keeps CUDA-graph capture small, unlike
#: vLLM's default of 256+ meant for serving many users.
DEFAULT_MAX_NUM_SEQS = 8

#: Context chosen when none is given, if memory and the model allow: enough for aider's repo map
#: plus several files, and the native limit of many models (Qwen2.5-Coder). Larger contexts cost
#: KV memory and prefill time; ask for them explicitly.
DEFAULT_CONTEXT_CAP = 32768

#: Below this an automatically chosen context is useless for aider (repo map + files + chat), so
#: a type that only fits less is reported as not fitting.
MIN_USEFUL_CONTEXT = 8192

#: Automatically chosen contexts are rounded down to a multiple of this.
CONTEXT_ROUNDING = 1024

#: CUDA context, cuBLAS/cuDNN workspaces and allocator slack outside PyTorch: ~0.5 GiB measured.
CUDA_CONTEXT_GIB = 0.6
#: CUDA graphs captured for decode batch sizes up to max_num_seqs: 0.2-0.5 GiB with few sequences.
CUDA_GRAPHS_GIB = 0.4
#: NCCL buffers and vLLM's custom all-reduce workspace, only with tensor parallelism.
TP_COMM_GIB = 0.25
#: Peak activations while profiling a full prefill chunk: grows with the hidden size (1-1.5 GiB
#: for 5120-8192-wide models in vLLM's logs).
ACTIVATION_BASE_GIB = 0.5
ACTIVATION_GIB_PER_1K_HIDDEN = 0.1
#: Hidden size assumed when a model does not state it.
DEFAULT_HIDDEN_SIZE = 4096

#: A sliding-window layer caches at most its window plus one prefill chunk per sequence (vLLM
#: frees older blocks). 8192 is vLLM's largest default chunk (max_num_batched_tokens).
SLIDING_WINDOW_SLACK_TOKENS = 8192

#: Fraction of the vendor's memory figure the driver reports as total memory (what
#: gpu_memory_utilization multiplies). HBM parts (H100, H200, A100, MI300) report ~99.5%;
#: data-centre GDDR parts with ECC on (L4, L40S, A10, A40, T4) lose 1/16 to ECC (46068 MiB on a
#: "48 GB" L40S); workstation cards (RTX Ada, Quadro) report ~98-100%.
HBM_VISIBLE_FRACTION = 0.99
ECC_GDDR_VISIBLE_FRACTION = 15 / 16
OTHER_VISIBLE_FRACTION = 0.98

_HBM_NAMES = re.compile(r"\b(H100|H200|H800|GH200|B100|B200|GB200|A100|A800|A30)\b", re.IGNORECASE)
_ECC_GDDR_NAMES = re.compile(r"\b(L4|L40S?|L20|A10G?|A16|A40|A2|T4)\b", re.IGNORECASE)

#: Tensor-parallel sizes that VM types come with (and vLLM handles well).
_COMMON_GPU_COUNTS = (1, 2, 4, 8)

VALID_DTYPES = ("auto", "bfloat16", "float16")
VALID_KV_CACHE_DTYPES = ("auto", "fp8")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLLMSettings:
    """The vLLM server settings maider starts the model with."""

    model: str
    served_model_name: str | None = None
    tensor_parallel_size: int = 1
    max_model_len: int = DEFAULT_CONTEXT_CAP
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    dtype: str = "auto"  # "auto" | "bfloat16" | "float16"
    kv_cache_dtype: str = "auto"  # "auto" | "fp8"
    #: The model's quantization, for display. Not passed to vLLM: vLLM reads it from config.json
    #: and picks the fastest kernel (awq_marlin over awq); forcing ``--quantization awq`` would
    #: select the slow kernel.
    quantization: str | None = None
    #: Shard MoE experts instead of splitting each expert (needed when an expert's width divided
    #: by the TP size breaks the FP8 block size, e.g. Qwen3-Coder-480B-FP8 on 8 GPUs).
    enable_expert_parallel: bool = False
    trust_remote_code: bool = False
    #: Set by the caller to enable OpenAI tool calling (the model's ``tool_call_parser``); off by
    #: default because aider does not use it and an unknown parser name stops vLLM from starting.
    tool_call_parser: str | None = None
    extra_args: tuple[str, ...] = ()

    def to_args(self) -> list[str]:
        """The vLLM flags that follow ``vllm serve <model>``.

        The model itself is not included: ``vllm serve`` takes it as its positional argument and
        rejects a ``--model`` flag next to it.
        """
        args: list[str] = []
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        args += [
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
            "--max-num-seqs",
            str(self.max_num_seqs),
        ]
        if self.dtype != "auto":
            args += ["--dtype", self.dtype]
        if self.kv_cache_dtype != "auto":
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.enable_expert_parallel:
            args.append("--enable-expert-parallel")
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        if self.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        args += list(self.extra_args)
        return args


@dataclass(frozen=True)
class FitEstimate:
    """Whether a model fits a VM type, the memory budget behind the answer, and the settings.

    All ``*_gib`` figures are per GPU. ``problems`` make ``fits`` False; each is one line saying
    what is wrong and how to fix it. ``warnings`` do not block but should be shown (dtype
    fallbacks, ROCm, the context chosen for you); ``notes`` are background (how many full-length
    sequences fit, expert parallelism).
    """

    model: ModelSpec
    vm_type: VMType
    fits: bool
    settings: VLLMSettings
    tensor_parallel_size: int
    max_model_len: int
    weights_gib: float
    kv_cache_gib: float  # one sequence of max_model_len tokens
    overhead_gib: float
    total_needed_gib: float  # weights + overhead + kv_cache
    usable_gib: float  # gpu_memory_utilization × memory the driver reports
    headroom_gib: float  # usable - total_needed: room for more sequences and prefix cache
    kv_pool_gib: float  # usable - weights - overhead: the whole KV pool vLLM will allocate
    #: Largest max_model_len that fits with everything else unchanged (capped at the model's max).
    max_context_fit: int
    #: How many sequences of max_model_len tokens the KV pool holds at once.
    full_length_sequences: int
    kv_bytes_per_token: int  # per GPU, all layers (sliding-window layers counted in full)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for tables: 'fits' or the first problem, with the key figures."""
        head = f"{self.model.id} on {self.vm_type.id}"
        if not self.fits:
            return f"{head}: does not fit: {self.problems[0]}"
        return (
            f"{head}: fits, context {self.max_model_len}, TP {self.tensor_parallel_size}, "
            f"{self.total_needed_gib:.1f}/{self.usable_gib:.1f} GiB per GPU "
            f"({self.full_length_sequences} full-length sequence(s))"
        )


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def visible_vram_gib(gpu: GPUModel) -> float:
    """Memory the driver reports for one GPU, in GiB, from the vendor's "GB" figure."""
    if gpu.vendor.upper() == "AMD" or _HBM_NAMES.search(gpu.name):
        fraction = HBM_VISIBLE_FRACTION
    elif _ECC_GDDR_NAMES.search(gpu.name):
        fraction = ECC_GDDR_VISIBLE_FRACTION
    else:
        fraction = OTHER_VISIBLE_FRACTION
    return gpu.vram_gb * fraction


def weights_gib_per_gpu(model: ModelSpec, tensor_parallel_size: int = 1) -> float:
    """Weights per GPU: tensor parallelism splits every layer, embeddings and lm_head included."""
    return model.weights_size_gb * GB / GIB / max(1, tensor_parallel_size)


def overhead_gib(model: ModelSpec, tensor_parallel_size: int = 1) -> float:
    """Per-GPU memory vLLM uses besides weights and KV cache (see the constants above)."""
    hidden = model.hidden_size or DEFAULT_HIDDEN_SIZE
    activations = ACTIVATION_BASE_GIB + ACTIVATION_GIB_PER_1K_HIDDEN * hidden / 1024
    comm = TP_COMM_GIB if tensor_parallel_size > 1 else 0.0
    return CUDA_CONTEXT_GIB + CUDA_GRAPHS_GIB + comm + activations


def kv_bytes_per_token_per_layer(
    model: ModelSpec, tensor_parallel_size: int = 1, kv_cache_dtype: str = "auto"
) -> float:
    """KV-cache bytes one token occupies in one layer on one GPU.

    GQA: K and V for each KV head (2 × kv_heads × head_dim elements), split across GPUs by tensor
    parallelism; with more GPUs than KV heads vLLM replicates heads so each GPU keeps one. MLA:
    one latent of kv_lora_rank + qk_rope_head_dim elements that every GPU keeps whole.
    """
    elements = float(model.kv_elements_per_token_per_layer or 0)
    if not model.uses_mla and model.num_kv_heads > 0:
        heads_per_gpu = max(1, math.ceil(model.num_kv_heads / max(1, tensor_parallel_size)))
        elements = elements * heads_per_gpu / model.num_kv_heads
    element_bytes = 1 if kv_cache_dtype == "fp8" else 2
    return elements * element_bytes


def _layer_split(model: ModelSpec) -> tuple[int, int, int]:
    """(full-attention layers, sliding-window layers, tokens a sliding layer keeps)."""
    sliding = model.sliding_window_layers if model.sliding_window else 0
    sliding = min(sliding, model.num_layers)
    keep = (model.sliding_window or 0) + SLIDING_WINDOW_SLACK_TOKENS
    return model.num_layers - sliding, sliding, keep


def kv_cache_gib(
    model: ModelSpec, tokens: int, tensor_parallel_size: int = 1, kv_cache_dtype: str = "auto"
) -> float:
    """KV cache for one sequence of ``tokens`` tokens, per GPU, in GiB."""
    per_layer = kv_bytes_per_token_per_layer(model, tensor_parallel_size, kv_cache_dtype)
    full, sliding, keep = _layer_split(model)
    total = per_layer * (full * tokens + sliding * min(tokens, keep))
    return total / GIB


def max_tokens_for(
    model: ModelSpec, budget_gib: float, tensor_parallel_size: int = 1, kv_cache_dtype: str = "auto"
) -> int:
    """Longest single sequence whose KV cache fits in ``budget_gib`` per GPU (uncapped)."""
    if budget_gib <= 0:
        return 0
    budget = budget_gib * GIB
    per_layer = kv_bytes_per_token_per_layer(model, tensor_parallel_size, kv_cache_dtype)
    if per_layer <= 0:
        return model.max_context
    full, sliding, keep = _layer_split(model)
    # Up to `keep` tokens every layer grows; beyond it only the full-attention layers do.
    short = budget / (per_layer * (full + sliding))
    if short <= keep or sliding == 0:
        return int(short)
    if full == 0:
        return model.max_context
    return int((budget - per_layer * sliding * keep) / (per_layer * full))


def _round_context(tokens: int) -> int:
    return (tokens // CONTEXT_ROUNDING) * CONTEXT_ROUNDING


def _format_counts(counts: Sequence[int]) -> str:
    words = [str(c) for c in counts]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


def _tp_divides(model: ModelSpec, tp: int) -> bool:
    """vLLM's own constraints: TP divides the attention heads, and KV heads split or replicate."""
    if model.num_attention_heads % tp:
        return False
    if not model.uses_mla and model.num_kv_heads:
        kv = model.num_kv_heads
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            return False
    return True


def _quant_shard_ok(width: int | None, group: int | None, tp: int) -> bool:
    """A quantized matrix split by TP must keep whole groups/blocks in each shard."""
    if not width or not group or tp == 1:
        return True
    return width % tp == 0 and (width // tp) % group == 0


def _gpu_desc(gpu: GPUModel) -> str:
    if gpu.compute_capability is None:
        return gpu.name
    return f"{gpu.name} (compute capability {gpu.compute_capability_str})"


# --------------------------------------------------------------------------------------------
# The calculator
# --------------------------------------------------------------------------------------------


def estimate_fit(
    model: ModelSpec,
    vm_type: VMType,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = DEFAULT_MAX_NUM_SEQS,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    dtype: str = "auto",
    kv_cache_dtype: str = "auto",
    tensor_parallel_size: int | None = None,
) -> FitEstimate:
    """Estimate whether ``model`` with ``max_model_len`` tokens of context runs on ``vm_type``.

    ``max_model_len`` None picks min(model max, largest that fits, 32768) and says so in
    ``warnings``. ``tensor_parallel_size`` None uses every GPU of the type; ``max_num_seqs`` None
    means DEFAULT_MAX_NUM_SEQS. Invalid argument values
    (a dtype vLLM does not know, a utilization outside (0, 1]) raise ValueError; everything about
    the model and the hardware is reported in ``problems``/``warnings`` instead.
    """
    if dtype not in VALID_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(VALID_DTYPES)}, not {dtype!r}")
    if kv_cache_dtype not in VALID_KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype must be one of {', '.join(VALID_KV_CACHE_DTYPES)}, not {kv_cache_dtype!r}"
        )
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], not {gpu_memory_utilization}")
    if max_num_seqs is None:
        max_num_seqs = DEFAULT_MAX_NUM_SEQS
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be at least 1, not {max_num_seqs}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"max_model_len must be positive, not {max_model_len}")
    if tensor_parallel_size is not None and tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be positive, not {tensor_parallel_size}")

    problems: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    gpu = vm_type.gpu
    gpus = vm_type.gpu_count
    tp = tensor_parallel_size if tensor_parallel_size is not None else gpus

    # -- parallelism -----------------------------------------------------------------------
    if tp != gpus:
        problems.append(
            f"tensor parallel size {tp} must equal the {gpus} GPU(s) of {vm_type.id}: "
            f"maider uses every GPU of the VM, so leave it unset or choose a type with {tp} GPUs"
        )
    if not _tp_divides(model, tp):
        valid = [c for c in _COMMON_GPU_COUNTS if _tp_divides(model, c)]
        if model.num_attention_heads % tp:
            what = f"the {model.num_attention_heads} attention heads"
        else:
            what = f"the {model.num_kv_heads} KV heads"
        problems.append(
            f"TP {tp} does not divide {what} of {model.id}: choose a type with {_format_counts(valid)} GPUs"
        )
    expert_parallel = False
    if model.quantization is not None and tp > 1:
        if model.is_moe:
            if not _quant_shard_ok(model.moe_intermediate_size, model.quant_group_size, tp):
                expert_parallel = True
                notes.append(
                    f"{model.id}: an expert's width {model.moe_intermediate_size} split {tp} ways breaks "
                    f"the {model.quant_group_size}-wide quantization blocks, so experts are sharded "
                    "whole across GPUs (--enable-expert-parallel)"
                )
        elif not _quant_shard_ok(model.intermediate_size, model.quant_group_size, tp):
            valid = [
                c
                for c in _COMMON_GPU_COUNTS
                if _quant_shard_ok(model.intermediate_size, model.quant_group_size, c)
            ]
            problems.append(
                f"{model.id} cannot be split {tp} ways: its MLP width {model.intermediate_size} / {tp} is not a "
                f"multiple of its quantization group size {model.quant_group_size}: choose a type with "
                f"{_format_counts(valid)} GPUs"
            )

    # -- hardware features -------------------------------------------------------------------
    serve_dtype = dtype
    is_amd = gpu.vendor.upper() == "AMD"
    known = is_amd or (gpu.vendor.upper() == "NVIDIA" and gpu.compute_capability is not None)
    if not known:
        warnings.append(
            f"maider does not know the capabilities of {gpu.vendor} {gpu.name}: bfloat16, FP8 and "
            "quantization support were not checked"
        )
    else:
        if not gpu.supports_bfloat16:
            if dtype == "bfloat16":
                problems.append(f"{_gpu_desc(gpu)} has no bfloat16 support: use dtype float16")
            elif dtype == "auto" and model.native_dtype == "bfloat16":
                serve_dtype = "float16"
                warnings.append(
                    f"{model.id} is bfloat16 but {_gpu_desc(gpu)} has no bfloat16: serving it in float16 "
                    "(usually fine; a model that overflows in float16 produces garbage or NaN errors)"
                )
        if model.quantization == "fp8" and not gpu.supports_fp8:
            sibling = unquantized_sibling(model)
            alternative = f"use {sibling.id} or choose" if sibling else "choose"
            problems.append(
                f"{model.id} has FP8 weights, which need compute capability 8.9 or newer (L4, L40S, RTX Ada, "
                f"H100) or an AMD MI300; {_gpu_desc(gpu)} has no FP8: {alternative} a newer GPU type"
            )
        if kv_cache_dtype == "fp8" and not gpu.supports_fp8:
            problems.append(
                f"kv_cache_dtype fp8 needs compute capability 8.9 or newer or an AMD MI300; "
                f"{_gpu_desc(gpu)} has no FP8: use kv_cache_dtype auto"
            )
        if model.quantization == "mxfp4" and is_amd and not gpu.supports_fp8:
            problems.append(
                f"{model.id} has MXFP4 weights, which vLLM runs on AMD only from MI300 (CDNA3): choose a newer GPU type"
            )
        min_cc = model.min_compute_capability
        if (
            not is_amd
            and gpu.compute_capability is not None
            and min_cc is not None
            and model.quantization != "fp8"
            and gpu.compute_capability < min_cc
        ):
            method = (model.quantization or "its").upper()
            problems.append(
                f"{model.id} has {method} weights, which vLLM runs on compute capability "
                f"{min_cc[0]}.{min_cc[1]} or newer; {_gpu_desc(gpu)} is too old: choose a newer GPU type"
            )
        if is_amd:
            warnings.append(
                f"{gpu.name} is an AMD GPU: vLLM must run from its ROCm image (rocm/vllm), not the CUDA one"
                + (
                    "; AWQ/GPTQ kernels are slower or missing on ROCm, prefer FP8 or unquantized models"
                    if model.quantization in ("awq", "gptq")
                    else ""
                )
            )
        elif gpu.compute_capability is not None and gpu.compute_capability < (8, 0):
            warnings.append(
                f"{_gpu_desc(gpu)} predates Ampere: vLLM runs without FlashAttention and Marlin kernels "
                "there, so expect slower prefill and generation than on an A100/L4 or newer"
            )

    # -- memory ----------------------------------------------------------------------------
    usable = gpu_memory_utilization * visible_vram_gib(gpu)
    weights = weights_gib_per_gpu(model, tp)
    overhead = overhead_gib(model, tp)
    pool = usable - weights - overhead
    fit_tokens = max_tokens_for(model, pool, tp, kv_cache_dtype)
    max_context_fit = min(model.max_context, fit_tokens)
    if max_context_fit < model.max_context:
        max_context_fit = _round_context(max_context_fit)
    min_useful = min(MIN_USEFUL_CONTEXT, model.max_context)
    default_context = min(model.max_context, DEFAULT_CONTEXT_CAP)

    if max_model_len is None:
        target = default_context
        chosen = min(default_context, max_context_fit)
        if pool > 0 and chosen >= min_useful:
            reason = (
                "the model's maximum"
                if chosen == model.max_context
                else f"maider's default cap, the model allows {model.max_context}"
                if chosen == DEFAULT_CONTEXT_CAP
                else "the most that fits in the GPU memory"
            )
            # A warning rather than a note: the user should see what context they get.
            warnings.append(f"max_model_len not given: using {chosen} tokens ({reason})")
        elif pool > 0:
            problems.append(
                f"only {max_context_fit} tokens of context fit next to the weights of {model.id} on {vm_type.id}, "
                f"less than the {min_useful} tokens aider needs: choose a type with at least "
                f"{_needed_total_gb(model, vm_type, tp, min_useful, gpu_memory_utilization, kv_cache_dtype)} GB "
                "of GPU memory in total"
            )
            chosen = max(chosen, min_useful)
            target = chosen
        else:
            chosen = target
    else:
        chosen = target = max_model_len
        if max_model_len > model.max_context:
            suggestion = min(model.max_context, max_context_fit) if pool > 0 else model.max_context
            problems.append(
                f"max_model_len {max_model_len} is above the {model.max_context} tokens {model.id} supports: "
                f"use {suggestion} or less"
            )

    kv = kv_cache_gib(model, chosen, tp, kv_cache_dtype)
    total_needed = weights + overhead + kv
    if pool <= 0:
        problems.append(
            f"{model.id} ({model.weights_size_gb:.1f} GB of weights) does not fit on {vm_type.id} "
            f"({gpus}× {gpu.name}, {vm_type.total_vram_gb:g} GB): it needs at least "
            f"{_needed_total_gb(model, vm_type, tp, target, gpu_memory_utilization, kv_cache_dtype)} GB of "
            f"GPU memory in total for a {target}-token context"
        )
    elif max_model_len is not None and kv > pool:
        problems.append(
            f"a {max_model_len}-token context needs {kv:.1f} GiB of KV cache per GPU but only {pool:.1f} GiB is "
            f"left after the weights on {vm_type.id}: use max_model_len {max_context_fit} or less, "
            f"kv_cache_dtype fp8, or a type with at least "
            f"{_needed_total_gb(model, vm_type, tp, max_model_len, gpu_memory_utilization, kv_cache_dtype)} GB "
            "of GPU memory in total"
        )

    full_sequences = int(pool // kv) if kv > 0 and pool > 0 else 0
    fits = not problems
    if fits:
        notes.append(
            f"the KV cache holds {full_sequences} sequence(s) of {chosen} tokens at once; shorter requests "
            "share the rest, and vLLM queues what does not fit"
        )
    per_layer = kv_bytes_per_token_per_layer(model, tp, kv_cache_dtype)
    settings = VLLMSettings(
        model=model.id,
        tensor_parallel_size=tp,
        max_model_len=chosen,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs,
        dtype=serve_dtype,
        kv_cache_dtype=kv_cache_dtype,
        quantization=model.quantization,
        enable_expert_parallel=expert_parallel,
        trust_remote_code=model.trust_remote_code,
        extra_args=model.vllm_extra_args,
    )
    return FitEstimate(
        model=model,
        vm_type=vm_type,
        fits=fits,
        settings=settings,
        tensor_parallel_size=tp,
        max_model_len=chosen,
        weights_gib=weights,
        kv_cache_gib=kv,
        overhead_gib=overhead,
        total_needed_gib=total_needed,
        usable_gib=usable,
        headroom_gib=usable - total_needed,
        kv_pool_gib=pool,
        max_context_fit=max(0, max_context_fit),
        full_length_sequences=full_sequences,
        kv_bytes_per_token=int(per_layer * model.num_layers),
        problems=problems,
        warnings=warnings,
        notes=notes,
    )


def _needed_total_gb(
    model: ModelSpec, vm_type: VMType, tp: int, tokens: int, utilization: float, kv_cache_dtype: str
) -> int:
    """Total GPU memory (vendor GB, all GPUs of a type like ``vm_type``) needed for ``tokens``."""
    per_gpu = (
        weights_gib_per_gpu(model, tp)
        + overhead_gib(model, tp)
        + kv_cache_gib(model, tokens, tp, kv_cache_dtype)
    ) / utilization
    fraction = visible_vram_gib(vm_type.gpu) / vm_type.gpu.vram_gb if vm_type.gpu.vram_gb else 1.0
    return math.ceil(per_gpu / fraction * max(1, tp))
