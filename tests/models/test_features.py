"""Model options that depend on the machine (flash-attn, 4-bit) are refused before any model is
built, naming the field and what is missing; prompts go through the chat template when asked."""
from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from varpo.cli import app
from varpo.config import ConfigError, load_config
from varpo.config.environment import BNB_CPU_MIN, check_environment

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without a GPU")
def test_flash_attention_is_refused_on_cpu_before_anything_is_built(tmp_path):
    cfg = load_config(None, ["model.attn_implementation=flash_attention_2", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"model.attn_implementation=flash_attention_2: needs a CUDA GPU"):
        check_environment(cfg)
    res = CliRunner().invoke(app, ["train-ppo", "--set", "model.attn_implementation=flash_attention_2",
                                   "--set", "model.dtype=bfloat16", "--out", str(tmp_path / "run")])
    # `varpo` (cli.main) turns a ConfigError into exit status 2 with its message
    assert isinstance(res.exception, ConfigError) and "flash_attention_2" in str(res.exception)
    assert not (tmp_path / "run").exists()  # refused before any output was written


def test_flash_attention_needs_half_precision():
    with pytest.raises(ConfigError, match="model.dtype=bfloat16"):
        load_config(None, ["model.attn_implementation=flash_attention_2"])


def test_4bit_needs_adapters_and_no_zero3():
    with pytest.raises(ConfigError, match="lora.enabled=true and lora.critic=true"):
        load_config(None, ["model.quantization.load_in_4bit=true", "model.lora.enabled=true"])
    with pytest.raises(ConfigError, match="ZeRO-3 for actor, critic, reference"):
        load_config(None, ["model.quantization.load_in_4bit=true", "model.lora.enabled=true", "model.lora.critic=true",
                           "deepspeed.zero_stage=3"])


def test_4bit_is_refused_where_bitsandbytes_cannot_run_it():
    cfg = load_config(None, ["model.quantization.load_in_4bit=true", "model.lora.enabled=true", "model.lora.critic=true"])
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ConfigError, match=r"load_in_4bit=true: the bitsandbytes package is not installed"):
            check_environment(cfg)
    else:
        from varpo.config.environment import _version_tuple

        ok = not NO_CUDA or _version_tuple(importlib.metadata.version("bitsandbytes")) >= BNB_CPU_MIN
        if ok:
            check_environment(cfg)
        else:
            with pytest.raises(ConfigError, match="the first whose CPU 4-bit backend"):
                check_environment(cfg)


def test_prompts_through_the_chat_template_when_asked_and_present(testbed):
    from varpo.models.loading import load_tokenizer
    from varpo.ppo.tokens import tokenize_prompts

    tok = load_tokenizer(str(testbed.model_path))
    prompts = list(testbed.train_prompts[:3])
    raw = tokenize_prompts(tok, prompts, 64, "cpu")
    # no template: asking for it is an error, not a silent fallback to raw text
    from varpo.data.chat import NoChatTemplate

    with pytest.raises(NoChatTemplate, match="data.chat_template=true, and the policy's tokenizer has no chat template"):
        tokenize_prompts(tok, prompts, 64, "cpu", True)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    ids, mask, _ = tokenize_prompts(tok, prompts, 64, "cpu", True)
    for i, p in enumerate(prompts):
        want = tok(f"<|user|> {p} <|assistant|> ", add_special_tokens=False)["input_ids"]
        assert ids[i][mask[i].bool()].tolist() == want  # the template's text, no extra special tokens
        assert mask[i, -1] == 1  # left padded: the generation prompt ends every row
    assert not torch.equal(ids, raw[0]) if ids.shape == raw[0].shape else True
    assert torch.equal(tokenize_prompts(tok, prompts, 64, "cpu")[0], raw[0])  # the switch off: raw text
