"""Pointing aider at a session: its model files, and the environment that selects the model.

aider reads (https://aider.chat/docs/config/adv-model-settings.html), from the home directory,
the git root, the current directory, then ``--model-metadata-file`` / ``--model-settings-file``
(env ``AIDER_MODEL_METADATA_FILE`` / ``AIDER_MODEL_SETTINGS_FILE``), later files winning:

- ``.aider.model.metadata.json``: a litellm-style map ``{"openai/<served>": {"max_tokens": …,
  "max_input_tokens": …, "max_output_tokens": …, "input_cost_per_token": …,
  "output_cost_per_token": …, "litellm_provider": "openai", "mode": "chat"}}``;
- ``.aider.model.settings.yml``: a YAML list of model settings, ``- name: openai/<served>`` with
  ``edit_format``, ``use_repo_map``, ``weak_model_name``, ``examples_as_sys_msg``… (aider's
  ``ModelSettings`` fields).

Both files may list other models (the user's, other sessions'): they are merged, never replaced,
and a file that does not parse is reported, not overwritten. The model is ``openai/<served>``
because vLLM speaks the OpenAI API; ``OPENAI_API_BASE`` points at the session's tunnel.

The old generation wrote ``HOURLY_COST="$1.50"`` into a file users sourced, and bash expanded
``$1``. :func:`shell_exports` quotes every value with :func:`shlex.quote`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maider.errors import MaiderError

if TYPE_CHECKING:  # pragma: no cover
    from maider.session.state import SessionRecord

METADATA_FILE = ".aider.model.metadata.json"
SETTINGS_FILE = ".aider.model.settings.yml"

#: Models this size (billions of parameters, total) and up get aider's "diff" (search/replace)
#: edit format; smaller ones get "whole" (rewrite whole files): 7B-class models garble
#: search/replace blocks far more often, as aider's own leaderboards show.
DIFF_MIN_PARAMS_B = 14.0

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class AiderFilesError(MaiderError):
    pass


def aider_model_name(served_model_name: str) -> str:
    """The name aider and litellm use for a model served on an OpenAI-compatible API."""
    return f"openai/{served_model_name}"


def edit_format_for(params_b: float | None) -> str:
    """aider's edit format for a model of ``params_b`` billion parameters (unknown: "diff")."""
    if params_b is not None and params_b < DIFF_MIN_PARAMS_B:
        return "whole"
    return "diff"


