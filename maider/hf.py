"""Describe a model that is not in maider's table from its Hugging Face ``config.json``.

:func:`spec_from_config` is pure (tests feed it fixture configs); :func:`fetch_model_spec`
downloads ``config.json`` with huggingface_hub (which caches it) and :func:`resolve_model` looks in
the embedded table first. huggingface_hub is imported inside the functions that need it so that
importing this module stays cheap.

``config.json`` does not state the parameter count (the safetensors metadata does, but reading it
needs the network and a token for gated repos), so parameters are estimated from the shapes; see
:func:`estimate_params`. The weight size then follows from the parameters and the quantization.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maider.models import DEFAULT_MODEL, QUANT_BITS, ModelSpec, get_model


class ModelLookupError(Exception):
    """A model could not be described; the message says what is wrong and how to fix it."""


_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: Architectures whose MLP has two matrices (up, down) instead of three (gate, up, down).
_NON_GATED_MLP = frozenset(
    {"gpt2", "gpt_bigcode", "starcoder2", "gpt_neox", "gptj", "falcon", "phi", "bloom", "opt"}
)

#: vLLM stretches max_position_embeddings by the RoPE factor for every scaling type but these
#: (whose configs already state the extended length).
_ROPE_TYPES_NOT_EXTENDING = frozenset({"default", "su", "longrope", "llama3", "mrope"})

#: Scales and zero points of 4-bit group-wise formats (group 128: one fp16 scale and one packed
#: zero per 128 weights), in bytes per quantized weight.
_GROUP_OVERHEAD_BYTES = 0.02


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            return value
    return None


def _text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language-model part of a config (multimodal models nest it under ``text_config``)."""
    for key in ("text_config", "language_config", "llm_config"):
        sub = config.get(key)
        if isinstance(sub, Mapping) and sub.get("num_hidden_layers") is not None:
            merged = dict(sub)
            for inherited in ("quantization_config", "torch_dtype", "dtype", "tie_word_embeddings"):
                if inherited not in merged and inherited in config:
                    merged[inherited] = config[inherited]
            return merged
    return dict(config)


def _require(model_id: str, cfg: Mapping[str, Any], what: str, *keys: str) -> int:
    value = _first(cfg, *keys)
    if value is None:
        raise ModelLookupError(
            f"config.json of {model_id} has no {what} ({' / '.join(keys)}): maider cannot size this "
            "model; pick one from `maider recommend --list-models`"
        )
    return int(value)


