#!/usr/bin/env bash
# Regenerates the committed Python modules for open_inference.proto (needs grpcio-tools from the
# [dev] extra). Run from anywhere: ./runtime-image/modelship_runtime/serve/proto/generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"   # runtime-image/
python="${PYTHON:-$(cd "$root/.." && pwd)/.venv/bin/python}"
cd "$root"
"$python" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  modelship_runtime/serve/proto/open_inference.proto
echo "generated: $(ls "$here"/open_inference_pb2*.py* | xargs -n1 basename | tr '\n' ' ')"
