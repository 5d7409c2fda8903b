# syntax=docker/dockerfile:1
# One image for every weft service: weft-api, weft-executor and weft-tracer (the Helm chart
# picks the command), and the helper containers of step pods. Build from the repository root
# with BuildKit (docker build) or buildah (both understand RUN --mount):
#   docker build -t weft:0.1.0 .
#
# Base images are taken by tag, because no registry is reachable where weft is developed
# to resolve a digest; a release build should pin them:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11-slim

# -- dependencies: wheels of everything weft needs, rebuilt only when a pin changes ---------------
FROM ${PYTHON_IMAGE} AS deps
WORKDIR /src
# The pip weft is tested with (requirements-dev.txt's tools pin the rest).
RUN pip install --no-cache-dir pip==26.3
COPY requirements-dev.txt scripts/third_party_requirements.py ./
COPY sdk/python/pyproject.toml sdk/python/
COPY services/core/pyproject.toml services/core/
COPY services/api/pyproject.toml services/api/
COPY services/executor/pyproject.toml services/executor/
COPY services/tracer/pyproject.toml services/tracer/
# The third-party requirements of weft's packages, at the versions weft is tested with
# (requirements-dev.txt's pins; editable local packages are not valid in a constraints file).
RUN grep -E '^[A-Za-z0-9_.-]+==' requirements-dev.txt > constraints.txt \
 && python third_party_requirements.py > requirements.txt
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt --requirement requirements.txt

# -- weft's own wheels: rebuilt on every source change, in seconds -------------------------------
FROM deps AS build
COPY sdk/python sdk/python
COPY services services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
      ./sdk/python ./services/core ./services/api ./services/executor ./services/tracer

# -- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="weft" \
      org.opencontainers.image.description="weft-api, weft-executor and weft-tracer: DAG pipelines on etcd and Kubernetes" \
      org.opencontainers.image.version="${VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The chart runs every pod as 10001 with a read-only root filesystem; the blob store is a
# volume mounted over /var/lib/weft/blobs.
RUN groupadd --gid 10001 weft \
 && useradd --uid 10001 --gid 10001 --home-dir /home/weft --create-home --shell /usr/sbin/nologin weft \
 && mkdir -p /var/lib/weft/blobs \
 && chown -R weft:weft /var/lib/weft
# The wheels are bind-mounted from the build stage, never copied: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels \
      weft weft-core weft-api weft-executor weft-tracer
USER 10001:10001
WORKDIR /home/weft
# weft-api/weft-executor/weft-tracer are console scripts; `python -m weft_core.healthcheck`
# is the gRPC health probe for clusters older than 1.24. 9090 serves Prometheus metrics.
EXPOSE 50051 50052 4317 9090
CMD ["weft-api", "--help"]