def _max_context(cfg: Mapping[str, Any]) -> int | None:
    base = _first(cfg, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if base is None:
        return None
    base = int(base)
    if isinstance(rope, Mapping):
        rope_type = str(rope.get("rope_type") or rope.get("type") or "default").lower()
        factor = rope.get("factor")
        if rope_type not in _ROPE_TYPES_NOT_EXTENDING and isinstance(factor, (int, float)) and factor > 1:
            original = int(rope.get("original_max_position_embeddings") or base)
            return max(base, int(original * factor))
    return base


def _quantization(cfg: Mapping[str, Any]) -> tuple[str | None, float | None, int | None]:
    """(method, weight bits, group/block size) from ``quantization_config``."""
    qc = cfg.get("quantization_config")
    if not isinstance(qc, Mapping):
        return None, None, None
    method = str(qc.get("quant_method") or "").lower() or None
    if method in ("awq", "gptq"):
        bits = float(_first(qc, "bits", "w_bit") or 4)
        group = _first(qc, "group_size", "q_group_size")
        return method, bits, int(group) if group and int(group) > 0 else None
    if method == "fp8":
        block = qc.get("weight_block_size")
        return "fp8", 8.0, int(block[-1]) if isinstance(block, list) and block else None
    if method == "mxfp4":
        return "mxfp4", 4.25, None  # 4-bit values + one 8-bit scale per 32
    if method == "compressed-tensors":
        for group_cfg in (qc.get("config_groups") or {}).values():
            weights = group_cfg.get("weights") if isinstance(group_cfg, Mapping) else None
            if isinstance(weights, Mapping):
                bits = float(weights.get("num_bits") or 16)
                if weights.get("type") == "float" and bits == 8:
                    return "fp8", 8.0, None
                size = weights.get("group_size")
                return "compressed-tensors", bits, int(size) if size else None
        return "compressed-tensors", None, None
    if method == "bitsandbytes":
        return "bitsandbytes", 4.0 if qc.get("load_in_4bit") else 8.0, None
    return method, None, None


def estimate_params(config: Mapping[str, Any]) -> tuple[float, float | None, float, float]:
    """Estimate (total, active or None, embedding, expert) parameters, in units, from the shapes.

    Per layer, ignoring biases and norms (<0.1%):
      attention  = h·(heads·d) [q] + 2·h·(kv·d) [k, v] + (heads·d)·h [o]
                   MLA: q (h·heads·(nope+rope), or through q_lora_rank) + h·(rank+rope) [kv_a]
                        + rank·heads·(nope+v) [kv_b] + heads·v·h [o]
      dense MLP  = 3·h·intermediate (gate, up, down; 2· for GPT-2-style MLPs)
      MoE MLP    = experts·3·h·moe_intermediate + shared experts + router h·experts;
                   active = top_k experts instead of all
    plus embeddings vocab·h, twice unless tie_word_embeddings (the active count includes only the
    output projection). Layers listed as dense in MoE
    models (first_k_dense_replace, mlp_only_layers) use the dense MLP.
    """
    cfg = _text_config(config)
    h = int(_first(cfg, "hidden_size", "n_embd", "d_model", "dim") or 0)
    layers = int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers") or 0)
    heads = int(_first(cfg, "num_attention_heads", "n_head", "n_heads") or 1)
    kv = int(_first(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads") or heads)
    head_dim = int(cfg.get("head_dim") or (h // heads if heads else 0))
    inter = int(_first(cfg, "intermediate_size", "ffn_hidden_size", "n_inner") or 4 * h)
    vocab = int(cfg.get("vocab_size") or 0)
    tied = bool(cfg.get("tie_word_embeddings", False))

    if cfg.get("kv_lora_rank"):
        rank = int(cfg["kv_lora_rank"])
        rope = int(cfg.get("qk_rope_head_dim") or 0)
        nope = int(cfg.get("qk_nope_head_dim") or head_dim)
        v = int(cfg.get("v_head_dim") or head_dim)
        q_lora = cfg.get("q_lora_rank")
        q = h * heads * (nope + rope) if not q_lora else h * int(q_lora) + int(q_lora) * heads * (nope + rope)
        attention = q + h * (rank + rope) + rank * heads * (nope + v) + heads * v * h
    else:
        attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim

    matrices = 2 if str(cfg.get("model_type", "")).lower() in _NON_GATED_MLP else 3
    dense_mlp = matrices * h * inter
    experts = int(_first(cfg, "num_experts", "num_local_experts", "n_routed_experts") or 0)
    expert_params = 0.0
    if experts:
        top_k = int(_first(cfg, "num_experts_per_tok", "experts_per_token", "moe_topk") or 1)
        expert_width = int(cfg.get("moe_intermediate_size") or inter)
        one_expert = matrices * h * expert_width
        shared = int(cfg.get("n_shared_experts") or 0) * one_expert
        shared += matrices * h * int(cfg.get("shared_expert_intermediate_size") or 0)
        router = h * experts
        dense_layers = int(cfg.get("first_k_dense_replace") or 0) + len(cfg.get("mlp_only_layers") or [])
        moe_layers = max(0, layers - dense_layers)
        expert_params = float(moe_layers * experts * one_expert)
        mlp_total = moe_layers * (experts * one_expert + shared + router) + dense_layers * dense_mlp
        mlp_active = moe_layers * (top_k * one_expert + shared + router) + dense_layers * dense_mlp
    else:
        mlp_total = mlp_active = layers * dense_mlp

    embedding = float(vocab * h * (1 if tied else 2))
    total = float(layers * attention + mlp_total + embedding)
    # Active parameters leave out the input embedding, a table lookup rather than compute (as
    # OpenAI and DeepSeek count them: gpt-oss-20b 3.6B, DeepSeek-V2-Lite 2.4B).
    active = float(layers * attention + mlp_active + vocab * h) if experts else None
    return total, active, embedding, expert_params


def _weights_gb(
    total: float, embedding: float, expert: float, method: str | None, bits: float | None
) -> float:
    """GB of weights: quantized matrices at their bits, the rest (embeddings, norms) in 16-bit."""
    if method is None or bits is None or bits >= 16:
        return round(total * 2 / 1e9, 2)
    quantized = expert if method == "mxfp4" and expert else total - embedding
    per_weight = bits / 8 + (_GROUP_OVERHEAD_BYTES if bits <= 4 and method != "mxfp4" else 0.0)
    return round((quantized * per_weight + (total - quantized) * 2) / 1e9, 2)


def spec_from_config(model_id: str, config: Mapping[str, Any], *, gated: bool = False) -> ModelSpec:
    """Build a ModelSpec from a parsed ``config.json`` (pure; no network).

    Handles missing ``num_key_value_heads`` (= attention heads, plain multi-head attention),
    missing ``head_dim`` (= hidden_size / heads), ``quantization_config``, ``torch_dtype`` or
    ``dtype``, MLA (``kv_lora_rank`` + ``qk_rope_head_dim``), multimodal ``text_config`` nesting,
    RoPE scaling that extends the context, and gpt-oss-style ``layer_types`` sliding windows
    (other sliding-window configs are counted as full attention, which over-estimates memory).
    """
    cfg = _text_config(config)
    layers = _require(model_id, cfg, "layer count", "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _require(model_id, cfg, "attention head count", "num_attention_heads", "n_head", "n_heads")
    hidden = _require(model_id, cfg, "hidden size", "hidden_size", "n_embd", "d_model", "dim")
    kv_heads = int(_first(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads") or heads)
    if cfg.get("multi_query") is True:
        kv_heads = 1
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    max_context = _max_context(cfg)
    if max_context is None:
        raise ModelLookupError(
            f"config.json of {model_id} states no context length (max_position_embeddings): "
            "maider cannot size this model; pick one from `maider recommend --list-models`"
        )

    method, bits, group = _quantization(cfg)
    dtype = str(
        _first(cfg, "torch_dtype", "dtype") or ("float16" if method in ("awq", "gptq") else "bfloat16")
    )
    dtype = dtype.replace("torch.", "")
    native_dtype = "float16" if dtype in ("float16", "half") else "bfloat16"

    total, active, embedding, expert = estimate_params(config)
    if bits is None and method in QUANT_BITS:
        bits = QUANT_BITS[method]
    weights_gb = _weights_gb(total, embedding, expert, method, bits)

    mla = cfg.get("kv_lora_rank") is not None
    layer_types = cfg.get("layer_types")
    sliding_layers = 0
    window = int(cfg.get("sliding_window") or 0)
    if isinstance(layer_types, list) and window:
        sliding_layers = sum(1 for t in layer_types if t == "sliding_attention")
    moe_width = cfg.get("moe_intermediate_size")
    if moe_width is None and active is not None:
        moe_width = cfg.get("intermediate_size")

    return ModelSpec(
        id=model_id,
        label=model_id.rsplit("/", 1)[-1],
        params_b=round(total / 1e9, 2),
        active_params_b=round(active / 1e9, 2) if active is not None else None,
        quantization=method,
        quant_bits=bits if method else None,
        quant_group_size=group,
        weights_gb=weights_gb,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        kv_lora_rank=int(cfg["kv_lora_rank"]) if mla else None,
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0) if mla else None,
        sliding_window=window if sliding_layers else None,
        sliding_window_layers=sliding_layers,
        max_context=max_context,
        native_dtype=native_dtype,
        gated=gated,
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]) if cfg.get("intermediate_size") else None,
        moe_intermediate_size=int(moe_width) if moe_width else None,
        notes="Described from its config.json; parameter count and weight size are estimates.",
        weights_estimated=True,
    )


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def local_config_path(model_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a user can put a model's config.json for maider to read without the network.

    ``<maider cache dir>/hf-configs/<owner>/<name>/config.json`` ($MAIDER_CACHE_DIR overrides the
    cache dir), or under ``cache_dir`` when given.
    """
    if cache_dir is not None:
        base = Path(cache_dir)
    else:
        from maider.paths import cache_dir as maider_cache_dir

        base = maider_cache_dir()
    owner, _, name = model_id.partition("/")
    return base / "hf-configs" / owner / name / "config.json"


def _hf_error(name: str) -> type[BaseException]:
    """An exception class of huggingface_hub, wherever this version defines it."""
    for module_name in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            module = __import__(module_name, fromlist=[name])
        except ImportError:
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls

    class _Never(Exception):
        pass

    return _Never


def _translate(exc: BaseException, model_id: str, override: Path) -> ModelLookupError:
    """One-line, actionable message for a huggingface_hub failure."""
    offline = (
        f"cannot reach Hugging Face to read the config.json of {model_id} (no network): use a model from "
        f"`maider recommend --list-models` or put its config.json at {override}"
    )
    if isinstance(exc, _hf_error("GatedRepoError")):
        return ModelLookupError(
            f"{model_id} is gated: set HF_TOKEN and accept the licence at https://huggingface.co/{model_id}"
        )
    if isinstance(exc, _hf_error("RepositoryNotFoundError")):
        return ModelLookupError(
            f"Hugging Face has no model {model_id} (or it is private): check the model id "
            f"(owner/name, e.g. {DEFAULT_MODEL}); for a private model set HF_TOKEN"
        )
    if isinstance(exc, (_hf_error("LocalEntryNotFoundError"), _hf_error("OfflineModeIsEnabled"))):
        return ModelLookupError(offline)
    if isinstance(exc, _hf_error("EntryNotFoundError")):
        return ModelLookupError(
            f"{model_id} has no config.json (a GGUF-only or non-Transformers repo?): vLLM needs a "
            "Transformers-format repo; check the model id"
        )
    if isinstance(exc, _hf_error("HfHubHTTPError")):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        return ModelLookupError(
            f"Hugging Face answered {status or 'an error'} for {model_id}'s config.json: try again later"
        )
    kind = type(exc).__name__
    if isinstance(exc, (ConnectionError, TimeoutError)) or re.search(
        r"Connect|Timeout|Network|Offline", kind
    ):
        return ModelLookupError(offline)
    first_line = (str(exc).splitlines() or [""])[0]
    return ModelLookupError(
        f"could not read the config.json of {model_id} from Hugging Face ({kind}: {first_line})"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host answers on TCP, so that being offline costs 3 s, not huggingface_hub's
    ~25 s of retries. Behind an HTTP(S) proxy the direct probe means nothing, so it is skipped."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_config(model_id: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelLookupError(f"cannot read {path} for {model_id}: {exc}; delete it and retry") from None
    if not isinstance(data, dict):
        raise ModelLookupError(f"{path} for {model_id} is not a JSON object: delete it and retry")
    return data


def fetch_model_spec(
    model_id: str,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    local_files_only: bool = False,
) -> ModelSpec:
    """Describe ``model_id`` from its config.json on Hugging Face (cached by huggingface_hub).

    A config.json placed at :func:`local_config_path` wins, so models can be described offline.
    The download is first tried anonymously: if that is refused and the token works, the model
    is gated (or private) and the spec says so, because the VM will need HF_TOKEN to download
    the weights. ``token`` None lets huggingface_hub use HF_TOKEN or a saved login.
    """
    model_id = model_id.strip()
    if not _MODEL_ID.match(model_id):
        raise ModelLookupError(
            f"{model_id!r} is not a Hugging Face model id: check the model id (owner/name, e.g. {DEFAULT_MODEL})"
        )
    override = local_config_path(model_id, cache_dir)
    if override.is_file():
        return spec_from_config(model_id, _read_config(model_id, override))
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelLookupError(
            f"huggingface_hub is not installed, so {model_id} cannot be looked up: pip install huggingface_hub, "
            f"or put its config.json at {override}"
        ) from None

    if not local_files_only and not _hub_reachable():
        local_files_only = True  # offline: huggingface_hub's cache may still have the config
    not_found = _hf_error("RepositoryNotFoundError")  # GatedRepoError is a subclass
    hub_cache = str(cache_dir) if cache_dir is not None else None
    gated = False
    try:
        try:
            path = hf_hub_download(
                model_id, "config.json", token=False, cache_dir=hub_cache, local_files_only=local_files_only
            )
        except not_found:
            # Gated, private or missing: only a token can tell.
            path = hf_hub_download(
                model_id, "config.json", token=token, cache_dir=hub_cache, local_files_only=local_files_only
            )
            gated = True
    except Exception as exc:
        raise _translate(exc, model_id, override) from None
    return spec_from_config(model_id, _read_config(model_id, path), gated=gated)


def resolve_model(
    model_id: str,
    token: str | None = None,
    allow_network: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelSpec:
    """The table entry for ``model_id``, else a spec from its config.json.

    ``allow_network`` False reads only the local override and huggingface_hub's cache.
    """
    spec = get_model(model_id)
    if spec is not None:
        return spec
    return fetch_model_spec(model_id, token=token, cache_dir=cache_dir, local_files_only=not allow_network)
