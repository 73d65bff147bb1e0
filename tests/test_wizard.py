"""The wizard: scripted with flags, and driven interactively through prompt_toolkit's pipe input."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from maider import plugins
from maider.config import read_config_file
from maider.errors import MaiderError
from maider.paths import config_file_path
from maider.wizard import WizardAnswers, run_wizard
from tests.conftest import require_providers

ENTER = "\r"
DOWN = "\x1b[B"


@contextmanager
def keyboard(keys: str) -> Iterator[None]:
    """Feed `keys` to questionary as if typed on a terminal."""
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        with create_app_session(input=pipe, output=DummyOutput()):
            yield


def test_scripted_wizard_writes_a_valid_private_config(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    result = cli("wizard", "--yes", "--provider", "linode", "--region", "us-ord")
    assert result.exit_code == 0, result.stderr
    path = config_file_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = read_config_file(path)
    assert data["provider"] == "linode" and data["region"] == "us-ord"
    assert data["type"].startswith("g2-gpu-rtx4000a")  # the only GPUs Linode sells in Chicago
    assert "LINODE_TOKEN" in result.stdout  # tells the user what is still missing
    monkeypatch.setenv("LINODE_TOKEN", "tok")
    check = cli("validate")
    assert check.exit_code == 0, check.stderr
    assert "configuration is valid" in check.stdout


def test_scripted_wizard_refuses_to_overwrite_without_force(cli) -> None:
    require_providers("linode")
    assert cli("wizard", "--yes", "--provider", "linode").exit_code == 0
    before = config_file_path().read_text()
    again = cli("wizard", "--yes", "--provider", "linode", "--region", "us-east")
    assert again.exit_code == 1 and "--force" in again.stderr
    assert config_file_path().read_text() == before
    forced = cli("wizard", "--yes", "--force", "--provider", "linode", "--region", "us-east")
    assert forced.exit_code == 0
    assert read_config_file()["region"] == "us-east"


def test_scripted_wizard_rejects_a_type_that_does_not_fit(cli) -> None:
    require_providers("linode")
    result = cli(
        "wizard",
        "--yes",
        "--provider",
        "linode",
        "--region",
        "us-ord",
        "--type",
        "g2-gpu-rtx4000a1-s",
        "--model",
        "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
    )
    assert result.exit_code == 1
    assert not config_file_path().exists()


def test_interactive_wizard_takes_defaults_and_stores_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    monkeypatch.setenv("MAIDER_PROVIDERS", "linode")  # a single provider: its step is skipped
    plugins.reset_cache()
    lines: list[str] = []
    # model (default) → region (cheapest fit) → type (cheapest fit) → context (default) → token
    with keyboard(ENTER + ENTER + ENTER + ENTER + "tok-from-wizard" + ENTER):
        path = run_wizard(WizardAnswers(), interactive=True, force=False, say=lines.append)
    data = read_config_file(path)
    assert data["provider"] == "linode"
    assert data["linode"]["token"] == "tok-from-wizard"
    assert data["model"] == "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not any("tok-from-wizard" in line for line in lines)  # never echoed


def test_interactive_wizard_only_offers_types_sold_in_the_chosen_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_providers("linode")
    monkeypatch.setenv("MAIDER_PROVIDERS", "linode")
    plugins.reset_cache()
    # Region us-east sells only Quadro RTX 6000 types; pick the second offered type.
    with keyboard(ENTER + DOWN + ENTER + ENTER + ENTER):
        path = run_wizard(WizardAnswers(region="us-east"), interactive=True, force=False, say=lambda _: None)
    chosen = read_config_file(path)["type"]
    assert chosen.startswith("g1-gpu-rtx6000-")
    assert chosen != "g1-gpu-rtx6000-1"  # the cheapest is first; DOWN moved past it


def test_interactive_wizard_keeps_an_existing_file_when_told_no(monkeypatch: pytest.MonkeyPatch) -> None:
    require_providers("linode")
    path = config_file_path()
    path.parent.mkdir(parents=True)
    path.write_text('provider = "linode"\n')
    with keyboard("n" + ENTER), pytest.raises(MaiderError, match="unchanged"):
        run_wizard(WizardAnswers(), interactive=True, force=False, say=lambda _: None)
    assert path.read_text() == 'provider = "linode"\n'
