"""`maider benchmark`: the frozen coding prompt set against a session, stored in the local history.

Each prompt of :data:`maider.ops.prompts.PROMPTS` goes through the session's tunnel as one
streamed chat completion, one after another (one stream: what one aider user sees). Per prompt:
time to first token, output tokens (from the usage block), decode rate. The run is stored in
``<data dir>/benchmarks.sqlite3`` (:mod:`maider.ops.benchdb`) with what the previous generation
got wrong (prior-art-maider.md §6) done right: the vLLM settings are read from the compose file
on the VM (what really runs, after any heal or switch-model), the GPU name and count from
nvidia-smi, the price and currency from the session record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maider.remote import commands, ssh
from maider.session.health import SSH_TIMEOUT, SessionLink, probed, stream_completion

if TYPE_CHECKING:  # pragma: no cover
    from maider.ops.benchdb import BenchmarkRun, PromptResult
    from maider.ops.prompts import BenchPrompt
    from maider.sizing import VLLMSettings

DB_FILE = "benchmarks.sqlite3"


def db_path() -> Path:
    """The benchmark history: ``<data dir>/benchmarks.sqlite3``."""
    from maider import paths

    return paths.data_dir() / DB_FILE


# ------------------------------------------------------------------------------------ settings


def _flag(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name X`` or ``--name=X`` (argparse keeps the last occurrence)."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def vllm_settings_from_compose(text: str, *, quantization: str | None = None) -> VLLMSettings:
    """The :class:`~maider.sizing.VLLMSettings` of the vLLM service in a compose file.

    Flags that are absent take vLLM's own defaults, which are what vLLM then runs with (not
    maider's): TP 1, the model's context, 0.9 of the GPU, 256 sequences (vLLM ≥ 0.10 V1).
    """
    import yaml

    from maider.remote.commands import VLLM_SERVICE
    from maider.sizing import VLLMSettings

    try:
        doc = yaml.safe_load(text)
        service = doc["services"][VLLM_SERVICE]
        argv = [str(a).replace("$$", "$") for a in service["command"]]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ValueError(f"the VM's compose file has no readable vLLM command ({exc})") from None
    # `vllm serve MODEL …`, or the older image entrypoint's `--model MODEL …`
    model = argv[0] if argv and not argv[0].startswith("-") else _flag(argv, "--model") or ""

    def number(name: str, default: float) -> float:
        value = _flag(argv, name)
        return float(value) if value is not None else default

    return VLLMSettings(
        model=model,
        served_model_name=_flag(argv, "--served-model-name"),
        tensor_parallel_size=int(number("--tensor-parallel-size", 1)),
        max_model_len=int(number("--max-model-len", 0)),
        gpu_memory_utilization=number("--gpu-memory-utilization", 0.9),
        max_num_seqs=int(number("--max-num-seqs", 256)),
        dtype=_flag(argv, "--dtype") or "auto",
        kv_cache_dtype=_flag(argv, "--kv-cache-dtype") or "auto",
        quantization=_flag(argv, "--quantization") or quantization,
    )


def _known_quantization(model: str) -> str | None:
    from maider.models import get_model

    spec = get_model(model)
    return spec.quantization if spec else None


def running_settings(link: SessionLink) -> VLLMSettings:
    """What vLLM runs with on the session's VM, read from its compose file over SSH."""
    result = ssh.run(link.target, commands.READ_COMPOSE, timeout=SSH_TIMEOUT).check(
        "reading the compose file"
    )
    return vllm_settings_from_compose(result.stdout, quantization=_known_quantization(link.record.model))


# ------------------------------------------------------------------------------------ the run


def run_prompt(link: SessionLink, prompt: BenchPrompt) -> tuple[PromptResult, Any]:
    from maider.ops.benchdb import PromptResult
    from maider.ops.prompts import TEMPERATURE

    result = stream_completion(
        link.port,
        link.api_key,
        link.served,
        [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.prompt}],
        max_tokens=prompt.max_tokens,
        temperature=TEMPERATURE,
    )
    measured = PromptResult.measured(
        prompt.id,
        output_tokens=result.output_tokens,
        seconds=result.seconds,
        ttft_s=result.ttft_s,
        error=result.error,
    )
    return measured, result


def run_benchmark(
    link: SessionLink,
    *,
    prompts: Sequence[BenchPrompt] | None = None,
    on_result: Callable[[PromptResult], None] | None = None,
    store_in: Path | None = None,
) -> BenchmarkRun:
    """Run the prompt set (default: all of it), store the run in the history, return it.

    ``store_in``: the database file (default :func:`db_path`). Nothing is stored when every
    prompt failed: such a run measures nothing.
    """
    from maider.errors import MaiderError
    from maider.ops.benchdb import BenchDB, BenchmarkRun, vllm_settings_record
    from maider.ops.prompts import PROMPT_SET_NAME, PROMPT_SET_VERSION, PROMPTS
    from maider.session import watchdog

    record = link.record
    settings = running_settings(link)
    gpus = link.gpus()
    results: list[PromptResult] = []
    with watchdog.probe_window(link.store, record) as usage:
        for prompt in prompts or PROMPTS:
            measured, raw = run_prompt(link, prompt)
            probed(usage, raw)
            results.append(measured)
            if on_result is not None:
                on_result(measured)
    price = record.hourly_price
    run = BenchmarkRun(
        provider=record.provider,
        region=record.region,
        gpu_type=record.type_id,
        gpu_name=gpus[0].name if gpus else "unknown",
        gpu_count=max(1, len(gpus)),
        model=record.model,
        vllm=vllm_settings_record(settings),
        prompt_set=PROMPT_SET_NAME,
        prompt_set_version=PROMPT_SET_VERSION,
        results=tuple(results),
        hourly_price=price.amount if price else None,
        currency=price.currency if price else None,
        session_id=record.id,
    )
    if not run.ok_results:
        raise MaiderError(
            f"every benchmark prompt failed ({results[0].error if results else 'no prompt'}); nothing was "
            f"stored: check the session with `maider check {record.label}`"
        )
    with BenchDB(store_in or db_path()) as db:
        db.record(run)
    return run
