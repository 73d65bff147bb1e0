"""aider's model files (merged, never clobbered) and the shell exports that point aider at a session."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from maider import aider
from maider.errors import MaiderError
from maider.session.state import SessionRecord


def record(**fields: object) -> SessionRecord:
    data: dict[str, object] = {
        "id": "s3f9a01c2",
        "provider": "linode",
        "region": "us-ord",
        "type_id": "g2-gpu-rtx4000a1-s",
        "model": "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        "served_model_name": "coder",
        "max_model_len": 32768,
        "api_port": 41234,
    }
    data.update(fields)
    return SessionRecord.model_validate(data)


def test_files_in_aider_formats(tmp_path: Path) -> None:
    metadata_path, settings_path = aider.write_aider_files(
        tmp_path, served_model_name="coder", max_model_len=32768, params_b=32.8
    )
    assert metadata_path == tmp_path / ".aider.model.metadata.json"
    assert settings_path == tmp_path / ".aider.model.settings.yml"
    assert json.loads(metadata_path.read_text()) == {
        "openai/coder": {
            "max_tokens": 8192,
            "max_input_tokens": 24576,
            "max_output_tokens": 8192,
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    }
    assert yaml.safe_load(settings_path.read_text()) == [
        {
            "name": "openai/coder",
            "edit_format": "diff",
            "weak_model_name": "openai/coder",
            "use_repo_map": True,
            "examples_as_sys_msg": True,
            "editor_model_name": "openai/coder",
            "editor_edit_format": "editor-diff",
        }
    ]
    assert stat.S_IMODE(metadata_path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("params_b", "expected"), [(1.5, "whole"), (7.6, "whole"), (14.7, "diff"), (480, "diff"), (None, "diff")]
)
def test_edit_format_follows_model_size(params_b: float | None, expected: str) -> None:
    assert aider.edit_format_for(params_b) == expected


@pytest.mark.parametrize(("length", "output"), [(4096, 1024), (1000, 500), (131072, 32768), (262144, 32768)])
def test_output_budget(length: int, output: int) -> None:
    meta = aider.model_metadata("m", length)
    assert meta["max_output_tokens"] == output
    assert meta["max_input_tokens"] + meta["max_output_tokens"] == length


def test_other_models_are_kept(tmp_path: Path) -> None:
    mine = {"deepseek/deepseek-chat": {"max_tokens": 4096, "litellm_provider": "deepseek", "mode": "chat"}}
    (tmp_path / aider.METADATA_FILE).write_text(json.dumps(mine))
    (tmp_path / aider.SETTINGS_FILE).write_text(
        "# my settings\n- name: deepseek/deepseek-chat\n  edit_format: diff\n- name: openai/coder\n  edit_format: udiff\n"
        "- name: anthropic/claude-3-5-sonnet-20241022\n  use_repo_map: true\n"
    )
    aider.write_aider_files(tmp_path, served_model_name="coder", max_model_len=16384, params_b=7)
    metadata = json.loads((tmp_path / aider.METADATA_FILE).read_text())
    assert metadata["deepseek/deepseek-chat"] == mine["deepseek/deepseek-chat"]
    assert metadata["openai/coder"]["max_input_tokens"] == 12288
    settings = yaml.safe_load((tmp_path / aider.SETTINGS_FILE).read_text())
    assert [entry["name"] for entry in settings] == [
        "deepseek/deepseek-chat",
        "openai/coder",  # replaced where it was, not duplicated
        "anthropic/claude-3-5-sonnet-20241022",
    ]
    assert settings[1]["edit_format"] == "whole"

    # A second session with another served name adds its own entries.
    aider.write_aider_files(tmp_path, served_model_name="big", max_model_len=65536)
    assert set(json.loads((tmp_path / aider.METADATA_FILE).read_text())) == {
        "deepseek/deepseek-chat",
        "openai/coder",
        "openai/big",
    }
    assert len(yaml.safe_load((tmp_path / aider.SETTINGS_FILE).read_text())) == 4


def test_existing_file_mode_is_kept(tmp_path: Path) -> None:
    path = tmp_path / aider.METADATA_FILE
    path.write_text("{}")
    path.chmod(0o600)
    aider.write_aider_files(tmp_path, served_model_name="coder", max_model_len=8192)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (aider.METADATA_FILE, "{not json", "is not valid JSON"),
        (aider.METADATA_FILE, "[1]", "must hold a JSON object"),
        (aider.SETTINGS_FILE, "- name: [unclosed\n", "is not valid YAML"),
        (aider.SETTINGS_FILE, "name: openai/coder\n", "must hold a YAML list"),
    ],
)
def test_a_broken_file_is_reported_and_nothing_is_written(
    isolated: Path, name: str, content: str, message: str
) -> None:
    project = isolated  # the empty working directory of the test
    (project / name).write_text(content)
    with pytest.raises(aider.AiderFilesError, match=message) as info:
        aider.write_aider_files(project, served_model_name="coder", max_model_len=8192)
    assert isinstance(info.value, MaiderError) and "left it as is" in str(info.value)
    assert (project / name).read_text() == content
    assert sorted(p.name for p in project.iterdir()) == [name]  # the other file was not written either


def test_session_files_need_a_context_length(tmp_path: Path) -> None:
    aider.write_session_files(tmp_path, record(), params_b=32)
    with pytest.raises(aider.AiderFilesError, match="no max_model_len"):
        aider.write_session_files(tmp_path, record(max_model_len=None))


def test_session_env() -> None:
    env = aider.session_env(record(), "sk-maider-0123")
    assert env == {
        "OPENAI_API_BASE": "http://127.0.0.1:41234/v1",
        "OPENAI_API_KEY": "sk-maider-0123",
        "AIDER_MODEL": "openai/coder",
        "MAIDER_SESSION": "s3f9a01c2",
    }
    with_files = aider.session_env(
        record(), "k", metadata_file=Path("/x/.aider.model.metadata.json"), settings_file=Path("/x/s.yml")
    )
    assert with_files["AIDER_MODEL_METADATA_FILE"] == "/x/.aider.model.metadata.json"
    assert with_files["AIDER_MODEL_SETTINGS_FILE"] == "/x/s.yml"
    with pytest.raises(MaiderError, match="no tunnel: open one with `maider tunnel s3f9a01c2`"):
        aider.session_env(record(api_port=None), "k")


TRICKY = {
    "HOURLY_COST": "$1.50",
    "BACKTICKS": "`id`",
    "SUBSHELL": "$(echo pwned)",
    "QUOTES": 'it\'s "quoted"',
    "NEWLINE": "a\nb",
    "SPACES": "  two  spaces  ",
    "GLOB": "*",
    "UNICODE": "€ ü",
    "EMPTY": "",
    "BACKSLASH": "a\\nb\\",
    "HISTORY": "!!",
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_exports_evaluate_to_the_exact_values(tmp_path: Path) -> None:
    env = {**aider.session_env(record(), "sk-maider-$1"), **TRICKY}
    script = aider.shell_exports(env)
    names = list(env)
    printer = " ".join(f'"${name}"' for name in names)
    (tmp_path / "exports.sh").write_text(script)
    proc = subprocess.run(
        ["bash", "-c", f'set -u; eval "$(cat exports.sh)"; printf "%s\\0" {printer}', "bash", "one", "two"],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=True,
    )
    values = proc.stdout.decode().split("\0")[:-1]
    assert dict(zip(names, values, strict=True)) == env
    # Sourcing the file (what `source <file>` users do) gives the same.
    proc = subprocess.run(
        ["bash", "-c", f'. ./exports.sh; printf "%s\\0" {printer}', "bash", "one"],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert proc.stdout.decode().split("\0")[:-1] == list(env.values())
    assert not list(tmp_path.glob("pwned*"))


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A;rm"])
def test_exports_refuse_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        aider.shell_exports({name: "x"})
