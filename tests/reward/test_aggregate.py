"""Aggregations over heads against numpy float64 references on fresh random inputs."""
import numpy as np
import pytest
import torch

from varpo.reward.aggregate import aggregate, head_mean_var, head_variance


@pytest.mark.parametrize("K", [1, 2, 5, 10])
@pytest.mark.parametrize("ddof", [0, 1, 2])
def test_aggregations_match_numpy(K, ddof):
    g = torch.Generator().manual_seed(100 * K + ddof)
    r = torch.randn(37, K, generator=g, dtype=torch.float64) * 3 + 1
    a = r.numpy()
    var = np.var(a, axis=-1, ddof=ddof) if K > ddof else np.zeros(37)
    ref = {"mean": a.mean(-1), "median": np.median(a, axis=-1), "min": a.min(-1),
           "mean_minus_var": a.mean(-1) - 0.7 * var, "mean_minus_std": a.mean(-1) - 1.3 * np.sqrt(var)}
    for how, want in ref.items():
        got = aggregate(r, how, ddof=ddof, lam=0.7, k=1.3).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=how)
    _, v = head_mean_var(r, ddof)
    np.testing.assert_allclose(v.numpy(), var, rtol=1e-12, atol=1e-12)
    s, (m2, _) = aggregate(r.float(), "mean_minus_std", ddof=ddof, k=1.3), head_mean_var(r.float(), ddof)
    np.testing.assert_allclose(s.numpy(), ref["mean_minus_std"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m2.numpy(), a.mean(-1), rtol=1e-5, atol=1e-5)


def test_variance_default_is_sample_variance_and_batched():
    r = torch.tensor([[[1.0, 2.0, 4.0]]])
    assert head_variance(r).item() == pytest.approx(np.var([1, 2, 4], ddof=1))  # ddof=1 by default
    assert head_variance(r).shape == (1, 1)


def test_bad_aggregation_and_ddof():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(torch.zeros(2, 3), "max")
    with pytest.raises(ValueError, match="ddof"):
        head_variance(torch.zeros(2, 3), -1)
