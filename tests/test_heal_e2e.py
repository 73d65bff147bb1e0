"""Auto-heal during `maider up`, end to end: each failure mode is acted out by the stand-in vLLM
on an emulated VM (with vLLM's real log text), and the fix maider applies really cures it there:
the compose file on the VM changes, the container is recreated, and vLLM answers again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_providers
from tests.lifecycle_world import SETUPS, World, ledger_id, make_world

COMPOSE = "/opt/maider/compose.yaml"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


def _up(world: World, cli: Any, pid: str = "digitalocean", *extra: str) -> Any:
    require_providers(pid)
    world.sim(pid)
    region, type_id = SETUPS[pid]
    return cli("up", "-p", pid, "-r", region, "-t", type_id, *extra)


def _vm(world: World) -> Any:
    [vm] = world.farm.vms
    return vm


def _vllm_service(vm: Any) -> dict[str, Any]:
    doc = yaml.safe_load(vm.read_text(COMPOSE))
    service: dict[str, Any] = doc["services"]["vllm"]
    return service


def _flag(service: dict[str, Any], name: str) -> str | None:
    command = service["command"]
    return str(command[command.index(name) + 1]) if name in command else None


def _answers(world: World, cli: Any) -> str:
    """A chat completion through the session's tunnel, as aider would send it."""
    import urllib.request

    env = cli("env")
    assert env.exit_code == 0, env.output
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines() if "=" in line
    )
    base, key = values["OPENAI_API_BASE"].strip("'\""), values["OPENAI_API_KEY"].strip("'\"")
    model = values["AIDER_MODEL"].strip("'\"").removeprefix("openai/")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    request = urllib.request.Request(
        f"{base}/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return str(json.loads(response.read())["choices"][0]["message"]["content"])


def test_oom_is_healed_by_lowering_the_utilization_stepwise(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.oom(fits_at=0.8))
    up = _up(world, cli)
    assert up.exit_code == 0, up.output
    out = up.output
    assert "healing 1/3: CUDA ran out of GPU memory; lower --gpu-memory-utilization 0.9 → 0.85" in out
    assert "healing 2/3: CUDA ran out of GPU memory; lower --gpu-memory-utilization 0.85 → 0.8" in out
    assert "healing 3/3" not in out

    [record] = world.records()
    assert record["status"] == "ready"
    attempts = record["heal_attempts"]
    assert [(a["attempt"], a["kind"], a["outcome"], a["during"]) for a in attempts] == [
        (1, "cuda_oom", "failed", "up"),
        (2, "cuda_oom", "healed", "up"),
    ]
    assert record["vllm"]["gpu_memory_utilization"] == 0.8
    assert record["stack"]["configured_utilization"] == 0.9

    vm = _vm(world)
    service = _vllm_service(vm)
    assert _flag(service, "--gpu-memory-utilization") == "0.8"
    assert vm.vllm.config.gpu_memory_utilization == 0.8 and vm.vllm.is_ready()
    # Recreated, not restarted: each fix is a new container reading the new compose file.
    assert sum("up -d --force-recreate" in e.command for e in vm.exec_log) == 2
    assert _answers(world, cli)


def test_kv_cache_error_shortens_the_context_to_what_vllm_printed(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.kv_cache(max_tokens=18000))
    up = _up(world, cli, "digitalocean", "--context", "32768")
    assert up.exit_code == 0, up.output
    assert "shorten --max-model-len 32768 → 17408 (the KV cache holds 18000 tokens)" in up.output

    [record] = world.records()
    assert record["max_model_len"] == 17408 and record["vllm"]["max_model_len"] == 17408
    assert [a["outcome"] for a in record["heal_attempts"]] == ["healed"]
    assert _flag(_vllm_service(_vm(world)), "--max-model-len") == "17408"
    # aider is told the context that really runs.
    metadata = json.loads(
        next((world.state_dir() / "sessions" / record["id"] / "aider").glob("*.json")).read_text()
    )
    assert any(v.get("max_input_tokens", 0) <= 17408 for v in metadata.values())
    assert _answers(world, cli)


def test_nccl_error_sets_the_nccl_variables_on_the_vllm_service(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.nccl())
    up = _up(world, cli)
    assert up.exit_code == 0, up.output
    assert "set NCCL_P2P_DISABLE=1 and NCCL_IB_DISABLE=1" in up.output

    vm = _vm(world)
    env = _vllm_service(vm)["environment"]
    assert env["NCCL_P2P_DISABLE"] == "1" and env["NCCL_IB_DISABLE"] == "1"
    assert vm.vllm.env["NCCL_P2P_DISABLE"] == "1"
    [record] = world.records()
    assert record["vllm_env"] == {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}
    assert [a["kind"] for a in record["heal_attempts"]] == ["nccl"]


def test_bf16_on_an_old_gpu_switches_to_float16(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    # Linode's RTX 6000 (compute capability 7.5) with a bfloat16 model.
    world.farm.configure_next(vllm_failure=VLLMFailure.bf16())
    up = _up(world, cli, "linode")
    assert up.exit_code == 0, up.output
    assert "Quadro RTX 6000, compute capability 7.5" in up.output
    assert "set --dtype float16" in up.output
    assert _flag(_vllm_service(_vm(world)), "--dtype") == "float16"
    [record] = world.records()
    assert record["vllm"]["dtype"] == "float16"
    assert [(a["kind"], a["outcome"]) for a in record["heal_attempts"]] == [("bf16_unsupported", "healed")]


def test_tensor_parallel_size_is_set_to_the_gpus_the_vm_really_has(world: World, cli: Any) -> None:
    from tests.vmsim.options import L4

    require_providers("scaleway")
    world.sim("scaleway")
    # The catalog sells 4 GPUs; the VM shows vLLM 2 of them.
    world.farm.gpu_map["L4-4-24G"] = [L4] * 2
    up = cli("up", "-p", "scaleway", "-r", "fr-par-2", "-t", "L4-4-24G")
    assert up.exit_code == 0, up.output
    assert "set --tensor-parallel-size 4 → 2 (the VM has 2 GPUs)" in up.output
    vm = _vm(world)
    assert _flag(_vllm_service(vm), "--tensor-parallel-size") == "2"
    assert vm.vllm.config.tensor_parallel_size == 2
    [record] = world.records()
    assert record["vllm"]["tensor_parallel_size"] == 2
    assert [(a["kind"], a["outcome"]) for a in record["heal_attempts"]] == [("tp_mismatch", "healed")]


def test_gated_model_stops_at_once_without_healing(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.gated())
    up = _up(world, cli)
    assert up.exit_code == 1
    [line] = [ln for ln in up.stderr.splitlines() if ln.startswith("error:")]
    assert "is gated: accept its licence at https://huggingface.co/" in line
    assert "HF_TOKEN" in line and "Traceback" not in up.output
    assert "healing" not in up.output
    assert "recreate" not in " ".join(e.command for e in _vm(world).exec_log)
    # As any failed `up`: the VM is deleted and the record gone.
    assert world.alive() == [] and world.records() == []


def test_a_failure_no_fix_cures_fails_after_three_attempts_and_deletes_the_vm(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.oom())  # OOM whatever the settings
    up = _up(world, cli)
    assert up.exit_code == 1, up.output
    for n, (before, after) in enumerate((("0.9", "0.85"), ("0.85", "0.8"), ("0.8", "0.75")), 1):
        assert (
            f"healing {n}/3: CUDA ran out of GPU memory; lower --gpu-memory-utilization {before} → {after}"
            in up.output
        )
    assert "healing 4/3" not in up.output
    [line] = [ln for ln in up.stderr.splitlines() if ln.startswith("error:")]
    assert "vLLM still fails after 3 healing attempts" in line
    assert "1. lower --gpu-memory-utilization 0.9 → 0.85" in line and "3. lower" in line
    assert "the VM" in line and "was deleted" in line
    assert world.alive() == [] and world.records() == []


def test_keep_on_failure_keeps_the_vm_with_its_heal_history(world: World, cli: Any) -> None:
    from tests.vmsim import VLLMFailure

    world.farm.configure_next(vllm_failure=VLLMFailure.oom())
    up = _up(world, cli, "digitalocean", "--keep-on-failure")
    assert up.exit_code == 1
    [record] = world.records()
    assert record["status"] == "kept"
    assert [a["outcome"] for a in record["heal_attempts"]] == ["failed", "failed", "failed"]
    [rec] = world.alive()
    assert ledger_id(record["instance_id"]) == rec.id
    down = cli("down", "-y")
    assert down.exit_code == 0, down.output


def test_compose_takes_extra_environment_but_never_a_vllm_or_secret_name() -> None:
    from maider.errors import ConfigError
    from maider.remote.compose import render_compose
    from maider.sizing import VLLMSettings

    images = {
        "vllm_image": "vllm/vllm-openai:v0.11.0",
        "openwebui_image": "ghcr.io/open-webui/open-webui:v0.6.5",
    }
    text = render_compose(
        VLLMSettings(model="m/x"),
        model_id="m/x",
        enable_openwebui=False,
        extra_env={"NCCL_P2P_DISABLE": "1"},
        **images,
    )
    env = yaml.safe_load(text)["services"]["vllm"]["environment"]
    assert env == {"DO_NOT_TRACK": "1", "NCCL_P2P_DISABLE": "1"}
    for bad in ({"VLLM_API_KEY": "x"}, {"HF_TOKEN": "x"}, {"nccl lower": "1"}, {"NCCL_X": "a\nb"}):
        with pytest.raises(ConfigError):
            render_compose(
                VLLMSettings(model="m/x"), model_id="m/x", enable_openwebui=False, extra_env=bad, **images
            )
