"""The PPO trainer's callbacks, where users import them from: the machinery itself is
varpo.callbacks, which reward-model training uses too."""
from ..callbacks import CallbackList, TrainerCallback, TrainerControl, TrainerState

__all__ = ["CallbackList", "TrainerCallback", "TrainerControl", "TrainerState"]
