# syntax=docker/dockerfile:1
# The ccsync image: one image, two roles (`ccsync worker`, `ccsync sandbox`), see docker-compose.yml.
#
# The sandbox (worker/sandbox, a few modules and CloudCockpit's OpenAPI description) stays in the
# production image, where it is harmless: it serves only when a container is started as
# `ccsync sandbox`, no other command loads it but `ccsync demo` (tests/unit/test_packaging.py),
# and the worker calls whatever CLOUDCOCKPIT_BASE_URL names, never the sandbox by itself.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Wheels of every dependency, as locked in requirements/runtime.txt (`make lock`): pinned, each
# file checked against its hash; wheels only, so nothing is compiled and the runtime stage's hash
# check sees the very files the lock names.
COPY requirements/runtime.txt ./requirements/
RUN pip download --no-cache-dir --require-hashes --only-binary=:all: --dest /wheels \
        -r requirements/runtime.txt
# And the wheel of ccsync itself, without its dependencies (they are the locked ones above).
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# Open Containers labels; the version is `ccsync --version` in the image (pyproject.toml's).
LABEL org.opencontainers.image.title="ccsync" \
      org.opencontainers.image.description="Customer internal identifier events from RabbitMQ to CloudCockpit" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# CCSYNC_METRICS_PORT: the worker serves /metrics, /livez and /readyz there (the HEALTHCHECK's).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CCSYNC_METRICS_PORT=9100
# The runtime stage installs them without the network, and gets the package, not the source tree.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/requirements,target=/requirements \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes \
        -r /requirements/runtime.txt \
 && pip install --no-cache-dir --no-index --find-links=/wheels --no-deps ccsync \
 && useradd --system --uid 10001 --user-group --no-create-home ccsync
# Celery warns about, and a compromised dependency would enjoy, a worker running as root.
USER ccsync
# CCSYNC_METRICS_PORT: Prometheus metrics of the worker (with CCSYNC_METRICS_HOST=0.0.0.0 to be
# reached from outside the container; loopback by default).
EXPOSE 9100
# Liveness of the worker (its event loop runs), not readiness: an API outage must not mark it for
# a restart. Another role (the sandbox in docker-compose.yml) brings its own check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ['CCSYNC_METRICS_PORT'], timeout=3)"]
# `ccsync worker` runs one worker process per core the container may use (its cpuset), under one
# parent that serves CCSYNC_METRICS_PORT for all; `--processes N` chooses (docs/operations.md).
ENTRYPOINT ["ccsync"]
CMD ["worker"]
