"""A moto S3 server in a separate OS process, for kvraft tests.

:class:`MotoServer` runs ``python -m moto.server`` (from the same virtualenv
as ``sys.executable``) on 127.0.0.1, waits until it answers HTTP, and stops it
again.  It can be stopped and started again on the *same* port, which lets a
test simulate "S3 down, then back"; moto keeps its state in memory, so a
restarted server is empty (buckets must be created again).

Clients never talk to AWS: they get ``endpoint_url=server.endpoint_url`` and
fake credentials from :data:`FAKE_AWS_ENV` (or :meth:`MotoServer.env` for
child processes).  kvraft node processes started by a test receive the
endpoint as their ``endpoint_url`` setting and the fake credentials through
their environment::

    with MotoServer() as s3:
        env = s3.env(os.environ)            # fake credentials + region
        store = S3SnapshotStore(bucket="b", prefix="p", cluster="c",
                                endpoint_url=s3.endpoint_url)
        ...
        s3.stop()     # S3 is down: calls fail with StoreUnavailable
        s3.start()    # back on the same port, empty
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any

FAKE_AWS_ENV: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Fake credentials and region for clients of a moto server."""


class MotoServerError(RuntimeError):
    """The moto server could not be started or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop ``proc`` (SIGTERM, then SIGKILL after ``timeout_s``) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MotoServer:
    """A moto S3 server subprocess bound to ``host``; restartable on the same port.

    ``port=None`` picks a free port on the first :meth:`start` and keeps it for
    later restarts.  Server output goes to ``log_path`` (appended) or, if not
    given, to a temporary file that is removed on :meth:`stop`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        log_path: str | None = None,
        module: str = "moto.server",
    ) -> None:
        self.host = host
        self.module = module
        self._port = port
        self.startup_timeout_s = startup_timeout_s
        self._log_path = log_path
        self._temp_log: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def port(self) -> int:
        """The server's port (chosen on first start if not given)."""
        if self._port is None:
            raise MotoServerError("port not chosen yet; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` — pass as ``endpoint_url`` to boto3 / the snapshot store."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the server and wait until it answers; return :attr:`endpoint_url`.

        Raises :class:`MotoServerError` if the port is taken, the process exits
        or it does not answer within ``startup_timeout_s``.
        """
        if self.running:
            raise MotoServerError(f"moto server already running at {self.endpoint_url}")
        attempts = 3 if self._port is None else 1
        for attempt in range(attempts):
            if self._port is None or attempt > 0:
                self._port = free_port(self.host)
            try:
                self._spawn_and_wait()
                return self.endpoint_url
            except MotoServerError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        if not _port_is_free(self.host, self.port):
            raise MotoServerError(f"port {self.host}:{self.port} is already in use")
        if self._log_path is None and self._temp_log is None:
            fd, self._temp_log = tempfile.mkstemp(prefix="kvraft-moto-", suffix=".log")
            os.close(fd)
        log_path = self._log_path or self._temp_log
        assert log_path is not None
        cmd = [sys.executable, "-m", self.module, "-H", self.host, "-p", str(self.port)]
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 5.0)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MotoServerError(
                    f"moto server exited with {self._proc.returncode}: {self._log_tail()}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise MotoServerError(
            f"moto server on {self.endpoint_url} did not answer within "
            f"{self.startup_timeout_s}s: {self._log_tail()}"
        )

    def _request(self, method: str, path: str, timeout_s: float = 1.0) -> int:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def _answers(self) -> bool:
        try:
            self._request("GET", "/")
        except OSError:
            return False
        return True

    def _log_tail(self, limit: int = 2000) -> str:
        path = self._log_path or self._temp_log
        if path is None:
            return ""
        try:
            with open(path, "rb") as f:
                return f.read()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server if running (idempotent); the port is kept for :meth:`start`."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc, timeout_s)
        if self._temp_log is not None:
            with contextlib.suppress(OSError):
                os.remove(self._temp_log)
            self._temp_log = None

    def restart(self) -> str:
        """Stop and start again on the same port (the new server is empty)."""
        self.stop()
        return self.start()

    def reset(self) -> None:
        """Drop all state (buckets, objects) in the running server."""
        status = self._request("POST", "/moto-api/reset", timeout_s=10.0)
        if status >= 400:
            raise MotoServerError(f"moto reset failed with HTTP {status}")

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a client process: ``base`` plus fake credentials and region."""
        env = dict(base or {})
        env.update(FAKE_AWS_ENV)
        no_proxy = [p for p in env.get("NO_PROXY", "").split(",") if p]
        if self.host not in no_proxy:
            env["NO_PROXY"] = ",".join([*no_proxy, self.host])
        return env

    def client(self, service: str = "s3") -> Any:
        """A boto3 client for this server with fake credentials (for test setup/inspection)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=FAKE_AWS_ENV["AWS_SESSION_TOKEN"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
