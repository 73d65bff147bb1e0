"""The embedded model table, and model specs built from Hugging Face config.json files.

Nothing here touches the network: configs come from tests/fixtures/hf, and the one download
function (huggingface_hub.hf_hub_download) is replaced at its boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from maider import hf
from maider.hf import ModelLookupError, estimate_params, fetch_model_spec, resolve_model, spec_from_config
from maider.models import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    estimate_weights_gb,
    get_model,
    unquantized_sibling,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"

REQUIRED = (
    "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "Qwen/Qwen2.5-Coder-7B-Instruct",
    "Qwen/Qwen2.5-Coder-14B-Instruct",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
    "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
    "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ",
    "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
    "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
    "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    "Qwen/Qwen2.5-72B-Instruct-AWQ",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "mistralai/Devstral-Small-2507",
)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def test_table_has_the_required_models() -> None:
    for model_id in REQUIRED:
        spec = get_model(model_id)
        assert spec is not None, model_id
        assert spec.id == model_id
    assert get_model(DEFAULT_MODEL) is not None


def test_lookup_is_case_insensitive() -> None:
    assert get_model("qwen/qwen2.5-coder-14b-instruct-awq") is get_model(DEFAULT_MODEL)
    assert get_model("  OPENAI/GPT-OSS-20B ") is get_model("openai/gpt-oss-20b")
    assert get_model("nobody/nothing") is None
    assert all(key == spec.id.lower() for key, spec in MODELS.items())


@pytest.mark.parametrize("spec", list(MODELS.values()), ids=lambda s: s.id)
def test_table_entries_are_consistent(spec: ModelSpec) -> None:
    assert spec.num_attention_heads % spec.num_kv_heads == 0
    assert spec.weights_gb is not None and spec.weights_gb > 0
    assert spec.native_dtype in ("bfloat16", "float16")
    assert spec.max_context >= 32768
    # Weights agree with the parameter count: 16-bit ≈ 2 bytes/param, 4-bit ≈ 0.55-0.75 (embeddings stay 16-bit), FP8 ≈ 1.
    per_param = spec.weights_size_gb / spec.params_b
    expected = {None: (1.95, 2.05), "awq": (0.5, 0.75), "fp8": (0.98, 1.1), "mxfp4": (0.5, 0.7)}[
        spec.quantization
    ]
    assert expected[0] <= per_param <= expected[1]
    if spec.quantization in ("awq", "fp8"):
        assert spec.quant_group_size == 128
    if spec.is_moe:
        assert spec.active_params_b is not None and spec.active_params_b < spec.params_b


def test_quantization_implies_the_minimum_compute_capability() -> None:
    assert get_model("Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8").min_compute_capability == (8, 9)  # type: ignore[union-attr]
    assert get_model("openai/gpt-oss-120b").min_compute_capability == (8, 0)  # type: ignore[union-attr]
    assert get_model(DEFAULT_MODEL).min_compute_capability == (7, 5)  # type: ignore[union-attr]
    assert get_model("Qwen/Qwen2.5-Coder-7B-Instruct").min_compute_capability is None  # type: ignore[union-attr]


def test_mla_elements_per_token() -> None:
    spec = get_model("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct")
    assert spec is not None and spec.uses_mla
    assert spec.kv_elements_per_token_per_layer == 512 + 64
    gqa = get_model("Qwen/Qwen2.5-Coder-32B-Instruct")
    assert gqa is not None and gqa.kv_elements_per_token_per_layer == 2 * 8 * 128


def test_gpt_oss_has_head_dim_64_and_sliding_layers() -> None:
    for model_id, layers in (("openai/gpt-oss-20b", 24), ("openai/gpt-oss-120b", 36)):
        spec = get_model(model_id)
        assert spec is not None
        assert (spec.head_dim, spec.num_layers, spec.quantization) == (64, layers, "mxfp4")
        assert spec.sliding_window == 128 and spec.sliding_window_layers == layers // 2


def test_unknown_weights_are_estimated() -> None:
    spec = ModelSpec(
        id="x/y",
        label="y",
        params_b=10,
        num_layers=1,
        num_attention_heads=1,
        num_kv_heads=1,
        head_dim=1,
        max_context=1,
    )
    assert spec.weights_gb == 20.0 and spec.weights_estimated
    assert estimate_weights_gb(10, "awq") < estimate_weights_gb(10, "gptq", bits=8) < estimate_weights_gb(10)


def test_fp8_models_point_to_their_unquantized_sibling() -> None:
    fp8 = get_model("Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8")
    assert fp8 is not None
    sibling = unquantized_sibling(fp8)
    assert sibling is not None and sibling.id == "Qwen/Qwen3-Coder-30B-A3B-Instruct"
    assert unquantized_sibling(get_model("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8")) is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# spec_from_config
# --------------------------------------------------------------------------------------------


def test_dense_gqa_config_without_head_dim() -> None:
    config = fixture("qwen2.5-coder-7b-instruct.json")
    assert "head_dim" not in config
    spec = spec_from_config("Qwen/Qwen2.5-Coder-7B-Instruct", config)
    table = get_model("Qwen/Qwen2.5-Coder-7B-Instruct")
    assert table is not None
    assert spec.head_dim == 3584 // 28 == 128
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads) == (28, 28, 4)
    assert spec.max_context == 32768  # sliding_window 131072 with use_sliding_window false is ignored
    assert spec.sliding_window is None
    assert spec.quantization is None and spec.native_dtype == "bfloat16"
    assert spec.params_b == pytest.approx(table.params_b, rel=0.01)
    assert spec.weights_gb == pytest.approx(table.weights_gb, rel=0.02)
    assert spec.kv_elements_per_token_per_layer == table.kv_elements_per_token_per_layer
    assert not spec.gated and spec.weights_estimated


def test_awq_config_with_quantization_config() -> None:
    spec = spec_from_config(
        "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ", fixture("qwen2.5-coder-32b-instruct-awq.json")
    )
    assert (spec.quantization, spec.quant_bits, spec.quant_group_size) == ("awq", 4, 128)
    assert spec.native_dtype == "float16"
    assert spec.min_compute_capability == (7, 5)
    assert spec.params_b == pytest.approx(32.8, abs=0.1)
    assert spec.weights_gb == pytest.approx(19.3, rel=0.03)  # size of the real safetensors files
    assert spec.intermediate_size == 27648


def test_mla_moe_config() -> None:
    spec = spec_from_config(
        "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", fixture("deepseek-coder-v2-lite-instruct.json")
    )
    assert spec.uses_mla
    assert spec.kv_elements_per_token_per_layer == 576
    assert spec.kv_elements_per_token_per_layer < 2 * spec.num_kv_heads * spec.head_dim
    assert spec.max_context == 163840  # yarn factor 40 × 4096, as stated
    assert spec.params_b == pytest.approx(15.7, abs=0.1)
    assert spec.active_params_b == pytest.approx(2.4, abs=0.1)
    assert spec.moe_intermediate_size == 1408


def test_mxfp4_config_with_sliding_layers() -> None:
    spec = spec_from_config("openai/gpt-oss-20b", fixture("gpt-oss-20b.json"))
    assert spec.quantization == "mxfp4" and spec.min_compute_capability == (8, 0)
    assert spec.head_dim == 64
    assert (spec.sliding_window, spec.sliding_window_layers) == (128, 12)
    assert spec.max_context == 131072
    assert spec.params_b == pytest.approx(20.9, abs=0.1)
    assert spec.active_params_b == pytest.approx(3.6, abs=0.1)
    assert spec.weights_gb == pytest.approx(13.7, rel=0.03)  # 12.8 GiB checkpoint


def test_fp8_moe_config() -> None:
    spec = spec_from_config(
        "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8", fixture("qwen3-coder-30b-a3b-instruct-fp8.json")
    )
    assert (spec.quantization, spec.quant_group_size) == ("fp8", 128)
    assert spec.min_compute_capability == (8, 9)
    assert spec.params_b == pytest.approx(30.5, abs=0.1)
    assert spec.active_params_b == pytest.approx(3.1, abs=0.25)
    assert spec.max_context == 262144
    assert spec.moe_intermediate_size == 768


def test_multimodal_text_config_nesting() -> None:
    spec = spec_from_config(
        "mistralai/Mistral-Small-3.1-24B-Instruct-2503", fixture("mistral-small-3.1-24b-instruct-2503.json")
    )
    assert (spec.num_layers, spec.num_attention_heads, spec.num_kv_heads, spec.head_dim) == (40, 32, 8, 128)
    assert spec.max_context == 131072
    assert spec.native_dtype == "bfloat16"  # inherited from the top level
    assert spec.params_b == pytest.approx(23.6, abs=0.1)  # the language model; the vision tower is small


def test_llama3_rope_does_not_stretch_the_context() -> None:
    spec = spec_from_config(
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        fixture("meta-llama-3.1-70b-instruct-awq-int4.json"),
    )
    assert spec.max_context == 131072
    assert spec.params_b == pytest.approx(70.6, abs=0.1)
    assert spec.weights_gb == pytest.approx(get_model(spec.id).weights_gb, rel=0.03)  # type: ignore[union-attr]


def test_yarn_rope_scaling_extends_the_context() -> None:
    config = fixture("qwen2.5-coder-7b-instruct.json")
    config["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert spec_from_config("x/y", config).max_context == 131072


def test_missing_kv_heads_means_multi_head_attention() -> None:
    config = fixture("qwen2.5-coder-7b-instruct.json")
    del config["num_key_value_heads"]
    spec = spec_from_config("x/y", config)
    assert spec.num_kv_heads == 28
    assert spec.kv_elements_per_token_per_layer == 2 * 28 * 128


def test_dtype_key_and_unknown_quantization() -> None:
    config = fixture("qwen2.5-coder-7b-instruct.json")
    del config["torch_dtype"]
    config["dtype"] = "float16"
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    spec = spec_from_config("x/y", config)
    assert spec.native_dtype == "float16"
    assert spec.quantization == "bitsandbytes" and spec.min_compute_capability is None
    assert spec.weights_size_gb < 7


def test_config_missing_essentials_is_a_lookup_error() -> None:
    config = fixture("qwen2.5-coder-7b-instruct.json")
    del config["num_hidden_layers"]
    with pytest.raises(ModelLookupError, match="layer count"):
        spec_from_config("x/y", config)
    config = fixture("qwen2.5-coder-7b-instruct.json")
    del config["max_position_embeddings"]
    with pytest.raises(ModelLookupError, match="context length"):
        spec_from_config("x/y", config)


def test_estimate_params_of_a_tied_small_model() -> None:
    # Qwen2.5-Coder-1.5B: tied embeddings, 1.54B parameters per its model card.
    config = {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }
    total, active, _embedding, _expert = estimate_params(config)
    assert total / 1e9 == pytest.approx(1.54, abs=0.02)
    assert active is None


# --------------------------------------------------------------------------------------------
# fetch_model_spec / resolve_model (download boundary patched)
# --------------------------------------------------------------------------------------------


def _hf_errors() -> Any:
    return pytest.importorskip("huggingface_hub.errors")


def _http_error(cls: type[Exception], status: int = 401) -> Exception:
    response = SimpleNamespace(headers={}, status_code=status, request=None, url="https://huggingface.co")
    return cls("refused", response=response)  # type: ignore[call-arg]


class FakeDownload:
    """Stands in for huggingface_hub.hf_hub_download: replays outcomes, records calls."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)


