"""Configuration: command-line flags > environment > ./.env > user config file > defaults.

The environment uses ``MAIDER_*`` names plus the vendors' own variables (``LINODE_TOKEN``,
``HF_TOKEN``...). ``./.env`` also accepts the previous generation's keys (``REGION``, ``TYPE``,
``MODEL_ID``, ``VLLM_*``) so an old project directory keeps working; those short names are
deliberately *not* read from the process environment, where ``TYPE`` or ``REGION`` could mean
anything. The config file is TOML: core settings at the top level, each provider's in its own
table (``[linode]``). Secrets are ``SecretStr`` and every file maider writes that may hold one is 0600.

This module imports pydantic; keep it out of ``maider --help``.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from maider.errors import ConfigError
from maider.paths import config_file_path

if TYPE_CHECKING:  # pragma: no cover
    from maider.provider import Provider
    from maider.retry import RetryPolicy

DOTENV_FILE = ".env"

#: The previous generation's .env keys (shared notes, prior-art §2) and what they mean now.
LEGACY_DOTENV_KEYS: dict[str, str] = {
    "PROVIDER": "provider",
    "REGION": "region",
    "TYPE": "type",
    "MODEL_ID": "model",
    "SERVED_MODEL_NAME": "served_model_name",
    "VLLM_TENSOR_PARALLEL_SIZE": "tensor_parallel_size",
    "VLLM_MAX_MODEL_LEN": "max_model_len",
    "VLLM_GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
    "VLLM_MAX_NUM_SEQS": "max_num_seqs",
    "VLLM_DTYPE": "dtype",
    "VLLM_KV_CACHE_DTYPE": "kv_cache_dtype",
    "VLLM_EXTRA_ARGS": "vllm_extra_args",
    "VLLM_IMAGE": "vllm_image",
    "OPENWEBUI_IMAGE": "openwebui_image",
    "ENABLE_OPENWEBUI": "enable_openwebui",
}

# Pinned images: `latest`/`main` tags made the previous generation unreproducible.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_OPENWEBUI_IMAGE = "ghcr.io/open-webui/open-webui:v0.6.34"


class _LayeredSettings(BaseSettings):
    """Shared source layering for core and provider settings."""

    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, case_sensitive=False, validate_default=True
    )

    #: Filled per load: values from ./.env and from the config file, keyed by field name.
    _dotenv_values: ClassVar[dict[str, Any]] = {}
    _file_values: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=dict(cls._dotenv_values)),
            InitSettingsSource(settings_cls, init_kwargs=dict(cls._file_values)),
        )


class MaiderSettings(_LayeredSettings):
    """Core settings: what to run and where."""

    model_config = SettingsConfigDict(env_prefix="MAIDER_")

    provider: str | None = None
    region: str | None = None
    type: str | None = Field(default=None, description="GPU VM type id (Linode plan, DO size, Scaleway type)")
    model: str = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
    served_model_name: str | None = None
    max_model_len: int | None = Field(default=None, ge=256)
    gpu_memory_utilization: float = Field(default=0.90, ge=0.30, le=0.98)
    max_num_seqs: int | None = Field(default=None, ge=1, le=1024)
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=16)
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    vllm_extra_args: str = ""
    vllm_image: str = DEFAULT_VLLM_IMAGE
    openwebui_image: str = DEFAULT_OPENWEBUI_IMAGE
    enable_openwebui: bool = True
    ssh_public_key: Path | None = Field(
        default=None, description="public key to install on the VM; default: a key maider manages"
    )
    hf_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_HF_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    )
    usd_per_eur: float = Field(default=1.15, gt=0, description="to compare EUR and USD prices")

    # -- the session lifecycle (maider up/down) -------------------------------------------------
    #: Who may reach the VM's SSH port. None: the caller's public IPv4 (/32), read from my_ip_url.
    #: A list in the config file; in the environment, JSON or comma-separated CIDRs. The union
    #: with str lets pydantic-settings pass a non-JSON environment value through to the validator.
    allowed_ssh_cidrs: list[str] | str | None = Field(
        default=None, description="CIDRs allowed to reach the VM's SSH port; default: your public IPv4"
    )
    my_ip_url: str = Field(
        default="https://checkip.amazonaws.com",
        description="URL answering with the caller's public IPv4 (used when allowed_ssh_cidrs is unset)",
    )
    poll_interval: float = Field(default=5.0, gt=0, le=300, description="seconds between status checks")
    timeout_instance: float = Field(
        default=900.0, gt=0, description="seconds for a new VM to run with a public IP"
    )
    timeout_ssh: float = Field(default=600.0, gt=0, description="seconds for the VM to answer SSH")
    timeout_cloud_init: float = Field(
        default=1800.0, gt=0, description="seconds for cloud-init to finish (driver, Docker, image pulls)"
    )
    timeout_vllm: float = Field(
        default=3600.0, gt=0, description="seconds for vLLM to download and load the model and answer"
    )
    timeout_delete: float = Field(
        default=600.0, gt=0, description="seconds to wait for the provider to confirm a VM is gone"
    )
    # The idle watchdog (on the VM, and a second line on the laptop): see README "Idle watchdog".
    watchdog: bool = Field(default=True, description="destroy the VM when idle or too old (on by default)")
    idle_timeout_minutes: float = Field(
        default=45.0, gt=0, le=7 * 24 * 60, description="destroy after this long without inference requests"
    )
    max_lifetime_hours: float = Field(
        default=8.0, gt=0, le=14 * 24, description="destroy this long after the VM started, even when in use"
    )
    watchdog_warn_minutes: float = Field(
        default=10.0, ge=0, le=24 * 60, description="warn (desktop notification) this long before acting"
    )
    watchdog_poll_seconds: float = Field(
        default=30.0, gt=0, le=600, description="how often the watchdogs read vLLM's request counters"
    )

    @field_validator("provider", "region", "type", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("provider", mode="after")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @field_validator("allowed_ssh_cidrs", mode="before")
    @classmethod
    def _cidr_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.replace(",", " ").split() if part]
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError('must be a non-empty list of CIDRs, e.g. ["203.0.113.7/32"]')
        import ipaddress

        normalized = []
        for item in value:
            try:
                normalized.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR (e.g. 203.0.113.7/32)") from None
        return normalized

    @field_validator("hf_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value


class ProviderSettings(_LayeredSettings):
    """Base for a provider's settings. Subclasses set ``env_prefix`` (``MAIDER_<ID>_``) and add fields."""

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # `LINODE_TOKEN=` (set but empty) means "not configured", not "an empty token".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    api_url: str | None = Field(default=None, description="override the API base URL (proxy, simulator)")
    request_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds per API request")
    max_attempts: int = Field(default=5, ge=1, le=20, description="tries per API call (429/5xx/network)")
    retry_max_seconds: float = Field(default=120.0, gt=0, le=3600, description="give up retrying after this")
    retry_initial_wait: float = Field(default=0.5, ge=0, le=60, description="first back-off wait, seconds")
    retry_max_wait: float = Field(
        default=30.0, ge=0, le=600, description="longest single wait (Retry-After too)"
    )

    def retry_policy(self) -> RetryPolicy:
        from maider.retry import RetryPolicy

        return RetryPolicy(
            attempts=self.max_attempts,
            max_seconds=self.retry_max_seconds,
            initial_wait=self.retry_initial_wait,
            max_wait=self.retry_max_wait,
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The config file as a dict ({} when absent). Malformed TOML is one clear ConfigError."""
    path = path or config_file_path()
    if not path.exists():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML ({exc}); fix it or run `maider wizard`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def read_dotenv(path: Path | None = None) -> dict[str, str]:
    path = path or Path(DOTENV_FILE)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values  # a pydantic-settings dependency

    return {k.upper(): v for k, v in dotenv_values(path).items() if v is not None}


def _env_names(settings_cls: type[BaseSettings], field_name: str) -> list[str]:
    """Every environment-style key that sets `field_name`, most specific first."""
    info = settings_cls.model_fields[field_name]
    names: list[str] = []
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        names += [c.upper() for c in alias.choices if isinstance(c, str)]
    elif isinstance(alias, str):
        names.append(alias.upper())
    else:
        prefix = str(settings_cls.model_config.get("env_prefix", ""))
        names.append(f"{prefix}{field_name}".upper())
    return names


def _from_dotenv(settings_cls: type[BaseSettings], dotenv: Mapping[str, str], legacy: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in settings_cls.model_fields:
        for key in _env_names(settings_cls, name):
            if key in dotenv:
                values[name] = dotenv[key]
                break
    if legacy:
        for key, name in LEGACY_DOTENV_KEYS.items():
            if key in dotenv and name not in values:
                values[name] = dotenv[key]
    return values


def _check_file_keys(settings_cls: type[BaseSettings], table: Mapping[str, Any], where: str) -> None:
    known = set(settings_cls.model_fields)
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known settings: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown setting {key!r} in {where}: {hint}")


def _build(
    settings_cls: type[_LayeredSettings],
    flags: Mapping[str, Any],
    dotenv: dict[str, Any],
    file_values: dict[str, Any],
    where: str,
) -> Any:
    # The custom sources read these class attributes; one load at a time is all the CLI needs.
    settings_cls._dotenv_values = dotenv
    settings_cls._file_values = file_values
    try:
        return settings_cls(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
    finally:
        settings_cls._dotenv_values = {}
        settings_cls._file_values = {}


def format_validation_error(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        value = err.get("input")
        shown = (
            "" if "token" in field or "secret" in field or isinstance(value, dict) else f" (got {value!r})"
        )
        lines.append(f"setting {field!r}{shown}: {err['msg']}")
    return f"invalid configuration ({where}): " + "; ".join(lines)


def load_settings(flags: Mapping[str, Any] | None = None, config_path: Path | None = None) -> MaiderSettings:
    """Core settings with the full precedence chain. Raises ConfigError (one line) on bad input."""
    path = config_path or config_file_path()
    data = read_config_file(path)
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    from maider import plugins

    for info in plugins.discover():
        if info.id in top:
            raise ConfigError(
                f'config file {path}: {info.id!r} must be a table of {info.id} settings, e.g. [{info.id}] token = "…"'
            )
    _check_file_keys(MaiderSettings, top, f"config file {path}")
    dotenv = _from_dotenv(MaiderSettings, read_dotenv(), legacy=True)
    settings: MaiderSettings = _build(
        MaiderSettings, flags or {}, dotenv, top, f"flags, environment, ./.env or {path}"
    )
    return settings


def load_provider_settings(
    provider_cls: type[Provider], overrides: Mapping[str, Any] | None = None, config_path: Path | None = None
) -> BaseSettings:
    settings_cls = provider_cls.settings_class()
    if not issubclass(settings_cls, _LayeredSettings):
        raise ConfigError(
            f"provider {provider_cls.id!r}: settings_model must subclass maider.config.ProviderSettings"
        )
    path = config_path or config_file_path()
    table = read_config_file(path).get(provider_cls.id, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: {provider_cls.id!r} must be a table ([{provider_cls.id}])")
    _check_file_keys(settings_cls, table, f"[{provider_cls.id}] of config file {path}")
    dotenv = _from_dotenv(settings_cls, read_dotenv(), legacy=False)
    return _build(settings_cls, overrides or {}, dotenv, dict(table), f"{provider_cls.display_name} settings")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_private_file(path: Path, text: str) -> None:
    """Atomically write a file readable by its owner only (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        tmp.chmod(0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_config_file(data: Mapping[str, Any], path: Path | None = None) -> Path:
    import tomli_w

    path = path or config_file_path()
    header = "# maider configuration (written by `maider wizard`; may hold tokens, keep it 0600)\n"
    write_private_file(path, header + tomli_w.dumps(dict(data)))
    return path
