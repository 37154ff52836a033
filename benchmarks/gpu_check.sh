#!/usr/bin/env bash
# Every GPU measurement of the project in one call of a few minutes, into one results folder:
#   1. the Triton kernels compiled: correctness against their PyTorch twins, bandwidth against a
#      plain device copy of the same bytes             (benchmarks/gpu_kernels.py)
#   2. PPO throughput, varpo vs TRL, at GPT-2-small size (benchmarks/ppo_vs_trl.py --size gpt2-small)
#   3. the rollout benchmark with vLLM, when benchmarks/gpu_vllm_check.sh exists
# Usage:  bash benchmarks/gpu_check.sh [OUT]            (default OUT: benchmarks/results/gpu_check)
#         bash benchmarks/gpu_check.sh --dry-run [OUT]  (CPU: part 1 under Triton's interpreter at
#                                                        small shapes; parts 2 and 3 print their commands)
# Each part runs even if an earlier one failed; OUT/summary.json records every part's command,
# exit status and seconds, and the card. Exit status: the number of failed parts.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
PARTS=()
FAILED=0

part() {  # part NAME COMMAND...: run (or, dry, only record) one part, log to OUT/NAME.log
    local name=$1; shift
    local t0=$SECONDS rc
    echo "== $name: $*"
    if [ "$DRY" = 1 ] && [ "$name" != kernels ]; then
        rc=skipped-dry-run
    else
        "$@" >"$OUT/$name.log" 2>&1
        rc=$?
        [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
        tail -n 5 "$OUT/$name.log"
    fi
    PARTS+=("$(printf '{"part": "%s", "command": "%s", "exit": "%s", "seconds": %d}' "$name" "$*" "$rc" $((SECONDS - t0)))")
}

if [ "$DRY" = 1 ]; then
    part kernels "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels" --dry-run
else
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    part kernels "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels"
fi
# GPT-2 small on one GPU: 2 rounds of TRL / vanilla / variance-aware, 4 steps each (1 warm-up)
part ppo_vs_trl "$PY" benchmarks/ppo_vs_trl.py --size gpt2-small --rounds 2 --steps 4 --warmup 1 \
    --variants trl,varpo_vanilla,varpo_variance_aware --out "$OUT/ppo_vs_trl"
if [ -f benchmarks/gpu_vllm_check.sh ]; then
    part vllm bash benchmarks/gpu_vllm_check.sh "$OUT/vllm"
fi

CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU)')" 2>/dev/null)
{
    printf '{"card": "%s", "dry_run": %s, "failed_parts": %d, "parts": [' "$CARD" "$([ $DRY = 1 ] && echo true || echo false)" "$FAILED"
    (IFS=,; printf '%s' "${PARTS[*]}")
    printf ']}\n'
} >"$OUT/summary.json"
cat "$OUT/summary.json"
exit "$FAILED"
