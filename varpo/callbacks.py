"""Hooks into varpo's training loops (docs/design.md §2), PPO and reward-model training alike:
subclass `TrainerCallback`, override the events you need and pass instances as
`train_ppo(..., callbacks=[...])` (or `build_roles(..., callbacks=[...])`), or
`train_reward_model(..., callbacks=[...])`. varpo's own outputs (metrics.jsonl, TensorBoard, the
sample table; reward training's train_log.jsonl) are callbacks of this kind (varpo.ppo.loggers,
varpo.reward.train), so a user's logger sees exactly what they see.

Events, in order:
  on_train_begin(trainer)                        once, before the first step (after a resume: at its step)
  on_rollout_scored(prompts, responses, experience)  PPO, every step, after the reward source scored this
                                                 rank's samples (`experience` holds ids, masks, score, σ²)
  on_step_end(metrics)                           every step, with the row written to metrics.jsonl
                                                 (reward training: the train row of train_log.jsonl)
  on_evaluate(metrics)                           reward training, after each evaluation on held-out pairs
  on_checkpoint_saved(path)                      after every resumable checkpoint
  on_train_end(summary)                          once, with the summary written to summary.json
                                                 (reward training: rm_report.json)

Callbacks run on every rank; `trainer.info.is_main` (seen in on_train_begin) tells rank 0 apart;
`self.state.step` is the trainer's current step in any event. The metrics are global (reduced
over ranks), so every rank sees the same dict. To end training early, set
`self.control.should_stop = True` (or call `self.stop(reason)`) in any event: the trainer stops
after the current step, once any rank asked, then saves and exports as at the end."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainerState:
    """Where the loop is; one per trainer, shared by all its callbacks (read-only for them)."""

    step: int = 0  # steps completed (the step being made, inside a step's events)


@dataclass
class TrainerControl:
    """What callbacks ask of the loop; one per trainer, shared by all its callbacks."""

    should_stop: bool = False
    reason: str | None = None


class TrainerCallback:
    """Base class: every event does nothing. `control` and `state` are set when the trainer
    registers it."""

    control: TrainerControl | None = None
    state: TrainerState | None = None

    def stop(self, reason: str) -> None:
        """Ask the trainer to stop after the current step."""
        self.control.should_stop, self.control.reason = True, reason

    def on_train_begin(self, trainer) -> None:
        pass

    def on_rollout_scored(self, prompts: list[str], responses: list[str], experience) -> None:
        pass

    def on_step_end(self, metrics: dict) -> None:
        pass

    def on_evaluate(self, metrics: dict) -> None:
        pass

    def on_checkpoint_saved(self, path: Path) -> None:
        pass

    def on_train_end(self, summary: dict) -> None:
        pass


class CallbackList:
    """Calls each event on every callback, in registration order."""

    EVENTS = ("on_train_begin", "on_rollout_scored", "on_step_end", "on_evaluate", "on_checkpoint_saved",
              "on_train_end")

    def __init__(self, callbacks: list[TrainerCallback], control: TrainerControl, state: TrainerState | None = None):
        state = state if state is not None else TrainerState()
        for cb in callbacks:
            if not isinstance(cb, TrainerCallback):
                raise TypeError(f"callbacks must be TrainerCallback instances, got {type(cb).__name__}")
            cb.control, cb.state = control, state
        self.callbacks, self.control, self.state = list(callbacks), control, state

    def __getattr__(self, event: str):
        if event not in self.EVENTS:
            raise AttributeError(event)

        def call(*args, **kwargs) -> None:
            for cb in self.callbacks:
                getattr(cb, event)(*args, **kwargs)

        return call
