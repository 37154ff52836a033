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

from ..config import ConfigError, VarpoConfig, load_config
from ..outputs import console, progress, write_json

REFERENCE = "reference"
# what differs between the members of a population (`varpo population --vary`):
#   both      member k trains with seed k, and an oracle reward draws its noise with seed k (the paper)
#   training  every member faces one reward draw (the oracle's noise_seed, else the config's seed);
#             only training randomness (init, sampling, minibatch order) differs
#   reward    every member trains with the config's seed; only the oracle's noise draw differs (k):
#             the randomness the bandit theory (`varpo theory`) is about, with PPO's own held fixed
VARY = ("both", "training", "reward")


def member_overrides(cfg: VarpoConfig, k: int, vary: str) -> list[str]:
    """The config overrides that make population member k under `vary` (see VARY)."""
    if vary not in VARY:
        raise ConfigError(f"--vary: {vary!r}; expected one of {list(VARY)}")
    if vary == "both":
        return [f"seed={k}"]
    if cfg.reward.type != "oracle":
        raise ConfigError(f"--vary {vary}: separates the reward's noise draw from training randomness, which "
                          f"only reward.type=oracle has (reward.type is {cfg.reward.type!r}; an ensemble or a "
                          "judge is one fixed reward for every member already: use --vary both)")
    if vary == "training":
        fixed = cfg.reward.oracle.noise_seed if cfg.reward.oracle.noise_seed is not None else cfg.seed
        return [f"seed={k}", f"reward.oracle.noise_seed={fixed}"]
    return [f"seed={cfg.seed}", f"reward.oracle.noise_seed={k}"]


def result_path(out: Path, method: str, seed: int) -> Path:
    return out / "policies" / method / f"seed_{seed}.json"


def true_reward_fn(cfg: VarpoConfig):
    """The reward a policy is judged by: gold (default), a reward model's mean, or a judge's midpoint."""
    kind = cfg.evaluation.true_reward
    if kind == "gold":
        from ..testbed import task_gold

        return task_gold(cfg.testbed)
    if kind == "reward_model":
        if not cfg.evaluation.true_reward_path:
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
    rows = None
    if cfg.data.eval_prompts_path or cfg.data.prompts_path:  # the user's held-out prompts (or eval split)
        from ..ppo import resolve_eval_prompts

        rows = resolve_eval_prompts(cfg, cfg.model.policy_path or "the testbed LM")
    if rows is None:
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


def _last_mean(metrics_path: Path, key: str, window: int) -> float | None:
    """Mean of a logged metric over a run's last `window` steps (the last step alone is one batch)."""
    from ..outputs import read_jsonl

    rows = read_jsonl(metrics_path) if metrics_path.exists() else []
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))][-window:]
    return sum(vals) / len(vals) if vals else None


def _sigma2_growth(metrics_path: Path, window: int = 5) -> dict:
    """How σ² of the policy's own samples grew during training: the mean logged σ² of the last
    `window` steps over that of the first (Coste et al. 2023 saw ~3× under the mean objective)."""
    from ..outputs import read_jsonl

    rows = read_jsonl(metrics_path) if metrics_path.exists() else []
    v = [r["variance_mean"] for r in rows if isinstance(r.get("variance_mean"), (int, float))]
    if len(v) < 2:
        return {"sigma2_first": None, "sigma2_last": None, "sigma2_growth": None}
    first, last = sum(v[:window]) / len(v[:window]), sum(v[-window:]) / len(v[-window:])
    return {"sigma2_first": first, "sigma2_last": last, "sigma2_growth": last / first if first > 0 else None}


def _proxy(cfg: VarpoConfig):
    """The reward source the policies train on, to score evaluation samples beside the true reward
    (proxy mean, σ² calibration on policy samples); None for judges (each call costs) and gold."""
    if cfg.reward.type in ("judge", "gold") or cfg.evaluation.true_reward != "gold":
        return None
    from ..scoring import build_scorer

    return build_scorer(cfg)


