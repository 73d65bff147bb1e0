"""The VM-side renderers (compose file, cloud-init user-data) and the remote command catalogue.

Rendered documents are checked against the published schemas in ``../shared/specs``
(``MAIDER_SPECS_DIR``): skipped with the reason when absent, a failure when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from maider.errors import ConfigError
from maider.remote import commands
from maider.remote.cloudinit import (
    MAX_USER_DATA_BYTES,
    SecretInUserDataError,
    UserDataTooLarge,
    assert_no_secrets,
    render_prepare_script,
    render_unit,
    render_user_data,
)
from maider.remote.compose import check_pinned_image, render_compose
from maider.sizing import VLLMSettings

REPO = Path(__file__).resolve().parent.parent

VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
ROCM_VLLM_IMAGE = "rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909"
OPENWEBUI_IMAGE = "ghcr.io/open-webui/open-webui:v0.6.34"
HF_TOKEN = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm1234567890"
API_KEY = "mk-3f9a01c2b7d44e0f9c1e5a7b2d8c6e4f-Zx_9"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _specs_dir() -> Path:
    env = os.environ.get("MAIDER_SPECS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "specs"


def _require_schema(relative: str) -> dict[str, Any]:
    """The JSON schema at ``specs/<relative>``: skip (locally) or fail (CI=true) when it is missing."""
    path = _specs_dir() / relative
    reason = None
    if not path.is_file():
        reason = f"schema {path} not found (set MAIDER_SPECS_DIR to the shared/specs folder)"
    else:
        try:
            import jsonschema  # noqa: F401
        except ImportError:
            reason = "jsonschema is not installed, so rendered documents cannot be validated"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        print(f"skipping: {reason}")
        pytest.skip(reason)
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _validate(schema: dict[str, Any], document: Any) -> None:
    import jsonschema

    declared = str(schema.get("$schema", ""))
    # Pick the validator from the declared draft explicitly: jsonschema's own lookup wants the
    # exact metaschema URI and warns on the spellings these files use ("…/draft-07/schema").
    cls: Any = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    for draft, validator in (
        ("draft-04", jsonschema.Draft4Validator),
        ("draft-07", jsonschema.Draft7Validator),
    ):
        if draft in declared:
            cls = validator
    errors = sorted(cls(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


@pytest.fixture(scope="module")
def host_key() -> tuple[str, str]:
    """A fresh ed25519 key pair in OpenSSH format: (private, public)."""
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode() + " maider-host"


@pytest.fixture(scope="module")
def user_key() -> str:
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return public.decode() + " me@laptop"


def _vllm(tp: int = 1, **kw: Any) -> VLLMSettings:
    base: dict[str, Any] = {
        "model": "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        "served_model_name": "qwen2.5-coder-32b-instruct-awq",
        "tensor_parallel_size": tp,
        "max_model_len": 32768,
    }
    base.update(kw)
    return VLLMSettings(**base)


def _compose(
    *, tp: int = 1, vendor: str = "NVIDIA", openwebui: bool = True, vllm: VLLMSettings | None = None
) -> str:
    settings = vllm or _vllm(tp)
    return render_compose(
        settings,
        model_id=settings.model,
        vllm_image=VLLM_IMAGE if vendor == "NVIDIA" else ROCM_VLLM_IMAGE,
        openwebui_image=OPENWEBUI_IMAGE,
        enable_openwebui=openwebui,
        gpu_vendor=vendor,
    )


def _user_data(
    user_key: str,
    host_key: tuple[str, str],
    *,
    install_gpu_stack: bool = True,
    openwebui: bool = True,
    tp: int = 1,
    vendor: str = "NVIDIA",
    compose_yaml: str | None = None,
    **kw: Any,
) -> str:
    return render_user_data(
        ssh_public_key=user_key,
        host_key_private=host_key[0],
        host_key_public=host_key[1],
        compose_yaml=compose_yaml or _compose(tp=tp, vendor=vendor, openwebui=openwebui),
        install_gpu_stack=install_gpu_stack,
        vllm_image=VLLM_IMAGE if vendor == "NVIDIA" else ROCM_VLLM_IMAGE,
        openwebui_image=OPENWEBUI_IMAGE if openwebui else None,
        **kw,
    )


def _load_user_data(text: str) -> dict[str, Any]:
    assert text.startswith("#cloud-config\n")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _written(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


# Provider flavours: Linode (plain Ubuntu, install the stack), DigitalOcean and Scaleway (GPU
# images). The AMD flavour is DigitalOcean's MI300X on its ROCm image.
FLAVOURS = [
    pytest.param(True, "NVIDIA", id="linode-ubuntu"),
    pytest.param(False, "NVIDIA", id="gpu-image-nvidia"),
    pytest.param(False, "AMD", id="gpu-image-amd"),
]
COMBINATIONS = [
    pytest.param(
        install,
        vendor,
        openwebui,
        tp,
        id=f"{'install' if install else 'image'}-{vendor}-owui{int(openwebui)}-tp{tp}",
    )
    for install, vendor in ((True, "NVIDIA"), (False, "NVIDIA"), (False, "AMD"))
    for openwebui in (True, False)
    for tp in (1, 2, 4)
]


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["NVIDIA", "AMD"])
@pytest.mark.parametrize("openwebui", [True, False])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_compose_validates_against_the_compose_spec(vendor: str, openwebui: bool, tp: int) -> None:
    schema = _require_schema("compose/compose-spec.json")
    doc = yaml.safe_load(_compose(tp=tp, vendor=vendor, openwebui=openwebui))
    _validate(schema, doc)
    assert set(doc["services"]) == ({"vllm", "openwebui"} if openwebui else {"vllm"})


def test_compose_validates_with_every_optional_vllm_flag() -> None:
    schema = _require_schema("compose/compose-spec.json")
    settings = _vllm(
        8,
        dtype="bfloat16",
        kv_cache_dtype="fp8",
        enable_expert_parallel=True,
        trust_remote_code=True,
        tool_call_parser="hermes",
        extra_args=("--tokenizer-mode", "mistral", "--override-generation-config", '{"temperature": 0.2}'),
    )
    _validate(schema, yaml.safe_load(_compose(vllm=settings)))


@pytest.mark.parametrize("vendor", ["NVIDIA", "AMD"])
def test_ports_are_published_on_the_vms_loopback_only(vendor: str) -> None:
    doc = yaml.safe_load(_compose(vendor=vendor, openwebui=True))
    published = {name: service.get("ports", []) for name, service in doc["services"].items()}
    assert published == {"vllm": ["127.0.0.1:8000:8000"], "openwebui": ["127.0.0.1:3000:8080"]}
    # Nothing reaches the host network some other way.
    assert all(service.get("network_mode") != "host" for service in doc["services"].values())


def test_images_are_pinned() -> None:
    doc = yaml.safe_load(_compose(openwebui=True))
    images = [service["image"] for service in doc["services"].values()]
    assert images == [VLLM_IMAGE, OPENWEBUI_IMAGE]
    for image in images:
        tag = image.rsplit(":", 1)[1]
        assert tag not in ("latest", "main")


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai",
        "vllm/vllm-openai:latest",
        "ghcr.io/open-webui/open-webui:main",
        "ghcr.io/open-webui/open-webui:MAIN",
        "registry.example:5000/vllm",
        "not an image",
    ],
)
def test_unpinned_images_are_refused(image: str) -> None:
    with pytest.raises(ConfigError, match=r"pinned|not a container image"):
        check_pinned_image(image)
    with pytest.raises(ConfigError):
        render_compose(
            _vllm(),
            model_id="m/m",
            vllm_image=image,
            openwebui_image=OPENWEBUI_IMAGE,
            enable_openwebui=True,
        )
    with pytest.raises(ConfigError):
        render_compose(
            _vllm(), model_id="m/m", vllm_image=VLLM_IMAGE, openwebui_image=image, enable_openwebui=True
        )


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:v0.11.0",
        "registry.example:5000/team/vllm:2025.10.1",
        "localimage:7",
        "vllm/vllm-openai@sha256:" + "a" * 64,
        "vllm/vllm-openai:latest@sha256:" + "b" * 64,  # a digest pins even a moving tag
    ],
)
def test_pinned_images_are_accepted(image: str) -> None:
    assert check_pinned_image(image) == image


def test_disabled_open_webui_image_is_not_checked() -> None:
    """With Open WebUI off, its (unused) image setting cannot stop a session."""
    text = render_compose(
        _vllm(), model_id="m/m", vllm_image=VLLM_IMAGE, openwebui_image="x:latest", enable_openwebui=False
    )
    assert "open-webui" not in text


def test_vllm_command_carries_the_model_and_the_sizing() -> None:
    settings = _vllm(4, max_model_len=65536, gpu_memory_utilization=0.92, max_num_seqs=8)
    service = yaml.safe_load(_compose(vllm=settings))["services"]["vllm"]
    assert service["entrypoint"] == ["vllm", "serve"]
    command = service["command"]
    assert all(isinstance(arg, str) for arg in command)
    # `vllm serve <model>`: the model is positional and comes first; no --model flag.
    assert command[0] == "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"
    assert "--model" not in command

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("--served-model-name") == "qwen2.5-coder-32b-instruct-awq"
    assert value("--max-model-len") == "65536"
    assert value("--tensor-parallel-size") == "4"
    assert value("--gpu-memory-utilization") == "0.92"
    # Host and port come last, so nothing in extra_args can move the API off the published port.
    assert command[-4:] == ["--host", "0.0.0.0", "--port", "8000"]


def test_extra_args_reach_vllm_literally() -> None:
    """Compose interpolates `$` everywhere: a `$` from the settings must reach vLLM unchanged."""
    settings = _vllm(extra_args=("--chat-template", "/tmp/$HOME.jinja", "--port", "9999"))
    text = _compose(vllm=settings)
    command = yaml.safe_load(text)["services"]["vllm"]["command"]
    assert "/tmp/$$HOME.jinja" in command  # compose turns $$ into $
    assert command[-2:] == ["--port", "8000"]


@pytest.mark.parametrize("flag", [("--api-key", "abc"), ("--api-key=abc",)])
def test_an_api_key_in_extra_args_is_refused(flag: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="--api-key"):
        _compose(vllm=_vllm(extra_args=flag))


def test_only_the_two_secrets_and_no_vllm_settings_reach_the_vllm_environment() -> None:
    """The previous generation's env_file leaked VLLM_PORT (vLLM's internal port) and friends."""
    service = yaml.safe_load(_compose())["services"]["vllm"]
    assert service["env_file"] == ["/opt/maider/secrets.env"]
    from_file = [
        line.split("=", 1)[0] for line in commands.render_secrets_env(HF_TOKEN, API_KEY).splitlines()
    ]
    names = set(service.get("environment", {})) | set(from_file)
    assert "VLLM_PORT" not in names
    assert {n for n in names if n.startswith("VLLM_")} == {"VLLM_API_KEY"}
    assert set(from_file) == {"HF_TOKEN", "VLLM_API_KEY"}


@pytest.mark.parametrize("vendor", ["NVIDIA", "AMD"])
def test_vllm_gets_the_gpus_shared_memory_cache_and_a_health_check(vendor: str) -> None:
    doc = yaml.safe_load(_compose(vendor=vendor))
    service = doc["services"]["vllm"]
    assert service["ipc"] == "host"
    assert service["restart"] == "unless-stopped"
    assert "hf-cache:/root/.cache/huggingface" in service["volumes"]
    assert "hf-cache" in doc["volumes"]
    assert any("/health" in part for part in service["healthcheck"]["test"])
    if vendor == "NVIDIA":
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert "devices" not in service
    else:
        assert service["devices"] == ["/dev/kfd", "/dev/dri"]
        assert service["group_add"] == ["video"]
        assert "deploy" not in service


def test_unknown_gpu_vendor_is_refused() -> None:
    with pytest.raises(ConfigError, match="GPU vendor"):
        _compose(vendor="Intel")


def test_open_webui_talks_to_vllm_with_the_vllm_key(tmp_path: Path) -> None:
    """Run Open WebUI's entrypoint in a real shell, as the container would, with secrets.env loaded."""
    service = yaml.safe_load(_compose())["services"]["openwebui"]
    assert service["environment"]["OPENAI_API_BASE_URL"] == "http://vllm:8000/v1"
    assert service["env_file"] == ["/opt/maider/secrets.env"]
    assert service["depends_on"] == ["vllm"]
    assert "openwebui-data:/app/backend/data" in service["volumes"]
    shell, flag, script = service["entrypoint"]
    assert (shell, flag) == ("/bin/bash", "-c")
    # Compose turns `$$` into `$`; the image's WORKDIR holds start.sh, faked here.
    script = script.replace("$$", "$")
    (tmp_path / "start.sh").write_text(
        'echo "key=${OPENAI_API_KEY:-} hf=${HF_TOKEN:-unset} vllm=${VLLM_API_KEY:-unset}"\n'
    )
    env = {"PATH": os.environ["PATH"], "HF_TOKEN": HF_TOKEN, "VLLM_API_KEY": API_KEY}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"key={API_KEY} hf=unset vllm=unset"


