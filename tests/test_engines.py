"""varpo.engines.train_engine on a real (CPU, one-rank) DeepSpeed engine: gradient clipping folded
into the fused AdamW step at ZeRO stage 0 in fp32, DeepSpeed's own clipping everywhere else."""
import copy

import pytest
import torch

from varpo.config import DeepSpeedConfig
from varpo.engines import _clip_in_fused_step, ds_config, train_engine

LR, WD, MAX_NORM = 1e-2, 0.1, 1.0
LR_OF = {"2.": 3e-2}  # the last layer in its own parameter group


def _mlp(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def _engine(model: torch.nn.Module, stage: int = 0, lr_lambda=None, clip: float = MAX_NORM):
    from varpo.dist import init_distributed

    init_distributed()
    conf = ds_config(DeepSpeedConfig(zero_stage=stage, gradient_clipping=clip), "actor", 2, trainable=True)
    return train_engine(model, conf, lr=LR, weight_decay=WD, lr_of=LR_OF, lr_lambda=lr_lambda)


def _loss(model: torch.nn.Module, x: torch.Tensor, scale: float) -> torch.Tensor:
    return model(x).square().sum() * scale


def _reference_run(model: torch.nn.Module, batches, lr_lambda, clip: bool) -> list[torch.Tensor]:
    """What DeepSpeed does at stage 0 in fp32, step by step: backward, clip_grad_norm_, a plain
    (single-tensor) AdamW step, the learning-rate schedule."""
    last = [p for n, p in model.named_parameters() if n.startswith("2.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("2.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": LR}, {"params": last, "lr": LR_OF["2."]}], lr=LR,
                            weight_decay=WD, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    norms = []
    for x, scale in batches:
        _loss(model, x, scale).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM if clip else float("inf")))
        opt.step()
        opt.zero_grad()
        sched.step()
    return norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norms", ["above", "below"])
def test_clipping_in_the_fused_step_is_clip_grad_norm_then_adamw(norms, dtype):
    """Three steps whose gradient norms differ (Adam's first step alone hardly depends on the
    gradient's scale): the parameters after them are those of clip_grad_norm_ + a plain AdamW."""
    model = _mlp(dtype)
    ref, unclipped = copy.deepcopy(model), copy.deepcopy(model)
    scales = [30.0, 3.0, 100.0] if norms == "above" else [0.02, 0.003, 0.05]
    torch.manual_seed(1)
    batches = [(torch.randn(2, 8, dtype=dtype), s) for s in scales]

    def lr_lambda(update):
        return 1.0 / (update + 1)

    engine = _engine(model, lr_lambda=lr_lambda)
    assert engine.gradient_clipping() == 0.0 and engine.optimizer.defaults["fused"]
    got_norms = []
    for x, scale in batches:
        engine.backward(_loss(engine, x, scale))
        engine.step()
        got_norms.append(engine.get_global_grad_norm())
    want_norms = _reference_run(ref, batches, lr_lambda, clip=True)
    _reference_run(unclipped, batches, lr_lambda, clip=False)

    assert all((n > MAX_NORM) == (norms == "above") for n in want_norms)
    torch.testing.assert_close(torch.stack(got_norms), torch.stack(want_norms).float(), rtol=1e-6, atol=0)
    for p, q, u in zip(model.parameters(), ref.parameters(), unclipped.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        if norms == "above":  # the comparison sees the clipping
            assert (p - u).abs().max() > 1e-4


def test_deepspeed_keeps_its_own_clipping_elsewhere():
    """Only stage 0 in fp32 with the fused AdamW moves the clipping; ZeRO stages 1-3 (which wrap the
    optimizer), bf16/fp16 and a foreach AdamW leave it to DeepSpeed."""
    fused = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), fused=True)
    foreach = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), foreach=True)

    def conf(**kw):
        return ds_config(DeepSpeedConfig(**kw), "actor", 2, trainable=True)

    assert _clip_in_fused_step(conf(), fused)
    assert not _clip_in_fused_step(conf(), foreach)
    assert not _clip_in_fused_step(conf(gradient_clipping=0.0), fused)
    for kw in ({"zero_stage": 1}, {"zero_stage": 2}, {"zero_stage": 3}, {"precision": "bf16"}, {"precision": "fp16"}):
        c = conf(**kw)
        assert c["gradient_clipping"] == MAX_NORM and not _clip_in_fused_step(c, fused), kw

    engine = _engine(_mlp(), stage=1)  # a real engine: DeepSpeed's config keeps the threshold
    assert engine.gradient_clipping() == MAX_NORM
    assert not engine.optimizer.optimizer._optimizer_step_pre_hooks
    for stage in (0, 1):  # 0 disables, as the config says (left out, DeepSpeed 0.19 would clip at 1.0)
        engine = _engine(_mlp(), stage=stage, clip=0.0)
        assert engine.gradient_clipping() == 0.0


def test_checkpoints_of_a_folded_engine_round_trip(tmp_path):
    """The fused optimizer's grad_scale is an attribute, not state: DeepSpeed's checkpoint neither
    carries it nor trips over it, and a resumed engine steps as the saved one does."""
    torch.manual_seed(1)
    x1, x2 = torch.randn(2, 8), torch.randn(2, 8)
    a = _engine(_mlp())
    a.backward(_loss(a, x1, 30.0))
    a.step()
    assert torch.is_tensor(a.optimizer.grad_scale)
    saved = a.optimizer.state_dict()
    assert set(saved) == {"state", "param_groups"} and not any("grad_scale" in g for g in saved["param_groups"])
    a.save_checkpoint(str(tmp_path), tag="t")
    b = _engine(_mlp())
    b.load_checkpoint(str(tmp_path), tag="t")
    for e in (a, b):
        e.backward(_loss(e, x2, 30.0))
        e.step()
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
