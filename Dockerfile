# syntax=docker/dockerfile:1
# One image for every component; the command chooses it:
#   tenantry api | worker | beat | operator | migrate
# The build stage installs the project the way `make` does (a virtualenv, an upgraded pip,
# `pip install .`); the runtime stage copies that virtualenv onto a clean slim base, so no
# compiler, pip cache or source tree reaches the image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tenantry
ENV PATH=/opt/tenantry/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tenantry ./tenantry
RUN python -m pip install --quiet --upgrade pip \
 && python -m pip install --quiet .

FROM ${PYTHON_IMAGE} AS runtime
# The uid and gid are fixed: the chart's runAsUser / runAsGroup / fsGroup are the same numbers.
RUN groupadd --system --gid 10001 tenantry \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin tenantry
COPY --from=build /opt/tenantry /opt/tenantry
# The root filesystem is read-only in the cluster: no bytecode writes, HOME on the /tmp emptyDir.
ENV PATH=/opt/tenantry/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["tenantry"]
CMD ["--help"]
