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
`EnsembleRewardModel.from_pretrained`-able), rm_report.json and disagreement.png (the held-out
disagreement report), and the resolved config.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import checkpoint, dist
from ..outputs import append_jsonl, console, progress, write_json


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or reward; the message names the step and batch."""


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


# ------------------------------------------------------------------------------------ engine state
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


def _save_checkpoint(engine, ckpt_dir: Path, st: dict, cfg) -> None:
    """A crash-safe checkpoint (varpo.checkpoint) of the trainable parameters and optimizer (all
    ranks take part) and of the training state: JSON, with the early-stopping best heads as tensors."""
    state = {k: v for k, v in st.items() if k != "best_state"}
    tensors = {f"best_state.{k}": v for k, v in (st["best_state"] or {}).items()}
    checkpoint.save(ckpt_dir, st["step"], lambda folder: engine.save_checkpoint(
        str(folder), tag="reward", exclude_frozen_parameters=True), state, keep_last=cfg.checkpoint.keep_last,
        verify=cfg.checkpoint.verify, tensors=tensors)


def _resume(engine, folder: Path, st: dict, log: Path, is_main: bool) -> None:
    """Engine, state and RNG from checkpoint `folder`; log rows written after it are dropped."""
    import json

    from ..outputs import read_jsonl

    load_path, _ = engine.load_checkpoint(str(folder), tag="reward", load_module_strict=False)
    if load_path is None:
        raise RuntimeError(f"checkpoint {folder}: no reward-model engine state")
    saved, tensors = checkpoint.load_state(folder)
    st.update(saved)
    st["best_state"] = {k.removeprefix("best_state."): v for k, v in tensors.items()} or None
    checkpoint.restore_rng(folder)
    if is_main and log.exists():  # rows of steps the interrupted run did after this checkpoint are redone
        log.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(log) if r["step"] <= st["step"]))


def _start_from_score_head(model, backbone_path: str, rt, is_main: bool) -> str | None:
    """The paper's setting (Appendix B): heads attached beside a trained reward model's own scalar
    head on its frozen trunk. When the backbone is a sequence-classification reward model and the
    heads read what its score head reads (pooling=last), head 0 starts from that head; returns
    where head 0 came from (None: a random start like the others)."""
    from transformers import AutoConfig

    from ..model_folders import is_sequence_classifier
    from .sequence_classifier import score_head_weights

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


# ------------------------------------------------------------------------------------ training
def train_reward_model(cfg, out_dir: str | Path, *, overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """Train, evaluate and save an ensemble as configured (`cfg`: a VarpoConfig); returns the
    report written to OUT/rm_report.json (same dict on every rank). The backbone, the data and
    the output folder are checked before anything starts (varpo.run_folder: a finished run is
    refused unless `overwrite`, an interrupted one resumed only with the configuration it was
    started with unless `allow_config_change`)."""
    from transformers import AutoTokenizer

    from ..adapters import attn_kwargs, check_environment
    from ..config import ConfigError, save_resolved
    from ..engines import build_model, ds_config, gathered_params, train_engine
    from ..preflight import check_reward_training
    from ..run_folder import REWARD, clear, decide
    from .deep import DeepEnsembleRewardModel
    from .encode import model_max_length, pad_id
    from .model import EnsembleRewardModel
    from .report import disagreement_report

    t_start = time.perf_counter()
    out = Path(out_dir)
    rt = cfg.reward_training
    # before anything starts or is written: the backbone, the output folder, the machine, the data
    check_reward_training(cfg)
    decision = decide(out, cfg, REWARD, overwrite=overwrite, allow_config_change=allow_config_change,
                      has_checkpoint=None if rt.resume else False)
    check_environment(cfg)
    train, held, backbone_path, held_source = load_pair_sets(cfg)
    info = dist.init_distributed(cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_minutes,
                                 cfg.deepspeed.peer_timeout_s, cfg.deepspeed.rendezvous_timeout_s)
    world = info.world_size
    if len(train) < world:
        raise ConfigError(f"{len(train)} training pair(s) for {world} ranks: each rank needs at least one")
    if not held:
        raise ConfigError("no held-out pairs to evaluate the ensemble on")
    global_batch = min(rt.batch_size, len(train))
    if global_batch < world:
        raise ConfigError(f"reward_training.batch_size={rt.batch_size} is smaller than the world size {world}")
    if info.is_main:
        if decision.action == "overwrite":
            clear(out, REWARD)
        if decision.note:
            console.print(decision.note, highlight=False)
    dist.barrier()
    ckpt_dir = out / "checkpoints"
    last = checkpoint.resolve(ckpt_dir) if rt.resume else None
    resuming = last is not None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
        if not resuming:
            (out / "train_log.jsonl").unlink(missing_ok=True)
    dist.barrier()

    tok = AutoTokenizer.from_pretrained(backbone_path)
    micro = math.ceil(global_batch / world)
    conf = ds_config(cfg.deepspeed, "reward", micro, trainable=True)
    if rt.ensemble_kind == "deep":  # K backbones, each from its own seed
        model = build_model(lambda: DeepEnsembleRewardModel.from_backbone(
            backbone_path, rt.num_heads, init=rt.deep_init, head_seed=rt.head_seed, pooling=rt.pooling,
            ddof=cfg.reward.ddof, separator=rt.separator, load_kw=attn_kwargs(cfg.model)), conf)
    else:
        model = build_model(lambda: EnsembleRewardModel.from_backbone(
            backbone_path, rt.num_heads, head_seed=rt.head_seed, pooling=rt.pooling, ddof=cfg.reward.ddof,
            separator=rt.separator, load_kw=attn_kwargs(cfg.model),
            prior_scale=rt.prior_scale if rt.ensemble_kind == "prior" else 0.0), conf)
    head0 = _start_from_score_head(model, backbone_path, rt, info.is_main)
    if rt.lora.enabled:
        torch.manual_seed(cfg.seed)  # LoRA's A matrices draw from the global generator: same on every rank and rerun
        model.add_lora(rt.lora.r, rt.lora.alpha, rt.lora.dropout, rt.lora.target_modules)
    max_len = model_max_length(model.backbone_config, rt.max_length)
    if max_len < rt.max_length and info.is_main:
        console.print(f"reward_training.max_length={rt.max_length} capped at the backbone's {max_len} positions")
    pad = pad_id(tok)
    tr_c, tr_r, cut_pairs, cut_texts = encode_pairs(tok, train, max_len, rt.separator)
    ev_c, ev_r, ev_cut_pairs, _ = encode_pairs(tok, held, max_len, rt.separator)
    if cut_pairs and info.is_main:
        console.print(f"[yellow]{cut_pairs} of {len(train)} training pairs ({cut_texts} texts) exceed "
                      f"max_length={max_len} tokens: truncated from the left (the prompt's start goes first)[/]")
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    deep_full = rt.ensemble_kind == "deep" and not rt.lora.enabled  # the members' whole backbones train
    lr_of = {"members.": rt.backbone_lr} if deep_full and rt.backbone_lr else None
    engine = train_engine(model, conf, lr=rt.lr, weight_decay=rt.weight_decay, lr_of=lr_of)
    device = engine.device
    weights = bootstrap_counts(len(train), rt.num_heads, cfg.seed * 7919 + rt.head_seed) if rt.bootstrap else None

    steps_per_epoch = max(1, len(train) // global_batch)  # the last partial batch is dropped (reshuffled each epoch)
    total = steps_per_epoch * rt.epochs
    higher_better = rt.early_stopping_metric == "accuracy"
    # last_loss travels with the checkpoint: a run resumed after its last step still reports it
    st = {"step": 0, "best": None, "best_step": 0, "since_best": 0, "stopped_early": False, "best_state": None,
          "last_loss": None}
    log = out / "train_log.jsonl"
    if resuming:
        _resume(engine, last, st, log, info.is_main)
        if info.is_main:
            console.print(f"resuming reward-model training from {last} at step {st['step']}/{total}")

    def evaluate() -> dict:
        engine.eval()
        rc, rr = pair_rewards(engine, ev_c, ev_r, pad, rt.eval_batch_size, device)
        _set_train_mode()
        head_acc, ens_acc = _accuracies(rc, rr)
        loss, _ = bt_loss(rc, rr)
        return {"rc": rc, "rr": rr, "head_accuracy": head_acc, "ensemble_accuracy": ens_acc, "loss": loss.item()}

    def _set_train_mode():
        engine.train()
        if not rt.lora.enabled and not deep_full:
            engine.module.backbone.eval()  # frozen features: no dropout noise in what the heads see

    _set_train_mode()
    with progress() as bar:
        task = bar.add_task("reward ensemble", total=total, completed=st["step"], info="")
        while st["step"] < total and not st["stopped_early"]:
            step = st["step"]
            epoch, b = divmod(step, steps_per_epoch)
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            batch = order[b * global_batch : (b + 1) * global_batch]
            shard = batch[info.rank :: world]
            denom = weights[batch].sum(0) if weights is not None else torch.full((rt.num_heads,), float(len(batch)))
            rc, rr = _forward_pairs(engine, [tr_c[i] for i in shard], [tr_r[i] for i in shard], pad, device)
            loss, per_head = bt_loss(rc, rr, None if weights is None else weights[shard].to(device), denom.to(device))
            # which pairs of the global batch gave a non-finite reward (every rank learns all of them)
            bad_rows = torch.zeros(len(batch) + 1, device=device)
            bad_rows[info.rank : len(batch) : world] = (~(torch.isfinite(rc).all(-1) & torch.isfinite(rr).all(-1))).float()
            bad_rows[-1] = float(not torch.isfinite(loss))
            bad_rows = dist.all_reduce_max(bad_rows).cpu()
            if bad_rows.any():
                offending = batch[bad_rows[:-1].bool()].tolist()
                what = f"rewards for training pairs {offending[:16]}{'…' if len(offending) > 16 else ''}" if offending else "loss"
                raise NonFiniteLossError(
                    f"reward-model training: non-finite {what} at step {step} (epoch {epoch}, batch {b} of "
                    f"{steps_per_epoch}; pair indices count from 0 in the training set); the last checkpoint "
                    f"(if any) is in {ckpt_dir}. Check the backbone's weights and those pairs, or lower "
                    f"reward_training.lr ({rt.lr}).")
            # DeepSpeed averages gradients over ranks; × world makes that the global batch's gradient
            engine.backward(loss * world)
            engine.step()
            st["step"] = step = step + 1
            head_loss = dist.all_reduce_sum(per_head.detach()).cpu()  # each rank's share of the global loss
            global_loss = st["last_loss"] = head_loss.sum().item()
            if info.is_main:
                append_jsonl(log, {"kind": "train", "step": step, "epoch": epoch, "batch": b, "loss": global_loss,
                                   "elapsed": time.perf_counter() - t_start,
                                   "head_loss": head_loss.tolist()})
            if step % rt.eval_every == 0 or step == total:
                ev = evaluate()
                metric = ev["ensemble_accuracy"] if higher_better else ev["loss"]
                if info.is_main:
                    append_jsonl(log, {"kind": "eval", "step": step, "epoch": epoch, "eval_loss": ev["loss"],
                                       "eval_head_accuracy": ev["head_accuracy"],
                                       "eval_ensemble_accuracy": ev["ensemble_accuracy"],
                                       "elapsed": time.perf_counter() - t_start})
                improved = st["best"] is None or (metric > st["best"] if higher_better else metric < st["best"])
                if improved:
                    st.update(best=metric, best_step=step, since_best=0)
                    if rt.early_stopping_patience:
                        st["best_state"] = _trainable_state(engine.module)
                else:
                    st["since_best"] += 1
                if rt.early_stopping_patience and st["since_best"] >= rt.early_stopping_patience:
                    st["stopped_early"] = True
                    if info.is_main:
                        console.print(f"early stopping at step {step}: no better eval {rt.early_stopping_metric} for "
                                      f"{st['since_best']} evaluations (best {st['best']:.4f} at step {st['best_step']})")
                bar.update(task, info=f"loss {global_loss:.3f}  eval acc {ev['ensemble_accuracy']:.3f}")
            if rt.checkpoint_every and step % rt.checkpoint_every == 0 and step < total:
                _save_checkpoint(engine, ckpt_dir, st, cfg)
            bar.update(task, completed=step)
    _save_checkpoint(engine, ckpt_dir, st, cfg)
    if st["best_state"] is not None:
        _load_trainable_state(engine.module, st["best_state"])  # early stopping keeps the best heads
    final = evaluate()
    if rt.standardize:  # members in units of their own spread on the held-out responses (reference samples)
        with gathered_params(engine.module):
            engine.module.standardize(torch.cat([final["rc"], final["rr"]]).to(device))
        final = evaluate()

    report: dict = {}
    with gathered_params(engine.module):
        if info.is_main:
            gold = gold_resp = None
            if all("chosen_gold" in p and "rejected_gold" in p for p in held):
                gold = torch.tensor([float(p["chosen_gold"]) - float(p["rejected_gold"]) for p in held], dtype=torch.float64)
                gold_resp = torch.tensor([float(p[side]) for side in ("chosen_gold", "rejected_gold") for p in held],
                                         dtype=torch.float64)
            report = disagreement_report(final["rc"], final["rr"], out, ddof=cfg.reward.ddof, gold_diff=gold,
                                         gold_responses=gold_resp)
            model_path = engine.module.save_pretrained(out / "reward_model", tokenizer=tok,
                                                       extra={"max_length": max_len})
            report.update(
                model_path=str(model_path), backbone=str(backbone_path), lora=rt.lora.enabled,
                ensemble_kind=rt.ensemble_kind, prior_scale=engine.module.prior_scale, standardized=rt.standardize,
                deep_init=rt.deep_init if rt.ensemble_kind == "deep" else None, head0_from=head0,
                trainable_parameters=n_trainable, bootstrap=rt.bootstrap, head_seeds=engine.module.head_seeds,
                train_pairs=len(train), eval_source=held_source, steps=st["step"], epochs=rt.epochs,
                final_train_loss=st["last_loss"], eval_loss=final["loss"], stopped_early=st["stopped_early"],
                best_step=st["best_step"], max_length=max_len, truncated_train_pairs=cut_pairs,
                truncated_train_texts=cut_texts, truncated_eval_pairs=ev_cut_pairs, world_size=world,
                seconds=time.perf_counter() - t_start,
            )
            write_json(out / "rm_report.json", report)
    dist.barrier()
    return dist.broadcast_object(report)