@pytest.fixture
def download(monkeypatch: pytest.MonkeyPatch) -> Any:
    hub = pytest.importorskip("huggingface_hub")

    def install(*outcomes: Any, online: bool = True) -> FakeDownload:
        fake = FakeDownload(*outcomes)
        monkeypatch.setattr(hub, "hf_hub_download", fake)
        monkeypatch.setattr(hf, "_hub_reachable", lambda: online)  # never probe the real network
        return fake

    return install


def test_fetch_public_model(download: Any, tmp_path: Path) -> None:
    fake = download(FIXTURES / "qwen2.5-coder-7b-instruct.json")
    spec = fetch_model_spec("someone/Qwen-7B-finetune", cache_dir=tmp_path)
    assert spec.id == "someone/Qwen-7B-finetune" and not spec.gated
    assert spec.num_layers == 28
    [call] = fake.calls
    assert call["filename"] == "config.json" and call["token"] is False


def test_fetch_gated_model_with_a_token(download: Any, tmp_path: Path) -> None:
    errors = _hf_errors()
    fake = download(
        _http_error(errors.GatedRepoError), FIXTURES / "meta-llama-3.1-70b-instruct-awq-int4.json"
    )
    spec = fetch_model_spec("meta-llama/Llama-3.1-70B-Instruct-AWQ", token="hf_secret", cache_dir=tmp_path)
    assert spec.gated
    assert [c["token"] for c in fake.calls] == [False, "hf_secret"]


