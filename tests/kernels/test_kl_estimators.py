"""One set of KL estimators (varpo_kernels.weighted_kl.kl_from_log_ratio, `_kl_estimate` in the
Triton kernels) wherever PPO computes a per-token KL: the unfused path (varpo.ppo.core.kl_per_token),
the chunked PyTorch twins and the Triton kernels (interpreter), from log-probs and fused from
logits. In float64 each equals an independent 50-digit reference (mpmath) to 1e-12.

k3 before issue 25: core.kl_per_token computed expm1(−r) + r, the kernels a Taylor series for
|r| < k3_small_threshold; with kernels.fused_shaping=false a run's k3 differed from the fused
one's by that rounding. The last test states the difference in float32."""
from __future__ import annotations

import mpmath
import pytest
import torch
from varpo_kernels import KL_ESTIMATORS, weighted_kl, weighted_kl_from_logits, weighted_kl_torch
from varpo_kernels.weighted_kl import k3_small_threshold

from varpo.ppo import core

mpmath.mp.dps = 50


def _reference(r: torch.Tensor, est: str) -> torch.Tensor:
    """k1, k2, k3 of each r in 50-digit arithmetic, rounded to float64."""
    def one(x: float) -> float:
        x = mpmath.mpf(x)
        return float({"k1": x, "k2": x * x / 2, "k3": mpmath.exp(-x) - 1 + x}[est])

    return torch.tensor([[one(float(x)) for x in row] for row in r], dtype=torch.float64)


def _log_ratios(g: torch.Generator, B: int, T: int) -> torch.Tensor:
    """r across scales: tiny (|r| ≈ 1e-9), around k3's series threshold, ordinary, large."""
    scales = torch.tensor([1e-9, 1e-4, 5e-3, 1e-2, 2e-2, 0.3, 3.0])
    pick = scales[torch.randint(0, len(scales), (B, T), generator=g)]
    return (torch.randn(B, T, generator=g) * pick).double()


@pytest.mark.parametrize("est", KL_ESTIMATORS)
def test_every_path_computes_the_same_estimator_in_float64(est):
    g = torch.Generator().manual_seed(11)
    B, T, V = 7, 13, 29  # odd sizes
    r = _log_ratios(g, B, T)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3)
    ref = logp - r
    mask = (torch.rand(B, T, generator=g) > 0.2).double()
    w = torch.rand(B, generator=g, dtype=torch.float64) + 0.5
    want = _reference(logp - ref, est)
    got = {"core.kl_per_token": core.kl_per_token(logp, ref, est),
           "weighted_kl_torch": weighted_kl_torch(logp, ref, mask, w, est).kl}
    for backend in ("torch", "triton"):
        got[f"weighted_kl[{backend}]"] = weighted_kl(logp, ref, mask, w, est, backend=backend).kl
    for name, kl in got.items():
        m = torch.ones_like(mask, dtype=torch.bool) if name == "core.kl_per_token" else mask.bool()  # unmasked
        assert kl.dtype == torch.float64, name
        torch.testing.assert_close(kl[m], want[m], rtol=0, atol=1e-12, msg=name)
    # from logits, fused: the estimator of r = log p(ids) − other (policy's logits) or other − log p
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    for backend in ("torch", "triton"):
        for logits_of in ("policy", "reference"):
            other = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1) - r * (
                1 if logits_of == "policy" else -1)
            out = weighted_kl_from_logits(logits, ids, other, mask, w, est, logits_of=logits_of, backend=backend)
            r_out = out.logp - other if logits_of == "policy" else other - out.logp
            torch.testing.assert_close(out.kl[mask.bool()], _reference(r_out, est)[mask.bool()], rtol=0, atol=1e-12,
                                       msg=f"from logits [{backend}, {logits_of}]")


def test_k3_in_float32_the_series_replaces_the_closed_form_where_it_cancels():
    """The unfused path's k3 in float32 now uses the kernels' series below the threshold (0.1):
    there it is more accurate than the expm1(−r) + r it replaced, whose relative error grows as
    ~eps/|r|; above it, it is the same expression as before, bit for bit."""
    r64 = torch.logspace(-5, 1, 400, dtype=torch.float64)
    r64 = torch.cat([-r64.flip(0), r64])
    r32 = r64.float()
    truth = _reference(r32.double()[None], "k3")[0]
    new = core.kl_per_token(r32, torch.zeros_like(r32), "k3").double()
    old = (torch.expm1(-r32) + r32).double()
    small = r32.abs() < k3_small_threshold(torch.float32)
    assert torch.equal(new[~small], old[~small])
    rel_new = ((new - truth).abs() / truth)[small]
    rel_old = ((old - truth).abs() / truth)[small]
    assert rel_new.max() < 1e-6 and rel_old.max() > 1e-3  # the old form loses digits near 0
    assert (rel_new <= rel_old + 1e-7).all()


def test_the_config_offers_exactly_these_estimators():
    """ppo.kl.estimator's choices (the schema stays free of torch) are the kernels' estimators."""
    from typing import get_args

    from varpo.config import KLConfig

    assert get_args(KLConfig.model_fields["estimator"].annotation) == KL_ESTIMATORS
