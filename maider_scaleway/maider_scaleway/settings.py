"""Scaleway settings: API key pair, project, zone and where the API lives."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings

DEFAULT_API_URL = "https://api.scaleway.com"
#: Where most GPU types are sold (shared notes §4.3); also where the SSH security group is made first.
DEFAULT_ZONE = "fr-par-2"


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
    zone: str = Field(
        default=DEFAULT_ZONE,
        validation_alias=AliasChoices("MAIDER_SCALEWAY_ZONE", "SCW_DEFAULT_ZONE"),
        description="zone of the SSH security group maider creates first (and of the credential check)",
    )
    # GPU types take no local volume, so the root disk is Block Storage (sbs_volume). It holds the
    # OS, the vLLM image (~10 GB) and the model weights; 200 GB fits a 70B AWQ model with room
    # to spare and costs a few cents an hour next to a GPU.
    root_volume_gb: int = Field(
        default=200,
        ge=20,
        le=10_000,
        description="size of the Block Storage root volume, in GB",
    )
    # Deleting a server only detaches its Block Storage root volume, which stays billed until it
    # is deleted too, and that is possible only once the server is gone: so a delete waits for
    # that. A GPU server takes a minute or two to terminate; past this, the delete fails naming
    # the volume, and running it again finishes the job.
    delete_wait_seconds: float = Field(
        default=600,
        ge=0,
        le=3600,
        description="how long deleting a server waits for it (and its Block Storage volume) to be gone",
    )
    # The Instance API accepts 1..100 items per page; a smaller page only helps tests.
    page_size: int = Field(
        default=100,
        ge=1,
        le=100,
        description="items per page in list calls",
    )
