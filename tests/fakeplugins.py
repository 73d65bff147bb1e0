"""Install throwaway provider distributions for a test, without pip.

importlib.metadata finds distributions through `*.dist-info` folders on sys.path, so a folder
with METADATA and entry_points.txt next to a module is a real installed plugin as far as
entry-point discovery is concerned.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_plugin(
    root: Path, dist: str, entry_name: str, target: str, module_name: str, source: str, version: str = "1.0"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sys.modules.pop(module_name, None)  # an earlier test's module of the same name must not be reused
    (root / f"{module_name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[maider.providers]\n{entry_name} = {target}\n", encoding="utf-8")
    return root


TINY_PROVIDER = """
import datetime
from typing import ClassVar
from maider.provider import CatalogOnlyProvider, GPUModel, Price, Region, VMType

GPU = GPUModel("Test GPU", 48, "Ada Lovelace", compute_capability=(8, 9))
CATALOG_DATE = datetime.date(2026, 1, 1)
REGION_METADATA = {{"lab-1": Region("lab-1", "Lab", "FR", "{pid}")}}
GPU_TYPES = {{
    "tiny-1": VMType("tiny-1", "Tiny x1", "{pid}", GPU, 1, 8, 64, Price(0.11, "USD"), ("lab-1",)),
}}
GPU_REGIONS = ("lab-1",)

class TinyProvider(CatalogOnlyProvider):
    id: ClassVar[str] = "{pid}"
    display_name: ClassVar[str] = "Tiny Cloud"
    catalog_module: ClassVar[str] = "{module}"
    settings_model: ClassVar[str] = "maider.config:ProviderSettings"
    contract_version: ClassVar[int] = {contract}
"""


def tiny_provider_source(pid: str, module: str, contract: int = 1) -> str:
    return TINY_PROVIDER.format(pid=pid, module=module, contract=contract)
