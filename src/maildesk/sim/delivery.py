"""The run/drain machinery the simulators' push deliverers share (Graph's ``Notifier``, Pub/Sub).

Work is queued synchronously (inside a mailbox change) and counted as *outstanding* until it is
acknowledged, given up or cancelled. A deliverer runs only inside ``async with x.running(client)``,
which owns the worker task (and through its task group every delivery) and cancels and awaits it
on exit; ``await x.drain()`` waits until nothing is outstanding. A ``reorder`` fault holds one
item back until the next one has started, until ``reorder_hold`` real seconds pass with nothing
following, or until a drain asks for it: :meth:`Deliverer._wait_for_work` is that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, Self, TypeVar

import httpx

Held = TypeVar("Held")


class Deliverer(Generic[Held]):
    """Base of a deliverer whose reorder fault holds back a ``Held``.

    A subclass queues work and calls :meth:`_queued` for each outstanding unit and
    :meth:`_settled` as each one ends, implements :meth:`_work` (the worker: loop forever) and
    :meth:`_has_pending`, and names itself: ``_what`` in errors, ``_owner`` (the variable
    name) in the drain hint, ``_task_name`` on the worker task, and ``_undelivered`` (with
    ``{outstanding}`` and ``{timeout}``) as the drain timeout's message.
    """

    _what = "the deliverer"
    _owner = "deliverer"
    _task_name = "sim-deliverer"
    _undelivered = "{outstanding} items still undelivered after {timeout} s"

    def __init__(self, *, reorder_hold: float) -> None:
        self.reorder_hold = reorder_hold
        self._held: Held | None = None
        self._outstanding = 0
        self._flush = False
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None

    # -- for subclasses --------------------------------------------------------------------

    async def _work(self, client: httpx.AsyncClient) -> None:
        raise NotImplementedError

    def _has_pending(self) -> bool:
        raise NotImplementedError

    def _queued(self) -> None:
        """One more unit is outstanding: wake the worker."""
        self._outstanding += 1
        if self._idle is not None:
            self._idle.clear()
        if self._wake is not None:
            self._wake.set()

    def _settled(self) -> None:
        """One unit ended (acked, given up or cancelled)."""
        self._outstanding -= 1
        if self._outstanding == 0 and self._idle is not None:
            self._idle.set()

    async def _wait_for_work(self) -> Held | None:
        """Wait until something is pending (None), or return the held-back item, no longer
        held, when nothing followed it within ``reorder_hold`` or a drain asks for it."""
        wake = self._wake
        assert wake is not None
        while not self._has_pending():
            held = self._held
            if held is not None and self._flush:
                self._held = None
                return held
            wake.clear()
            if held is None:
                await wake.wait()
                continue
            try:
                async with asyncio.timeout(self.reorder_hold):
                    await wake.wait()
            except TimeoutError:
                self._held = None
                return held
        return None

    # -- running and draining --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, client: httpx.AsyncClient) -> AsyncIterator[Self]:
        """Deliver queued and future work through ``client`` until the block exits; then the
        worker and every delivery in flight are cancelled and awaited."""
        if self._worker is not None:
            raise RuntimeError(f"{self._what} is already running")
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        if self._outstanding == 0:
            self._idle.set()
        self._wake.set()
        worker = asyncio.create_task(self._work(client), name=self._task_name)
        self._worker = worker
        try:
            yield self
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            self._worker = self._wake = self._idle = None
            self._flush = False
        if not worker.cancelled() and worker.exception() is not None:
            raise RuntimeError(f"{self._what} failed") from worker.exception()

    async def drain(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - wall-time bound
        """Wait (at most ``timeout`` real seconds) until all queued work is acked or given up;
        an item held back by ``reorder`` is released. ``TimeoutError`` if time runs out."""
        worker, wake, idle = self._worker, self._wake, self._idle
        if worker is None or wake is None or idle is None:
            raise RuntimeError(
                f"drain() needs the deliverer: async with {self._owner}.running(client)"
            )
        self._flush = True
        wake.set()
        waiter = asyncio.ensure_future(idle.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, worker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._flush = False
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        if worker in done:
            raise RuntimeError(f"{self._what} stopped while draining")
        if waiter not in done:
            raise TimeoutError(
                self._undelivered.format(outstanding=self._outstanding, timeout=timeout)
            )
