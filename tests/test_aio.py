"""varpo.aio.gather_or_cancel: results in order; the first failure cancels the others, waits for
them, and propagates as itself (not an ExceptionGroup)."""
from __future__ import annotations

import asyncio

import pytest

from varpo.aio import gather_or_cancel


def test_results_in_order():
    async def val(x, delay):
        await asyncio.sleep(delay)
        return x

    assert asyncio.run(gather_or_cancel([val(1, 0.02), val(2, 0.0), val(3, 0.01)])) == [1, 2, 3]


def test_first_failure_cancels_and_waits_for_the_rest():
    state = {"cancelled": 0, "finished": 0, "cleaned": 0}

    async def slow():
        try:
            await asyncio.sleep(10)
            state["finished"] += 1
        except asyncio.CancelledError:
            state["cancelled"] += 1
            await asyncio.sleep(0.01)  # clean-up that must complete before the error propagates
            state["cleaned"] += 1
            raise

    async def fail():
        await asyncio.sleep(0.01)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        asyncio.run(gather_or_cancel([slow(), fail(), slow()]))
    assert state == {"cancelled": 2, "finished": 0, "cleaned": 2}
