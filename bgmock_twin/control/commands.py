"""``bgmock-twin simulate``, ``status`` and ``simulations``: the argument parsers and
what each command does.

Exit codes of ``simulate`` (k6's convention for thresholds):

- 0: the run finished (or, without ``--wait``, started) and every threshold held;
- 99: the run finished but a threshold failed (each failing one is printed);
- 2: the run could not be made: bad arguments or threshold, the twin unreachable,
  the token refused, the request rejected, the twin lost mid-run (or, after a run
  whose thresholds held, the ``--csv`` export failed);
- 130: interrupted by Ctrl-C: the simulation was stopped on the twin, the summary
  (and ``--out``/``--csv``) still written.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bgmock_twin.control import render
from bgmock_twin.control.client import DEFAULT_URL, ControlClient, ControlError
from bgmock_twin.control.durations import parse_duration
from bgmock_twin.control.profiles import PROFILES, profile_fields
from bgmock_twin.control.summary import Summary, live_figures
from bgmock_twin.control.thresholds import (
    NAMES,
    STATS,
    Threshold,
    ThresholdError,
    evaluate,
    parse_threshold,
)

EXIT_OK = 0
EXIT_NOT_RUN = 2
EXIT_THRESHOLDS = 99
EXIT_INTERRUPTED = 130
CLIENT_COMMANDS = ("simulate", "status", "simulations", "accounts")
POLL_SECONDS = 0.5
LOST_TWIN_SECONDS = 15.0


# --- argument types -------------------------------------------------------------------------
def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _offset(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else _duration(text)


def _threshold(text: str) -> Threshold:
    try:
        return parse_threshold(text)
    except ThresholdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _amount(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"an amount must be positive: {text!r}")
    return format(value, "f")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1: {text!r}")
    return value


# --- parsers --------------------------------------------------------------------------------
def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the twin's control API (default {DEFAULT_URL})")
    parser.add_argument("--token", default=None,
                        help="control token for mutating calls (default: the "
                        "TWIN_CONTROL_TOKEN environment variable)")


def add_parsers(commands: Any) -> None:
    """Add the client commands to the ``bgmock-twin`` subparsers."""
    simulate = commands.add_parser(
        "simulate", help="start a simulation on a running twin; --wait follows it to a "
        "summary and thresholds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start a simulation on a running twin over its control API. With "
        "--wait (implied by --threshold, --out and --csv) show a live progress line, "
        "then a summary; Ctrl-C stops the simulation on the twin and still prints it.",
        epilog=_simulate_epilog(),
    )
    _connection(simulate)
    size = simulate.add_mutually_exclusive_group(required=True)
    size.add_argument("--count", type=int, help="payments to send (1..100000)")
    size.add_argument("--duration", type=_duration,
                      help="send for this long (30s, 2m, 1h): the twin plans the payments "
                      "the profile has due in that time")
    base = simulate.add_mutually_exclusive_group()
    base.add_argument("--rate", type=_positive, help="payments/s (constant and spike base)")
    base.add_argument("--delay", type=_positive,
                      help="seconds between payments instead of --rate (0.5..10)")
    simulate.add_argument("--profile", choices=PROFILES,
                          default="constant", help="load profile (default constant)")
    simulate.add_argument("--ramp-from", type=float, help="ramp: payments/s at the start")
    simulate.add_argument("--ramp-to", type=_positive, help="ramp: payments/s at the end")
    simulate.add_argument("--ramp-duration", type=_duration, help="ramp: time to get there")
    simulate.add_argument("--spike-rate", type=_positive, help="spike: payments/s in it")
    simulate.add_argument("--spike-start", type=_offset, help="spike: time after the start")
    simulate.add_argument("--spike-duration", type=_duration, help="spike: how long")
    simulate.add_argument("--wave-base", type=_positive,
                          help="wave: payments/s it rises and falls around")
    simulate.add_argument("--wave-amplitude", type=_non_negative,
                          help="wave: payments/s above and below the base (the rate "
                          "never goes below 0)")
    simulate.add_argument("--wave-period", type=_duration, help="wave: one rise and fall")
    simulate.add_argument("--channel", choices=("rest", "kafka"), default="rest")
    simulate.add_argument("--direction", choices=("a_to_b", "b_to_a", "both"), default="both")
    simulate.add_argument("--amount-min", type=_amount, help="smallest amount, e.g. 1.00")
    simulate.add_argument("--amount-max", type=_amount, help="largest amount, e.g. 50.00")
    simulate.add_argument("--failure-share", type=_share, default=0.0,
                          help="share of deliberate failures, 0..1 (default 0)")
    simulate.add_argument("--failure-kinds",
                          help="comma-separated: insufficient_funds, unknown_bankgood, "
                          "unknown_payee_account (default all)")
    simulate.add_argument("--name", help="a name to find the run by")
    simulate.add_argument("--wait", action="store_true",
                          help="follow the run to its end and print a summary")
    simulate.add_argument("--threshold", type=_threshold, action="append", default=[],
                          metavar="EXPR", help="NAME OP NUMBER, e.g. 'p95_total<5' "
                          "(repeatable; see the names below)")
    simulate.add_argument("--out", type=Path, metavar="FILE.json",
                          help="write the summary and each threshold's verdict as JSON")
    simulate.add_argument("--csv", type=Path, metavar="FILE.csv",
                          help="write every payment of the run as CSV (streamed)")
    simulate.add_argument("--progress-every", type=_duration, default=5.0,
                          help="seconds between progress lines when stdout is not a "
                          "terminal (default 5s)")

    status = commands.add_parser("status", help="the twin's mode, services and payments")
    _connection(status)
    status.add_argument("--json", action="store_true", help="the raw JSON answer")

    accounts = commands.add_parser(
        "accounts", help="the twin's accounts: actual and expected balances, drift, in flight")
    _connection(accounts)
    accounts.add_argument("--bank", choices=("bank_a", "bank_b"), help="one bank only")
    accounts.add_argument("--json", action="store_true", help="the raw JSON answer")

    sims = commands.add_parser("simulations",
                               help="the twin's simulations; with an id, its summary")
    _connection(sims)
    sims.add_argument("id", nargs="?", help="one simulation's id")
    sims.add_argument("--json", action="store_true", help="the raw JSON answer")


def _simulate_epilog() -> str:
    names = "\n".join(f"  {name:<18} {text}" for name, text in NAMES.items()
                      if name.split("_")[0] not in STATS)
    return (
        "thresholds (k6-style, NAME OP NUMBER with OP one of < <= > >= == !=):\n"
        f"{names}\n"
        "  STAT_total, STAT_STEP  latency in seconds; STAT: min mean p50 p90 p95 p99 max;\n"
        "                     STEP: accepted initiated forwarded processed completed settled\n"
        "  STAT_send_lag      actual minus intended send time (p50 p95 p99 max)\n"
        "  A value the twin does not give (no payment finished, a statistic its API\n"
        "  does not compute) fails its threshold.\n\n"
        "exit codes: 0 ok; 99 a threshold failed; 2 the run could not be made (twin\n"
        "unreachable, token refused, request rejected, bad threshold); 130 Ctrl-C.\n\n"
        "examples:\n"
        "  bgmock-twin simulate --rate 20 --duration 30s --wait \\\n"
        "      --threshold 'success_ratio>=0.99' --threshold 'p95_total<5'\n"
        "  bgmock-twin simulate --profile ramp --ramp-from 1 --ramp-to 50 "
        "--ramp-duration 1m --count 3000\n"
        "  bgmock-twin simulate --profile wave --wave-base 20 --wave-amplitude 10 "
        "--wave-period 1m --duration 5m\n"
    )


# --- commands -------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else os.environ.get("TWIN_CONTROL_TOKEN")
    client = ControlClient(args.url, token or None)
    out = render.console()
    try:
        if args.command == "status":
            body = client.status()
            _show(out, body, args.json, render.status)
            return EXIT_OK
        if args.command == "accounts":
            _show(out, client.accounts(args.bank), args.json, render.accounts)
            return EXIT_OK
        if args.command == "simulations":
            if args.id:
                detail = client.simulation(args.id)
                if args.json:
                    print(json.dumps(detail, indent=2))
                else:
                    render.summary(out, Summary(detail))
                return EXIT_OK
            items = client.simulations()
            _show(out, items, args.json, render.simulations)
            return EXIT_OK
        return simulate(args, client, out)
    except ControlError as exc:
        print(f"bgmock-twin: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        client.close()


def _show(out: Console, body: Any, raw: bool, table: Any) -> None:
    if raw:
        print(json.dumps(body, indent=2))
    else:
        table(out, body)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body. Raises ``ValueError`` for options that do not fit together."""
    body: dict[str, Any] = profile_fields(
        args.profile, rate=args.rate, delay=args.delay, ramp_from=args.ramp_from,
        ramp_to=args.ramp_to, ramp_seconds=args.ramp_duration, spike_rate=args.spike_rate,
        spike_start=args.spike_start, spike_seconds=args.spike_duration,
        wave_base=args.wave_base, wave_amplitude=args.wave_amplitude,
        wave_period=args.wave_period)
    body.update(channel=args.channel, direction=args.direction,
                failureShare=args.failure_share)
    if args.duration is not None:
        body["duration"] = args.duration
    else:
        body["count"] = args.count
    if args.amount_min is not None:
        body["amountMin"] = args.amount_min
    if args.amount_max is not None:
        body["amountMax"] = args.amount_max
    if args.failure_kinds:
        body["failureKinds"] = [k.strip() for k in args.failure_kinds.split(",") if k.strip()]
    if args.name:
        body["name"] = args.name
    return body


