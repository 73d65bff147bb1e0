"""The docker compose file maider runs on the VM: vLLM, and optionally Open WebUI.

Decisions, against what the previous generation got wrong (shared notes, prior-art §3):

- **Pinned images.** :func:`check_pinned_image` refuses untagged, ``latest``, ``main`` and
  similar moving tags.
- **Only the two secrets reach the containers.** ``env_file`` is ``/opt/maider/secrets.env``,
  which holds ``HF_TOKEN`` and ``VLLM_API_KEY`` and nothing else. No maider setting travels as
  an environment variable: vLLM treats ``VLLM_*`` names as its own configuration, and
  ``VLLM_PORT`` in particular is its internal distributed port (it collided with the API port).
  The vLLM settings are command-line flags. The only other variables are the ones a healing
  fix sets (``NCCL_*``, see :mod:`maider.ops.heal`), through ``extra_env``.
- **127.0.0.1 only.** Ports are published on the VM's loopback; the SSH tunnel reaches them.
- **Literal strings.** Compose interpolates ``$`` everywhere in the file, so every ``$`` that
  comes from settings is escaped as ``$$``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from maider.errors import ConfigError
from maider.remote.commands import (
    COMPOSE_PROJECT,
    OPENWEBUI_REMOTE_PORT,
    OPENWEBUI_SERVICE,
    SECRETS_PATH,
    VLLM_REMOTE_PORT,
    VLLM_SERVICE,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from maider.sizing import VLLMSettings

GPU_VENDORS = ("NVIDIA", "AMD")

#: Where the Hugging Face cache lives in the vLLM image (HF_HOME defaults to ~/.cache/huggingface
#: and the container runs as root). A named volume, so weights survive a container recreation.
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
HF_CACHE_VOLUME = "hf-cache"
OPENWEBUI_DATA_VOLUME = "openwebui-data"

#: Tags that move: an image under one of these is not reproducible.
_MOVING_TAGS = frozenset({"latest", "main", "master", "nightly", "dev", "edge", "stable", "head"})
_IMAGE_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?::[0-9]+(?=/))?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def check_pinned_image(image: str) -> str:
    """``image`` if it names a fixed version (a tag that does not move, or a digest); else ConfigError."""
    match = _IMAGE_REF.match(image.strip())
    if match is None:
        raise ConfigError(
            f"{image!r} is not a container image reference (expected e.g. vllm/vllm-openai:v0.11.0)"
        )
    if match["digest"]:
        return image.strip()
    tag = match["tag"]
    if tag is None or tag.lower() in _MOVING_TAGS:
        raise ConfigError(
            f"image {image!r} is not pinned: use a version tag (e.g. vllm/vllm-openai:v0.11.0) or a "
            "@sha256 digest, so every VM runs the same software"
        )
    return image.strip()


def _literal(value: str) -> str:
    """``value`` protected from compose's variable interpolation."""
    return value.replace("$", "$$")


#: Flags maider sets itself. ``--api-key`` in the command line would also put the key into
#: compose.yaml, hence into the user-data, which must never hold a secret.
_RESERVED_FLAGS = ("--api-key",)


def vllm_command(vllm: VLLMSettings, *, model_id: str) -> list[str]:
    """The arguments after ``vllm serve``: the model, the sizing flags, then host and port.

    Host and port come last so that they win over anything in ``extra_args`` (argparse keeps the
    last occurrence): the published port and the tunnel depend on them.
    """
    args = vllm.to_args()
    for arg in args:
        if arg.split("=", 1)[0] in _RESERVED_FLAGS:
            raise ConfigError(
                f"vllm_extra_args must not contain {arg.split('=', 1)[0]}: maider sets the API key through "
                "the VM's secrets file, and a key on the command line would end up in the user-data"
            )
    if not model_id or model_id.startswith("-"):
        raise ConfigError(f"invalid model id {model_id!r}")
    return [model_id, *args, "--host", "0.0.0.0", "--port", str(VLLM_REMOTE_PORT)]


