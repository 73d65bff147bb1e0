"""Render a Plan for `maider up --dry-run`: everything `up` would do, with nothing created."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maider.plan import Plan

if TYPE_CHECKING:
    from maider.provider import Provider

SESSION_TAG = "maider"


def _billing_note(plan: Plan) -> str:
    return f"{plan.price}/h" + (f" (≈ ${plan.usd_per_hour:.2f}/h)" if plan.price.currency != "USD" else "")


def plan_json(plan: Plan) -> dict[str, Any]:
    fit, vllm = plan.fit, plan.fit.settings
    provider = plan.provider_cls()
    return {
        "provider": plan.provider,
        "region": plan.region,
        "type": plan.vm_type.id,
        "gpu": {
            "name": plan.vm_type.gpu.name,
            "count": plan.vm_type.gpu_count,
            "vram_per_gpu_gb": plan.vm_type.gpu.vram_gb,
        },
        "hourly_price": plan.price.amount,
        "currency": plan.price.currency,
        "usd_per_hour": round(plan.usd_per_hour, 4),
        "catalog_date": plan.catalog.as_of.isoformat(),
        "model": plan.model.id,
        "served_model_name": plan.served_model_name,
        "fit": {
            "weights_gib_per_gpu": round(fit.weights_gib, 2),
            "kv_cache_gib_per_gpu": round(fit.kv_cache_gib, 2),
            "overhead_gib_per_gpu": round(fit.overhead_gib, 2),
            "needed_gib_per_gpu": round(fit.total_needed_gib, 2),
            "usable_gib_per_gpu": round(fit.usable_gib, 2),
            "max_context": fit.max_context_fit,
            "warnings": list(fit.warnings),
        },
        "vllm": {
            "image": plan.settings.vllm_image,
            "args": vllm.to_args(),
        },
        "watchdog": {
            "enabled": plan.settings.watchdog,
            "idle_timeout_minutes": plan.settings.idle_timeout_minutes,
            "max_lifetime_hours": plan.settings.max_lifetime_hours,
            "warn_minutes": plan.settings.watchdog_warn_minutes,
            "credential": provider.self_destruct_plan() if plan.settings.watchdog else None,
            "mode": ("delete" if provider.self_destruct_plan() else "poweroff")
            if plan.settings.watchdog
            else None,
        },
        "open_webui": {"enabled": plan.settings.enable_openwebui, "image": plan.settings.openwebui_image},
        "image": provider.default_image(plan.vm_type),
        "ssh_key": {
            "public_key": str(plan.ssh_key.public_key),
            "managed_by_maider": plan.ssh_key.managed,
            "exists": plan.ssh_key.exists,
        },
        "tags": [SESSION_TAG, f"{SESSION_TAG}-session-<id>"],
        "credentials_configured": provider.has_credentials(),
        "chosen": plan.chosen,
    }


def watchdog_lines(plan: Plan, provider: Provider) -> list[str]:
    """What the idle watchdog of this plan will do, and with which credential (no I/O)."""
    settings = plan.settings
    if not settings.watchdog:
        return ["no idle watchdog (watchdog = false): nothing deletes the VM until `maider down`"]
    rules = (
        f"deletes it after {settings.idle_timeout_minutes:g} min without inference requests or "
        f"{settings.max_lifetime_hours:g} h after start (even in use); warns "
        f"{settings.watchdog_warn_minutes:g} min before"
    )
    credential = provider.self_destruct_plan()
    how = (
        f"it deletes with {credential}"
        if credential
        else "no deletion credential here: the VM powers itself off"
        + ("" if provider.poweroff_stops_billing else " (still billed)")
        + " and the process on this machine deletes it"
    )
    return [
        f"an idle watchdog on the VM: {rules}",
        f"  {how}",
        "a watchdog process on this machine (the second line; `maider extend` postpones both)",
    ]


def print_plan(plan: Plan) -> None:
    from rich.table import Table

    from maider.cli.planning import describe_fit
    from maider.output import console

    c = console()
    provider = plan.provider_cls()
    vm = plan.vm_type
    vllm = plan.fit.settings
    c.print("[bold]maider up — dry run[/bold] (nothing is created)")
    for note in plan.chosen:
        c.print(f"[dim]{note}[/dim]")

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("provider", f"{plan.provider_cls.display_name} ({plan.provider})")
    region = plan.catalog.regions.get(plan.region)
    table.add_row("region", f"{plan.region}" + (f" — {region.label}, {region.country}" if region else ""))
    table.add_row(
        "type",
        f"{vm.id} — {vm.gpu_count}× {vm.gpu.name} {vm.gpu.vram_gb:g} GB "
        f"({vm.gpu.architecture}), {vm.vcpus} vCPU, {vm.ram_gb:g} GB RAM",
    )
    table.add_row(
        "price",
        f"{_billing_note(plan)}; 2 hours ≈ {plan.price.amount * 2:.2f} {plan.price.currency} "
        f"({plan.catalog.source} catalog of {plan.catalog.as_of.isoformat()})",
    )
    table.add_row("model", f"{plan.model.id} served as {plan.served_model_name!r}")
    c.print(table)

    c.print("\n[bold]Fit[/bold]")
    for line in describe_fit(plan.fit, vm):
        c.print(f"  {line}")

    c.print("\n[bold]vLLM[/bold]")
    c.print(f"  image {plan.settings.vllm_image}")
    c.print(f"  vllm serve {plan.model.id} " + " ".join(vllm.to_args()))
    c.print(
        "  + --api-key <random per session> --host 0.0.0.0 --port 8000, published on 127.0.0.1:8000 of the VM"
    )
    if plan.settings.enable_openwebui:
        c.print(f"  Open WebUI {plan.settings.openwebui_image}, published on 127.0.0.1:3000 of the VM")

    c.print("\n[bold]What `maider up` would create[/bold]")
    key = plan.ssh_key
    if key.managed:
        state = "exists" if key.exists else "created on first run"
        c.print(
            f"  • SSH key pair managed by maider at {key.public_key} ({state}), uploaded to "
            f"{plan.provider_cls.display_name} if missing"
        )
    else:
        c.print(
            f"  • your SSH public key {key.public_key}, uploaded to {plan.provider_cls.display_name} if missing"
        )
    c.print("  • a firewall allowing inbound SSH (22/tcp) from your public IP only; everything else dropped")
    c.print(
        f"  • one {vm.id} VM in {plan.region}, image {provider.default_image(vm)}, tagged "
        f"'{SESSION_TAG}' and '{SESSION_TAG}-session-<id>'; its SSH host key is generated locally and pinned"
    )
    c.print(
        "  • cloud-init user-data with the compose stack (no secrets: the HF token goes over SSH after boot)"
    )
    for line in watchdog_lines(plan, provider):
        c.print(f"    {line}" if line.startswith(" ") else f"  • {line}", markup=False, highlight=False)
    c.print("  • an SSH tunnel to free local ports for the vLLM API and Open WebUI")
    c.print("  • aider files in this directory: .aider.model.metadata.json, .aider.model.settings.yml")

    notes = []
    if not provider.has_credentials():
        notes.append(f"credentials: not configured — for a real run, {plan.provider_cls.credentials_help}")
    if plan.model.gated and plan.settings.hf_token is None:
        notes.append(f"{plan.model.id} is gated: a real run needs HF_TOKEN")
    from maider.catalog import catalog_notes

    notes += catalog_notes()
    for note in notes:
        c.print(f"\n{note}", style="yellow", markup=False)
    if plan.runners_up:
        alt = plan.runners_up[0]
        c.print(
            f"\n[dim]Next cheapest fit: {alt.provider} {alt.vm_type.id} in {alt.region} at {alt.price}/h "
            f"(`maider recommend` lists more).[/dim]"
        )
