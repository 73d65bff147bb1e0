"""Shared fixtures: every test runs in an empty home for maider (config, state, cache, cwd)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from maider import plugins

pytest_plugins = ["tests.conftest_cloudsim", "tests.vmsim.fixtures"]

REPO = Path(__file__).resolve().parent.parent

#: Variables that would let the developer's real accounts or settings leak into a test.
_LEAKY_ENV = (
    "LINODE_TOKEN",
    "LINODE_CLI_TOKEN",
    "DIGITALOCEAN_TOKEN",
    "DIGITALOCEAN_ACCESS_TOKEN",
    "DIGITALOCEAN_END_POINT",
    "SCW_ACCESS_KEY",
    "SCW_SECRET_KEY",
    "SCW_DEFAULT_PROJECT_ID",
    "SCW_API_URL",
    "SCW_PROFILE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MAIDER_PROVIDERS",
    "MAIDER_CONFIG",
    "MAIDER_DEBUG",
)


#: Where each provider's API would be: a closed loopback port, so a test that configures a fake
#: token can never reach a real cloud (the net guard would fail it if it tried).
_CLOSED_API_URLS = {
    "MAIDER_LINODE_API_URL": "http://127.0.0.1:9/v4",
    "MAIDER_DIGITALOCEAN_API_URL": "http://127.0.0.1:9/v2/",
    "MAIDER_SCALEWAY_API_URL": "http://127.0.0.1:9",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cloudsim_net_guard: object) -> Iterator[Path]:
    for name in list(os.environ):
        if name in _LEAKY_ENV or (name.startswith("MAIDER_") and name != "MAIDER_SPECS_DIR"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MAIDER_CONFIG", str(home / "config" / "config.toml"))
    monkeypatch.setenv("MAIDER_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("MAIDER_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("MAIDER_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("SCW_CONFIG_PATH", str(home / "no-scw-config.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # tests never reach the Hugging Face hub
    for name, url in _CLOSED_API_URLS.items():
        monkeypatch.setenv(name, url)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    plugins.reset_cache()
    yield work
    plugins.reset_cache()


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli() -> object:
    """Run maider in-process through Typer's runner (fast; same code path as the console script)."""
    from typer.testing import CliRunner

    from maider.cli import app

    def run(*args: str, input: str | None = None) -> CliResult:
        plugins.reset_cache()
        result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def maider_proc() -> object:
    """Run maider as a separate process, exactly as a user's shell would."""

    def run(
        *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
    ) -> CliResult:
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "maider", *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=input,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def installed(provider: str) -> bool:
    return any(info.id == provider for info in plugins.discover())


def require_providers(*names: str) -> None:
    missing = [n for n in names if not installed(n)]
    if missing:
        pytest.skip(f"needs provider(s) {', '.join(missing)} installed (this run's matrix entry lacks them)")
