"""One rule for the database URLs users write, so every engine gets a driver we ship.

The seed's `.env` and the Helm chart write `postgresql://user:pw@host/db`; SQLAlchemy 2.1
maps that form to psycopg 3, which the twin does not install. The design names
psycopg2-binary as the driver, so the plain forms (`postgresql://`, `postgres://`)
resolve to it here, once, for BGMock's databases, the emulator's and the ledger.
A URL naming a driver or backend the twin cannot use is refused when the settings
are read, never at the first query.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

POSTGRES_DRIVER = "psycopg2"
_POSTGRES_DRIVERS = (POSTGRES_DRIVER,)
_SQLITE_DRIVERS = ("pysqlite",)


class UnsupportedDatabaseURL(ValueError):
    """The URL cannot be used; the message says why without echoing the URL."""


def resolve_database_url(url: str | URL) -> URL:
    """The URL with its driver made explicit; ``UnsupportedDatabaseURL`` if unusable."""
    text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    if text.startswith(("postgres://", "postgres+")):  # Heroku's and libpq's spelling
        text = "postgresql" + text.removeprefix("postgres")
    try:
        parsed = make_url(text)
    except Exception:
        raise UnsupportedDatabaseURL(
            "must be a database URL such as postgresql://user:password@host:5432/db "
            "or sqlite:///path.db"
        ) from None
    # From the text, not get_driver_name(): that loads a dialect plugin and raises
    # for a name SQLAlchemy does not know.
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql":
        if not driver:
            return parsed.set(drivername=f"postgresql+{POSTGRES_DRIVER}")
        if driver not in _POSTGRES_DRIVERS:
            raise UnsupportedDatabaseURL(
                f"the PostgreSQL driver {driver!r} is not installed; write postgresql:// "
                f"(the twin uses {POSTGRES_DRIVER})"
            )
        return parsed
    if backend == "sqlite":
        if driver and driver not in _SQLITE_DRIVERS:
            raise UnsupportedDatabaseURL(
                f"the SQLite driver {driver!r} is not supported; write sqlite:///path.db"
            )
        return parsed
    raise UnsupportedDatabaseURL(
        f"the database backend {backend!r} is not supported; use postgresql:// or sqlite://"
    )
