"""Local checks the agent runs on its node: component health endpoints and the ingress path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one HTTP check."""

    ok: bool
    duration_s: float


async def check_url(session: aiohttp.ClientSession, url: str) -> CheckResult:
    """GET ``url``; a 2xx answer within the session's timeout is a success."""
    started = time.monotonic()
    try:
        async with session.get(url) as response:
            await response.read()
            ok = 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return CheckResult(ok=ok, duration_s=time.monotonic() - started)


async def check_components(
    session: aiohttp.ClientSession, components: Mapping[str, str]
) -> dict[str, CheckResult]:
    """Check every component concurrently."""
    names = list(components)
    results = await asyncio.gather(*(check_url(session, components[n]) for n in names))
    return dict(zip(names, results, strict=True))