def test_fetch_gated_model_without_access(download: Any, tmp_path: Path) -> None:
    errors = _hf_errors()
    download(_http_error(errors.GatedRepoError), _http_error(errors.GatedRepoError))
    with pytest.raises(ModelLookupError) as info:
        fetch_model_spec("meta-llama/Llama-3.3-70B-Instruct", cache_dir=tmp_path)
    message = str(info.value)
    assert (
        "set HF_TOKEN and accept the licence at https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct"
        in message
    )
    assert "\n" not in message


def test_fetch_unknown_model(download: Any, tmp_path: Path) -> None:
    errors = _hf_errors()
    download(_http_error(errors.RepositoryNotFoundError), _http_error(errors.RepositoryNotFoundError))
    with pytest.raises(ModelLookupError, match="check the model id"):
        fetch_model_spec("Qwen/Qwen2.5-Coder-99B", cache_dir=tmp_path)


def test_fetch_offline(download: Any, tmp_path: Path) -> None:
    errors = _hf_errors()
    download(errors.LocalEntryNotFoundError("no connection and nothing cached"))
    with pytest.raises(ModelLookupError) as info:
        fetch_model_spec("someone/new-model", cache_dir=tmp_path)
    message = str(info.value)
    assert "no network" in message and "maider recommend --list-models" in message
    assert str(tmp_path / "hf-configs" / "someone" / "new-model" / "config.json") in message


