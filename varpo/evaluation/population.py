"""Populations of policies (paper Algorithms 2–4): N independently seeded PPO policies per method
plus N sampling runs of the reference, each reduced to one number — its mean true reward over the
evaluation prompts. Every result is written the moment it exists
(`OUT/policies/<method>/seed_<k>.json`), so a killed population resumes where it stopped; jobs run
in parallel worker processes, at most one per core."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from ..config import VarpoConfig, load_config
from ..outputs import console, progress, write_json

REFERENCE = "reference"


def result_path(out: Path, method: str, seed: int) -> Path:
    return out / "policies" / method / f"seed_{seed}.json"


def true_reward_fn(cfg: VarpoConfig):
    """The reward a policy is judged by: gold (default), a reward model's mean, or a judge's midpoint."""
    kind = cfg.evaluation.true_reward
    if kind == "gold":
        from ..testbed import gold_reward

        return gold_reward
    if kind == "reward_model":
        if not cfg.evaluation.true_reward_path:
            from ..config import ConfigError

            raise ConfigError("evaluation.true_reward_path: required when evaluation.true_reward=reward_model")
        from ..reward.scorer import load_scorer

        scorer = load_scorer(cfg.evaluation.true_reward_path)
    else:
        from ..judge import JudgeScorer

        scorer = JudgeScorer.from_config(cfg.judge)
    def reward(prompts, responses):
        sc = scorer.score(prompts, responses)
        valid = sc.valid.tolist() if sc.valid is not None else [True] * len(prompts)
        # a sample a judge dropped by policy is left out of the policy's mean, not counted as a midpoint
        return [r if ok else float("nan") for r, ok in zip(sc.eval_reward.tolist(), valid)]

    return reward


def eval_prompts(cfg: VarpoConfig) -> list[str]:
    if cfg.data.eval_prompts_path:
        from ..data import load_prompts

        rows = load_prompts(cfg.data.eval_prompts_path, column=cfg.data.prompt_column, skip_bad_rows=cfg.data.skip_bad_rows).rows
    else:
        from ..testbed import build_testbed

        rows = list(build_testbed(cfg.testbed, progress=False).eval_prompts)
    return rows[: cfg.evaluation.num_eval_prompts]


def ensure_reward_model(cfg: VarpoConfig, out: Path) -> list[str]:
    """Overrides pointing PPO at a reward ensemble: the configured one, or one trained (once,
    reused on resume) under OUT/reward on the configured preference pairs."""
    if cfg.reward.type != "ensemble" or cfg.reward.path:
        return []
    report_path = out / "reward" / "rm_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
    else:
        from ..reward.train import train_reward_model

        report = train_reward_model(cfg, out / "reward")
    return [f"reward.path={report['model_path']}"]


def _over_steps(metrics_path: Path, keys: tuple[str, ...]) -> dict:
    """`<key>_over_steps`: the mean of a logged metric over a run's good steps (skipped steps log
    none), e.g. the realised spread of the σ² weights for a heterogeneity sweep; None if absent."""
    from ..outputs import read_jsonl

    rows = read_jsonl(metrics_path) if metrics_path.exists() else []
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[f"{k}_over_steps"] = sum(vals) / len(vals) if vals else None
    return out


def _job(config_path, overrides: list[str], method: str, seed: int, out: str, threads: int) -> dict:
    """One population member, run in a worker process: train (unless reference), evaluate, save."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("VARPO_NO_PROGRESS", "1")
    from .policy_eval import evaluate_policy

    out_p = Path(out)
    if method == REFERENCE:
        cfg = load_config(config_path, overrides)
        from ..ppo import resolve_sources

        policy_path, extra = resolve_sources(cfg)[0], {"kl_mean": 0.0}
    else:
        method_overrides = load_config(config_path, overrides).evaluation.methods[method]
        cfg = load_config(config_path, [*overrides, *method_overrides, f"seed={seed}"])
        from ..ppo import train_ppo

        run_dir = out_p / "runs" / method / f"seed_{seed}"
        summary = train_ppo(cfg, run_dir)
        final = summary["final"]
        policy_path = summary["policy_path"]
        extra = {k: final.get(k) for k in ("kl_mean", "weighted_kl_mean", "score_mean", "variance_mean", "gold_mean")}
        extra.update(_over_steps(run_dir / "metrics.jsonl", ("weight_mean", "weight_std")))
    # evaluation sampling is seeded apart from training, identically across methods
    ev = evaluate_policy(policy_path, eval_prompts(cfg), true_reward_fn(cfg), cfg.generation,
                         seed=1_000_000 + seed, batch_size=cfg.evaluation.eval_batch_size,
                         samples_per_prompt=cfg.evaluation.samples_per_prompt, chat_template=cfg.data.chat_template,
                         load_kw=_eval_load_kwargs(cfg))
    row = {"method": method, "seed": seed, **ev, **extra, "policy_path": str(policy_path)}
    write_json(result_path(out_p, method, seed), row)
    return row


