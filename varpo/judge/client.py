"""One judge endpoint: OpenAI-compatible chat completions with our own retry loop.

The `openai` client's built-in retries are switched off (max_retries=0) because they cannot be
counted and their backoff is not configurable; varpo's shared retry policy (varpo/http_retry.py,
tenacity) drives them instead, honouring the server's Retry-After / retry-after-ms header on 429
(and 5xx), and exponential backoff with jitter otherwise. Retried: 408, 409, 429, 5xx, timeouts (the client's and a total per-request deadline),
dropped connections, and a 200 whose body is not JSON. Other errors (401, 400, 404, ...) fail at
once. The API key is read from the environment here and nowhere else, and scrubbed from every
error message this module raises.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field

import openai
from tenacity import RetryCallState

from ..config.judge import JudgeConfig, JudgeEndpointConfig
from ..http_retry import retryable_status, retrying

log = logging.getLogger("varpo.judge")

PLACEHOLDER_KEY = "EMPTY"  # what local servers (vLLM, TGI, llama.cpp) accept when they check nothing


class JudgeError(RuntimeError):
    """A judge could not score a sample (transport failure after retries, or policy `fail`)."""


class _RetryableBody(Exception):
    """A 200 response whose body could not be decoded."""


def resolve_api_key(env_name: str, *, warn: bool = True) -> str:
    """The key in $env_name; a placeholder (and a warning naming the variable, never a value) if unset."""
    key = os.environ.get(env_name)
    if key:
        return key
    if warn:
        log.warning("environment variable %s is not set: sending a placeholder API key "
                    "(fine for a local server that checks no key)", env_name)
    return PLACEHOLDER_KEY


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of the secret replaced (errors may echo request headers)."""
    if secret and secret != PLACEHOLDER_KEY and secret in text:
        text = text.replace(secret, "***")
    return text


@dataclass
class JudgeStats:
    """Per-judge counters over the life of a scorer. Latency: seconds of each successful request."""

    label: str
    samples: int = 0  # (sample, judge) pairs resolved, from the cache or the server
    cache_hits: int = 0
    requests: int = 0  # HTTP attempts, including retries and re-asks
    retries: int = 0  # transport retries (429, 5xx, timeouts, dropped connections)
    invalid_answers: int = 0  # answers that failed parsing/validation (each triggered a re-ask or the policy)
    reasks: int = 0
    dropped: int = 0  # samples given up on under on_invalid=drop
    latencies: list[float] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)  # b - a of every valid interval (cached ones too)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def q(p):
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return {
            "judge": self.label, "samples": self.samples, "cache_hits": self.cache_hits, "requests": self.requests,
            "retries": self.retries, "invalid_answers": self.invalid_answers, "reasks": self.reasks,
            "dropped": self.dropped,
            "latency_mean_s": sum(lat) / len(lat) if lat else None, "latency_p50_s": q(0.5), "latency_p95_s": q(0.95),
            "mean_width": sum(self.widths) / len(self.widths) if self.widths else None,
        }


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, asyncio.TimeoutError, _RetryableBody)):
        return True  # APITimeoutError is an APIConnectionError
    return retryable_status(_status(exc))


class JudgeEndpoint:
    """Chat completions against one judge. Create inside the event loop that uses it; `aclose()` after."""

    def __init__(self, judge: JudgeEndpointConfig, cfg: JudgeConfig, stats: JudgeStats):
        self.judge, self.cfg, self.stats = judge, cfg, stats
        self._key = resolve_api_key(judge.api_key_env or cfg.api_key_env, warn=False)
        self.client = openai.AsyncOpenAI(api_key=self._key, base_url=judge.base_url, timeout=cfg.timeout, max_retries=0)
        self.sem = asyncio.Semaphore(cfg.concurrency)

    async def aclose(self) -> None:
        await self.client.close()

    def _count_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception()
        log.debug("judge %s: retry %d after %s", self.judge.label, state.attempt_number,
                  scrub(f"{type(exc).__name__}: {exc}", self._key))

    async def _attempt(self, messages: list[dict]) -> str:
        async with self.sem:  # hold a slot only while a request is in flight, not while backing off
            self.stats.requests += 1
            t0 = time.perf_counter()
            try:
                resp = await asyncio.wait_for(
                    self.client.chat.completions.create(
                        model=self.judge.model, messages=messages,
                        temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                    ),
                    timeout=self.cfg.timeout * 1.5,  # total deadline; the client's own timeout is per phase
                )
            except json.JSONDecodeError as exc:
                raise _RetryableBody(f"response body is not JSON ({exc})") from None
            self.stats.latencies.append(time.perf_counter() - t0)
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise _RetryableBody("response has no choices[0].message.content") from None

    async def complete(self, messages: list[dict], what: str) -> str:
        """The assistant's text for `messages`; raises JudgeError (naming `what`) after the retries."""
        try:
            async for attempt in retrying(self.cfg, _retryable, self._count_retry):
                with attempt:
                    return await self._attempt(messages)
        except Exception as exc:  # noqa: BLE001 - rephrased with the secret scrubbed
            tried = f"after {self.cfg.max_retries} retries" if _retryable(exc) else "not retryable"
            message = scrub(f"judge {self.judge.label}: {what}: request failed ({tried}): "
                            f"{type(exc).__name__}: {str(exc) or 'no detail'}", self._key)
        # raised outside the except block: the original exception (whose text may echo the key)
        # is neither the cause nor the context of the JudgeError, so no traceback can show it
        raise JudgeError(message)
