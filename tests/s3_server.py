"""A throwaway S3 server for tests: moto in server mode, in its own process.

A separate process (not moto's in-process mocks, not a thread) because the callers that matter
are other processes: Ray workers and pyarrow's C++ S3 client, which talks HTTP and never sees
Python-level patches. Everything it needs is the ``moto[server]`` package from the dev extra.

    with s3_server() as s3:
        os.environ.update(s3.env)          # or ray.init(runtime_env={"env_vars": s3.env})
        storage.write_text(s3.uri("run", "a.txt"), "hi")
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

# moto accepts any credentials; fixed fake ones keep the AWS SDKs from looking for real ones
# (instance metadata, ~/.aws) and from ever signing a request that could reach real AWS.
FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str  # http://127.0.0.1:<port>
    bucket: str
    env: dict[str, str] = field(default_factory=dict)  # what a process needs to use the server

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])


@contextlib.contextmanager
def s3_server(bucket: str = "mentor-ray-test", start_timeout_s: float = 120.0) -> Iterator[S3Server]:
    """Start moto on 127.0.0.1 on a free port, create ``bucket``, yield the server, stop it."""
    # Kept open for the server's lifetime (its stdout), so not a `with` block.
    log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = None
    try:
        # Another process can grab the port between our probe and moto's bind; that shows up as
        # moto exiting early, and a second port is tried.
        for _attempt in range(3):
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_server_env(),
            )
            if _wait_until_serving(process, port, start_timeout_s):
                break
            _stop(process)
        else:
            raise RuntimeError(f"moto server did not start; its log:\n{_tail(log.name)}")

        endpoint_url = f"http://127.0.0.1:{port}"
        _create_bucket(endpoint_url, bucket)
        env = {
            **FAKE_KEYS,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint_url,
            # The S3-only variable wins over AWS_ENDPOINT_URL wherever it is read, so it is set
            # too: a value inherited from the machine must not send tests to a real bucket.
            "AWS_ENDPOINT_URL_S3": endpoint_url,
            # Local traffic must not go through a proxy configured for the machine.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        yield S3Server(endpoint_url=endpoint_url, bucket=bucket, env=env)
    finally:
        if process is not None:
            _stop(process)
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in os.environ for the duration, restoring what was there before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    # Ask Flask/werkzeug for unbuffered, colourless logs, in case the log is needed for a failure.
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, port: int, timeout_s: float) -> bool:
    """True once moto answers HTTP on ``port``; False if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/moto-api/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with opener.open(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            time.sleep(0.1)
    return False


def _create_bucket(endpoint_url: str, bucket: str) -> None:
    # boto3 (a moto dependency), not mentor_ray.storage: the fixture must not rely on the code
    # under test.
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=FAKE_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=bucket)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: str, lines: int = 40) -> str:
    with open(path, errors="replace") as handle:
        return "".join(handle.readlines()[-lines:])
