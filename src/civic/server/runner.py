"""Run a Server: in the foreground until a signal, or in a background thread (``civic run``)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

from civic.server.service import Server, ServerOptions


Beside = Callable[[Server], Awaitable[Callable[[], Awaitable[None]]]]


def serve(database_url: str, options: ServerOptions, beside: Beside | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain gracefully and return. ``beside(server)``
    starts something on the same loop (the dashboard) and returns how to stop it; it runs
    until the server has drained."""

    async def main() -> None:
        server = Server(database_url, options)
        stop_beside = await beside(server) if beside else None
        try:
            await server.start()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.request_stop)
            await server.run()
        finally:
            if stop_beside is not None:
                await stop_beside()

    asyncio.run(main())


class ServerThread:
    """A Server on its own event loop in a daemon thread, for running a whole job in-process."""

    def __init__(self, database_url: str, options: ServerOptions,
                 beside: Beside | None = None) -> None:
        self._server = Server(database_url, options)
        self._beside = beside
        self._stop_beside: Callable[[], Awaitable[None]] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="civic-server",
                                        daemon=True)

    def start(self) -> tuple[str, int]:
        """Start listening; returns the bound address or raises the startup error."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    async def _start(self) -> tuple[str, int]:
        if self._beside is not None:
            self._stop_beside = await self._beside(self._server)
        try:
            return await self._server.start()
        except BaseException:  # a server that did not start has nothing to stop
            if self._stop_beside is not None:
                await self._stop_beside()
            raise

    async def _stop(self) -> None:
        try:
            await self._server.stop()
        finally:
            if self._stop_beside is not None:
                await self._stop_beside()

    def stop(self) -> None:
        done: Future[None] = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        try:
            done.result(timeout=self._server.options.grace + 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
