"""The twin of the books: what the balances should be, and whether reality agrees.

- ``model``: expected balance and reserved balance of every twin account, as ranges
  that account for payments still in flight (pure);
- ``checks``: the invariants, as pure functions returning violations with evidence;
- ``sources``: read-only readers of the real state (REST and SQL) and of the ledger;
- ``reconcile``: one reconciliation run with time-boxed reads;
- ``lag``: consumer-group lag of BGMock's and the twin's groups;
- ``service``: ``Books(twin)``, the component the daemon wires in.
"""
