"""Ctrl-C on the embedded run stops redis-server and llama-server once and cleanly.

Real processes throughout: honcho with a Procfile of the embedded run's servers, started in a
session of its own as a terminal starts a foreground job, then the terminal's Ctrl-C (SIGINT
to that process group). Honcho then SIGTERMs each Procfile process's group. A server in its
starter's group would get that signal and then its starter's own stop: llama-server exits
from its signal handler on the second one ("Received second interrupt, terminating
immediately.") with a crash backtrace. Each server must see exactly one signal and finish
its own shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from messageservice import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
REDIS_SHUTDOWN = "Received SIGTERM scheduling shutdown"
LLAMA_SHUTDOWN = "cleaning up before exit"
SECOND_SIGNAL = ("Received second interrupt", "You insist", "backtrace", "Aborted", "Traceback")


def _env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="messageservice.settings",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _named(pids: list[int], name: str) -> list[int]:
    found = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _honcho(procfile: str, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """honcho as `make run` starts it, as a foreground job: a process group of its own."""
    path = tmp_path / "Procfile"
    path.write_text(procfile)
    return subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", str(path), "-d", str(BASE_DIR)],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _ctrl_c(proc: subprocess.Popen[str], servers: list[int]) -> str:
    """The terminal's Ctrl-C to the job; its output once every process has ended."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"the run did not stop on Ctrl-C:\n{output}") from None
    _wait_for(lambda: not any(_alive(pid) for pid in servers), 10, "the servers to exit")
    return output


def _assert_one_clean_stop(output: str, marker: str, servers: int = 1) -> None:
    assert output.count(marker) == servers, output
    for text in SECOND_SIGNAL:
        assert text not in output, output
    # honcho SIGKILLs what is left 5 s after its SIGTERM: nothing was.
    assert "SIGKILL" not in output, output


def test_ctrl_c_stops_the_embedded_redis_once(tmp_path: Path) -> None:
    port = embedded.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _honcho("redis: python manage.py embedded_redis\n", tmp_path, _env(REDIS_URL=url))
    try:
        _wait_for(lambda: embedded.redis_answers(url, timeout=0.2), 30, "redis-server")
        servers = _named(_descendants(proc.pid), "redis-server")
        assert len(servers) == 1
        # Its own session: neither the terminal's SIGINT nor honcho's SIGTERM reach it.
        assert os.getsid(servers[0]) == servers[0] != os.getsid(proc.pid)
        output = _ctrl_c(proc, servers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_one_clean_stop(output, REDIS_SHUTDOWN)


def test_without_redis_url_the_embedded_redis_refuses_a_port_in_use() -> None:
    """Unset REDIS_URL means the embedded Redis's own port: if something answers there, the
    command stops instead of writing into it."""
    port = embedded.free_port()
    other = embedded.start_redis(port)
    try:
        env = _env()
        env.pop("REDIS_URL", None)
        result = subprocess.run(
            [sys.executable, "-c", _WITH_EMBEDDED_URL.format(url=f"redis://127.0.0.1:{port}/0")],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        embedded.stop(other)
    assert result.returncode == 1, result
    assert "already answers" in result.stderr, result.stderr


# The command with settings.EMBEDDED_REDIS_URL pointed at a test port (the real one is 8006).
_WITH_EMBEDDED_URL = """
import django, os
from django.conf import settings
django.setup()
settings.REDIS_URL = settings.EMBEDDED_REDIS_URL = {url!r}
from django.core.management import call_command
from django.core.management.base import CommandError
try:
    call_command("embedded_redis")
except CommandError as exc:
    import sys
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


@pytest.mark.llama
def test_ctrl_c_stops_llama_server_and_redis_once(tmp_path: Path) -> None:
    if not embedded.llama_server_available():
        if os.environ.get("REQUIRE_LLAMA") == "1":
            pytest.fail("REQUIRE_LLAMA=1 but llama-server is not installed (make install-llm)")
        pytest.skip("llama-server not installed; `make install-llm` builds it")
    redis_url = f"redis://127.0.0.1:{embedded.free_port()}/0"
    llm_url = f"http://127.0.0.1:{embedded.free_port()}/v1"
    env = _env(REDIS_URL=redis_url, LLM_SERVICE_URL=llm_url, LLM_CONTEXT_TOKENS="2048")
    procfile = "redis: python manage.py embedded_redis\nllm: python manage.py local_llm\n"
    proc = _honcho(procfile, tmp_path, env)
    try:
        _wait_for(lambda: embedded.llm_answers(llm_url, timeout=0.5), 120, "llama-server")
        _wait_for(lambda: embedded.redis_answers(redis_url, timeout=0.2), 30, "redis-server")
        pids = _descendants(proc.pid)
        servers = _named(pids, "llama-server") + _named(pids, "redis-server")
        assert len(servers) == 2
        for pid in servers:
            assert os.getsid(pid) == pid != os.getsid(proc.pid)
        output = _ctrl_c(proc, servers)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _assert_one_clean_stop(output, LLAMA_SHUTDOWN)
    _assert_one_clean_stop(output, REDIS_SHUTDOWN)
