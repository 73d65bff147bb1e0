"""Option declarations shared by commands that accept configuration overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# `Optional[...]` rather than `X | None`: typer inspects these annotations at run time on 3.10.
Provider = Annotated[Optional[str], typer.Option("--provider", "-p", help="Cloud provider id.")]  # noqa: UP045
Region = Annotated[Optional[str], typer.Option("--region", "-r", help="Region (or zone) id.")]  # noqa: UP045
VMTypeId = Annotated[Optional[str], typer.Option("--type", "-t", help="GPU VM type id.")]  # noqa: UP045
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Hugging Face model id.")]  # noqa: UP045
Context = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--context", "--max-model-len", help="Context length (vLLM --max-model-len); default: auto."
    ),
]
GpuMemoryUtilization = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--gpu-memory-utilization", help="Share of VRAM vLLM may use (0.30-0.98)."),
]
MaxNumSeqs = Annotated[Optional[int], typer.Option("--max-num-seqs", help="Concurrent sequences.")]  # noqa: UP045
TensorParallel = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--tensor-parallel-size", help="Must equal the type's GPU count; default: the GPU count."),
]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="auto, bfloat16 or float16.")]  # noqa: UP045
KvCacheDtype = Annotated[Optional[str], typer.Option("--kv-cache-dtype", help="auto or fp8.")]  # noqa: UP045
ServedModelName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--served-model-name", help="Name vLLM serves the model under."),
]
SSHPublicKey = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--ssh-public-key", help="Public key to install (default: a key maider manages)."),
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def flags(**values: Any) -> dict[str, Any]:
    """Command-line overrides for the settings loader (unset flags are dropped)."""
    renamed = {"vm_type": "type", "context": "max_model_len"}
    return {renamed.get(k, k): v for k, v in values.items() if v is not None}
