#!/usr/bin/env bash
# Prepares the wheels benchmarks/gpu_check.sh installs on a GPU machine that reaches no package
# index: DeepSpeed and TRL (the versions of this environment's varpo and the benchmark's TRL), and the
# packages they and varpo import that a CUDA torch image usually lacks, into OUT (default
# runs/gpu_wheels, git-ignored; pass it to the machine with the run's `carry`). Binary wheels are
# fetched for the target interpreter and platform (PY_VERSION, default 3.12; PLATFORM, default
# manylinux2014_x86_64). Fails when the folder exceeds the 64 MiB a call may carry, listing sizes.
#   bash benchmarks/gpu_wheels.sh [OUT] [EXTRA_PACKAGE...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_wheels}; shift || true
PY=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.12}
PLATFORM=${PLATFORM:-manylinux2014_x86_64}
LIMIT=$((64 * 1024 * 1024))
mkdir -p "$OUT"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# pure Python (any interpreter): the trainers and what they import beyond torch
PURE=("deepspeed==$(ver deepspeed)" "trl==1.12.0" "transformers==$(ver transformers)" "accelerate==$(ver accelerate)"
      "peft==$(ver peft)" "typer" "rich" "hjson" "py-cpuinfo" "shellingham" "markdown-it-py" "mdurl" "pygments"
      "annotated-types" "typing-inspection" "click" "einops" "ninja" "$@")
# compiled: fetched for the target interpreter and platform
BINARY=("pydantic-core==$(ver pydantic-core)" "pydantic==$(ver pydantic)" "msgpack" "safetensors" "tokenizers==$(ver tokenizers)"
        "pyyaml" "psutil" "regex")
"$PY" -m pip download -q --no-deps -d "$OUT" "${PURE[@]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --platform "$PLATFORM" \
    -d "$OUT" "${BINARY[@]}"
size=$(du -sb "$OUT" | cut -f1)
ls -la "$OUT"
echo "$OUT: $size bytes"
if [ "$size" -gt "$LIMIT" ]; then
    echo "more than 64 MiB: drop what the machine already has (see gpu_check.sh's wheels part)" >&2
    exit 1
fi
