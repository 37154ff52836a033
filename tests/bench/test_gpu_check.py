"""benchmarks/gpu_check.sh on a CPU machine (--dry-run): its kernel part really runs every Triton
kernel through the interpreter against its PyTorch twin, the GPU-only parts are listed with their
commands, and the summary names what ran. The GPU run itself is recorded in
benchmarks/results/gpu_check when a GPU was available."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_runs_the_kernel_checks(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'kernels'}"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert summary["dry_run"] is True and summary["failed_parts"] == 0
    assert parts["kernels"]["exit"] == "0" and parts["wheels"]["exit"] == "0"  # nothing missing here
    assert parts["ppo_vs_trl"]["exit"] == "skipped-dry-run" and "--size gpt2-small" in parts["ppo_vs_trl"]["command"]
    assert "trl,varpo_vanilla" in parts["ppo_vs_trl"]["command"]
    assert parts["zero3"]["exit"] == "skipped-dry-run" and "deepspeed.zero_stage=3" in parts["zero3"]["command"]
    res = json.loads((tmp_path / "kernels" / "gpu_kernels.json").read_text())
    names = {r["kernel"] for r in res["kernels"]}
    assert {"weighted_kl_from_logits fwd k3 fp32", "weighted_kl_from_logits fwd+bwd k3 fp32",
            "ensemble_head_stats", "selective_log_softmax fwd+bwd fp32"} <= names
    for r in res["kernels"]:
        assert r["ok"] and 0 <= r["max_abs_error_vs_torch_twin"] <= r["tolerance"], r
        assert 0 <= r["max_abs_error_vs_float64"] <= r["tolerance_vs_float64"], r
