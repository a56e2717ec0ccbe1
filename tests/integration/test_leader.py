"""Leader election on a real Lease: one leader, takeover only after the Lease expires."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from kubernetes_asyncio.client import ApiClient

from isolator.clock import SystemClock
from isolator.sources.leader import LeaderElector

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LEASE_S = 3.0


def elector(api: ApiClient, name: str, identity: str) -> LeaderElector:
    return LeaderElector(
        api,
        "default",
        name,
        identity,
        SystemClock(),
        lease_duration_s=LEASE_S,
        renew_deadline_s=2.0,
        retry_period_s=0.25,
    )


async def wait_for(condition: object, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def test_one_leader_and_clean_handover(api: ApiClient) -> None:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    first, second = elector(api, name, "first"), elector(api, name, "second")
    first_task = asyncio.create_task(first.run())
    assert await wait_for(lambda: first.is_leader, 5.0) is not None
    second_task = asyncio.create_task(second.run())

    await asyncio.sleep(1.0)
    assert first.is_leader
    assert not second.is_leader

    first_task.cancel()  # a clean shutdown releases the Lease
    await asyncio.gather(first_task, return_exceptions=True)
    handover = await wait_for(lambda: second.is_leader, 5.0)

    assert handover is not None
    assert handover < LEASE_S, "a released Lease is taken over without waiting for expiry"
    second_task.cancel()
    await asyncio.gather(second_task, return_exceptions=True)


async def test_crashed_leader_replaced_only_after_expiry(api: ApiClient) -> None:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    crashed, standby = elector(api, name, "crashed"), elector(api, name, "standby")
    assert await crashed.try_acquire_or_renew()  # then it never renews again, like a SIGKILL

    standby_task = asyncio.create_task(standby.run())
    takeover = await wait_for(lambda: standby.is_leader, LEASE_S + 3.0)
    standby_task.cancel()
    await asyncio.gather(standby_task, return_exceptions=True)

    assert takeover is not None
    assert takeover >= LEASE_S - 0.1, "the standby must wait out the crashed leader's Lease"
