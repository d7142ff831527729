# lesionsynth-training, GPU variant: the training-job service and its jobs (training on CUDA with torch 2.14.1,
# CUDA 13.0 build; onnxruntime-gpu for the export job). Run it with ONE BentoML worker (the default; it holds a
# lock on its job database): a single-replica Deployment. Kubernetes Jobs of the training service run this image.
#
#   docker buildx build -f deploy/docker/training.gpu.Dockerfile -t REGISTRY/lesionsynth-training:0.1.0-gpu .
#
# Build context = repo root (.dockerignore). Contract (paths, uid, env, ports): docs/deploy_conventions.md.
# Needs an NVIDIA driver that runs CUDA 13.0 (R580 or newer) and the NVIDIA container toolkit / device plugin.
#
# Base: the official CUDA 13.0.2 "base" image: CUDA 13.0 Update 2, the release of the nvidia-cuda-runtime
# 13.0.96 wheel that torch 2.14.1 pulls (via cuda-toolkit==13.0.3). "base" and not "cudnn-runtime": torch's
# wheels bring their own cuBLAS, cuDNN, NCCL, ... (nvidia-* packages in the requirements file); a
# cudnn-runtime base would hold a second ~3 GB copy of the same libraries.
# Python: Ubuntu 24.04 has no 3.11 package, so CPython 3.11.18 comes from python-build-standalone, installed
# by uv 0.13.9 (PyPI), which pins that build (release 20261110) and checks its sha256. The build is
# relocatable and needs only glibc, so the runtime stage installs no apt package.

# ---- builder: CPython + the locked environment in a venv at its final path (/app/.venv) -------------------
FROM python:3.11.18-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_NO_CONFIG=1
WORKDIR /src
RUN pip install uv==0.13.9 \
    && uv python install 3.11.18 --install-dir /opt/python --no-bin \
    && /opt/python/cpython-3.11.18-linux-x86_64-gnu/bin/python3.11 -m venv /app/.venv \
    && /app/.venv/bin/pip install pip==26.3
COPY deploy/docker/requirements/training-gpu.txt /tmp/requirements.txt
# The file is the whole environment (transitive pins included): --no-deps installs exactly it.
RUN /app/.venv/bin/pip install --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY lesionsynth ./lesionsynth
COPY models ./models
COPY services ./services
# The app itself, then `pip check`: every declared dependency of every package (the app's included) is
# satisfied by the pinned file.
RUN /app/.venv/bin/pip install --no-deps --no-build-isolation . \
    && /app/.venv/bin/pip check

# ---- runtime ----------------------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.2-base-ubuntu24.04
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.title="lesionsynth-training" \
      org.opencontainers.image.description="lesionsynth training-job service (BentoML REST :3002 + gRPC :50053), GPU: torch on CUDA 13.0" \
      org.opencontainers.image.version="${VERSION}-gpu" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="lesionsynth" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04"

RUN groupadd --system --gid 10001 lesionsynth \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin lesionsynth

# Read-only root filesystem: everything written at run time goes to /tmp (an emptyDir in Kubernetes,
# `--tmpfs /tmp` with docker run --read-only); torch's inductor/triton caches land there through HOME.
# No secret here: LESIONSYNTH_API_TOKEN comes from the Secret. NVIDIA_* come from the CUDA base image.
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
COPY --from=builder /opt/python /opt/python
COPY --from=builder /app/.venv /app/.venv
COPY proto ./proto
COPY lesionsynth ./lesionsynth
COPY models ./models
COPY services ./services
# Bytecode compiled at build time: nothing needs to be written next to the sources at run time.
RUN python -m compileall -q /app/models /app/services

USER 10001:10001
EXPOSE 3002 50053
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3002/livez', timeout=4).status != 200)"]
CMD ["bentoml", "serve", "services.training.service:TrainingService", "--host", "0.0.0.0", "--port", "3002"]
