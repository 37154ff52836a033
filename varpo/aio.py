"""Concurrent awaitables that fail together: the first failure (or a cancellation of the caller)
cancels the others and waits for them before it propagates, so no request keeps running after
its batch has failed. asyncio.TaskGroup does the same but wraps the error in an ExceptionGroup;
callers here catch the original exception types."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable


async def gather_or_cancel(aws: Iterable[Awaitable]) -> list:
    """asyncio.gather of `aws`; on any failure every unfinished one is cancelled and awaited, then
    the first error is raised as itself."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
