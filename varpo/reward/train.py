"""Training the reward ensemble (docs/design.md §1; paper Appendix B): a Bradley–Terry loss per head,
summed over heads, on a DeepSpeed engine — the same code in-process (`varpo train-rm`) and on
every rank under the launcher (`launch/train_reward.py`): data parallel, each rank takes a shard
of every global batch, and the loss is scaled so DeepSpeed's gradient average equals the
gradient of the global batch's loss.

    L = Σ_k  Σ_i w_ik · softplus(−(r_k(x_i, y_i^w) − r_k(x_i, y_i^l))) / Σ_i w_ik

(softplus(−d) = −log σ(d)); w_ik = 1, or with bootstrap the number of times pair i occurs in
head k's resample of the training pairs (a multinomial draw of N out of N per head).

Outputs under OUT: train_log.jsonl (one row per step, plus eval rows), checkpoints/ (DeepSpeed,
trainable parameters only; a rerun resumes from the latest), reward_model/ (the trained ensemble,
`varpo.reward.load.load_reward_model`-able), rm_report.json and disagreement.png (the held-out
disagreement report), and the resolved config.

`RewardTrainer` reads like the PPO trainer: a typed state (`RewardTrainingState`), one method per
stage of a step (`batch`, `forward`, `check_finite`, `update`, then `evaluate` and `early_stopping`
every reward_training.eval_every steps), the engine checkpoints of varpo.engine_checkpoint and the
callbacks of varpo.callbacks (train_log.jsonl is one, `TrainLog`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import checkpoint, dist
from .. import engine_checkpoint as engine_ckpt
from ..callbacks import CallbackList, TrainerCallback, TrainerControl, TrainerState
from ..errors import NonFiniteError
from ..outputs import append_jsonl, console, progress, read_jsonl, write_json
from ..seeds import derive_seed

NonFiniteLossError = NonFiniteError  # its name before the PPO and reward trainers shared one error


# ------------------------------------------------------------------------------------ pure maths
def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, weights: torch.Tensor | None = None,
            denom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley–Terry loss summed over heads, and the per-head losses [K].

    r_chosen, r_rejected: [B, K]; weights [B, K] (bootstrap counts) or None for 1; denom [K]: the
    normaliser Σ_i w_ik (default: over these B rows — pass the global batch's under data
    parallelism). A head with zero total weight contributes 0."""
    nll = F.softplus(-(r_chosen - r_rejected).float())
    if weights is None:
        weights = torch.ones_like(nll)
    weights = weights.to(nll)
    if denom is None:
        denom = weights.sum(0)
    per_head = (nll * weights).sum(0) / denom.to(nll).clamp(min=1e-12)
    return per_head.sum(), per_head


def bootstrap_counts(n: int, num_heads: int, seed: int) -> torch.Tensor:
    """[n, K] float counts: head k's bootstrap resample contains pair i counts[i, k] times
    (each column sums to n)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (num_heads, n), generator=g)
    counts = torch.zeros(num_heads, n)
    counts.scatter_add_(1, idx, torch.ones(num_heads, n))
    return counts.T.contiguous()


# ------------------------------------------------------------------------------------ data
def load_pair_sets(cfg) -> tuple[list[dict], list[dict], str, str]:
    """(train pairs, held-out pairs, backbone folder, where the held-out pairs come from).
    User data when configured (varpo.data.sets.pair_sets: a user pair set without held-out pairs
    gives up its eval split, or its last 10% after a seeded shuffle); conversational rows are
    rendered with the backbone tokenizer's chat template. Otherwise the testbed's pairs and LM."""
    from ..data.sets import pair_sets, tokenizer_renderer

    rt, dc = cfg.reward_training, cfg.data
    tb = None
    if dc.pairs_path is None or (rt.backbone_path or cfg.model.policy_path) is None:
        from ..testbed import build_testbed

        tb = build_testbed(cfg.testbed, progress=False)
    backbone = rt.backbone_path or cfg.model.policy_path or str(tb.model_path)
    field = ("reward_training.backbone_path" if rt.backbone_path else
             "model.policy_path" if cfg.model.policy_path else "the testbed LM")
    train, held, source = pair_sets(cfg, tokenizer_renderer(backbone, field))
    if dc.pairs_path is None:
        train = tb.pairs("train")
        if held is None:
            held, source = tb.pairs("eval"), f"testbed {tb.dir.name} eval pairs"
    if rt.max_train_pairs:
        train = train[: rt.max_train_pairs]
    return train, held, backbone, source


def encode_pairs(tokenizer, pairs: list[dict], max_length: int, separator: str):
    """Token ids of every chosen and rejected text (truncated, see encode.py) and the counts of
    truncated pairs and texts."""
    from .encode import token_ids, truncate_left

    prompts = [p["prompt"] for p in pairs]
    out, cut_texts = [], 0
    for side in ("chosen", "rejected"):
        ids = [truncate_left(x, max_length, tokenizer.bos_token_id)
               for x in token_ids(tokenizer, prompts, [p[side] for p in pairs], separator)]
        cut_texts += sum(c for _, c in ids)
        out.append(ids)
    cut_pairs = sum(a[1] or b[1] for a, b in zip(*out))
    return [x for x, _ in out[0]], [x for x, _ in out[1]], cut_pairs, cut_texts


def _forward_pairs(model, chosen: list[list[int]], rejected: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen + rejected texts; per-head rewards [B, K] each."""
    from .encode import collate

    ids, mask = collate(chosen + rejected, pad, device)
    r = model(ids, mask)
    return r[: len(chosen)], r[len(chosen):]


