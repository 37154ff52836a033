"""varpo.ppo.lm_head: inside cpu_head the output embedding computes oneDNN's linear on its weight
reordered per call (or, where oneDNN does not apply, (W · hᵀ)ᵀ — both paths run here, the second
forced), whose output and gradients (h, W, b) must equal an independent float64 h · Wᵀ (+ b) on
random inputs of odd sizes, non-contiguous ones too; the logits are contiguous (the kernels'
in-place backward writes into them); inside decode_head (a rollout) it is oneDNN's linear on a
weight packed on entry, equal to the same float64 product, differentiable per call under autograd,
and never for a ZeRO-3 shard; outside both the head is the plain nn.Linear again; a head that is not
a plain nn.Linear is left alone."""
from __future__ import annotations

import pytest
import torch

from varpo.ppo import lm_head
from varpo.ppo.lm_head import cpu_head, decode_head, onednn_pack, output_head

HAS_ONEDNN = lm_head._can_pack(torch.zeros(1, 1))


@pytest.fixture(params=["onednn", "transposed"])
def path(request, monkeypatch):
    """Both products of cpu_head: oneDNN's (where this torch has it) and (W · hᵀ)ᵀ, forced."""
    if request.param == "onednn" and not HAS_ONEDNN:
        pytest.skip("this torch build has no oneDNN linear (the (W · hᵀ)ᵀ case covers cpu_head here)")
    if request.param == "transposed":
        monkeypatch.setattr(lm_head, "_can_pack", lambda weight: False)
    return request.param


class _LM(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def get_output_embeddings(self):
        return self.head


def _head(V, d, bias, g):
    head = torch.nn.Linear(d, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d, generator=g))
        if bias:
            head.bias.copy_(torch.randn(V, generator=g))
    return head


@pytest.mark.parametrize("shape, V, d, bias", [((3, 1), 37, 11, False), ((5, 7), 1001, 24, True), ((2,), 13, 5, True)])
def test_cpu_head_equals_float64_reference(shape, V, d, bias, path):
    g = torch.Generator().manual_seed(V + d)
    head = _head(V, d, bias, g)
    x = torch.randn(*shape, d, generator=g)
    want = x.double() @ head.weight.double().t() + (head.bias.double() if bias else 0)
    lm = _LM(head)
    with cpu_head(lm):
        assert "forward" in vars(head), "the head's forward is replaced inside"
        got = head(x)
    assert got.shape == (*shape, V) and got.is_contiguous()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * d)
    assert "forward" not in vars(head), "and restored after"
    assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight, head.bias))


@pytest.mark.parametrize("shape, V, d, bias, strided", [((2, 3), 41, 7, False, False), ((4, 5), 259, 16, True, False),
                                                       ((3, 7), 130, 9, True, True)])
def test_gradients_equal_float64_reference(shape, V, d, bias, strided, path):
    g = torch.Generator().manual_seed(3 * V + d)
    head = _head(V, d, bias, g)
    leaf = torch.randn(*shape, 2 * d if strided else d, generator=g, requires_grad=True)
    x = leaf[..., ::2] if strided else leaf  # every other feature: a non-contiguous input
    upstream = torch.randn(*shape, V, generator=g)
    with cpu_head(_LM(head)):
        head(x).backward(upstream)
    w64 = head.weight.detach().double().requires_grad_()
    b64 = head.bias.detach().double().requires_grad_() if bias else None
    x64 = x.detach().double().requires_grad_()
    y64 = x64 @ w64.t() + (b64 if bias else 0)
    y64.backward(upstream.double())
    x_grad = leaf.grad[..., ::2] if strided else leaf.grad
    if strided:
        assert torch.equal(leaf.grad[..., 1::2], torch.zeros_like(x_grad))
    for got, want in [(x_grad, x64.grad), (head.weight.grad, w64.grad)] + ([(head.bias.grad, b64.grad)] if bias else []):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * max(d, 8) * 4)


def test_head_found_through_engine_and_value_head():
    from transformers import GPT2Config, GPT2LMHeadModel

    from varpo.models.value_head import PolicyWithValueHead

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2, n_positions=16)).eval()
    assert output_head(lm) is lm.lm_head

    class Engine(torch.nn.Module):  # a DeepSpeed engine keeps the model as .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert output_head(Engine(PolicyWithValueHead(lm))) is lm.lm_head
    ids = torch.randint(0, 50, (2, 5))
    plain = lm(input_ids=ids).logits
    with cpu_head(Engine(lm)):
        got = lm(input_ids=ids).logits
        with cpu_head(lm):  # nested: the inner one leaves the outer's forward in place
            pass
        assert "forward" in vars(lm.lm_head)
    assert "forward" not in vars(lm.lm_head)
    assert torch.allclose(got, plain, rtol=1e-5, atol=1e-5)


def test_other_heads_are_left_alone():
    class Scaled(torch.nn.Linear):
        pass

    head = Scaled(4, 9)
    with cpu_head(_LM(head)):
        assert "forward" not in vars(head)
    plain = torch.nn.Linear(2, 2)
    with cpu_head(plain):  # no get_output_embeddings: nothing to do
        assert "forward" not in vars(plain)


