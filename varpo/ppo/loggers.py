"""varpo's own outputs of a PPO run, as callbacks (varpo.ppo.callbacks): the metrics stream
(metrics.jsonl) and TensorBoard scalars. The trainer registers them on rank 0 before any user
callback."""
from __future__ import annotations

import json
from pathlib import Path

from ..outputs import append_jsonl, read_jsonl
from .callbacks import TrainerCallback


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
