"""What a user brings: a tiny Llama policy and a Llama sequence-classification reward model
(num_labels 1) sharing a word-level tokenizer with a chat template, all built from configs here
and saved as HF folders (no download); and preference data in the formats users have
(conversational, HH-RLHF), written as files."""
from __future__ import annotations

import json
import random

import pytest
import torch

WORDS = ("the a cat dog sat ran on under mat log good bad very quite happy sad day night is was what colour "
         "sky blue green grass").split()
GOOD, BAD = ("good", "happy", "day"), ("bad", "sad", "night")
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>",
                                          "<|end|>", "Human:", "Assistant:", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # as Llama's
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    if chat_template:
        tok.chat_template = TEMPLATE
    return tok


def llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       **kw)


def save_policy(path, chat_template: bool = True) -> str:
    from transformers import LlamaForCausalLM

    tok = make_tokenizer(chat_template)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def save_reward_model(path, num_labels: int = 1, seed: int = 1) -> str:
    from transformers import LlamaForSequenceClassification

    tok = make_tokenizer()
    torch.manual_seed(seed)
    LlamaForSequenceClassification(llama_config(tok, num_labels=num_labels)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def question(rng) -> str:
    return " ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(2, 4)))


def conversational_pairs(n: int, seed: int) -> list[dict]:
    """UltraFeedback's layout: whole conversations sharing the user's turn(s); some multi-turn."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = [user(question(rng))]
        if i % 3 == 0:
            turns += [assistant(question(rng)), user(question(rng))]
        good = " ".join(rng.choice(GOOD) for _ in range(3))
        bad = " ".join(rng.choice(BAD) for _ in range(3))
        rows.append({"chosen": [*turns, assistant(good)], "rejected": [*turns, assistant(bad)]})
    return rows


def hh_pairs(n: int, seed: int) -> list[dict]:
    """HH-RLHF's layout: two strings that share the conversation, no prompt column."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        h = f"\n\nHuman: {question(rng)}\n\nAssistant:"
        rows.append({"chosen": f"{h} {' '.join(rng.choice(GOOD) for _ in range(3))}",
                     "rejected": f"{h} {' '.join(rng.choice(BAD) for _ in range(3))}"})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def user_models(tmp_path_factory):
    """{"policy", "policy_no_template", "reward_model", "classifier" (num_labels 2)}: HF folders."""
    root = tmp_path_factory.mktemp("user_models")
    return {"policy": save_policy(root / "policy"),
            "policy_no_template": save_policy(root / "policy_plain", chat_template=False),
            "reward_model": save_reward_model(root / "rm"),
            "classifier": save_reward_model(root / "clf", num_labels=2)}


@pytest.fixture(scope="session")
def user_data(tmp_path_factory):
    """{"conv_pairs", "conv_eval_pairs", "hh_pairs", "conv_prompts"}: JSONL files."""
    root = tmp_path_factory.mktemp("user_data")
    rng = random.Random(5)
    return {
        "conv_pairs": write_jsonl(root / "conv_pairs.jsonl", conversational_pairs(48, 1)),
        "conv_eval_pairs": write_jsonl(root / "conv_eval.jsonl", conversational_pairs(12, 2)),
        "hh_pairs": write_jsonl(root / "hh_pairs.jsonl", hh_pairs(48, 3)),
        "conv_prompts": write_jsonl(root / "conv_prompts.jsonl",
                                    [{"prompt": [user(question(rng))]} for _ in range(24)]),
    }


@pytest.fixture
def ppo_overrides():
    """A 2-step PPO on the tiny models: small batches, short responses."""
    return ["ppo.steps=2", "ppo.batch_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1",
            "generation.max_new_tokens=4", "generation.max_prompt_len=24", "ppo.log_samples_every=0"]
