"""``python -m bgmock_twin`` is the ``bgmock-twin`` command."""

from bgmock_twin.cli import main

raise SystemExit(main())
