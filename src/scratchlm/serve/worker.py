"""The engine in a background thread, fed by asyncio request handlers.

Handlers `submit` a prompt and get a `Handle`; the worker thread owns the engine: it adds queued requests,
runs `Engine.step` while there is work (blocking on its command queue when idle), and passes each step's
outputs to the handle's asyncio queue through the handler's event loop. Admission is bounded: at most
`max_slots + max_queue` requests in flight, beyond that `submit` raises `QueueFull` at once (HTTP 503), so
memory stays fixed however many clients connect.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from scratchlm.inference.engine import Engine, SamplingParams, StepOutput

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is full."""


@dataclass(eq=False)
class Handle:
    """One request as its handler sees it: `await next()` until an output is `finished`."""

    loop: asyncio.AbstractEventLoop
    results: asyncio.Queue = field(default_factory=asyncio.Queue)
    request_id: int | None = None  # the engine's, once the worker has added it
    done: bool = False

    async def next(self) -> StepOutput:
        item = await self.results.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        self.done = item.finished
        return item

    def put(self, item: StepOutput | BaseException) -> None:  # from the worker thread
        self.loop.call_soon_threadsafe(self.results.put_nowait, item)


class EngineWorker:
    def __init__(self, engine: Engine, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engine = engine
        self.capacity = engine.config.max_slots + max_queue
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._handles: dict[int, Handle] = {}  # engine request id -> handle; worker thread only
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; requests still in flight get an error."""
        self._stopping.set()
        self._commands.put(("wake",))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, prompt: list[int], params: SamplingParams) -> Handle:
        """Queue a request (call from the event loop); QueueFull when at capacity."""
        if self._stopping.is_set():
            raise QueueFull("the server is shutting down")
        with self._lock:
            if self._in_flight >= self.capacity:
                raise QueueFull(f"the server is at capacity ({self.engine.config.max_slots} running, "
                                f"{self.capacity - self.engine.config.max_slots} waiting); retry later")
            self._in_flight += 1
        handle = Handle(asyncio.get_running_loop())
        self._commands.put(("add", handle, prompt, params))
        return handle

    def cancel(self, handle: Handle) -> None:
        """Abort a request its client no longer waits for (a no-op when it has finished)."""
        if not handle.done:
            handle.done = True
            self._commands.put(("abort", handle))

    # -- the worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._drain(block=not self.engine.has_work)
            if self._stopping.is_set() or not self.engine.has_work:
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # noqa: BLE001 - fail the requests, keep serving
                log.exception("engine step failed")
                self._fail_all(RuntimeError(f"generation failed: {e}"))
                continue
            for out in outputs:
                handle = self._handles.get(out.request_id)
                if handle is not None:
                    handle.put(out)
                    if out.finished:
                        self._release(out.request_id)
        self._fail_all(QueueFull("the server is shutting down"))

    def _drain(self, block: bool) -> None:
        """Apply queued commands; wait for one first when idle."""
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
            while True:
                self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _apply(self, command: tuple) -> None:
        if command[0] == "add":
            _, handle, prompt, params = command
            try:
                request_id = self.engine.add_request(prompt, params)
            except ValueError as e:  # validated by the handler already; never let it kill the thread
                handle.put(e)
                self._release(None)
                return
            handle.request_id = request_id
            self._handles[request_id] = handle
        elif command[0] == "abort":
            request_id = command[1].request_id
            if request_id in self._handles:
                self.engine.abort(request_id)
                self._release(request_id)

    def _release(self, request_id: int | None) -> None:
        self._handles.pop(request_id, None)
        with self._lock:
            self._in_flight -= 1

    def _fail_all(self, error: BaseException) -> None:
        for request_id, handle in list(self._handles.items()):
            self.engine.abort(request_id)
            handle.put(error)
            self._release(request_id)
