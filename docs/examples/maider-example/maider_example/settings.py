"""Settings: environment MAIDER_EXAMPLE_TOKEN or EXAMPLE_TOKEN, or [example] in maider's config file."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings


class ExampleSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="MAIDER_EXAMPLE_")

    token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MAIDER_EXAMPLE_TOKEN", "EXAMPLE_TOKEN")
    )
