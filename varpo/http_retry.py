"""The one home of varpo's HTTP retry policy, shared by the LLM-judge client (varpo/judge/client.py)
and the remote-reward client (varpo/reward/remote.py).

What is retried is each client's call (it knows its exceptions); how is decided here: a server's
Retry-After / retry-after-ms header when it sends one (capped by `max_retry_after`), else
exponential backoff with jitter (`backoff_base` · 2^(n−1), capped by `backoff_max`). A request
stops after `max_retries` retries, or, when the config has `wait_for_server_s`, not before that
many seconds have passed either: a reward server that is restarted within the window is picked up
and the run goes on. `settings` is any config with those fields (JudgeConfig, RemoteRewardConfig).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import random
import time
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

RETRY_STATUS = (408, 409, 429)  # and every 5xx


def retryable_status(status: int | None) -> bool:
    return status is not None and (status in RETRY_STATUS or status >= 500)


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the server asked the client to wait (Retry-After / retry-after-ms on the exception's
    `response`, an httpx.Response as both openai's and httpx's errors carry), None if it did not."""
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        v = headers.get(header)
        if v is None:
            continue
        try:
            return max(0.0, float(v) * scale)
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(v).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


def backoff(settings, state: RetryCallState) -> float:
    """The delay before the next attempt (tenacity `wait`)."""
    exc = state.outcome.exception() if state.outcome else None
    ra = retry_after(exc)
    if ra is not None:
        return min(ra, settings.max_retry_after)
    n = state.attempt_number  # 1 after the first failure
    return min(settings.backoff_max, settings.backoff_base * 2 ** (n - 1)) * random.uniform(0.75, 1.0)


def retrying(settings, retryable: Callable[[BaseException], bool],
             before_sleep: Callable[[RetryCallState], None] | None = None) -> AsyncRetrying:
    """`async for attempt in retrying(...): with attempt: ...` under the shared policy; the last
    exception is re-raised when it stops."""
    stop = stop_after_attempt(settings.max_retries + 1)
    wait_s = getattr(settings, "wait_for_server_s", 0.0)
    if wait_s:
        stop = stop & stop_after_delay(wait_s)  # both: at least max_retries retries and wait_s seconds
    return AsyncRetrying(stop=stop, retry=retry_if_exception(retryable), wait=lambda s: backoff(settings, s),
                         before_sleep=before_sleep, reraise=True)


def run_coroutine(coro):
    """asyncio.run, or in a worker thread when the caller already runs an event loop (notebooks)."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:
        running = False
    if not running:  # outside the except block, so errors raised by the run carry no stray context
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()
