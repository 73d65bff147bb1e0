"""Bad input: one clear line saying what is wrong and how to fix it, non-zero exit, no traceback.

Nothing in these paths may reach a cloud: the planning commands have no network code at all,
and `up` validates before it would spend (checked by the real-`up` cases at the end).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maider.paths import config_file_path
from tests.conftest import require_providers

LINODE = ("--provider", "linode")
RTX6000_1 = (*LINODE, "--region", "us-east", "--type", "g1-gpu-rtx6000-1")


def _config(text: str) -> None:
    path = config_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# (id, argv, files to write {"config"|".env": text}, env, fragments the error must contain)
CASES: list[tuple[str, list[str], dict[str, str], dict[str, str], list[str]]] = [
    ("unknown-provider", ["up", "--dry-run", "--provider", "nimbus"], {}, {}, ["unknown provider 'nimbus'"]),
    ("provider-typo", ["up", "--dry-run", "--provider", "linod"], {}, {}, ["did you mean 'linode'"]),
    (
        "unknown-region",
        ["up", "--dry-run", *LINODE, "--region", "mars-1"],
        {},
        {},
        ["no GPU VMs in region 'mars-1'", "GPU regions"],
    ),
    ("region-typo", ["up", "--dry-run", *LINODE, "--region", "us-eastt"], {}, {}, ["did you mean 'us-east'"]),
    (
        "type-not-sold-in-region",
        ["up", "--dry-run", *LINODE, "--region", "us-east", "--type", "g2-gpu-rtx4000a1-s"],
        {},
        {},
        ["does not sell g2-gpu-rtx4000a1-s in us-east", "g1-gpu-rtx6000"],
    ),
    (
        "unknown-type",
        ["up", "--dry-run", *LINODE, "--type", "g9-gpu-h900-1"],
        {},
        {},
        ["no GPU type 'g9-gpu-h900-1'"],
    ),
    (
        "tp-not-gpu-count",
        [
            "up",
            "--dry-run",
            *LINODE,
            "--region",
            "us-east",
            "--type",
            "g1-gpu-rtx6000-2",
            "--tensor-parallel-size",
            "1",
        ],
        {},
        {},
        ["tensor", "2"],
    ),
    (
        "tp-does-not-divide-heads",
        [
            "up",
            "--dry-run",
            *LINODE,
            "--region",
            "us-east",
            "--type",
            "g1-gpu-rtx6000-3",
            "--model",
            "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
        ],
        {},
        {},
        ["40", "heads"],
    ),
    (
        "model-too-large",
        [
            "up",
            "--dry-run",
            *LINODE,
            "--region",
            "us-ord",
            "--type",
            "g2-gpu-rtx4000a1-s",
            "--model",
            "Qwen/Qwen2.5-72B-Instruct-AWQ",
        ],
        {},
        {},
        ["GB"],
    ),
    (
        "context-over-model-limit",
        [
            "up",
            "--dry-run",
            *RTX6000_1,
            "--model",
            "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
            "--context",
            "131072",
        ],
        {},
        {},
        ["32768"],
    ),
    ("bf16-on-turing", ["up", "--dry-run", *RTX6000_1, "--dtype", "bfloat16"], {}, {}, ["float16"]),
    ("fp8-kv-on-turing", ["up", "--dry-run", *RTX6000_1, "--kv-cache-dtype", "fp8"], {}, {}, ["8.9"]),
    (
        "fp8-model-on-turing",
        [
            "up",
            "--dry-run",
            *LINODE,
            "--region",
            "us-east",
            "--type",
            "g1-gpu-rtx6000-4",
            "--model",
            "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8",
        ],
        {},
        {},
        ["8.9"],
    ),
    ("malformed-config", ["up", "--dry-run"], {"config": 'region = "us-east\n'}, {}, ["not valid TOML"]),
    ("unknown-config-key", ["validate"], {"config": 'modle = "x/y"\n'}, {}, ["did you mean 'model'"]),
    (
        "provider-table-not-a-table",
        ["up", "--dry-run"],
        {"config": 'provider = "linode"\nlinode = "tok"\n'},
        {},
        ["must be a table"],
    ),
    (
        "missing-ssh-key",
        ["up", "--dry-run", *RTX6000_1, "--ssh-public-key", "/nonexistent/id_ed25519.pub"],
        {},
        {},
        ["does not exist", "ssh-keygen"],
    ),
    (
        "private-key-as-public",
        ["up", "--dry-run", *RTX6000_1, "--ssh-public-key", "PRIVATE"],
        {},
        {},
        ["not an OpenSSH public key"],
    ),
    ("bad-dtype", ["up", "--dry-run", *RTX6000_1, "--dtype", "float8"], {}, {}, ["dtype", "float8"]),
    (
        "utilization-out-of-range",
        ["up", "--dry-run", "--gpu-memory-utilization", "1.2"],
        {},
        {},
        ["gpu_memory_utilization"],
    ),
    ("context-too-small", ["up", "--dry-run", "--context", "10"], {}, {}, ["max_model_len"]),
    (
        "unknown-model-offline",
        ["up", "--dry-run", *RTX6000_1, "--model", "nobody/no-such-model"],
        {},
        {},
        ["nobody/no-such-model"],
    ),
    ("bad-env-number", ["up", "--dry-run"], {}, {"MAIDER_MAX_NUM_SEQS": "lots"}, ["max_num_seqs"]),
    ("bad-legacy-dotenv", ["up", "--dry-run"], {".env": "VLLM_MAX_MODEL_LEN=lots\n"}, {}, ["max_model_len"]),
    ("list-types-unknown-region", ["list-types", "--region", "atlantis"], {}, {}, ["atlantis"]),
    ("recommend-budget-too-low", ["recommend", "--budget", "0.01"], {}, {}, ["raise --budget"]),
    ("recommend-negative-budget", ["recommend", "--budget", "-1"], {}, {}, ["--budget"]),
    (
        "wizard-would-overwrite",
        ["wizard", "--yes", *LINODE],
        {"config": 'provider = "linode"\n'},
        {},
        ["--force"],
    ),
    (
        "wizard-type-not-in-region",
        ["wizard", "--yes", *LINODE, "--region", "us-east", "--type", "g2-gpu-rtx4000a1-m"],
        {},
        {},
        ["does not sell"],
    ),
    (
        "region-without-provider-unknown",
        ["up", "--dry-run", "--region", "atlantis-9"],
        {},
        {},
        ["atlantis-9"],
    ),
    ("validate-missing-credentials", ["validate", *RTX6000_1], {}, {}, ["LINODE_TOKEN"]),
    (
        "validate-gated-model-without-hf-token",
        [
            "validate",
            *LINODE,
            "--region",
            "us-east",
            "--type",
            "g1-gpu-rtx6000-4",
            "--model",
            "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        ],
        {},
        {"LINODE_TOKEN": "tok"},
        ["HF_TOKEN"],
    ),
    ("real-up-without-credentials", ["up", *RTX6000_1], {}, {}, ["LINODE_TOKEN"]),
]


@pytest.mark.parametrize(
    ("argv", "files", "env", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_clear_line(
    cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    files: dict[str, str],
    env: dict[str, str],
    fragments: list[str],
) -> None:
    require_providers("linode")
    for name, text in files.items():
        if name == "config":
            _config(text)
        else:
            Path(name).write_text(text, encoding="utf-8")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if "PRIVATE" in argv:
        private = tmp_path / "id_ed25519"
        private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
        argv = [str(private) if a == "PRIVATE" else a for a in argv]
    result = cli(*argv)
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.stderr
    assert "Traceback" not in result.output
    if argv[0] != "validate":  # validate prints every problem; the others stop at the first
        assert len(errors) == 1, result.stderr
    text = "\n".join(errors)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def test_bad_input_through_the_real_console_script(maider_proc) -> None:
    require_providers("linode")
    result = maider_proc(
        "up", "--dry-run", "--provider", "linode", "--region", "us-east", "--type", "g2-gpu-rtx4000a1-s"
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: linode does not sell g2-gpu-rtx4000a1-s in us-east")
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_usage_errors_exit_nonzero_without_traceback(maider_proc) -> None:
    result = maider_proc("list-types", "--min-vram", "lots")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr and "--min-vram" in result.stderr
