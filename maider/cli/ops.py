"""Operating a running session: `check`, `validate-perf`, `benchmark` (+ `history`, `compare`), `watch`.

Thin: each command resolves the session through :func:`maider.session.health.connect` (which
reopens a dead tunnel), calls one library function, and prints. rich tables are imported inside
the functions that print them, so `maider --help` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from maider.cli import app
from maider.cli import options as opt

if TYPE_CHECKING:  # pragma: no cover
    from maider.ops.benchdb import BenchmarkRun, CompareRow
    from maider.session.health import Report

SessionName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(help="Session name or id (default: the current session, or the only one)."),
]
Gpu = Annotated[Optional[str], typer.Option("--gpu", help="Only this GPU VM type (e.g. L4-1-24G).")]  # noqa: UP045
ModelFilter = Annotated[Optional[str], typer.Option("--model", "-m", help="Only this model.")]  # noqa: UP045
ProviderFilter = Annotated[Optional[str], typer.Option("--provider", "-p", help="Only this provider.")]  # noqa: UP045


def _print_report(report: Report, title: str) -> None:
    from rich.table import Table

    from maider.output import console

    table = Table(title=f"{title}: {report.session}", title_justify="left")
    for column in ("check", "verdict", "detail"):
        table.add_column(column)
    style = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    for item in report.items:
        table.add_row(item.name, f"[{style[item.verdict]}]{item.verdict}[/]", item.detail)
    con = console()
    con.print(table)
    con.print(f"verdict: {report.verdict}", markup=False, highlight=False)


def _emit(report: Report, title: str, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report, title)
    if report.failed:
        raise typer.Exit(1)


def _tunnel_note(link: Any) -> None:
    from maider.output import warn

    if link.reopened_tunnel:
        warn(f"the tunnel of {link.record.label} was down; reopened it on 127.0.0.1:{link.port}")


@app.command()
def check(name: SessionName = None, as_json: opt.Json = False) -> None:
    """Quick health check (≈30 s): GPUs, vLLM health and model, one short completion with tokens/s."""
    from maider.session import health

    link = health.connect(name)
    _tunnel_note(link)
    _emit(health.check(link), "check", as_json)


@app.command("validate-perf")
def validate_perf(name: SessionName = None, as_json: opt.Json = False) -> None:
    """GPU use and memory under load, TP balance, throughput and TTFT at concurrency 1 and 4.

    Prints PASS/WARN/FAIL per check and exits non-zero when any check fails.
    """
    from maider.errors import MaiderError
    from maider.output import warn
    from maider.session import benchmark, health

    link = health.connect(name)
    _tunnel_note(link)
    try:
        utilization: float | None = benchmark.running_settings(link).gpu_memory_utilization
    except (ValueError, MaiderError) as exc:
        warn(f"could not read vLLM's settings on the VM ({exc}); judging memory against the whole GPU")
        utilization = None
    _emit(health.validate_perf(link, gpu_memory_utilization=utilization), "validate-perf", as_json)


# ------------------------------------------------------------------------------------ benchmark


class _BenchmarkGroup(TyperGroup):
    """`benchmark [NAME]` runs the benchmark; `benchmark history|compare …` are subcommands.

    Click parses a group's own arguments before choosing a subcommand, so an optional NAME on
    the group would swallow "history". Instead, anything that is not a subcommand name (or
    help) is routed to the `run` subcommand.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


benchmark_app = typer.Typer(
    cls=_BenchmarkGroup,
    name="benchmark",
    help="Benchmark a session with a fixed set of coding prompts and keep the results.\n\n"
    "`maider benchmark [NAME]` runs it (same as `benchmark run`); `benchmark history` lists past runs "
    "and `benchmark compare` compares GPUs, models and providers. A session named 'run', 'history' "
    "or 'compare' is shadowed by the subcommand: use `maider benchmark run NAME` or its id.",
    rich_markup_mode=None,
    no_args_is_help=False,
)
app.add_typer(benchmark_app)


def _money(amount: float | None, currency: str | None) -> str:
    from maider.session.lifecycle import format_money

    return "?" if amount is None or currency is None else format_money(amount, currency)