def render_compose(
    vllm: VLLMSettings,
    *,
    model_id: str,
    vllm_image: str,
    openwebui_image: str,
    enable_openwebui: bool,
    gpu_vendor: str = "NVIDIA",
    extra_env: Mapping[str, str] | None = None,
) -> str:
    """The compose file (YAML text) for /opt/maider/compose.yaml.

    ``extra_env``: more environment variables for the vLLM container (the healing fixes' NCCL
    settings); see :func:`check_extra_env` for what is allowed.
    """
    if gpu_vendor not in GPU_VENDORS:
        raise ConfigError(f"unsupported GPU vendor {gpu_vendor!r} (maider supports {', '.join(GPU_VENDORS)})")
    service = _vllm_service(vllm, model_id, check_pinned_image(vllm_image), gpu_vendor)
    for name, value in check_extra_env(extra_env or {}).items():
        service["environment"][name] = _literal(value)
    doc: dict[str, Any] = {
        "name": COMPOSE_PROJECT,
        "services": {VLLM_SERVICE: service},
        "volumes": {HF_CACHE_VOLUME: {}},
    }
    if enable_openwebui:
        doc["services"][OPENWEBUI_SERVICE] = _openwebui_service(check_pinned_image(openwebui_image))
        doc["volumes"][OPENWEBUI_DATA_VOLUME] = {}
    return dump_yaml(doc)


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
#: Set by the compose file itself or by secrets.env; an extra variable must not shadow them.
_OWN_ENV = frozenset({"DO_NOT_TRACK", "HF_TOKEN"})


def check_extra_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` if every variable may go on the vLLM service; else ConfigError.

    Names are upper-case identifiers. ``VLLM_*`` names are refused: vLLM reads them as its own
    configuration (the API key travels in secrets.env, never in the compose file, which is also
    in the user-data). Values are single lines (they are written as YAML scalars).
    """
    checked: dict[str, str] = {}
    for name, value in env.items():
        if not _ENV_NAME.match(name) or name.startswith("VLLM_") or name in _OWN_ENV:
            raise ConfigError(f"environment variable {name!r} cannot be set on the vLLM service")
        if "\n" in value or "\r" in value:
            raise ConfigError(f"environment variable {name} must be a single line")
        checked[name] = value
    return checked


def _vllm_service(vllm: VLLMSettings, model_id: str, image: str, gpu_vendor: str) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": image,
        # The entrypoint is set explicitly rather than inherited. vllm/vllm-openai's ENTRYPOINT
        # was `python3 -m vllm.entrypoints.openai.api_server` (which takes `--model <id>`) until
        # the v0.10 series and is `vllm serve` (which takes the model as its positional argument
        # and rejects `--model` next to it) since; the ROCm builds (rocm/vllm) have none at all.
        # `vllm serve` is on PATH in all of them, so naming it makes `command` mean the same
        # thing whichever image is pinned, and matches VLLMSettings.to_args() (no --model).
        "entrypoint": ["vllm", "serve"],
        "command": [_literal(arg) for arg in vllm_command(vllm, model_id=model_id)],
        # HF_TOKEN and VLLM_API_KEY only: vLLM requires VLLM_API_KEY on /v1/* (not on /health).
        "env_file": [SECRETS_PATH],
        "environment": {
            # vLLM's anonymous usage statistics: off for a private coding session. DO_NOT_TRACK
            # rather than VLLM_NO_USAGE_STATS, so no VLLM_* name but the API key is ever set.
            "DO_NOT_TRACK": "1",
        },
        "ports": [f"127.0.0.1:{VLLM_REMOTE_PORT}:{VLLM_REMOTE_PORT}"],
        "volumes": [f"{HF_CACHE_VOLUME}:{HF_CACHE_IN_CONTAINER}"],
        # Tensor-parallel workers share tensors through /dev/shm; Docker's default 64 MiB is far
        # too small. vLLM's own docs run the image with --ipc=host.
        "ipc": "host",
        "healthcheck": {
            # python3 is in every vLLM image (curl is not guaranteed in the ROCm ones).
            "test": [
                "CMD",
                "python3",
                "-c",
                f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{VLLM_REMOTE_PORT}/health', timeout=5)",
            ],
            "interval": "30s",
            "timeout": "10s",
            "retries": 5,
            # Downloading and loading the weights can take most of an hour for large models;
            # failures during that time do not count. (No start_interval: Docker < 25 rejects it.)
            "start_period": "60m",
        },
        "restart": "unless-stopped",
    }
    if gpu_vendor == "NVIDIA":
        service["deploy"] = {
            "resources": {
                "reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
            }
        }
    else:
        # Experimental: AMD GPUs through ROCm, as in vLLM's and AMD's `docker run` instructions
        # (--device /dev/kfd --device /dev/dri --group-add video --security-opt seccomp=unconfined).
        # The image must be a ROCm build of vLLM, not vllm/vllm-openai.
        service["devices"] = ["/dev/kfd", "/dev/dri"]
        service["group_add"] = ["video"]
        service["security_opt"] = ["seccomp=unconfined"]
    return service


#: Open WebUI reads its key for an OpenAI-compatible backend from OPENAI_API_KEY, and the key is
#: the vLLM key in secrets.env. `environment: {OPENAI_API_KEY: ${VLLM_API_KEY}}` would not work:
#: compose interpolates from *its own* environment (the shell, or a .env file next to the compose
#: file), not from env_file, so the value would be empty under systemd, and `ps`/`logs`/`up
#: --force-recreate` run without the key would recreate Open WebUI with an empty key. Instead the
#: container gets secrets.env and a tiny entrypoint renames the variable and drops the HF token
#: before starting the image's own command (`bash start.sh` in its WORKDIR, /app/backend). `$$` is compose's
#: escape for a literal `$`, so the container's shell does the expansion.
_OPENWEBUI_ENTRYPOINT = (
    'export OPENAI_API_KEY="$$VLLM_API_KEY"; unset VLLM_API_KEY HF_TOKEN; exec bash start.sh'
)


