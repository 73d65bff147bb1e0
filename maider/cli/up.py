"""`maider up`: plan, then provision (the session lifecycle), or print the plan with --dry-run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from maider.cli import app
from maider.cli import options as opt

if TYPE_CHECKING:  # pragma: no cover
    from maider.plan import Plan
    from maider.session.lifecycle import Attempt, UpResult


@app.command()
def up(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the whole plan; create nothing, need no account.")
    ] = False,
    provider: opt.Provider = None,
    region: opt.Region = None,
    vm_type: opt.VMTypeId = None,
    model: opt.Model = None,
    context: opt.Context = None,
    gpu_memory_utilization: opt.GpuMemoryUtilization = None,
    max_num_seqs: opt.MaxNumSeqs = None,
    tensor_parallel_size: opt.TensorParallel = None,
    dtype: opt.Dtype = None,
    kv_cache_dtype: opt.KvCacheDtype = None,
    served_model_name: opt.ServedModelName = None,
    ssh_public_key: opt.SSHPublicKey = None,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", "-n", help="Name of the session (lowercase letters, digits, hyphens)."),
    ] = None,
    keep_on_failure: Annotated[
        bool,
        typer.Option(
            "--keep-on-failure", help="If up fails after the VM exists, keep it (it bills) to debug."
        ),
    ] = False,
    failover: Annotated[
        bool,
        typer.Option(
            "--failover",
            help="When sold out everywhere for this type, try the next cheapest fitting type/provider.",
        ),
    ] = False,
    launch_aider: Annotated[
        bool, typer.Option("--launch-aider", "-a", help="Start aider on the session once it is ready.")
    ] = False,
    as_json: opt.Json = False,
) -> None:
    """Rent a GPU VM and serve the model on it (see --dry-run for the plan)."""
    from maider import plan as planning
    from maider.config import load_settings
    from maider.dryrun import plan_json, print_plan
    from maider.errors import PlanError

    settings = load_settings(
        opt.flags(
            provider=provider,
            region=region,
            vm_type=vm_type,
            model=model,
            context=context,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            kv_cache_dtype=kv_cache_dtype,
            served_model_name=served_model_name,
            ssh_public_key=ssh_public_key,
        )
    )
    plan = planning.build_plan(settings)
    if dry_run:
        if as_json:
            import json

            print(json.dumps(plan_json(plan), indent=2))
        else:
            print_plan(plan)
        return
    problems = planning.account_problems(plan)
    if problems:
        raise PlanError(problems)
    result = _provision(plan, name=name, keep_on_failure=keep_on_failure, failover=failover)
    _print_ready(result)
    if launch_aider:
        _exec_aider(result)


def _provision(plan: Plan, *, name: str | None, keep_on_failure: bool, failover: bool) -> UpResult:
    import signal
    from pathlib import Path

    from maider.output import ProgressReporter, console
    from maider.session import lifecycle

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up exactly like Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with ProgressReporter() as reporter:
            reporter.info(
                f"maider up: {plan.provider} {plan.vm_type.id} in {plan.region} at {plan.price}/h, "
                f"model {plan.model.id}"
            )
            try:
                return lifecycle.up(
                    plan,
                    reporter,
                    name=name,
                    keep_on_failure=keep_on_failure,
                    failover=failover,
                    aider_dir=Path.cwd(),
                )
            except lifecycle.NoCapacity as exc:
                reporter.close()
                _print_attempts(exc.attempts, console())
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_attempts(attempts: list[Attempt], con: object) -> None:
    from rich.table import Table

    table = Table(title="create attempts", title_justify="left")
    for column in ("provider", "region", "type", "$/h", "outcome"):
        table.add_column(column)
    for a in attempts:
        table.add_row(a.provider, a.region, a.type_id, str(a.price), a.outcome)
    con.print(table)  # type: ignore[attr-defined]


def _print_ready(result: UpResult) -> None:
    from maider.aider import aider_model_name
    from maider.output import console

    con = console()
    record = result.record
    if len(result.attempts) > 1:
        _print_attempts(result.attempts, con)
    label = record.label
    named = f" ({record.name})" if record.name else ""
    lines = [
        f"ready: session {record.id}{named}: {record.provider} {record.type_id} in {record.region}, "
        f"{record.ip}, {record.hourly_price}/h",
        f"  vLLM API    http://127.0.0.1:{record.api_port}/v1  model {aider_model_name(record.served_model_name)}",
    ]
    if record.webui_port:
        lines.append(f"  Open WebUI  http://127.0.0.1:{record.webui_port}")
    lines += [
        '  aider       eval "$(maider env)" && aider   (or: maider up --launch-aider)',
        f"  stop        maider down {label}   (the VM bills until then)",
    ]
    from maider.session import watchdog

    for number, text in enumerate(watchdog.describe(record)):
        lines.append(("  watchdog    " if number == 0 else " " * 14) + text)
    for line in lines:
        con.print(line, markup=False, highlight=False, soft_wrap=True)


def _exec_aider(result: UpResult) -> None:
    import os
    import shutil
    import sys

    from maider.output import warn

    aider = shutil.which("aider")
    if aider is None:
        warn(
            "aider is not installed (install it with `pipx install aider-chat`); the session is ready and "
            'the VM stays up: run `eval "$(maider env)" && aider`'
        )
        return
    env = {**os.environ, **result.env}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(aider, [aider, "--model", result.env["AIDER_MODEL"]], env)
