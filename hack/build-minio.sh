#!/usr/bin/env bash
# Builds MinIO (the S3-compatible server the builder's store tests run against) from Go modules.
#
# No release binaries can be downloaded here, so MinIO is compiled from the Go module proxy once per
# version and cached. MinIO tags releases as RELEASE.<date>, not semver, so the module is pinned by
# its pseudo-version. Its go.mod has no replace directives, so a plain `go install` works (unlike
# k8s.io/kubernetes and etcd, see hack/build-k8s.sh).
#
# Usage: hack/build-minio.sh
# Output: $MODELSHIP_CACHE/bin/minio-<version> (default cache: ~/.cache/modelship); prints its path.
set -euo pipefail

MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
CACHE="${MODELSHIP_CACHE:-$HOME/.cache/modelship}"
BIN="$CACHE/bin"
OUT="$BIN/minio-$MINIO_VERSION"

log() { printf '[build-minio] %s\n' "$*" >&2; }

if [ -x "$OUT" ]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$BIN"

# go install -v prints each package as it is compiled: count them so a long build shows it is alive.
progress() {
  local n=0 line
  while IFS= read -r line; do
    case "$line" in
      *": "*|*error*|*cannot*|"#"*) printf '%s\n' "$line" >&2 ;;
      *) n=$((n + 1)); if [ $((n % 100)) -eq 0 ]; then log "$n packages compiled"; fi ;;
    esac
  done
  log "$n packages compiled"
}

gobin=$(mktemp -d "$BIN/.minio-build.XXXXXX")
trap 'rm -rf "$gobin"' EXIT
start=$SECONDS
log "building github.com/minio/minio@$MINIO_VERSION (first build takes several minutes; cached afterwards)"
(GOBIN="$gobin" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
  go install -v -trimpath -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" 2>&1) | progress
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "build failed"; exit 1; }
mv "$gobin/minio" "$OUT"
log "built in $((SECONDS - start))s -> $OUT"
echo "$OUT"
