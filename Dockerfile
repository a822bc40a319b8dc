# syntax=docker/dockerfile:1
#
# Two images from one file, chosen with the VARIANT build argument:
#   docker build -t lungsound-ssl:cpu .                              # CPU (default)
#   docker build --build-arg VARIANT=cuda -t lungsound-ssl:cuda .    # NVIDIA GPUs
# Both install through scripts/setup_env.sh, the install step that the README
# and CI use, under the pinned versions in requirements/constraints.txt. The
# default command runs the test suite.

ARG VARIANT=cpu

# CPU: Debian with Python 3.11, and the CPU build of torch from PyTorch's CPU
# wheel index (PyPI's Linux torch wheel is a CUDA build with several GB of
# CUDA libraries).
FROM python:3.11-slim AS base-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libsndfile1 is a fallback: the soundfile wheels for x86_64 and aarch64
# bundle libsndfile, and soundfile only loads the system library when the
# bundled one is missing. Debian packages are not pinned (DL3008) because the
# archive drops old versions; the Python packages are the pinned ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_SPEC="torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu"

# CUDA: PyPI's torch 2.13.0 for Linux x86_64 is built for CUDA 13.0 and brings
# its CUDA libraries as nvidia-* wheels. The base image matches that CUDA
# version, and the host driver must support CUDA 13.0. Ubuntu 24.04 ships
# Python 3.12, which requirements/constraints.txt also covers.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS base-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_SPEC="torch==2.13.0"

# base-cpu and base-cuda are the stages above, not images to tag (DL3006).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS final
# .dockerignore keeps .git out of the image, so each run's run_info.json takes
# the commit from this build argument:
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" ...
ARG GIT_COMMIT=""
ENV LUNGSOUND_GIT_COMMIT=${GIT_COMMIT} \
    LUNGSOUND_VENV=/opt/venv \
    LUNGSOUND_CONSTRAINTS=requirements/constraints.txt \
    PYTHONUNBUFFERED=1

WORKDIR /opt/lungsound-ssl
COPY . .
# LUNGSOUND_PIP_COMPILE=1 makes pip write the .pyc files now, once, instead
# of in every new container.
RUN LUNGSOUND_PIP_COMPILE=1 bash scripts/setup_env.sh \
    && rm -rf /root/.cache/pip

# Later setup_env.sh calls (from test.sh and demo.sh) find this environment
# active and up to date, so they need no network.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

CMD ["bash", "scripts/test.sh"]
