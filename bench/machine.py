"""The machine and the software versions behind a benchmark run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "isolator",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "aiohttp",
    "kubernetes-asyncio",
    "prometheus-client",
    "prometheus-api-client",
    "scikit-learn",
)


def _command(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"({' '.join(argv)} failed: {err})"
    return (result.stdout or result.stderr).strip()


def _lscpu() -> dict[str, str]:
    wanted = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "CPU max MHz")
    fields = {}
    for line in _command(["lscpu"]).splitlines():
        name, _, value = line.partition(":")
        if name.strip() in wanted:
            fields[name.strip()] = value.strip()
    return fields


def describe_machine() -> dict[str, Any]:
    """Return nproc, lscpu's main fields, ``free -m``, the kernel and the load average."""
    return {
        "nproc": _command(["nproc"]),
        "lscpu": _lscpu(),
        "free_m": _command(["free", "-m"]),
        "kernel": platform.release(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def describe_versions(bin_dir: Path | None) -> dict[str, str]:
    """Return the versions of Python, the Python packages, Prometheus and the control plane."""
    versions = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["prometheus"] = _command(["prometheus", "--version"]).splitlines()[0]
    if bin_dir is not None:
        # The build cache names its folder after every component's version.
        versions["control plane"] = bin_dir.name
    return versions
