"""Tiny real HF backbones (built from configs) with a word-level tokenizer, and synthetic
preference pairs whose label is readable from the words (good vs bad)."""
from __future__ import annotations

import json
import random

import pytest
import torch

WORDS = ["the", "food", "room", "staff", "view", "was", "and", "very", "a", "bit", "place", "we", "visited", "."]
GOOD = ["great", "lovely", "superb", "clean", "friendly"]
BAD = ["awful", "dirty", "rude", "poor", "noisy"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", *WORDS, *GOOD, *BAD])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]")


def llama_config(vocab_size: int = 64, hidden: int = 32, positions: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=positions, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2)


def gpt2_config(vocab_size: int = 64, hidden: int = 32, positions: int = 64):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=2, n_head=4, n_positions=positions,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def make_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(kind):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + " " + rng.choice(kind) + " ."

    return [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))), "chosen": text(GOOD),
             "rejected": text(BAD)} for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """An HF folder: a randomly initialised 2-layer Llama (32 dims) and its tokenizer."""
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config()).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs")
    for name, n, seed in (("train", 96, 1), ("eval", 40, 2)):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n, seed)))
    return path / "train.jsonl", path / "eval.jsonl"


@pytest.fixture
def rm_overrides(tiny_backbone, pair_files):
    """Config overrides training a small frozen-backbone ensemble on the synthetic pairs."""
    return [f"reward_training.backbone_path={tiny_backbone}", f"data.pairs_path={pair_files[0]}",
            f"data.eval_pairs_path={pair_files[1]}", "reward_training.num_heads=4", "reward_training.batch_size=16",
            "reward_training.epochs=2", "reward_training.eval_every=3", "reward_training.lora.enabled=false",
            "reward_training.lr=0.05", "reward_training.max_length=32"]
