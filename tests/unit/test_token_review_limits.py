"""TokenReview authentication under a slow or failing API server and a flood of tokens.

The reviewer is the fake of ``test_token_review`` except in the logging case, which runs the
real Kubernetes adapter against an HTTP fake of the API server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import HTTPException
from kubernetes_asyncio import client as kubernetes_client

from isolator.api.app import create_app
from isolator.api.tokenreview import MAX_CONCURRENT_REVIEWS, TokenReviewAuthenticator
from isolator.clock import ManualClock
from isolator.metrics import Metrics
from isolator.sources.kubernetes.tokenreview import KubernetesTokenReviewer, TokenReview
from tests.unit.harness import Harness
from tests.unit.test_token_review import (
    AGENT_TOKEN,
    GARBAGE_TOKEN,
    REVIEW_SETTINGS,
    TTL_S,
    FakeReviewer,
    bearer,
    beat,
    logged,
    settle,
    unreachable,
)

TOKENREVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


@pytest.fixture
async def harness() -> Harness:
    return await Harness.start(regions=2, nodes=3, **REVIEW_SETTINGS)


@pytest.fixture
def reviewer() -> FakeReviewer:
    return FakeReviewer()


@pytest.fixture
async def client(harness: Harness, reviewer: FakeReviewer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, Metrics(), harness.clock, token_reviewer=reviewer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


async def test_agent_heartbeat_not_stalled_by_unknown_tokens(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    first = await beat(client, AGENT_TOKEN)
    harness.clock.advance(TTL_S + 1.0)
    # A slow API server: every review now waits until the gate opens.
    reviewer.gate = asyncio.Event()
    flood = [
        asyncio.create_task(client.get("/v1/status", headers=bearer(f"{GARBAGE_TOKEN}-{number}")))
        for number in range(MAX_CONCURRENT_REVIEWS * 4)
    ]
    await settle()
    heartbeat = asyncio.create_task(beat(client, AGENT_TOKEN))
    await settle()
    answered = heartbeat.done()

    reviewer.gate.set()
    await asyncio.gather(*flood, heartbeat)

    assert first.status_code == 200, first.text
    assert answered, "the heartbeat waited for the unknown tokens' reviews"
    assert heartbeat.result().status_code == 200, heartbeat.result().text


async def test_unknown_tokens_waiting_are_bounded(harness: Harness) -> None:
    reviewer = FakeReviewer()
    reviewer.gate = asyncio.Event()
    reviews = TokenReviewAuthenticator(reviewer, harness.controller.settings, harness.clock)
    tokens = [f"{GARBAGE_TOKEN}-{number}" for number in range(1000)]
    requests = [asyncio.create_task(reviews.authenticate(token)) for token in tokens]
    await settle()
    in_flight = len(reviewer.tokens)
    answered = sum(request.done() for request in requests)

    reviewer.gate.set()
    await asyncio.gather(*requests, return_exceptions=True)

    assert in_flight == MAX_CONCURRENT_REVIEWS
    assert answered > 0, "all 1000 requests waited for the 8 reviews in flight"


async def test_roleless_tokens_never_evict_agent(harness: Harness) -> None:
    reviewer = FakeReviewer()
    roleless = [f"roleless-reviewed-token-{number:016d}" for number in range(2)]
    for token in roleless:
        reviewer.reviews[token] = TokenReview(
            True, "system:serviceaccount:default:default", ("system:authenticated",)
        )
    settings = harness.controller.settings.model_copy(update={"auth_token_review_cache_size": 2})
    reviews = TokenReviewAuthenticator(reviewer, settings, harness.clock)
    agent = await reviews.authenticate(AGENT_TOKEN)
    for token in roleless:
        user = await reviews.authenticate(token)
        assert user is not None
        assert user.role is None
    harness.clock.advance(TTL_S + 1.0)
    reviewer.error = unreachable()

    # Would raise HTTPException 503 if the agent's cached review had been evicted.
    within_grace = await reviews.authenticate(AGENT_TOKEN)

    assert agent is not None
    assert within_grace is not None
    assert within_grace.node == "r1-n01"


async def failing_api_server(request: web.Request) -> web.Response:
    """Return 500 for a TokenReview, with a Status message that quotes the token, as an
    authenticating proxy in front of the API server might."""
    body = await request.json()
    token = body["spec"]["token"]
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"authentication webhook failed for token {token}",
        "code": 500,
    }
    return web.json_response(status, status=500)


async def test_token_in_server_error_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    # INFO is the level that ``isolator serve`` logs at. At DEBUG, kubernetes-asyncio itself
    # logs every response body, and a TokenReview response repeats the token.
    caplog.set_level(logging.INFO)
    app = web.Application()
    app.router.add_post(TOKENREVIEWS_PATH, failing_api_server)
    async with TestServer(app, host="127.0.0.1") as server:
        configuration = kubernetes_client.Configuration(host=str(server.make_url("")))
        api_client = kubernetes_client.ApiClient(configuration)
        clock = ManualClock()
        reviewer = KubernetesTokenReviewer(api_client, request_timeout_s=5.0)
        settings = (await Harness.start(regions=1, nodes=1, **REVIEW_SETTINGS)).controller.settings
        reviews = TokenReviewAuthenticator(reviewer, settings, clock)
        try:
            with pytest.raises(HTTPException) as raised:
                await reviews.authenticate(GARBAGE_TOKEN)
        finally:
            await reviewer.close()

    assert raised.value.status_code == 503
    assert "authentication webhook failed" in logged(caplog)
    assert GARBAGE_TOKEN not in logged(caplog)
    assert GARBAGE_TOKEN not in json.dumps(raised.value.detail)