@torch.no_grad()
def pair_rewards(model, chosen: list[list[int]], rejected: list[list[int]], pad: int, batch_size: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head rewards [N, K] (float32, CPU) of all pairs. Under data parallelism every rank
    scores an equal-sized shard (the last padded by repetition) and the shards are gathered."""
    n, world, rank = len(chosen), dist.world_size(), dist.rank()
    per_rank = math.ceil(n / world)
    idx = [min(i, n - 1) for i in range(rank * per_rank, (rank + 1) * per_rank)]
    rc, rr = [], []
    for s in range(0, per_rank, batch_size):
        part = idx[s : s + batch_size]
        c, r = _forward_pairs(model, [chosen[i] for i in part], [rejected[i] for i in part], pad, device)
        rc.append(c.float())
        rr.append(r.float())
    rc, rr = torch.cat(rc), torch.cat(rr)
    if world > 1:
        rc, rr = dist.all_gather_cat(rc.to(device)), dist.all_gather_cat(rr.to(device))
    return rc[:n].cpu(), rr[:n].cpu()


def _accuracies(rc: torch.Tensor, rr: torch.Tensor) -> tuple[list[float], float]:
    from .report import pair_accuracy

    return pair_accuracy(rc - rr).tolist(), float(pair_accuracy(rc.mean(-1) - rr.mean(-1)))


# ------------------------------------------------------------------------------------ state
@dataclass
class RewardTrainingState:
    """Where training is; JSON in every checkpoint, `best_heads` as its tensors."""

    step: int = 0  # optimizer steps done
    best: float | None = None  # best held-out early_stopping_metric so far
    best_step: int = 0
    since_best: int = 0  # evaluations without improvement
    stopped_early: bool = False
    last_loss: float | None = None  # travels with the checkpoint: a run resumed after its last step still reports it
    best_heads: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # trainable parameters at `best`

    def to_checkpoint(self) -> tuple[dict, dict[str, torch.Tensor]]:
        state = {k: v for k, v in asdict(self).items() if k != "best_heads"}
        return state, {f"best_state.{k}": v for k, v in (self.best_heads or {}).items()}

    @classmethod
    def from_checkpoint(cls, state: dict, tensors: dict[str, torch.Tensor]) -> RewardTrainingState:
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__}
        return cls(**known, best_heads={k.removeprefix("best_state."): v for k, v in tensors.items()} or None)


class TrainLog(TrainerCallback):
    """train_log.jsonl: one row per step and one per evaluation (rank 0). A fresh run starts a fresh
    file; a resumed run drops the rows the interrupted run wrote after its checkpoint (redone)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, trainer) -> None:
        if trainer.step == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(self.path) if r["step"] <= trainer.step))

    def on_step_end(self, metrics: dict) -> None:
        append_jsonl(self.path, metrics)

    def on_evaluate(self, metrics: dict) -> None:
        append_jsonl(self.path, metrics)


# ------------------------------------------------------------------------------------ the trainer
def train_reward_model(cfg, out_dir: str | Path, *, callbacks=(), decision=None) -> dict:
    """Train, evaluate and save an ensemble as configured (`cfg`: a VarpoConfig); returns the
    report written to OUT/rm_report.json (same dict on every rank). `callbacks`:
    varpo.callbacks.TrainerCallback instances, called after the train log. `decision`: what the
    caller decided about OUT before anything started (varpo.run_folder.decide; `varpo train-rm`
    checks the backbone and OUT first, varpo.commands.train_rm.run), carried out here once the
    process group exists (an overwrite clears the earlier run)."""
    return RewardTrainer(cfg, out_dir, callbacks=callbacks, decision=decision).train()


