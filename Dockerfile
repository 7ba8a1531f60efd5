# syntax=docker/dockerfile:1
#
# The bgmock-twin daemon as a container image.
#
#   docker build -t bgmock-twin:local .
#   docker run --rm --read-only --tmpfs /tmp -v twin-data:/data -p 127.0.0.1:8080:8080 \
#       -e TWIN_CONTROL_TOKEN=change-me bgmock-twin:local
#
# Two stages: `build` resolves the dependencies of pyproject.toml pinned by
# constraints.txt into a virtual environment; `runtime` copies only that
# environment onto a clean slim base, so no build tooling ships. The runtime runs
# as an unprivileged numeric user and writes only to /data (the twin's ledger) and
# /tmp, so it works with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: dependencies, then the package -----------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, in their own layer: a source change does not reinstall them.
# The list comes from pyproject.toml, every version from constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/venv/bin/pip install --constraint constraints.txt --requirement requirements.txt

COPY README.md ./
COPY bgmock_twin ./bgmock_twin
RUN /opt/venv/bin/pip install --no-deps --constraint constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# --- runtime ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG PYTHON_IMAGE

LABEL org.opencontainers.image.title="bgmock-twin" \
      org.opencontainers.image.description="Digital twin of the BGMock interbank payment system: probes, synthetic payments, lifecycle tracking, reconciliation, Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/bgmock/bgmock-twin" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric uid/gid so Kubernetes can verify runAsNonRoot; /data is the only
# directory the daemon writes besides /tmp.
RUN groupadd --system --gid 10001 twin \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin twin \
    && mkdir -p /data /app \
    && chown 10001:10001 /data \
    && chmod 0750 /data

COPY --from=build /opt/venv /opt/venv

# Listening beyond loopback is the point of a container, and the daemon then
# insists on TWIN_CONTROL_TOKEN (or TWIN_ALLOW_UNAUTHENTICATED=true).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TWIN_LISTEN_HOST=0.0.0.0 \
    TWIN_LISTEN_PORT=8080 \
    TWIN_LOG_FORMAT=json \
    TWIN_DATABASE_URL=sqlite:////data/twin.db

# An empty, root-owned working directory: no stray .env can be read from it.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TWIN_LISTEN_PORT', '8080') + '/healthz', timeout=4)"]

# Exec form: the daemon is PID 1 and receives SIGTERM itself, then drains within
# TWIN_SHUTDOWN_GRACE_SECONDS. `docker run IMAGE check-config` runs another command.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bgmock-twin"]
CMD ["run"]
