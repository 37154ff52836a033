"""PPO for language models, vanilla and variance-aware. `train_ppo(cfg, out_dir)` is the one
entry point used by `varpo train-ppo`, `launch/train_ppo.py`, populations and benchmarks."""
from __future__ import annotations

from pathlib import Path


def resolve_sources(cfg):
    """Policy folder, training prompts and gold-reward function from the config: user paths
    when given (data.prompts_path, else the prompts of data.pairs_path), the embedded testbed
    otherwise. Conversational prompts are rendered with the policy tokenizer's chat template
    (varpo.data)."""
    from ..data.sets import pair_prompts, policy_renderer, train_prompts

    policy_path, gold_fn = cfg.model.policy_path, None
    user_prompts = cfg.data.prompts_path is not None or cfg.data.pairs_path is not None
    testbed = None
    if policy_path is None or not user_prompts:
        from ..testbed import build_testbed

        testbed = build_testbed(cfg.testbed, progress=False)
    if policy_path is None:
        policy_path = str(testbed.model_path)
    if user_prompts:
        chat = policy_renderer(cfg, policy_path)
        prompts = train_prompts(cfg, chat) if cfg.data.prompts_path is not None else pair_prompts(cfg, chat)
    else:
        from ..testbed import task_gold

        prompts, gold_fn = list(testbed.train_prompts), task_gold(cfg.testbed)
    return policy_path, prompts, gold_fn, testbed


def resolve_eval_prompts(cfg, policy_path: str, testbed=None) -> list[str] | None:
    """Held-out prompts: data.eval_prompts_path, or the eval split of the prompt dataset, or (PPO
    on a preference dataset's prompts) the held-out pairs' prompts, or the testbed's when the
    training prompts are the testbed's; None: the config names none."""
    from ..data.sets import eval_prompts, pair_prompts, policy_renderer

    chat = policy_renderer(cfg, policy_path)
    rows = eval_prompts(cfg, chat)
    if rows is None and cfg.data.prompts_path is None:
        rows = pair_prompts(cfg, chat, "eval")
        if rows is None and testbed is not None and cfg.data.pairs_path is None:
            rows = list(testbed.eval_prompts)
    return rows


def train_ppo(cfg, out_dir: str | Path, *, scorer=None, callbacks=(), overwrite: bool = False,
              allow_config_change: bool = False, reuse_finished: bool = False) -> dict:
    """Train one policy; writes metrics.jsonl, tensorboard/, checkpoints/, policy/, summary.json
    and config.yaml under out_dir. Before anything starts (no process group, no engine, no file
    written) the model, tokenizer and reward folders and the data are checked (varpo.preflight)
    and so is the output folder (varpo.run_folder): an interrupted run there is resumed from its
    last complete checkpoint if its saved configuration agrees on what is trained
    (`allow_config_change` resumes anyway); a finished run is refused unless `overwrite` (start
    over) or `reuse_finished` (return its summary: populations resuming), or ppo.steps was raised
    (continue it). `callbacks`: varpo.callbacks.TrainerCallback instances, called after varpo's
    own loggers. `scorer`: a reward source of the caller's instead of reward.*."""
    from ..preflight import check_ppo
    from ..run_folder import PPO, clear, decide

    out = Path(out_dir)
    check_ppo(cfg, check_reward_source=scorer is None)  # light: no torch yet, so a bad path fails at once
    decision = decide(out, cfg, PPO, overwrite=overwrite, allow_config_change=allow_config_change,
                      reuse_finished=reuse_finished)
    if decision.action == "reuse":
        return decision.summary
    from .. import dist
    from ..config import ConfigError
    from ..config.environment import check_environment
    from ..outputs import console
    from ..scoring import build_scorer, describe_reward
    from .generation.old_logprobs import old_logprobs_from_rollout
    from .roles import build_roles
    from .trainer import PPOTrainer, check_batch_sizes

    check_environment(cfg)  # refuse what this machine cannot run before any model is built
    if cfg.runtime.keep_freed_memory:
        from ..allocator import keep_freed_memory

        keep_freed_memory()  # a step's large temporaries reuse freed heap instead of fresh pages
    # the data, read and checked before the process group and the engines exist
    policy_path, prompts, gold_fn, testbed = resolve_sources(cfg)
    evaluator = None
    if cfg.ppo.eval_every:
        held = resolve_eval_prompts(cfg, policy_path, testbed)
        if not held:
            raise ConfigError("ppo.eval_every: evaluation needs held-out prompts: set data.eval_prompts_path, or give "
                              "data.prompts_path a dataset with a data.eval_split split")
        from .periodic_eval import PeriodicEvaluation

        evaluator = PeriodicEvaluation(held[: cfg.ppo.eval_prompts], cfg.ppo.eval_every, gold_fn)
    # join the process group first: building the default reward model coordinates the ranks
    info = dist.join(cfg.deepspeed)
    check_batch_sizes(cfg.ppo, info.world_size)
    if not prompts:
        raise ConfigError("no training prompts")
    if info.is_main:
        if decision.action == "overwrite":
            clear(out, PPO)
        if decision.note:
            console.print(decision.note, highlight=False)
    dist.barrier()
    if scorer is None:
        scorer = build_scorer(cfg)
    reward = describe_reward(cfg, scorer)
    if info.is_main:
        console.print(f"reward: {reward['type']}" + (f" {reward['path']}" if reward.get("path") else "")
                      + f"; σ²: {reward.get('sigma2', 'as the scorer gives it')}", highlight=False)
        from_rollout, why = old_logprobs_from_rollout(cfg)
        console.print(f"old log-probs: {why}" + ("" if from_rollout else ": an actor forward at every rollout"),
                      highlight=False)
    roles = build_roles(cfg, out, policy_path=policy_path, scorer=scorer, callbacks=callbacks)
    roles.run_info["reward"] = reward
    if evaluator is not None:  # first, on every rank: its eval/* metrics join the row before the loggers write it
        roles.callbacks.insert(0, evaluator)
    return PPOTrainer(cfg, out, roles, prompts=prompts, gold_fn=gold_fn).train()


from ..callbacks import TrainerCallback, TrainerControl  # noqa: E402  (light: no torch, no engines)

# the heavy parts load on first use: `import varpo.ppo` stays light
_LAZY = {"PPOTrainer": "trainer", "build_roles": "roles", "Roles": "roles", "ExperienceMaker": "experience_maker"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ExperienceMaker", "PPOTrainer", "Roles", "TrainerCallback", "TrainerControl", "build_roles",
           "resolve_eval_prompts", "resolve_sources", "train_ppo"]
