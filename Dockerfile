# One image for every weft service: weft-api, weft-executor and weft-tracer (the Helm chart
# picks the command). Build from the repository root:
#   docker build -t weft:0.1.0 .

# -- build: wheels of the SDK, the services and all their dependencies --------------------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY requirements-dev.txt ./
# The pins weft is tested with, minus the editable local packages (not valid in a constraints file).
RUN grep -E '^[A-Za-z0-9_.-]+==' requirements-dev.txt > constraints.txt
COPY sdk/python sdk/python
COPY services services
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt \
      ./sdk/python ./services/core ./services/api ./services/executor ./services/tracer

# -- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The chart runs every pod as 10001 with a read-only root filesystem; the blob store is a
# volume mounted over /var/lib/weft/blobs.
RUN groupadd --gid 10001 weft \
 && useradd --uid 10001 --gid 10001 --home-dir /home/weft --create-home --shell /usr/sbin/nologin weft \
 && mkdir -p /var/lib/weft/blobs \
 && chown -R weft:weft /var/lib/weft
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels \
      weft weft-core weft-api weft-executor weft-tracer \
 && rm -rf /wheels
USER 10001:10001
WORKDIR /home/weft
# weft-api/weft-executor/weft-tracer are console scripts; `python -m weft_core.healthcheck`
# is the gRPC health probe for clusters older than 1.24.
EXPOSE 50051 50052 4317
CMD ["weft-api", "--help"]
