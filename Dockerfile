# kvstore storage node (and, from the same image, Debian's etcd and the pod load generator).
#
#   docker build -t kvstore .            # or: podman build -t kvstore .
#   docker compose up                    # etcd + three nodes + a load generator (docker-compose.yml)
#
# io_uring: Docker's default seccomp profile blocks io_uring_setup/enter (and so does podman's on
# most distributions). With `--device auto` (the default) the node probes io_uring at start, falls
# back to the POSIX device (O_DIRECT pread/pwrite on threads) and logs which one it chose; blocks
# and their format are the same either way. To grant io_uring, run the node container with
# `security_opt: ["seccomp=unconfined"]` (or a profile that allows io_uring_setup,
# io_uring_enter and io_uring_register) and, for registered buffers, a memlock ulimit that fits
# them; `--device uring` then refuses to start rather than fall back.
#
# The base image is plain Debian bookworm; where no image registry is reachable, build a local
# base from Debian packages (e.g. mmdebstrap with the host's apt sources, then `podman import`)
# and tag it debian:bookworm-slim (deploy/build-base-image.sh; `make compose-test` runs it).
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title=kvstore

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-dev gcc \
        etcd-server ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/kvstore
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY native ./native
COPY kvstore ./kvstore
COPY loadtest ./loadtest
COPY deploy ./deploy
# The server with boto3 (the load generator's S3 client) from the test extra. Hosts that reach
# PyPI only through a mirror or a TLS-intercepting proxy pass their pip settings in:
#   --build-arg PIP_INDEX_URL=... --build-arg PIP_EXTRA_INDEX_URL=...
#   --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt   (the CA bundle pip trusts)
# (deploy/compose-test.sh does this from the host's own pip configuration).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --upgrade pip \
 && /opt/venv/bin/pip install -q './clients' '.[test]'
ENV PATH=/opt/venv/bin:$PATH

# HTTP (S3 API and /v1) and bulk ports.
EXPOSE 8700 8701
VOLUME ["/data"]
ENTRYPOINT ["kvstore"]
CMD ["serve", "--host", "0.0.0.0", "--data-dir", "/data", \
     "--credentials", "/opt/kvstore/deploy/pod-credentials.json"]
