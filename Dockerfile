# syntax=docker/dockerfile:1
# The syncar daemon. Build from the repository root:
#   docker build -t syncar:0.1.0 .
# Run beside an app, sharing the socket's directory (a volume) with it:
#   docker run -v syncar-sock:/run/syncar -e SYNCAR_BACKEND=redis://redis:6379 syncar:0.1.0
# deploy/compose and deploy/kubernetes show complete setups; docs/deploy.md explains them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: wheels for syncar and every dependency, installed into a venv ----
FROM ${PYTHON_IMAGE} AS build

# Compilers live only in this stage: they build a wheel for any dependency without a binary one
# for the target platform (hiredis, uvloop and orjson on less common architectures).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# Only what the wheel needs (see .dockerignore). The version comes from sidecar/__init__.py, so the
# package is needed before anything can be resolved: no separate dependency layer.
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar ./sidecar
COPY backends ./backends

# Extras installed with syncar: `otel` makes `--tracing` work (OpenTelemetry's SDK and OTLP/HTTP exporter, about
# 13 MB, never imported without --tracing). `--build-arg EXTRAS=` builds without them.
ARG EXTRAS=otel

# The dependency set is the one pyproject.toml declares, at the versions constraints.txt pins
# (scripts/lock writes it; CI tests the same pins); the venv is then installed from those wheels
# alone, so the venv holds exactly what was built here.
# Some wheels ship their extension modules with debug symbols (uvloop's: 13 MB, 1.6 MB stripped).
RUN pip wheel --wheel-dir /wheels --constraint constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && python -m venv /opt/syncar \
    && /opt/syncar/bin/pip install --no-index --find-links /wheels "syncar${EXTRAS:+[$EXTRAS]}" \
    && /opt/syncar/bin/pip uninstall -y pip setuptools \
    && find /opt/syncar -name '*.so' -exec strip --strip-unneeded {} + \
    && /opt/syncar/bin/syncar --version

# ---- runtime: the interpreter, the venv, a non-root user; no compilers, no pip ----
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="syncar" \
      org.opencontainers.image.description="Event-propagation sidecar: relays Feathers service events between app instances over Redis, RabbitMQ or NATS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# uid/gid 10001: the socket is created 0660 as this user, so an app container reaches it by
# running as this uid or with gid 10001 as a supplementary group. /run/syncar is created here,
# owned by that user, so a fresh named volume mounted on it inherits the ownership.
RUN groupadd --system --gid 10001 syncar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin syncar \
    && install -d -o 10001 -g 10001 -m 0770 /run/syncar

COPY --from=build /opt/syncar /opt/syncar

# SYNCAR_HTTP listens on every interface so that probes, healthchecks and Prometheus reach it
# from outside the container; `syncar health` asks 127.0.0.1 for it.
ENV PATH=/opt/syncar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYNCAR_SOCKET=/run/syncar/syncar.sock \
    SYNCAR_HTTP=0.0.0.0:9464

USER 10001:10001
VOLUME ["/run/syncar"]
EXPOSE 9464

# Liveness only (the event loop answers): a broker outage must not mark the container unhealthy,
# since syncar keeps serving local apps and buffers publishes meanwhile.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["syncar", "health"]

# `docker stop` sends SIGTERM, then SIGKILL after its timeout (10 s unless told): syncar flushes
# within SYNCAR_SHUTDOWN_TIMEOUT (default 10 s), so give the container a longer stop timeout
# (`docker stop -t 15`, compose `stop_grace_period: 15s`) or a shorter SYNCAR_SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["syncar"]
CMD ["run"]
