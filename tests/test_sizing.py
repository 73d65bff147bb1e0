"""The fit calculator: real models on real GPU types, checked against what vLLM would do.

VM types are built inline (not taken from provider catalogs) so these tests pin the sizing rules
only. Memory figures follow vLLM: weights + overhead + one max_model_len sequence of KV cache must
fit in gpu_memory_utilization × the memory the driver reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from maider import sizing
from maider.models import ModelSpec, get_model
from maider.provider import GPUModel, Price, VMType
from maider.sizing import (
    DEFAULT_MAX_NUM_SEQS,
    VLLMSettings,
    estimate_fit,
    kv_bytes_per_token_per_layer,
    kv_cache_gib,
    visible_vram_gib,
)

REPO = Path(__file__).resolve().parent.parent

QUADRO_RTX_6000 = GPUModel("Quadro RTX 6000", 24, "Turing", compute_capability=(7, 5))
RTX_4000_ADA = GPUModel("RTX 4000 Ada", 20, "Ada Lovelace", compute_capability=(8, 9))
L4 = GPUModel("L4", 24, "Ada Lovelace", compute_capability=(8, 9))
L40S = GPUModel("L40S", 48, "Ada Lovelace", compute_capability=(8, 9))
A100_80 = GPUModel("A100", 80, "Ampere", compute_capability=(8, 0))
H100 = GPUModel("H100", 80, "Hopper", compute_capability=(9, 0))
MI300X = GPUModel("MI300X", 192, "CDNA3", vendor="AMD")


def vm(
    gpu: GPUModel, count: int = 1, *, price: float = 1.0, currency: str = "USD", regions=("r1",)
) -> VMType:
    return VMType(
        id=f"{gpu.name.lower().replace(' ', '-')}-x{count}",
        label=f"{count}× {gpu.name}",
        provider="test",
        gpu=gpu,
        gpu_count=count,
        vcpus=8 * count,
        ram_gb=64.0 * count,
        hourly_price=Price(price, currency),
        regions=tuple(regions),
    )


def model(model_id: str) -> ModelSpec:
    spec = get_model(model_id)
    assert spec is not None, model_id
    return spec


QWEN32_AWQ = "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"
QWEN3_FP8 = "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8"


# --------------------------------------------------------------------------------------------
# The product issue's examples
# --------------------------------------------------------------------------------------------


def test_qwen_32b_awq_at_32k_fits_one_l40s() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L40S), max_model_len=32768)
    assert fit.fits, fit.problems
    assert fit.settings.max_model_len == 32768
    assert fit.settings.tensor_parallel_size == 1
    # 19.3 GB of weights = 18.0 GiB; 64 layers × 8 KV heads × 128 × 2 (K, V) × 2 bytes = 256 KiB/token.
    assert fit.weights_gib == pytest.approx(17.97, abs=0.05)
    assert fit.kv_bytes_per_token == 262144
    assert fit.kv_cache_gib == pytest.approx(8.0, abs=0.01)
    assert fit.total_needed_gib < fit.usable_gib
    assert fit.full_length_sequences >= 2


def test_qwen_32b_awq_does_not_fit_rtx_4000_ada_20gb() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(RTX_4000_ADA), max_model_len=32768)
    assert not fit.fits
    assert fit.weights_gib > fit.usable_gib  # 18 GiB of weights in 17.6 GiB usable
    [problem] = fit.problems
    assert "does not fit" in problem and "GB of GPU memory in total" in problem


def test_bf16_model_on_turing_is_served_in_float16_with_a_warning() -> None:
    fit = estimate_fit(model("Qwen/Qwen2.5-Coder-7B-Instruct"), vm(QUADRO_RTX_6000))
    assert fit.fits, fit.problems
    assert fit.settings.dtype == "float16"
    args = fit.settings.to_args()
    assert args[args.index("--dtype") + 1] == "float16"
    assert any("bfloat16" in w and "float16" in w for w in fit.warnings)


def test_explicit_bfloat16_on_turing_is_a_problem() -> None:
    fit = estimate_fit(model("Qwen/Qwen2.5-Coder-7B-Instruct"), vm(QUADRO_RTX_6000), dtype="bfloat16")
    assert not fit.fits
    assert any("no bfloat16" in p and "float16" in p for p in fit.problems)


def test_default_model_runs_on_linode_rtx_6000() -> None:
    """The default (AWQ, float16) must work on the cheapest GPU maider targets, without dtype changes."""
    fit = estimate_fit(model("Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"), vm(QUADRO_RTX_6000))
    assert fit.fits, fit.problems
    assert fit.settings.dtype == "auto"
    assert fit.settings.max_model_len == 32768
    assert any("predates Ampere" in w for w in fit.warnings)


def test_bf16_model_on_ampere_keeps_auto_dtype() -> None:
    fit = estimate_fit(model("Qwen/Qwen2.5-Coder-7B-Instruct"), vm(A100_80), max_model_len=32768)
    assert fit.settings.dtype == "auto"
    assert not fit.warnings  # and no note about the context either: it was given


@pytest.mark.parametrize("gpu", [QUADRO_RTX_6000, A100_80], ids=["turing-7.5", "ampere-8.0"])
def test_fp8_model_refused_below_compute_capability_8_9(gpu: GPUModel) -> None:
    fit = estimate_fit(model(QWEN3_FP8), vm(gpu, 2))
    assert not fit.fits
    fp8 = [p for p in fit.problems if "FP8 weights" in p]
    assert len(fp8) == 1
    assert "8.9" in fp8[0]
    assert "Qwen/Qwen3-Coder-30B-A3B-Instruct " in fp8[0]  # the non-FP8 sibling is suggested


def test_fp8_model_allowed_on_l4() -> None:
    one = estimate_fit(model(QWEN3_FP8), vm(L4))
    assert not any("FP8 weights" in p for p in one.problems)
    assert not one.fits  # 31 GB of weights on a 24 GB card: memory, not FP8, is the problem
    two = estimate_fit(model(QWEN3_FP8), vm(L4, 2))
    assert two.fits, two.problems
    assert not two.settings.enable_expert_parallel  # 768 / 2 = 384 keeps whole 128-blocks


def test_kv_cache_fp8_needs_8_9_and_halves_the_cache() -> None:
    spec = model("Qwen/Qwen2.5-Coder-7B-Instruct")
    refused = estimate_fit(spec, vm(A100_80), kv_cache_dtype="fp8")
    assert any("kv_cache_dtype fp8" in p for p in refused.problems)
    auto = estimate_fit(spec, vm(L40S), max_model_len=32768)
    fp8 = estimate_fit(spec, vm(L40S), max_model_len=32768, kv_cache_dtype="fp8")
    assert fp8.fits
    assert fp8.kv_cache_gib == pytest.approx(auto.kv_cache_gib / 2)
    assert "--kv-cache-dtype" in fp8.settings.to_args()


def test_tp_3_does_not_divide_40_heads() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L4, 3))
    assert not fit.fits
    [problem] = [p for p in fit.problems if "TP 3" in p]
    assert "40 attention heads" in problem
    assert "1, 2, 4 or 8 GPUs" in problem


def test_tensor_parallel_size_must_equal_gpu_count() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L40S, 2), tensor_parallel_size=1)
    assert not fit.fits
    assert any("must equal the 2 GPU(s)" in p for p in fit.problems)
    assert estimate_fit(model(QWEN32_AWQ), vm(L40S, 2)).settings.tensor_parallel_size == 2


def test_context_above_model_max_is_an_error_with_a_suggestion() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(H100), max_model_len=65536)
    assert not fit.fits
    [problem] = fit.problems
    assert "65536" in problem and "32768" in problem


def test_suggested_context_is_the_smaller_of_model_max_and_what_fits() -> None:
    spec = replace(model(QWEN32_AWQ), max_context=131072)  # e.g. a YaRN-extended copy
    fit = estimate_fit(spec, vm(L40S), max_model_len=262144)
    [above, _memory] = fit.problems
    assert f"use {fit.max_context_fit} or less" in above
    assert fit.max_context_fit < 131072


def test_unset_context_picks_32k_and_says_so() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L40S))
    assert fit.settings.max_model_len == 32768
    assert any("max_model_len not given: using 32768" in w for w in fit.warnings)


def test_unset_context_shrinks_to_what_fits() -> None:
    rtx_a6000 = GPUModel("RTX A6000", 48, "Ampere", compute_capability=(8, 6))
    fit = estimate_fit(model("casperhansen/llama-3.3-70b-instruct-awq"), vm(rtx_a6000))
    assert fit.fits, fit.problems
    assert 8192 <= fit.settings.max_model_len < 32768
    assert fit.settings.max_model_len % 1024 == 0
    assert fit.settings.max_model_len == fit.max_context_fit
    assert any("the most that fits" in w for w in fit.warnings)


def test_unset_context_too_small_to_be_useful_is_a_problem() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L4))  # only ~1k tokens left next to 18 GiB of weights
    assert not fit.fits
    assert any("tokens of context fit" in p and "8192" in p for p in fit.problems)


def test_explicit_context_too_long_for_memory() -> None:
    fit = estimate_fit(
        replace(model("Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"), max_context=131072), vm(L4), max_model_len=65536
    )
    [problem] = fit.problems
    assert "65536-token context needs" in problem
    assert f"max_model_len {fit.max_context_fit} or less" in problem


def test_gpt_oss_120b_fits_one_h100_even_at_full_context() -> None:
    spec = model("openai/gpt-oss-120b")
    fit = estimate_fit(spec, vm(H100))
    assert fit.fits, fit.problems
    full = estimate_fit(spec, vm(H100), max_model_len=131072)
    assert full.fits, full.problems
    # Half the layers use a 128-token window: far less cache than 36 full layers would need.
    assert full.kv_cache_gib < 0.6 * (36 * 2 * 8 * 64 * 2 * 131072 / 2**30)


def test_gpt_oss_needs_ampere() -> None:
    fit = estimate_fit(model("openai/gpt-oss-20b"), vm(QUADRO_RTX_6000))
    assert any("MXFP4" in p and "8.0" in p for p in fit.problems)
    assert estimate_fit(model("openai/gpt-oss-20b"), vm(L4)).fits


def test_70b_awq_does_not_fit_24gb() -> None:
    for model_id in (
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "casperhansen/llama-3.3-70b-instruct-awq",
    ):
        fit = estimate_fit(model(model_id), vm(L4))
        assert not fit.fits
        [problem] = fit.problems
        needed = int(problem.split("needs at least ")[1].split(" GB")[0])
        assert 45 <= needed <= 70
    assert estimate_fit(model("casperhansen/llama-3.3-70b-instruct-awq"), vm(L40S, 2)).fits


def test_mla_kv_cache_is_smaller_than_the_gqa_formula() -> None:
    spec = model("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct")
    assert spec.uses_mla
    mla = kv_bytes_per_token_per_layer(spec)
    gqa = 2 * spec.num_kv_heads * spec.head_dim * 2
    assert mla == (512 + 64) * 2
    assert mla < gqa / 7
    # vLLM keeps the whole latent on every GPU: tensor parallelism does not shrink it.
    assert kv_bytes_per_token_per_layer(spec, 2) == mla


def test_gqa_kv_cache_is_split_by_tp_and_replicated_beyond_kv_heads() -> None:
    spec = model("Qwen/Qwen3-Coder-30B-A3B-Instruct")  # 4 KV heads
    one = kv_bytes_per_token_per_layer(spec, 1)
    assert kv_bytes_per_token_per_layer(spec, 2) == one / 2
    assert kv_bytes_per_token_per_layer(spec, 4) == one / 4
    assert kv_bytes_per_token_per_layer(spec, 8) == one / 4  # one replicated head per GPU


def test_480b_fp8_needs_expert_parallel_on_8_gpus() -> None:
    fit = estimate_fit(model("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8"), vm(H100, 8))
    assert fit.fits, fit.problems
    assert fit.settings.enable_expert_parallel
    assert "--enable-expert-parallel" in fit.settings.to_args()
    assert not estimate_fit(model("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8"), vm(H100, 4)).fits


def test_awq_split_must_keep_whole_groups() -> None:
    fit = estimate_fit(model("Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"), vm(H100, 8))
    [problem] = fit.problems
    assert "13824" in problem and "128" in problem and "1, 2 or 4 GPUs" in problem
    # Qwen padded the 72B AWQ checkpoint so that 8-way TP works.
    assert estimate_fit(model("Qwen/Qwen2.5-72B-Instruct-AWQ"), vm(L40S, 8)).fits


def test_amd_gpus_warn_about_the_rocm_image() -> None:
    fit = estimate_fit(model(QWEN3_FP8), vm(MI300X))
    assert fit.fits, fit.problems
    assert any("ROCm" in w for w in fit.warnings)


def test_unknown_nvidia_capability_is_a_warning_not_a_refusal() -> None:
    mystery = GPUModel("Mystery GPU", 48, "Unknown")
    fit = estimate_fit(model(QWEN3_FP8), vm(mystery))
    assert fit.fits
    assert any("not checked" in w for w in fit.warnings)


def test_model_too_large_names_the_memory_needed() -> None:
    fit = estimate_fit(model("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8"), vm(H100))
    [problem] = fit.problems
    assert "482.0 GB of weights" in problem
    needed = int(problem.split("needs at least ")[1].split(" GB")[0])
    assert 482 < needed < 640


# --------------------------------------------------------------------------------------------
# Building blocks and settings
# --------------------------------------------------------------------------------------------


def test_visible_vram_accounts_for_ecc_and_hbm() -> None:
    assert visible_vram_gib(L40S) == pytest.approx(45.0)  # nvidia-smi: 46068 MiB
    assert visible_vram_gib(L4) == pytest.approx(22.5)
    assert visible_vram_gib(H100) == pytest.approx(79.2)
    assert visible_vram_gib(A100_80) == pytest.approx(79.2)  # "A100" is not mistaken for an A10
    assert visible_vram_gib(RTX_4000_ADA) == pytest.approx(19.6)


def test_kv_cache_matches_the_textbook_formula() -> None:
    spec = model("Qwen/Qwen2.5-Coder-7B-Instruct")
    tokens = 10_000
    expected = 2 * 28 * 4 * 128 * 2 * tokens / 2**30  # 2 × layers × kv heads × head dim × bytes × tokens
    assert kv_cache_gib(spec, tokens) == pytest.approx(expected)


def test_overhead_is_within_realistic_bounds() -> None:
    for spec in (model("Qwen/Qwen2.5-Coder-1.5B-Instruct"), model("Qwen/Qwen2.5-72B-Instruct-AWQ")):
        for tp in (1, 2, 8):
            assert 1.5 <= sizing.overhead_gib(spec, tp) <= 2.8


def test_settings_to_args() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L40S, 2), max_model_len=16384)
    args = fit.settings.to_args()
    assert "--model" not in args  # `vllm serve <model>` takes it positionally
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-model-len") + 1] == "16384"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert args[args.index("--max-num-seqs") + 1] == str(DEFAULT_MAX_NUM_SEQS)
    assert "--quantization" not in args  # vLLM picks awq_marlin itself
    assert "--dtype" not in args and "--kv-cache-dtype" not in args
    assert fit.settings.quantization == "awq"


def test_settings_optional_flags() -> None:
    settings = VLLMSettings(
        model="m/x",
        served_model_name="x",
        trust_remote_code=True,
        tool_call_parser="hermes",
        extra_args=("--foo", "1"),
    )
    args = settings.to_args()
    assert args[:2] == ["--served-model-name", "x"]
    assert "--trust-remote-code" in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in args
    assert args[-2:] == ["--foo", "1"]


def test_mistral_format_model_gets_its_loader_flags() -> None:
    fit = estimate_fit(model("mistralai/Devstral-Small-2507"), vm(L40S, 2))
    assert fit.fits, fit.problems
    args = fit.settings.to_args()
    assert args[args.index("--tokenizer-mode") + 1] == "mistral"
    assert "--load-format" in args and "--config-format" in args


def test_max_num_seqs_none_means_the_default() -> None:
    fit = estimate_fit(model(QWEN32_AWQ), vm(L40S), max_num_seqs=None)
    assert fit.settings.max_num_seqs == DEFAULT_MAX_NUM_SEQS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": "float32"},
        {"kv_cache_dtype": "int8"},
        {"gpu_memory_utilization": 0},
        {"gpu_memory_utilization": 1.2},
        {"max_num_seqs": 0},
        {"max_model_len": 0},
        {"tensor_parallel_size": 0},
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        estimate_fit(model(QWEN32_AWQ), vm(L40S), **kwargs)  # type: ignore[arg-type]


def test_lower_utilization_leaves_less_room() -> None:
    high = estimate_fit(model(QWEN32_AWQ), vm(L40S))
    low = estimate_fit(model(QWEN32_AWQ), vm(L40S), gpu_memory_utilization=0.6)
    assert low.usable_gib < high.usable_gib
    assert low.max_context_fit < high.max_context_fit


def test_summary_is_one_line() -> None:
    ok = estimate_fit(model(QWEN32_AWQ), vm(L40S))
    bad = estimate_fit(model(QWEN32_AWQ), vm(RTX_4000_ADA))
    assert "fits" in ok.summary() and "\n" not in ok.summary()
    assert "does not fit" in bad.summary()


# --------------------------------------------------------------------------------------------
# Import cost
# --------------------------------------------------------------------------------------------


def test_importing_sizing_and_models_stays_light() -> None:
    code = (
        "import sys, maider.sizing, maider.models, maider.hf\n"
        "heavy = [m for m in ('pydantic', 'huggingface_hub', 'pydantic_settings', 'rich', 'typer') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == ""
