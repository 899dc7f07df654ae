#!/usr/bin/env bash
# Build the minimal Debian image the container tests run: localhost/andon-test:bookworm.
#
# debootstrap --variant=minbase into build/rootfs from the same mirror apt uses here, then
# `podman import`. Idempotent: does nothing when the image already exists, and reuses a
# finished rootfs (build/rootfs.done) when only the import is missing. Needs root.
set -euo pipefail

IMAGE="${ANDON_TEST_IMAGE:-localhost/andon-test:bookworm}"
SUITE=bookworm
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS="$ROOT/build/rootfs"
STAMP="$ROOT/build/rootfs.done"

if podman image exists "$IMAGE"; then
    echo "build-test-image: $IMAGE already exists"
    exit 0
fi

# The mirror: the first deb822 source whose Suites include bookworm, else a one-line source.
mirror=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror="$(awk '
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "'"$SUITE"'") { print uri; exit } }
        /^$/ { uri = "" }' /etc/apt/sources.list.d/debian.sources)"
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
    mirror="$(awk '$1 == "deb" && $3 == "'"$SUITE"'" { print $2; exit }' /etc/apt/sources.list)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

if [ ! -e "$STAMP" ]; then
    # a rootfs without the stamp is a half-finished run: start over
    rm -rf "$ROOTFS"
    mkdir -p "$ROOT/build"
    echo "build-test-image: debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$mirror"
    touch "$STAMP"
fi

echo "build-test-image: importing $ROOTFS as $IMAGE"
tar -C "$ROOTFS" --numeric-owner -cf - . | podman import --change 'CMD ["/bin/sh"]' - "$IMAGE"
podman image exists "$IMAGE"
echo "build-test-image: $IMAGE ready"
