"""Kernel tests run the real Triton kernels through Triton's CPU interpreter. TRITON_INTERPRET must
be set before any @triton.jit function is defined; varpo_kernels imports its Triton modules only
lazily (dispatch.triton_module), and no other project code defines Triton kernels on CPU, so setting
it when this conftest is imported (at collection, before any test runs) is early enough. Triton
reads the variable at decoration time (triton.knobs), not at `import triton`."""
import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

BACKENDS = ["torch", "triton"]


@pytest.fixture
def poisoned(monkeypatch):
    """Every torch.empty / empty_like allocated inside the call comes back NaN-filled (integers: a
    sentinel), so an output element a kernel forgot to write shows up as NaN instead of stale memory."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.dtype.is_floating_point:
            return t.fill_(float("nan"))
        if t.dtype != torch.bool:
            return t.fill_(-12345)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))
    yield


def ref_log_softmax_np(x: torch.Tensor, ids: torch.Tensor):
    """Independent float64 reference (numpy, per row, shifted by the finite max):
    log p(ids) and the entropy −Σ p log p."""
    a = x.detach().double().reshape(-1, x.shape[-1]).numpy()
    i = ids.reshape(-1).numpy()
    logp, ent = np.empty(a.shape[0]), np.empty(a.shape[0])
    for r in range(a.shape[0]):
        row = a[r]
        mx = row[np.isfinite(row)].max()
        z = np.exp(row - mx)
        lse = mx + np.log(z.sum())
        logp[r] = row[i[r]] - lse
        p = z / z.sum()
        nz = p > 0
        ent[r] = -(p[nz] * (row[nz] - lse)).sum()
    return torch.from_numpy(logp).reshape(ids.shape), torch.from_numpy(ent).reshape(ids.shape)
