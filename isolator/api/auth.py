"""Bearer-token authentication and roles, as FastAPI dependencies on every endpoint but
/healthz.

Tokens come from a YAML or JSON file that maps each token, or its SHA-256 written as
``sha256:<64 hex digits>``, to a name and a role::

    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08":
      {name: alice, role: operator}
    "Zt3Lx0p6mRkC1v9QwYb2NfH8sJ4gUe7A": {name: r1-n01, role: agent}

Roles: ``viewer`` reads, ``operator`` reads and isolates or restores by hand, ``alertmanager``
posts to the webhook only, and ``agent`` posts heartbeats only, for the node named by its
entry's name. Only SHA-256 digests of tokens are kept in memory, and no token ever reaches a
log line or a response. The file is read again when it changes, so tokens rotate without a
restart. A file that no longer parses leaves the previous tokens in force.

With ``auth_token_review`` on, a token that the file does not contain goes to the Kubernetes
TokenReview API instead (see ``tokenreview``).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from fastapi import HTTPException, Request

from isolator.api.tokenreview import TokenReviewAuthenticator, TokenReviewer
from isolator.clock import Clock
from isolator.metrics import Metrics
from isolator.settings import Settings

logger = logging.getLogger(__name__)

DIGEST_PREFIX = "sha256:"
# Plain tokens shorter than this are rejected: 16 characters of a random token carry at least
# 64 bits for any alphabet of 16 or more characters.
MIN_TOKEN_CHARS = 16
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="isolator"'}


class Role(enum.StrEnum):
    """The permission set of a caller."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ALERTMANAGER = "alertmanager"
    AGENT = "agent"


READERS = (Role.VIEWER, Role.OPERATOR)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one request; ``role`` is None when authentication is off.

    ``node`` is the only node an agent may send heartbeats for: the entry's name for a token
    from the file, the token's node-name extra for a reviewed one.
    """

    name: str
    role: Role | None
    node: str | None = None


ANONYMOUS = Caller("anonymous", None)


class TokenFileError(ValueError):
    """The token file is missing, unreadable or invalid; the message names the entry."""


def _digest_of(key: str, position: int) -> bytes:
    """Return the SHA-256 digest that a token file key stands for."""
    if key.startswith(DIGEST_PREFIX):
        text = key.removeprefix(DIGEST_PREFIX)
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise TokenFileError(f"entry {position}: the digest is not 64 hexadecimal digits")
        return digest
    if len(key) < MIN_TOKEN_CHARS:
        raise TokenFileError(
            f"entry {position}: the token is shorter than {MIN_TOKEN_CHARS} characters; "
            "use a longer random token or its sha256 digest"
        )
    return hashlib.sha256(key.encode()).digest()


def _caller_of(value: object, position: int) -> Caller:
    if not isinstance(value, Mapping):
        raise TokenFileError(f"entry {position}: expected a mapping with name and role")
    name = value.get("name")
    role = value.get("role")
    if not isinstance(name, str) or not name:
        raise TokenFileError(f"entry {position}: name is missing or not a string")
    try:
        parsed = Role(str(role))
    except ValueError as err:
        choices = ", ".join(member.value for member in Role)
        raise TokenFileError(f"entry {position}: role {role!r} is not one of {choices}") from err
    return Caller(name, parsed, name if parsed is Role.AGENT else None)


def parse_tokens(text: str) -> dict[bytes, Caller]:
    """Parse a token file; return the callers by token digest. Raises TokenFileError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # The parser's message may quote a line of the file, and so a token. The message and
        # the chained cause are left out for that reason.
        problem = type(err).__name__
        raise TokenFileError(f"the token file is not valid YAML or JSON ({problem})") from None
    if not isinstance(data, Mapping) or not data:
        raise TokenFileError("the token file must be a non-empty mapping of tokens to entries")
    tokens: dict[bytes, Caller] = {}
    for position, (key, value) in enumerate(data.items(), start=1):
        if not isinstance(key, str):
            raise TokenFileError(f"entry {position}: the token is not a string")
        digest = _digest_of(key, position)
        if digest in tokens:
            raise TokenFileError(f"entry {position}: the same token appears twice")
        tokens[digest] = _caller_of(value, position)
    return tokens


