"""The embedded GPU catalogs of the built-in providers: what a user would see in `maider` output.

The test matrix installs one provider at a time, so each provider's catalog is imported with
`pytest.importorskip`: tests for providers that are not installed are skipped, not failed.
"""

import ast
import datetime
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from maider.provider import Catalog, VMType, catalog_from_module

#: provider id -> (catalog module, billing currency, number of GPU types in shared notes §4)
PROVIDERS: dict[str, tuple[str, str, int]] = {
    "linode": ("maider_linode.catalog", "USD", 13),
    "digitalocean": ("maider_digitalocean.catalog", "USD", 9),
    "scaleway": ("maider_scaleway.catalog", "EUR", 17),
}

#: Python modules of the vendor SDKs, which must not load when the catalog is imported.
SDK_MODULES: dict[str, str] = {
    "linode": "linode_api4",
    "digitalocean": "digitalocean",
    "scaleway": "scaleway",
}


def _load(provider: str) -> ModuleType:
    return pytest.importorskip(PROVIDERS[provider][0])


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def catalog(provider: str) -> ModuleType:
    return _load(provider)


def _types(module: ModuleType) -> list[VMType]:
    return list(module.GPU_TYPES.values())


# ---------------------------------------------------------------------------------------------
# Every provider
# ---------------------------------------------------------------------------------------------


def test_module_header(provider: str, catalog: ModuleType) -> None:
    assert provider == catalog.PROVIDER_ID
    assert type(catalog.CATALOG_DATE) is datetime.date  # a day, not a datetime
    # Dated snapshot: not before the GPU plans existed, not after the notes were read.
    assert datetime.date(2024, 1, 1) <= catalog.CATALOG_DATE <= datetime.date(2026, 11, 25)
    assert catalog.CATALOG_SOURCE.strip()
    assert "\n" not in catalog.CATALOG_SOURCE
    assert catalog.__doc__ and "snapshot" in catalog.__doc__


def test_type_count_matches_notes(provider: str, catalog: ModuleType) -> None:
    assert len(catalog.GPU_TYPES) == PROVIDERS[provider][2]


def test_types_are_keyed_by_id_and_belong_to_provider(provider: str, catalog: ModuleType) -> None:
    for type_id, vm in catalog.GPU_TYPES.items():
        assert vm.id == type_id
        assert vm.provider == provider
        assert vm.label.strip(), type_id


def test_every_type_is_sold_somewhere_known(catalog: ModuleType) -> None:
    gpu_regions = set(catalog.GPU_REGIONS)
    for vm in _types(catalog):
        assert vm.regions, f"{vm.id} is sold nowhere"
        assert len(set(vm.regions)) == len(vm.regions), vm.id
        assert set(vm.regions) <= gpu_regions, vm.id
        missing = [r for r in vm.regions if r not in catalog.REGION_METADATA]
        assert not missing, f"{vm.id}: no metadata for {missing}"


def test_gpu_regions_is_the_sorted_union(catalog: ModuleType) -> None:
    union = {r for vm in _types(catalog) for r in vm.regions}
    assert tuple(sorted(union)) == catalog.GPU_REGIONS


def test_region_metadata(provider: str, catalog: ModuleType) -> None:
    for region_id, region in catalog.REGION_METADATA.items():
        assert region.id == region_id
        assert region.provider == provider
        assert region.label.strip(), region_id
        assert re.fullmatch(r"[A-Z]{2}", region.country), region


def test_prices_positive_in_billing_currency(provider: str, catalog: ModuleType) -> None:
    currency = PROVIDERS[provider][1]
    for vm in _types(catalog):
        assert vm.hourly_price.amount > 0, vm.id
        assert vm.hourly_price.currency == currency, vm.id
        for region, price in vm.region_prices.items():
            assert region in vm.regions, (vm.id, region)
            assert price.amount > 0 and price.currency == currency, (vm.id, region)


