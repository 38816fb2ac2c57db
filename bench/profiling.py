"""py-spy sampling of daphne and the worker during a (separate, unmeasured) load round.

Records collapsed stacks (`--format raw`) and summarises them: where the samples' leaf frames
are (by package and by function) and which functions are on the stack most (inclusive).
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"site-packages/([^/]+)/")
PROJECT = {"messages_app", "llm_app", "messageservice", "analytics_app"}


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_dir: Path, targets: dict[str, int], rate: int = 1000) -> None:
        self.out_dir = out_dir
        self.targets = targets
        self.rate = rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: dict[str, list[Path]] = {}
        self.label = ""

    def start(self, label: str) -> bool:
        """Attach py-spy to every target; a label used again adds to that label's samples."""
        binary = py_spy()
        if binary is None:
            print("py-spy not found (pip install -r requirements-bench.txt): no profile")
            return False
        if label != self.label:
            self.files = {}
            self.label = label
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.targets.items():
            part = len(self.files.get(name, []))
            out = self.out_dir / f"profile-{label}-{name}-{part}.txt"
            log = (self.out_dir / f"profile-{label}-{name}-{part}.log").open("wb")
            self.files.setdefault(name, []).append(out)
            self.procs[name] = subprocess.Popen(
                [
                    binary, "record",
                    "--pid", str(pid),
                    "--rate", str(self.rate),
                    "--gil",
                    "--format", "raw",
                    "--nonblocking",
                    "--duration", "300",
                    "-o", str(out),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            log.close()
        return True

    def stop(self) -> None:
        """Ask each py-spy to finish (SIGINT makes it write its output), then reap it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()

    def summaries(self, top: int = 12) -> dict[str, Any]:
        return {
            name: summarize([p for p in paths if p.exists()], top)
            for name, paths in self.files.items()
        }


NO_FRAME = "(no Python frame: C code)"


def _split(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return match["func"], match["file"]


def _area(file: str) -> str:
    """The top-level package or module of a py-spy file name ("django/db/x.py" -> "django")."""
    site = _SITE.search(file)
    if site:
        return site.group(1)
    if file.startswith("<frozen"):
        return "stdlib"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def summarize(paths: list[Path], top: int = 12) -> dict[str, Any]:
    """Leaf samples by package and by function; inclusive samples of the project's functions."""
    total = 0
    by_area: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [f for f in stack.split(";") if f]
            if not frames:
                # The GIL holder ran no Python frame: an event loop's C code, a C extension.
                by_area[NO_FRAME] += count
                by_leaf[NO_FRAME] += count
                continue
            func, file = _split(frames[-1])
            by_area[_area(file)] += count
            by_leaf[f"{func} ({file.rsplit('/', 1)[-1]})"] += count
            seen = set()
            for frame in frames:
                func, file = _split(frame)
                if _area(file) in PROJECT:
                    key = f"{func} ({file})"
                    if key not in seen:
                        seen.add(key)
                        inclusive[key] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        if not total:
            return []
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "leaf_by_package_pct": share(by_area),
        "leaf_by_function_pct": share(by_leaf),
        "inclusive_project_pct": share(inclusive),
        "files": [str(p) for p in paths],
    }
