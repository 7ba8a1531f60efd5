"""Dashboards as code for bgmock-twin.

``grafana/build.py`` is the source of the provisioned dashboards; the JSON under
``grafana/dashboards/`` is generated from it and committed (a test fails when the
two differ). ``grafana/queries.py`` reads the committed JSON back (every panel
query, with Grafana's variables substituted) for the data test and the renderer;
``grafana/render.py`` draws each dashboard from a Prometheus to PNG.
"""
