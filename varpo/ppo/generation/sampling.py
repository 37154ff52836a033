"""Drawing the next token by inverse transform: one uniform number per sequence against the
cumulative distribution, instead of torch.multinomial, which on a CPU draws an exponential variate
for every entry of the vocabulary. On the ppo_vs_trl `small` workload (8 × 50k entries per step,
one core, quiet) a 64-token rollout took 2.05 s with torch.multinomial and 1.55 s with this
(benchmarks/results/decode_sampling). Same distribution: a token is drawn with probability
softmax(processed logits).

HF generate runs greedy (do_sample=False) with `InverseCDFSampler` last in its logits-processor
list: HF's own processors (min_new_tokens' EOS mask) run first, then temperature, top-k and top-p
(HF's warpers, in HF's sampling order), then the draw, which leaves 0 at the drawn token and −inf
elsewhere, so the greedy argmax takes it. The uniforms come from the global torch generator, which
the rollout seeds per (seed, step, rank): a resumed run draws what the uninterrupted one drew.
`generation.sampler: multinomial` keeps HF's own sampler (the draws of runs made before this one
existed)."""
from __future__ import annotations

import torch


def sample_inverse_cdf(logits: torch.Tensor, generator: torch.Generator | None = None,
                       uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """[B, V] logits (−inf: impossible) -> [B, 1] token ids drawn from softmax(logits), with one
    uniform in [0, 1) per row (`uniforms` [B], float64, or drawn from `generator`). The cumulative
    sum runs in float64: in float32 a token of probability below half a unit in the last place of
    the running sum (6e-8 near 1) would be dropped, 1.5e-3 of mass at worst over 50k tokens."""
    p = (logits - logits.amax(-1, keepdim=True)).double().exp()
    cdf = p.cumsum(-1)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0], dtype=torch.float64, device=logits.device, generator=generator)
    u = uniforms.to(cdf.device, torch.float64).reshape(-1, 1) * cdf[:, -1:]
    # the first token whose cumulative mass exceeds u: a zero-probability token never does
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1)


class InverseCDFSampler:
    """The last logits processor of a greedy HF generate that makes it sample (module docstring)."""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
                       ([TopKLogitsWarper(top_k)] if top_k > 0 else []) + \
                       ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for w in self.warpers:
            scores = w(input_ids, scores)
        drawn = sample_inverse_cdf(scores)
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)
