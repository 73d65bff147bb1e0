"""Session commands: `down`, `list`, `status`, `use`, `tunnel`, `env`, `cleanup`.

Thin: each parses its flags, calls one function of :mod:`maider.session.lifecycle`, and prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from maider.cli import app
from maider.cli import options as opt

if TYPE_CHECKING:  # pragma: no cover
    from maider.session.lifecycle import Orphan, SessionView
    from maider.session.state import SessionStore

SessionName = Annotated[
    Optional[str],  # noqa: UP045
    typer.Argument(help="Session name or id (default: the current session, or the only one)."),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _confirm(question: str, yes: bool) -> bool:
    import sys

    from maider.errors import MaiderError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise MaiderError(f"{question.rstrip('?')}: confirmation needed; rerun with -y to confirm")
    return typer.confirm(question, default=False)


@app.command()
def down(name: SessionName = None, yes: Yes = False) -> None:
    """Delete a session's VM (after closing its tunnel) and print what it cost."""
    from maider.config import load_settings
    from maider.output import ProgressReporter, console
    from maider.session import lifecycle
    from maider.session.state import SessionStore

    settings = load_settings()
    store = SessionStore()
    record = store.resolve(name)
    ip = f", {record.ip}" if record.ip else ""
    if not _confirm(
        f"Delete session {record.label} ({record.provider} {record.type_id} in {record.region}{ip})?", yes
    ):
        raise typer.Exit(1)
    with ProgressReporter() as reporter:
        result = lifecycle.down(reporter=reporter, store=store, settings=settings, record=record)
    r = result.record
    con = console()
    if result.deleted:
        price = f"{r.hourly_price}/h" if r.hourly_price else "unknown price"
        con.print(
            f"deleted {r.provider} VM {', '.join(result.deleted)} of session {r.label}: ran "
            f"{lifecycle.format_duration(result.runtime_seconds)}, cost ≈ "
            f"{lifecycle.format_money(result.cost, result.currency)} (at {price}, billed "
            f"{lifecycle.billing_of(r.provider).describe()}; the provider's invoice is authoritative)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif r.end_reason:
        con.print(
            f"session {r.label} was already over ({r.end_reason}; cost ≈ "
            f"{lifecycle.format_money(result.cost, result.currency)}); record removed",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    else:
        con.print(
            f"session {r.label} had no VM (its create never went through); record removed",
            markup=False,
            highlight=False,
        )


@app.command("list")
def list_(as_json: opt.Json = False) -> None:
    """Every session (status, IP, type, price, runtime, cost so far, tunnel), and orphan VMs."""
    import json

    from maider.output import console, warn
    from maider.session import lifecycle
    from maider.session.state import SessionStore

    store = SessionStore()
    overview = lifecycle.survey(store=store)
    if as_json:
        print(
            json.dumps(
                {
                    "sessions": [_view_json(v, store, live=False) for v in overview.sessions],
                    "orphans": [o.to_json() for o in overview.orphans],
                    "errors": overview.failed,
                    "unreadable": overview.unreadable,
                },
                indent=2,
            )
        )
        return
    for pid, why in overview.failed.items():
        warn(f"{pid}: could not list VMs ({why}); their state is unknown")
    for problem in overview.unreadable:
        warn(problem)
    con = console()
    if not overview.sessions and not overview.orphans:
        con.print("no sessions: start one with `maider up`", markup=False)
        return
    if overview.sessions:
        con.print(_sessions_table(overview.sessions, store.current(), store))
        for view in overview.sessions:
            r = view.record
            if r.end_reason:  # a watchdog deleted it: say so under the table (`cleanup` forgets it)
                cost = lifecycle.format_money(r.final_cost, view.currency)
                con.print(
                    f"{r.label}: {r.end_reason} (cost ≈ {cost})",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
    if overview.orphans:
        con.print(_orphans_table(overview.orphans))
        con.print(
            "orphans are VMs tagged 'maider' that no session knows; they bill. `maider cleanup` deletes them.",
            markup=False,
        )


def _view_json(view: SessionView, store: SessionStore, *, live: bool) -> dict[str, Any]:
    from maider.session import laptop_watchdog as lw

    r = view.record
    data = view.to_json(store)
    data["watchdog"] = lw.view_json(lw.describe(store, r, live=live), r)
    data["ended_at"] = r.ended_at.isoformat(timespec="seconds") if r.ended_at else None
    data["end_reason"] = r.end_reason
    return data


def _sessions_table(views: list[SessionView], current: str | None, store: SessionStore) -> Any:
    from rich.table import Table

    from maider.session import laptop_watchdog as lw
    from maider.session.lifecycle import format_duration, format_money

    table = Table(title="sessions", title_justify="left")
    for column in (
        "",
        "session",
        "status",
        "VM",
        "provider",
        "type",
        "IP",
        "$/h",
        "runtime",
        "cost",
        "tunnel",
        "last activity",
        "watchdog",
    ):
        table.add_column(column)
    for view in views:
        r = view.record
        ports = f"{r.api_port}" + (f", {r.webui_port}" if r.webui_port else "") if r.api_port else "-"
        from maider.session.lifecycle import tunnel_alive

        tunnel = f"{ports}{'' if tunnel_alive(r) or not r.api_port else ' (down)'}"
        # Local state only (the last known one): `list` makes no SSH connection per session.
        watch = lw.describe(store, r, live=False)
        table.add_row(
            "*" if r.id == current else "",
            f"{r.name} ({r.id})" if r.name else r.id,
            r.status.value,
            view.vm_state,
            r.provider,
            f"{r.type_id} in {r.region}",
            (view.instance.public_ipv4 if view.instance else None) or r.ip or "-",
            str(r.hourly_price) if r.hourly_price else "?",
            format_duration(view.runtime_seconds) if view.runtime_seconds is not None else "-",
            format_money(view.cost, view.currency) if view.cost is not None else "-",
            tunnel,
            lw.ago(watch.last_activity_at) if watch else "-",
            lw.acts_text(watch),
        )
    return table


def _orphans_table(orphans: list[Orphan]) -> Any:
    from rich.table import Table

    table = Table(title="orphan VMs (tagged maider, unknown to this machine)", title_justify="left")
    for column in ("provider", "instance", "name", "status", "type", "region", "IP"):
        table.add_column(column)
    for o in orphans:
        vm = o.instance
        table.add_row(
            o.provider, vm.id, vm.name, vm.status.value, vm.type_id, vm.region, vm.public_ipv4 or "-"
        )
    return table


@app.command()
def status(name: SessionName = None, as_json: opt.Json = False) -> None:
    """One session in detail: its VM as the provider sees it, tunnel, cost, phase durations."""
    import json

    from maider.output import console, warn
    from maider.session import lifecycle
    from maider.session.state import SessionStore

    store = SessionStore()
    view = lifecycle.status(name, store=store)
    if as_json:
        print(json.dumps(_view_json(view, store, live=True), indent=2))
        return
    if view.problem:
        warn(f"could not ask {view.record.provider} about the VM: {view.problem}")
    r = view.record
    rows = [
        ("session", f"{r.name} ({r.id})" if r.name else r.id),
        ("status", r.status.value + (f" — {r.last_error}" if r.last_error else "")),
        *(
            [("ended", f"{r.ended_at.isoformat(timespec='seconds')}: {r.end_reason}")]
            if r.end_reason and r.ended_at
            else []
        ),
        ("VM", f"{r.instance_id or '-'} ({view.vm_state})"),
        ("where", f"{r.provider} {r.type_id} in {r.region}"),
        ("IP", r.ip or "-"),
        ("price", f"{r.hourly_price}/h" if r.hourly_price else "?"),
        ("created", r.created_at.isoformat(timespec="seconds")),
    ]
    if view.runtime_seconds is not None:
        rows.append(
            (
                "cost" if r.ended_at else "cost so far",
                f"{lifecycle.format_money(view.cost, view.currency)} "
                f"({lifecycle.format_duration(view.runtime_seconds)})",
            )
        )
    rows.append(("model", f"{r.model} served as {r.served_model_name}"))
    if r.api_port:
        alive = "up" if lifecycle.tunnel_alive(r) else "down: `maider tunnel` reopens it"
        rows.append(
            ("tunnel", f"vLLM 127.0.0.1:{r.api_port}, Open WebUI 127.0.0.1:{r.webui_port or '-'} ({alive})")
        )
    if r.phases:
        rows.append(("phases", ", ".join(f"{k} {v:.1f} s" for k, v in r.phases.items())))
    rows.extend(_watchdog_rows(store, r))
    con = console()
    for key, value in rows:
        con.print(f"{key:12} {value}", markup=False, highlight=False, soft_wrap=True)


def _watchdog_rows(store: SessionStore, record: Any) -> list[tuple[str, str]]:
    """The watchdog lines of `status`: read live from the VM (over SSH) and the laptop side."""
    from maider.session import laptop_watchdog as lw

    watch = lw.describe(store, record, live=True)
    if watch is None:
        return []
    if not watch.enabled:
        return [("watchdog", "watchdog off")]
    laptop = "laptop side running" if lw.is_running(record) else "laptop side not running"
    rows = [
        ("activity", f"last inference request {lw.ago(watch.last_activity_at)}"),
        ("watchdog", f"{lw.acts_text(watch)}; {laptop} (state from the {watch.source})"),
    ]
    if watch.extended_until is not None:
        rows.append(("extended", f"until {watch.extended_until.astimezone().strftime('%H:%M')}"))
    return rows


@app.command()
def use(name: Annotated[str, typer.Argument(help="Session name or id.")]) -> None:
    """Make a session the current one (`env`, `tunnel`, `status` and `down` default to it)."""
    from maider.output import console
    from maider.session import lifecycle

    record = lifecycle.use(name)
    console().print(f"current session: {record.label}", markup=False)


@app.command()
def tunnel(name: SessionName = None) -> None:
    """Open a session's SSH tunnel again (the same local ports when they are free)."""
    from maider.config import load_settings
    from maider.output import console
    from maider.session import lifecycle

    record = lifecycle.reopen_tunnel(name, settings=load_settings())
    webui = f", Open WebUI http://127.0.0.1:{record.webui_port}" if record.webui_port else ""
    console().print(
        f"tunnel of {record.label}: vLLM http://127.0.0.1:{record.api_port}/v1{webui}", markup=False
    )


@app.command()
def env(name: SessionName = None) -> None:
    """Print shell exports for a session: use `eval "$(maider env)"`, then run aider."""
    from maider.aider import shell_exports
    from maider.session import lifecycle

    print(shell_exports(lifecycle.environment(name)), end="")


@app.command()
def cleanup(yes: Yes = False) -> None:
    """Delete orphan VMs (tagged maider, unknown here) and forget sessions whose VM is gone."""
    from maider.config import load_settings
    from maider.output import ProgressReporter, console
    from maider.session import lifecycle

    con = console()

    def confirm(orphans: list[Orphan]) -> bool:
        reporter.close()
        con.print(_orphans_table(orphans))
        return _confirm(f"Delete these {len(orphans)} VM(s)?", yes)

    with ProgressReporter() as reporter:
        result = lifecycle.cleanup(confirm, reporter, settings=load_settings())
    for orphan in result.deleted_orphans:
        con.print(f"deleted orphan {orphan.provider} VM {orphan.instance.id}", markup=False)
    for record in result.dropped_records:
        con.print(f"forgot session {record.label}: its VM is gone", markup=False)
    for line in result.skipped:
        con.print(f"kept {line}", markup=False)
    if not (result.deleted_orphans or result.dropped_records or result.skipped):
        con.print("nothing to clean up", markup=False)
