"""The prompt and pair sets a config names (`data.*`), read with the right split, columns and chat
template: one place that decides where training and held-out data come from, for PPO, reward
training, evaluation during PPO and `varpo score`."""
from __future__ import annotations

import random

from .chat import ChatRenderer
from .load import load_pairs, load_prompts
from .readers import has_split


def tokenizer_renderer(path: str, field: str) -> ChatRenderer:
    """Renders conversational rows with the chat template of the tokenizer at `path` (loaded
    only if a conversational row turns up); `field` names the config field it came from."""

    def load():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # transformers raises many kinds for a path that holds no tokenizer
            from ..config import ConfigError

            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{field}: {path}: no tokenizer to render conversational rows with ({first})") from None

    return ChatRenderer(load, f"{field} ({path})")


def train_prompts(cfg, chat: ChatRenderer | None = None) -> list[str] | None:
    """Training prompts from data.prompts_path (None: not configured)."""
    dc = cfg.data
    if dc.prompts_path is None:
        return None
    return load_prompts(dc.prompts_path, dc.prompt_column, dc.skip_bad_rows, chat=chat,
                        **dc.where("train", explicit=True)).rows


def pair_prompts(cfg, chat: ChatRenderer | None = None, which: str = "train") -> list[str] | None:
    """The distinct prompts of the preference pairs (data.pairs_path, at the training or held-out
    split), in order: PPO's prompts when data.prompts_path is unset, as RLHF runs on a preference
    dataset's prompts. None when pairs_path is unset (or, for "eval", has no held-out split)."""
    dc = cfg.data
    if which == "train":
        if dc.pairs_path is None:
            return None
        path, where = dc.pairs_path, dc.where("train", explicit=True)
    elif dc.eval_pairs_path is not None:
        path, where = dc.eval_pairs_path, dc.where("eval", explicit=True)
    elif dc.pairs_path is not None and has_split(dc.pairs_path, dc.eval_split, dc.dataset_config):
        path, where = dc.pairs_path, dc.where("eval", explicit=False)
    else:
        return None
    rows = load_pairs(path, dc.pair_columns(), dc.skip_bad_rows, chat=chat, **where).rows
    return list(dict.fromkeys(r["prompt"] for r in rows))


def eval_prompt_source(cfg) -> tuple[str, dict] | None:
    """(path, read options) of the held-out prompts: data.eval_prompts_path, else the eval split of
    data.prompts_path when that is a dataset with one; None: the config names none."""
    dc = cfg.data
    if dc.eval_prompts_path is not None:
        return dc.eval_prompts_path, dc.where("eval", explicit=True)
    if dc.prompts_path is not None and has_split(dc.prompts_path, dc.eval_split, dc.dataset_config):
        return dc.prompts_path, dc.where("eval", explicit=False)
    return None


def eval_prompts(cfg, chat: ChatRenderer | None = None) -> list[str] | None:
    """Held-out prompts (eval_prompt_source), or None when the config names none."""
    src = eval_prompt_source(cfg)
    if src is None:
        return None
    path, where = src
    dc = cfg.data
    return load_prompts(path, dc.prompt_column, dc.skip_bad_rows, chat=chat, **where).rows


def pair_sets(cfg, chat: ChatRenderer | None = None) -> tuple[list[dict], list[dict] | None, str | None]:
    """(training pairs, held-out pairs, where the held-out pairs come from) from data.pairs_path:
    held out from data.eval_pairs_path, else the eval split of a dataset with one, else the last
    10% of the training pairs after a seeded shuffle. Held-out (None, None) when pairs_path is
    unset and eval_pairs_path too; training [] when pairs_path is unset."""
    dc = cfg.data
    cols = dc.pair_columns()

    def read(path, which: str, explicit: bool) -> list[dict]:
        return load_pairs(path, cols, dc.skip_bad_rows, chat=chat, **dc.where(which, explicit)).rows

    train = read(dc.pairs_path, "train", True) if dc.pairs_path else []
    if dc.eval_pairs_path:
        return train, read(dc.eval_pairs_path, "eval", True), str(dc.eval_pairs_path)
    if not dc.pairs_path:
        return train, None, None
    if has_split(dc.pairs_path, dc.eval_split, dc.dataset_config):
        return train, read(dc.pairs_path, "eval", False), f"{dc.pairs_path} split {dc.eval_split}"
    if len(train) < 2:
        from ..config import ConfigError

        raise ConfigError(f"data.pairs_path={dc.pairs_path}: {len(train)} pair(s); need ≥ 2 to hold one out "
                          "(or set data.eval_pairs_path)")
    train = list(train)
    random.Random(cfg.seed).shuffle(train)
    n_held = max(1, len(train) // 10)
    return train[:-n_held], train[-n_held:], f"last 10% of {dc.pairs_path} (seeded shuffle)"


def policy_renderer(cfg, policy_path: str) -> ChatRenderer:
    """Conversational prompts go through the policy tokenizer's chat template."""
    if cfg.model.tokenizer_path:
        return tokenizer_renderer(cfg.model.tokenizer_path, "model.tokenizer_path")
    return tokenizer_renderer(policy_path, "model.policy_path" if cfg.model.policy_path else "the testbed LM")