def run_population(config_path, overrides: list[str], seeds: int, out: Path, workers: int | None = None,
                   methods: list[str] | None = None, reference: bool = True) -> list[dict]:
    """Train and evaluate `seeds` policies per method plus (unless `reference` is False)
    `seeds` reference runs under `out`."""
    cfg = load_config(config_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, *ensure_reward_model(cfg, out)]
    unknown = set(methods or []) - set(cfg.evaluation.methods)
    if unknown:
        from ..config import ConfigError

        raise ConfigError(f"--methods: {sorted(unknown)} not in evaluation.methods ({sorted(cfg.evaluation.methods)})")
    names = ([REFERENCE] if reference else []) + list(methods or cfg.evaluation.methods)
    jobs = [(m, s) for s in range(seeds) for m in names]
    done = [json.loads(result_path(out, m, s).read_text()) for m, s in jobs if result_path(out, m, s).exists()]
    todo = [(m, s) for m, s in jobs if not result_path(out, m, s).exists()]
    if done:
        console.print(f"population: {len(done)} of {len(jobs)} results already in {out}/policies, {len(todo)} to go")
    cores = os.cpu_count() or 1
    n_workers = max(1, min(workers or cfg.evaluation.workers or cores, len(todo) or 1))
    threads = max(1, cores // n_workers)
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("population", total=len(jobs), completed=len(done), info="")
        if n_workers == 1:
            for m, s in todo:
                done.append(_job(config_path, overrides, m, s, str(out), threads))
                bar.update(task, advance=1, info=f"{m} seed {s}")
        else:
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_job, config_path, overrides, m, s, str(out), threads): (m, s) for m, s in todo}
                for fut in as_completed(futures):
                    done.append(fut.result())
                    m, s = futures[fut]
                    bar.update(task, advance=1, info=f"{m} seed {s}")
    console.print(f"population: {len(todo)} jobs in {time.perf_counter() - t0:.0f} s with {n_workers} workers")
    return done


def summarize(rows: list[dict]) -> dict:
    """Per method: mean and variance (ddof=1) of the per-policy true rewards, n, mean KL."""
    import statistics as st

    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        r = [x["reward"] for x in rows if x["method"] == method]
        kl = [x["kl_mean"] for x in rows if x["method"] == method and x.get("kl_mean") is not None]
        out[method] = {"gold_reward_mean": st.fmean(r), "gold_reward_var": st.variance(r) if len(r) > 1 else 0.0,
                       "n_policies": len(r), "kl_mean": st.fmean(kl) if kl else 0.0}
    return out


def _eval_load_kwargs(cfg) -> dict:
    """How the exported policy is loaded for evaluation (on CPU): the configured attention kernel,
    unless it is flash-attn, which has no CPU kernels."""
    attn = cfg.model.attn_implementation
    return {"attn_implementation": attn} if attn in ("eager", "sdpa") else {}
