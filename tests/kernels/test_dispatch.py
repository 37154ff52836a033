import subprocess
import sys

import pytest
import torch
from varpo_kernels import resolve_backend


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("triton", "cpu") == "triton"  # TRITON_INTERPRET=1 (conftest)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="kernels.backend.*'cuda'"):
        resolve_backend("cuda", "cpu")


def test_import_and_cpu_use_never_touch_triton():
    """A machine without a GPU and without the interpreter: importing and using the package on
    CPU tensors must not import triton (importing a kernel there raises '0 active drivers')."""
    code = (
        "import os, sys; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import torch, varpo_kernels as k\n"
        "x = torch.randn(3, 11); i = torch.tensor([0, 5, 10])\n"
        "lp = k.selective_log_softmax(x, i)\n"
        "k.weighted_kl(lp[None], lp[None] * 0, torch.ones(1, 3), torch.ones(1), 'k3')\n"
        "k.ensemble_stats(torch.randn(4, 5))\n"
        "assert not any(m == 'triton' or m.startswith('triton.') for m in sys.modules), 'triton imported'\n"
        "try:\n    k.selective_log_softmax(x, i, backend='triton')\nexcept RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e)\nelse:\n    raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
