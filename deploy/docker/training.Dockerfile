# lesionsynth-training, CPU variant: the training-job service (SQLite job store, one process per job, or
# Kubernetes Jobs running this same image) with the CPU build of torch (torch==2.14.1+cpu from the PyTorch
# CPU index) and onnxruntime for the export job. Run it with ONE BentoML worker (the default; it holds a lock
# on its job database): a single-replica Deployment.
#
#   docker buildx build -f deploy/docker/training.Dockerfile -t REGISTRY/lesionsynth-training:0.1.0 .
#
# Build context = repo root (.dockerignore). Contract (paths, uid, env, ports): docs/deploy_conventions.md.
# One Dockerfile per service and variant (not one file with a build ARG): the variants differ in base image,
# Python install and requirements file, and each file stays readable top to bottom.

# ---- builder: the locked environment in a venv at its final path (/app/.venv) ----------------------------
FROM python:3.11.18-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install pip==26.3
COPY deploy/docker/requirements/training-cpu.txt /tmp/requirements.txt
# The file is the whole environment (transitive pins included): --no-deps installs exactly it. Its first
# line adds the PyTorch CPU index, the only place the +cpu torch/torchvision wheels exist.
RUN /app/.venv/bin/pip install --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY lesionsynth ./lesionsynth
COPY models ./models
COPY services ./services
# The app itself, then `pip check`: every declared dependency of every package (the app's included) is
# satisfied by the pinned file (torch==2.14.1 is met by 2.14.1+cpu).
RUN /app/.venv/bin/pip install --no-deps --no-build-isolation . \
    && /app/.venv/bin/pip check

# ---- runtime ----------------------------------------------------------------------------------------------
FROM python:3.11.18-slim-bookworm
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="lesionsynth-training" \
      org.opencontainers.image.description="lesionsynth training-job service (BentoML REST :3002 + gRPC :50053), CPU: torch CPU build" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="lesionsynth" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.18-slim-bookworm"

RUN groupadd --system --gid 10001 lesionsynth \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin lesionsynth

# Read-only root filesystem: everything written at run time goes to /tmp (an emptyDir in Kubernetes,
# `--tmpfs /tmp` with docker run --read-only); torch's inductor cache lands there too.
# No secret here: LESIONSYNTH_API_TOKEN comes from the Secret.
ENV PATH=/app/.venv/bin:$PATH \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    MPLCONFIGDIR=/tmp/mpl \
    HF_HUB_OFFLINE=1 \
    LESIONSYNTH_HOST=0.0.0.0 \
    LESIONSYNTH_GRPC_PORT=50053 \
    LESIONSYNTH_MODEL_STORE=/data/model-store \
    LESIONSYNTH_JOBS_DIR=/data/jobs \
    LESIONSYNTH_DATA_ROOTS=/data/datasets:/data/outputs \
    LESIONSYNTH_OUTPUT_ROOT=/data/outputs

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY proto ./proto
COPY lesionsynth ./lesionsynth
COPY models ./models
COPY services ./services
# Bytecode compiled at build time: nothing needs to be written next to the sources at run time.
RUN python -m compileall -q /app/models /app/services

USER 10001:10001
EXPOSE 3002 50053
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3002/livez', timeout=4).status != 200)"]
CMD ["bentoml", "serve", "services.training.service:TrainingService", "--host", "0.0.0.0", "--port", "3002"]