def _job(config_path, overrides: list[str], method: str, seed: int, out: str, threads: int,
         vary: str = "both") -> dict:
    """One population member, run in a worker process: train (unless reference), evaluate, save."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("VARPO_NO_PROGRESS", "1")
    from .policy_eval import evaluate_policy

    out_p = Path(out)
    base = load_config(config_path, overrides)
    member = member_overrides(base, seed, vary)
    from ..ppo import resolve_sources

    if method == REFERENCE:
        cfg = load_config(config_path, [*overrides, *member])
        policy_path, extra = resolve_sources(cfg)[0], {"kl_mean": 0.0}
        reference_path = None  # π_ref against itself: kl is 0 by definition
    else:
        method_overrides = base.evaluation.methods[method]
        cfg = load_config(config_path, [*overrides, *method_overrides, *member])
        from ..ppo import train_ppo

        run_dir = out_p / "runs" / method / f"seed_{seed}"
        summary = train_ppo(cfg, run_dir, reuse_finished=True)  # trained before a kill: kept, not redone
        final = summary["final"]
        policy_path = summary["policy_path"]
        extra = {k: final.get(k) for k in ("kl_mean", "weighted_kl_mean", "score_mean", "variance_mean", "gold_mean")}
        extra.update(_over_steps(run_dir / "metrics.jsonl", ("weight_mean", "weight_std")))
        extra["kl_last5_mean"] = _last_mean(run_dir / "metrics.jsonl", "kl_mean", 5)
        reference_path = resolve_sources(cfg)[0]
        extra.update(_sigma2_growth(run_dir / "metrics.jsonl"))
    # evaluation sampling is seeded apart from training, identically across methods
    ev = evaluate_policy(policy_path, eval_prompts(cfg), true_reward_fn(cfg), cfg.generation,
                         seed=1_000_000 + seed, batch_size=cfg.evaluation.eval_batch_size,
                         samples_per_prompt=cfg.evaluation.samples_per_prompt, chat_template=cfg.data.chat_template,
                         load_kw=_eval_load_kwargs(cfg), proxy=_proxy(cfg), reference_path=reference_path)
    if reference_path is None:
        ev.update({"kl": 0.0, "kl_se": 0.0})
    row = {"method": method, "seed": seed, "vary": vary, "training_seed": cfg.seed,
           "beta": None if method == REFERENCE else cfg.ppo.kl.beta, "steps": None if method == REFERENCE else cfg.ppo.steps,
           "noise_seed": cfg.reward.oracle.noise_seed if cfg.reward.type == "oracle" else None,
           **ev, **extra, "policy_path": str(policy_path), "policy_sha256": _weights_digest(Path(policy_path))}
    write_json(result_path(out_p, method, seed), row)
    return row


def _weights_digest(folder: Path) -> str | None:
    """SHA-256 of a policy folder's weight files: two result rows with the same digest are one
    policy (a results folder that reuses another's policies shows it)."""
    import hashlib

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def worker_threads(cores: int, n_workers: int, env) -> int:
    """torch threads per worker: the user's OMP_NUM_THREADS when set (several populations sharing a
    machine), else the cores split between the workers. More threads than cores slows PPO steps by
    an order of magnitude (spinning intra-op threads), so the cores' split is the safe default."""
    omp = env.get("OMP_NUM_THREADS", "")
    return int(omp) if omp.isdigit() and int(omp) > 0 else max(1, cores // n_workers)


def run_population(config_path, overrides: list[str], seeds: int, out: Path, workers: int | None = None,
                   methods: list[str] | None = None, reference: bool = True, vary: str = "both",
                   first_seed: int = 0) -> list[dict]:
    """Train and evaluate `seeds` policies per method plus (unless `reference` is False)
    `seeds` reference runs under `out`, members first_seed … first_seed + seeds − 1; `vary` says
    what differs between members (VARY)."""
    cfg = load_config(config_path, overrides)
    member_overrides(cfg, 0, vary)  # a bad --vary fails here, before any job
    marker = out / "vary.txt"  # results of one kind of population must not mix with another's
    if marker.exists() and marker.read_text().strip() != vary:
        raise ConfigError(f"{marker}: this folder holds a population with --vary {marker.read_text().strip()}, "
                          f"not {vary}; choose another --out")
    declared = out / "config.yaml"  # the population's configuration, its primary test(s) included
    if declared.exists():
        before = load_config(declared).evaluation
        if (list(before.primary_test), before.runaway_margin) != (list(cfg.evaluation.primary_test),
                                                                 cfg.evaluation.runaway_margin):
            raise ConfigError(f"{declared}: this population declared evaluation.primary_test={list(before.primary_test)} "
                              f"and runaway_margin={before.runaway_margin} before it ran; a resumed run may not change them "
                              f"(got {list(cfg.evaluation.primary_test)}, {cfg.evaluation.runaway_margin})")
    out.mkdir(parents=True, exist_ok=True)
    if not marker.exists():  # written once: a resumed population leaves its folder as it was
        marker.write_text(vary + "\n")
    if not declared.exists():
        from ..config import save_resolved

        save_resolved(cfg, out)
    overrides = [*overrides, *ensure_reward_model(cfg, out)]
    unknown = set(methods or []) - set(cfg.evaluation.methods)
    if unknown:
        raise ConfigError(f"--methods: {sorted(unknown)} not in evaluation.methods ({sorted(cfg.evaluation.methods)})")
    names = ([REFERENCE] if reference else []) + list(methods or cfg.evaluation.methods)
    jobs = [(m, s) for s in range(first_seed, first_seed + seeds) for m in names]
    done = [json.loads(result_path(out, m, s).read_text()) for m, s in jobs if result_path(out, m, s).exists()]
    todo = [(m, s) for m, s in jobs if not result_path(out, m, s).exists()]
    if done:
        console.print(f"population: {len(done)} of {len(jobs)} results already in {out}/policies, {len(todo)} to go")
    cores = os.cpu_count() or 1
    n_workers = max(1, min(workers or cfg.evaluation.workers or cores, len(todo) or 1))
    threads = worker_threads(cores, n_workers, os.environ)
    from .provenance import run_context

    t0, start = time.perf_counter(), run_context()
    with progress() as bar:
        task = bar.add_task("population", total=len(jobs), completed=len(done), info="")
        if n_workers == 1:
            for m, s in todo:
                done.append(_job(config_path, overrides, m, s, str(out), threads, vary))
                bar.update(task, advance=1, info=f"{m} seed {s}")
        else:
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_job, config_path, overrides, m, s, str(out), threads, vary): (m, s)
                           for m, s in todo}
                for fut in as_completed(futures):
                    done.append(fut.result())
                    m, s = futures[fut]
                    bar.update(task, advance=1, info=f"{m} seed {s}")
    seconds = time.perf_counter() - t0
    console.print(f"population: {len(todo)} jobs in {seconds:.0f} s with {n_workers} workers")
    from .provenance import run_context

    # one line per invocation: what ran, on which commit, how loaded the machine was at its end
    with open(out / "runs_context.jsonl", "a") as fh:
        fh.write(json.dumps({**start, "jobs": len(todo), "workers": n_workers, "seconds": seconds,
                             "loadavg_end": run_context()["loadavg"]}) + "\n")
    return done


