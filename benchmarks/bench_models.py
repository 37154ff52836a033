"""The shared inputs of the PPO-vs-TRL benchmark: one tokenizer, one policy/backbone checkpoint and
one prompt set, built once from configs (random init, no downloads) and read by both sides.

Layout written by `build_inputs(work_dir, size)`:
  work_dir/policy/     causal LM + tokenizer (the policy, the reference, and the backbone of the
                       value model and of the reward model on both sides)
  work_dir/prompts.jsonl   {"prompt": "..."} rows, every prompt exactly `prompt_len` tokens long
  work_dir/inputs.json     the size preset and what was built (read by the runners)

Every prompt has the same token length so that both trainers pad to the same shape whatever
batches their samplers draw: the work per step is then identical by construction.
This file imports only torch/transformers/tokenizers, so it runs in the project's interpreter and
in the isolated TRL environment alike.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL = {"<unk>": 0, "<s>": 1, "</s>": 2}  # pad == eos == "</s>" (see build_tokenizer)


@dataclass(frozen=True)
class SizePreset:
    """Model and workload shape. `arch` is "llama" or "gpt2"."""

    name: str
    arch: str
    vocab_words: int  # word-level vocabulary (plus the 3 special tokens)
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    batch_size: int  # prompts per PPO step
    mini_batch_size: int  # sequences per optimizer step
    ppo_epochs: int
    prompt_len: int  # tokens per prompt (all prompts equal)
    response_len: int  # new tokens per response (min_new_tokens = max_new_tokens)
    n_prompts: int


SIZES = {
    # a tiny Llama: the CPU benchmark (same family as the embedded testbed's policy)
    "tiny": SizePreset("tiny", "llama", vocab_words=2000, hidden=128, layers=2, heads=4, intermediate=384,
                       max_positions=256, batch_size=16, mini_batch_size=8, ppo_epochs=2, prompt_len=16,
                       response_len=16, n_prompts=256),
    # GPT-2's shape scaled to 2 CPU cores: its 50k vocabulary, 64-token prompts and responses, 4 layers
    # of width 256 (16M parameters, 80% of them the tied embedding/LM head): compute-bound, the LM
    # head over the vocabulary dominates every forward, as it does for GPT-2 small
    "small": SizePreset("small", "gpt2", vocab_words=50254, hidden=256, layers=4, heads=4, intermediate=1024,
                        max_positions=256, batch_size=8, mini_batch_size=4, ppo_epochs=2, prompt_len=64,
                        response_len=64, n_prompts=512),
    # GPT-2 small (124M): 12 layers, 768 wide, 12 heads, GPT-2's vocabulary size; for a GPU
    "gpt2-small": SizePreset("gpt2-small", "gpt2", vocab_words=50254, hidden=768, layers=12, heads=12,
                             intermediate=3072, max_positions=1024, batch_size=64, mini_batch_size=16,
                             ppo_epochs=4, prompt_len=64, response_len=64, n_prompts=2048),
}


def vocabulary(n_words: int) -> list[str]:
    """Distinct lower-case pseudo-words, deterministic: one syllable, then two, then three..."""
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]  # 90 syllables
    words = itertools.chain.from_iterable(
        ("".join(t) for t in itertools.product(syll, repeat=k)) for k in itertools.count(1))
    return list(itertools.islice(words, n_words))


def build_tokenizer(words: list[str]):
    """A word-level fast tokenizer: whitespace split, one id per word, `<unk>` otherwise.
    pad and eos are the same token, as in GPT-2 and in TRL's examples; both trainers then treat a
    pad id inside a response the same way (it cannot be sampled: min_new_tokens masks eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(SPECIAL)
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
        padding_side="left", truncation_side="left",
    )


def model_config(p: SizePreset, vocab_size: int):
    ids = dict(bos_token_id=SPECIAL["<s>"], eos_token_id=SPECIAL["</s>"], pad_token_id=SPECIAL["</s>"])
    if p.arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab_size, hidden_size=p.hidden, num_hidden_layers=p.layers,
                           num_attention_heads=p.heads, num_key_value_heads=p.heads, intermediate_size=p.intermediate,
                           max_position_embeddings=p.max_positions, tie_word_embeddings=False, **ids)
    if p.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=vocab_size, n_embd=p.hidden, n_layer=p.layers, n_head=p.heads,
                          n_inner=p.intermediate, n_positions=p.max_positions, **ids)
    raise ValueError(f"size preset {p.name!r}: unknown arch {p.arch!r} (expected 'llama' or 'gpt2')")


def make_prompts(words: list[str], n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(n)]


def build_inputs(work_dir: str | Path, size: str, seed: int = 0) -> dict:
    """Build (or reuse, when `inputs.json` says the same size and seed) the shared inputs."""
    import torch
    from transformers import AutoModelForCausalLM

    if size not in SIZES:
        raise ValueError(f"--size {size!r}: expected one of {sorted(SIZES)}")
    p = SIZES[size]
    work = Path(work_dir)
    meta_path = work / "inputs.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("size") == size and meta.get("seed") == seed:
            return meta
    work.mkdir(parents=True, exist_ok=True)
    words = vocabulary(p.vocab_words)
    tok = build_tokenizer(words)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(p, len(tok)), dtype=torch.float32)
    policy = work / "policy"
    model.save_pretrained(str(policy), safe_serialization=True)
    tok.save_pretrained(str(policy))
    prompts = make_prompts(words, p.n_prompts, p.prompt_len, seed)
    with open(work / "prompts.jsonl", "w") as f:
        for s in prompts:
            f.write(json.dumps({"prompt": s}) + "\n")
    meta = {"size": size, "seed": seed, "preset": asdict(p), "policy_path": str(policy),
            "prompts_path": str(work / "prompts.jsonl"), "vocab_size": len(tok),
            "n_params": sum(t.numel() for t in model.parameters())}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def load_prompts(path: str | Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__":  # a helper, imported by the benchmark scripts: --help says what it holds
    import argparse

    argparse.ArgumentParser(prog="benchmarks/bench_models.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