# --------------------------------------------------------------------------------------------
# User-data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("install", "vendor", "openwebui", "tp"), COMBINATIONS)
def test_user_data_validates_against_the_cloud_config_schema(
    user_key: str, host_key: tuple[str, str], install: bool, vendor: str, openwebui: bool, tp: int
) -> None:
    schema = _require_schema("cloud-init/schema-cloud-config-v1.json")
    text = _user_data(
        user_key, host_key, install_gpu_stack=install, openwebui=openwebui, tp=tp, vendor=vendor
    )
    doc = _load_user_data(text)
    _validate(schema, doc)
    # The compose file it carries is the one rendered, and valid too.
    compose_schema = _require_schema("compose/compose-spec.json")
    compose_text = _written(doc)["/opt/maider/compose.yaml"]["content"]
    assert compose_text == _compose(tp=tp, vendor=vendor, openwebui=openwebui)
    _validate(compose_schema, yaml.safe_load(compose_text))


def test_user_data_with_extra_packages_validates(user_key: str, host_key: tuple[str, str]) -> None:
    schema = _require_schema("cloud-init/schema-cloud-config-v1.json")
    text = _user_data(user_key, host_key, extra_packages=["nvtop", "htop=3.3.0-4build1"])
    _validate(schema, _load_user_data(text))
    assert "nvtop htop=3.3.0-4build1" in text


