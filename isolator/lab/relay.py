"""A TCP relay that the lab puts between the isolator and one dependency, to cut that path alone.

Stopping the kube-apiserver itself would also stall KWOK and the controllers, and the node
lifecycle controller would then mark every node unknown when it came back: a different fault.
The relay cuts only the isolator's own path, the way a broken load balancer or a firewall
between the isolator and the API would.

Run it as ``python -m isolator.lab.relay LISTEN_PORT TARGET_HOST TARGET_PORT``. SIGUSR1 cuts the
path: open connections are reset and new ones are accepted but get no response, so clients wait
for their own timeouts. SIGUSR2 restores it. The relay copies bytes and never reads them, so TLS
passes through unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from isolator import logs

logger = logging.getLogger("isolator.lab.relay")

CHUNK_BYTES = 64 * 1024


class Relay:
    """A relay that forwards every connection to one target while open and stalls them while cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._open = asyncio.Event()
        self._open.set()
        self._connections: set[asyncio.Task[None]] = set()

    def cut(self) -> None:
        """Reset every forwarded connection and stall new ones without a response."""
        self._open.clear()
        for task in list(self._connections):
            task.cancel()
        logger.info("relay cut", extra={"target_port": self._target[1]})

    def restore(self) -> None:
        """Forward again; connections held while cut are reset so their clients retry."""
        self._open.set()
        logger.info("relay restored", extra={"target_port": self._target[1]})

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if not self._open.is_set():
                await self._open.wait()
                return  # reset below: a held client never got a connection it could use
            await self._forward(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            _abort(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        try:
            await asyncio.gather(
                _pipe(reader, upstream_writer),
                _pipe(upstream_reader, writer),
            )
        finally:
            _abort(upstream_writer)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(CHUNK_BYTES):
        sink.write(chunk)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


async def serve(listen_port: int, target_host: str, target_port: int) -> None:
    """Relay 127.0.0.1:``listen_port`` to the target until SIGTERM or SIGINT."""
    relay = Relay(target_host, target_port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, relay.cut)
    loop.add_signal_handler(signal.SIGUSR2, relay.restore)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", listen_port)
    logger.info(
        "relay listening",
        extra={"port": listen_port, "target_host": target_host, "target_port": target_port},
    )
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isolator.lab.relay", description=__doc__)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_host")
    parser.add_argument("target_port", type=int)
    args = parser.parse_args(argv)
    logs.configure(json_lines=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen_port, args.target_host, args.target_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
