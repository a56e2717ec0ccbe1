"""Kubernetes TokenReview behind the token file: roles, the agent's node, the cache and the
fail-safe while the API server cannot be reached, through a fake reviewer on the port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from isolator.api.app import create_app
from isolator.api.auth import Authenticator
from isolator.api.tokenreview import (
    MAX_CONCURRENT_REVIEWS,
    RETRY_AFTER_FAILURE_S,
    ReviewCache,
    TokenReviewAuthenticator,
    _Entry,
    token_expiry,
)
from isolator.metrics import Metrics
from isolator.settings import Settings
from isolator.sources.kubernetes import KubernetesError, KubernetesUnavailableError
from isolator.sources.kubernetes.tokenreview import NODE_NAME_EXTRA, TokenReview
from tests.unit.harness import FAST, Harness

AGENT_TOKEN = "agent-r1-n01-reviewed-token-0123456789"
NODELESS_TOKEN = "agent-without-node-token-0123456789"
VIEWER_TOKEN = "grafana-reviewed-token-0123456789abc"
OPERATOR_TOKEN = "oncall-reviewed-token-0123456789abcd"
CONFLICT_TOKEN = "two-roles-reviewed-token-0123456789a"
UNMAPPED_TOKEN = "unmapped-reviewed-token-0123456789ab"
GARBAGE_TOKEN = "garbage-token-nobody-issued-0123456"
FILE_TOKEN = "file-operator-token-0123456789abcdef"

AGENT_USER = "system:serviceaccount:edge-agents:isolator-agent"
TTL_S = 60.0
NEGATIVE_TTL_S = 5.0
GRACE_S = 300.0

REVIEW_SETTINGS: dict[str, Any] = {
    "auth_disabled": False,
    "auth_token_review": True,
    "auth_token_review_service_accounts": {
        "edge-agents:isolator-agent": "agent",
        "monitoring:grafana": "viewer",
    },
    "auth_token_review_groups": {"oncall": "operator", "readers": "viewer"},
    "auth_token_review_ttl_s": TTL_S,
    "auth_token_review_negative_ttl_s": NEGATIVE_TTL_S,
    "auth_token_review_grace_s": GRACE_S,
}


def agent_review(node: str | None = "r1-n01") -> TokenReview:
    extra = {NODE_NAME_EXTRA: (node,)} if node is not None else {}
    return TokenReview(True, AGENT_USER, ("system:serviceaccounts",), extra)


REVIEWS = {
    AGENT_TOKEN: agent_review(),
    NODELESS_TOKEN: agent_review(node=None),
    VIEWER_TOKEN: TokenReview(True, "system:serviceaccount:monitoring:grafana", ("readers",)),
    OPERATOR_TOKEN: TokenReview(True, "alice", ("oncall", "system:authenticated")),
    CONFLICT_TOKEN: TokenReview(True, "bob", ("oncall", "readers")),
    UNMAPPED_TOKEN: TokenReview(True, "carol", ("system:authenticated",)),
}


class FakeReviewer:
    """The TokenReview port: returns the reviews in REVIEWS, or raises ``error`` when set."""

    def __init__(self) -> None:
        self.reviews = dict(REVIEWS)
        self.tokens: list[str] = []
        self.error: KubernetesError | None = None
        self.gate: asyncio.Event | None = None

    async def review(self, token: str) -> TokenReview:
        self.tokens.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.reviews.get(token, TokenReview(authenticated=False))


async def settle() -> None:
    """Let every ready task run until it blocks, without advancing any clock."""
    for _ in range(20):
        await asyncio.sleep(0)


def jwt(claims: dict[str, Any]) -> str:
    """Build a token shaped like a JWT; the fake reviewer never checks the signature."""

    def segment(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{segment({'alg': 'RS256'})}.{segment(claims)}.c2lnbmF0dXJl"


@pytest.fixture
async def harness(tmp_path: Path) -> Harness:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f'"{FILE_TOKEN}": {{name: alice-file, role: operator}}\n')
    return await Harness.start(regions=2, nodes=3, auth_token_file=str(tokens), **REVIEW_SETTINGS)


@pytest.fixture
def reviewer() -> FakeReviewer:
    return FakeReviewer()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def client(
    harness: Harness, reviewer: FakeReviewer, metrics: Metrics
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, metrics, harness.clock, token_reviewer=reviewer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def heartbeat(node: str = "r1-n01") -> dict[str, Any]:
    return {"node": node, "region": "r1", "seq": 1, "sent_at": 1_780_000_000.0}


async def beat(client: httpx.AsyncClient, token: str, node: str = "r1-n01") -> httpx.Response:
    return await client.post("/v1/heartbeats", json=heartbeat(node), headers=bearer(token))


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Return every captured log record with its extra fields, which caplog.text leaves out."""
    return "\n".join(str(vars(record)) for record in caplog.records)


