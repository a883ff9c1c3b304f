#!/usr/bin/env bash
# Regenerate csi/v1/csi_pb2.py and csi/v1/csi_pb2_grpc.py from proto/csi/v1/csi.proto.
# Usage: scripts/gen-proto.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
mkdir -p "$out"
cd "$root"
"$python" -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" proto/csi/v1/csi.proto
