"""The tiny causal LM of the embedded task: built from a config, pretrained on the corpus,
measured against a unigram baseline, and sampled from.

Conventions: a text is encoded as [BOS] tokens... [EOS]; the LM is trained to predict every token
after [BOS] (EOS included), and perplexities are exp(mean NLL per predicted token) over exactly
those positions, for the LM and the unigram baseline alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def build_model(cfg, tokenizer):
    """A LlamaForCausalLM sized by the TestbedConfig, special ids taken from the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(conf).to(torch.float32)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = conf.bos_token_id, conf.eos_token_id, conf.pad_token_id
    return model


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """[BOS] text [EOS] token ids per text; raises if one does not fit in max_length."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    out = [x + [tokenizer.eos_token_id] for x in ids]
    longest = max(len(x) for x in out)
    if longest > max_length:
        raise ValueError(f"a corpus text has {longest} tokens with BOS/EOS, above testbed.max_length={max_length}")
    return out


def _batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and a mask [B, T] (1 on real tokens)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _nll(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the predicted positions, and their count."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target, tmask = ids[:, 1:], mask[:, 1:].bool()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none")
    return nll[tmask.reshape(-1)].sum(), tmask.sum()


def pretrain(model, seqs: list[list[int]], cfg, pad_id: int, progress: bool = True) -> list[float]:
    """AdamW with linear warm-up and cosine decay; batches drawn by a seeded generator.
    Returns the per-step training losses (mean NLL per token)."""
    from ..outputs import progress as progress_bar

    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses: list[float] = []
    with progress_bar() as bar:
        task = bar.add_task("pretraining the testbed LM", total=cfg.train_steps, info="", visible=progress)
        for step in range(cfg.train_steps):
            idx = torch.randint(len(seqs), (cfg.batch_size,), generator=g).tolist()
            ids, mask = _batch([seqs[i] for i in idx], pad_id)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            total, count = _nll(model, ids, mask)
            loss = total / count
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 10 == 0 or step == cfg.train_steps - 1:
                bar.update(task, completed=step + 1, info=f"loss {loss.item():.3f}")
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> float:
    """exp(mean NLL per predicted token) of the LM on `seqs`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        t, c = _nll(model, *_batch(seqs[i : i + batch_size], pad_id))
        total, count = total + t.item(), count + int(c)
    return math.exp(total / count)


def unigram_perplexity(train: list[list[int]], heldout: list[list[int]], vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on `train`, on the same positions
    the LM predicts in `heldout` (every token after BOS)."""
    counts = torch.ones(vocab_size, dtype=torch.float64)
    for s in train:
        counts += torch.bincount(torch.tensor(s[1:]), minlength=vocab_size).double()
    logp = torch.log(counts / counts.sum())
    targets = torch.tensor([t for s in heldout for t in s[1:]])
    return math.exp(-logp[targets].mean().item())


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int = 256) -> list[str]:
    """One sampled continuation per prompt (text after the prompt, special tokens removed)."""
    model.eval()
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True)
            gen = model.generate(
                **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [s.strip() for s in out]
