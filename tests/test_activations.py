"""varpo.activations: GPT-2's elementwise gelu_new swapped for torch's fused tanh GELU, the
same function, on every model a run builds."""
from __future__ import annotations

import math

import pytest
import torch

from varpo.activations import fuse_activations


def _gpt2(seed=0, **over):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=97, n_embd=48, n_layer=3, n_head=4, n_inner=112, n_positions=64, **over)
    return GPT2LMHeadModel(conf).eval()


def _reference_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU written from its definition, in float64."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def test_the_fused_module_is_the_tanh_gelu_against_float64():
    from transformers.activations import NewGELUActivation

    act = fuse_activations(torch.nn.Sequential(NewGELUActivation()))[0]
    assert type(act).__name__ == "TanhGELU"
    for shape in [(7,), (3, 5, 13), (2, 129)]:
        x = torch.randn(*shape) * 4
        x.requires_grad_(True)
        y = act(x)
        torch.testing.assert_close(y.double(), _reference_gelu_tanh(x.detach()), rtol=1e-6, atol=1e-6)
        g = torch.randn(*shape)
        (gx,) = torch.autograd.grad(y, x, g)
        xr = x.detach().double().requires_grad_(True)
        (gr,) = torch.autograd.grad(_reference_gelu_tanh(xr), xr, g.double())
        torch.testing.assert_close(gx.double(), gr, rtol=1e-5, atol=1e-5)


def test_a_gpt2_with_fused_activations_computes_what_it_did_in_float64():
    from transformers.activations import NewGELUActivation

    model = _gpt2(seed=1).double()
    fused = fuse_activations(_gpt2(seed=1).double())
    assert sum(type(m) is NewGELUActivation for m in model.modules()) == 3
    assert not any(type(m) is NewGELUActivation for m in fused.modules())
    ids = torch.randint(0, 97, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    out, out_f = model(ids, attention_mask=mask), fused(ids, attention_mask=mask)
    torch.testing.assert_close(out_f.logits, out.logits, rtol=1e-10, atol=1e-10)
    out.logits.square().sum().backward()
    out_f.logits.square().sum().backward()
    for (n, p), (_, pf) in zip(model.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(pf.grad, p.grad, rtol=1e-9, atol=1e-9, msg=n)


def test_the_config_keeps_its_activation_name(tmp_path):
    import json

    model = fuse_activations(_gpt2())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_pytorch_tanh"])
def test_other_activations_are_left_alone(act):
    model = _gpt2(activation_function=act)
    before = [type(m) for m in model.modules()]
    assert [type(m) for m in fuse_activations(model).modules()] == before


def test_every_model_a_run_builds_goes_through_the_swap():
    """The roles (actor, reference, critic) and a DeepSpeed-built reward model come from
    varpo.engines.build_model."""
    from transformers.activations import NewGELUActivation

    from varpo.config import DeepSpeedConfig
    from varpo.engines import build_model, ds_config

    conf = ds_config(DeepSpeedConfig(), "actor", 2, trainable=True)
    model = build_model(lambda: _gpt2(), conf)
    assert not any(type(m) is NewGELUActivation for m in model.modules())
    assert sum(type(m).__name__ == "TanhGELU" for m in model.modules()) == 3
