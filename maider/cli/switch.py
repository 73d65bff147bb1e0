"""`maider switch-model MODEL [NAME]`: run another model on a session's VM (thin: maider.session.switch)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from maider.cli import app

SwitchContext = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--max-model-len", "--context", min=256, help="Context length for the new model; default: auto."
    ),
]
SwitchTensorParallel = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option("--tensor-parallel-size", min=1, help="Default: the VM's GPU count."),
]
SwitchServedName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--served-model-name", help="Name vLLM serves it under; default: derived from MODEL."),
]


@app.command("switch-model")
def switch_model(
    model: Annotated[str, typer.Argument(help="Hugging Face model id to run instead.")],
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(help="Session name or id (default: the current session, or the only one)."),
    ] = None,
    max_model_len: SwitchContext = None,
    tensor_parallel_size: SwitchTensorParallel = None,
    served_model_name: SwitchServedName = None,
) -> None:
    """Run another model on a ready session's VM; roll back if it never answers."""
    from pathlib import Path

    from maider.config import load_settings
    from maider.output import ProgressReporter, console
    from maider.session import healing
    from maider.session import switch as switching

    # Context, TP and served name of the configuration describe the model `up` started; the new
    # one gets its own (flags, else derived as `up` derives them).
    settings = load_settings({"model": model}).model_copy(
        update={
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
            "served_model_name": served_model_name,
        }
    )
    with ProgressReporter() as reporter:
        result = switching.switch_model(settings, name, reporter=reporter, aider_dir=Path.cwd())
    r = result.record
    con = console()
    con.print(
        f"session {r.label} now runs {r.model} (served as {r.served_model_name}, context {r.max_model_len}); "
        f"was {result.previous_model}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for attempt in result.attempts:
        con.print(
            f"  healed: {healing.describe_attempt(attempt)}", markup=False, highlight=False, soft_wrap=True
        )
    for path in result.aider_files:
        con.print(f"  aider file: {path}", markup=False, highlight=False, soft_wrap=True)
