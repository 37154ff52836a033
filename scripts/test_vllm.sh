#!/usr/bin/env bash
# The vLLM tests, one pytest process per file: vLLM's engine shutdown tears down torch.distributed's
# default group while DeepSpeed keeps its own cached groups, and a ZeRO-3 engine keeps HF's global
# DeepSpeed config alive, so state one file leaves behind breaks the next file's in-process engines.
# Extra pytest arguments pass through (e.g. -x). Exit status: the first failing file's, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VARPO_VLLM_VENV:-.venv-vllm}/bin/python
rc=0
for f in tests/vllm/test_*.py; do
  echo "== $f"
  "$PY" -m pytest -q -m vllm "$@" "$f" || { s=$?; [ "$rc" = 0 ] && rc=$s; }
done
exit "$rc"
