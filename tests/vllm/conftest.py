"""vLLM tests run where vLLM is installed: the vLLM environment (.venv-vllm, built by
scripts/setup_vllm_env.sh; `bash scripts/test_vllm.sh` (one pytest process per file), which .ci/run runs with
VARPO_REQUIRE_VLLM=1). In an environment without vLLM they skip, naming that command; with
VARPO_REQUIRE_VLLM=1 a missing vLLM is a failure, so CI cannot pass them by skipping."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
WORDS = "the a cat dog sat ran on under mat log good bad very quite happy sad day night is was".split()


def save_word_tokenizer(path) -> dict[str, int]:
    """A word-level tokenizer over WORDS (ids 0-3: pad, bos, eos, unk) saved in `path`; its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    return vocab


@pytest.fixture(scope="session", autouse=True)
def _needs_vllm():
    if HAVE_VLLM:
        return
    if os.environ.get("VARPO_REQUIRE_VLLM") == "1":
        pytest.fail("VARPO_REQUIRE_VLLM=1 but vllm is not importable in this environment")
    pytest.skip("vLLM is not installed in this environment; build it with scripts/setup_vllm_env.sh and run "
                "`bash scripts/test_vllm.sh` (.ci/run does)")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama saved in HF format with head_dim 32 (vLLM's CPU attention needs ≥ 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    vocab = save_word_tokenizer(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(path)  # random init: a spread-out distribution, EOS sampled too
    return str(path)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    g = torch.Generator().manual_seed(1)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(n),), generator=g))
            for n in torch.randint(2, 6, (12,), generator=g)]
