"""Linode settings: the API token and where the API lives."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings

DEFAULT_API_URL = "https://api.linode.com/v4"


class LinodeSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="MAIDER_LINODE_")

    token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MAIDER_LINODE_TOKEN", "LINODE_TOKEN", "LINODE_CLI_TOKEN"),
        description="personal access token with Linodes, Firewalls and SSH keys read/write",
    )
    image: str = Field(default="linode/ubuntu24.04", description="image for new GPU Linodes")
    # The API's maximum: a listing then costs one request per 500 objects (the API default is 100).
    page_size: int = Field(default=500, ge=25, le=500, description="objects per page when listing")
