"""Summaries of py-spy's raw output (collapsed stacks): where a Python process was busy."""

from __future__ import annotations

import sysconfig
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
STDLIB = sysconfig.get_paths()["stdlib"]

# Innermost frames of a thread that waits: the event loop in epoll, a pool worker on its queue.
IDLE_LEAVES = (("select", "/selectors.py"), ("_worker", "/concurrent/futures/thread.py"))


def _function_and_path(frame: str) -> tuple[str, str]:
    """Split a py-spy frame "function (path:line)" into the function and the path."""
    name, _, location = frame.rpartition(" (")
    return name.rsplit(".", 1)[-1], location.rsplit(":", 1)[0]


def _is_idle(leaf: str) -> bool:
    function, path = _function_and_path(leaf)
    return any(function == f and path.endswith(p) for f, p in IDLE_LEAVES)


def _module_of(frame: str) -> str:
    """Name the package, isolator module or standard module of a py-spy frame."""
    _, path = _function_and_path(frame)
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0].removesuffix(".py")
    if "/isolator/" in path:
        return "isolator." + path.split("/isolator/")[-1].removesuffix(".py").replace("/", ".")
    name = Path(path).name.removesuffix(".py")
    return f"stdlib {name}" if name else "other"


def _short(frame: str) -> str:
    """Return "function (path)" with the path shortened and the line number left out, so the
    samples of one function add up."""
    name, _, location = frame.rpartition(" (")
    path = location.rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{STDLIB}/", f"{REPO_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    if "/isolator/" in path:
        path = "isolator/" + path.split("/isolator/", 1)[1]
    return f"{name} ({path})"


def _thread_group(frame: str) -> str:
    """Return the thread name of py-spy's "thread (id): name" frame without its pool index."""
    name = frame.partition(": ")[2] or frame
    head, _, index = name.rpartition("_")
    return head if index.isdigit() and head else name


def summarize_profile(raw: str, seconds: float, rate_hz: int, top: int = 15) -> dict[str, Any]:
    """Summarize py-spy's raw output, recorded with --threads, where the isolator was busy.

    Samples whose innermost frame only waits (IDLE_LEAVES) are dropped. "self" counts the
    busy samples whose innermost frame is in a function or package, "total" those with the
    function anywhere on the stack. A thread's share of a core is its busy samples over the
    samples that ``seconds`` at ``rate_hz`` would give.
    """
    threads: Counter[str] = Counter()
    self_functions: Counter[str] = Counter()
    total_functions: Counter[str] = Counter()
    self_modules: Counter[str] = Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or not count_text.isdigit() or _is_idle(frames[-1]):
            continue
        count = int(count_text)
        busy += count
        threads[_thread_group(frames[0])] += count
        self_functions[_short(frames[-1])] += count
        self_modules[_module_of(frames[-1])] += count
        for frame in {_short(frame) for frame in frames[1:]}:
            total_functions[frame] += count
    if not busy:
        return {"busy_samples": 0}

    def share(counter: Counter[str], limit: int) -> list[list[Any]]:
        return [[name, round(100 * n / busy, 1)] for name, n in counter.most_common(limit)]

    # The frames of the command line wrap every sample, so they carry no information.
    isolator = Counter(
        {
            f: n
            for f, n in total_functions.items()
            if "(isolator/" in f and not f.endswith(("(isolator/__main__.py)", "(isolator/cli.py)"))
        }
    )
    expected = seconds * rate_hz
    return {
        "busy_samples": busy,
        "seconds": seconds,
        "core_share_by_thread": [
            [name, round(n / expected, 2)] for name, n in threads.most_common(top)
        ],
        "self_by_package_pct": share(self_modules, top),
        "self_by_function_pct": share(self_functions, top),
        "total_by_isolator_function_pct": share(isolator, top),
    }
