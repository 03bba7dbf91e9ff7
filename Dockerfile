# syntax=docker/dockerfile:1
# TaskFlow API / projector image.
#
#   docker build -t taskflow .
#   docker run --env-file deploy/taskflow.env -p 8080:8080 taskflow                   # API
#   docker run --env-file deploy/taskflow.env taskflow taskflow project               # projector
#
# Stage 1 builds the project wheel and installs it with its dependencies into a virtualenv;
# stage 2 copies only that virtualenv onto a clean python:3.11-slim. Both stages use the same
# base image, so the venv's interpreter path (/usr/local/bin/python3.11) is valid in both.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the build needs (.dockerignore keeps everything else, secrets included, out).
COPY pyproject.toml README.md ./
COPY taskflow ./taskflow
RUN python -m pip wheel --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --find-links /wheels taskflow \
 && /opt/venv/bin/python -c "import taskflow.cli"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="taskflow" \
      org.opencontainers.image.description="Async event-sourced task backend (API and projector)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
RUN groupadd --system --gid 10001 taskflow \
 && useradd --system --uid 10001 --gid taskflow --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin taskflow
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER taskflow:taskflow
# 8080: API (HTTP_PORT); 9100: projector metrics (METRICS_PORT, set by whoever runs `taskflow project`).
EXPOSE 8080 9100
# Liveness via the standard library: slim images have no curl. urlopen raises (exit 1) on
# connection errors and on any non-2xx status.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/api/health', timeout=2)" || exit 1
# aiohttp's run_app turns SIGTERM into a graceful shutdown.
STOPSIGNAL SIGTERM
CMD ["taskflow", "serve"]
