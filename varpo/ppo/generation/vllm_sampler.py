"""vLLM draws each token by inverse transform too (generation.sampler: inverse_cdf), as HF generate
does in varpo (varpo.ppo.generation.sampling): one uniform per sequence against the float64
cumulative distribution of softmax(logits), instead of vLLM's CPU sampler, which hashes and takes
two logarithms for every entry of the vocabulary (Gumbel-max; 3.9 ms of a 19 ms decoding step at
8 × 50k, one core, against about 1 ms for the cumulative sum).

How: the requests are greedy (temperature 0) and carry their sampling in `extra_args`; this logits
processor, the last of vLLM's (after its built-in min-tokens EOS mask and logit bias), draws each
of its rows and leaves 0 at the drawn token and −inf elsewhere, so the greedy argmax takes it. The
log-probs the engine returns are its raw ones, computed before any processor: the trainer's
definition, unaffected. Used only where that is all the trainer reads and the draw is from
softmax(logits) itself (`uses_inverse_cdf`): a CPU engine, temperature 1, no top-k/top-p, the raw
log-probs taken as the old log-probs. Otherwise (another temperature, top-k, top-p, processed log-probs for the
trainer to compare) vLLM samples as it always has.

Each request's uniforms come from its own torch generator seeded with the request's seed
(varpo.ppo.generation.vllm.request_seeds): a rollout is a function of (seed, step, rank), whatever
order or batch the scheduler puts the requests in."""
from __future__ import annotations

import torch

from .sampling import sample_inverse_cdf

try:  # importable without vLLM (the package's import test walks every module); used only with it
    from vllm.v1.sample.logits_processor import LogitsProcessor
except ImportError:  # pragma: no cover - exercised in the vLLM environment
    LogitsProcessor = object

KEY = "varpo_inverse_cdf"  # SamplingParams.extra_args[KEY] = {"seed": int}
FQCN = f"{__name__}:InverseCDFLogitsProcessor"


def uses_inverse_cdf(gen, raw_old_logprobs: bool, cuda: bool = False) -> bool:
    """Whether vLLM rollouts draw by inverse transform (module docstring): on a CPU (a GPU's sampler
    does not pay per vocabulary entry what a CPU core does), generation.sampler is inverse_cdf, the
    draw is from softmax(logits) (temperature 1, top-k 0, top-p 1) and the engine returns its raw
    log-probs (the processed ones would be the one-hot this processor leaves)."""
    return not cuda and gen.sampler == "inverse_cdf" and raw_old_logprobs and gen.temperature == 1.0 \
        and gen.top_k == 0 and gen.top_p >= 1.0


class InverseCDFLogitsProcessor(LogitsProcessor):
    """The last logits processor of a vLLM engine: draws the rows of requests that ask for it."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.generators: dict[int, torch.Generator] = {}  # persistent-batch row -> its request's generator

    @classmethod
    def validate_params(cls, params) -> None:
        args = (params.extra_args or {}).get(KEY)
        if args is None:
            return
        if not isinstance(args, dict) or not isinstance(args.get("seed"), int):
            raise ValueError(f"SamplingParams.extra_args[{KEY!r}] must be {{'seed': int}}, got {args!r}")
        if params.temperature != 0.0:
            raise ValueError(f"SamplingParams.extra_args[{KEY!r}] needs temperature 0 (greedy over the drawn "
                             f"one-hot logits), got temperature {params.temperature}")

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax

    def update_state(self, batch_update) -> None:
        from vllm.v1.sample.logits_processor.builtin import process_dict_updates

        def new_state(params, _prompt_ids, _output_ids):
            args = (params.extra_args or {}).get(KEY)
            return None if args is None else torch.Generator().manual_seed(args["seed"])

        process_dict_updates(self.generators, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.generators:
            return logits
        rows = sorted(self.generators)
        u = torch.tensor([torch.rand((), dtype=torch.float64, generator=self.generators[r]).item() for r in rows],
                         dtype=torch.float64)
        if len(rows) == logits.shape[0]:  # the usual case: every request of the batch is ours
            drawn = sample_inverse_cdf(logits, uniforms=u).to(logits.device)
            return logits.fill_(float("-inf")).scatter_(1, drawn, 0.0)
        idx = torch.tensor(rows, device=logits.device)
        drawn = sample_inverse_cdf(logits[idx], uniforms=u).to(logits.device)
        one_hot = torch.full((len(rows), logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        logits[idx] = one_hot.scatter_(1, drawn, 0.0)
        return logits
