#!/usr/bin/env bash
# The converter environments: one framework family beside modelship[runtime], so the builder can
# convert PyTorch or TensorFlow/Keras/TF Lite models to ONNX (the serving image carries neither).
# Usage:
#   hack/converter-env.sh download FAMILY WHEELDIR      # host: every wheel FAMILY needs (PyPI)
#   hack/converter-env.sh install FAMILY WHEELDIR VENV  # offline, into a modelship[runtime] venv
#   hack/converter-env.sh venv DEST                     # the tests' host venv: both families
# FAMILY is torch or tensorflow; its pins are runtime-image/converters/FAMILY.txt (with
# dependencies) and FAMILY-nodeps.txt (torch only: torch and the CUDA wheels it links against,
# without theirs, then pruned by prune_cuda.py). The image build (Dockerfile.converter in
# runtime-image/) runs `install` from a copy of this script that has those files beside it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [[ -n "${CONVERTERS_DIR:-}" ]]; then
  conv="$CONVERTERS_DIR"
elif [[ -f "$here/torch.txt" ]]; then
  conv="$here"  # the copy in an image's build context
else
  conv="$root/runtime-image/converters"
fi
FAMILIES=(torch tensorflow)
wheels=""  # venv's temporary wheel folder (global: the EXIT trap removes it)

die() { echo "$0: $*" >&2; exit 2; }

check_family() {
  [[ " ${FAMILIES[*]} " == *" $1 "* ]] || die "unknown FAMILY '$1' (one of: ${FAMILIES[*]})"
}

# modelship's own requirements (base and the runtime extra) from pyproject.toml, one a line.
runtime_requirements() {
  "$1" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["runtime"]))
EOF
}

# download FAMILY WHEELDIR PYTHON: resolves FAMILY.txt together with modelship[runtime]'s
# requirements (so one version of each package lands in WHEELDIR), then FAMILY-nodeps.txt alone.
download() {
  local family="$1" wheels="$2" py="$3" reqs
  check_family "$family"
  mkdir -p "$wheels"
  reqs="$(mktemp)"
  runtime_requirements "$py" >"$reqs"
  "$py" -m pip download --quiet --only-binary=:all: -d "$wheels" -r "$reqs" -r "$conv/$family.txt"
  rm -f "$reqs"
  if [[ -f "$conv/$family-nodeps.txt" ]]; then
    "$py" -m pip download --quiet --only-binary=:all: --no-deps -d "$wheels" \
      -r "$conv/$family-nodeps.txt"
  fi
}

# install FAMILY WHEELDIR VENV: offline. What VENV already has is a constraint, so the pins of
# modelship[runtime] cannot move (pip fails instead).
install() {
  local family="$1" wheels="$2" venv="$3" py constraints site
  check_family "$family"
  py="$venv/bin/python"
  [[ -x "$py" ]] || die "no venv at $venv"
  "$py" -c 'import modelship_runtime' 2>/dev/null || die "$venv has no modelship[runtime]"
  constraints="$(mktemp)"
  "$py" -m pip freeze --exclude-editable >"$constraints"
  "$py" -m pip install --quiet --no-cache-dir --no-index --find-links "$wheels" \
    -c "$constraints" -r "$conv/$family.txt"
  rm -f "$constraints"
  if [[ -f "$conv/$family-nodeps.txt" ]]; then
    "$py" -m pip install --quiet --no-cache-dir --no-index --find-links "$wheels" --no-deps \
      -r "$conv/$family-nodeps.txt"
  fi
  if [[ "$family" == torch ]]; then
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    "$py" "$conv/prune_cuda.py" "$site"
  fi
}

# venv DEST: python3 -m venv, modelship[runtime] editable (the working tree's code), both
# families, a smoke check. A stamp keyed by the inputs' hash makes an unchanged second call instant.
venv() {
  local dest="$1" python="${PYTHON:-python3}" key stamp family
  key="$(cat "$root/pyproject.toml" "$here/converter-env.sh" "$conv"/*.txt "$conv"/*.py \
    | sha256sum | cut -c1-16)"
  stamp="$dest/.converter-env-$key"
  if [[ -f "$stamp" ]]; then
    echo "==> $dest is up to date ($key)"
    return 0
  fi
  echo "==> $dest: $python -m venv (the converter venv; was missing or stale)"
  rm -rf "$dest"
  "$python" -m venv "$dest"
  "$dest/bin/pip" install --upgrade --quiet pip
  echo "==> modelship[runtime] (editable)"
  # The families' pins constrain the runtime's resolution, so the offline installs below fit it.
  if ! "$dest/bin/pip" install --quiet --progress-bar off -e "$root[runtime]" \
    -c "$conv/torch.txt" -c "$conv/tensorflow.txt" 2>"$dest/pip.log"; then
    cat "$dest/pip.log" >&2  # otherwise only setuptools' editable-install warning
    exit 1
  fi
  wheels="$(mktemp -d "${TMPDIR:-/tmp}/converter-wheels.XXXXXX")"
  trap 'rm -rf "$wheels"' EXIT  # GBs: gone however this ends
  # tensorflow first: pip's dependency check after a later install would flag the requirements
  # torch declares and does not get (cuda-toolkit, triton, ...), which are left out on purpose.
  for family in tensorflow torch; do
    echo "==> $family: wheels (pip download, cached by pip)"
    download "$family" "$wheels" "$dest/bin/python"
    echo "    $(du -sh "$wheels" | cut -f1) in the wheel folder so far"
    echo "==> $family: install"
    install "$family" "$wheels" "$dest"
  done
  rm -rf "$wheels"
  echo "==> smoke check: a tiny model per family to ONNX, run in onnxruntime"
  # Only on failure the frameworks' warnings (stderr) are worth reading.
  if ! "$dest/bin/python" "$conv/smoke.py" "${FAMILIES[@]}" 2>"$dest/smoke.log"; then
    cat "$dest/smoke.log" >&2
    echo "$0: the smoke check failed in $dest" >&2
    exit 1
  fi
  touch "$stamp"
  echo "==> $dest: $(du -sh "$dest" | cut -f1)"
}

case "${1:-}" in
  download) (($# == 3)) || die "usage: $0 download FAMILY WHEELDIR"
    py="${PYTHON:-$root/.venv/bin/python}"  # any Python >= 3.11 with pip (tomllib)
    command -v "$py" >/dev/null || py=python3
    download "$2" "$3" "$py" ;;
  install) (($# == 4)) || die "usage: $0 install FAMILY WHEELDIR VENV"
    install "$2" "$3" "$4" ;;
  venv) (($# == 2)) || die "usage: $0 venv DEST"
    # One install at a time (CI starts it in the background; `make test` then waits for it).
    mkdir -p "$root/.cache"
    exec 8>"$root/.cache/converter-venv.lock"
    flock -n 8 || { echo "==> another install of $2 is running; waiting for it"; flock 8; }
    venv "$2" ;;
  *) die "usage: $0 download FAMILY WHEELDIR | install FAMILY WHEELDIR VENV | venv DEST" ;;
esac
