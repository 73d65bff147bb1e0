"""The DigitalOcean provider class. Importing this module must not import python-digitalocean."""

from __future__ import annotations

from typing import ClassVar

from maider.provider import CONTRACT_VERSION, CatalogOnlyProvider, VMType


class DigitalOceanProvider(CatalogOnlyProvider):
    id: ClassVar[str] = "digitalocean"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "DigitalOcean"
    catalog_module: ClassVar[str] = "maider_digitalocean.catalog"
    settings_model: ClassVar[str] = "maider_digitalocean.settings:DigitalOceanSettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = ("DIGITALOCEAN_TOKEN",)
    credential_fields: ClassVar[tuple[str, ...]] = ("token",)
    credentials_help: ClassVar[str] = (
        "set DIGITALOCEAN_TOKEN to a personal access token (cloud.digitalocean.com → API) with droplet, "
        "firewall, ssh_key and tag scopes"
    )
    currency: ClassVar[str] = "USD"

    def has_credentials(self) -> bool:
        return getattr(self.settings, "token", None) is not None

    def default_image(self, vm_type: VMType) -> str:
        # DigitalOcean's "AI/ML Ready" images ship the GPU drivers.
        if vm_type.gpu.vendor == "AMD":
            return "gpu-amd-base"
        return "gpu-h100x8-base" if vm_type.gpu_count >= 8 else "gpu-h100x1-base"
