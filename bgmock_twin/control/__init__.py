"""The client commands: ``simulate``, ``status`` and ``simulations``.

A client of the control API and its rendering. It talks JSON over HTTP and imports
nothing from the daemon's packages (settings, domain, api): it runs against any
twin it can reach, without that twin's settings, and sits at the top next to
``cli.py``.
"""
