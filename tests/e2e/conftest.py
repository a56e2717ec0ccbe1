"""Fixtures for end-to-end tests: a whole lab per test module, on the real components."""

from __future__ import annotations

import os

import pytest

from isolator.lab.environment import Lab, LabSpec


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


def require_root() -> None:
    """Fail, never skip: an end-to-end test that did not run is not a pass."""
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests create network namespaces and must run as root")


async def start_lab(spec: LabSpec | None = None) -> Lab:
    require_root()
    lab = Lab(spec or LabSpec())
    try:
        await lab.start()
    except BaseException:
        await lab.stop()
        raise
    return lab
