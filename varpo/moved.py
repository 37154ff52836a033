"""Modules that were split or renamed: importing an old name fails with a message naming where
its contents live now, instead of a bare "No module named ...".

The finder sits last on sys.meta_path, so it is asked only about modules no other finder found,
and only answers for the names listed here."""
from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "varpo.adapters": "LoRA and 4-bit bases: varpo.models.lora; load options (load_kwargs, attn_kwargs, DTYPES) "
                      "and param_counts: varpo.models.loading; check_environment: varpo.config.environment",
    "varpo.ppo.models": "the role builders (build_actor, build_reference, build_critic, ReferenceFromBase): "
                        "varpo.ppo.roles; ValueModel, PolicyWithValueHead, causal_lm, shares_trunk: "
                        "varpo.models.value_head; export_actor: varpo.models.export; load_tokenizer, "
                        "disable_dropout: varpo.models.loading",
    "varpo.ppo.rollout": "response_logits, response_values: varpo.ppo.forward; generate: varpo.ppo.generation.hf; "
                         "tokenize_prompts, decode_responses, response_mask_from_ids, apply_chat_template: "
                         "varpo.ppo.tokens",
    "varpo.ppo.gen_logprobs": "GenerationLogprobs: varpo.ppo.generation.logprobs",
    "varpo.ppo.checkpoint": "the engine checkpoints of both trainers: varpo.engine_checkpoint",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            raise ModuleNotFoundError(f"{name} no longer exists; {MOVED[name]}", name=name)
        return None


def moved_names(module: str, new_homes: dict[str, str]):
    """A module-level `__getattr__` for names that left `module`: `from module import name` fails
    naming `new_homes[name]` (an ImportError, which `from ... import` passes on unchanged; an
    AttributeError would be replaced by a generic message)."""

    def __getattr__(name: str):
        if name in new_homes:
            raise ImportError(f"{module}.{name} moved to {new_homes[name]}.{name}", name=module)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
