"""The ``bgmock-twin`` command.

Daemon commands: ``run``, ``emulate`` and ``check-config``. They load the settings
(environment, ``.env``, and the flags below, which override both); invalid settings
stop them at once with one line per bad setting, naming it and the reason, and exit
code 2; the offending values are never printed.

Client commands: ``simulate``, ``status``, ``simulations`` and ``accounts``
(``bgmock_twin.control``) talk to a running twin over HTTP and need none of the daemon's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from bgmock_twin import __version__
from bgmock_twin.control import commands as client_commands

if TYPE_CHECKING:
    from bgmock_twin.settings import Settings

# Common settings as flags: (flag, environment variable, help). A flag given on the
# command line overrides the environment and .env for this process.
DAEMON_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--listen-host", "TWIN_LISTEN_HOST", "address of the control API and /metrics"),
    ("--listen-port", "TWIN_LISTEN_PORT", "port of the control API and /metrics (8080)"),
    ("--log-level", "TWIN_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    ("--log-format", "TWIN_LOG_FORMAT", "json, console or auto"),
    ("--mode", "TWIN_MODE", "auto, embedded or external"),
    ("--instance-id", "TWIN_INSTANCE_ID", "this replica's id (default the hostname)"),
    ("--database-url", "TWIN_DATABASE_URL", "the twin's own ledger database"),
    ("--load-rate", "TWIN_LOAD_RATE", "background canary payments/s (0 turns it off)"),
)

SETTINGS_EPILOG = """\
Every setting is an environment variable (TWIN_*, KAFKA_*, BANK_*, CLEARING_*, DB_*),
also read from .env in the working directory; the flags above override both. The full
list with defaults is in README.md, section "Settings"; `bgmock-twin check-config`
prints the effective values (secrets masked), and accepts the same flags.
Invalid settings stop the command with one line per bad setting and exit code 2.
"""


def _daemon_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                   name: str, help_text: str) -> None:
    parser = commands.add_parser(
        name, help=help_text, description=help_text, epilog=SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("settings (override the environment)")
    for flag, env, text in DAEMON_FLAGS:
        group.add_argument(flag, metavar="VALUE", help=f"{text} [{env}]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgmock-twin",
        description="Digital twin of the BGMock interbank payment system.",
    )
    parser.add_argument("--version", action="version", version=f"bgmock-twin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _daemon_parser(commands, "run", "run the daemon (embedded BGMock when none is configured)")
    _daemon_parser(commands, "emulate", "run only the embedded BGMock emulator")
    _daemon_parser(commands, "check-config", "print the effective settings, secrets masked")
    client_commands.add_parsers(commands)
    return parser


def _apply_flags(args: argparse.Namespace) -> None:
    for flag, env, _ in DAEMON_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            os.environ[env] = value


def _settings() -> Settings | None:
    from bgmock_twin.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            print(f"bgmock-twin: {line}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in client_commands.CLIENT_COMMANDS:
        return client_commands.main(args)
    _apply_flags(args)
    settings = _settings()
    if settings is None:
        return 2
    if args.command == "check-config":
        effective = settings.masked()
        effective["(derived) mode"] = "embedded" if settings.embedded else "external"
        effective["(derived) consumer group"] = settings.consumer_group
        print(json.dumps(effective, indent=2, sort_keys=True, default=str))
        return 0
    if args.command == "emulate":
        from bgmock_twin.emulator.standalone import run_standalone

        return int(run_standalone(settings))
    from bgmock_twin.app import run

    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
