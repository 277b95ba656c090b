# keyrotor operator image: Debian 12 (bookworm) and its Python 3.11, the operator in a venv.
#
#   podman build -t keyrotor:0.1.0 .        (or: docker build -t keyrotor:0.1.0 .)
#
# Without a registry (as in the tests), keyrotor.testing.image first makes the base image from
# Debian's packages with mmdebstrap and imports it under the exact name both FROM lines use.
# The final stage has the Python runtime and the venv only: no compiler, no pip, no setuptools.
# It runs as 65532:65532 and writes nothing outside /tmp, so it works with readOnlyRootFilesystem
# and an emptyDir on /tmp.

FROM docker.io/library/debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change in the code reuses this layer.
COPY pyproject.toml ./
# pip trusts the CA bundle given as build secret "ca-certificates", when there is one (a proxy
# that intercepts TLS): podman build --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY operator ./operator
# The package itself, then pip and setuptools leave the venv (pip removes itself last), and so
# does kubernetes.aio, an asyncio copy of the whole client (68 MB) that nothing imports: kopf
# talks to the API server with aiohttp, keyrotor with kubernetes.client.
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /src \
 && /opt/venv/bin/pip uninstall -y setuptools \
 && /opt/venv/bin/python -m pip uninstall -y pip \
 && rm -rf /opt/venv/lib/python3.11/site-packages/kubernetes/aio \
 && /opt/venv/bin/keyrotor --help > /dev/null

FROM docker.io/library/debian:bookworm-slim
ARG VERSION=0.1.0
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="keyrotor" \
      org.opencontainers.image.description="A Kubernetes operator that rotates secrets and keys with zero downtime" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# The Python runtime only (no -dev, no compiler, no pip); ensurepip goes too. User 65532 gets a
# name so that tools asking "who am I" have an answer; its home is /tmp, the one writable place.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt/* \
    /var/log/dpkg.log /usr/lib/python3.11/ensurepip \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin \
    nonroot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["keyrotor"]
CMD ["run"]
