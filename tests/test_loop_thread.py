"""The sender's event loop thread: work handed over before it runs is not lost, other
threads get results from it, and once its main coroutine returned it is gone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bgmock_twin.tracking.loop_thread import LoopThread


def test_calls_before_start_run_once_the_loop_runs_and_results_come_back() -> None:
    loop = LoopThread("test-loop")
    seen: list[str] = []
    loop.call_soon(seen.append, "early")
    finish = threading.Event()

    async def main() -> None:
        while not finish.is_set():
            await asyncio.sleep(0.01)

    loop.start(main)
    try:
        async def answer() -> str:
            await asyncio.sleep(0)
            return "from the loop"

        assert loop.run(answer(), timeout=10) == "from the loop"
        assert seen == ["early"]
        assert loop.alive and not loop.on_loop
    finally:
        finish.set()
        loop.join(10)
    assert not loop.alive
    loop.call_soon(seen.append, "late")  # dropped: the loop ended
    assert seen == ["early"]
    coroutine = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run(coroutine)
