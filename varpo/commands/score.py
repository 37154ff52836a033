"""`varpo score`: score {"prompt", "response"} rows with interval LLM judges.

Writes OUT/scores.jsonl (one row per input row, in order: low, high, reward, variance, midpoint —
or `error` for a row dropped by on_invalid=drop), OUT/summary.json (n, n_failed, cache_hits,
retries, per-judge statistics) and OUT/config.yaml (resolved, no secrets). Every answer is cached
as it arrives, so rerunning a killed run only pays for the rows it had not reached.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import typer

from .common import ConfigOpt, OutOpt, SetOpt


def read_rows(path: Path) -> list[dict]:
    """JSONL rows with string fields prompt and response (an optional id is carried through)."""
    from ..config import ConfigError

    if not path.is_file():
        raise ConfigError(f"--input: file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: expected a JSON object {{\"prompt\": ..., \"response\": ...}}, "
                                  f"got {type(row).__name__}")
            for k in ("prompt", "response"):
                if not isinstance(row.get(k), str):
                    got = "missing" if k not in row else f"got {type(row[k]).__name__}"
                    raise ConfigError(f"{path}:{n}: field '{k}' must be a string ({got})")
            rows.append({"line": n, "prompt": row["prompt"], "response": row["response"], "id": row.get("id")})
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


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
        input: Path = typer.Option(..., "--input", "-i", help='JSONL file of {"prompt", "response"} rows'),
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
        config: Path | None = ConfigOpt,
        set_: list[str] | None = SetOpt,
    ) -> None:
        """Score responses with interval LLM judges: reward drawn uniformly from (low, high), variance (high-low)^2/12."""
        from ..config import ConfigError, save_resolved
        from ..judge import JudgeError, JudgeScorer
        from ..outputs import console, print_table, progress, write_json
        from .common import load

        if on_invalid is not None and on_invalid not in ("fail", "drop"):
            raise ConfigError(f"--on-invalid {on_invalid!r}: expected fail or drop")
        _setup_logging()
        overrides = list(set_ or []) + cli_overrides(judge_base_url, judge_model, bounds, api_key_env, concurrency,
                                                     cache, on_invalid)
        cfg = load(config, overrides)
        rows = read_rows(input)
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
        scorer = JudgeScorer.from_config(cfg.judge)
        names = [f"row {i} ({input}:{r['line']}" + (f", id={r['id']}" if r["id"] is not None else "") + ")"
                 for i, r in enumerate(rows)]
        t0 = time.perf_counter()
        error = None
        with progress() as bar:
            task = bar.add_task("judging", total=len(rows), info="")
            try:
                batch = scorer.judge([r["prompt"] for r in rows], [r["response"] for r in rows], stream=0,
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
                row = {"index": i} | ({"id": r["id"]} if r["id"] is not None else {})
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