def reviews_counted(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "isolator_auth_token_reviews_total", {"result": result}
    )
    assert value is not None, result
    return value


# Roles


@pytest.mark.parametrize(
    ("token", "path", "expected"),
    [
        (VIEWER_TOKEN, "/v1/status", 200),
        (OPERATOR_TOKEN, "/v1/status", 200),
        (VIEWER_TOKEN, "/v1/isolations/nodes/r1-n02", 403),
        (AGENT_TOKEN, "/v1/status", 403),
    ],
    ids=["service-account-viewer", "group-operator", "viewer-cannot-isolate", "agent-cannot-read"],
)
async def test_reviewed_user_gets_mapped_role(
    client: httpx.AsyncClient, token: str, path: str, expected: int
) -> None:
    if path.startswith("/v1/isolations"):
        response = await client.post(path, json={"reason": "test"}, headers=bearer(token))
    else:
        response = await client.get(path, headers=bearer(token))

    assert response.status_code == expected, response.text


async def test_service_account_entry_wins_over_groups(harness: Harness) -> None:
    reviewer = FakeReviewer()
    reviewer.reviews[VIEWER_TOKEN] = TokenReview(
        True, "system:serviceaccount:monitoring:grafana", ("oncall",)
    )
    authenticator = Authenticator.from_settings(
        harness.controller.settings, reviewer, harness.clock
    )

    caller = await authenticator.authenticate(f"Bearer {VIEWER_TOKEN}")

    assert caller.role is not None
    assert caller.role.value == "viewer"
    assert caller.name == "system:serviceaccount:monitoring:grafana"