def test_restored_when_the_forward_fails():
    head = torch.nn.Linear(3, 5)
    with pytest.raises(RuntimeError, match="boom"), cpu_head(_LM(head)):
        raise RuntimeError("boom")
    assert "forward" not in vars(head)


@pytest.mark.parametrize("shape, V, d, bias", [((3, 1), 37, 11, False), ((5, 7), 1001, 24, True), ((8,), 50, 16, False)])
def test_decode_head_equals_float64_reference(shape, V, d, bias):
    g = torch.Generator().manual_seed(5 * V + d)
    head = _head(V, d, bias, g)
    x = torch.randn(*shape, d, generator=g)
    want = x.double() @ head.weight.double().t() + (head.bias.double() if bias else 0)
    packed = onednn_pack(head.weight)
    with torch.no_grad(), decode_head(_LM(head)):
        assert "forward" in vars(head)
        got = head(x)
        # the weight is read once, on entry: a rollout's weights do not change inside it
        if packed is not None:
            head.weight.add_(1.0)
            assert torch.allclose(head(x).double(), want, rtol=1e-5, atol=1e-5 * d)
            head.weight.sub_(1.0)
    assert "forward" not in vars(head)
    assert got.shape == (*shape, V) and got.is_contiguous()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * d)


def test_decode_head_under_autograd_and_for_shards_keeps_the_differentiable_product():
    g = torch.Generator().manual_seed(9)
    head = _head(23, 6, True, g)
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    with decode_head(_LM(head)):
        head(x).sum().backward()  # grad enabled: the product reordered per call, differentiable
    assert torch.allclose(x.grad, head.weight.detach().sum(0).expand(4, 6), rtol=1e-5, atol=1e-5)
    assert torch.allclose(head.weight.grad, x.detach().sum(0).expand(23, 6), rtol=1e-5, atol=1e-5)
    assert torch.allclose(head.bias.grad, torch.full((23,), 4.0))
    head.weight.ds_id = 0  # a ZeRO-3 parameter: its data may be a shard gathered per forward
    try:
        assert onednn_pack(head.weight) is None
    finally:
        del head.weight.ds_id
    assert onednn_pack(head.weight.double()) is None  # float32 only


def test_no_rows_and_another_dtype_take_the_plain_product(path):
    g = torch.Generator().manual_seed(11)
    head = _head(19, 5, True, g)
    with cpu_head(_LM(head)):
        assert head(torch.zeros(0, 3, 5)).shape == (0, 3, 19)
        x = torch.randn(2, 5, generator=g, dtype=torch.float64)
        with pytest.raises(RuntimeError):  # as nn.Linear itself: a float64 input of a float32 head is refused
            head(x)


def test_flop_counter_sees_the_head(path):
    """torch's FlopCounterMode counts the head's product on either path: 2 · rows · V · d."""
    from torch.utils.flop_counter import FlopCounterMode

    head = _head(53, 12, False, torch.Generator().manual_seed(2))
    with cpu_head(_LM(head)), FlopCounterMode(display=False) as fc:
        head(torch.randn(3, 5, 12))
    assert fc.get_total_flops() == 2 * 15 * 53 * 12


@pytest.mark.skipif(not HAS_ONEDNN, reason="the frozen weight's kept reorder is oneDNN's (without it cpu_head is (W · hᵀ)ᵀ, tested above)")
def test_a_frozen_weight_is_reordered_once_and_again_when_it_changes():
    """A weight nothing trains (a reference's head) is reordered on first use and that copy kept:
    later forwards equal the float64 product without reordering again, a gradient still reaches the
    hidden states (a LoRA actor's frozen base head), and any change of the weight — in place, through
    `.data` (no version bump), or a new tensor — is seen by the next forward."""
    g = torch.Generator().manual_seed(17)
    head = _head(1003, 24, True, g).requires_grad_(False)
    lm = _LM(head)

    def check(x):
        with torch.no_grad(), cpu_head(lm):
            got = head(x)
        want = x.double() @ head.weight.double().t() + head.bias.double()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)

    x = torch.randn(6, 24, generator=g)
    check(x)
    first = lm_head._FROZEN_PACKS[head.weight][1]
    check(torch.randn(9, 24, generator=g))  # other rows: the same copy
    assert lm_head._FROZEN_PACKS[head.weight][1] is first
    with torch.no_grad():
        head.weight.mul_(1.5)  # in place: a version bump
    check(x)
    assert lm_head._FROZEN_PACKS[head.weight][1] is not first
    second = lm_head._FROZEN_PACKS[head.weight][1]
    head.weight.data.add_(torch.randn(1003, 24, generator=g))  # through .data: no version bump
    check(x)
    assert lm_head._FROZEN_PACKS[head.weight][1] is not second
    head.weight = torch.nn.Parameter(torch.randn(1003, 24, generator=g), requires_grad=False)  # a new tensor
    check(x)

    leaf = torch.randn(5, 24, generator=g, requires_grad=True)  # frozen head, trained hidden states
    upstream = torch.randn(5, 1003, generator=g)
    with cpu_head(lm):
        head(leaf).backward(upstream)
    torch.testing.assert_close(leaf.grad.double(), upstream.double() @ head.weight.double(), rtol=1e-5, atol=1e-4)
    assert head.weight.grad is None
    assert lm_head.frozen_pack(head.weight.detach().clone().requires_grad_(), 5) is None  # a trained weight: never kept