def output_budget(max_model_len: int) -> int:
    """Tokens to leave for the answer: a quarter of the context, within [512, 32768]."""
    return max(min(max_model_len // 4, 32768), min(512, max_model_len // 2))


def model_metadata(served_model_name: str, max_model_len: int) -> dict[str, Any]:
    """The metadata entry of the model. Costs are 0: the VM bills by the hour, not by token.

    vLLM rejects a request whose prompt plus answer exceed ``max_model_len``, so the input limit
    aider warns about is the context minus the answer's budget, not the whole context.
    """
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be positive, not {max_model_len}")
    output = output_budget(max_model_len)
    return {
        "max_tokens": output,
        "max_input_tokens": max_model_len - output,
        "max_output_tokens": output,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": "openai",
        "mode": "chat",
    }


def model_settings(served_model_name: str, *, edit_format: str = "diff") -> dict[str, Any]:
    """The settings entry of the model, shaped like aider's own entries for Qwen coder models.

    The weak model (commit messages, summaries) and the editor model are the served model itself:
    aider's defaults would call OpenAI's hosted models, for which the session's key is useless.
    """
    name = aider_model_name(served_model_name)
    entry: dict[str, Any] = {
        "name": name,
        "edit_format": edit_format,
        "weak_model_name": name,
        "use_repo_map": True,
        "examples_as_sys_msg": edit_format != "whole",
        "editor_model_name": name,
        "editor_edit_format": "editor-diff" if edit_format != "whole" else "editor-whole",
    }
    return entry


def write_aider_files(
    directory: Path,
    *,
    served_model_name: str,
    max_model_len: int,
    params_b: float | None = None,
    edit_format: str | None = None,
) -> tuple[Path, Path]:
    """Add (or update) the model in ``directory``'s two aider files; other models are kept.

    Both files are checked before either is written, so a broken one leaves both as they were.
    Returns the paths of the metadata and the settings files.
    """
    name = aider_model_name(served_model_name)
    metadata_path = directory / METADATA_FILE
    settings_path = directory / SETTINGS_FILE
    metadata = _read_metadata(metadata_path)
    settings = _read_settings(settings_path)

    metadata[name] = model_metadata(served_model_name, max_model_len)
    entry = model_settings(served_model_name, edit_format=edit_format or edit_format_for(params_b))
    for index, existing in enumerate(settings):
        if isinstance(existing, dict) and existing.get("name") == name:
            settings[index] = entry
            break
    else:
        settings.append(entry)

    import yaml

    _write(metadata_path, json.dumps(metadata, indent=2) + "\n")
    _write(settings_path, yaml.safe_dump(settings, sort_keys=False, default_flow_style=False))
    return metadata_path, settings_path


def write_session_files(
    directory: Path, record: SessionRecord, *, params_b: float | None = None, edit_format: str | None = None
) -> tuple[Path, Path]:
    """:func:`write_aider_files` for a session record (its served name and context length)."""
    if record.max_model_len is None:
        raise AiderFilesError(
            f"session {record.label} has no max_model_len recorded; cannot describe the model"
        )
    return write_aider_files(
        directory,
        served_model_name=record.served_model_name,
        max_model_len=record.max_model_len,
        params_b=params_b,
        edit_format=edit_format,
    )


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AiderFilesError(
            f"{path} is not valid JSON ({exc}); fix it or move it away, maider left it as is"
        ) from None
    if not isinstance(data, dict):
        raise AiderFilesError(f"{path} must hold a JSON object (model name → metadata); maider left it as is")
    return data


def _read_settings(path: Path) -> list[Any]:
    if not path.exists():
        return []
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0]
        raise AiderFilesError(
            f"{path} is not valid YAML ({detail}); fix it or move it away, maider left it as is"
        ) from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise AiderFilesError(f"{path} must hold a YAML list of model settings; maider left it as is")
    return data


def _write(path: Path, text: str) -> None:
    """Atomic, keeping the mode of an existing file (these files hold no secret)."""
    from maider.session.state import atomic_write

    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    atomic_write(path, text, mode=mode)


# ------------------------------------------------------------------------------------ environment


def session_env(
    record: SessionRecord,
    api_key: str,
    *,
    metadata_file: Path | None = None,
    settings_file: Path | None = None,
) -> dict[str, str]:
    """The variables that point aider (and any OpenAI client) at the session's tunnel.

    ``metadata_file``/``settings_file``: aider files to load wherever aider is started (for
    example copies in the session directory), on top of those of the current directory.
    """
    if record.api_port is None:
        raise MaiderError(
            f"session {record.label} has no tunnel: open one with `maider tunnel {record.label}`"
        )
    env = {
        "OPENAI_API_BASE": f"http://127.0.0.1:{record.api_port}/v1",
        "OPENAI_API_KEY": api_key,
        "AIDER_MODEL": aider_model_name(record.served_model_name),
        "MAIDER_SESSION": record.id,
    }
    if metadata_file is not None:
        env["AIDER_MODEL_METADATA_FILE"] = str(metadata_file)
    if settings_file is not None:
        env["AIDER_MODEL_SETTINGS_FILE"] = str(settings_file)
    return env


def shell_exports(env: Mapping[str, str]) -> str:
    """``export NAME=value`` lines for POSIX shells: ``eval "$(maider env)"`` yields the exact values.

    Every value is quoted with :func:`shlex.quote`: ``$1.50``, backticks, quotes and newlines
    arrive unchanged. Names are checked, since they cannot be quoted.
    """
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"not a valid environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return "\n".join(lines) + ("\n" if lines else "")
