"""Tables for people: the end-of-run summary (k6-like), the progress line, the
twin's status and its simulations, drawn with ``rich`` (plain text when stdout is
not a terminal)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bgmock_twin.control.summary import Summary
from bgmock_twin.control.thresholds import OUTCOMES


def console() -> Console:
    """Stdout; when it is not a terminal (a file, a CI log) wide enough that tables
    of ids are not squeezed."""
    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, soft_wrap=False, width=160)
    return out


def _num(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


# --- simulate -------------------------------------------------------------------------------
def progress_text(figures: Mapping[str, Any]) -> str:
    outcomes = figures["outcomes"]
    return (
        f"{figures['dispatched']}/{figures['planned']} sent, {_num(figures['rate'], '/s', 1)}, "
        f"p95 {_num(figures['p95'], ' s', 2)}, in flight {figures['in_flight']}, "
        f"dropped {figures['dropped']}, "
        + ", ".join(f"{o} {outcomes[o]}" for o in OUTCOMES)
    )


# --- the summary ----------------------------------------------------------------------------
def summary(out: Console, result: Summary) -> None:
    detail = result.detail
    spec = detail.get("spec") or {}
    title = f"simulation {detail.get('id')}"
    if detail.get("name"):
        title += f" ({detail['name']})"
    state = str(detail.get("state"))
    if result.interrupted:
        state += " (interrupted: stopped by Ctrl-C)"
    out.print(title)
    out.print(f"  state {state}, channel {detail.get('channel')}, profile "
              f"{detail.get('profile')}, direction {spec.get('direction', '-')}")

    figures = Table(box=box.SIMPLE_HEAD, show_header=True, pad_edge=False, show_edge=False)
    figures.add_column("payments", no_wrap=True)
    figures.add_column("", justify="right", no_wrap=True)
    figures.add_column("", no_wrap=True)
    dispatched = result.count("dispatched")
    planned = result.count("planned")
    figures.add_row("planned", str(planned), "")
    figures.add_row("dispatched", str(dispatched), _pct(dispatched, planned))
    figures.add_row("dropped", str(result.count("dropped")), _pct(result.count("dropped"),
                                                                  planned))
    target = spec.get("rate")
    if spec.get("profile") == "wave":
        aim = f"wave around {spec.get('waveBase')}/s"
    else:
        aim = f"target {target}/s" if target is not None else ""
    if result.run_seconds is not None:
        figures.add_row("achieved rate", _num(result.achieved_rate, "/s", 2), aim)
    if result.run_seconds is not None:
        figures.add_row("run time", _num(result.run_seconds, " s", 1),
                        f"sending {_num(result.send_seconds, ' s', 1)}")
    for outcome, count in result.outcomes.items():
        figures.add_row(outcome, str(count), _pct(count, dispatched))
    figures.add_row("unfinished", str(result.count("unfinished")),
                    "no outcome yet" if result.count("unfinished") else "")
    out.print()
    out.print(figures)

    stats = result.given_stats()
    latency = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    latency.add_column("latency (s)", no_wrap=True)
    latency.add_column("count", justify="right")
    for stat in stats:
        latency.add_column(stat, justify="right")
    for row, values in result.latency().items():
        if not values:
            continue
        latency.add_row(row.replace("_", " "), _num(values.get("count")),
                        *(_num(values.get(stat)) for stat in stats))
    out.print()
    out.print(latency)
    missing = result.missing_stats()
    if missing:
        out.print(f"  not given by the twin's API: {', '.join(missing)}")

    if result.verdicts:
        verdicts = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        verdicts.add_column("threshold", no_wrap=True)
        verdicts.add_column("value", justify="right")
        verdicts.add_column("", no_wrap=True)
        for verdict in result.verdicts:
            verdicts.add_row(verdict.threshold.expression, _num(verdict.value, digits=4),
                             "ok" if verdict.ok else "FAILED")
        out.print()
        out.print(verdicts)


# --- status ---------------------------------------------------------------------------------
def status(out: Console, body: Mapping[str, Any]) -> None:
    out.print(f"twin {body.get('instance')} (version {body.get('version')}), "
              f"mode {body.get('mode')}, started {body.get('startedAt')}")
    if body.get("following"):
        unseen = body.get("notObserved") or []
        out.print(f"following payments by {body.get('following')}"
                  + (f"; not observed: {', '.join(map(str, unseen))}" if unseen else ""))
    services = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("service", "up", "latency", "last check", "failures", "reason"):
        services.add_column(column, justify="right" if column in ("latency", "failures")
                            else "left")
    for name, state in (body.get("services") or {}).items():
        up = state.get("up")
        services.add_row(
            name, "up" if up else ("DOWN" if up is False else "?"),
            _num(state.get("latencySeconds"), " s"),
            str(state.get("lastCheck") or "never"),
            str(state.get("consecutiveFailures") or 0), str(state.get("reason") or ""),
        )
    out.print(services)
    payments = body.get("payments")
    if isinstance(payments, Mapping):
        outcomes = payments.get("outcomes") or {}
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("payments")
        table.add_column("", justify="right")
        rows: list[tuple[str, Any]] = [
            ("submitted", payments.get("submitted")), ("in flight", payments.get("inFlight")),
            *((o, outcomes.get(o)) for o in OUTCOMES),
            ("dropped", payments.get("dropped")),
            ("simulations running", payments.get("simulationsActive")),
            ("background rate", f"{payments.get('backgroundRate')}/s"),
            ("accounts provisioned", payments.get("provisioned")),
            ("following", payments.get("following")),
        ]
        for label, value in rows:
            table.add_row(label, "-" if value is None else str(value))
        out.print()
        out.print(table)
    books = body.get("books")
    if isinstance(books, Mapping):
        out.print(f"books: {books.get('status')}, {books.get('violations')} violation(s), "
                  f"last reconciliation {books.get('lastRun') or 'not yet'}")


# --- simulations ----------------------------------------------------------------------------
def simulations(out: Console, items: list[Mapping[str, Any]]) -> None:
    if not items:
        out.print("no simulations on this twin")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("state")
    table.add_column("created", no_wrap=True)
    for column in ("sent", "dropped", "unfinished"):
        table.add_column(column, justify="right")
    table.add_column("profile")
    for item in items:
        created = str(item.get("createdAt") or "")[:19].replace("T", " ")
        table.add_row(
            str(item.get("id")), str(item.get("name") or ""), str(item.get("state")), created,
            f"{item.get('dispatched')}/{item.get('planned')}", str(item.get("dropped")),
            str(item.get("unfinished")), f"{item.get('profile')}/{item.get('channel')}",
        )
    out.print(table)


# --- accounts -------------------------------------------------------------------------------
def _range(value: Any) -> str:
    if not isinstance(value, Mapping):
        return "-"
    low, high = value.get("min"), value.get("max")
    return str(low) if low == high else f"{low}..{high}"


def accounts(out: Console, body: Mapping[str, Any]) -> None:
    """One row per twin account: actual against expected, drift, payments in flight."""
    if not body.get("readAt"):
        out.print("no reconciliation yet: the accounts are read at the first one "
                  "(or run one: POST /api/v1/reconciliation/run)")
        return
    out.print(f"accounts as read at {body.get('readAt')} "
              f"(banks read: {', '.join(body.get('banksRead') or []) or 'none'})")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("bank", "account", "balance", "expected", "reserved", "expected reserved",
                   "drift", "in flight", "source"):
        table.add_column(column, no_wrap=True, justify="left" if column in (
            "bank", "account", "source") else "right")
    for item in body.get("accounts") or []:
        if item.get("missing"):
            balance = "MISSING"
        else:
            balance = "-" if item.get("balance") is None else str(item["balance"])
        drift = item.get("drift")
        table.add_row(
            str(item.get("bank")), str(item.get("account")), balance,
            _range(item.get("expectedBalance")),
            "-" if item.get("reserved") is None else str(item["reserved"]),
            _range(item.get("expectedReserved")),
            "-" if drift is None else str(drift), str(item.get("inFlight", 0)),
            str(item.get("source") or "not read"),
        )
    out.print(table)
    banks = body.get("banks") or {}
    if banks:
        totals = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in ("bank", "accounts read", "balance", "expected", "drift"):
            totals.add_column(column, justify="left" if column == "bank" else "right")
        for name, bank in banks.items():
            totals.add_row(name, f"{bank.get('read')}/{bank.get('accounts')}",
                           str(bank.get("balance")), _range(bank.get("expectedBalance")),
                           str(bank.get("drift")))
        out.print()
        out.print(totals)
