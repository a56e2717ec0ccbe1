"""Bearer tokens that the token file does not contain, checked by Kubernetes TokenReview.

The reviewed user maps to a role by its ServiceAccount or its groups. An agent's node is the
``authentication.kubernetes.io/node-name`` user extra, which a Pod-bound ServiceAccount token
carries on Kubernetes 1.32 and later, so an agent token still beats for its own node only.

Reviews are cached by the token's SHA-256, never by the token itself. Agents send a heartbeat
every second, and the cache turns that into one review per token per TTL. While the API server
cannot be reached, a token accepted before stays accepted for a bounded grace period, and an
unknown token gets 503, never 401: a 401 would tell an agent that its credential is wrong.

An accepted token whose TTL has passed is served from the cache at once while a review runs
in the background, so an agent never waits behind the reviews of unknown tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fastapi import HTTPException

from isolator.clock import Clock
from isolator.metrics import Metrics
from isolator.settings import Settings
from isolator.sources.errors import SourceError, SourceUnavailableError
from isolator.sources.kubernetes.tokenreview import NODE_NAME_EXTRA, TokenReview

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

# After a failed review no new review is sent for this long, in seconds, so an API server
# outage costs one failed request and one log line per interval, not one per heartbeat.
RETRY_AFTER_FAILURE_S = 5.0

# Maximum number of reviews in flight at once. Tokens not yet reviewed, for example every
# agent's after a restart of the isolator, wait for a free slot instead of all reaching the API
# server at once.
MAX_CONCURRENT_REVIEWS = 8

# Maximum number of distinct tokens in review or waiting for a slot. Beyond it a token not yet
# reviewed gets 503 at once, so that a flood of random tokens against a slow API server costs
# bounded memory and keeps no request waiting.
MAX_PENDING_REVIEWS = 8 * MAX_CONCURRENT_REVIEWS

UNAVAILABLE = (
    "the token authenticator is unavailable: the Kubernetes TokenReview API could not be "
    "reached or failed; retry later"
)


class TokenReviewer(Protocol):
    """The port to the TokenReview API; ``KubernetesTokenReviewer`` implements it."""

    async def review(self, token: str) -> TokenReview:
        """Return the API server's verdict on ``token``. Raises SourceError when it fails."""
        ...


@dataclass(frozen=True, slots=True)
class ReviewedUser:
    """The role and identity of a token that the API server accepted.

    ``role`` is None when no setting maps the user, and ``problem`` then contains the reason,
    for the 403 body.
    """

    name: str
    role: str | None
    node: str | None
    problem: str = ""


@dataclass(slots=True)
class _Entry:
    user: ReviewedUser | None  # None: the API server rejected the token
    fresh_until: float  # monotonic seconds; until then no new review is sent
    usable_until: float  # monotonic seconds; until then it replaces a failed review


def token_expiry(token: str) -> float | None:
    """Return the ``exp`` claim of a JWT in Unix seconds, or None for any other token.

    The payload is read without checking the signature. That is safe only for a token that
    the API server has just accepted, whose claims it therefore signed.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    expiry = claims.get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        return None
    return float(expiry)


class RoleMap:
    """The roles of reviewed users, from a ServiceAccount map and a group map."""

    def __init__(self, service_accounts: Mapping[str, str], groups: Mapping[str, str]) -> None:
        self._service_accounts = dict(service_accounts)
        self._groups = dict(groups)

    def user_of(self, review: TokenReview) -> ReviewedUser:
        """Map an accepted review to its role; a ServiceAccount entry wins over groups."""
        role = self._role_of(review)
        if isinstance(role, ReviewedUser):
            return role
        if role is None:
            problem = (
                f"{review.username} has no role: map its ServiceAccount in "
                "ISOLATOR_AUTH_TOKEN_REVIEW_SERVICE_ACCOUNTS or one of its groups in "
                "ISOLATOR_AUTH_TOKEN_REVIEW_GROUPS"
            )
            return ReviewedUser(review.username, None, None, problem)
        if role != "agent":
            return ReviewedUser(review.username, role, None)
        nodes = review.extra.get(NODE_NAME_EXTRA, ())
        if len(nodes) != 1 or not nodes[0]:
            problem = (
                f"{review.username} has role agent, but its token names no node "
                f"({NODE_NAME_EXTRA}): use a token bound to the agent's Pod, which "
                "Kubernetes 1.32 or later issues with the node name"
            )
            return ReviewedUser(review.username, None, None, problem)
        return ReviewedUser(review.username, role, nodes[0])

    def _role_of(self, review: TokenReview) -> str | ReviewedUser | None:
        if review.username.startswith(SERVICE_ACCOUNT_PREFIX):
            account = review.username.removeprefix(SERVICE_ACCOUNT_PREFIX)
            if account in self._service_accounts:
                return self._service_accounts[account]
        roles = {self._groups[group] for group in review.groups if group in self._groups}
        if len(roles) > 1:
            listed = ", ".join(sorted(roles))
            problem = (
                f"{review.username} has groups that map to different roles ({listed}); map "
                "its ServiceAccount in ISOLATOR_AUTH_TOKEN_REVIEW_SERVICE_ACCOUNTS instead"
            )
            return ReviewedUser(review.username, None, None, problem)
        return roles.pop() if roles else None


class ReviewCache:
    """Reviews by token digest, accepted and rejected ones in separate LRU maps.

    Separate maps keep a flood of invalid tokens from evicting the agents' accepted ones.
    Tokens that the API server accepts but that have no role go with the rejected ones: every
    ServiceAccount token in the cluster is such a token, and they get 403 either way.
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._accepted: OrderedDict[bytes, _Entry] = OrderedDict()
        self._rejected: OrderedDict[bytes, _Entry] = OrderedDict()

    def get(self, digest: bytes) -> _Entry | None:
        for entries in (self._accepted, self._rejected):
            entry = entries.get(digest)
            if entry is not None:
                entries.move_to_end(digest)
                return entry
        return None

    def put(self, digest: bytes, entry: _Entry) -> None:
        self.discard(digest)
        with_role = entry.user is not None and entry.user.role is not None
        entries = self._accepted if with_role else self._rejected
        entries[digest] = entry
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def discard(self, digest: bytes) -> None:
        self._accepted.pop(digest, None)
        self._rejected.pop(digest, None)

    def __len__(self) -> int:
        return len(self._accepted) + len(self._rejected)