class RewardTrainer:
    def __init__(self, cfg, out_dir: str | Path, *, callbacks=(), decision=None):
        from transformers import AutoTokenizer

        from ..config import ConfigError, save_resolved
        from ..config.environment import check_environment
        from ..run_folder import REWARD, clear
        from .encode import pad_id

        self.t_start = time.perf_counter()
        check_environment(cfg)
        self.cfg, self.out, self.rt = cfg, Path(out_dir), cfg.reward_training
        rt = self.rt
        # the data, read and checked before the process group and the engines exist
        self.train_pairs, self.held, self.backbone_path, self.held_source = load_pair_sets(cfg)
        self.info = dist.join(cfg.deepspeed)
        self.world = self.info.world_size
        if len(self.train_pairs) < self.world:
            raise ConfigError(f"{len(self.train_pairs)} training pair(s) for {self.world} ranks: each rank needs at "
                              "least one")
        if not self.held:
            raise ConfigError("no held-out pairs to evaluate the ensemble on")
        self.global_batch = min(rt.batch_size, len(self.train_pairs))
        if self.global_batch < self.world:
            raise ConfigError(f"reward_training.batch_size={rt.batch_size} is smaller than the world size {self.world}")
        if decision is not None and self.info.is_main:
            if decision.action == "overwrite":
                clear(self.out, REWARD)
            if decision.note:
                console.print(decision.note, highlight=False)
        dist.barrier()
        self.ckpt_dir = self.out / "checkpoints"
        last = checkpoint.resolve(self.ckpt_dir) if rt.resume else None
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, self.out)
        dist.barrier()
        self.tok = AutoTokenizer.from_pretrained(self.backbone_path)
        self.pad = pad_id(self.tok)
        self._build_engine()
        self._encode()
        self.weights = (bootstrap_counts(len(self.train_pairs), rt.num_heads, derive_seed("bootstrap", cfg.seed, rt.head_seed))
                        if rt.bootstrap else None)
        self.steps_per_epoch = max(1, len(self.train_pairs) // self.global_batch)  # the last partial batch is dropped
        self.total = self.steps_per_epoch * rt.epochs
        self.st = RewardTrainingState()
        self.state, self.control = TrainerState(), TrainerControl()
        own = [TrainLog(self.out / "train_log.jsonl")] if self.info.is_main else []
        self.callbacks = CallbackList([*own, *callbacks], self.control, self.state)
        if last is not None:
            self._resume(last)

    @property
    def step(self) -> int:
        return self.st.step

    # ------------------------------------------------------------------ set-up
    def _build_engine(self) -> None:
        """The ensemble of reward_training.ensemble_kind (K backbones for deep), LoRA adapters when
        configured, and its training engine."""
        from ..engines import build_model, ds_config, train_engine
        from ..models.loading import attn_kwargs
        from .deep import DeepEnsembleRewardModel
        from .encode import model_max_length
        from .model import EnsembleRewardModel

        cfg, rt = self.cfg, self.rt
        conf = ds_config(cfg.deepspeed, "reward", math.ceil(self.global_batch / self.world), trainable=True)
        if rt.ensemble_kind == "deep":  # K backbones, each from its own seed
            model = build_model(lambda: DeepEnsembleRewardModel.from_backbone(
                self.backbone_path, rt.num_heads, init=rt.deep_init, head_seed=rt.head_seed, pooling=rt.pooling,
                ddof=cfg.reward.ddof, separator=rt.separator, load_kw=attn_kwargs(cfg.model)), conf)
        else:
            model = build_model(lambda: EnsembleRewardModel.from_backbone(
                self.backbone_path, rt.num_heads, head_seed=rt.head_seed, pooling=rt.pooling, ddof=cfg.reward.ddof,
                separator=rt.separator, load_kw=attn_kwargs(cfg.model),
                prior_scale=rt.prior_scale if rt.ensemble_kind == "prior" else 0.0), conf)
        self.head0_from = _start_from_score_head(model, self.backbone_path, rt, self.info.is_main)
        if rt.lora.enabled:
            torch.manual_seed(cfg.seed)  # LoRA's A matrices draw from the global generator: same on every rank and rerun
            model.add_lora(rt.lora.r, rt.lora.alpha, rt.lora.dropout, rt.lora.target_modules)
        self.max_len = model_max_length(model.backbone_config, rt.max_length)
        if self.max_len < rt.max_length and self.info.is_main:
            console.print(f"reward_training.max_length={rt.max_length} capped at the backbone's {self.max_len} positions")
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.deep_full = rt.ensemble_kind == "deep" and not rt.lora.enabled  # the members' whole backbones train
        lr_of = {"members.": rt.backbone_lr} if self.deep_full and rt.backbone_lr else None
        self.engine = train_engine(model, conf, lr=rt.lr, weight_decay=rt.weight_decay, lr_of=lr_of)
        self.device = self.engine.device

    def _encode(self) -> None:
        rt = self.rt
        self.tr_c, self.tr_r, self.cut_pairs, self.cut_texts = encode_pairs(self.tok, self.train_pairs, self.max_len,
                                                                            rt.separator)
        self.ev_c, self.ev_r, self.ev_cut_pairs, _ = encode_pairs(self.tok, self.held, self.max_len, rt.separator)
        if self.cut_pairs and self.info.is_main:
            console.print(f"[yellow]{self.cut_pairs} of {len(self.train_pairs)} training pairs ({self.cut_texts} texts) "
                          f"exceed max_length={self.max_len} tokens: truncated from the left (the prompt's start goes first)[/]")

    def _resume(self, folder: Path) -> None:
        """Engine, state and RNG from checkpoint `folder`."""
        saved = json.loads((folder / checkpoint.STATE).read_text())
        state, tensors = engine_ckpt.load(folder, {"reward": self.engine}, saved_world_size=saved.get("world_size"),
                                          strict=False)
        self.st = RewardTrainingState.from_checkpoint(state, tensors)
        if self.info.is_main:
            console.print(f"resuming reward-model training from {folder} at step {self.st.step}/{self.total}")

    # ------------------------------------------------------------------ one step
    def batch(self, step: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """(epoch, batch within it, the global batch's pair indices, this rank's share): a seeded
        permutation per epoch, so the data position is a function of the step alone."""
        epoch, b = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(derive_seed("data_order", self.cfg.seed, epoch))
        order = torch.randperm(len(self.train_pairs), generator=gen)
        batch = order[b * self.global_batch : (b + 1) * self.global_batch]
        return epoch, b, batch, batch[self.info.rank :: self.world]

    def forward(self, batch: torch.Tensor, shard: torch.Tensor):
        """This rank's per-head rewards of its pairs and the Bradley–Terry loss: its share of the
        global batch's loss (bootstrap weights normalised over the whole global batch)."""
        w = self.weights
        denom = w[batch].sum(0) if w is not None else torch.full((self.rt.num_heads,), float(len(batch)))
        rc, rr = _forward_pairs(self.engine, [self.tr_c[i] for i in shard], [self.tr_r[i] for i in shard], self.pad,
                                self.device)
        loss, per_head = bt_loss(rc, rr, None if w is None else w[shard].to(self.device), denom.to(self.device))
        return rc, rr, loss, per_head

    def check_finite(self, step: int, epoch: int, b: int, batch: torch.Tensor, rc, rr, loss) -> None:
        """Every rank learns which pairs of the global batch gave a non-finite reward, and stops."""
        bad_rows = torch.zeros(len(batch) + 1, device=self.device)
        bad_rows[self.info.rank : len(batch) : self.world] = (~(torch.isfinite(rc).all(-1) & torch.isfinite(rr).all(-1))).float()
        bad_rows[-1] = float(not torch.isfinite(loss))
        bad_rows = dist.all_reduce_max(bad_rows).cpu()
        if bad_rows.any():
            offending = batch[bad_rows[:-1].bool()].tolist()
            what = f"rewards for training pairs {offending[:16]}{'…' if len(offending) > 16 else ''}" if offending else "loss"
            raise NonFiniteError(
                f"reward-model training: non-finite {what} at step {step} (epoch {epoch}, batch {b} of "
                f"{self.steps_per_epoch}; pair indices count from 0 in the training set); the last checkpoint "
                f"(if any) is in {self.ckpt_dir}. Check the backbone's weights and those pairs, or lower "
                f"reward_training.lr ({self.rt.lr}).")

    def update(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; × world makes that the global batch's gradient
        self.engine.backward(loss * self.world)
        self.engine.step()

    def evaluate(self) -> dict:
        """Per-head rewards of the held-out pairs, their accuracies and Bradley–Terry loss."""
        self.engine.eval()
        rc, rr = pair_rewards(self.engine, self.ev_c, self.ev_r, self.pad, self.rt.eval_batch_size, self.device)
        self._train_mode()
        head_acc, ens_acc = _accuracies(rc, rr)
        loss, _ = bt_loss(rc, rr)
        return {"rc": rc, "rr": rr, "head_accuracy": head_acc, "ensemble_accuracy": ens_acc, "loss": loss.item()}

    def early_stopping(self, ev: dict) -> None:
        """Keep the best heads (reward_training.early_stopping_*); stop after `patience` evaluations
        without improvement."""
        rt, st = self.rt, self.st
        higher_better = rt.early_stopping_metric == "accuracy"
        metric = ev["ensemble_accuracy"] if higher_better else ev["loss"]
        if st.best is None or (metric > st.best if higher_better else metric < st.best):
            st.best, st.best_step, st.since_best = metric, st.step, 0
            if rt.early_stopping_patience:
                st.best_heads = _trainable_state(self.engine.module)
        else:
            st.since_best += 1
        if rt.early_stopping_patience and st.since_best >= rt.early_stopping_patience:
            st.stopped_early = True
            if self.info.is_main:
                console.print(f"early stopping at step {st.step}: no better eval {rt.early_stopping_metric} for "
                              f"{st.since_best} evaluations (best {st.best:.4f} at step {st.best_step})")

    def save_checkpoint(self) -> None:
        state, tensors = self.st.to_checkpoint()
        path = engine_ckpt.save(self.ckpt_dir, self.st.step, {"reward": self.engine}, {**state, "world_size": self.world},
                                keep_last=self.cfg.checkpoint.keep_last, verify=self.cfg.checkpoint.verify,
                                tensors=tensors, exclude_frozen=True)
        self.callbacks.on_checkpoint_saved(path)

    def _train_mode(self) -> None:
        self.engine.train()
        if not self.rt.lora.enabled and not self.deep_full:
            self.engine.module.backbone.eval()  # frozen features: no dropout noise in what the heads see

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        rt, st = self.rt, self.st
        self.state.step = st.step
        self.callbacks.on_train_begin(self)
        self._train_mode()
        with progress() as bar:
            task = bar.add_task("reward ensemble", total=self.total, completed=st.step, info="")
            while st.step < self.total and not st.stopped_early and not self.control.should_stop:
                step = st.step
                epoch, b, batch, shard = self.batch(step)
                rc, rr, loss, per_head = self.forward(batch, shard)
                self.check_finite(step, epoch, b, batch, rc, rr, loss)
                self.update(loss)
                st.step = self.state.step = step = step + 1
                head_loss = dist.all_reduce_sum(per_head.detach()).cpu()  # each rank's share of the global loss
                global_loss = st.last_loss = head_loss.sum().item()
                self.callbacks.on_step_end({"kind": "train", "step": step, "epoch": epoch, "batch": b,
                                            "loss": global_loss, "elapsed": self._elapsed(),
                                            "head_loss": head_loss.tolist()})
                if step % rt.eval_every == 0 or step == self.total:
                    ev = self.evaluate()
                    self.callbacks.on_evaluate({"kind": "eval", "step": step, "epoch": epoch, "eval_loss": ev["loss"],
                                                "eval_head_accuracy": ev["head_accuracy"],
                                                "eval_ensemble_accuracy": ev["ensemble_accuracy"],
                                                "elapsed": self._elapsed()})
                    self.early_stopping(ev)
                    bar.update(task, info=f"loss {global_loss:.3f}  eval acc {ev['ensemble_accuracy']:.3f}")
                if rt.checkpoint_every and step % rt.checkpoint_every == 0 and step < self.total:
                    self.save_checkpoint()
                bar.update(task, completed=step)
        self.save_checkpoint()
        report = self.finish()
        self.callbacks.on_train_end(report)
        return report

    def finish(self) -> dict:
        """The best heads back (early stopping), the members standardised (reward_training.standardize),
        the final held-out report and the saved ensemble."""
        from ..engines import gathered_params

        rt, st, module = self.rt, self.st, self.engine.module
        if st.best_heads is not None:
            _load_trainable_state(module, st.best_heads)  # early stopping keeps the best heads
        final = self.evaluate()
        if rt.standardize:  # members in units of their own spread on the held-out responses (reference samples)
            with gathered_params(module):
                module.standardize(torch.cat([final["rc"], final["rr"]]).to(self.device))
            final = self.evaluate()
        report: dict = {}
        with gathered_params(module):
            if self.info.is_main:
                report = self._report(final)
        dist.barrier()
        return dist.broadcast_object(report)

    def _report(self, final: dict) -> dict:
        from .report import disagreement_report

        rt, st, module, held = self.rt, self.st, self.engine.module, self.held
        gold = gold_resp = None
        if all("chosen_gold" in p and "rejected_gold" in p for p in held):
            gold = torch.tensor([float(p["chosen_gold"]) - float(p["rejected_gold"]) for p in held], dtype=torch.float64)
            gold_resp = torch.tensor([float(p[side]) for side in ("chosen_gold", "rejected_gold") for p in held],
                                     dtype=torch.float64)
        report = disagreement_report(final["rc"], final["rr"], self.out, ddof=self.cfg.reward.ddof, gold_diff=gold,
                                     gold_responses=gold_resp)
        model_path = module.save_pretrained(self.out / "reward_model", tokenizer=self.tok, extra={"max_length": self.max_len})
        report.update(
            model_path=str(model_path), backbone=str(self.backbone_path), lora=rt.lora.enabled,
            ensemble_kind=rt.ensemble_kind, prior_scale=module.prior_scale, standardized=rt.standardize,
            deep_init=rt.deep_init if rt.ensemble_kind == "deep" else None, head0_from=self.head0_from,
            trainable_parameters=self.n_trainable, bootstrap=rt.bootstrap, head_seeds=module.head_seeds,
            train_pairs=len(self.train_pairs), eval_source=self.held_source, steps=st.step, epochs=rt.epochs,
            final_train_loss=st.last_loss, eval_loss=final["loss"], stopped_early=st.stopped_early,
            best_step=st.best_step, max_length=self.max_len, truncated_train_pairs=self.cut_pairs,
            truncated_train_texts=self.cut_texts, truncated_eval_pairs=self.ev_cut_pairs, world_size=self.world,
            seconds=self._elapsed(),
        )
        write_json(self.out / "rm_report.json", report)
        return report


def _start_from_score_head(model, backbone_path: str, rt, is_main: bool) -> str | None:
    """The paper's setting (Appendix B): heads attached beside a trained reward model's own scalar
    head on its frozen trunk. When the backbone is a sequence-classification reward model and the
    heads read what its score head reads (pooling=last), head 0 starts from that head; returns
    where head 0 came from (None: a random start like the others)."""
    from transformers import AutoConfig

    from .sequence_classifier import is_sequence_classifier, score_head_weights

    try:
        conf = AutoConfig.from_pretrained(str(backbone_path))
    except (OSError, ValueError):
        return None
    if not is_sequence_classifier(conf) or rt.ensemble_kind == "deep":
        return None
    if rt.pooling != "last":
        if is_main:
            console.print(f"reward_training.pooling={rt.pooling}: head 0 starts at random, not from the score head "
                          f"of {backbone_path}, which reads the last token (pooling=last for the paper's setting)")
        return None
    found = score_head_weights(backbone_path)
    if found is None:
        if is_main:
            console.print(f"{backbone_path}: no score.weight tensor of one row found; head 0 starts at random")
        return None
    weight, bias = found
    with torch.no_grad():  # the heads are plain tensors until the engine wraps them (ZeRO-3 included)
        model.heads.weight[0].copy_(weight[0].to(model.heads.weight))
        model.heads.bias[0] = float(bias[0]) if bias is not None else 0.0
    if is_main:
        console.print(f"head 0 starts from the score head of {backbone_path} (the paper's setting: "
                      f"{rt.num_heads - 1} more heads beside the reward model's own)")
    return f"score head of {backbone_path}"


def _trainable_state(module) -> dict:
    from ..engines import gathered_params

    with gathered_params(module):
        return {n: p.detach().clone().cpu() for n, p in module.named_parameters() if p.requires_grad}


def _load_trainable_state(module, state: dict) -> None:
    from ..engines import is_zero3

    params = dict(module.named_parameters())
    if is_zero3(module):  # a write inside the gather must name a rank to be kept
        deepspeed = dist.import_deepspeed()
        with deepspeed.zero.GatheredParameters([params[n] for n in state], modifier_rank=0), torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v.to(params[n]))
    else:
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v.to(params[n]))