async def test_unmapped_user_gets_403_naming_settings(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/status", headers=bearer(UNMAPPED_TOKEN))

    assert response.status_code == 403, response.text
    assert "carol has no role" in response.json()["error"]
    assert "ISOLATOR_AUTH_TOKEN_REVIEW_SERVICE_ACCOUNTS" in response.json()["error"]


async def test_groups_with_two_roles_get_403(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/status", headers=bearer(CONFLICT_TOKEN))

    assert response.status_code == 403, response.text
    assert "different roles (operator, viewer)" in response.json()["error"]


async def test_file_token_skips_review(client: httpx.AsyncClient, reviewer: FakeReviewer) -> None:
    response = await client.get("/v1/status", headers=bearer(FILE_TOKEN))

    assert response.status_code == 200, response.text
    assert reviewer.tokens == []


async def test_garbage_token_gets_401(client: httpx.AsyncClient, metrics: Metrics) -> None:
    response = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid bearer token"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert reviews_counted(metrics, "unauthenticated") == 1


# The agent's node


async def test_agent_beats_for_token_node_only(client: httpx.AsyncClient) -> None:
    own = await beat(client, AGENT_TOKEN)
    other = await beat(client, AGENT_TOKEN, node="r1-n02")

    assert own.status_code == 200, own.text
    assert other.status_code == 403, other.text
    assert other.json()["field"] == "node"
    assert "for node 'r1-n01' only" in other.json()["error"]


async def test_agent_without_node_extra_gets_403(client: httpx.AsyncClient) -> None:
    response = await beat(client, NODELESS_TOKEN)

    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert "has role agent, but its token names no node" in error
    assert NODE_NAME_EXTRA in error


async def test_agent_with_two_node_names_gets_403(
    client: httpx.AsyncClient, reviewer: FakeReviewer
) -> None:
    reviewer.reviews[NODELESS_TOKEN] = TokenReview(
        True, AGENT_USER, (), {NODE_NAME_EXTRA: ("r1-n01", "r1-n02")}
    )

    response = await beat(client, NODELESS_TOKEN)

    assert response.status_code == 403, response.text


# The cache


async def test_repeated_token_reviewed_once_per_ttl(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer, metrics: Metrics
) -> None:
    for _ in range(5):
        response = await beat(client, AGENT_TOKEN)
        assert response.status_code == 200, response.text
        harness.clock.advance(1.0)
    reviewed_within_ttl = len(reviewer.tokens)
    harness.clock.advance(TTL_S)
    after_ttl = await beat(client, AGENT_TOKEN)
    # Past its TTL the cached review is returned at once, and the next review runs after it.
    await settle()

    assert reviewed_within_ttl == 1
    assert after_ttl.status_code == 200, after_ttl.text
    assert len(reviewer.tokens) == 2
    assert reviews_counted(metrics, "authenticated") == 2


async def test_revoked_token_refused_after_background_review(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    assert (await beat(client, AGENT_TOKEN)).status_code == 200
    harness.clock.advance(TTL_S + 1.0)
    reviewer.reviews[AGENT_TOKEN] = TokenReview(False)

    answered_from_cache = await beat(client, AGENT_TOKEN)
    await settle()
    after_review = await beat(client, AGENT_TOKEN)

    assert answered_from_cache.status_code == 200, answered_from_cache.text
    assert after_review.status_code == 401, after_review.text


async def test_rejected_token_cached_briefly(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    first = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))
    harness.clock.advance(NEGATIVE_TTL_S - 1.0)
    cached = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))
    reviewed_before_expiry = len(reviewer.tokens)
    harness.clock.advance(1.0)
    again = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))

    assert first.status_code == 401, first.text
    assert cached.status_code == 401, cached.text
    assert again.status_code == 401, again.text
    assert reviewed_before_expiry == 1
    assert len(reviewer.tokens) == 2


