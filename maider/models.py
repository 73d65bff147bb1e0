"""The embedded table of popular open code models, and the facts sizing needs about a model.

Every number here comes from the model's Hugging Face ``config.json`` (layers, heads, context...)
or its file listing (``weights_gb``: the size of the weight files, in decimal GB). Numbers that
are estimates rather than read from the source are marked with a comment. Models that are not in
the table are described by :func:`maider.hf.fetch_model_spec`, which builds the same
:class:`ModelSpec` from the model's ``config.json``.

This module is imported by ``maider recommend`` and the sizing code, so it stays free of heavy
imports (no pydantic, no huggingface_hub).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The model ``maider up`` serves when none is given: good at code, fits a single 24 GB GPU with a
#: 32k context, and runs on Turing (AWQ 4-bit weights, float16 activations).
DEFAULT_MODEL = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"

#: Quantization methods maider knows, with the oldest NVIDIA compute capability vLLM runs them on.
#: awq: vLLM's AWQ kernels need 7.5 (the faster Marlin kernels need 8.0; vLLM picks them itself).
#: gptq: 6.0 in vLLM. mxfp4 (gpt-oss): 8.0 (Marlin/Triton kernels on Ampere, native on Hopper+).
#: fp8: 8.9 (Ada, Hopper): vLLM can run FP8 weights weight-only on Ampere through Marlin, but
#: slowly and not for every FP8 layout, so maider refuses FP8 below 8.9 and suggests the
#: unquantized or AWQ sibling instead.
MIN_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "awq": (7, 5),
    "gptq": (6, 0),
    "mxfp4": (8, 0),
    "fp8": (8, 9),
}

#: Weight bits per parameter for each quantization (unquantized: 16-bit bf16/fp16).
QUANT_BITS: dict[str | None, float] = {None: 16, "awq": 4, "gptq": 4, "fp8": 8, "mxfp4": 4}

#: Bytes of weight files per parameter, for models whose file size is unknown. Above the raw bits
#: because quantized checkpoints keep embeddings, lm_head and norms in 16-bit and add scales:
#: Qwen2.5-72B-AWQ is 41.6 GB for 72.7B params (0.57), Qwen2.5-Coder-14B-AWQ 9.99 GB for 14.7B
#: (0.68), gpt-oss-120b 65.3 GB for 116.8B (0.56).
BYTES_PER_PARAM: dict[str | None, float] = {None: 2.0, "awq": 0.62, "gptq": 0.62, "fp8": 1.03, "mxfp4": 0.57}


def estimate_weights_gb(params_b: float, quantization: str | None = None, bits: float | None = None) -> float:
    """Size of the weights in GB from the parameter count (billions) and the quantization.

    ``bits`` overrides the bits of a quantized model (GPTQ-Int8 is 8-bit, not 4).
    """
    per_param = BYTES_PER_PARAM.get(quantization, 2.0)
    if bits is not None and quantization in ("awq", "gptq"):
        per_param = per_param * bits / 4
    return round(params_b * per_param, 2)


@dataclass(frozen=True)
class ModelSpec:
    """What maider needs to know about a model to size a GPU VM for it and start vLLM."""

    id: str  # Hugging Face repo id, e.g. "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
    label: str
    params_b: float  # total parameters, billions
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int  # max_position_embeddings (after YaRN scaling declared in config.json)
    active_params_b: float | None = None  # MoE: parameters used per token
    quantization: str | None = None  # None, "awq", "gptq", "fp8", "mxfp4"
    #: Size of the weight files in GB (decimal). None: estimated from params and quantization.
    weights_gb: float | None = None
    #: Elements cached per token and layer, K and V together (all KV heads). None: computed as
    #: 2 × num_kv_heads × head_dim, or kv_lora_rank + qk_rope_head_dim for MLA models.
    kv_elements_per_token_per_layer: int | None = None
    #: Multi-head latent attention (DeepSeek-V2/V3): one compressed latent per token and layer
    #: instead of per-head K and V. vLLM caches kv_lora_rank + qk_rope_head_dim elements.
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    #: Layers using sliding-window attention (gpt-oss alternates 128-token windows with full
    #: attention): their cache stops growing at the window, which vLLM exploits.
    sliding_window: int | None = None
    sliding_window_layers: int = 0
    native_dtype: str = "bfloat16"  # "bfloat16" or "float16" (config.json torch_dtype)
    gated: bool = False  # needs an HF token and an accepted licence to download
    #: Oldest NVIDIA compute capability that runs the weights. None: implied by the quantization.
    min_compute_capability: tuple[int, int] | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None  # dense MLP width
    moe_intermediate_size: int | None = None  # width of one expert (MoE)
    #: AWQ/GPTQ group size or FP8 block size: tensor-parallel shards must stay multiples of it.
    quant_group_size: int | None = None
    quant_bits: float | None = None
    tool_call_parser: str | None = None  # vLLM --tool-call-parser that matches the chat template
    #: Extra vLLM flags the model needs to load at all (Mistral-format repos, remote code...).
    vllm_extra_args: tuple[str, ...] = ()
    trust_remote_code: bool = False
    notes: str = ""
    #: True when weights_gb was estimated, not read from the repo's file listing.
    weights_estimated: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        # Unknown quantization methods (bitsandbytes, compressed-tensors...) are kept as given:
        # vLLM reads them from config.json; maider just cannot check the GPU for them.
        if self.weights_gb is None:
            object.__setattr__(
                self, "weights_gb", estimate_weights_gb(self.params_b, self.quantization, self.quant_bits)
            )
            object.__setattr__(self, "weights_estimated", True)
        if self.kv_elements_per_token_per_layer is None:
            if self.uses_mla:
                elements = (self.kv_lora_rank or 0) + (self.qk_rope_head_dim or 0)
            else:
                elements = 2 * self.num_kv_heads * self.head_dim
            object.__setattr__(self, "kv_elements_per_token_per_layer", elements)
        if self.min_compute_capability is None and self.quantization in MIN_COMPUTE_CAPABILITY:
            object.__setattr__(self, "min_compute_capability", MIN_COMPUTE_CAPABILITY[self.quantization])

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.active_params_b is not None

    @property
    def weights_size_gb(self) -> float:
        """weights_gb, never None (filled in by __post_init__)."""
        return float(self.weights_gb or 0.0)

    @property
    def kv_elements_per_token(self) -> int:
        """Elements cached per token over all layers (before tensor-parallel sharding)."""
        return int(self.kv_elements_per_token_per_layer or 0) * self.num_layers

    @property
    def needs_fp8(self) -> bool:
        return self.quantization == "fp8"


# --------------------------------------------------------------------------------------------
# The table. Sources: each repo's config.json and file listing on huggingface.co, as of 2025.
# --------------------------------------------------------------------------------------------

_QWEN25_CODER_NOTE = (
    "32k context as shipped; Qwen documents up to 128k with YaRN (rope_scaling factor 4), "
    "which maider does not enable."
)

_TABLE: tuple[ModelSpec, ...] = (
    # ---- Qwen2.5-Coder (dense, GQA). config.json: max_position_embeddings 32768, bf16.
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        label="Qwen2.5-Coder 1.5B Instruct",
        params_b=1.54,
        weights_gb=3.09,
        num_layers=28,
        num_attention_heads=12,
        num_kv_heads=2,
        head_dim=128,
        hidden_size=1536,
        intermediate_size=8960,
        max_context=32768,
        tool_call_parser="hermes",
        notes="Small: useful as aider's weak model or for smoke tests, not for real coding work.",
    ),
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-7B-Instruct",
        label="Qwen2.5-Coder 7B Instruct",
        params_b=7.62,
        weights_gb=15.23,
        num_layers=28,
        num_attention_heads=28,
        num_kv_heads=4,
        head_dim=128,
        hidden_size=3584,
        intermediate_size=18944,
        max_context=32768,
        tool_call_parser="hermes",
        notes=_QWEN25_CODER_NOTE,
    ),
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-14B-Instruct",
        label="Qwen2.5-Coder 14B Instruct",
        params_b=14.77,
        weights_gb=29.54,
        num_layers=48,
        num_attention_heads=40,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=5120,
        intermediate_size=13824,
        max_context=32768,
        tool_call_parser="hermes",
        notes=_QWEN25_CODER_NOTE,
    ),
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-32B-Instruct",
        label="Qwen2.5-Coder 32B Instruct",
        params_b=32.76,
        weights_gb=65.53,
        num_layers=64,
        num_attention_heads=40,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=5120,
        intermediate_size=27648,
        max_context=32768,
        tool_call_parser="hermes",
        notes=_QWEN25_CODER_NOTE,
    ),
    # ---- Qwen2.5-Coder AWQ (4-bit, group 128, float16). Same architecture as above.
    # weights_gb: sum of the safetensors files on the hub (7B 5.58, 14B 9.99, 32B 19.3 GB);
    # recalled from the file listings, consistent with params × 0.5 bytes + 16-bit embeddings.
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
        label="Qwen2.5-Coder 7B Instruct (AWQ 4-bit)",
        params_b=7.62,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=5.58,
        num_layers=28,
        num_attention_heads=28,
        num_kv_heads=4,
        head_dim=128,
        hidden_size=3584,
        intermediate_size=18944,
        max_context=32768,
        native_dtype="float16",
        tool_call_parser="hermes",
        notes=_QWEN25_CODER_NOTE,
    ),
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-14B-Instruct-AWQ",
        label="Qwen2.5-Coder 14B Instruct (AWQ 4-bit)",
        params_b=14.77,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=9.99,
        num_layers=48,
        num_attention_heads=40,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=5120,
        intermediate_size=13824,
        max_context=32768,
        native_dtype="float16",
        tool_call_parser="hermes",
        notes="maider's default: strong at code, fits one 24 GB GPU with 32k context, runs on Turing.",
    ),
    ModelSpec(
        id="Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        label="Qwen2.5-Coder 32B Instruct (AWQ 4-bit)",
        params_b=32.76,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=19.3,
        num_layers=64,
        num_attention_heads=40,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=5120,
        intermediate_size=27648,
        max_context=32768,
        native_dtype="float16",
        tool_call_parser="hermes",
        notes=_QWEN25_CODER_NOTE,
    ),
    # ---- Qwen3-Coder (MoE, GQA, 256k native context). config.json: 48 layers, 32 q / 4 kv heads,
    # head_dim 128, hidden 2048, 128 experts (8 active) of width 768, max_position_embeddings 262144.
    ModelSpec(
        id="Qwen/Qwen3-Coder-30B-A3B-Instruct",
        label="Qwen3-Coder 30B-A3B Instruct (MoE)",
        params_b=30.53,
        active_params_b=3.3,
        weights_gb=61.07,
        num_layers=48,
        num_attention_heads=32,
        num_kv_heads=4,
        head_dim=128,
        hidden_size=2048,
        moe_intermediate_size=768,
        max_context=262144,
        tool_call_parser="qwen3_coder",
        notes="Fast MoE (3.3B active per token); tool-call parser qwen3_coder needs vLLM >= 0.10.",
    ),
    ModelSpec(
        id="Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
        label="Qwen3-Coder 30B-A3B Instruct (FP8)",
        params_b=30.53,
        active_params_b=3.3,
        quantization="fp8",
        quant_bits=8,
        quant_group_size=128,  # quantization_config.weight_block_size [128, 128]
        weights_gb=31.2,  # estimate: 30.5B × 1 byte + bf16 embeddings/lm_head + block scales
        num_layers=48,
        num_attention_heads=32,
        num_kv_heads=4,
        head_dim=128,
        hidden_size=2048,
        moe_intermediate_size=768,
        max_context=262144,
        tool_call_parser="qwen3_coder",
        notes="FP8 block-quantized: needs compute capability 8.9+ (L4, L40S, Ada, H100) or MI300.",
    ),
    ModelSpec(
        id="Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
        label="Qwen3-Coder 480B-A35B Instruct (FP8)",
        params_b=480.0,
        active_params_b=35.0,
        quantization="fp8",
        quant_bits=8,
        quant_group_size=128,
        weights_gb=482.0,  # estimate: 480B × 1 byte + bf16 embeddings + scales
        num_layers=62,
        num_attention_heads=96,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=6144,
        moe_intermediate_size=2560,
        max_context=262144,
        tool_call_parser="qwen3_coder",
        notes="Needs 8× 80 GB+ GPUs; with 8-way TP vLLM must shard experts (--enable-expert-parallel).",
    ),
    # ---- DeepSeek-Coder-V2-Lite (MoE, MLA). config.json: 27 layers, 16 heads, hidden 2048,
    # kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128, 64 routed
    # experts (6 active) + 2 shared of width 1408, first layer dense (10944), rope yarn factor 40
    # over 4096 → max_position_embeddings 163840, bf16. 15.7B total, 2.4B active.
    ModelSpec(
        id="deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
        label="DeepSeek-Coder-V2 Lite Instruct (MoE, MLA)",
        params_b=15.71,
        active_params_b=2.4,
        weights_gb=31.42,
        num_layers=27,
        num_attention_heads=16,
        num_kv_heads=16,
        head_dim=128,  # hidden_size / heads; unused for the cache (MLA)
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        hidden_size=2048,
        intermediate_size=10944,
        moe_intermediate_size=1408,
        max_context=163840,
        notes="MLA: ~7× smaller KV cache per token than plain attention; DeepSeek licence (not gated).",
    ),
    # ---- Llama 3.x 70B AWQ (dense, GQA): 80 layers, 64 q / 8 kv heads, hidden 8192,
    # intermediate 28672, max_position_embeddings 131072. AWQ 4-bit group 128, float16.
    ModelSpec(
        id="hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        label="Llama 3.1 70B Instruct (AWQ 4-bit)",
        params_b=70.55,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=39.8,  # estimate: 68.4B linear × ~0.52 bytes + 2.1B 16-bit embeddings
        num_layers=80,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=8192,
        intermediate_size=28672,
        max_context=131072,
        native_dtype="float16",
        # Doubtful: unsure whether this re-upload is gated. Marked gated so maider asks for an HF
        # token up front rather than failing the download on the VM; the Llama 3.1 licence applies.
        gated=True,
        tool_call_parser="llama3_json",
        notes="Llama 3.1 Community Licence.",
    ),
    ModelSpec(
        id="casperhansen/llama-3.3-70b-instruct-awq",
        label="Llama 3.3 70B Instruct (AWQ 4-bit)",
        params_b=70.55,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=39.8,  # estimate, as for the Llama 3.1 AWQ above
        num_layers=80,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=8192,
        intermediate_size=28672,
        max_context=131072,
        native_dtype="float16",
        gated=False,  # community upload; believed not gated (unverified)
        tool_call_parser="llama3_json",
        notes="Llama 3.3 Community Licence. Better at code than 3.1 70B.",
    ),
    # ---- Qwen2.5-72B AWQ: 80 layers, 64 q / 8 kv heads, hidden 8192, 32k context. Qwen padded
    # intermediate_size 29568 → 29696 in the AWQ/GPTQ repos so 2-, 4- and 8-way TP work.
    # weights: 41,607,438,677 bytes (file listing).
    ModelSpec(
        id="Qwen/Qwen2.5-72B-Instruct-AWQ",
        label="Qwen2.5 72B Instruct (AWQ 4-bit)",
        params_b=72.71,
        quantization="awq",
        quant_bits=4,
        quant_group_size=128,
        weights_gb=41.61,
        num_layers=80,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=8192,
        intermediate_size=29696,
        max_context=32768,
        native_dtype="float16",
        tool_call_parser="hermes",
        notes="General model, strong at code; Qwen licence (not gated).",
    ),
    # ---- gpt-oss (MoE, MXFP4 experts, bf16 attention). config.json: hidden 2880, 64 q / 8 kv
    # heads, head_dim 64, layer_types alternate sliding_attention (window 128) / full_attention,
    # max_position_embeddings 131072 (yarn factor 32 over 4096). Checkpoint sizes from OpenAI's
    # model card: 12.8 GiB (20b) and 60.8 GiB (120b).
    ModelSpec(
        id="openai/gpt-oss-20b",
        label="gpt-oss 20B (MoE, MXFP4)",
        params_b=20.91,
        active_params_b=3.61,
        quantization="mxfp4",
        quant_bits=4.25,
        weights_gb=13.74,
        num_layers=24,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=64,
        hidden_size=2880,
        intermediate_size=2880,
        moe_intermediate_size=2880,
        sliding_window=128,
        sliding_window_layers=12,
        max_context=131072,
        tool_call_parser="openai",
        notes="Reasoning model (harmony format); MXFP4 experts need compute capability 8.0+.",
    ),
    ModelSpec(
        id="openai/gpt-oss-120b",
        label="gpt-oss 120B (MoE, MXFP4)",
        params_b=116.83,
        active_params_b=5.13,
        quantization="mxfp4",
        quant_bits=4.25,
        weights_gb=65.28,
        num_layers=36,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=64,
        hidden_size=2880,
        intermediate_size=2880,
        moe_intermediate_size=2880,
        sliding_window=128,
        sliding_window_layers=18,
        max_context=131072,
        tool_call_parser="openai",
        notes="Fits one 80 GB GPU (H100/A100). Reasoning model (harmony format).",
    ),
    # ---- Devstral Small 2507 (Mistral Small 3.1 text backbone, dense, GQA): 40 layers, 32 q / 8 kv
    # heads, head_dim 128, hidden 5120, intermediate 32768, 128k context, bf16, Apache-2.0.
    # The repo is in Mistral format (params.json, consolidated.safetensors, tekken.json); vLLM
    # loads it with the mistral tokenizer/config/load formats, as Mistral's model card says.
    ModelSpec(
        id="mistralai/Devstral-Small-2507",
        label="Devstral Small 2507 (24B)",
        params_b=23.57,
        weights_gb=47.14,  # 23.57B × 2 bytes (bf16)
        num_layers=40,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        hidden_size=5120,
        intermediate_size=32768,
        max_context=131072,
        tool_call_parser="mistral",
        vllm_extra_args=(
            "--tokenizer-mode",
            "mistral",
            "--config-format",
            "mistral",
            "--load-format",
            "mistral",
        ),
        notes="Agentic coding model from Mistral/All Hands; needs 48 GB+ (bf16).",
    ),
)

#: The table, keyed by lower-cased Hugging Face id.
MODELS: dict[str, ModelSpec] = {m.id.lower(): m for m in _TABLE}


def get_model(model_id: str) -> ModelSpec | None:
    """The table entry for ``model_id`` (case-insensitive), or None when maider does not know it."""
    return MODELS.get(model_id.strip().lower())


def list_models() -> list[ModelSpec]:
    """Table entries in display order (as declared: small to large within each family)."""
    return list(_TABLE)


def unquantized_sibling(model: ModelSpec) -> ModelSpec | None:
    """The table's non-FP8 (or non-quantized) version of ``model``, to suggest on older GPUs."""
    for suffix in ("-FP8", "-AWQ"):
        if model.id.upper().endswith(suffix):
            return get_model(model.id[: -len(suffix)])
    return None
