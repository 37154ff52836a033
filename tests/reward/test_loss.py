"""Bradley–Terry loss against an explicit float64 loop; bootstrap counts."""
import math

import pytest
import torch

from varpo.reward.train import bootstrap_counts, bt_loss


def _ref_loss(rc, rw, w=None, denom=None):
    """Σ_k Σ_i w_ik·(−log σ(d_ik)) / D_k with −log σ(d) = log1p(exp(−d)) (d ≥ 0) or −d + log1p(exp(d))."""
    B, K = len(rc), len(rc[0])
    total, per = 0.0, []
    for k in range(K):
        num, den = 0.0, 0.0
        for i in range(B):
            d = rc[i][k] - rw[i][k]
            nll = math.log1p(math.exp(-d)) if d >= 0 else -d + math.log1p(math.exp(d))
            wi = 1.0 if w is None else w[i][k]
            num += wi * nll
            den += wi
        den = den if denom is None else denom[k]
        per.append(num / den if den > 0 else 0.0)
        total += per[-1]
    return total, per


@pytest.mark.parametrize("B,K", [(1, 1), (7, 3), (33, 10)])
def test_bt_loss_matches_float64_loop(B, K):
    g = torch.Generator().manual_seed(B * 31 + K)
    rc = torch.randn(B, K, generator=g, dtype=torch.float64) * 4
    rr = torch.randn(B, K, generator=g, dtype=torch.float64) * 4
    total, per = bt_loss(rc, rr)
    ref_total, ref_per = _ref_loss(rc.tolist(), rr.tolist())
    assert total.item() == pytest.approx(ref_total, rel=1e-6)
    assert per.tolist() == pytest.approx(ref_per, rel=1e-6)
    w = torch.randint(0, 4, (B, K), generator=g).double()
    denom = w.sum(0) + torch.arange(K)  # a global-batch normaliser larger than this shard's
    total, per = bt_loss(rc, rr, w, denom)
    ref_total, ref_per = _ref_loss(rc.tolist(), rr.tolist(), w.tolist(), denom.tolist())
    assert total.item() == pytest.approx(ref_total, rel=1e-6)
    assert per.tolist() == pytest.approx(ref_per, rel=1e-6, abs=1e-12)


def test_bt_loss_is_stable_for_large_margins():
    rc = torch.tensor([[200.0, -200.0]])
    total, per = bt_loss(rc, torch.zeros(1, 2))
    assert torch.isfinite(total)
    assert per[0].item() == pytest.approx(0.0, abs=1e-30) and per[1].item() == pytest.approx(200.0)


def test_bootstrap_counts():
    c = bootstrap_counts(50, 6, seed=3)
    assert c.shape == (50, 6)
    assert torch.equal(c, c.round()) and (c >= 0).all()
    assert (c.sum(0) == 50).all()  # each head resamples n of n
    assert len({tuple(col.tolist()) for col in c.T}) == 6  # heads see different resamples
    assert torch.equal(c, bootstrap_counts(50, 6, seed=3))
    assert not torch.equal(c, bootstrap_counts(50, 6, seed=4))
    # about a fraction 1/e of the pairs is left out of each resample
    assert 0.2 < (c == 0).double().mean().item() < 0.55
