"""A run created by the webhook starts at once: ``serve`` wakes its runner instead of waiting for
the next poll, and a runner that cannot be woken is left to its polling. SIGTERM stops both of
serve's runners (gates, sweeps).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import threading
import time

from prefect.runner import Runner

from flows.serve import poll_now, serve_runners


class _Runner:
    """What ``poll_now`` uses of Prefect's runner: its look for scheduled runs."""

    def __init__(self) -> None:
        self.looks: list[str] = []

    async def _get_and_submit_flow_runs(self) -> None:
        self.looks.append(threading.current_thread().name)


def test_the_runner_prefect_ships_can_be_woken() -> None:
    # poll_now calls a private coroutine of Prefect's Runner: an upgrade that drops it fails here
    assert inspect.iscoroutinefunction(Runner._get_and_submit_flow_runs)


def test_a_wake_looks_for_runs_in_the_runners_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="runner-loop", daemon=True)
    thread.start()
    runner = _Runner()
    try:
        poll_now(runner, loop)()  # type: ignore[arg-type]  # from the webhook's thread
        deadline = time.monotonic() + 5
        while not runner.looks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runner.looks == ["runner-loop"]
        poll_now(object(), loop)()  # type: ignore[arg-type]  # no such method: nothing raises
        time.sleep(0.1)
        assert thread.is_alive()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    poll_now(runner, loop)()  # type: ignore[arg-type]  # serve stopping, its loop closed: nothing raises
    assert runner.looks == ["runner-loop"]


class _Served:
    """What ``serve_runners`` uses of a runner: ``start`` (which, like Prefect's, installs its own
    SIGTERM handler first) and ``handle_sigterm``.
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        signal.signal(signal.SIGTERM, self.handle_sigterm)
        await self.stop.wait()
        self.stopped = True

    def handle_sigterm(self, *args: object) -> None:
        self.stop.set()


def test_sigterm_stops_every_runner_of_serve() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    runners = [_Served(), _Served()]

    async def main() -> None:
        served = asyncio.create_task(serve_runners(runners))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(served, 5)

    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert all(r.stopped for r in runners)
