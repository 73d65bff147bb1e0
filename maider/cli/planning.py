"""Planning commands: providers, list-types, recommend, validate. No account, no network."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from maider.cli import app
from maider.cli import options as opt


@app.command()
def providers(as_json: opt.Json = False) -> None:
    """Installed providers: package, version, credentials, catalog, load errors."""
    from maider import plugins
    from maider.output import console

    infos = plugins.discover()
    loaded, failures = plugins.load_all()
    failed = {f.info.id: f for f in failures}
    rows: list[dict[str, Any]] = []
    for info in infos:
        row: dict[str, Any] = {
            "id": info.id,
            "package": info.distribution,
            "version": info.version,
            "loaded": info.id in loaded,
        }
        cls = loaded.get(info.id)
        if cls is not None:
            row["name"] = cls.display_name
            row["contract"] = cls.contract_version
            row["credentials"] = _credentials_state(cls)
            row["credential_variables"] = list(cls.credential_env_vars)
            row["currency"] = cls.currency
            try:
                row.update(_catalog_summary(info.id, cls))
            except Exception as exc:  # a plugin's catalog module is third-party code: report, go on
                row["loaded"] = False
                row["error"] = f"its catalog does not load: {type(exc).__name__}: {exc}"
                from maider.output import warn

                warn(
                    f"provider {info.id!r} ({info.distribution}) is unusable: {row['error']}; "
                    f"reinstall it or `pip uninstall {info.distribution}`"
                )
        else:
            row["error"] = failed[info.id].reason if info.id in failed else "not loaded"
        rows.append(row)
    if as_json:
        print(json.dumps({"providers": rows}, indent=2))
        return
    if not rows:
        console().print(
            "No provider is installed. Install one with pip install 'maider[linode]' (or [digitalocean], "
            "[scaleway], [all]); third-party provider packages install the same way.",
            markup=False,
        )
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Installed providers", title_justify="left")
    for col in ("id", "package", "version", "contract", "credentials", "catalog"):
        table.add_column(col)
    for row in rows:
        if row["loaded"]:
            table.add_row(
                row["id"],
                row["package"],
                row["version"],
                f"v{row['contract']}",
                escape(row["credentials"]),
                f"{row['gpu_types']} types, {row['currency']}, {row['catalog_source']} {row['catalog_date']}",
            )
        else:
            table.add_row(
                row["id"],
                row["package"],
                row["version"],
                "-",
                "-",
                f"[red]failed: {escape(row['error'])}[/red]",
            )
    console().print(table)


def _catalog_summary(provider_id: str, cls: Any) -> dict[str, Any]:
    from maider.catalog import read_cached

    cached = read_cached(provider_id)
    cat = cached[0] if cached else cls.embedded_catalog()
    return {"gpu_types": len(cat.types), "catalog_date": cat.as_of.isoformat(), "catalog_source": cat.source}


def _credentials_state(cls: Any) -> str:
    from maider.errors import MaiderError

    try:
        provider = cls()
    except MaiderError as exc:
        return f"invalid settings: {exc}"
    except Exception as exc:  # its settings model failed to import or validate
        return f"unusable settings: {type(exc).__name__}: {exc}"
    if provider.has_credentials():
        return "configured"
    return f"missing: set {' '.join(cls.credential_env_vars) or 'see provider docs'}"


@app.command("list-types")
def list_types(
    provider: opt.Provider = None,
    region: opt.Region = None,
    min_vram: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--min-vram", help="Minimum total VRAM (all GPUs) in GB."),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Read regions, types and prices from the providers' APIs now.")
    ] = False,
    as_json: opt.Json = False,
) -> None:
    """Every GPU type of every installed provider, with price and regions."""
    from maider import catalog, plugins
    from maider.errors import ConfigError
    from maider.output import console

    if provider:
        plugins.get_provider_class(provider)
    plugins.require_any()
    cats = catalog.catalogs([provider.lower()] if provider else None, refresh=refresh)
    if region is not None and not any(region in c.regions for c in cats.values()):
        if provider:
            catalog.check_region(cats[provider.lower()], region)
        raise ConfigError(
            f"no installed provider sells GPU VMs in region {region!r}: see `maider list-types`"
        )
    rows = []
    for pid, cat in cats.items():
        for t in cat.types.values():
            if region is not None and not t.sold_in(region):
                continue
            if min_vram is not None and t.total_vram_gb < min_vram:
                continue
            price = t.price_in(region)
            rows.append((pid, cat, t, price))
    rows.sort(key=lambda r: (r[0], r[3].amount))
    if as_json:
        out = [
            {
                "provider": pid,
                "id": t.id,
                "label": t.label,
                "gpu": t.gpu.name,
                "gpu_count": t.gpu_count,
                "vram_per_gpu_gb": t.gpu.vram_gb,
                "total_vram_gb": t.total_vram_gb,
                "architecture": t.gpu.architecture,
                "compute_capability": t.gpu.compute_capability_str,
                "bfloat16": t.gpu.supports_bfloat16,
                "vcpus": t.vcpus,
                "ram_gb": t.ram_gb,
                "hourly_price": price.amount,
                "currency": price.currency,
                "regions": list(t.regions),
                "catalog_date": cat.as_of.isoformat(),
                "catalog_source": cat.source,
                "notes": t.notes,
            }
            for pid, cat, t, price in rows
        ]
        print(json.dumps({"types": out}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"GPU types{f' in {region}' if region else ''}", title_justify="left")
    for col, just in (
        ("provider", "left"),
        ("type", "left"),
        ("GPU", "left"),
        ("VRAM", "right"),
        ("arch (CC)", "left"),
        ("vCPU", "right"),
        ("RAM", "right"),
        ("price/h", "right"),
        ("regions", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for pid, _cat, t, price in rows:
        vram = f"{t.gpu_count}×{t.gpu.vram_gb:g} GB" if t.gpu_count > 1 else f"{t.gpu.vram_gb:g} GB"
        arch = f"{t.gpu.architecture} ({t.gpu.compute_capability_str})"
        if not t.gpu.supports_bfloat16:
            arch += " no bf16"
        table.add_row(
            pid,
            t.id,
            t.gpu.name,
            vram,
            arch,
            str(t.vcpus),
            f"{t.ram_gb:g} GB",
            str(price),
            ", ".join(t.regions),
        )
    console().print(table)
    dates = ", ".join(f"{pid} {cat.source} {cat.as_of.isoformat()}" for pid, cat in cats.items())
    console().print(f"[dim]{len(rows)} types. Catalogs: {dates}.[/dim]", markup=True)
    for note in catalog.catalog_notes():
        console().print(note, style="dim", markup=False)


@app.command()
def recommend(
    model: opt.Model = None,
    context: opt.Context = None,
    budget: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--budget", help="Maximum price per hour, in USD (EUR prices are converted)."),
    ] = None,
    provider: opt.Provider = None,
    region: opt.Region = None,
    list_models: Annotated[bool, typer.Option("--list-models", help="List the models maider knows.")] = False,
    as_json: opt.Json = False,
) -> None:
    """The cheapest GPU type, across installed providers and regions, that fits a model."""
    from maider import plan as planning
    from maider.config import load_settings
    from maider.errors import ConfigError, PlanError
    from maider.output import console

    if list_models:
        _print_models(as_json)
        return
    settings = load_settings(opt.flags(model=model, context=context, provider=provider, region=region))
    if budget is not None and budget <= 0:
        raise ConfigError(f"--budget must be a positive price per hour, got {budget}")
    if settings.provider:
        planning.plugins.get_provider_class(settings.provider)
    planning.plugins.require_any()
    spec = planning.resolve_model(settings)
    fitting, rejected = planning.rank_candidates(
        spec,
        settings,
        provider_ids=[settings.provider] if settings.provider else None,
        region=settings.region,
        budget_usd=budget,
    )
    if not fitting:
        over_budget = [c for c in rejected if c.fit.fits]
        if over_budget and budget is not None:
            cheapest = over_budget[0]
            raise ConfigError(
                f"nothing that fits {spec.id} costs at most ${budget:g}/h; the cheapest fit is "
                f"{cheapest.provider} {cheapest.vm_type.id} at {cheapest.price}/h — raise --budget"
            )
        if not rejected:
            raise ConfigError("no GPU type is sold in that region by the selected providers")
        closest = min(rejected, key=lambda c: (len(c.fit.problems), -c.vm_type.total_vram_gb))
        raise PlanError(closest.fit.problems)
    if as_json:
        print(
            json.dumps({"model": spec.id, "candidates": [_candidate_json(c) for c in fitting[:10]]}, indent=2)
        )
        return
    best = fitting[0]
    c = console()
    c.print(
        f"[bold]Recommended for {spec.id}[/bold]: {best.provider} [bold]{best.vm_type.id}[/bold] "
        f"in {best.region} at [bold]{best.price}/h[/bold]"
    )
    for line in describe_fit(best.fit, best.vm_type):
        c.print(f"  {line}")
    seen = {(best.provider, best.vm_type.id)}
    runners = []
    for cand in fitting[1:]:
        if (cand.provider, cand.vm_type.id) not in seen:
            seen.add((cand.provider, cand.vm_type.id))
            runners.append(cand)
    if runners:
        from rich.table import Table

        table = Table(title="Runners-up", title_justify="left")
        for col in ("provider", "type", "GPUs", "region(s)", "price/h", "≈ USD/h", "context", "headroom"):
            table.add_column(col)
        for cand in runners[:5]:
            regions = [
                x.region for x in fitting if (x.provider, x.vm_type.id) == (cand.provider, cand.vm_type.id)
            ]
            table.add_row(
                cand.provider,
                cand.vm_type.id,
                f"{cand.vm_type.gpu_count}× {cand.vm_type.gpu.name}",
                ", ".join(regions),
                str(cand.price),
                f"{cand.usd_per_hour:.2f}",
                str(cand.fit.settings.max_model_len),
                f"{cand.fit.headroom_gib:.1f} GiB",
            )
        c.print(table)
    if any(x.price.currency != "USD" for x in [best, *runners[:5]]):
        c.print(
            f"[dim]EUR prices compared at 1 EUR = {settings.usd_per_eur} USD (set MAIDER_USD_PER_EUR).[/dim]"
        )


def describe_fit(fit: Any, vm_type: Any) -> list[str]:
    """The reasoning behind a fit, per GPU, in a few lines."""
    s = fit.settings
    lines = [
        f"per GPU: weights {fit.weights_gib:.1f} GiB + KV cache {fit.kv_cache_gib:.1f} GiB + overhead "
        f"{fit.overhead_gib:.1f} GiB = {fit.total_needed_gib:.1f} GiB of {fit.usable_gib:.1f} GiB usable "
        f"({s.gpu_memory_utilization:.0%} of {vm_type.gpu.vram_gb:g} GB)",
        f"vLLM: tensor-parallel {s.tensor_parallel_size}, context {s.max_model_len}, {s.max_num_seqs} "
        f"concurrent sequences, dtype {s.dtype}, KV cache {s.kv_cache_dtype}"
        + (f", quantization {s.quantization}" if s.quantization else ""),
        f"largest context that fits: {fit.max_context_fit}",
    ]
    lines += [f"note: {w}" for w in fit.warnings]
    return lines


def _candidate_json(c: Any) -> dict[str, Any]:
    s = c.fit.settings
    return {
        "provider": c.provider,
        "region": c.region,
        "type": c.vm_type.id,
        "hourly_price": c.price.amount,
        "currency": c.price.currency,
        "usd_per_hour": round(c.usd_per_hour, 4),
        "gpu": c.vm_type.gpu.name,
        "gpu_count": c.vm_type.gpu_count,
        "fit": {
            "needed_gib_per_gpu": round(c.fit.total_needed_gib, 2),
            "usable_gib_per_gpu": round(c.fit.usable_gib, 2),
            "max_context": c.fit.max_context_fit,
            "warnings": list(c.fit.warnings),
        },
        "vllm": {
            "tensor_parallel_size": s.tensor_parallel_size,
            "max_model_len": s.max_model_len,
            "max_num_seqs": s.max_num_seqs,
            "dtype": s.dtype,
            "kv_cache_dtype": s.kv_cache_dtype,
            "gpu_memory_utilization": s.gpu_memory_utilization,
        },
    }


def _print_models(as_json: bool) -> None:
    from maider.models import MODELS
    from maider.output import console

    specs = sorted(MODELS.values(), key=lambda m: (m.weights_size_gb, m.id))
    if as_json:
        print(
            json.dumps(
                {
                    "models": [
                        {
                            "id": m.id,
                            "params_b": m.params_b,
                            "quantization": m.quantization,
                            "weights_gb": round(m.weights_size_gb, 2),
                            "max_context": m.max_context,
                            "gated": m.gated,
                        }
                        for m in specs
                    ]
                },
                indent=2,
            )
        )
        return
    from rich.table import Table

    table = Table(
        title="Models maider knows (others are read from their Hugging Face config.json)",
        title_justify="left",
    )
    for col in ("model", "params", "quant", "weights", "max context"):
        table.add_column(col)
    for m in specs:
        params = f"{m.params_b:g}B" + (f" ({m.active_params_b:g}B active)" if m.active_params_b else "")
        table.add_row(m.id, params, m.quantization or "-", f"{m.weights_size_gb:.1f} GB", str(m.max_context))
    console().print(table)


@app.command()
def validate(
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
    ssh_public_key: opt.SSHPublicKey = None,
) -> None:
    """Check the configuration: every problem on its own line; exit 1 if there is any."""
    from maider import plan as planning
    from maider.config import load_settings
    from maider.output import console, error

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
            ssh_public_key=ssh_public_key,
        )
    )
    result, problems = planning.validate_settings(settings)
    if result is not None:
        problems += planning.account_problems(result)
    if problems:
        for problem in problems:
            error(problem)
        raise typer.Exit(1)
    assert result is not None
    c = console()
    c.print(
        f"[green]✓[/green] configuration is valid: {result.provider} {result.vm_type.id} in {result.region}, "
        f"{result.model.id}, context {result.fit.settings.max_model_len}, {result.price}/h"
    )
    for note in result.chosen:
        c.print(f"  note: {note}")
    for warning in result.warnings:
        c.print(f"  note: {warning}")


@app.command()
def wizard(
    provider: opt.Provider = None,
    model: opt.Model = None,
    region: opt.Region = None,
    vm_type: opt.VMTypeId = None,
    context: opt.Context = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Ask nothing: open choices take the cheapest fitting option.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config file.")] = False,
) -> None:
    """Build the config file step by step (provider, model, region, GPU type, context, credentials)."""
    import sys

    from maider.output import console
    from maider.wizard import WizardAnswers, run_wizard

    answers = WizardAnswers(provider=provider, model=model, region=region, type=vm_type, context=context)
    interactive = not yes and sys.stdin.isatty()
    run_wizard(answers, interactive=interactive, force=force, say=console().print)
