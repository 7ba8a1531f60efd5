"""The ``bgmock-twin`` command: ``run``, ``emulate`` and ``check-config``.

Invalid settings stop every command at once with one line per bad setting, naming
it and the reason, and exit code 2; the offending values are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys

from bgmock_twin import __version__
from bgmock_twin.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgmock-twin",
        description="Digital twin of the BGMock interbank payment system.",
    )
    parser.add_argument("--version", action="version", version=f"bgmock-twin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the daemon (embedded BGMock when none is configured)")
    commands.add_parser("emulate", help="run only the embedded BGMock emulator")
    commands.add_parser("check-config", help="print the effective settings, secrets masked")
    return parser


def _settings() -> Settings | None:
    try:
        return load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            print(f"bgmock-twin: {line}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
