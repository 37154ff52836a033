"""Build (or reuse) the embedded default task and cache it, keyed by the config.

Cache layout: <root>/testbed-<config_hash>-v<FORMAT>/ with
    model/                  HF folder: LlamaForCausalLM (safetensors) + word-level tokenizer
    prompts_train.jsonl     {"prompt": ...} per line (readable by varpo.data.load_prompts)
    prompts_eval.jsonl
    pairs_train.jsonl       {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "p_chosen"};
                            chosen/rejected are continuations (the prompt excluded; the full text
                            is prompt + " " + response), as the LM samples them after the prompt
    pairs_eval.jsonl
    testbed.json            the build's numbers (perplexities, sample gold statistics, timings)
    config.yaml             the resolved TestbedConfig
A build happens in a temporary sibling folder renamed into place when complete, under a file lock:
concurrent processes build once, and nobody ever sees half a testbed.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config.core import config_hash, redacted_dict, save_resolved
from ..config.testbed import TestbedConfig
from ..outputs import read_jsonl, write_json

FORMAT_VERSION = 1  # bump when the build's output changes for the same config


def cache_root(cfg: TestbedConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("VARPO_CACHE") or Path.home() / ".cache" / "varpo"
    return Path(root).expanduser()


# fields added after the first release: left out of the key while at their defaults, so the
# default task keeps the cache folders built before they existed
_LATE_FIELDS = {"task": "sentiment", "overopt_threshold": 3, "label_flip": 0.0}


def cache_key(cfg: TestbedConfig) -> str:
    """The folder name: a hash of every field except where the cache lives."""
    fields = {k: v for k, v in redacted_dict(cfg.model_copy(update={"cache_dir": None})).items()
              if not (k in _LATE_FIELDS and v == _LATE_FIELDS[k])}
    return f"testbed-{config_hash(fields)}-v{FORMAT_VERSION}"


def base_lm_config(cfg: TestbedConfig) -> TestbedConfig:
    """The default-task testbed with the same corpus and LM: a task other than sentiment reuses its
    model and prompts and only labels its own pairs."""
    defaults = TestbedConfig()
    keep_default = ("task", "overopt_threshold", "label_flip", "num_train_pairs", "num_eval_pairs", "bt_temperature")
    return cfg.model_copy(update={k: getattr(defaults, k) for k in keep_default})


@dataclass
class Testbed:
    __test__ = False  # not a pytest class

    dir: Path
    config: TestbedConfig
    stats: dict
    cache_hit: bool
    train_prompts: list[str] = field(repr=False)
    eval_prompts: list[str] = field(repr=False)

    @property
    def model_path(self) -> Path:
        """HF folder with the pretrained LM and its tokenizer (`from_pretrained(model_path)`)."""
        return self.dir / "model"

    def pairs_path(self, split: str = "train") -> Path:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        return self.dir / f"pairs_{split}.jsonl"

    def pairs(self, split: str = "train") -> list[dict]:
        """Preference pairs of a split: {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "p_chosen"}."""
        return read_jsonl(self.pairs_path(split))

    @classmethod
    def load(cls, path: str | Path, cache_hit: bool = True) -> Testbed:
        import yaml

        path = Path(path)
        cfg = TestbedConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
        return cls(
            dir=path, config=cfg, stats=json.loads((path / "testbed.json").read_text()), cache_hit=cache_hit,
            train_prompts=[r["prompt"] for r in read_jsonl(path / "prompts_train.jsonl")],
            eval_prompts=[r["prompt"] for r in read_jsonl(path / "prompts_eval.jsonl")],
        )


def _unique_openings(n: int, rng: random.Random, exclude: set[str], cfg: TestbedConfig) -> list[str]:
    from .corpus import generate_text

    out: list[str] = []
    seen = set(exclude)
    for _ in range(200 * n):
        t = generate_text(rng, cfg.degenerate_fraction, cfg.min_response_tokens, cfg.max_response_tokens)
        if t.opening not in seen:
            seen.add(t.opening)
            out.append(t.opening)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct prompts from the grammar (lower testbed.num_*_prompts)")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.pstdev(xs)) if xs else (float("nan"), float("nan"))


def _build_into(out: Path, cfg: TestbedConfig, progress: bool, key: str) -> dict:
    """Generate everything into `out`; returns the stats written to testbed.json."""
    import torch

    from . import lm
    from .corpus import generate_corpus
    from .gold import gold_reward
    from .pairs import sample_pairs
    from .tokenizer import train_tokenizer

    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        return now

    t = time.perf_counter()
    texts = generate_corpus(cfg.corpus_size + cfg.heldout_size, seed=cfg.seed, degenerate_fraction=cfg.degenerate_fraction,
                            min_tokens=cfg.min_response_tokens, max_tokens=cfg.max_response_tokens)
    train_texts, heldout_texts = texts[: cfg.corpus_size], texts[cfg.corpus_size :]
    t = lap("corpus", t)

    tokenizer = train_tokenizer((x.full for x in train_texts), cfg.vocab_size)
    train_ids = lm.encode_texts(tokenizer, [x.full for x in train_texts], cfg.max_length)
    heldout_ids = lm.encode_texts(tokenizer, [x.full for x in heldout_texts], cfg.max_length)
    t = lap("tokenizer", t)

    model = lm.build_model(cfg, tokenizer)
    losses = lm.pretrain(model, train_ids, cfg, tokenizer.pad_token_id, progress=progress)
    t = lap("pretraining", t)
    ppl = lm.perplexity(model, heldout_ids, tokenizer.pad_token_id)
    uni = lm.unigram_perplexity(train_ids, heldout_ids, len(tokenizer))
    model_dir = out / "model"
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise here
    try:
        model.save_pretrained(model_dir)  # safetensors, the default
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(model_dir)
    t = lap("evaluate_and_save", t)

    prng = random.Random(f"prompts-{cfg.seed}")
    train_prompts = _unique_openings(cfg.num_train_prompts, prng, set(), cfg)
    eval_prompts = _unique_openings(cfg.num_eval_prompts, prng, set(train_prompts), cfg)
    for split, ps in (("train", train_prompts), ("eval", eval_prompts)):
        (out / f"prompts_{split}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ps))
    t = lap("prompts", t)

    def sample(prompts: list[str], seed: int) -> list[str]:
        return lm.sample_responses(model, tokenizer, prompts, max_new_tokens=cfg.sample_max_new_tokens,
                                   temperature=cfg.sample_temperature, seed=seed, batch_size=cfg.gen_batch_size)

    pair_rows: dict[str, list[dict]] = {}
    dropped = 0
    for k, (split, ps, n) in enumerate((("train", train_prompts, cfg.num_train_pairs),
                                         ("eval", eval_prompts, cfg.num_eval_pairs))):
        rows, d = sample_pairs(ps, n, sample, gold_reward, cfg.bt_temperature, seed=cfg.seed * 10 + k, flip=cfg.label_flip)
        pair_rows[split], dropped = rows, dropped + d
        (out / f"pairs_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = lap("pairs", t)

    all_rows = pair_rows["train"] + pair_rows["eval"]
    samples = [y for r in all_rows for y in (r["chosen"], r["rejected"])]
    sample_gold = [g for r in all_rows for g in (r["chosen_gold"], r["rejected_gold"])]
    if not samples:  # no pairs requested: measure the LM on one sample per eval prompt instead
        samples = sample(eval_prompts, cfg.seed * 1000 + 7)
        sample_gold = gold_reward(eval_prompts, samples)
    g_mean, g_std = _mean_std(sample_gold)
    c_mean, c_std = _mean_std(gold_reward([x.opening for x in heldout_texts], [x.continuation for x in heldout_texts]))
    lengths = [len(s.split()) for s in samples]
    stats = {
        "heldout_perplexity": ppl,
        "unigram_perplexity": uni,
        "sample_gold_reward_mean": g_mean,
        "sample_gold_reward_std": g_std,
        "n_samples": len(samples),
        "sample_tokens_mean": statistics.fmean(lengths) if lengths else 0.0,
        "sample_truncated_rate": sum(n >= cfg.sample_max_new_tokens for n in lengths) / max(1, len(lengths)),
        "corpus_gold_reward_mean": c_mean,
        "corpus_gold_reward_std": c_std,
        "final_train_loss": statistics.fmean(losses[-20:]),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "n_train_prompts": len(train_prompts),
        "n_eval_prompts": len(eval_prompts),
        "n_train_pairs": len(pair_rows["train"]),
        "n_eval_pairs": len(pair_rows["eval"]),
        "pairs_dropped": dropped,
        "pairs_chosen_higher_gold_rate": (sum(r["chosen_gold"] > r["rejected_gold"] for r in all_rows) / len(all_rows))
        if all_rows else None,
        "torch_threads": torch.get_num_threads(),
        "timings": timings,
        "seconds": round(time.perf_counter() - t_start, 3),
        "key": key,
    }
    return stats


def _build_task_into(out: Path, cfg: TestbedConfig, base: Testbed, key: str) -> dict:
    """A task other than the default: the base testbed's model and prompts, pairs labelled by
    this task's gold (with its label noise), and where the reference LM's samples fall."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import lm
    from .pairs import sample_pairs
    from .tasks import task_gold

    t_start = time.perf_counter()
    shutil.copytree(base.model_path, out / "model")
    for split in ("train", "eval"):
        shutil.copy(base.dir / f"prompts_{split}.jsonl", out / f"prompts_{split}.jsonl")
    model = AutoModelForCausalLM.from_pretrained(str(base.model_path))
    tokenizer = AutoTokenizer.from_pretrained(str(base.model_path))
    gold = task_gold(cfg)

    def sample(prompts: list[str], seed: int) -> list[str]:
        return lm.sample_responses(model, tokenizer, prompts, max_new_tokens=cfg.sample_max_new_tokens,
                                   temperature=cfg.sample_temperature, seed=seed, batch_size=cfg.gen_batch_size)

    pair_rows, dropped = {}, 0
    for k, (split, ps, n) in enumerate((("train", base.train_prompts, cfg.num_train_pairs),
                                         ("eval", base.eval_prompts, cfg.num_eval_pairs))):
        rows, d = sample_pairs(ps, n, sample, gold, cfg.bt_temperature, seed=cfg.seed * 10 + k, flip=cfg.label_flip)
        pair_rows[split], dropped = rows, dropped + d
        (out / f"pairs_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    all_rows = pair_rows["train"] + pair_rows["eval"]
    samples = [y for r in all_rows for y in (r["chosen"], r["rejected"])] or sample(base.eval_prompts, cfg.seed * 1000 + 7)
    sample_gold = gold([""] * len(samples), samples)
    g_mean, g_std = _mean_std(sample_gold)
    stats = {k: base.stats[k] for k in ("heldout_perplexity", "unigram_perplexity", "final_train_loss", "n_params",
                                        "vocab_size", "n_train_prompts", "n_eval_prompts") if k in base.stats}
    stats.update({
        "task": cfg.task, "base_testbed": base.dir.name,
        "sample_gold_reward_mean": g_mean, "sample_gold_reward_std": g_std, "n_samples": len(samples),
        "n_train_pairs": len(pair_rows["train"]), "n_eval_pairs": len(pair_rows["eval"]), "pairs_dropped": dropped,
        "pairs_chosen_higher_gold_rate": (sum(r["chosen_gold"] > r["rejected_gold"] for r in all_rows) / len(all_rows))
        if all_rows else None,
        "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t_start, 3), "key": key,
    })
    if cfg.task == "overopt":
        from .overopt import net_positive

        c = [net_positive(y) for y in samples]
        stats["reference_past_threshold_rate"] = sum(v > cfg.overopt_threshold for v in c) / len(c)
        stats["reference_net_positive_counts"] = {str(v): c.count(v) for v in sorted(set(c))}
    return stats


def build_testbed(cfg: TestbedConfig | None = None, progress: bool = True) -> Testbed:
    """The testbed for `cfg` (default: TestbedConfig()), from the cache when it was built before.

    Safe under concurrency: one process builds (under a file lock) in a temporary folder that is
    renamed into place when complete; the others wait on the lock and then read the result."""
    from filelock import FileLock

    cfg = cfg or TestbedConfig()
    root = cache_root(cfg)
    key = cache_key(cfg)
    final = root / key
    if (final / "testbed.json").is_file():
        return Testbed.load(final, cache_hit=True)
    base = build_testbed(base_lm_config(cfg), progress) if cfg.task != "sentiment" else None
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        if (final / "testbed.json").is_file():  # another process built it while we waited
            return Testbed.load(final, cache_hit=True)
        if final.exists():  # not ours to trust: a folder without its testbed.json is incomplete
            shutil.rmtree(final)
        for stale in root.glob(f"{key}.tmp-*"):  # left by a killed build; we hold the lock, so none is live
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=root))
        try:
            import torch

            threads = torch.get_num_threads()
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            try:
                stats = _build_task_into(tmp, cfg, base, key) if base else _build_into(tmp, cfg, progress, key)
            finally:
                torch.set_num_threads(threads)
            save_resolved(cfg.model_copy(update={"cache_dir": None}), tmp)
            write_json(tmp / "testbed.json", stats)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Testbed.load(final, cache_hit=False)