def test_bad_extra_package_names_are_refused(user_key: str, host_key: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="apt package"):
        _user_data(user_key, host_key, extra_packages=["nvtop; curl evil | sh"])


@pytest.mark.parametrize(("install", "vendor"), FLAVOURS)
def test_user_data_keys_root_access_and_pins_the_host_key(
    user_key: str, host_key: tuple[str, str], install: bool, vendor: str
) -> None:
    doc = _load_user_data(_user_data(user_key, host_key, install_gpu_stack=install, vendor=vendor))
    assert doc["ssh_authorized_keys"] == [user_key]
    assert doc["disable_root"] is False
    assert doc["ssh_pwauth"] is False
    assert doc["ssh_deletekeys"] is True
    assert doc["ssh_keys"] == {"ed25519_private": host_key[0].strip() + "\n", "ed25519_public": host_key[1]}
    # No power_state (the reboot raced the tunnel) and no upgrades (a new kernel needs a reboot).
    for forbidden in ("power_state", "package_upgrade", "package_reboot_if_required", "apt_upgrade"):
        assert forbidden not in doc


@pytest.mark.parametrize(("install", "vendor"), FLAVOURS)
def test_user_data_writes_the_stack_and_enables_it_without_starting_it(
    user_key: str, host_key: tuple[str, str], install: bool, vendor: str
) -> None:
    doc = _load_user_data(_user_data(user_key, host_key, install_gpu_stack=install, vendor=vendor))
    files = _written(doc)
    assert {path: f["permissions"] for path, f in files.items()} == {
        "/opt/maider/compose.yaml": "0644",
        "/etc/systemd/system/maider-stack.service": "0644",
        "/opt/maider/prepare-host.sh": "0755",
    }
    assert files["/etc/systemd/system/maider-stack.service"]["content"] == render_unit()
    runcmd = doc["runcmd"]
    assert runcmd[0] == "set -e"  # a failed step makes cloud-init report "error"
    assert runcmd[1:4] == [
        ["bash", "/opt/maider/prepare-host.sh"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "maider-stack.service"],
    ]
    image = VLLM_IMAGE if vendor == "NVIDIA" else ROCM_VLLM_IMAGE
    assert runcmd[4] == f"docker pull {image} & docker pull {OPENWEBUI_IMAGE} & wait"
    flat = json.dumps(runcmd)
    assert "systemctl start" not in flat and "compose up" not in flat and "reboot" not in flat


