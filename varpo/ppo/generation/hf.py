"""HF generate with the trained actor itself: no second copy of the weights, so nothing to sync.
Under ZeRO-3 the actor's parameters are gathered for the rollout (zero3_gather.py); with
generation.logprobs_from_generate the old log-probs are read off generate's own logits
(logprobs.py). Tokens are drawn by inverse transform (sampling.py) unless generation.sampler says
multinomial."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ...config import GenerationConfig, KernelsConfig
from ...models.value_head import causal_lm
from ...seeds import derive_seed
from ..experience import Experience
from ..lm_head import decode_head
from ..tokens import response_mask_from_ids
from .logprobs import GenerationLogprobs
from .sampling import InverseCDFSampler
from .zero3_gather import generation_gather


class HFRolloutEngine:
    name = "hf"

    def __init__(self, cfg, actor, tokenizer, rank: int):
        self.cfg, self.actor, self.tokenizer, self.rank = cfg, actor, tokenizer, rank

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Experience:
        # HF samples from the global torch generator
        torch.manual_seed(derive_seed("sampling", self.cfg.seed, step, self.rank))
        # with generation.logprobs_from_generate the old log-probs are read off generate's own logits
        record = self.cfg.kernels if self.cfg.generation.logprobs_from_generate else None
        return generate(self.actor, self.tokenizer, prompt_ids, prompt_mask, self.cfg.generation, record_logprobs=record)

    def sync_weights(self, actor) -> None:
        pass

    def close(self) -> None:
        pass


@torch.no_grad()
def generate(actor, tokenizer, prompt_ids, prompt_mask, gen: GenerationConfig,
             record_logprobs: KernelsConfig | None = None) -> Experience:
    """Sample responses: the one place an `Experience` is created (its rollout fields). `actor` is a DeepSpeed engine or a bare HF model; under ZeRO-3 its
    parameters are gathered as `gen.zero3_gather` says (varpo.ppo.generation.zero3_gather), and
    every rank must then call generate together. With `record_logprobs` (the kernels config) the
    rollout's old log-probs `logp` are read off generate's own logits (varpo.ppo.generation.logprobs)
    instead of needing a second actor forward."""
    from transformers import GenerationConfig as HFGen

    tokens = dict(max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id)
    if gen.sampler == "inverse_cdf":  # greedy over scores our last processor has made one-hot (sampling.py)
        hf, processors = HFGen(do_sample=False, **tokens), [InverseCDFSampler(gen.temperature, gen.top_k, gen.top_p)]
    else:
        hf, processors = HFGen(do_sample=True, temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p,
                               **tokens), None
    # the causal LM generates (an actor with a shared-trunk value head: its policy, without the head)
    actor_module = causal_lm(getattr(actor, "module", actor))
    was_training = actor_module.training
    actor_module.eval()
    rec = GenerationLogprobs(actor_module, gen.temperature, record_logprobs) if record_logprobs else nullcontext()
    with generation_gather(actor, gen.zero3_gather, gen.zero3_gather_budget_mb, module=actor_module) as synced_gpus, \
            rec, decode_head(actor_module):
        out = actor_module.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=hf, synced_gpus=synced_gpus,
            logits_processor=processors,
        )
    actor_module.train(was_training)
    response = out[:, prompt_ids.shape[1]:]
    logp = rec.result(response) if record_logprobs and response.shape[1] else None
    if response.shape[1] == 0:  # every sequence stopped at once; keep one (pad) position
        response = torch.full_like(prompt_ids[:, :1], tokenizer.pad_token_id)
    mask, has_eos = response_mask_from_ids(response, tokenizer.eos_token_id)
    response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    return Experience(prompt_ids, prompt_mask, response, mask, has_eos, logp=logp)
