"""varpo.ppo.generation.lm_head.decode_head: inside it the output embedding computes (W · hᵀ)ᵀ,
which must equal an independent float64 h · Wᵀ (+ b) on random inputs of odd sizes; outside it
the head is the plain nn.Linear again; a head that is not a plain nn.Linear is left alone."""
from __future__ import annotations

import pytest
import torch

from varpo.ppo.generation.lm_head import decode_head


class _LM(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def get_output_embeddings(self):
        return self.head


@pytest.mark.parametrize("shape, V, d, bias", [((3, 1), 37, 11, False), ((5, 7), 1001, 24, True), ((2,), 13, 5, True)])
def test_transposed_head_equals_float64_reference(shape, V, d, bias):
    g = torch.Generator().manual_seed(V + d)
    head = torch.nn.Linear(d, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d, generator=g))
        if bias:
            head.bias.copy_(torch.randn(V, generator=g))
    x = torch.randn(*shape, d, generator=g)
    want = x.double() @ head.weight.double().t() + (head.bias.double() if bias else 0)
    lm = _LM(head)
    with decode_head(lm):
        assert "forward" in vars(head), "the head's forward is replaced inside"
        got = head(x)
    assert got.shape == (*shape, V)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * d)
    assert "forward" not in vars(head), "and restored after"
    assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight, head.bias))


def test_other_heads_are_left_alone():
    class Scaled(torch.nn.Linear):
        pass

    head = Scaled(4, 9)
    with decode_head(_LM(head)):
        assert "forward" not in vars(head)
    plain = torch.nn.Linear(2, 2)
    with decode_head(plain):  # no get_output_embeddings: nothing to do
        assert "forward" not in vars(plain)


def test_restored_when_generation_fails():
    head = torch.nn.Linear(3, 5)
    with pytest.raises(RuntimeError, match="boom"), decode_head(_LM(head)):
        raise RuntimeError("boom")
    assert "forward" not in vars(head)
