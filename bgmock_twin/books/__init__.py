"""The twin of the books: what the balances should be, and whether reality agrees.

- ``model``: expected balance and reserved balance of every twin account, as ranges
  that account for payments still in flight (pure);
- ``readings``, ``results``, ``checks``: what the checks read, what they say, and
  the invariants as pure functions returning violations with evidence;
- ``sources`` (the twin's ledger), ``rest`` and ``sql`` (BGMock's API and
  databases): read-only readers of the real state;
- ``reads``, ``journal``, ``snapshot_checks``, ``report``, ``reconcile``: one
  reconciliation run with time-boxed reads;
- ``lag``, ``lag_window``, ``lag_sources``: consumer-group lag of BGMock's and the
  twin's groups, each group's Burrow-style status over a window of readings and the
  age of its oldest unconsumed event (pure), read from the bus or from Kafka;
- ``service``: ``Books``, the component the daemon wires in (its routes are in
  ``api.books_routes``).
"""
