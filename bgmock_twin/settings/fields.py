"""What every settings slice shares: binding a field to one environment variable,
the validators of values that several slices hold (URLs, bootstrap servers,
database URLs), and printing a database URL without its password."""

from __future__ import annotations

import math
import re
import types
from decimal import Decimal
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AliasChoices, ConfigDict, SecretStr
from sqlalchemy.engine import make_url

from bgmock_twin.database_urls import resolve_database_url

MAX_AMOUNT = Decimal("1000000000000")
# Slices are built by field name (``Settings.slice``) and validate their defaults.
SLICE_CONFIG = ConfigDict(populate_by_name=True, validate_default=True)


def env(name: str) -> Any:
    """Field option binding a field to exactly one environment variable name."""
    return AliasChoices(name)


_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_PLAIN_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_PLAIN_FLOAT = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_PLAIN = {int: (_PLAIN_INTEGER, "a whole number in ASCII digits"),
          Decimal: (_PLAIN_DECIMAL, "a decimal number in ASCII digits such as 12.50"),
          float: (_PLAIN_FLOAT, "a number in ASCII digits")}


def numeric_kind(annotation: Any) -> type | None:
    """``int``, ``float`` or ``Decimal`` when a field holds that number (optional or
    constrained), else None. ``bool`` is not a number here."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return numeric_kind(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        kinds = [k for k in map(numeric_kind, get_args(annotation)) if k is not None]
        return kinds[0] if kinds else None
    return annotation if annotation in _PLAIN else None


def plain_number(value: Any, kind: type) -> Any:
    """Refuse what Python would parse but nobody means as a number: ``true``, Unicode
    digits (``"١٢٣"``, ``"\uff15"``) and digit separators (``"1_000"``). Others pass on
    to the field's own validation."""
    if isinstance(value, bool):
        raise ValueError(f"must be {_PLAIN[kind][1]}, not true or false")
    if isinstance(value, str):
        pattern, what = _PLAIN[kind]
        text = value.strip()
        if not pattern.fullmatch(text) and text.lower() not in {"inf", "-inf", "nan"}:
            raise ValueError(f"must be {what}")
    if kind is not float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def http_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]", re.ASCII)


def bootstrap_servers(value: str | None) -> str | None:
    """``host:port[,host:port...]``, nothing else: no scheme (``PLAINTEXT://``), no
    credentials, no blanks inside an entry, ASCII digits only; a Kafka client would
    otherwise fail late, or quietly try another host."""
    if value is None or value.strip() == "":
        return None
    for server in value.strip().split(","):
        host, sep, port = server.strip().rpartition(":")
        if "://" in server or "@" in server:
            raise ValueError("must be host:port[,host:port...] without a scheme or "
                             "credentials (set those in the Kafka client's own settings)")
        if not sep or not _HOST.fullmatch(host) or not _PLAIN_INTEGER.fullmatch(port) \
                or port.startswith(("+", "-")) or not 0 < int(port) < 65536:
            raise ValueError("must be host:port[,host:port...]: ASCII host names or "
                             "addresses, ports 1-65535, no blanks inside an entry")
    return ",".join(server.strip() for server in value.strip().split(","))


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