class TokenFile:
    """The tokens of one file, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[bytes, Caller] = {}
        self._reload(initial=True)

    def _current_stamp(self) -> tuple[int, int, int]:
        stat = os.stat(self._path)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _reload(self, *, initial: bool = False) -> None:
        """Read the file when it changed since the last read; a failed read is logged once
        per change, and the previous tokens stay in force."""
        try:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            tokens = parse_tokens(self._path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, TokenFileError) as err:
            if initial:
                raise TokenFileError(f"cannot load token file {self._path}: {err}") from err
            logger.error(
                "Token file invalid, keeping the previous tokens",
                extra={"path": str(self._path), "error": str(err)},
            )
            return
        self._tokens = tokens
        roles = sorted({caller.role.value for caller in tokens.values() if caller.role})
        logger.info(
            "Token file loaded",
            extra={"path": str(self._path), "tokens": len(tokens), "roles": roles},
        )

    def lookup(self, token: str) -> Caller | None:
        """Return the caller that owns ``token``, or None when no entry matches.

        The lookup is by the token's SHA-256, so its timing depends on the digest, which a
        caller cannot steer towards a valid token.
        """
        self._reload()
        return self._tokens.get(hashlib.sha256(token.encode()).digest())


class Authenticator:
    """Checks the bearer token of each request against the token file, then TokenReview.

    With neither a token file nor a TokenReview authenticator, authentication is off.
    """

    def __init__(
        self, tokens: TokenFile | None, reviews: TokenReviewAuthenticator | None = None
    ) -> None:
        self._tokens = tokens
        self._reviews = reviews

    @property
    def enabled(self) -> bool:
        return self._tokens is not None or self._reviews is not None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        reviewer: TokenReviewer | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> Authenticator:
        """Load the token file that the settings name. Raises TokenFileError.

        With ``auth_token_review`` on, ``reviewer`` and ``clock`` are required, and tokens
        that the file does not contain go to ``reviewer``. Without either source
        authentication is off, which the settings allow only with ``auth_disabled``.
        """
        tokens = None
        if settings.auth_token_file is not None:
            tokens = TokenFile(Path(settings.auth_token_file))
        reviews = None
        if settings.auth_token_review:
            if reviewer is None or clock is None:
                raise ValueError("auth_token_review is on, but no TokenReviewer was given")
            reviews = TokenReviewAuthenticator(reviewer, settings, clock, metrics)
        if tokens is None and reviews is None:
            logger.warning("API authentication is turned off (ISOLATOR_AUTH_DISABLED)")
        return cls(tokens, reviews)

    async def authenticate(self, authorization: str | None) -> Caller:
        """Return the caller that an Authorization header names.

        Raises HTTPException: 401 for a missing or invalid token, 403 for a reviewed user
        without a role, 503 when TokenReview failed and no cached review can replace it.
        """
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers=CHALLENGE)
        caller = None if self._tokens is None else self._tokens.lookup(token)
        if caller is not None:
            return caller
        if self._reviews is None:
            raise HTTPException(401, "invalid bearer token", headers=CHALLENGE)
        user = await self._reviews.authenticate(token)
        if user is None:
            raise HTTPException(401, "invalid bearer token", headers=CHALLENGE)
        if user.role is None:
            raise HTTPException(403, user.problem)
        return Caller(user.name, Role(user.role), user.node)


def require(*roles: Role) -> Callable[[Request], Awaitable[Caller]]:
    """Build a dependency that authenticates the request and admits only ``roles``.

    It raises 401 for a missing or unknown token and 403 for a caller of another role.
    """

    async def dependency(request: Request) -> Caller:
        authenticator: Authenticator = request.app.state.authenticator
        caller = await authenticator.authenticate(request.headers.get("authorization"))
        if caller.role is not None and caller.role not in roles:
            allowed = " or ".join(role.value for role in roles)
            raise HTTPException(
                403, f"{caller.name} has role {caller.role.value}; this endpoint needs {allowed}"
            )
        return caller

    return dependency
