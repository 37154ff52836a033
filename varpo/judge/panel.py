"""Several judges over many samples: cache look-ups, bounded concurrent requests, re-asks of
invalid answers, the invalid-answer policy, and per-judge statistics.

Policy: an answer that fails parsing/validation is re-asked (the invalid answer and the reason are
sent back) up to `max_reasks` times; then `on_invalid=fail` raises JudgeError naming the sample and
`on_invalid=drop` marks the sample invalid. A sample is dropped if *any* judge gives up on it (so
every kept reward combines the same judges). Transport failures that outlast the retries always
raise: an outage is not a property of the sample, and dropping it would bias the rewards. Either
way, every answer received so far is already in the cache.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..aio import gather_or_cancel
from ..config import ConfigError
from ..config.judge import JudgeConfig
from ..http_retry import run_coroutine
from .cache import JudgeCache, cache_key
from .client import JudgeEndpoint, JudgeError, JudgeStats, resolve_api_key
from .parsing import InvalidAnswer, parse_interval
from .template import load_template

log = logging.getLogger("varpo.judge")

REASK = ("Your answer could not be used: {reason}. Reply with a JSON object only, exactly in this form: "
         '{{"low": <number>, "high": <number>}}, where {lo:g} <= low <= high <= {hi:g}.')


@dataclass
class Verdicts:
    """Per-sample, per-judge intervals. low/high: [B, J] float64, NaN where a judge gave none."""

    low: np.ndarray
    high: np.ndarray
    errors: list[str | None]  # per sample: why it was dropped, None if kept

    @property
    def valid(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


class JudgePanel:
    """All configured judges, one cache, one template. `judge(prompts, responses) -> Verdicts`."""

    def __init__(self, cfg: JudgeConfig):
        if not cfg.judges:
            raise ConfigError("judge.judges: at least one judge {base_url, model} is required "
                              "(e.g. --set 'judge.judges=[{base_url: http://localhost:8000/v1, model: M}]')")
        self.cfg = cfg
        self.template = load_template(cfg.template)
        self.cache = JudgeCache(cfg.cache) if cfg.cache else None
        self.stats = [JudgeStats(j.label) for j in cfg.judges]
        for env in dict.fromkeys(j.api_key_env or cfg.api_key_env for j in cfg.judges):
            resolve_api_key(env, warn=True)  # warn once per variable, at construction

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def judge(self, prompts: list[str], responses: list[str], *, names: list[str] | None = None,
              on_sample: Callable[[int], None] | None = None) -> Verdicts:
        """Score every sample by every judge. `names[i]` names sample i in errors (default 'sample i');
        `on_sample(i)` is called as each sample completes (progress bars)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        names = names or [f"sample {i}" for i in range(len(prompts))]
        return run_coroutine(self._judge_async(list(prompts), list(responses), names, on_sample))

    async def _judge_async(self, prompts, responses, names, on_sample) -> Verdicts:
        B, J = len(prompts), len(self.cfg.judges)
        low, high = np.full((B, J), np.nan), np.full((B, J), np.nan)
        errors: list[str | None] = [None] * B
        endpoints = [JudgeEndpoint(j, self.cfg, st) for j, st in zip(self.cfg.judges, self.stats)]

        async def one_sample(i: int) -> None:
            for j, ep in enumerate(endpoints):  # judges of one sample in sequence; samples in parallel
                got = await self._one(ep, prompts[i], responses[i], names[i])
                if isinstance(got, str):
                    errors[i] = errors[i] or got
                else:
                    low[i, j], high[i, j] = got
            if on_sample is not None:
                on_sample(i)

        try:
            await gather_or_cancel(one_sample(i) for i in range(B))
        finally:
            for ep in endpoints:
                await ep.aclose()
        return Verdicts(low=low, high=high, errors=errors)

    async def _one(self, ep: JudgeEndpoint, prompt: str, response: str, name: str) -> tuple[float, float] | str:
        """(a, b) for one sample and one judge, or (policy drop) the reason it has none."""
        cfg, st = self.cfg, ep.stats
        lo, hi = cfg.bounds
        key = cache_key(base_url=ep.judge.base_url, model=ep.judge.model, template_sha256=self.template.sha256,
                        bounds=cfg.bounds, prompt=prompt, response=response, temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens)
        st.samples += 1
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                st.cache_hits += 1
                st.widths.append(hit[1] - hit[0])
                return hit
        messages = [{"role": "user", "content": self.template.render(prompt, response, lo, hi)}]
        for attempt in range(cfg.max_reasks + 1):
            text = await ep.complete(messages, name)
            try:
                a, b = parse_interval(text, lo, hi)
            except InvalidAnswer as exc:
                st.invalid_answers += 1
                reason = str(exc)
                if attempt < cfg.max_reasks:
                    st.reasks += 1
                    messages = messages + [{"role": "assistant", "content": text},
                                           {"role": "user", "content": REASK.format(reason=reason, lo=lo, hi=hi)}]
                continue
            if self.cache is not None:
                self.cache.put(key, a, b, text, ep.judge.model)  # stored the moment it is paid for
            st.widths.append(b - a)
            return a, b
        shown = text if len(text) <= 200 else text[:200] + "..."
        msg = (f"{name}: judge {ep.judge.label} gave no valid interval in {cfg.max_reasks + 1} answers "
               f"({reason}); last answer: {shown!r}")
        if cfg.on_invalid == "fail":
            raise JudgeError(msg + " (set judge.on_invalid=drop to skip such samples)")
        st.dropped += 1
        log.info("dropped %s", msg)
        return msg
