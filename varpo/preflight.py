"""The checks every command runs before anything starts (no process group, no engine, no output
folder): the model, tokenizer and reward folders the config names (varpo.model_folders), and the
choices a run must not make silently (a policy of your own scored by the embedded toy reward).
Each problem is a ConfigError in one line naming the field: the CLI exits 2, nothing written."""
from __future__ import annotations

from .config import ConfigError
from .model_folders import check_ensemble_folder, check_model, check_tokenizer


def _policy(cfg) -> None:
    m = cfg.model
    if m.policy_path is not None:
        check_model(m.policy_path, "model.policy_path", "causal_lm")
    tok_path, tok_field = (m.tokenizer_path, "model.tokenizer_path") if m.tokenizer_path else \
        (m.policy_path, "model.policy_path")
    if tok_path is not None:
        check_tokenizer(tok_path, tok_field, "data.chat_template=true" if cfg.data.chat_template else None)
    if m.critic_path is not None:
        check_model(m.critic_path, "model.critic_path", "backbone")


def check_reward(cfg, *, trains_its_own: bool = False) -> None:
    """The reward source PPO will be scored by. `trains_its_own`: the command trains an ensemble
    on data.pairs_path when reward.path is unset (populations), so none is needed yet."""
    r = cfg.reward
    if r.type == "sequence_classifier":
        check_model(r.path, "reward.path", "sequence_classifier")
        check_tokenizer(r.path, "reward.path")
    elif r.type == "remote" and r.remote.backend == "vllm":
        # the heads and tokenizer are read here; the backbone's weights stay on the server
        check_tokenizer(r.path, "reward.path")
    elif r.type == "ensemble":
        if r.path:
            check_ensemble_folder(r.path, "reward.path")
        elif cfg.data.pairs_path is not None and not trains_its_own:
            raise ConfigError(f"reward.path: not set, with preference pairs of your own (data.pairs_path="
                              f"{cfg.data.pairs_path}): train a reward ensemble on them first (varpo train-rm) and "
                              "point reward.path at its OUT/reward_model")
        elif cfg.model.policy_path is not None and not (trains_its_own and cfg.data.pairs_path):
            # the embedded default ensemble scores the testbed's toy sentiment task: never what a run
            # on your own policy means, so it is not used silently
            raise ConfigError(
                f"reward.path: not set, and the policy is your own (model.policy_path={cfg.model.policy_path}): "
                "name the reward to train against: reward.path=<a reward-ensemble folder from varpo train-rm>, "
                "or reward.type=sequence_classifier with reward.path=<a Hugging Face reward model>, or "
                "reward.type=judge")


def check_ppo(cfg, *, trains_its_own_reward: bool = False, check_reward_source: bool = True) -> None:
    """Everything `train_ppo` loads from disk besides data: policy, tokenizer, critic, and the
    reward (unless `check_reward_source` is False: the caller brings its own scorer)."""
    _policy(cfg)
    if check_reward_source:
        check_reward(cfg, trains_its_own=trains_its_own_reward)


def check_reward_training(cfg) -> None:
    """What `train_reward_model` loads: the backbone and its tokenizer."""
    rt = cfg.reward_training
    path, field = (rt.backbone_path, "reward_training.backbone_path") if rt.backbone_path else \
        (cfg.model.policy_path, "model.policy_path")
    if path is not None:
        check_model(path, field, "backbone")
        check_tokenizer(path, field)


def check_population(cfg) -> None:
    """Populations, quickstart, kl-sweep, heterogeneity: PPO's checks (a reward ensemble may be
    trained first on data.pairs_path), the reward training's, and the true reward's folder."""
    check_ppo(cfg, trains_its_own_reward=True)
    if cfg.reward.type == "ensemble" and not cfg.reward.path:
        check_reward_training(cfg)
    if cfg.evaluation.true_reward == "reward_model":
        if not cfg.evaluation.true_reward_path:
            raise ConfigError("evaluation.true_reward_path: required with evaluation.true_reward=reward_model")
        check_ensemble_folder(cfg.evaluation.true_reward_path, "evaluation.true_reward_path")