def test_user_data_without_open_webui_pulls_only_vllm(user_key: str, host_key: tuple[str, str]) -> None:
    doc = _load_user_data(_user_data(user_key, host_key, openwebui=False))
    assert doc["runcmd"][-1] == f"docker pull {VLLM_IMAGE} & wait"


def test_no_secret_ever_reaches_user_data(user_key: str, host_key: tuple[str, str]) -> None:
    secrets_env = commands.render_secrets_env(HF_TOKEN, API_KEY)
    assert HF_TOKEN in secrets_env and API_KEY in secrets_env  # the tokens are the real ones
    for install, vendor in ((True, "NVIDIA"), (False, "NVIDIA"), (False, "AMD")):
        for openwebui in (True, False):
            text = _user_data(
                user_key,
                host_key,
                install_gpu_stack=install,
                vendor=vendor,
                openwebui=openwebui,
                secrets=[HF_TOKEN, API_KEY],
            )
            assert HF_TOKEN not in text
            assert API_KEY not in text
            assert "HF_TOKEN=" not in text and "VLLM_API_KEY=" not in text
            assert_no_secrets(text, [HF_TOKEN, API_KEY, None])


def test_the_secret_guard_stops_a_leak_without_repeating_the_secret(
    user_key: str, host_key: tuple[str, str]
) -> None:
    leaky_compose = _compose().replace("DO_NOT_TRACK: '1'", f"HF_TOKEN: {HF_TOKEN}")
    with pytest.raises(SecretInUserDataError) as caught:
        _user_data(user_key, host_key, compose_yaml=leaky_compose, secrets=[None, API_KEY, HF_TOKEN])
    assert "secret #3" in str(caught.value)
    assert HF_TOKEN not in str(caught.value)
    with pytest.raises(SecretInUserDataError):
        assert_no_secrets(f"x\n{API_KEY}\n", [API_KEY])
    assert_no_secrets("nothing here", ["", None, "   "])  # empty secrets are not "found" everywhere


