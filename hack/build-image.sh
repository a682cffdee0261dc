#!/usr/bin/env bash
# Builds a project image here, offline apart from PyPI on the host. Usage:
#   hack/build-image.sh runtime [tag]      # default tag modelship-runtime:dev
#   hack/build-image.sh operator [tag]     # default tag modelship-operator:dev
# The base comes from hack/build-base-image.sh; wheels are downloaded on the host into the build
# context (the container build cannot reach PyPI). The image is tagged with a hash of its inputs
# too, so an unchanged tree is not rebuilt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=hack/docker-env.sh
source "$here/docker-env.sh"

what="${1:-}"
case "$what" in
  runtime) dockerfile="$root/runtime-image/Dockerfile" ;;
  operator) dockerfile="$root/operator/Dockerfile" ;;
  *) echo "usage: $0 runtime|operator [tag]" >&2; exit 2 ;;
esac
tag="${2:-modelship-$what:dev}"
python="${PYTHON:-$root/.venv/bin/python}"

base="$("$here/build-base-image.sh")"
context="$root/.cache/image-context/$what"
# The image depends on the base, the Dockerfile, pyproject.toml (pinned dependencies), README.md
# (the wheel's metadata) and the package sources; hash those so an unchanged tree is not rebuilt
# (the wheel itself is not byte-reproducible, so it cannot be the key).
key="$( (echo "$base"; sha256sum "$dockerfile" "$root/pyproject.toml" "$root/README.md" | cut -d' ' -f1
        cd "$root" && git ls-files -co --exclude-standard -- operator/modelship runtime-image/modelship_runtime \
          | grep -v /__pycache__/ | sort | xargs sha256sum) | sha256sum | cut -c1-12)"
hashed="modelship-$what:$key"
if docker image inspect "$hashed" >/dev/null 2>&1; then
  echo "==> $hashed is cached"
else
  rm -rf "$context/wheels"
  mkdir -p "$context/wheels"
  cp "$dockerfile" "$context/Dockerfile"
  echo "==> wheels for modelship[$what] (pip wheel on the host, cached by pip)"
  "$python" -m pip wheel --quiet --no-cache-dir -w "$context/wheels" --no-deps "$root" 2>/dev/null
  "$python" -m pip wheel --quiet -w "$context/wheels" --only-binary=:all: \
    "$(ls "$context"/wheels/modelship-*.whl)[$what]"
  echo "    $(ls "$context/wheels" | wc -l) wheels, $(du -sh "$context/wheels" | cut -f1)"
  echo "==> docker build (base $base)"
  DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$base" -t "$hashed" "$context" \
    | grep -E '^Step|^Successfully|rror' | sed 's/^/    /'
fi
docker tag "$hashed" "$tag"
size="$(docker image inspect -f '{{.Size}}' "$tag")"
echo "==> $tag ($hashed): $((size / 1024 / 1024)) MiB"
