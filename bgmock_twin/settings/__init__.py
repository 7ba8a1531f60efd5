"""Every setting of the daemon: one typed slice per component, composed in one place.

The seed simulator's variable names (``KAFKA_BOOTSTRAP_SERVERS``, ``BANK_A_URL``,
``DB_BANK_A`` ...) are kept so existing ``.env`` files work; everything the twin
adds is prefixed ``TWIN_``. Database URLs and the control token are ``SecretStr``
so that no log line, status answer or ``check-config`` output can show them.

- ``fields``: binding a field to its variable, shared validators, ``mask_url``;
- ``bus``, ``databases``, ``endpoints``, ``logs``: what the wiring needs;
- ``api``, ``probes``, ``tracking``, ``books``, ``emulator``: the components' slices;
- ``composed``: ``Settings`` (all of them, from the environment) and ``load_settings``.
"""

from bgmock_twin.settings.api import MIN_CONTROL_TOKEN_LENGTH, ApiSettings
from bgmock_twin.settings.books import (
    DEFAULT_BANK_GROUPS,
    DEFAULT_CLEARING_GROUPS,
    BooksSettings,
    ReconcileSettings,
    SloSettings,
)
from bgmock_twin.settings.bus import BusSettings, InstanceSettings
from bgmock_twin.settings.composed import Settings, SettingsError, env_name, load_settings
from bgmock_twin.settings.databases import DatabaseSettings, StatementSettings
from bgmock_twin.settings.emulator import EmulatorSettings
from bgmock_twin.settings.endpoints import EndpointSettings, Mode
from bgmock_twin.settings.fields import MAX_AMOUNT, mask_url
from bgmock_twin.settings.fleet import FleetMode, FleetSettings
from bgmock_twin.settings.logs import LogFormat, LoggingSettings
from bgmock_twin.settings.probes import ProbeSettings, RestSettings
from bgmock_twin.settings.tracking import (
    DeadlineSettings,
    LedgerSettings,
    LoadSettings,
    TrackingSettings,
)

__all__ = [
    "DEFAULT_BANK_GROUPS",
    "DEFAULT_CLEARING_GROUPS",
    "MAX_AMOUNT",
    "MIN_CONTROL_TOKEN_LENGTH",
    "ApiSettings",
    "BooksSettings",
    "BusSettings",
    "DatabaseSettings",
    "DeadlineSettings",
    "EmulatorSettings",
    "EndpointSettings",
    "FleetMode",
    "FleetSettings",
    "InstanceSettings",
    "LedgerSettings",
    "LoadSettings",
    "LogFormat",
    "LoggingSettings",
    "Mode",
    "ProbeSettings",
    "ReconcileSettings",
    "RestSettings",
    "Settings",
    "SettingsError",
    "SloSettings",
    "StatementSettings",
    "TrackingSettings",
    "env_name",
    "load_settings",
    "mask_url",
]
