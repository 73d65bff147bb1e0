"""The Linode provider class. Importing this module must not import linode_api4."""

from __future__ import annotations

from typing import ClassVar

from maider.provider import CONTRACT_VERSION, CatalogOnlyProvider, VMType


class LinodeProvider(CatalogOnlyProvider):
    id: ClassVar[str] = "linode"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "Linode"
    catalog_module: ClassVar[str] = "maider_linode.catalog"
    settings_model: ClassVar[str] = "maider_linode.settings:LinodeSettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = ("LINODE_TOKEN",)
    credential_fields: ClassVar[tuple[str, ...]] = ("token",)
    credentials_help: ClassVar[str] = (
        "set LINODE_TOKEN to a personal access token (cloud.linode.com → API Tokens) with read/write on "
        "Linodes, Firewalls and Account SSH keys"
    )
    currency: ClassVar[str] = "USD"

    def has_credentials(self) -> bool:
        return getattr(self.settings, "token", None) is not None

    def default_image(self, vm_type: VMType) -> str:
        # Linode has no GPU image: Ubuntu LTS, NVIDIA driver and container toolkit come via cloud-init.
        return str(getattr(self.settings, "image", "linode/ubuntu24.04"))
