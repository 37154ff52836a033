"""varpo's own outputs of a PPO run, as callbacks (varpo.ppo.callbacks): the metrics stream
(metrics.jsonl), TensorBoard scalars, the sample table (samples.jsonl and TensorBoard text) and,
when enabled, Weights & Biases. The trainer registers them on rank 0 before any user callback."""
from __future__ import annotations

import json
from pathlib import Path

from ..callbacks import TrainerCallback
from ..config import ConfigError, redacted_dict
from ..outputs import append_jsonl, read_jsonl


class MetricsJsonl(TrainerCallback):
    """One JSON row per step. A fresh run starts a fresh file; a resumed run drops the rows the
    interrupted run wrote after its last checkpoint (those steps are redone)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, trainer) -> None:
        if trainer.step == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            rows = [r for r in read_jsonl(self.path) if r["step"] < trainer.step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def on_step_end(self, metrics: dict) -> None:
        append_jsonl(self.path, metrics)


class TensorBoardLogger(TrainerCallback):
    """Every numeric metric as a scalar at its step."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_step_end(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(k, v, metrics["step"])
        self.writer.flush()

    def on_train_end(self, summary: dict) -> None:
        self.writer.close()


class SampleTable(TrainerCallback):
    """Every `every` steps, rank 0's prompts, responses, score s and σ² as JSONL rows (one per
    sample, with its step) and as a TensorBoard text table of the first `max_rows`."""

    def __init__(self, path: str | Path, every: int, tensorboard: TensorBoardLogger | None = None,
                 max_rows: int = 16):
        if every < 1:
            raise ValueError(f"SampleTable: every must be ≥ 1, got {every}")
        self.path, self.every, self.tensorboard, self.max_rows = Path(path), every, tensorboard, max_rows

    def on_train_begin(self, trainer) -> None:
        if trainer.step == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():  # a resumed run redoes the steps after its checkpoint
            rows = [r for r in read_jsonl(self.path) if r["step"] < trainer.step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def on_rollout_scored(self, prompts: list[str], responses: list[str], experience) -> None:
        step = self.state.step
        if step % self.every:
            return
        rows = [{"step": step, "prompt": p, "response": r, "score": float(s), "variance": float(v), "valid": bool(ok)}
                for p, r, s, v, ok in zip(prompts, responses, experience.score.tolist(), experience.variance.tolist(),
                                          experience.valid.tolist())]
        with self.path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        if self.tensorboard is not None:
            self.tensorboard.writer.add_text("samples", markdown_table(rows[: self.max_rows]), step)


def markdown_table(rows: list[dict]) -> str:
    """prompt | response | score | σ² as a Markdown table (TensorBoard renders it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or " "

    lines = ["| prompt | response | score | σ² |", "|---|---|---|---|"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['response'])} | {r['score']:.4g} | {r['variance']:.4g} |" for r in rows]
    return "\n".join(lines)


class WandbLogger(TrainerCallback):
    """Metrics and the sample table to Weights & Biases (`ppo.wandb.enabled`; off by default). wandb
    is optional: it is imported only when enabled, and its absence is a clear error then. The
    API key comes from the environment (WANDB_API_KEY, or `wandb login`), never from the config."""

    def __init__(self, cfg, out_dir: str | Path, samples_every: int = 0):
        try:
            import wandb
        except ImportError:
            raise ConfigError("ppo.wandb.enabled: true needs the wandb package, which is not installed "
                              "(pip install wandb), or set ppo.wandb.enabled=false") from None
        w = cfg.ppo.wandb
        self.wandb, self.samples_every = wandb, samples_every
        self.run = wandb.init(project=w.project, entity=w.entity, name=w.run_name, mode=w.mode, dir=str(out_dir),
                              config=redacted_dict(cfg), resume="allow", id=w.run_id)

    def on_rollout_scored(self, prompts, responses, experience) -> None:
        step = self.state.step
        if not self.samples_every or step % self.samples_every:
            return
        table = self.wandb.Table(columns=["prompt", "response", "score", "variance"],
                                 data=[list(x) for x in zip(prompts, responses, experience.score.tolist(),
                                                            experience.variance.tolist())])
        self.run.log({"samples": table}, step=step)

    def on_step_end(self, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"},
                     step=metrics["step"])

    def on_train_end(self, summary: dict) -> None:
        self.run.finish()


def output_callbacks(cfg, out_dir: str | Path) -> list[TrainerCallback]:
    """varpo's own outputs of a PPO run under `out_dir` (rank 0's): the resolved config.yaml,
    metrics.jsonl, TensorBoard, the sample table (ppo.log_samples_every) and W&B (ppo.wandb.enabled).
    A logger that cannot start (wandb missing) fails here, before any model loads."""
    from ..config import save_resolved

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    p = cfg.ppo
    tb = TensorBoardLogger(out / "tensorboard")
    own: list[TrainerCallback] = [MetricsJsonl(out / "metrics.jsonl"), tb]
    if p.log_samples_every:
        own.append(SampleTable(out / "samples.jsonl", p.log_samples_every, tensorboard=tb))
    if p.wandb.enabled:
        own.append(WandbLogger(cfg, out, samples_every=p.log_samples_every))
    return own
