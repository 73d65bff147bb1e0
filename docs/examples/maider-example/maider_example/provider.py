"""The provider class maider loads. Keep this module import-light: no SDK at the top level."""

from typing import ClassVar

from maider.provider import CONTRACT_VERSION, CatalogOnlyProvider


class ExampleProvider(CatalogOnlyProvider):
    # CatalogOnlyProvider: planning works (list-types, recommend, up --dry-run); network methods
    # raise a clear error until you implement them (subclass maider.provider.Provider then).
    id: ClassVar[str] = "example"
    contract_version: ClassVar[int] = CONTRACT_VERSION
    display_name: ClassVar[str] = "Example Cloud"
    catalog_module: ClassVar[str] = "maider_example.catalog"
    settings_model: ClassVar[str] = "maider_example.settings:ExampleSettings"
    credential_env_vars: ClassVar[tuple[str, ...]] = ("EXAMPLE_TOKEN",)
    credential_fields: ClassVar[tuple[str, ...]] = ("token",)
    credentials_help: ClassVar[str] = "set EXAMPLE_TOKEN to an Example Cloud API token"

    def has_credentials(self) -> bool:
        return getattr(self.settings, "token", None) is not None