def test_fetch_connection_error_is_offline(download: Any, tmp_path: Path) -> None:
    download(ConnectionError("Name or service not known"))
    with pytest.raises(ModelLookupError, match="no network"):
        fetch_model_spec("someone/new-model", cache_dir=tmp_path)


def test_fetch_repo_without_config(download: Any, tmp_path: Path) -> None:
    errors = _hf_errors()
    missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    error = _http_error(missing, 404) if missing is not errors.EntryNotFoundError else missing("404")
    download(error)
    with pytest.raises(ModelLookupError, match=r"no config\.json"):
        fetch_model_spec("someone/model-GGUF", cache_dir=tmp_path)


def test_local_config_override_needs_no_download(download: Any, tmp_path: Path) -> None:
    fake = download()  # any call would fail: no outcomes queued
    path = hf.local_config_path("someone/offline-model", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text((FIXTURES / "gpt-oss-20b.json").read_text(encoding="utf-8"), encoding="utf-8")
    spec = fetch_model_spec("someone/offline-model", cache_dir=tmp_path)
    assert spec.quantization == "mxfp4"
    assert fake.calls == []


def test_local_config_path_follows_maider_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAIDER_CACHE_DIR", str(tmp_path))
    assert hf.local_config_path("a/b") == tmp_path / "hf-configs" / "a" / "b" / "config.json"


def test_invalid_model_id() -> None:  # rejected before any lookup
    with pytest.raises(ModelLookupError, match="not a Hugging Face model id"):
        fetch_model_spec("just-a-name")


def test_resolve_prefers_the_table(download: Any) -> None:
    fake = download()
    assert resolve_model("qwen/qwen2.5-coder-32b-instruct-awq") is get_model(
        "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"
    )
    assert fake.calls == []


def test_resolve_without_network_reads_only_the_cache(download: Any, tmp_path: Path) -> None:
    fake = download(FIXTURES / "qwen2.5-coder-7b-instruct.json")
    spec = resolve_model("someone/cached-model", allow_network=False, cache_dir=tmp_path)
    assert spec.num_layers == 28
    assert fake.calls[0]["local_files_only"] is True


def test_unreachable_hub_falls_back_to_the_cache(download: Any, tmp_path: Path) -> None:
    fake = download(FIXTURES / "qwen2.5-coder-7b-instruct.json", online=False)
    assert fetch_model_spec("someone/cached-model", cache_dir=tmp_path).num_layers == 28
    assert fake.calls[0]["local_files_only"] is True


def test_hf_hub_offline_means_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf._hub_reachable() is False