def _openwebui_service(image: str) -> dict[str, Any]:
    return {
        "image": image,
        "entrypoint": ["/bin/bash", "-c", _OPENWEBUI_ENTRYPOINT],
        "env_file": [SECRETS_PATH],
        "environment": {
            "OPENAI_API_BASE_URL": f"http://{VLLM_SERVICE}:{VLLM_REMOTE_PORT}/v1",
            # No Ollama on the VM: without this Open WebUI keeps probing for one.
            "ENABLE_OLLAMA_API": "False",
        },
        "ports": [f"127.0.0.1:{OPENWEBUI_REMOTE_PORT}:8080"],
        "volumes": [f"{OPENWEBUI_DATA_VOLUME}:/app/backend/data"],
        # Started after vLLM, not after it is healthy: `up -d` must not block while the weights
        # download. Open WebUI lists the model as soon as vLLM answers.
        "depends_on": [VLLM_SERVICE],
        "restart": "unless-stopped",
    }


# --------------------------------------------------------------------------------------------
# YAML emission (shared with cloudinit.py)
# --------------------------------------------------------------------------------------------


def dump_yaml(doc: Any, *, sort_keys: bool = False) -> str:
    """Block-style YAML; multi-line strings as literal blocks (``|``) so embedded files stay readable.

    PyYAML comes with huggingface_hub (a core dependency); it is imported here, not at module
    level, to keep `maider --help` light.
    """
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> Any:
        # PyYAML falls back to a quoted scalar by itself when a literal block cannot represent
        # the value (trailing spaces, control characters).
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    text: str = yaml.dump(
        doc,
        Dumper=_Dumper,
        sort_keys=sort_keys,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,  # never fold long command lines
    )
    return text