class _Display:
    """The live line: a rich progress bar on a terminal, else a plain line every
    ``every`` seconds (and one at the end)."""

    def __init__(self, out: Console, every: float, planned: int) -> None:
        self.out = out
        self.every = every
        self.last = -math.inf
        self.latest: dict[str, Any] | None = None
        self.printed: dict[str, Any] | None = None
        self.progress: Progress | None = None
        if out.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]{task.fields[state]}"), BarColumn(bar_width=16),
                TimeElapsedColumn(), TextColumn("{task.fields[text]}"), console=out,
                transient=False,
            )
            self.task = self.progress.add_task("run", total=planned, state="running",
                                               text="")

    def __enter__(self) -> _Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.latest is not None and self.printed != self.latest:
            self._line(self.latest)

    def update(self, figures: dict[str, Any]) -> None:
        self.latest = figures
        if self.progress is not None:
            self.progress.update(self.task, completed=figures["dispatched"],
                                 state=figures["state"], text=render.progress_text(figures))
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self._line(figures)
            self.last = now

    def _line(self, figures: dict[str, Any]) -> None:
        print(f"{figures['state']}: {render.progress_text(figures)}", flush=True)
        self.printed = figures


def _sending_done(detail: dict[str, Any]) -> bool:
    progress = detail.get("progress") or {}
    if detail.get("state") not in ("running", "resuming"):
        return True
    return int(progress.get("notYetDue", 1)) == 0


