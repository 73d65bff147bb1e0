"""Configuration precedence, legacy .env keys, secrets and file permissions."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from maider.config import load_settings, read_config_file, write_config_file
from maider.errors import ConfigError
from maider.paths import config_file_path


def _write_config(text: str) -> Path:
    path = config_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_source() -> None:
    s = load_settings()
    assert s.model == "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
    assert s.provider is None and s.region is None
    assert s.gpu_memory_utilization == pytest.approx(0.90)


def test_precedence_flags_over_env_over_dotenv_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    _write_config('region = "from-file"\ntype = "file-type"\nmodel = "file/model"\nmax_model_len = 1111\n')
    Path(".env").write_text("MAIDER_REGION=from-dotenv\nMAIDER_TYPE=dotenv-type\n", encoding="utf-8")
    monkeypatch.setenv("MAIDER_REGION", "from-env")
    s = load_settings({"region": "from-flag"})
    assert s.region == "from-flag"
    s = load_settings()
    assert s.region == "from-env"
    assert s.type == "dotenv-type"  # .env beats the file
    assert s.model == "file/model"  # the file beats the default
    assert s.max_model_len == 1111


def test_previous_generation_dotenv_keys_are_understood() -> None:
    Path(".env").write_text(
        "REGION=de-fra-2\nTYPE=g2-gpu-rtx4000a1-s\nMODEL_ID=Qwen/Qwen2.5-Coder-7B-Instruct\n"
        "SERVED_MODEL_NAME=coder\nVLLM_MAX_MODEL_LEN=16384\nVLLM_GPU_MEMORY_UTILIZATION=0.85\n"
        "VLLM_DTYPE=float16\nHUGGING_FACE_HUB_TOKEN=hf_legacy_secret\nPROVIDER=Linode\n",
        encoding="utf-8",
    )
    s = load_settings()
    assert (s.region, s.type, s.model) == ("de-fra-2", "g2-gpu-rtx4000a1-s", "Qwen/Qwen2.5-Coder-7B-Instruct")
    assert s.max_model_len == 16384 and s.gpu_memory_utilization == pytest.approx(0.85)
    assert s.dtype == "float16" and s.served_model_name == "coder" and s.provider == "linode"
    assert s.hf_token is not None and s.hf_token.get_secret_value() == "hf_legacy_secret"


def test_short_legacy_names_are_not_read_from_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TYPE", "something-else-entirely")
    monkeypatch.setenv("REGION", "nope")
    s = load_settings()
    assert s.type is None and s.region is None


def test_hf_token_from_vendor_variable_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret_value")
    s = load_settings()
    assert s.hf_token is not None
    assert "hf_very_secret_value" not in repr(s) and "hf_very_secret_value" not in str(s.model_dump())


def test_malformed_config_file_is_one_clear_error() -> None:
    path = _write_config('region = "us-ord\n')
    with pytest.raises(ConfigError) as info:
        read_config_file()
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_unknown_setting_in_file_suggests_the_right_name() -> None:
    _write_config('regoin = "us-ord"\n')
    with pytest.raises(ConfigError, match="did you mean 'region'"):
        load_settings()


def test_out_of_range_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIDER_GPU_MEMORY_UTILIZATION", "1.5")
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_settings()


def test_written_config_is_private_and_round_trips() -> None:
    path = write_config_file({"provider": "linode", "linode": {"token": "tok-secret"}})
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert read_config_file(path)["linode"]["token"] == "tok-secret"


def test_config_path_follows_maider_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAIDER_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert config_file_path() == tmp_path / "elsewhere.toml"
