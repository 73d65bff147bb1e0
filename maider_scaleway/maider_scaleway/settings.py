"""Scaleway settings: API key pair, project and where the API lives."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings

DEFAULT_API_URL = "https://api.scaleway.com"


class ScalewaySettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="MAIDER_SCALEWAY_")

    access_key: str | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_SCALEWAY_ACCESS_KEY", "SCW_ACCESS_KEY")
    )
    secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_SCALEWAY_SECRET_KEY", "SCW_SECRET_KEY")
    )
    project_id: str | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_SCALEWAY_PROJECT_ID", "SCW_DEFAULT_PROJECT_ID")
    )
    api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_SCALEWAY_API_URL", "SCW_API_URL")
    )
