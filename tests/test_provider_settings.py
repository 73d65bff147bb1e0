"""Each provider's settings: vendor variables, [provider] table, .env, secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from maider import plugins
from maider.config import write_config_file
from maider.errors import ConfigError
from tests.conftest import require_providers


def test_linode_token_from_vendor_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    monkeypatch.setenv("LINODE_TOKEN", "lin-secret")
    provider = plugins.get_provider_class("linode")()
    assert provider.has_credentials()
    assert "lin-secret" not in repr(provider.settings)


def test_provider_table_in_config_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    monkeypatch.delenv("MAIDER_LINODE_API_URL")
    write_config_file({"linode": {"token": "from-file", "api_url": "http://127.0.0.1:7/v4"}})
    cls = plugins.get_provider_class("linode")
    settings = cls.load_settings()
    assert settings.token.get_secret_value() == "from-file"  # type: ignore[attr-defined]
    assert settings.api_url == "http://127.0.0.1:7/v4"  # type: ignore[attr-defined]
    monkeypatch.setenv("MAIDER_LINODE_API_URL", "http://127.0.0.1:8/v4")
    monkeypatch.setenv("LINODE_TOKEN", "from-env")
    settings = cls.load_settings()
    assert settings.api_url == "http://127.0.0.1:8/v4"  # type: ignore[attr-defined]
    assert settings.token.get_secret_value() == "from-env"  # type: ignore[attr-defined]


def test_digitalocean_token_from_dotenv() -> None:
    require_providers("digitalocean")
    Path(".env").write_text("DIGITALOCEAN_TOKEN=do-secret\n", encoding="utf-8")
    assert plugins.get_provider_class("digitalocean")().has_credentials()


def test_scaleway_needs_all_three_values(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("scaleway")
    cls = plugins.get_provider_class("scaleway")
    monkeypatch.setenv("SCW_ACCESS_KEY", "SCWXXXXXXXXXXXXXXXXX")
    monkeypatch.setenv("SCW_SECRET_KEY", "11111111-2222-3333-4444-555555555555")
    assert not cls().has_credentials()
    monkeypatch.setenv("SCW_DEFAULT_PROJECT_ID", "11111111-2222-3333-4444-555555555555")
    assert cls().has_credentials()


def test_unknown_key_in_provider_table_is_named() -> None:
    require_providers("linode")
    write_config_file({"linode": {"tokne": "x"}})
    with pytest.raises(ConfigError, match="did you mean 'token'"):
        plugins.get_provider_class("linode").load_settings()


def test_providers_command_reports_credentials(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    assert "missing: set LINODE_TOKEN" in cli("providers").stdout
    monkeypatch.setenv("LINODE_TOKEN", "tok")
    out = cli("providers").stdout
    assert "configured" in out and "tok" not in out.replace("tokens", "")


def test_an_empty_token_variable_means_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    monkeypatch.setenv("LINODE_TOKEN", "")
    assert not plugins.get_provider_class("linode")().has_credentials()
