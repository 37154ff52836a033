#!/usr/bin/env bash
# The prepared GPU check of vLLM rollouts (a few minutes on one GPU): the rollout benchmark at
# GPT-2-small size (HF generate vs the colocated vLLM engine, same prompts and lengths, bf16, and
# the log-prob gap after an in-memory weight sync) and a 3-step PPO run with generation.backend=vllm
# (sleep mode on). Results and logs go to OUT (default benchmarks/results/rollout/gpu), with the
# card's name in rollout.json's `machine.gpu` and in gpu.txt.
#
# Needs a CUDA environment with varpo and vLLM: `pip install torch==<vLLM's torch> && pip install -e ".[vllm]"`
# (vLLM's CUDA wheel pins its own torch). Another check script may call this one:
#   bash benchmarks/gpu_vllm_check.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/rollout/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VARPO_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import vllm, varpo, deepspeed" 2>"$OUT/import_error.txt"; then
  echo "gpu_vllm_check: vllm, varpo and deepspeed must be importable by $PY (see $OUT/import_error.txt)" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# 1. the benchmark: GPT-2 small (124M), 64 prompts x 64 new tokens, 5 timed rollouts per side
"$PY" benchmarks/rollout.py --size gpt2-small --repeats 5 --out "$OUT" 2>&1 | tee "$OUT/rollout.log"

# 2. PPO with vLLM rollouts on the embedded task (testbed LM, a reward ensemble trained first)
"$PY" -m varpo.cli train-ppo -c configs/default.yaml --set generation.backend=vllm --set ppo.steps=3 \
  --set generation.vllm.gpu_memory_utilization=0.2 --out "$OUT/ppo" 2>&1 | tee "$OUT/ppo.log"
cp "$OUT/ppo/metrics.jsonl" "$OUT/ppo_metrics.jsonl"
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/rollout.json"))
rows = [json.loads(x) for x in open(f"{out}/ppo_metrics.jsonl")]
print(f"vllm_vs_hf {r['vllm_vs_hf']:.2f}x  logprob gap after sync {r['logprob_max_abs_diff_after_sync']:.2e}  "
      f"gpu {r['machine'].get('gpu')}")
for m in rows:
    print(f"step {m['step']}: diff mean {m['rollout_logprob_diff_mean']:.2e} max {m['rollout_logprob_diff_max']:.2e} "
          f"generate {m['time/generate']:.2f}s sync {m['time/sync']:.2f}s")
PY
