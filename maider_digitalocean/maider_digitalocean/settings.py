"""DigitalOcean settings: the API token and where the API lives."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from maider.config import ProviderSettings

DEFAULT_API_URL = "https://api.digitalocean.com/v2/"


def normalize_api_url(url: str) -> str:
    """The API root in the one form python-digitalocean handles: ``<scheme>://<host>[/prefix]/v2/``.

    The SDK joins paths with ``urljoin(end_point, "droplets/")``: without the trailing slash the
    ``v2`` segment is dropped (every call then 404s), and without ``/v2`` at all the calls miss
    the API version. So ``http://h:1``, ``http://h:1/v2`` and ``http://h:1/v2/`` all mean
    ``http://h:1/v2/``, and a proxy prefix (``https://proxy/do``) gets ``/v2/`` appended.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://api.digitalocean.com/v2/")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith("/v2"):
        path += "/v2"
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", ""))


class DigitalOceanSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="MAIDER_DIGITALOCEAN_")

    token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "MAIDER_DIGITALOCEAN_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"
        ),
        description="personal access token with droplet, firewall and ssh_key scopes",
    )

    # DigitalOcean's public API cannot create tokens, so the watchdog's narrow credential is one
    # the user makes in the control panel (API → Generate New Token → Custom Scopes).
    watchdog_token: SecretStr | None = Field(
        default=None,
        description=(
            "token the VM uses to delete itself when idle: a custom-scoped token with only the "
            "droplet:read and droplet:delete scopes, with an expiry (never the main token)"
        ),
    )

    @model_validator(mode="after")
    def _watchdog_token_is_not_the_main_one(self) -> DigitalOceanSettings:
        watchdog = self.watchdog_token.get_secret_value().strip() if self.watchdog_token else ""
        main = self.token.get_secret_value().strip() if self.token else ""
        if watchdog and watchdog == main:
            raise ValueError(
                "watchdog_token is the main API token, which must never be copied to the VM: create a "
                "token with only the droplet:read and droplet:delete scopes (control panel → API → "
                "Custom Scopes) and set MAIDER_DIGITALOCEAN_WATCHDOG_TOKEN to it, or unset it"
            )
        return self

    @field_validator("api_url", mode="before")
    @classmethod
    def _normalize_api_url(cls, value: object) -> object:
        if isinstance(value, str):
            return normalize_api_url(value) if value.strip() else None
        return value

    @property
    def end_point(self) -> str:
        """The base URL every SDK object is given (the default API unless ``api_url`` is set)."""
        return self.api_url or DEFAULT_API_URL