async def test_token_expiry_shortens_ttl(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    token = jwt({"sub": AGENT_USER, "exp": int(harness.clock.wall()) + 10})
    reviewer.reviews[token] = agent_review()

    first = await beat(client, token)
    harness.clock.advance(9.0)
    cached = await beat(client, token)
    reviewed_before_expiry = len(reviewer.tokens)
    harness.clock.advance(2.0)
    reviewer.reviews[token] = TokenReview(authenticated=False)
    expired = await beat(client, token)

    assert first.status_code == 200, first.text
    assert cached.status_code == 200, cached.text
    assert reviewed_before_expiry == 1
    assert expired.status_code == 401, expired.text
    assert len(reviewer.tokens) == 2


async def test_concurrent_requests_share_one_review(
    client: httpx.AsyncClient, reviewer: FakeReviewer
) -> None:
    reviewer.gate = asyncio.Event()
    requests = [asyncio.create_task(beat(client, AGENT_TOKEN)) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)  # lets every request reach the pending review
    reviewer.gate.set()

    responses = await asyncio.gather(*requests)

    assert [response.status_code for response in responses] == [200] * 5
    assert len(reviewer.tokens) == 1


def test_cache_evicts_least_recently_used() -> None:
    cache = ReviewCache(max_entries=2)
    accepted = _Entry(user=None, fresh_until=0.0, usable_until=0.0)
    for key in (b"a", b"b"):
        cache.put(key, accepted)
    cache.get(b"a")
    cache.put(b"c", accepted)

    assert cache.get(b"a") is not None
    assert cache.get(b"b") is None
    assert cache.get(b"c") is not None
    assert len(cache) == 2


async def test_rejected_tokens_never_evict_accepted(harness: Harness) -> None:
    reviewer = FakeReviewer()
    settings = harness.controller.settings.model_copy(update={"auth_token_review_cache_size": 2})
    reviews = TokenReviewAuthenticator(reviewer, settings, harness.clock)
    await reviews.authenticate(AGENT_TOKEN)
    for number in range(5):
        await reviews.authenticate(f"{GARBAGE_TOKEN}-{number}")
    reviewed = len(reviewer.tokens)

    user = await reviews.authenticate(AGENT_TOKEN)

    assert user is not None
    assert user.node == "r1-n01"
    assert len(reviewer.tokens) == reviewed
    assert len(reviews.cache) == 3


async def test_cache_keyed_by_digest(harness: Harness) -> None:
    reviews = TokenReviewAuthenticator(FakeReviewer(), harness.controller.settings, harness.clock)

    await reviews.authenticate(AGENT_TOKEN)

    assert reviews.cache.get(hashlib.sha256(AGENT_TOKEN.encode()).digest()) is not None
    assert reviews.cache.get(AGENT_TOKEN.encode()) is None


# The API server cannot be reached


def unreachable() -> KubernetesUnavailableError:
    return KubernetesUnavailableError(
        "create TokenReview failed: ClientConnectorError: Cannot connect to host 127.0.0.1:6443"
    )


async def test_unreachable_unknown_token_gets_503(
    client: httpx.AsyncClient, reviewer: FakeReviewer, metrics: Metrics
) -> None:
    reviewer.error = unreachable()

    response = await beat(client, AGENT_TOKEN)

    assert response.status_code == 503, response.text
    assert "token authenticator is unavailable" in response.json()["error"]
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers
    assert reviews_counted(metrics, "error") == 1


async def test_token_quoted_in_error_masked(
    client: httpx.AsyncClient, reviewer: FakeReviewer, caplog: pytest.LogCaptureFixture
) -> None:
    reviewer.error = KubernetesError(
        f"create TokenReview failed: HTTP 400 Bad Request: invalid token {GARBAGE_TOKEN}",
        status=400,
    )

    response = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))

    assert response.status_code == 503, response.text
    assert "invalid token <token>" in logged(caplog)
    assert GARBAGE_TOKEN not in logged(caplog)


async def test_queued_review_not_sent_after_failure(harness: Harness) -> None:
    reviewer = FakeReviewer()
    reviewer.gate = asyncio.Event()
    reviewer.error = unreachable()
    settings = harness.controller.settings
    reviews = TokenReviewAuthenticator(reviewer, settings, harness.clock)
    tokens = [f"{GARBAGE_TOKEN}-{number}" for number in range(MAX_CONCURRENT_REVIEWS + 3)]
    requests = [asyncio.create_task(reviews.authenticate(token)) for token in tokens]
    for _ in range(10):
        await asyncio.sleep(0)  # lets the first reviews take every slot
    reviewer.gate.set()

    results = await asyncio.gather(*requests, return_exceptions=True)

    assert len(reviewer.tokens) == MAX_CONCURRENT_REVIEWS
    for result in results:
        assert isinstance(result, HTTPException), result
        assert result.status_code == 503


async def test_forbidden_review_gets_503(client: httpx.AsyncClient, reviewer: FakeReviewer) -> None:
    reviewer.error = KubernetesError(
        "create TokenReview failed: HTTP 403 Forbidden: tokenreviews.authentication.k8s.io is "
        "forbidden",
        status=403,
    )

    response = await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN))

    assert response.status_code == 503, response.text