def _fmt(value: float | None, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


@benchmark_app.command("run")
def benchmark_run(name: SessionName = None, as_json: opt.Json = False) -> None:
    """Run the prompt set against a session (streaming, one prompt at a time) and store the run."""
    import json

    from maider.ops.prompts import PROMPTS
    from maider.output import console
    from maider.session import benchmark, health

    link = health.connect(name)
    _tunnel_note(link)
    con = console()
    count = iter(range(1, len(PROMPTS) + 1))

    def progress(result: Any) -> None:
        if as_json:
            return
        figures = (
            f"error: {result.error}"
            if result.error
            else f"{result.output_tokens} tokens, TTFT {_fmt(result.ttft_s, '{:.2f}')} s, "
            f"{_fmt(result.tokens_per_s)} tokens/s"
        )
        con.print(
            f"[{next(count)}/{len(PROMPTS)}] {result.prompt_id}: {figures}", markup=False, highlight=False
        )

    run = benchmark.run_benchmark(link, on_result=progress)
    if as_json:
        print(json.dumps(_run_json(run), indent=2))
        return
    vllm = ", ".join(f"{k}={v}" for k, v in run.vllm.items() if v is not None)
    lines = [
        f"benchmark of {link.record.label}: {run.model} on {run.gpu_count}× {run.gpu_name} "
        f"({run.provider} {run.gpu_type} in {run.region})",
        f"vLLM: {vllm}",
        f"median {_fmt(run.median_tokens_per_s)} tokens/s, median TTFT {_fmt(run.median_ttft_s, '{:.2f}')} s, "
        f"{run.total_output_tokens} output tokens in {run.total_seconds:.1f} s",
        f"cost: {_money(run.cost_per_million_output_tokens, run.currency)} per million output tokens "
        f"(one stream at {_money(run.hourly_price, run.currency)}/h)",
        f"stored in {benchmark.db_path()} as run {run.run_id[:12]}",
    ]
    failed = [r for r in run.results if r.error]
    if failed:
        lines.append(f"{len(failed)} prompt(s) failed: {', '.join(r.prompt_id for r in failed)}")
    for line in lines:
        con.print(line, markup=False, highlight=False, soft_wrap=True)


def _run_json(run: BenchmarkRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "timestamp": run.timestamp.isoformat(timespec="seconds"),
        "session_id": run.session_id,
        "provider": run.provider,
        "region": run.region,
        "gpu_type": run.gpu_type,
        "gpu_name": run.gpu_name,
        "gpu_count": run.gpu_count,
        "model": run.model,
        "vllm": dict(run.vllm),
        "prompt_set": f"{run.prompt_set}@{run.prompt_set_version}",
        "median_tokens_per_s": run.median_tokens_per_s,
        "median_ttft_s": run.median_ttft_s,
        "total_output_tokens": run.total_output_tokens,
        "total_seconds": run.total_seconds,
        "hourly_price": run.hourly_price,
        "currency": run.currency,
        "cost_per_million_output_tokens": run.cost_per_million_output_tokens,
        "results": [r.__dict__ for r in run.results],
    }


def _filters(gpu: str | None, model: str | None, provider: str | None) -> Any:
    from maider.ops.benchdb import BenchFilter

    return BenchFilter(gpu_type=gpu, model=model, provider=provider)


@benchmark_app.command("history")
def benchmark_history(
    gpu: Gpu = None,
    model: ModelFilter = None,
    provider: ProviderFilter = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 50,
    as_json: opt.Json = False,
) -> None:
    """Past benchmark runs, newest first (filters combine)."""
    import json

    from rich.table import Table

    from maider.ops.benchdb import BenchDB
    from maider.output import console
    from maider.session import benchmark

    with BenchDB(benchmark.db_path()) as db:
        runs = db.history(_filters(gpu, model, provider), limit=limit)
    if as_json:
        print(json.dumps([_run_json(r) for r in runs], indent=2))
        return
    con = console()
    if not runs:
        con.print("no benchmark runs match: run one with `maider benchmark`", markup=False)
        return
    table = Table(title="benchmark history", title_justify="left")
    for column in ("when", "provider", "GPU type", "GPUs", "model", "tokens/s", "TTFT s", "$/Mtok", "vLLM"):
        table.add_column(column)
    for r in runs:
        v = r.vllm
        table.add_row(
            r.timestamp.astimezone().strftime("%Y-%m-%d %H:%M"),
            r.provider,
            r.gpu_type,
            f"{r.gpu_count}× {r.gpu_name}",
            r.model,
            _fmt(r.median_tokens_per_s),
            _fmt(r.median_ttft_s, "{:.2f}"),
            _money(r.cost_per_million_output_tokens, r.currency),
            f"tp={v.get('tensor_parallel_size')} len={v.get('max_model_len')} "
            f"mem={v.get('gpu_memory_utilization')}",
        )
    con.print(table)


@benchmark_app.command("compare")
def benchmark_compare(
    gpu: Gpu = None,
    model: ModelFilter = None,
    provider: ProviderFilter = None,
    as_json: opt.Json = False,
) -> None:
    """Compare runs grouped by GPU type, model and provider: medians, fastest first."""
    import json

    from rich.table import Table

    from maider.ops.benchdb import BenchDB
    from maider.output import console
    from maider.session import benchmark

    with BenchDB(benchmark.db_path()) as db:
        rows = db.compare(_filters(gpu, model, provider))
    if as_json:
        print(json.dumps([_compare_json(r) for r in rows], indent=2))
        return
    con = console()
    if not rows:
        con.print("no benchmark runs match: run one with `maider benchmark`", markup=False)
        return
    table = Table(title="benchmark comparison (medians per group)", title_justify="left")
    for column in ("GPU type", "model", "provider", "runs", "tokens/s", "TTFT s", "per Mtok", "prompt set"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r.key["gpu_type"]),
            str(r.key["model"]),
            str(r.key["provider"]),
            str(r.runs),
            _fmt(r.median_tokens_per_s),
            _fmt(r.median_ttft_s, "{:.2f}"),
            _money(r.median_cost_per_million_output_tokens, r.currency),
            ", ".join(r.prompt_sets),
        )
    con.print(table)
    if any(len(r.prompt_sets) > 1 for r in rows):
        con.print("a group mixes prompt-set versions: its figures are not comparable", markup=False)


