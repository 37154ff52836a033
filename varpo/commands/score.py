"""`varpo score`: score prompt/response rows with interval LLM judges, or with the configured
reward model (a reward ensemble folder, a Hugging Face sequence-classification reward model).

Input: the formats training reads (JSONL / JSON / CSV / TSV / Parquet, a dataset folder or name),
plain or conversational (varpo.data.load_responses), columns from data.prompt_column and
--response-column. Writes OUT/scores.jsonl (one row per input row, in order, with its prompt and
response as given: judges' low, high, reward, variance, midpoint — or `error` for a row dropped
by on_invalid=drop; a reward model's reward, score, variance and per-head rewards),
OUT/summary.json and OUT/config.yaml (resolved, no secrets). Judges' answers are cached as they
arrive, so rerunning a killed run only pays for the rows it had not reached. An OUT that already
holds scores is not overwritten without --overwrite.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, OverwriteOpt, SetOpt


def read_rows(path: Path, cfg, response_column: str = "response", split: str | None = None) -> list[dict]:
    """The rows to score (varpo.data.load_responses), each with `line`: where it is in the input."""
    from ..data import load_responses

    dc = cfg.data
    res = load_responses(path, dc.prompt_column, response_column, dc.skip_bad_rows, split=split or dc.train_split,
                         config=dc.dataset_config, split_field="--split", single_split_ok=True)
    for r in res.rows:
        kind, n = r["location"].split(" ", 1)
        r["line"] = f"{path}:{n}" if kind == "line" else f"{path} row {n}"
    return res.rows


def check_out(out: Path, overwrite: bool) -> None:
    from ..config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is a file; expected a folder (or a path to create one)")
    if (out / "scores.jsonl").exists() and not overwrite:
        raise ConfigError(f"--out {out}: holds the scores of an earlier run (scores.jsonl); choose another --out, or "
                          "pass --overwrite to replace them")


def _parse_bounds(text: str) -> list[float]:
    from ..config import ConfigError

    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--bounds {text!r}: expected LO,HI, e.g. 0,10") from None
    return [lo, hi]


def cli_overrides(base_urls, models, bounds, api_key_env, concurrency, cache, on_invalid) -> list[str]:
    """The explicit flags as dotted overrides (applied after --set, so flags win)."""
    from ..config import ConfigError

    out = []
    if base_urls or models:
        base_urls, models = list(base_urls or []), list(models or [])
        if not base_urls or not models:
            raise ConfigError("--judge-base-url and --judge-model go together")
        if len(base_urls) == 1:
            base_urls = base_urls * len(models)  # one server, several models
        if len(base_urls) != len(models):
            raise ConfigError(f"{len(base_urls)} --judge-base-url but {len(models)} --judge-model: give one URL, "
                              "or one URL per model")
        judges = [{"base_url": u, "model": m} for u, m in zip(base_urls, models)]
        out.append("judge.judges=" + json.dumps(judges))
    if bounds is not None:
        out.append("judge.bounds=" + json.dumps(_parse_bounds(bounds)))
    if api_key_env is not None:
        out.append(f"judge.api_key_env={json.dumps(api_key_env)}")
    if concurrency is not None:
        out.append(f"judge.concurrency={concurrency}")
    if cache is not None:
        out.append(f"judge.cache={json.dumps(cache)}")
    if on_invalid is not None:
        out.append(f"judge.on_invalid={on_invalid}")
    return out


def _setup_logging() -> None:
    log = logging.getLogger("varpo.judge")
    if not log.handlers:
        from rich.logging import RichHandler

        from ..outputs import console

        log.addHandler(RichHandler(console=console, show_path=False, show_time=False))
        log.setLevel(logging.WARNING)


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score(
        input: Path = typer.Option(..., "--input", "-i", help="prompt/response rows: a JSONL/JSON/CSV/TSV/Parquet "
                                   "file, a dataset folder or name; plain text or conversational"),
        out: Path = OutOpt,
        judge_base_url: list[str] | None = typer.Option(
            None, "--judge-base-url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (repeatable)"),
        judge_model: list[str] | None = typer.Option(None, "--judge-model", help="judge model name (repeatable)"),
        bounds: str | None = typer.Option(None, "--bounds", help="LO,HI of the score scale (default 0,10)"),
        api_key_env: str | None = typer.Option(
            None, "--api-key-env", help="env var holding the API key (default OPENAI_API_KEY; unset: placeholder key)"),
        concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="requests in flight per judge"),
        cache: str | None = typer.Option(None, "--cache", help="SQLite answer cache (default judge.cache)"),
        on_invalid: str | None = typer.Option(None, "--on-invalid", help="fail | drop"),
        response_column: str = typer.Option("response", "--response-column", help="column holding the response "
                                            "(the prompt's: data.prompt_column)"),
        split: str | None = typer.Option(None, "--split", help="split of a dataset with splits (default "
                                         "data.train_split)"),
        overwrite: bool = OverwriteOpt,
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
    ) -> None:
        """Score responses with interval LLM judges (--judge-*: reward drawn uniformly from (low, high), variance
        (high-low)^2/12), or, without judges, with the configured reward (reward.path: a reward ensemble, mean
        and σ² over its heads; reward.type=sequence_classifier: a Hugging Face reward model, σ² = 0)."""
        from ..config import ConfigError
        from .common import load

        if on_invalid is not None and on_invalid not in ("fail", "drop"):
            raise ConfigError(f"--on-invalid {on_invalid!r}: expected fail or drop")
        overrides = list(set_ or []) + cli_overrides(judge_base_url, judge_model, bounds, api_key_env, concurrency,
                                                     cache, on_invalid)
        cfg = load(config, overrides)
        check_out(out, overwrite)
        rows = read_rows(input, cfg, response_column, split)  # the whole input is checked before any request
        # judges when named (flags, reward.type=judge, or judge.judges with no reward model named)
        if cfg.reward.type == "judge" or (cfg.judge.judges and cfg.reward.type == "ensemble" and not cfg.reward.path):
            _score_with_judges(cfg, rows, input, out)
        else:
            _score_with_reward(cfg, rows, input, out)


def _score_with_reward(cfg, rows: list[dict], input: Path, out: Path) -> None:
    """reward.* scores every row: a reward ensemble (σ² over heads), a sequence classifier (σ² = 0),
    the testbed's gold or oracle."""
    from ..config import ConfigError, save_resolved
    from ..data.chat import transcript
    from ..data.sets import tokenizer_renderer
    from ..outputs import console, print_table, write_json
    from ..preflight import check_reward
    from ..scoring import build_scorer, describe_reward

    if cfg.reward.type == "ensemble" and not cfg.reward.path:
        raise ConfigError("varpo score: name what scores the rows: --judge-base-url/--judge-model (interval judges), "
                          "or reward.path (a reward-ensemble folder; with reward.type=sequence_classifier, a Hugging "
                          "Face reward model)")
    check_reward(cfg)
    if any(isinstance(r["prompt"], list) for r in rows):
        if cfg.reward.path:
            chat = tokenizer_renderer(cfg.reward.path, "reward.path")
            prompts = [chat.prompt(r["prompt"], str(input)) if isinstance(r["prompt"], list) else r["prompt"]
                       for r in rows]
        else:
            prompts = [transcript(r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"] for r in rows]
    else:
        prompts = [r["prompt"] for r in rows]
    responses = [r["response"] for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    t0 = time.perf_counter()
    scorer = build_scorer(cfg)
    sc = scorer.score(prompts, responses)
    per_head = sc.extras.get("per_head")
    tmp = out / "scores.jsonl.tmp"
    with tmp.open("w") as f:
        for i, r in enumerate(rows):
            row = {"index": i} | ({"id": r["id"]} if r["id"] is not None else {}) | r["row"]
            reward = sc.eval_reward if sc.eval_reward is not None else sc.score
            row |= {"reward": float(reward[i]), "score": float(sc.score[i]), "variance": float(sc.variance[i])}
            if per_head is not None:
                row["per_head"] = [float(x) for x in per_head[i]]
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out / "scores.jsonl")
    summary = {"n": len(rows), "input": str(input), "reward": describe_reward(cfg, scorer),
               "reward_mean": float((sc.eval_reward if sc.eval_reward is not None else sc.score).double().mean()),
               "variance_mean": float(sc.variance.double().mean()), "truncated": int(sc.extras.get("truncated", 0)),
               "elapsed_s": time.perf_counter() - t0}
    write_json(out / "summary.json", summary)
    print_table(f"{summary['reward']['type']} reward ({out}/summary.json)",
                [{k: summary[k] for k in ("n", "reward_mean", "variance_mean", "truncated")}])
    console.print(f"scores: {out / 'scores.jsonl'}", highlight=False)


def _score_with_judges(cfg, rows: list[dict], input: Path, out: Path) -> None:
    from ..config import save_resolved
    from ..data.chat import transcript
    from ..judge import JudgeError, JudgeScorer
    from ..outputs import console, print_table, progress, write_json

    _setup_logging()
    scorer = JudgeScorer.from_config(cfg.judge)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    names = [f"row {i} ({r['line']}" + (f", id={r['id']}" if r["id"] is not None else "") + ")"
             for i, r in enumerate(rows)]
    prompts = [transcript(r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"] for r in rows]
    t0 = time.perf_counter()
    error = None
    with progress() as bar:
        task = bar.add_task("judging", total=len(rows), info="")
        try:
            batch = scorer.judge(prompts, [r["response"] for r in rows], stream=0,
                                 names=names, on_sample=lambda i: bar.advance(task))
        except JudgeError as exc:
            error, batch = str(exc), None
    elapsed = time.perf_counter() - t0
    stats = scorer.stats_summary()
    scorer.close()

    n_failed = len(rows) if batch is None else int((~batch.valid).sum())
    summary = {
        "n": len(rows), "n_failed": n_failed,
        "cache_hits": sum(s["cache_hits"] for s in stats), "retries": sum(s["retries"] for s in stats),
        "requests": sum(s["requests"] for s in stats),
        "cache_hit_rate": sum(s["cache_hits"] for s in stats) / max(1, sum(s["samples"] for s in stats)),
        "elapsed_s": elapsed, "judges": stats, "input": str(input), "cache": cfg.judge.cache,
    }
    if error is not None:
        summary["error"] = error
        write_json(out / "summary.json", summary)
        console.print(f"[bold red]error:[/] {error}\n(answers received so far are cached in {cfg.judge.cache}; "
                      "rerun to resume)", highlight=False, markup=True)
        raise typer.Exit(1)

    tmp = out / "scores.jsonl.tmp"
    with tmp.open("w") as f:
        for i, r in enumerate(rows):
            row = {"index": i} | ({"id": r["id"]} if r["id"] is not None else {}) | r["row"]
            if batch.errors[i] is not None:
                row["error"] = batch.errors[i]
            else:
                row |= {"low": float(batch.low[i]), "high": float(batch.high[i]), "reward": float(batch.reward[i]),
                        "variance": float(batch.variance[i]), "midpoint": float(batch.midpoint[i])}
                if batch.verdicts.low.shape[1] > 1:
                    row["judges"] = [{"judge": s["judge"], "low": float(a), "high": float(b)}
                                     for s, a, b in zip(stats, batch.verdicts.low[i], batch.verdicts.high[i])]
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out / "scores.jsonl")
    write_json(out / "summary.json", summary)
    print_table(f"judges ({out}/summary.json; {summary['n']} rows, {n_failed} failed, "
                f"cache hit rate {summary['cache_hit_rate']:.0%})", stats,
                columns=["judge", "samples", "cache_hits", "requests", "retries", "invalid_answers", "dropped",
                         "latency_mean_s", "latency_p95_s", "mean_width"])
