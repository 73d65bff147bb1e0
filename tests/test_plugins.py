"""Provider discovery through entry points: third parties, broken plugins, contract versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maider import plugins
from tests.fakeplugins import make_plugin, tiny_provider_source


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))  # for subprocesses
    return root


def test_third_party_provider_is_discovered_and_planned_with(plugin_dir: Path, cli) -> None:
    make_plugin(
        plugin_dir,
        "maider-tiny",
        "tiny",
        "tiny_cloud:TinyProvider",
        "tiny_cloud",
        tiny_provider_source("tiny", "tiny_cloud"),
    )
    plugins.reset_cache()
    assert "tiny" in plugins.installed_ids()
    result = cli("providers", "--json")
    rows = {r["id"]: r for r in json.loads(result.stdout)["providers"]}
    assert rows["tiny"]["package"] == "maider-tiny"
    assert rows["tiny"]["gpu_types"] == 1
    listing = cli("list-types", "--provider", "tiny", "--json")
    assert [t["id"] for t in json.loads(listing.stdout)["types"]] == ["tiny-1"]


def test_broken_plugin_warns_once_and_others_keep_working(plugin_dir: Path, cli) -> None:
    make_plugin(
        plugin_dir,
        "maider-broken",
        "broken",
        "broken_cloud:Provider",
        "broken_cloud",
        "raise ImportError('needs libfoo')\n",
    )
    make_plugin(
        plugin_dir,
        "maider-tiny",
        "tiny",
        "tiny_cloud:TinyProvider",
        "tiny_cloud",
        tiny_provider_source("tiny", "tiny_cloud"),
    )
    result = cli("providers")
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(warnings) == 1
    assert "maider-broken" in warnings[0] and "pip uninstall maider-broken" in warnings[0]
    assert "needs libfoo" in warnings[0]
    assert "tiny" in result.stdout


def test_plugin_whose_catalog_module_fails_is_reported_by_providers(plugin_dir: Path, cli) -> None:
    source = tiny_provider_source("halfbroken", "halfbroken_cloud").replace(
        'catalog_module: ClassVar[str] = "halfbroken_cloud"',
        'catalog_module: ClassVar[str] = "no_such_module_x"',
    )
    make_plugin(
        plugin_dir,
        "maider-halfbroken",
        "halfbroken",
        "halfbroken_cloud:TinyProvider",
        "halfbroken_cloud",
        source,
    )
    make_plugin(
        plugin_dir,
        "maider-tiny",
        "tiny",
        "tiny_cloud:TinyProvider",
        "tiny_cloud",
        tiny_provider_source("tiny", "tiny_cloud"),
    )
    plugins.reset_cache()
    result = cli("providers", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["id"]: r for r in json.loads(result.stdout)["providers"]}
    assert rows["tiny"]["gpu_types"] == 1
    assert rows["halfbroken"]["loaded"] is False
    assert "no_such_module_x" in rows["halfbroken"]["error"]
    assert "pip uninstall maider-halfbroken" in result.stderr
    assert "Traceback" not in result.stderr
    table = cli("providers")
    assert table.exit_code == 0 and "failed: its catalog does not load" in table.stdout
    # Planning without naming a provider skips it with a warning instead of stopping.
    plan = cli("up", "--dry-run")
    assert plan.exit_code == 0, plan.stderr
    unnamed = cli("recommend")
    assert unnamed.exit_code == 0, unnamed.stderr
    assert "halfbroken" in unnamed.stderr and "tiny-1" in unnamed.stdout


def test_incompatible_contract_version_is_skipped_with_a_warning(plugin_dir: Path, cli) -> None:
    make_plugin(
        plugin_dir,
        "maider-future",
        "future",
        "future_cloud:TinyProvider",
        "future_cloud",
        tiny_provider_source("future", "future_cloud", contract=99),
    )
    plugins.reset_cache()
    loaded, failures = plugins.load_all()
    assert "future" not in loaded
    assert "contract v99" in failures[0].reason
    result = cli("list-types", "--provider", "future")
    assert result.exit_code != 0
    assert "failed to load" in result.stderr and "contract v99" in result.stderr


def test_entry_point_that_is_not_a_provider_class_is_rejected(plugin_dir: Path) -> None:
    make_plugin(plugin_dir, "maider-odd", "odd", "odd_cloud:thing", "odd_cloud", "thing = 42\n")
    plugins.reset_cache()
    _, failures = plugins.load_all()
    assert any("not a maider.provider.Provider subclass" in f.reason for f in failures)


def test_maider_providers_env_restricts_loading(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_plugin(plugin_dir, "maider-broken", "broken", "broken_cloud:Provider", "broken_cloud", "1/0\n")
    make_plugin(
        plugin_dir,
        "maider-tiny",
        "tiny",
        "tiny_cloud:TinyProvider",
        "tiny_cloud",
        tiny_provider_source("tiny", "tiny_cloud"),
    )
    monkeypatch.setenv("MAIDER_PROVIDERS", "tiny")
    plugins.reset_cache()
    loaded, failures = plugins.load_all()
    assert list(loaded) == ["tiny"]
    assert failures == ()


def test_listing_providers_does_not_import_sdks_or_questionary(plugin_dir: Path) -> None:
    code = (
        "import sys; sys.argv=['maider','providers','--json']\n"
        "from maider.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in ('linode_api4','digitalocean','scaleway','questionary','huggingface_hub') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_help_imports_no_pydantic_sdk_or_questionary() -> None:
    code = (
        "import sys; sys.argv=['maider','--help']\n"
        "from maider.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy=[m for m in ('pydantic','pydantic_settings','linode_api4','digitalocean','scaleway','questionary',"
        "'huggingface_hub','rich.table') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert "HEAVY []" in proc.stderr, proc.stderr
    assert "Commands" in proc.stdout


def test_core_only_install_says_no_provider_and_how_to_add_one(monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setenv("MAIDER_PROVIDERS", "none-of-them")
    result = cli("providers")
    assert result.exit_code == 0
    assert "No provider is installed" in result.stdout and "pip install 'maider[linode]'" in result.stdout
    up = cli("up", "--dry-run")
    assert up.exit_code == 1
    errors = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no provider is installed" in errors[0]
    assert "Traceback" not in up.stderr
