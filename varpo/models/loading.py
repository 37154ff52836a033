"""Loading HF models and tokenizers the way every varpo role does: `from_pretrained` options
(dtype, attention kernel, 4-bit base), left-padding tokenizers, dropout off, parameter counts."""
from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_kwargs(model_cfg, *, quantize: bool = True) -> dict:
    """Keyword arguments for `from_pretrained` from `cfg.model` (a ModelConfig): dtype, the
    attention implementation and, when configured (and `quantize`), the 4-bit bitsandbytes config."""
    kw: dict = {"dtype": DTYPES[model_cfg.dtype]}
    if model_cfg.attn_implementation is not None:
        kw["attn_implementation"] = model_cfg.attn_implementation
    q = model_cfg.quantization
    if quantize and q.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=DTYPES[q.compute_dtype])
        kw["dtype"] = DTYPES[q.compute_dtype]  # the unquantized layers (norms, embeddings, head)
    return kw


def attn_kwargs(model_cfg) -> dict:
    """Only the attention implementation (for models whose dtype is chosen elsewhere)."""
    impl = model_cfg.attn_implementation
    return {} if impl is None else {"attn_implementation": impl}


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting ZeRO-3 partitioned parameters at full size and a
    4-bit packed parameter at its unpacked size."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def load_tokenizer(path: str):
    """A tokenizer for PPO: a pad token (EOS when it has none), prompts padded and truncated on the left."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # prompts are left-padded so that generation continues at the end
    tok.truncation_side = "left"  # an over-long prompt keeps its end, which the response continues
    return tok


def disable_dropout(model: nn.Module) -> nn.Module:
    """PPO compares log-probs of the same tokens at rollout and update time; dropout would make
    them differ for no reason (TRL and OpenRLHF disable it too)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model
