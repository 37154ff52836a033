"""PPO for language models, vanilla and variance-aware. `train_ppo(cfg, out_dir)` is the one
entry point used by `varpo train-ppo`, `launch/train_ppo.py`, populations and benchmarks."""
from __future__ import annotations

from pathlib import Path


def resolve_sources(cfg):
    """Policy folder, training prompts and gold-reward function from the config: user paths
    when given, the embedded testbed otherwise."""
    policy_path, gold_fn = cfg.model.policy_path, None
    testbed = None
    if policy_path is None or cfg.data.prompts_path is None:
        from ..testbed import build_testbed

        testbed = build_testbed(cfg.testbed, progress=False)
    if policy_path is None:
        policy_path = str(testbed.model_path)
    if cfg.data.prompts_path is not None:
        from ..data import load_prompts

        prompts = load_prompts(cfg.data.prompts_path, column=cfg.data.prompt_column, skip_bad_rows=cfg.data.skip_bad_rows).rows
    else:
        from ..testbed import task_gold

        prompts, gold_fn = list(testbed.train_prompts), task_gold(cfg.testbed)
    return policy_path, prompts, gold_fn, testbed


def train_ppo(cfg, out_dir: str | Path, *, scorer=None, callbacks=()) -> dict:
    """Train one policy; writes metrics.jsonl, tensorboard/, checkpoints/, policy/, summary.json
    and config.yaml under out_dir. Resumes from the last complete checkpoint there. `callbacks`:
    varpo.callbacks.TrainerCallback instances, called after varpo's own loggers."""
    from ..config.environment import check_environment
    from ..dist import join
    from .roles import build_roles
    from .trainer import PPOTrainer, check_batch_sizes

    check_environment(cfg)  # refuse what this machine cannot run before any model is built
    if cfg.runtime.keep_freed_memory:
        from ..allocator import keep_freed_memory

        keep_freed_memory()  # a step's large temporaries reuse freed heap instead of fresh pages
    # join the process group first: building the default reward model coordinates the ranks
    check_batch_sizes(cfg.ppo, join(cfg.deepspeed).world_size)
    policy_path, prompts, gold_fn, _ = resolve_sources(cfg)
    if not prompts:
        raise ValueError("no training prompts")
    roles = build_roles(cfg, out_dir, policy_path=policy_path, scorer=scorer, callbacks=callbacks)
    return PPOTrainer(cfg, out_dir, roles, prompts=prompts, gold_fn=gold_fn).train()


from ..callbacks import TrainerCallback, TrainerControl  # noqa: E402  (light: no torch, no engines)

# the heavy parts load on first use: `import varpo.ppo` stays light
_LAZY = {"PPOTrainer": "trainer", "build_roles": "roles", "Roles": "roles", "ExperienceMaker": "experience_maker"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExperienceMaker", "PPOTrainer", "Roles", "TrainerCallback", "TrainerControl", "build_roles",
           "resolve_sources", "train_ppo"]
