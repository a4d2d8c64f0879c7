# syntax=docker/dockerfile:1
# The ccsync image: one image, two roles (`ccsync worker`, `ccsync sandbox`), see docker-compose.yml.

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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
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
ENTRYPOINT ["ccsync"]
CMD ["worker"]
