"""Tiny models of each supported architecture, built from configs with the testbed's tokenizer
and saved as HF folders (no download), and a small preference-pair file from the testbed."""
from __future__ import annotations

import json

import pytest
import torch

ARCHS = ("llama", "gpt2", "qwen2", "mistral")


def arch_config(arch: str, tok):
    """A 2-layer, 64-wide model of `arch` (head_dim 32), with the tokenizer's special ids."""
    import transformers as tf

    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128, **ids)
    common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 128, "max_position_embeddings": 128, "tie_word_embeddings": False, **ids}
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[arch]
    return cls(**common)


def save_tiny(arch: str, tok_path: str, out) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(arch_config(arch, tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_models(testbed, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("archs")
    return {a: save_tiny(a, str(testbed.model_path), root / a) for a in ARCHS}


@pytest.fixture(scope="session")
def pairs_file(testbed, tmp_path_factory):
    path = tmp_path_factory.mktemp("arch_pairs") / "pairs.jsonl"
    rows = testbed.pairs("train")[:40]
    path.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for p in rows))
    return path
