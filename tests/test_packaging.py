"""The user's install path, proven: wheels built from this checkout, fresh venvs, no index.

Slow (builds and installs into several venvs), so it runs in its own nox session (`packaging`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DISTS = [
    REPO,
    REPO / "maider_linode",
    REPO / "maider_digitalocean",
    REPO / "maider_scaleway",
    REPO / "docs" / "examples" / "maider-example",
]

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our five wheels plus every dependency's wheel, so installs below can run with --no-index."""
    house = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), *map(str, DISTS)],
        check=True,
    )
    return house


def _venv_with(tmp: Path, wheelhouse: Path, *requirements: str) -> Path:
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    python = target / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            *requirements,
        ],
        check=True,
    )
    return target / "bin"


def _maider(bindir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(cwd),
        "MAIDER_CONFIG": str(cwd / "config.toml"),
        "MAIDER_DATA_DIR": str(cwd / "data"),
    }
    return subprocess.run(
        [str(bindir / "maider"), *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )


def _provider_ids(bindir: Path, cwd: Path) -> list[str]:
    result = _maider(bindir, "providers", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [row["id"] for row in json.loads(result.stdout)["providers"]]


def test_extra_linode_installs_linode_alone(tmp_path: Path, wheelhouse: Path) -> None:
    bindir = _venv_with(tmp_path, wheelhouse, "maider[linode]")
    assert _provider_ids(bindir, tmp_path) == ["linode"]
    plan = _maider(bindir, "up", "--dry-run", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["provider"] == "linode"
    # The SDK is a dependency of the provider package, so it is installed too.
    sdk = subprocess.run([str(bindir / "python"), "-c", "import linode_api4"], check=False)
    assert sdk.returncode == 0


def test_core_only_install_runs_and_says_how_to_add_a_provider(tmp_path: Path, wheelhouse: Path) -> None:
    bindir = _venv_with(tmp_path, wheelhouse, "maider")
    listing = _maider(bindir, "providers", cwd=tmp_path)
    assert listing.returncode == 0
    assert "No provider is installed" in listing.stdout and "maider[linode]" in listing.stdout
    up = _maider(bindir, "up", "--dry-run", cwd=tmp_path)
    assert up.returncode == 1
    assert up.stderr.strip().startswith("error: no provider is installed")
    assert "Traceback" not in up.stderr


def test_all_extra_and_a_third_party_provider(tmp_path: Path, wheelhouse: Path) -> None:
    bindir = _venv_with(tmp_path, wheelhouse, "maider[all]", "maider-example")
    assert _provider_ids(bindir, tmp_path) == ["digitalocean", "example", "linode", "scaleway"]
    types = _maider(bindir, "list-types", "--provider", "example", "--json", cwd=tmp_path)
    assert [t["id"] for t in json.loads(types.stdout)["types"]] == ["ex-l4-1", "ex-l4-2"]
