"""DigitalOcean settings: the API token and where the API lives."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings

DEFAULT_API_URL = "https://api.digitalocean.com/v2/"


class DigitalOceanSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="MAIDER_DIGITALOCEAN_")

    token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "MAIDER_DIGITALOCEAN_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"
        ),
        description="personal access token with droplet, firewall and ssh_key scopes",
    )
