#!/usr/bin/env bash
# Builds a project image here, offline apart from PyPI on the host. Usage:
#   hack/build-image.sh runtime [tag]             # default tag modelship-runtime:dev
#   hack/build-image.sh operator [tag]            # default tag modelship-operator:dev
#   hack/build-image.sh convert-torch [tag]       # default tag modelship-convert-torch:dev
#   hack/build-image.sh convert-tensorflow [tag]  # default tag modelship-convert-tensorflow:dev
# The base comes from hack/build-base-image.sh; wheels are downloaded on the host into the build
# context (the container build cannot reach PyPI). The image is tagged with a hash of its inputs
# too, so an unchanged tree is not rebuilt. The convert-* images are the runtime's
# modelship[runtime] plus one framework family (runtime-image/Dockerfile.converter and
# hack/converter-env.sh); they are GBs, so their wheels and the build's dangling images are removed
# once built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=hack/docker-env.sh
source "$here/docker-env.sh"

what="${1:-}"
extra="$what"
family=""
sources=(operator/modelship runtime-image/modelship_runtime)
case "$what" in
  runtime) dockerfile="$root/runtime-image/Dockerfile" ;;
  operator) dockerfile="$root/operator/Dockerfile" ;;
  convert-torch | convert-tensorflow)
    dockerfile="$root/runtime-image/Dockerfile.converter"
    extra=runtime
    family="${what#convert-}"
    sources+=(runtime-image/converters hack/converter-env.sh) ;;
  *) echo "usage: $0 runtime|operator|convert-torch|convert-tensorflow [tag]" >&2; exit 2 ;;
esac
tag="${2:-modelship-$what:dev}"
python="${PYTHON:-$root/.venv/bin/python}"

# One build of an image at a time (CI builds the converter images in the background; the e2e
# fixture that needs one then waits for that build instead of starting another).
mkdir -p "$root/.cache"
exec 9>"$root/.cache/image-build-$what.lock"
flock -n 9 || { echo "==> another build of $what is running; waiting for it"; flock 9; }
base="$("$here/build-base-image.sh")"
context="$root/.cache/image-context/$what"
# The image depends on the base, the Dockerfile, pyproject.toml (pinned dependencies), README.md
# (the wheel's metadata) and the package sources (and a converter image on its family's files);
# hash those so an unchanged tree is not rebuilt (the wheel itself is not byte-reproducible, so it
# cannot be the key).
key="$( (echo "$base"; sha256sum "$dockerfile" "$root/pyproject.toml" "$root/README.md" | cut -d' ' -f1
        cd "$root" && git ls-files -co --exclude-standard -- "${sources[@]}" \
          | grep -v /__pycache__/ | sort | xargs sha256sum) | sha256sum | cut -c1-12)"
hashed="modelship-$what:$key"
if docker image inspect "$hashed" >/dev/null 2>&1; then
  echo "==> $hashed is cached"
else
  rm -rf "$context/wheels" "$context/converters"
  mkdir -p "$context/wheels"
  cp "$dockerfile" "$context/Dockerfile"
  echo "==> wheels for modelship[$extra] (pip wheel on the host, cached by pip)"
  "$python" -m pip wheel --quiet --no-cache-dir -w "$context/wheels" --no-deps "$root" 2>/dev/null
  build_args=(--build-arg "BASE_IMAGE=$base")
  if [[ -z "$family" ]]; then
    "$python" -m pip wheel --quiet -w "$context/wheels" --only-binary=:all: \
      "$(ls "$context"/wheels/modelship-*.whl)[$extra]"
  else
    # One resolution of modelship[runtime]'s requirements and the family's, so the wheel folder
    # holds one version of each package.
    echo "==> wheels for modelship[runtime] and the $family converter (hack/converter-env.sh)"
    PYTHON="$python" bash "$here/converter-env.sh" download "$family" "$context/wheels"
    mkdir -p "$context/converters"
    cp "$here/converter-env.sh" "$root"/runtime-image/converters/*.txt \
      "$root"/runtime-image/converters/*.py "$context/converters/"
    build_args+=(--build-arg "FAMILY=$family")
  fi
  echo "    $(ls "$context/wheels" | wc -l) wheels, $(du -sh "$context/wheels" | cut -f1)"
  echo "==> docker build (base $base)"
  DOCKER_BUILDKIT=0 docker build "${build_args[@]}" -t "$hashed" "$context" \
    | grep -E '^Step|^Successfully|rror|^==> |^    ' | sed 's/^/    /'
  [[ -z "$family" ]] || rm -rf "$context/wheels"
fi
docker tag "$hashed" "$tag"
if [[ -n "$family" ]]; then
  # GBs each: drop the hashed tags of older builds (other tags stay); those images, the install
  # stage's layers and a previous build that $tag named are then dangling.
  old_tags="$(docker images --format '{{.Tag}}' "modelship-$what" | grep -xE '[0-9a-f]{12}' \
    | grep -vx "$key" || true)"
  for old in $old_tags; do docker rmi "modelship-$what:$old" >/dev/null || true; done
  echo "==> docker image prune: $(docker image prune -f | tail -1)"
fi
size="$(docker image inspect -f '{{.Size}}' "$tag")"
echo "==> $tag ($hashed): $((size / 1024 / 1024)) MiB"
