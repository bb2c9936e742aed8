"""`ServerProcess`: `minillm serve` started as a child process, for notebooks, benchmarks and
tests, which need a live server and must not leave one behind.

>>> with ServerProcess("path/to/model", "--device", "cpu") as server:
...     Client(server.url).generate("Hello", max_tokens=8)

`start()` returns once `/health` says ok (the model is loaded); `stop()` sends SIGTERM, which
ends every process of the server (see `engine_client.py`), and SIGKILL if it does not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m minillm serve --model MODEL ARGS...` on `host:port` (a free port if None)."""

    def __init__(self, model: str | None = None, *args: str, host: str = "127.0.0.1",
                 port: int | None = None, log_file: str | None = None) -> None:
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.cmd = [sys.executable, "-m", "minillm", "serve", "--host", host,
                    "--port", str(self.port), *(["--model", model] if model else []), *args]
        self.log_file = log_file  # None: the server's log goes to this process's output
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600.0) -> ServerProcess:
        """Start the server and wait until it is healthy; RuntimeError if it exits or times out."""
        import httpx

        import minillm

        # The child imports this very minillm, installed or not.
        root = os.path.dirname(os.path.dirname(os.path.abspath(minillm.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        log = open(self.log_file, "w") if self.log_file else None
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, env=env,
                                         stderr=subprocess.STDOUT if log else None)
        finally:
            if log is not None:
                log.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode} while "
                                   f"starting{self._log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server was not healthy within {timeout} s{self._log_tail()}")

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        if not self.log_file or not os.path.exists(self.log_file):
            return ""
        with open(self.log_file) as f:
            return f.read()

    def _log_tail(self) -> str:
        tail = self.log()[-3000:]
        return f":\n{tail}" if tail else ""

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