def test_sizes_are_plausible(catalog: ModuleType) -> None:
    for vm in _types(catalog):
        assert vm.gpu_count >= 1, vm.id
        assert vm.gpu.vram_gb > 0, vm.id
        assert vm.vcpus >= 1, vm.id
        assert vm.ram_gb >= 8, vm.id
        assert vm.disk_gb is None or vm.disk_gb > 0, vm.id
        assert vm.total_vram_gb == vm.gpu.vram_gb * vm.gpu_count


def test_gpu_models_are_consistent(catalog: ModuleType) -> None:
    """One GPU chip, one definition: the same name never carries two VRAM sizes or capabilities."""
    by_name: dict[str, set[object]] = {}
    for vm in _types(catalog):
        by_name.setdefault(vm.gpu.name, set()).add(vm.gpu)
        if vm.gpu.vendor == "NVIDIA":
            assert vm.gpu.compute_capability is not None, vm.id
        else:
            assert vm.gpu.compute_capability is None, vm.id
    assert all(len(models) == 1 for models in by_name.values()), by_name


def test_catalog_from_module(provider: str, catalog: ModuleType) -> None:
    built = catalog_from_module(provider, catalog)
    assert isinstance(built, Catalog)
    assert built.provider == provider
    assert built.source == "embedded"
    assert built.as_of == catalog.CATALOG_DATE
    assert built.note == catalog.CATALOG_SOURCE
    assert dict(built.types) == catalog.GPU_TYPES
    assert tuple(built.regions) == catalog.GPU_REGIONS
    assert built.gpu_regions == catalog.GPU_REGIONS