def test_user_data_over_the_size_limit_is_a_clear_error(user_key: str, host_key: tuple[str, str]) -> None:
    huge = _vllm(extra_args=("--chat-template", "x" * MAX_USER_DATA_BYTES))
    with pytest.raises(UserDataTooLarge, match=r"bytes, over the 65535 bytes"):
        _user_data(user_key, host_key, compose_yaml=_compose(vllm=huge))
    # A normal document is far below it.
    assert len(_user_data(user_key, host_key).encode()) < MAX_USER_DATA_BYTES // 3


def test_malformed_keys_are_refused(user_key: str, host_key: tuple[str, str]) -> None:
    with pytest.raises(ConfigError):
        _user_data("not a key", host_key)
    with pytest.raises(ConfigError, match="ed25519"):
        _user_data(user_key, (host_key[0], "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 host"))
    with pytest.raises(ConfigError, match="private key"):
        _user_data(user_key, (host_key[1], host_key[1]))


# --------------------------------------------------------------------------------------------
# The host preparation script and the unit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("install", [True, False])
def test_prepare_script_is_valid_bash(install: bool, tmp_path: Path) -> None:
    script = tmp_path / "prepare-host.sh"
    script.write_text(render_prepare_script(install_gpu_stack=install, extra_packages=["nvtop"]))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_prepare_script_installs_the_gpu_stack_on_plain_ubuntu() -> None:
    script = render_prepare_script(install_gpu_stack=True)
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    # Driver: a pinned server branch built for the running kernel, no new kernel, no reboot.
    assert re.search(r"nvidia-headless-\d+-server", script)
    assert "linux-headers-${kver}" in script and 'kver="$(uname -r)"' in script
    # Docker CE for this machine's architecture, with the compose plugin.
    assert "arch=$(dpkg --print-architecture)" in script and "arch=amd64" not in script
    assert "docker-compose-plugin" in script
    # The container toolkit, pinned, wired into Docker.
    assert re.search(r"nvidia-container-toolkit=\$\{v\}", script) and 'local v="1.' in script
    assert "nvidia-ctk runtime configure --runtime=docker" in script
    assert "systemctl restart docker" in script
    # What runs (comments and quoted messages left out) never reboots, upgrades or swaps kernels.
    code = "\n".join(
        re.sub(r'"[^"]*"', '""', line) for line in script.splitlines() if not line.lstrip().startswith("#")
    )
    for forbidden in (
        r"\breboot\b",
        r"\bshutdown\b",
        r"\bupgrade\b",
        r"dist-upgrade",
        r"ubuntu-drivers",
        r"linux-image",
    ):
        assert not re.search(forbidden, code), forbidden


def test_prepare_script_only_checks_docker_on_gpu_images() -> None:
    script = render_prepare_script(install_gpu_stack=False)
    assert "nvidia-headless" not in script and "nvidia-ctk" not in script
    assert "docker compose version" in script
    assert "docker-compose-plugin" in script  # installed only when compose is missing


