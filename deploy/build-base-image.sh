#!/bin/sh
# Build the Dockerfile's base image (debian:bookworm-slim) locally from Debian packages, for hosts
# that reach a Debian mirror but no image registry: mmdebstrap with the host's apt sources makes a
# minimal bookworm root filesystem, `podman import` turns it into an image under the name the
# Dockerfile starts FROM. Skipped when that image already exists (pass --force to rebuild).
#
#   deploy/build-base-image.sh [--force]        # needs root, mmdebstrap and podman
set -eu

IMAGE="${KVSTORE_BASE_IMAGE:-docker.io/library/debian:bookworm-slim}"
SUITE="${KVSTORE_BASE_SUITE:-bookworm}"

if [ "${1:-}" != "--force" ] && podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists (deploy/build-base-image.sh --force rebuilds it)"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM
# The host's own apt sources (deb822 and one-line), so whatever mirror or proxy the host uses
# serves the image too; mmdebstrap reads them when given "-" as the mirror.
sources="$work/sources.list"
: > "$sources"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && grep -E '^[[:space:]]*deb[[:space:]]' "$f" | grep -i debian >> "$sources" || true
done
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    # deb822 stanzas: keep only the Debian ones (plain deb URIs) as one-line entries.
    awk 'BEGIN{RS="";FS="\n"}
         { types=""; uris=""; suites=""; comps="";
           for (i=1;i<=NF;i++) { split($i,kv,": ");
             if (kv[1]=="Types") types=kv[2]; else if (kv[1]=="URIs") uris=kv[2];
             else if (kv[1]=="Suites") suites=kv[2]; else if (kv[1]=="Components") comps=kv[2]; }
           if (types ~ /deb/ && uris ~ /debian/) { n=split(suites,s," ");
             for (j=1;j<=n;j++) print "deb " uris " " s[j] " " comps } }' \
        /etc/apt/sources.list.d/*.sources >> "$sources"
fi
if [ ! -s "$sources" ]; then
    echo "deb http://deb.debian.org/debian $SUITE main" > "$sources"
fi
echo "base image from:"; sed 's/^/  /' "$sources"

mmdebstrap --variant=apt --format=tar --include=ca-certificates \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$work/rootfs.tar" - < "$sources"
podman import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$IMAGE"
echo "built base image $IMAGE"