def _poll(client: ControlClient, simulation_id: str) -> dict[str, Any]:
    """The simulation's detail; a twin that stops answering is retried for a while
    (a restart resumes the simulation) before the run is given up."""
    deadline = time.monotonic() + LOST_TWIN_SECONDS
    while True:
        try:
            return client.simulation(simulation_id)
        except ControlError as exc:
            if time.monotonic() > deadline:
                raise ControlError(f"lost the twin during the run ({exc}); simulation "
                                   f"{simulation_id} may still be running there: "
                                   "see `bgmock-twin simulations`") from None
            time.sleep(1.0)


def simulate(args: argparse.Namespace, client: ControlClient, out: Console) -> int:
    try:
        body = request_body(args)
    except ValueError as exc:
        print(f"bgmock-twin simulate: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    for flag, path in (("--out", args.out), ("--csv", args.csv)):
        if path is not None and not path.resolve().parent.is_dir():
            print(f"bgmock-twin simulate: {flag} {path}: no such directory", file=sys.stderr)
            return EXIT_NOT_RUN
    wait = args.wait or bool(args.threshold) or args.out is not None or args.csv is not None
    started = time.monotonic()
    created = client.start_simulation(body)
    simulation_id = str(created["id"])
    sized = f" in {args.duration:g} s" if args.duration is not None else ""
    print(f"simulation {simulation_id} started on {client.url}: {created.get('planned')} "
          f"payments{sized}, {created.get('profile')} profile, {created.get('channel')}",
          flush=True)
    if not wait:
        print(f"follow it: bgmock-twin simulations {simulation_id} --url {client.url}")
        return EXIT_OK

    detail: dict[str, Any] = dict(created)
    send_end: float | None = None
    interrupted = False
    try:
        with _Display(out, args.progress_every, int(created.get("planned") or 0)) as display:
            while True:
                detail = _poll(client, simulation_id)
                now = time.monotonic()
                if send_end is None and _sending_done(detail):
                    send_end = now
                display.update(live_figures(detail, (send_end or now) - started))
                if detail.get("state") in ("finished", "stopped"):
                    break
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the simulation on the twin", file=sys.stderr, flush=True)
        client.stop_simulation(simulation_id)
        detail = client.simulation(simulation_id)
    ended = time.monotonic()
    if detail.get("state") == "stopped" and not interrupted:
        print("the simulation was stopped on the twin before its end", file=sys.stderr)

    result = Summary(detail, run_seconds=ended - started,
                     send_seconds=(send_end or ended) - started, interrupted=interrupted)
    result.verdicts = evaluate(args.threshold, result.values())
    render.summary(out, result)

    report = result.as_dict(client.url)
    export_failed = False
    if args.csv is not None:
        try:
            rows = _write_csv(client, simulation_id, args.csv)
        except ControlError as exc:  # the summary is still written below
            export_failed = True
            report["csv"] = {"path": str(args.csv), "error": str(exc)}
            print(f"bgmock-twin: --csv {args.csv} incomplete: {exc}", file=sys.stderr)
        else:
            report["csv"] = {"path": str(args.csv), "payments": rows}
            print(f"wrote {rows} payments to {args.csv}")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote the summary to {args.out}")

    failed = [v for v in result.verdicts if not v.ok]
    for verdict in failed:
        value = "no value" if verdict.value is None else f"{verdict.value:g}"
        print(f"threshold failed: {verdict.threshold.expression} "
              f"({verdict.threshold.name} = {value})", file=sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    if failed:
        return EXIT_THRESHOLDS
    return EXIT_NOT_RUN if export_failed else EXIT_OK


def _write_csv(client: ControlClient, simulation_id: str, path: Path) -> int:
    rows = -1  # the header is not a payment
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for row in client.payments_csv(simulation_id):
            writer.writerow(row)
            rows += 1
    return max(rows, 0)