def test_unit_runs_the_compose_stack_once_secrets_exist() -> None:
    unit = render_unit()
    lines = set(unit.splitlines())
    for line in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=docker.service network-online.target",
        "Requires=docker.service",
        "ConditionPathExists=/opt/maider/secrets.env",
        "ExecStart=/usr/bin/docker compose -f /opt/maider/compose.yaml up -d --remove-orphans",
        "ExecStop=/usr/bin/docker compose -f /opt/maider/compose.yaml down",
        "WantedBy=multi-user.target",
    ):
        assert line in lines, line


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def test_commands_are_the_ones_in_the_lifecycle_design() -> None:
    """tests/vmsim interprets the commands of docs/LIFECYCLE.md: the catalogue must match it."""
    design = (REPO / "docs" / "LIFECYCLE.md").read_text(encoding="utf-8")
    for command in (
        commands.CLOUD_INIT_STATUS,
        commands.write_secret_file(),
        commands.START_STACK,
        commands.RESTART_STACK,
        commands.COMPOSE_PS,
        commands.vllm_logs(),
        commands.RECREATE,
        commands.NVIDIA_SMI_QUERY,
    ):
        assert f"`{command}`" in design, command
    assert commands.vllm_logs(50).endswith("--tail 50 vllm")
    with pytest.raises(ValueError):
        commands.vllm_logs(0)


def test_secrets_env_holds_exactly_the_two_secrets() -> None:
    assert commands.render_secrets_env(HF_TOKEN, API_KEY) == f"HF_TOKEN={HF_TOKEN}\nVLLM_API_KEY={API_KEY}\n"
    # Public models need no token: no empty HF_TOKEN= line either.
    assert commands.render_secrets_env(None, API_KEY) == f"VLLM_API_KEY={API_KEY}\n"
    assert commands.render_secrets_env("", API_KEY) == f"VLLM_API_KEY={API_KEY}\n"


