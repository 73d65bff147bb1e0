"""`maider switch-model`, end to end on an emulated VM: the fit check first, the new compose file
and recreated containers, healing, the session record and aider's files, and the rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_providers
from tests.lifecycle_world import SETUPS, World, make_world

PID = "digitalocean"
OLD = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
NEW = "Qwen/Qwen2.5-Coder-7B-Instruct"
COMPOSE = "/opt/maider/compose.yaml"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    yield from make_world(tmp_path, monkeypatch)


@pytest.fixture
def session(world: World, cli: Any) -> dict[str, Any]:
    """A ready session running OLD, with its VM."""
    require_providers(PID)
    world.sim(PID)
    region, type_id = SETUPS[PID]
    up = cli("up", "-p", PID, "-r", region, "-t", type_id, "--name", "sw", "-m", OLD)
    assert up.exit_code == 0, up.output
    [record] = world.records()
    return record


def _vm(world: World) -> Any:
    [vm] = world.farm.vms
    return vm


def _command(vm: Any) -> list[str]:
    return [str(a) for a in yaml.safe_load(vm.read_text(COMPOSE))["services"]["vllm"]["command"]]


def _complete(record: dict[str, Any], world: World, model: str) -> int:
    """HTTP status of a completion for ``model`` through the session's tunnel."""
    import urllib.error
    import urllib.request

    key = (world.state_dir() / "sessions" / record["id"] / "api_key").read_text().strip()
    body = json.dumps({"model": model, "prompt": "def", "max_tokens": 2}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{record['api_port']}/v1/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_switch_runs_the_new_model_and_updates_the_record_and_aider_files(
    world: World, cli: Any, session: dict[str, Any]
) -> None:
    result = cli("switch-model", NEW, "sw", "--max-model-len", "16384")
    assert result.exit_code == 0, result.output
    assert f"now runs {NEW} (served as qwen2.5-coder-7b-instruct, context 16384); was {OLD}" in result.stdout

    [record] = world.records()
    assert record["model"] == NEW and record["served_model_name"] == "qwen2.5-coder-7b-instruct"
    assert record["max_model_len"] == 16384 and record["vllm"]["max_model_len"] == 16384
    assert record["vllm"]["model"] == NEW and record["status"] == "ready"

    vm = _vm(world)
    command = _command(vm)
    assert command[0] == NEW and command[command.index("--max-model-len") + 1] == "16384"
    assert vm.vllm.model == NEW and vm.container("vllm").starts >= 1
    assert _complete(record, world, "qwen2.5-coder-7b-instruct") == 200
    assert _complete(record, world, session["served_model_name"]) == 404  # the old name is gone

    # aider's files, in the session's directory and the working directory, name the new model.
    for directory in (world.state_dir() / "sessions" / record["id"] / "aider", Path.cwd()):
        metadata = json.loads((directory / ".aider.model.metadata.json").read_text())
        assert "openai/qwen2.5-coder-7b-instruct" in metadata
    env = cli("env")
    assert "qwen2.5-coder-7b-instruct" in env.stdout
    # The HF token travelled on stdin only.
    assert all("hf_" not in e.command for e in vm.exec_log)


def test_a_model_that_does_not_fit_is_refused_before_touching_the_vm(
    world: World, cli: Any, session: dict[str, Any]
) -> None:
    vm = _vm(world)
    before = len(vm.exec_log)
    result = cli("switch-model", "Qwen/Qwen2.5-Coder-32B-Instruct", "--max-model-len", "131072")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: Qwen/Qwen2.5-Coder-32B-Instruct")
    assert "nothing was changed on the VM" in line
    assert len(vm.exec_log) == before
    assert world.records()[0]["model"] == OLD


def test_a_model_that_never_loads_is_rolled_back(world: World, cli: Any, session: dict[str, Any]) -> None:
    from tests.vmsim import VLLMFailure

    vm = _vm(world)
    vm.options.vllm_failure = VLLMFailure.model_not_found(models=(NEW,))
    result = cli("switch-model", NEW)
    assert result.exit_code == 1
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert f"Hugging Face has no model {NEW}" in line
    assert line.endswith(f"rolled back to {OLD}, which answers again")
    assert "healing" not in result.output  # a missing model is not healable

    [record] = world.records()
    assert record["model"] == OLD and record["served_model_name"] == session["served_model_name"]
    assert record["vllm"] == session["vllm"] and record["status"] == "ready"
    assert _command(vm)[0] == OLD and vm.vllm.model == OLD and vm.vllm.is_ready()
    assert _complete(record, world, session["served_model_name"]) == 200


def test_switch_heals_the_new_model(world: World, cli: Any, session: dict[str, Any]) -> None:
    from tests.vmsim import VLLMFailure

    vm = _vm(world)
    vm.options.vllm_failure = VLLMFailure.oom(fits_at=0.85, models=(NEW,))
    result = cli("switch-model", NEW, "--served-model-name", "coder")
    assert result.exit_code == 0, result.output
    assert (
        "healing 1/3: CUDA ran out of GPU memory; lower --gpu-memory-utilization 0.9 → 0.85" in result.output
    )
    assert "healed: 1. lower --gpu-memory-utilization 0.9 → 0.85" in result.stdout

    [record] = world.records()
    assert record["served_model_name"] == "coder" and record["vllm"]["gpu_memory_utilization"] == 0.85
    assert [(a["during"], a["outcome"]) for a in record["heal_attempts"]] == [("switch-model", "healed")]
    assert vm.vllm.served_names == ["coder"]
    assert _complete(record, world, "coder") == 200


def test_switch_needs_a_session(world: World, cli: Any) -> None:
    result = cli("switch-model", NEW)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no session: start one with `maider up`"


def test_ctrl_c_during_the_switch_rolls_back(
    world: World, cli: Any, session: dict[str, Any], tmp_path: Path
) -> None:
    """An interrupt while the new model loads must not leave the VM on a compose file the record
    does not describe: the previous model is put back, and the exit code says interrupted."""
    import dataclasses

    from tests.lifecycle_world import run_maider

    vm = _vm(world)
    vm.options = dataclasses.replace(vm.options, load_seconds=60.0)  # the new model takes its time
    proc = run_maider(world, ["switch-model", NEW, "sw"], tmp_path)
    try:
        proc.wait_for("waiting for vLLM to serve", timeout=60)
        assert f"--model {NEW}" in " ".join(_command(vm)) or NEW in _command(vm)
        vm.options = dataclasses.replace(vm.options, load_seconds=0.0)  # the old one comes back at once
        proc.interrupt()
        code = proc.wait(timeout=120)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
    assert code == 130, proc.output
    assert f"rolled back to {OLD}" in proc.output
    [record] = world.records()
    assert record["model"] == OLD and OLD in _command(vm)
    assert _complete(record, world, record["served_model_name"]) == 200