def test_imports_only_datetime_and_provider_contract(catalog: ModuleType) -> None:
    tree = ast.parse(Path(catalog.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"datetime", "maider.provider"}, imported


def test_import_does_not_load_the_sdk(provider: str, catalog: ModuleType) -> None:
    sdk = SDK_MODULES[provider]
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({PROVIDERS[provider][0]!r})\n"
        f"loaded = [m for m in sys.modules if m == {sdk!r} or m.startswith({sdk + '.'!r})]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Linode
# ---------------------------------------------------------------------------------------------


def test_linode_rtx6000_is_turing_quadro_24gb_without_bf16() -> None:
    cat = _load("linode")
    rtx6000 = [vm for vm in _types(cat) if vm.id.startswith("g1-gpu-rtx6000-")]
    assert [vm.gpu_count for vm in rtx6000] == [1, 2, 3, 4]
    for vm in rtx6000:
        assert vm.gpu.name == "Quadro RTX 6000"
        assert vm.gpu.architecture == "Turing"
        assert vm.gpu.vram_gb == 24
        assert vm.gpu.compute_capability == (7, 5)
        assert not vm.gpu.supports_bfloat16
        assert not vm.gpu.supports_fp8
    # The previous tool sized the 4-card plan at 192 GB.
    assert cat.GPU_TYPES["g1-gpu-rtx6000-4"].total_vram_gb == 96


def test_linode_rtx4000_ada_not_sold_in_us_east() -> None:
    """The previous tool's default (us-east + g2-gpu-rtx4000a1-s) could never be created."""
    cat = _load("linode")
    rtx4000 = [vm for vm in _types(cat) if vm.gpu.name == "RTX 4000 Ada"]
    assert len(rtx4000) == 9
    for vm in rtx4000:
        assert not vm.sold_in("us-east"), vm.id
        assert vm.gpu.supports_bfloat16 and vm.gpu.vram_gb == 20
    assert cat.GPU_TYPES["g2-gpu-rtx4000a1-s"].sold_in("us-ord")


def test_linode_availability_is_per_type() -> None:
    cat = _load("linode")
    rtx6000 = {"us-east", "us-southeast", "eu-central", "ap-west", "ap-south"}
    rtx4000 = {"us-ord", "us-sea", "de-fra-2", "fr-par", "jp-osa", "sg-sin-2", "in-bom-2"}
    for vm in _types(cat):
        expected = rtx6000 if vm.id.startswith("g1-gpu-rtx6000-") else rtx4000
        assert set(vm.regions) == expected, vm.id
    assert len(cat.GPU_REGIONS) == 12


def test_linode_known_prices_and_vram() -> None:
    cat = _load("linode")
    assert cat.GPU_TYPES["g1-gpu-rtx6000-1"].hourly_price.amount == pytest.approx(1.50)
    assert cat.GPU_TYPES["g1-gpu-rtx6000-1"].label == "Dedicated 32GB + RTX6000 GPU x1"
    # The old hard-coded table said 1.04 and 2.08; the API said 1.05 and 3.57.
    assert cat.GPU_TYPES["g2-gpu-rtx4000a2-s"].hourly_price.amount == pytest.approx(1.05)
    assert cat.GPU_TYPES["g2-gpu-rtx4000a4-m"].hourly_price.amount == pytest.approx(3.57)
    assert cat.GPU_TYPES["g2-gpu-rtx4000a4-m"].total_vram_gb == 80
    assert cat.GPU_TYPES["g2-gpu-rtx4000a2-hs"].total_vram_gb == 40


def test_linode_type_ids_encode_gpu_count() -> None:
    cat = _load("linode")
    for vm in _types(cat):
        match = re.fullmatch(r"g1-gpu-rtx6000-(\d)|g2-gpu-rtx4000a(\d)-(s|m|l|xl|hs)", vm.id)
        assert match, vm.id
        assert vm.gpu_count == int(match.group(1) or match.group(2)), vm.id


# ---------------------------------------------------------------------------------------------
# DigitalOcean
# ---------------------------------------------------------------------------------------------


def test_digitalocean_slugs_match_gpu_count_and_total_vram() -> None:
    """`gpu-h200x8-1128gb` means 8 GPUs and 1128 GB in all: the catalog must agree with its own slug."""
    cat = _load("digitalocean")
    for vm in _types(cat):
        match = re.fullmatch(r"gpu-[a-z0-9]+x(\d+)-(\d+)gb", vm.id)
        assert match, vm.id
        assert vm.gpu_count == int(match.group(1)), vm.id
        assert vm.total_vram_gb == int(match.group(2)), vm.id


def test_digitalocean_h100x1_has_80gb() -> None:
    cat = _load("digitalocean")
    h100 = cat.GPU_TYPES["gpu-h100x1-80gb"]
    assert h100.gpu_count == 1
    assert h100.gpu.vram_gb == 80
    assert h100.total_vram_gb == 80
    assert h100.gpu.architecture == "Hopper" and h100.gpu.supports_fp8
    assert h100.sold_in("tor1")
    assert cat.GPU_TYPES["gpu-h100x8-640gb"].total_vram_gb == 640


def test_digitalocean_mi300x_is_amd() -> None:
    cat = _load("digitalocean")
    for slug in ("gpu-mi300x1-192gb", "gpu-mi300x8-1536gb"):
        gpu = cat.GPU_TYPES[slug].gpu
        assert gpu.vendor == "AMD"
        assert gpu.architecture == "CDNA3"
        assert gpu.compute_capability is None
        assert gpu.vram_gb == 192
        assert gpu.supports_bfloat16 and gpu.supports_fp8


def test_digitalocean_only_self_service_slugs() -> None:
    """Per-contract (MI325X, MI350X, B300) and spot slugs cannot be bought with a token alone."""
    cat = _load("digitalocean")
    for slug in cat.GPU_TYPES:
        assert not slug.endswith("-spot"), slug
        assert not re.search(r"mi325x|mi350x|mi355x|b300", slug), slug
    assert set(cat.GPU_REGIONS) <= {"tor1", "nyc2", "atl1", "ams3"}


def test_digitalocean_chose_docs_prices() -> None:
    cat = _load("digitalocean")
    assert cat.GPU_TYPES["gpu-h100x1-80gb"].hourly_price.amount == pytest.approx(3.39)
    assert cat.GPU_TYPES["gpu-mi300x1-192gb"].hourly_price.amount == pytest.approx(1.99)
    # The alternative observations are not lost.
    assert "4.41" in cat.GPU_TYPES["gpu-h100x1-80gb"].notes
    assert "2.59" in cat.GPU_TYPES["gpu-mi300x1-192gb"].notes


# ---------------------------------------------------------------------------------------------
# Scaleway
# ---------------------------------------------------------------------------------------------


def test_scaleway_commercial_types_match_gpu_count_and_vram() -> None:
    """`H100-SXM-8-80G` means 8 GPUs of 80 GB each."""
    cat = _load("scaleway")
    for vm in _types(cat):
        match = re.fullmatch(r"[A-Z0-9]+(?:-SXM)?-(\d+)-(\d+)G", vm.id)
        if match is None:
            assert vm.id in {"RENDER-S", "GPU-3070-S"}, vm.id
            assert vm.gpu_count == 1
            continue
        assert vm.gpu_count == int(match.group(1)), vm.id
        assert vm.gpu.vram_gb == int(match.group(2)), vm.id
    assert cat.GPU_TYPES["H100-SXM-8-80G"].total_vram_gb == 640
    assert cat.GPU_TYPES["B300-SXM-8-288G"].total_vram_gb == 2304
    assert cat.GPU_TYPES["L40S-4-48G"].total_vram_gb == 192


def test_scaleway_sxm_and_b300_only_in_fr_par_2() -> None:
    cat = _load("scaleway")
    sxm = [vm for vm in _types(cat) if "-SXM-" in vm.id]
    assert len(sxm) == 5
    for vm in sxm:
        assert vm.regions == ("fr-par-2",), vm.id
    for vm in _types(cat):
        assert not any(r.startswith("nl-ams") for r in vm.regions), vm.id
    assert cat.GPU_TYPES["H100-1-80G"].sold_in("pl-waw-2")
    assert cat.GPU_TYPES["H100-1-80G"].gpu is not cat.GPU_TYPES["H100-SXM-2-80G"].gpu


def test_scaleway_old_generations() -> None:
    cat = _load("scaleway")
    render = cat.GPU_TYPES["RENDER-S"]
    assert render.gpu.architecture == "Pascal"
    assert render.gpu.compute_capability == (6, 0)
    assert render.gpu.vram_gb == 16
    assert not render.gpu.supports_bfloat16
    assert render.regions == ("fr-par-1",)
    rtx3070 = cat.GPU_TYPES["GPU-3070-S"]
    assert rtx3070.gpu.compute_capability == (8, 6) and rtx3070.gpu.vram_gb == 8
    assert "retired" in rtx3070.notes
    assert cat.GPU_TYPES["B300-SXM-2-288G"].gpu.compute_capability == (10, 3)


def test_scaleway_api_prices_verbatim_and_derived_ones_flagged() -> None:
    cat = _load("scaleway")
    verbatim = {
        "L4-1-24G": 0.7875,
        "L4-2-24G": 1.575,
        "L40S-1-48G": 1.469916,
        "H100-1-80G": 2.8665,
        "H100-SXM-8-80G": 25.3308,
        "B300-SXM-8-288G": 60.0,
        "RENDER-S": 1.221,
    }
    for type_id, amount in verbatim.items():
        vm = cat.GPU_TYPES[type_id]
        assert vm.hourly_price.amount == pytest.approx(amount), type_id
        assert "derived" not in vm.notes, type_id
    for type_id in ("L4-4-24G", "L4-8-24G", "L40S-2-48G", "L40S-8-48G", "H100-2-80G", "H100-SXM-4-80G"):
        vm = cat.GPU_TYPES[type_id]
        assert "derived" in vm.notes, type_id
        # Derived = the 1-GPU rate of the family times N, to the cent.
        family = re.sub(r"-\d+-(\d+G)$", r"-1-\1", type_id)
        if family in cat.GPU_TYPES:
            one = cat.GPU_TYPES[family].hourly_price.amount
            assert vm.hourly_price.amount == pytest.approx(one * vm.gpu_count, abs=0.01), type_id
