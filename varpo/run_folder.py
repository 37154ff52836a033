"""What an output folder already holds, decided before a training run writes into it, so that no
run silently continues with another configuration or replaces a finished one:

- empty or new: a fresh run;
- an interrupted run (checkpoints, no summary): resumed, but only when the configuration it was
  started with (OUT/config.yaml) and the new one agree on every field that changes what is
  trained; otherwise refused with the differing fields listed, unless the user passes
  `allow_config_change` (`--allow-config-change`);
- a finished run (its summary file): refused unless the user asks to `overwrite` it
  (`--overwrite`: the run's own outputs are removed first, nothing else in the folder), or raises
  ppo.steps (reward_training.epochs) to continue it from its last checkpoint; callers that keep finished runs
  (populations resuming) `reuse` them, after the same configuration check.

Fields that do not change what is trained (how often to log or checkpoint, timeouts, caches,
kernels, evaluation) may differ; ppo.steps too, unless a learning-rate schedule depends on it, and
reward_training.epochs (each epoch's data order depends on the epoch alone)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import ConfigError, redacted_dict

# fields (dotted prefixes) that never change what a run trains
NEUTRAL = (
    "ppo.checkpoint_every", "ppo.log_samples_every", "ppo.wandb.", "ppo.max_consecutive_bad_steps",
    "ppo.eval_every", "ppo.eval_prompts", "checkpoint.", "kernels.", "evaluation.",
    "deepspeed.timeout_minutes", "deepspeed.rendezvous_timeout_s", "deepspeed.peer_timeout_s",
    "deepspeed.dist_backend", "generation.zero3_gather", "testbed.cache_dir", "testbed.threads",
    "judge.concurrency", "judge.timeout", "judge.max_retries", "judge.backoff_", "judge.max_retry_after",
    "judge.cache", "judge.api_key_env", "reward.batch_size",
    "reward_training.eval_every", "reward_training.eval_batch_size", "reward_training.checkpoint_every",
    "reward_training.resume",
)

# and per kind: the data a PPO run only evaluates on, or never reads; the prompts a reward model never sees
NEUTRAL_PPO = ("data.eval_prompts_path", "data.eval_split", "data.eval_pairs_path")
NEUTRAL_PPO_WITH_PROMPTS = ("data.pairs_path", "data.chosen_column", "data.rejected_column")  # pairs give no prompts
NEUTRAL_REWARD = ("data.prompts_path", "data.eval_prompts_path", "data.chat_template",
                  "reward_training.epochs")  # the data order is per epoch: more epochs continue the same run

PPO_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples.jsonl", "tensorboard", "wandb", "policy", "policy_adapter",
               "policy_value_head", "summary.json", "config.yaml")
RM_OUTPUTS = ("checkpoints", "train_log.jsonl", "reward_model", "rm_report.json", "disagreement.png",
              "rm_accuracy_table.json", "rm_variance_table.json", "rm_calibration_table.json", "config.yaml")


@dataclass(frozen=True)
class Kind:
    """A kind of training run: the file that marks it finished and the outputs it writes."""

    name: str
    summary: str
    outputs: tuple[str, ...]
    command: str


PPO = Kind("PPO", "summary.json", PPO_OUTPUTS, "varpo train-ppo")
REWARD = Kind("reward-model", "rm_report.json", RM_OUTPUTS, "varpo train-rm")


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _relevant(cfg, kind: Kind) -> list[str]:
    """Sections whose fields shape what this kind of run trains."""
    if kind is REWARD:
        return ["seed", "testbed.", "data.", "model.", "reward.ddof", "reward_training.", "deepspeed."]
    keep = ["seed", "testbed.", "data.", "model.", "reward.", "ppo.", "generation.", "deepspeed."]
    if cfg.reward.type == "ensemble" and not cfg.reward.path:
        keep.append("reward_training.")  # the default ensemble is trained from it
    if cfg.reward.type == "judge":
        keep.append("judge.")
    return keep


def config_changes(saved: dict, cfg, kind: Kind = PPO) -> list[tuple[str, object, object]]:
    """(field, saved value, new value) of every training-relevant field that differs."""
    new = flatten(redacted_dict(cfg))
    old = flatten(saved)
    neutral = [*NEUTRAL, *(NEUTRAL_PPO if kind is PPO else NEUTRAL_REWARD)]
    if kind is PPO and cfg.data.prompts_path is not None:
        neutral += NEUTRAL_PPO_WITH_PROMPTS
    if kind is PPO and cfg.ppo.lr_schedule == "constant":
        neutral.append("ppo.steps")  # raising it continues the same run
    relevant = _relevant(cfg, kind)
    changes = []
    for key in sorted(set(new) | set(old)):
        if not any(key == r or key.startswith(r) for r in relevant):
            continue
        if any(key == n or key.startswith(n) for n in neutral):
            continue
        if key not in old:  # a field this varpo added since: a change only if set away from its default
            continue
        if old.get(key) != new.get(key):
            changes.append((key, old.get(key), new.get(key)))
    return changes


def _saved_config(out: Path) -> dict | None:
    path = out / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _summary(out: Path, kind: Kind) -> dict | None:
    path = out / kind.summary
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


@dataclass
class Decision:
    action: str  # "fresh" | "resume" | "reuse" | "overwrite" | "continue"
    summary: dict | None = None  # the finished run's (reuse)
    note: str = ""


def decide(out: Path, cfg, kind: Kind, *, overwrite: bool = False, allow_config_change: bool = False,
           reuse_finished: bool = False, has_checkpoint: bool | None = None) -> Decision:
    """What to do with `out` (module doc); raises ConfigError naming the folder and the way out.
    Reads only; `clear` removes a run's outputs when the decision is "overwrite"."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is a file; expected a folder (or a path to create one)")
    if not out.exists():
        return Decision("fresh")
    if overwrite:
        return Decision("overwrite", note=f"--overwrite: removing the {kind.name} run in {out}")
    if has_checkpoint is None:  # any committed checkpoint (which one is usable, resume decides)
        from .checkpoint import PREFIX

        has_checkpoint = any(p.is_dir() for p in (out / "checkpoints").glob(f"{PREFIX}*"))
    summary = _summary(out, kind)
    saved = _saved_config(out)
    continuing = False
    if summary is not None and not reuse_finished:
        more = _more_to_do(summary, cfg, kind) and has_checkpoint
        if not more:
            done = summary.get("steps" if kind is PPO else "epochs")
            knob = "ppo.steps" if kind is PPO else "reward_training.epochs"
            extra = f", or raise {knob} above {done} to continue it" if isinstance(done, int) else ""
            raise ConfigError(f"--out {out}: holds a finished {kind.name} run ({out / kind.summary}); choose another "
                              f"--out, or pass --overwrite to replace it{extra}")
        continuing = True
    if summary is None and not has_checkpoint:
        if saved is not None or any((out / f).exists() for f in kind.outputs if f != "config.yaml"):
            return Decision("fresh", note=f"{out}: an earlier {kind.name} run stopped before its first checkpoint; "
                                          "starting over")
        return Decision("fresh")
    if saved is None:
        action = "continue" if continuing else "reuse" if summary is not None else "resume"
        return Decision(action, summary if action == "reuse" else None,
                        note=f"{out}: no config.yaml beside the run: the configuration cannot be compared")
    changes = config_changes(saved, cfg, kind)
    if changes and not allow_config_change:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in changes[:12])
        more_ = f" (and {len(changes) - 12} more)" if len(changes) > 12 else ""
        what = "finished" if summary is not None and not continuing else "interrupted" if summary is None else "earlier"
        raise ConfigError(f"--out {out}: the {what} {kind.name} run there was started with another configuration, "
                          f"and continuing it would mix the two: {listed}{more_}. Rerun with the saved configuration "
                          f"({out / 'config.yaml'}), choose another --out, pass --overwrite to start over, or "
                          "--allow-config-change to resume with the new values")
    note = ""
    if changes:
        note = f"--allow-config-change: resuming {out} with {', '.join(k for k, _, _ in changes)} changed"
    if summary is not None and not continuing:
        return Decision("reuse", summary, note)
    if continuing:
        knob = f"ppo.steps={cfg.ppo.steps}" if kind is PPO else f"reward_training.epochs={cfg.reward_training.epochs}"
        return Decision("continue", None, note or f"continuing the finished {kind.name} run in {out} to {knob}")
    return Decision("resume", None, note)


def _more_to_do(summary: dict, cfg, kind: Kind) -> bool:
    """A finished run the new configuration asks to take further (more PPO steps, more epochs)."""
    if summary.get("stopped_early"):
        return False
    if kind is PPO:
        done, want = summary.get("steps"), cfg.ppo.steps
    else:
        done, want = summary.get("epochs"), cfg.reward_training.epochs
    return isinstance(done, int) and want > done


def _show(v) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def clear(out: Path, kind: Kind) -> None:
    """Remove a run's own outputs from `out` (files the run never writes are left alone)."""
    for name in kind.outputs:
        p = Path(out) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
