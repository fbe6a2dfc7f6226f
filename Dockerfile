# syntax=docker/dockerfile:1.7
# marketpulse: one image for every service. Run one service per container:
#   docker run ghcr.io/marketpulse/marketpulse:0.1.0 services.ticker
# (the entrypoint is `python -m`; services: ticker, market_sync, whale_sync, stats, janitor).
#
# Two stages: `build` resolves the locked dependencies with uv (cached in its own layer,
# rebuilt only when uv.lock or pyproject.toml change), then installs our package;
# `runtime` gets only the virtual environment: no uv, no compilers, no sources.

# Pinned by exact version; pin by digest too when the registry is reachable
# (docker buildx imagetools inspect python:3.11.14-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode is compiled at build time because the runtime root filesystem is read-only.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies only (no project sources yet), exactly as locked.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
COPY pyproject.toml uv.lock README.md ./
COPY shared ./shared
COPY services ./services
# Install our package into site-packages (not editable): the runtime stage needs no sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="marketpulse" \
      org.opencontainers.image.description="Jobs that keep a prediction-market database fresh (NATS JetStream + MongoDB)" \
      org.opencontainers.image.source="https://github.com/marketpulse/marketpulse"
RUN groupadd --system --gid 10001 pulse \
 && useradd --system --uid 10001 --gid pulse --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pulse
COPY --from=build /app/.venv /app/.venv
# HOME=/tmp: the only writable place when the root filesystem is read-only.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PULSE_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["python", "-m"]
