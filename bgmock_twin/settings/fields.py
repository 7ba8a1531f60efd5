"""What every settings slice shares: binding a field to one environment variable,
the validators of values that several slices hold (URLs, bootstrap servers,
database URLs), and printing a database URL without its password."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import AliasChoices, ConfigDict, SecretStr
from sqlalchemy.engine import make_url

from bgmock_twin.database_urls import resolve_database_url

MAX_AMOUNT = Decimal("1000000000000")
# Slices are built by field name (``Settings.slice``) and validate their defaults.
SLICE_CONFIG = ConfigDict(populate_by_name=True, validate_default=True)


def env(name: str) -> Any:
    """Field option binding a field to exactly one environment variable name."""
    return AliasChoices(name)


def http_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def bootstrap_servers(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port[,host:port...]")
    return value.strip()


def database_url(value: SecretStr | None) -> SecretStr | None:
    if value is None or value.get_secret_value() == "":
        return None
    # Kept as written (check-config shows it so); every engine resolves it the same way.
    resolve_database_url(value.get_secret_value())  # ValueError says why
    return value


def is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def mask_url(url: str) -> str:
    """A database URL safe to print: the password is replaced, the rest kept."""
    try:
        parsed = make_url(url)
    except Exception:
        return "**********"
    if parsed.password is None:
        return parsed.render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=True)