@pytest.mark.parametrize(
    ("hf_token", "api_key", "problem"),
    [
        ("hf_abc\nVLLM_PORT=1", API_KEY, "line break"),
        ('hf_"abc"', API_KEY, "quote"),
        ("hf_abc def", API_KEY, "whitespace"),
        ("hf_${HOME}", API_KEY, "a character other than"),
        (HF_TOKEN, "", "empty"),
        (HF_TOKEN, "key#comment", "a character other than"),
    ],
)
def test_secrets_env_refuses_values_an_env_file_would_mangle(
    hf_token: str, api_key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        commands.render_secrets_env(hf_token, api_key)
    assert hf_token not in str(caught.value) or not hf_token


# --------------------------------------------------------------------------------------------
# Parsers: cloud-init status
# --------------------------------------------------------------------------------------------

CLOUD_INIT_24_RUNNING = """{
  "boot_status_code": "enabled-by-generator",
  "datasource": "",
  "detail": "Running in stage: modules-final",
  "errors": [],
  "extended_status": "running",
  "init": {"errors": [], "finished": 1759831000.1, "recoverable_errors": {}, "start": 1759830990.2},
  "last_update": "Tue, 07 Oct 2025 10:03:20 +0000",
  "recoverable_errors": {},
  "stage": "modules-final",
  "status": "running"
}"""

CLOUD_INIT_24_DONE = """{
  "boot_status_code": "enabled-by-generator",
  "datasource": "linode",
  "detail": "DataSourceLinode",
  "errors": [],
  "extended_status": "done",
  "last_update": "Tue, 07 Oct 2025 10:09:41 +0000",
  "recoverable_errors": {},
  "status": "done"
}"""

CLOUD_INIT_24_DEGRADED = """{
  "boot_status_code": "enabled-by-generator",
  "datasource": "digitalocean",
  "detail": "DataSourceDigitalOcean",
  "errors": [],
  "extended_status": "degraded done",
  "last_update": "Tue, 07 Oct 2025 10:09:41 +0000",
  "recoverable_errors": {
    "WARNING": [
      "Deprecated cloud-config provided: chpasswd.list:  Deprecated in version 22.2."
    ]
  },
  "status": "done"
}"""

CLOUD_INIT_24_ERROR = """{
  "boot_status_code": "enabled-by-generator",
  "datasource": "linode",
  "detail": "DataSourceLinode",
  "errors": [
    "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"
  ],
  "extended_status": "error - done",
  "last_update": "Tue, 07 Oct 2025 10:06:02 +0000",
  "recoverable_errors": {},
  "status": "error"
}"""

CLOUD_INIT_24_ERROR_STILL_RUNNING = """{
  "errors": ["('write_files', PermissionError(13, 'Permission denied'))"],
  "extended_status": "error - running",
  "recoverable_errors": {},
  "status": "error"
}"""

CLOUD_INIT_23_1_DONE = """{
  "_schema_version": "1",
  "boot_status_code": "enabled-by-generator",
  "datasource": "scaleway",
  "detail": "DataSourceScaleway",
  "errors": [],
  "last_update": "Tue, 07 Oct 2025 10:09:41 +0000",
  "modules-config": {"errors": [], "finished": 1759831700.5, "start": 1759831699.9},
  "status": "done"
}"""

CLOUD_INIT_LONG_TEXT_ERROR = """status: error
extended_status: error - done
boot_status_code: enabled-by-generator
last_update: Tue, 07 Oct 2025 10:06:02 +0000
detail: DataSourceLinode
errors:
\t- ('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))
recoverable_errors: {}
"""


@pytest.mark.parametrize(
    ("stdout", "status", "done", "failed", "degraded"),
    [
        pytest.param(CLOUD_INIT_24_RUNNING, "running", False, False, False, id="24-running"),
        pytest.param(CLOUD_INIT_24_DONE, "done", True, False, False, id="24-done"),
        pytest.param(CLOUD_INIT_24_DEGRADED, "done", True, False, True, id="24-degraded-done"),
        pytest.param(CLOUD_INIT_24_ERROR, "error", False, True, False, id="24-error"),
        pytest.param(CLOUD_INIT_24_ERROR_STILL_RUNNING, "error", False, True, False, id="24-error-running"),
        pytest.param(CLOUD_INIT_23_1_DONE, "done", True, False, False, id="23.1-done"),
        pytest.param('{"status": "degraded", "errors": []}', "done", True, False, True, id="bare-degraded"),
        pytest.param(
            '{"status": "not started", "errors": []}', "not started", False, False, False, id="not-started"
        ),
        pytest.param("status: done\n", "done", True, False, False, id="text-done"),
        pytest.param("......\nstatus: running\n", "running", False, False, False, id="text-wait-dots"),
        pytest.param(CLOUD_INIT_LONG_TEXT_ERROR, "error", False, True, False, id="text-long-error"),
        pytest.param('{"status": "disabled", "errors": []}', "disabled", False, True, False, id="disabled"),
    ],
)
def test_parse_cloud_init_status(stdout: str, status: str, done: bool, failed: bool, degraded: bool) -> None:
    parsed = commands.parse_cloud_init_status(stdout)
    assert (parsed.status, parsed.done, parsed.failed, parsed.degraded) == (status, done, failed, degraded)
    assert parsed.running == (not done and not failed)
    if failed:
        assert parsed.errors, "a failure always says why"


def test_cloud_init_errors_are_reported_verbatim() -> None:
    error = commands.parse_cloud_init_status(CLOUD_INIT_24_ERROR)
    assert error.errors == (
        "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))",
    )
    assert error.extended_status == "error - done"
    text = commands.parse_cloud_init_status(CLOUD_INIT_LONG_TEXT_ERROR)
    assert text.errors == error.errors
    degraded = commands.parse_cloud_init_status(CLOUD_INIT_24_DEGRADED)
    assert degraded.recoverable_errors == (
        "WARNING: Deprecated cloud-config provided: chpasswd.list:  Deprecated in version 22.2.",
    )


@pytest.mark.parametrize(
    "stdout",
    ["", "   \n", "{not json", '{"errors": []}', "cloud-init: command not found", '{"status": "sleeping"}'],
)
def test_parse_cloud_init_status_rejects_garbage(stdout: str) -> None:
    with pytest.raises(ValueError):
        commands.parse_cloud_init_status(stdout)


# --------------------------------------------------------------------------------------------
# Parsers: docker compose ps
# --------------------------------------------------------------------------------------------

COMPOSE_PS_JSON_LINES = (
    '{"Command":"\\"vllm serve Qwen/Qwen2.5-Coder-32B-Instruct-AWQ --served-model-name qwen…\\"","CreatedAt":"2025-10-07 10:10:02 +0000 UTC",'
    '"ExitCode":0,"Health":"starting","ID":"5c1f0e2d9a7b","Image":"vllm/vllm-openai:v0.11.0","Labels":"com.docker.compose.project=maider",'
    '"LocalVolumes":"1","Mounts":"maider_hf-cache","Name":"maider-vllm-1","Names":"maider-vllm-1","Networks":"maider_default",'
    '"Ports":"127.0.0.1:8000->8000/tcp","Project":"maider","Publishers":[{"URL":"127.0.0.1","TargetPort":8000,"PublishedPort":8000,"Protocol":"tcp"}],'
    '"RunningFor":"2 minutes ago","Service":"vllm","Size":"0B","State":"running","Status":"Up 2 minutes (health: starting)"}\n'
    '{"Command":"\\"/bin/bash -c \'export…\'\\"","CreatedAt":"2025-10-07 10:10:03 +0000 UTC","ExitCode":0,"Health":"healthy",'
    '"ID":"8e2a4b6c0d1f","Image":"ghcr.io/open-webui/open-webui:v0.6.34","Labels":"","LocalVolumes":"1","Mounts":"maider_openwebui-data",'
    '"Name":"maider-openwebui-1","Names":"maider-openwebui-1","Networks":"maider_default","Ports":"127.0.0.1:3000->8080/tcp",'
    '"Project":"maider","Publishers":[{"URL":"127.0.0.1","TargetPort":8080,"PublishedPort":3000,"Protocol":"tcp"}],'
    '"RunningFor":"2 minutes ago","Service":"openwebui","Size":"0B","State":"running","Status":"Up 2 minutes (healthy)"}\n'
)

COMPOSE_PS_ARRAY = """[{"ID":"5c1f0e2d9a7b","Name":"maider-vllm-1","Image":"vllm/vllm-openai:v0.11.0","Command":"vllm serve ...",
"Project":"maider","Service":"vllm","Created":1759831802,"State":"exited","Status":"Exited (1) 5 seconds ago",
"Health":"","ExitCode":1,"Publishers":null},
{"ID":"8e2a4b6c0d1f","Name":"maider-openwebui-1","Image":"ghcr.io/open-webui/open-webui:v0.6.34","Command":"bash start.sh",
"Project":"maider","Service":"openwebui","Created":1759831803,"State":"running","Status":"Up 4 minutes (unhealthy)",
"Health":"unhealthy","ExitCode":0,"Publishers":[{"URL":"127.0.0.1","TargetPort":8080,"PublishedPort":3000,"Protocol":"tcp"}]}]"""


def test_parse_compose_ps_json_lines() -> None:
    vllm, webui = commands.parse_compose_ps(COMPOSE_PS_JSON_LINES)
    assert (vllm.service, vllm.name, vllm.state, vllm.health) == (
        "vllm",
        "maider-vllm-1",
        "running",
        "starting",
    )
    assert vllm.running and not vllm.healthy
    assert vllm.publishers == (commands.Publisher("127.0.0.1", 8000, 8000, "tcp"),)
    assert webui.healthy and webui.publishers[0].published_port == 3000


def test_parse_compose_ps_array() -> None:
    vllm, webui = commands.parse_compose_ps(COMPOSE_PS_ARRAY)
    assert (vllm.state, vllm.exit_code, vllm.publishers) == ("exited", 1, ())
    assert not vllm.running and not vllm.healthy
    assert vllm.status == "Exited (1) 5 seconds ago"
    assert webui.running and not webui.healthy


@pytest.mark.parametrize("stdout", ["", "\n", "[]"])
def test_parse_compose_ps_without_containers(stdout: str) -> None:
    assert commands.parse_compose_ps(stdout) == []


@pytest.mark.parametrize(
    "stdout", ["no configuration file provided: not found", '{"Service": "vllm"', "[1, 2]"]
)
def test_parse_compose_ps_rejects_garbage(stdout: str) -> None:
    with pytest.raises(ValueError):
        commands.parse_compose_ps(stdout)


# --------------------------------------------------------------------------------------------
# Parsers: nvidia-smi
# --------------------------------------------------------------------------------------------


def test_parse_nvidia_smi_one_gpu() -> None:
    (gpu,) = commands.parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 74213, 81559, 97\n")
    assert gpu == commands.GpuReading(0, "NVIDIA H100 80GB HBM3", 74213, 81559, 97)


def test_parse_nvidia_smi_four_gpus() -> None:
    stdout = (
        "0, NVIDIA L40S, 41120, 46068, 88\n"
        "1, NVIDIA L40S, 41096, 46068, 91\n"
        "2, NVIDIA L40S, 41096, 46068, 90\n"
        "3, NVIDIA L40S, 41096, 46068, 89\n"
    )
    gpus = commands.parse_nvidia_smi(stdout)
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA L40S"}
    assert sum(g.memory_used_mib or 0 for g in gpus) == 41120 + 3 * 41096
    assert all(g.memory_total_mib == 46068 for g in gpus)


def test_parse_nvidia_smi_unsupported_fields_and_no_devices() -> None:
    (gpu,) = commands.parse_nvidia_smi("0, Quadro RTX 6000, 1, 24576, [N/A]\n")
    assert gpu.utilization_pct is None and gpu.memory_total_mib == 24576
    assert commands.parse_nvidia_smi("No devices were found\n") == []
    with pytest.raises(ValueError):
        commands.parse_nvidia_smi(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            "Make sure that the latest NVIDIA driver is installed and running.\n"
        )
