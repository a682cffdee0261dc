#!/usr/bin/env bash
# Builds the local Python base image from Debian packages (no registry needed) and prints its tag.
# The tag is a hash of the inputs below, so an existing image is reused. Usage:
#   hack/build-base-image.sh            # prints e.g. modelship-base:3f2a...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=hack/docker-env.sh
source "$here/docker-env.sh"

SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
key="$(printf 'v1 %s %s %s minbase' "$SUITE" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-12)"
tag="modelship-base:$key"

# Image builds may run side by side (CI builds the converter images in the background): one
# dockerd start and one debootstrap at a time, the others wait and reuse the image.
mkdir -p "$root/.cache"
exec 6>"$root/.cache/base-image.lock"
flock -n 6 || { echo "==> another build of the base image is running; waiting for it" >&2; flock 6; }
ensure_packages >&2
ensure_dockerd >&2
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "==> base image $tag is cached" >&2
  echo "$tag"
  exit 0
fi
cache="$root/.cache/base-image"
rootfs="$cache/rootfs-$key"
mkdir -p "$cache"
if [[ ! -f "$rootfs/.complete" ]]; then
  rm -rf "$rootfs"
  echo "==> debootstrap $SUITE (minbase + $INCLUDE), about a minute" >&2
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
    | sed -u 's/^/    /' | grep -E '^    I: (Retrieving|Validating|Extracting|Installing|Configuring|Base system)' \
    | awk 'NR % 20 == 1 || /Base system/' >&2 || true
  [[ -x "$rootfs/usr/bin/python3" ]] || { echo "debootstrap failed (no python3 in rootfs)" >&2; exit 1; }
  # Trim what a container never needs: apt lists, docs, man pages, locales.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/archives/*.deb
  touch "$rootfs/.complete"
fi
echo "==> docker import -> $tag" >&2
tar -C "$rootfs" --exclude=./.complete -c . | docker import -c 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "$tag"