def _compare_json(row: CompareRow) -> dict[str, Any]:
    return {
        **dict(row.key),
        "runs": row.runs,
        "median_tokens_per_s": row.median_tokens_per_s,
        "median_ttft_s": row.median_ttft_s,
        "median_cost_per_million_output_tokens": row.median_cost_per_million_output_tokens,
        "currency": row.currency,
        "prompt_sets": list(row.prompt_sets),
        "latest": row.latest.isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ watch


@app.command()
def watch(
    name: SessionName = None,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between frames.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    count: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--count", min=1, help="Stop after this many frames (default: until Ctrl-C)."),
    ] = None,
    as_json: opt.Json = False,
) -> None:
    """Live dashboard: GPU use and memory, requests, tokens/s, idle time, cost, watchdog deadline.

    Reads vLLM's /metrics and nvidia-smi only: watching sends no inference request, so it never
    counts as use for the idle watchdog. Without a terminal, prints one line per frame.
    """
    import json
    import time

    from maider.output import console
    from maider.session import dashboard, health

    link = health.connect(name)
    _tunnel_note(link)
    sampler = dashboard.Sampler(link)
    con = console()
    label = link.record.label
    frames = 1 if once else count
    if once:
        # Two scrapes a moment apart, so the one frame has a tokens/s figure.
        sampler.sample()
        time.sleep(min(interval, 1.0))
    live = con.is_terminal and not as_json and not once

    def show(frame: dashboard.Frame) -> None:
        if as_json:
            print(json.dumps(frame.to_json()), flush=True)
        elif con.is_terminal:
            con.print(dashboard.render(frame, label))
        else:
            print(dashboard.plain_line(frame, label), flush=True)

    shown = 0
    try:
        if live:
            from rich.live import Live

            with Live(dashboard.render(sampler.sample(), label), console=con, auto_refresh=False) as screen:
                shown = 1
                while frames is None or shown < frames:
                    time.sleep(interval)
                    screen.update(dashboard.render(sampler.sample(), label), refresh=True)
                    shown += 1
            return
        while frames is None or shown < frames:
            if shown:
                time.sleep(interval)
            show(sampler.sample())
            shown += 1
    except KeyboardInterrupt:
        pass
