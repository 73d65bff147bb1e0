"""The Scaleway provider class. Importing this module must not import the scaleway SDK."""

from __future__ import annotations

from typing import ClassVar

from maider.provider import CONTRACT_VERSION, CatalogOnlyProvider, VMType


class ScalewayProvider(CatalogOnlyProvider):
    id: ClassVar[str] = "scaleway"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "Scaleway"
    catalog_module: ClassVar[str] = "maider_scaleway.catalog"
    settings_model: ClassVar[str] = "maider_scaleway.settings:ScalewaySettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = (
        "SCW_ACCESS_KEY",
        "SCW_SECRET_KEY",
        "SCW_DEFAULT_PROJECT_ID",
    )
    credential_fields: ClassVar[tuple[str, ...]] = ("access_key", "secret_key", "project_id")
    credentials_help: ClassVar[str] = (
        "set SCW_ACCESS_KEY, SCW_SECRET_KEY and SCW_DEFAULT_PROJECT_ID (console.scaleway.com → IAM → API keys)"
    )
    currency: ClassVar[str] = "EUR"

    def has_credentials(self) -> bool:
        s = self.settings
        return all(getattr(s, name, None) for name in ("access_key", "secret_key", "project_id"))

    def default_image(self, vm_type: VMType) -> str:
        # Scaleway's GPU OS image ships the NVIDIA driver and container toolkit.
        return "ubuntu_noble_gpu_os_12"