class TokenReviewAuthenticator:
    """Reviews bearer tokens through a TokenReviewer, with a cache and a fail-safe."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        settings: Settings,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._reviewer = reviewer
        self._clock = clock
        self._metrics = metrics
        self._roles = RoleMap(
            settings.auth_token_review_service_accounts, settings.auth_token_review_groups
        )
        self._ttl_s = settings.auth_token_review_ttl_s
        self._negative_ttl_s = settings.auth_token_review_negative_ttl_s
        self._grace_s = settings.auth_token_review_grace_s
        self._cache = ReviewCache(settings.auth_token_review_cache_size)
        self._pending: dict[bytes, asyncio.Task[ReviewedUser | None]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REVIEWS)
        self._failed_until: float | None = None  # monotonic; no reviews before then

    @property
    def cache(self) -> ReviewCache:
        return self._cache

    async def authenticate(self, token: str) -> ReviewedUser | None:
        """Return the reviewed user of ``token``, or None when the API server rejects it.

        Raises HTTPException 503 when the review failed and no cached review can replace it.
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock.monotonic()
        entry = self._cache.get(digest)
        if entry is not None and now < entry.fresh_until:
            return entry.user
        if self._paused(now):
            return self._fall_back(entry, now)
        if entry is not None and entry.user is not None and now < entry.usable_until:
            # Within its grace, the cached review is returned now while the next one runs.
            if digest not in self._pending and len(self._pending) < MAX_PENDING_REVIEWS:
                self._start_review(digest, token)
            return entry.user
        if digest not in self._pending and len(self._pending) >= MAX_PENDING_REVIEWS:
            return self._fall_back(entry, now)
        try:
            return await self._review_once(digest, token)
        except SourceError:
            return self._fall_back(self._cache.get(digest), self._clock.monotonic())

    def _paused(self, now: float) -> bool:
        return self._failed_until is not None and now < self._failed_until

    def _fall_back(self, entry: _Entry | None, now: float) -> ReviewedUser | None:
        """Return the user of a stale accepted entry within its grace, else raise 503."""
        if entry is not None and entry.user is not None and now < entry.usable_until:
            return entry.user
        retry_after = str(round(RETRY_AFTER_FAILURE_S))
        raise HTTPException(503, UNAVAILABLE, headers={"Retry-After": retry_after})

    async def _review_once(self, digest: bytes, token: str) -> ReviewedUser | None:
        """Review ``token``, sharing one request among concurrent callers with that token."""
        pending = self._pending.get(digest) or self._start_review(digest, token)
        return await asyncio.shield(pending)

    def _start_review(self, digest: bytes, token: str) -> asyncio.Task[ReviewedUser | None]:
        pending = asyncio.create_task(self._review(digest, token))
        self._pending[digest] = pending
        pending.add_done_callback(lambda task: self._review_done(digest, task))
        return pending

    def _review_done(self, digest: bytes, task: asyncio.Task[ReviewedUser | None]) -> None:
        self._pending.pop(digest, None)
        if not task.cancelled():
            # Retrieves the error, so that asyncio does not report it as never retrieved
            # when every waiter was cancelled first.
            task.exception()

    async def _review(self, digest: bytes, token: str) -> ReviewedUser | None:
        async with self._slots:
            # A review that waited for its slot while another one failed is not sent either.
            if self._paused(self._clock.monotonic()):
                raise SourceUnavailableError("TokenReview paused after a failed review")
            try:
                review = await self._reviewer.review(token)
            except SourceError as err:
                self._record_failure(err, token)
                raise
        self._record_success(review)
        now = self._clock.monotonic()
        if not review.authenticated:
            self._cache.put(digest, _Entry(None, now + self._negative_ttl_s, now))
            return None
        user = self._roles.user_of(review)
        fresh_until = now + self._ttl_s
        usable_until = fresh_until + self._grace_s
        expiry = token_expiry(token)
        if expiry is not None:
            expires_at = now + (expiry - self._clock.wall())
            fresh_until = min(fresh_until, expires_at)
            usable_until = min(usable_until, expires_at)
        self._cache.put(digest, _Entry(user, fresh_until, usable_until))
        return user

    def _record_failure(self, err: SourceError, token: str) -> None:
        if self._metrics is not None:
            self._metrics.token_reviews.labels("error").inc()
        self._failed_until = self._clock.monotonic() + RETRY_AFTER_FAILURE_S
        # The adapter's errors contain the operation and the API server's Status message. No
        # such message is known to quote the token, but it is masked in case one does.
        error = str(err).replace(token, "<token>")
        logger.warning(
            "TokenReview failed, serving cached reviews only",
            extra={"error": error, "retry_in_s": RETRY_AFTER_FAILURE_S},
        )

    def _record_success(self, review: TokenReview) -> None:
        if self._metrics is not None:
            result = "authenticated" if review.authenticated else "unauthenticated"
            self._metrics.token_reviews.labels(result).inc()
        if self._failed_until is not None:
            self._failed_until = None
            logger.info("TokenReview succeeded again")