async def test_unreachable_cached_token_works_within_grace(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    first = await beat(client, AGENT_TOKEN)
    reviewer.error = unreachable()
    harness.clock.advance(TTL_S + 1.0)
    within_grace = await beat(client, AGENT_TOKEN)
    other_node = await beat(client, AGENT_TOKEN, node="r1-n02")
    harness.clock.advance(GRACE_S)
    past_grace = await beat(client, AGENT_TOKEN)

    assert first.status_code == 200, first.text
    assert within_grace.status_code == 200, within_grace.text
    assert other_node.status_code == 403, other_node.text
    assert past_grace.status_code == 503, past_grace.text


async def test_unreachable_expired_token_gets_503(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer
) -> None:
    token = jwt({"sub": AGENT_USER, "exp": int(harness.clock.wall()) + 30})
    reviewer.reviews[token] = agent_review()
    first = await beat(client, token)
    reviewer.error = unreachable()
    harness.clock.advance(31.0)

    response = await beat(client, token)

    assert first.status_code == 200, first.text
    assert response.status_code == 503, response.text


async def test_failure_pauses_reviews(
    client: httpx.AsyncClient, harness: Harness, reviewer: FakeReviewer, metrics: Metrics
) -> None:
    reviewer.error = unreachable()
    for _ in range(4):
        response = await beat(client, AGENT_TOKEN)
        assert response.status_code == 503, response.text
        harness.clock.advance(1.0)
    reviewed_while_paused = len(reviewer.tokens)
    reviewer.error = None
    harness.clock.advance(RETRY_AFTER_FAILURE_S)
    recovered = await beat(client, AGENT_TOKEN)

    assert reviewed_while_paused == 1
    assert recovered.status_code == 200, recovered.text
    assert len(reviewer.tokens) == 2
    assert reviews_counted(metrics, "error") == 1
    assert reviews_counted(metrics, "authenticated") == 1


async def test_no_token_in_logs_or_bodies(
    client: httpx.AsyncClient,
    harness: Harness,
    reviewer: FakeReviewer,
    metrics: Metrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = (AGENT_TOKEN, NODELESS_TOKEN, UNMAPPED_TOKEN, GARBAGE_TOKEN)

    responses = [
        await beat(client, AGENT_TOKEN, node="r1-n02"),
        await beat(client, NODELESS_TOKEN),
        await client.get("/v1/status", headers=bearer(UNMAPPED_TOKEN)),
        await client.get("/v1/status", headers=bearer(GARBAGE_TOKEN)),
    ]
    harness.clock.advance(TTL_S + GRACE_S + 1.0)
    reviewer.error = unreachable()
    responses.append(await beat(client, AGENT_TOKEN))
    exposition = (await client.get("/metrics", headers=bearer(FILE_TOKEN))).text

    assert "TokenReview failed" in logged(caplog)
    assert "Cannot connect to host" in logged(caplog)
    for token in tokens:
        assert token not in logged(caplog), token
        assert token not in exposition, token
        for response in responses:
            assert token not in response.text, token


# Settings and helpers


def test_review_alone_satisfies_auth_settings() -> None:
    settings = Settings(**{**FAST, **REVIEW_SETTINGS})

    assert settings.auth_token_file is None
    assert settings.auth_token_review


def test_unknown_role_in_map_rejected() -> None:
    with pytest.raises(ValidationError, match="auth_token_review_groups"):
        Settings(**{**FAST, **REVIEW_SETTINGS, "auth_token_review_groups": {"oncall": "root"}})


async def test_review_without_reviewer_rejected(harness: Harness) -> None:
    with pytest.raises(ValueError, match="no TokenReviewer"):
        Authenticator.from_settings(harness.controller.settings)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (jwt({"exp": 1_780_000_100}), 1_780_000_100.0),
        (jwt({"sub": "no-expiry"}), None),
        (jwt({"exp": True}), None),
        (jwt({"exp": "soon"}), None),
        ("header.!!!not-base64!!!.signature", None),
        ("an-opaque-token-0123456789", None),
    ],
    ids=["exp", "no-exp", "bool-exp", "string-exp", "bad-base64", "opaque"],
)
def test_token_expiry_read_from_jwt(token: str, expected: float | None) -> None:
    assert token_expiry(token) == expected
