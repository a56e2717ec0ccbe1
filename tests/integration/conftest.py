"""Fixtures for integration tests: one real control plane per test session.

Under pytest-xdist every worker is its own session, so each worker starts its own control plane.
The binaries come from controlplane/build.sh. Run it once before the tests (``make
controlplane``), because a cold build takes far longer than the per-test timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient

from isolator.lab.controlplane import ControlPlane, locate_binaries

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def control_plane_bin_dir() -> Path:
    """The folder with etcd, kube-apiserver, kube-controller-manager and kwok."""
    return locate_binaries(REPO_ROOT)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def control_plane(
    tmp_path_factory: pytest.TempPathFactory, control_plane_bin_dir: Path
) -> AsyncIterator[ControlPlane]:
    """A started control plane shared by the session, with its logs in the pytest tmp folder."""
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), control_plane_bin_dir)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def api(control_plane: ControlPlane) -> AsyncIterator[ApiClient]:
    """A kubernetes-asyncio client with the admin kubeconfig."""
    client = await config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    async with client:
        yield client
