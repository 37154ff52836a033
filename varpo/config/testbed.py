"""The embedded default task (docs/design.md §3). Owned by varpo/testbed; extend freely.

Every field except `cache_dir` is part of the cache key: change one and the testbed is rebuilt.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from .core import Section


class TestbedConfig(Section):
    __test__ = False  # not a pytest class

    seed: int = Field(0, description="seed of everything the testbed generates (corpus, init, sampling, labels)")
    cache_dir: str | None = Field(None, description="where built testbeds are cached; None: $VARPO_CACHE or ~/.cache/varpo")

    # corpus
    corpus_size: int = Field(12000, ge=10, description="generated texts used to train the tokenizer and the LM")
    heldout_size: int = Field(500, ge=5, description="generated texts kept out of training, for perplexities")
    degenerate_fraction: float = Field(0.05, ge=0.0, le=1.0, description="share of texts with degenerate (repetitive/broken) continuations")
    min_response_tokens: int = Field(8, ge=1, description="shortest continuation (tokens) in the corpus")
    max_response_tokens: int = Field(24, ge=1, description="longest continuation (tokens) in the corpus")
    vocab_size: int = Field(512, ge=16, description="upper bound of the word-level vocabulary (special tokens included)")

    # model (a LlamaForCausalLM)
    hidden_size: int = Field(128, ge=8, description="model width")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(4, ge=1, description="attention heads (must divide hidden_size)")
    intermediate_size: int = Field(256, ge=8, description="MLP width")
    max_length: int = Field(64, ge=16, description="context length (BOS + text + EOS must fit)")

    # pretraining
    train_steps: int = Field(1200, ge=1, description="optimizer steps of pretraining")
    batch_size: int = Field(32, ge=1, description="texts per pretraining step")
    lr: float = Field(3e-3, gt=0.0, description="peak AdamW learning rate (linear warm-up, cosine decay)")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay")
    threads: int | None = Field(None, ge=1, description="torch threads while building; None: leave torch's setting")

    # prompts and preference pairs
    num_train_prompts: int = Field(2000, ge=1, description="training prompts (opening clauses of fresh texts)")
    num_eval_prompts: int = Field(500, ge=1, description="evaluation prompts, disjoint from the training prompts")
    num_train_pairs: int = Field(2000, ge=0, description="preference pairs sampled on training prompts")
    num_eval_pairs: int = Field(500, ge=0, description="preference pairs sampled on evaluation prompts")
    bt_temperature: float = Field(0.1, ge=0.0, description="Bradley–Terry label noise: P(a≻b)=sigmoid((g_a−g_b)/T); 0: always the higher gold")
    sample_max_new_tokens: int = Field(28, ge=1, description="generation limit for pair samples and sample statistics")
    sample_temperature: float = Field(1.0, gt=0.0, description="sampling temperature of pair samples")
    gen_batch_size: int = Field(250, ge=1, description="prompts per generation batch while sampling pairs")

    @model_validator(mode="after")
    def _consistent(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.min_response_tokens > self.max_response_tokens:
            raise ValueError(f"min_response_tokens ({self.min_response_tokens}) exceeds max_response_tokens ({self.max_response_tokens})")
        if self.max_length < self.max_response_tokens + 20:
            raise ValueError(f"max_length ({self.max_length}) must leave room for an opening (≤15 tokens), "
                             f"max_response_tokens ({self.max_response_tokens}), BOS and EOS: need ≥ {self.max_response_tokens + 20}")
        return self
