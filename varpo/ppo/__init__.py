"""PPO for language models, vanilla and variance-aware. `train_ppo(cfg, out_dir)` is the one
entry point used by `varpo train-ppo`, `launch/train_ppo.py`, populations and benchmarks."""
from __future__ import annotations

from pathlib import Path


def resolve_sources(cfg):
    """Policy folder, training prompts and gold-reward function from the config: user paths
    when given, the embedded testbed otherwise. Conversational prompts are rendered with the
    policy tokenizer's chat template (varpo.data)."""
    policy_path, gold_fn = cfg.model.policy_path, None
    testbed = None
    if policy_path is None or cfg.data.prompts_path is None:
        from ..testbed import build_testbed

        testbed = build_testbed(cfg.testbed, progress=False)
    if policy_path is None:
        policy_path = str(testbed.model_path)
    if cfg.data.prompts_path is not None:
        from ..data.sets import policy_renderer, train_prompts

        prompts = train_prompts(cfg, policy_renderer(cfg, policy_path))
    else:
        from ..testbed import task_gold

        prompts, gold_fn = list(testbed.train_prompts), task_gold(cfg.testbed)
    return policy_path, prompts, gold_fn, testbed


def resolve_eval_prompts(cfg, policy_path: str, testbed=None) -> list[str] | None:
    """Held-out prompts (data.eval_prompts_path, or the eval split of the prompt dataset, or the
    testbed's when the training prompts are the testbed's); None: the config names none."""
    from ..data.sets import eval_prompts, policy_renderer

    rows = eval_prompts(cfg, policy_renderer(cfg, policy_path))
    if rows is None and testbed is not None and cfg.data.prompts_path is None:
        rows = list(testbed.eval_prompts)
    return rows


def train_ppo(cfg, out_dir: str | Path, *, scorer=None, callbacks=()) -> dict:
    """Train one policy; writes metrics.jsonl, tensorboard/, checkpoints/, policy/, summary.json
    and config.yaml under out_dir. Resumes from the last complete checkpoint there. `callbacks`:
    varpo.ppo.callbacks.TrainerCallback instances, called after varpo's own loggers."""
    from ..adapters import check_environment
    from ..dist import init_distributed
    from ..scoring import build_scorer
    from .trainer import PPOTrainer

    check_environment(cfg)  # refuse what this machine cannot run before any model is built
    # join the process group first: building the default reward model coordinates the ranks
    init_distributed(cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes, cfg.deepspeed.peer_timeout_s,
                     cfg.deepspeed.rendezvous_timeout_s)
    policy_path, prompts, gold_fn, _ = resolve_sources(cfg)
    if scorer is None:
        scorer = build_scorer(cfg)
    trainer = PPOTrainer(cfg, out_dir, prompts=prompts, policy_path=policy_path, scorer=scorer,
                         critic_path=cfg.model.critic_path, gold_fn=gold_fn, callbacks=callbacks)
    return trainer.train()


from .callbacks import TrainerCallback, TrainerControl  # noqa: E402  (light: no torch, no engines)

__all__ = ["TrainerCallback", "TrainerControl", "resolve_sources", "train_ppo"]
