"""Child processes of the lab: started with their output in a log file, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

TAIL_LINES = 20


class ProcessFailedError(RuntimeError):
    """A lab process exited or never became ready; the message ends with its log tail."""


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """Return the last lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process in its own process group, with stdout and stderr in ``log_path``.

    The process group lets ``stop`` reach children that a wrapper such as ``ip netns exec``
    starts, so that nothing outlives the lab.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = {**os.environ, **env} if env is not None else None
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        """Start the process; its output is appended to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        logger.debug("process started", extra={"child": self.name, "pid": self._popen.pid})

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_running(self) -> None:
        """Raise ProcessFailedError with the log tail when the process has exited."""
        if self._popen is None:
            raise ProcessFailedError(f"{self.name} was never started")
        code = self._popen.poll()
        if code is not None:
            raise ProcessFailedError(
                f"{self.name} exited with code {code}; last lines of {self.log_path}:\n"
                f"{log_tail(self.log_path)}"
            )

    def kill(self) -> None:
        """Send SIGKILL to the whole process group at once, as a crash would."""
        self._signal_group(signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait()

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process itself, not its group; does nothing once it has exited."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the process group with SIGTERM, then SIGKILL after ``timeout_s``."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("process ignored SIGTERM", extra={"child": self.name})
        # Children of a wrapper can outlive it, so the group is always swept.
        self._signal_group(signal.SIGKILL)
        self._popen.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)


async def wait_listening(process: ManagedProcess, host: str, port: int, timeout_s: float) -> None:
    """Wait until ``host:port`` accepts a TCP connection; raise if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        process.check_running()
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise ProcessFailedError(
                    f"{process.name} did not listen on {host}:{port} within {timeout_s} s; "
                    f"last lines of {process.log_path}:\n{log_tail(process.log_path)}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
