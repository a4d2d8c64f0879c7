# syntax=docker/dockerfile:1
# The ccsync image: one image, two roles (`ccsync worker`, `ccsync sandbox`), see docker-compose.yml.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
# Wheels of ccsync and every dependency: the runtime stage installs them without the network,
# and gets the package, not the source tree.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels ccsync \
 && useradd --system --uid 10001 --user-group --no-create-home ccsync
# Celery warns about, and a compromised dependency would enjoy, a worker running as root.
USER ccsync
# CCSYNC_METRICS_PORT: Prometheus metrics of the worker.
EXPOSE 9100
ENTRYPOINT ["ccsync"]
CMD ["worker"]
