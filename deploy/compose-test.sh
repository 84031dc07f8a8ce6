#!/bin/sh
# `make compose-test`: the real docker-compose.yml under podman-compose, checked end to end.
#
# On a host with Debian's podman but no Docker engine and no reachable image registry:
#   1. installs podman, podman-compose, runc, mmdebstrap, iptables, netavark and aardvark-dns
#      with apt when missing (needs root, as CI runs);
#   2. builds the base image from Debian packages (deploy/build-base-image.sh; kept between runs);
#   3. builds the kvstore image from the Dockerfile (layers cached between runs), passing the
#      host's pip index settings and CA bundle in;
#   4. brings the pod up (etcd, three nodes, the load generator) with `--runtime runc` (the
#      compose file already sets nofile/nproc ulimits to 4096);
#   5. checks it: every node ready on 127.0.0.1; a bucket created through node1 is seen through
#      the others; blocks PUT and GET through each node (and GET through another: byte-exact or a
#      404 miss, never wrong bytes); `kvstore pod status` lists three live nodes; the load
#      generator finishes with 0 mismatches;
#   6. takes the pod down (always, also on failure) and prints how long it all took.
set -eu

cd "$(dirname "$0")/.."
PROJECT="${KVSTORE_COMPOSE_PROJECT:-kvstorect}"
LOADGEN_SECONDS="${KVSTORE_LOADGEN_SECONDS:-5}"
READY_WAIT_S=120
START="$(date +%s)"

say() { echo "compose-test: $*"; }
elapsed() { echo "$(( $(date +%s) - START ))s"; }

if [ "$(id -u)" != 0 ]; then
    say "needs root (rootful podman, apt, mmdebstrap); run it as root or with sudo"
    exit 2
fi

# 1. Tools.
missing=""
for pair in podman:podman podman-compose:podman-compose runc:runc mmdebstrap:mmdebstrap \
            iptables:iptables curl:curl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
[ -x /usr/lib/podman/netavark ] || missing="$missing netavark"
[ -x /usr/lib/podman/aardvark-dns ] || missing="$missing aardvark-dns"
if [ -n "$missing" ]; then
    say "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; }
fi

PODMAN="podman --runtime runc"
COMPOSE="podman-compose --podman-args=--runtime=runc -p $PROJECT -f docker-compose.yml"

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    say "taking the pod down"
    if [ "$rc" != 0 ]; then
        for c in etcd node1 node2 node3 loadgen; do
            echo "---- ${PROJECT}_${c}_1 (last lines)"
            podman logs --tail 25 "${PROJECT}_${c}_1" 2>&1 || true
        done
    fi
    # podman-compose 1.0 would leave the anonymous volumes (the image's VOLUME, in the etcd and
    # loadgen containers) and the network: remove the containers with their volumes first.
    ids="$(podman ps -a -q --filter "label=io.podman.compose.project=$PROJECT")"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || podman rm -f -v $ids >/dev/null 2>&1 || true
    $COMPOSE down -v >/dev/null 2>&1 || true
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    if [ "$rc" = 0 ]; then
        say "PASSED in $(elapsed)"
    else
        say "FAILED (exit $rc) after $(elapsed)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A pod left over from an interrupted run would hold the ports.
$COMPOSE down -v >/dev/null 2>&1 || true
podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true

# 2. Base image.
deploy/build-base-image.sh

# 3. The kvstore image, with the host's pip settings: http(s) indexes (file:// ones are host
# paths, not reachable from the build) and the CA bundle pip trusts (as a build secret).
pip_get() {
    v="$(printenv "$2" 2>/dev/null || true)"
    if [ -z "$v" ] && command -v pip3 >/dev/null 2>&1; then
        v="$(pip3 config get "global.$1" 2>/dev/null || true)"
    fi
    echo "$v"
}
only_http() { for u in $1; do case "$u" in http://*|https://*) printf '%s ' "$u";; esac; done; }
index="$(only_http "$(pip_get index-url PIP_INDEX_URL)")"
extra="$(only_http "$(pip_get extra-index-url PIP_EXTRA_INDEX_URL)")"
cert="$(pip_get cert PIP_CERT)"
[ -n "$cert" ] || cert=/etc/ssl/certs/ca-certificates.crt
set -- --pull=never --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -t kvstore:latest
[ -z "$index" ] || set -- "$@" --build-arg "PIP_INDEX_URL=${index% }"
[ -z "$extra" ] || set -- "$@" --build-arg "PIP_EXTRA_INDEX_URL=${extra% }"
[ ! -s "$cert" ] || set -- "$@" --secret "id=pip_cert,src=$cert"
say "building kvstore:latest (pip index: ${index:-default}${extra:+, extra: $extra})"
$PODMAN build -q "$@" . >/dev/null
# The kvstore images that earlier builds left untagged (the layer cache stays: it is referenced).
podman image prune -f --filter label=org.opencontainers.image.title=kvstore >/dev/null 2>&1 || true
say "images ready after $(elapsed)"

# 4. The pod.
say "bringing the pod up (project $PROJECT, load generator for ${LOADGEN_SECONDS}s)"
uplog="$(mktemp)"
if ! KVSTORE_LOADGEN_SECONDS="$LOADGEN_SECONDS" $COMPOSE up -d > "$uplog" 2>&1; then
    tail -n 30 "$uplog"; rm -f "$uplog"; say "podman-compose up failed"; exit 1
fi
rm -f "$uplog"

# 5. The checks. Every node answers on its 127.0.0.1 port from the host...
for port in 8711 8712 8713; do
    t=0
    until curl -fsS -m 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
        t=$((t + 1))
        if [ "$t" -gt "$READY_WAIT_S" ]; then say "node on 127.0.0.1:$port not ready"; exit 1; fi
        sleep 1
    done
    say "ready: http://127.0.0.1:$port"
done
# ... and S3 through the compose network, from inside the pod (the image has boto3).
creds="-e AWS_ACCESS_KEY_ID=demo-access-key -e AWS_SECRET_ACCESS_KEY=demo-secret-key-change-me"
# shellcheck disable=SC2086
podman exec $creds -e AWS_EC2_METADATA_DISABLED=true "${PROJECT}_node1_1" \
    python3 /opt/kvstore/loadtest/pod_check.py \
    --nodes http://node1:8700,http://node2:8700,http://node3:8700
# `kvstore pod status` from a container: three nodes registered under live etcd leases, each
# reachable (its /metrics answers).
podman exec "${PROJECT}_node2_1" kvstore pod status --etcd http://etcd:2379 --pod compose \
    | sed 's/^/  /'
live="$(podman exec "${PROJECT}_node2_1" sh -c 'kvstore pod status --etcd http://etcd:2379 \
        --pod compose --json | python3 -c "import json,sys; print(sum(n[\"reachable\"] for n in json.load(sys.stdin)[\"nodes\"]))"')"
[ "$live" = 3 ] || { say "pod status lists $live registered and reachable node(s), not 3"; exit 1; }
say "pod status lists 3 registered and reachable nodes"
# The load generator (PUT and GET through every node) must finish cleanly.
lg_rc="$(timeout $((LOADGEN_SECONDS + READY_WAIT_S)) podman wait "${PROJECT}_loadgen_1")"
podman logs "${PROJECT}_loadgen_1" 2>&1 | sed 's/^/  /'
[ "$lg_rc" = 0 ] || { say "load generator exited $lg_rc"; exit 1; }
say "load generator passed"
