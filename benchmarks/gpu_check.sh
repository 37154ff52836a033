#!/usr/bin/env bash
# Every GPU measurement of the project in one call, under 8 minutes on one H100, into one folder:
#   0. packages the machine lacks, installed from wheels carried with the repository (WHEELS,
#      default runs/gpu_wheels, prepared here by benchmarks/gpu_wheels.sh: DeepSpeed, TRL and the
#      pure-Python dependencies varpo needs, within the 64 MiB a call may carry; the machine has no
#      package index). vLLM and flash-attn wheels are larger: those halves stay CPU-tested.
#   1. the Triton kernels compiled: exactness against float64 and their PyTorch twins, bandwidth
#      against a plain device copy of the same bytes                   (benchmarks/gpu_kernels.py)
#   2. one PPO step's throughput, varpo vs TRL 1.12, at GPT-2-small size, with model FLOPs
#      utilisation per phase against the card's measured peak (benchmarks/ppo_vs_trl.py --size
#      gpt2-small: 1 round, 3 steps, 1 warm-up; the roofline probe runs on the card)
#   3. the ZeRO-3 path on the GPU: 2 PPO steps with every role under ZeRO-3 (world of one). Two
#      ranks cannot share one GPU here: NCCL refuses two ranks on one device ("Duplicate GPU
#      detected"), and gloo has no CUDA reduce-scatter, which ZeRO-3 needs; the two-rank ZeRO-3
#      path is tested on CPU ranks (tests/ppo/test_multirank.py)
#   4. the vLLM rollout check, when vLLM is importable (benchmarks/gpu_vllm_check.sh)
# Usage:  bash benchmarks/gpu_check.sh [OUT]            (default OUT: benchmarks/results/gpu_check)
#         bash benchmarks/gpu_check.sh --dry-run [OUT]  (CPU: part 1 under Triton's interpreter at
#                                                        small shapes; the others print their commands)
# Each part runs even if an earlier one failed; OUT/summary.json records every part's command,
# exit status and seconds, and the card. Exit status: the number of failed parts.
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-benchmarks/results/gpu_check}
WHEELS=${WHEELS:-runs/gpu_wheels}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 VARPO_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PARTS=()
FAILED=0

part() {  # part NAME COMMAND...: run (or, dry, only record) one part, log to OUT/NAME.log
    local name=$1; shift
    local t0=$SECONDS rc
    echo "== $name: $*"
    if [ "$DRY" = 1 ] && [ "$name" != kernels ] && [ "$name" != wheels ]; then
        rc=skipped-dry-run
    else
        "$@" >"$OUT/$name.log" 2>&1
        rc=$?
        [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
        tail -n 5 "$OUT/$name.log"
    fi
    PARTS+=("$(printf '{"part": "%s", "command": "%s", "exit": "%s", "seconds": %d}' "$name" "$*" "$rc" $((SECONDS - t0)))")
}

install_missing() {  # the packages this checkout imports that the machine lacks, from $WHEELS only
    local missing
    missing=$("$PY" - <<'PY'
import importlib.util
need = {"deepspeed": "deepspeed", "transformers": "transformers", "accelerate": "accelerate", "datasets": "datasets",
        "peft": "peft", "pydantic": "pydantic", "typer": "typer", "rich": "rich", "yaml": "pyyaml",
        "safetensors": "safetensors", "tokenizers": "tokenizers", "scipy": "scipy", "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
    echo "missing: ${missing:-none}"
    if [ -n "$missing" ]; then
        [ -d "$WHEELS" ] || { echo "no wheel folder $WHEELS (bash benchmarks/gpu_wheels.sh prepares it)"; return 1; }
        PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS" "$PY" -m pip install -q --no-build-isolation $missing || return 1
    fi
    # TRL goes into benchmarks/.venv-trl, which ppo_vs_trl.py builds with pip: the same wheels serve it
    "$PY" -c "import deepspeed, transformers, varpo; print('deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
}

if [ -d "$WHEELS" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/$WHEELS"; fi
if [ "$DRY" = 1 ]; then
    part wheels install_missing
    part kernels "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels" --dry-run
else
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    part wheels install_missing
    part kernels "$PY" benchmarks/gpu_kernels.py --out "$OUT/kernels"
fi
# GPT-2 small on one GPU: TRL and varpo, one round of 3 steps each (1 warm-up), MFU per phase
part ppo_vs_trl "$PY" benchmarks/ppo_vs_trl.py --size gpt2-small --rounds 1 --steps 3 --warmup 1 \
    --variants trl,varpo_vanilla --out "$OUT/ppo_vs_trl"
# ZeRO-3 on the card (every role partitioned; a world of one: see the header for two ranks)
part zero3 "$PY" -m varpo.cli train-ppo -c configs/default.yaml --set deepspeed.zero_stage=3 --set ppo.steps=2 \
    --out "$OUT/zero3"
if [ -f benchmarks/gpu_vllm_check.sh ] && "$PY" -c "import vllm" 2>/dev/null; then
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