def summarize(rows: list[dict]) -> dict:
    """Per method: mean and variance (ddof=1) of the per-policy true rewards, n, mean KL."""
    import statistics as st

    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        r = [x["reward"] for x in rows if x["method"] == method]
        kl = [x["kl_mean"] for x in rows if x["method"] == method and x.get("kl_mean") is not None]
        seq_kl = [x["kl"] for x in rows if x["method"] == method and x.get("kl") is not None]
        out[method] = {"gold_reward_mean": st.fmean(r), "gold_reward_var": st.variance(r) if len(r) > 1 else 0.0,
                       "n_policies": len(r), "kl_mean": st.fmean(kl) if kl else 0.0,
                       "kl": st.fmean(seq_kl) if seq_kl else None}
        # the proxy and its σ² calibration on this method's evaluation samples, when they were scored
        rows_m = [x for x in rows if x["method"] == method]
        for key, get in (("proxy_mean", lambda x: x.get("proxy_mean")),
                         ("spearman_sigma2_sqerr", lambda x: (x.get("calibration") or {}).get("spearman_sigma2_sqerr")),
                         ("sigma2_growth", lambda x: x.get("sigma2_growth"))):
            vals = [v for v in map(get, rows_m) if v is not None]
            if vals:
                out[method][key] = st.fmean(vals)
    return out


def _eval_load_kwargs(cfg) -> dict:
    """How the exported policy is loaded for evaluation (on CPU): the configured attention kernel,
    unless it is flash-attn, which has no CPU kernels."""
    attn = cfg.model.attn_implementation
    return {"attn_implementation": attn} if attn in ("eager", "sdpa") else {}
