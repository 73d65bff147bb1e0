"""`maider up`: plan, then (with a provider that supports it) provision."""

from __future__ import annotations

from typing import Annotated

import typer

from maider.cli import app
from maider.cli import options as opt


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
    as_json: opt.Json = False,
) -> None:
    """Rent a GPU VM and serve the model on it (see --dry-run for the plan)."""
    from maider import plan as planning
    from maider.config import load_settings
    from maider.dryrun import plan_json, print_plan
    from maider.errors import MaiderError, PlanError

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
    # Provisioning needs the session lifecycle (state, SSH, tunnel), which is not in this release:
    # say so instead of creating a VM that nothing would track.
    raise MaiderError(
        "this release of maider plans but does not provision yet: `maider up --dry-run` shows the full plan"
    )
