"""An HTTP client of the isolator's API for the on-call commands of the ``isolator`` CLI.

Every failure maps to one of four errors, and each carries the exit code of the command:
``RejectedError`` (1) when the API returned an error status, ``ConnectError`` (2) when
it could not be reached, ``ResponseError`` (2) when a 2xx response cannot be used, and
``UsageError`` (2) for bad settings such as an empty token file or a timeout of 0. Messages
show URLs without their userinfo and never show the token.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from isolator import tls

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "ISOLATOR_URL"
TOKEN_FILE_ENV = "ISOLATOR_TOKEN_FILE"
CLIENT_CERT_FILE_ENV = "ISOLATOR_CLIENT_CERT_FILE"
CLIENT_KEY_FILE_ENV = "ISOLATOR_CLIENT_KEY_FILE"
CA_FILE_ENV = "ISOLATOR_CA_FILE"
# Long enough for a manual cut, whose response the API sends only after reading the cut back.
DEFAULT_TIMEOUT_S = 30.0
# Error bodies from a proxy in front of the API may be HTML pages; show only their start.
MAX_ERROR_CHARS = 300


class ClientError(Exception):
    """A command failed; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(ClientError):
    """The settings of the command are invalid: URL, token file or arguments."""


class ConnectError(ClientError):
    """The API could not be reached, or it did not respond in time."""


class ResponseError(ClientError):
    """A 2xx response that cannot be used: a body that is not JSON, or JSON without the
    fields of the isolator's API, as from another service behind a wrong URL."""


class RejectedError(ClientError):
    """The API returned an error status; the message is the API's own."""

    exit_code = 1

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful response of the API: 2xx status and decoded JSON body."""

    status: int
    body: Any


# The userinfo of an absolute URL: "user:password@" between "scheme://" and the host.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """Return ``url`` without its userinfo, so that a password in it stays out of messages."""
    return _USERINFO.sub(r"\1", url)


def resolve_url(url: str | None) -> str:
    """Return the API's base URL from ``--url``, else ISOLATOR_URL, else the default.

    Raises UsageError for a URL that is not http or https with a host.
    """
    value = url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:  # such as an unclosed "[" of an IPv6 address
        hostname = None
    if hostname is None or parts.scheme not in ("http", "https"):
        raise UsageError(
            f"invalid API URL {redact_url(value)!r}: expected http://HOST:PORT or https://..."
        )
    return value.rstrip("/")


def read_token(path: str | None) -> str | None:
    """Read the bearer token from ``--token-file``, else ISOLATOR_TOKEN_FILE.

    Returns None when neither is set, for a service that runs without authentication. Raises
    UsageError for a file that is missing, unreadable or empty. The token itself never
    appears in a message.
    """
    name = path or os.environ.get(TOKEN_FILE_ENV)
    if not name:
        return None
    try:
        token = Path(name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise UsageError(f"cannot read token file {name}: {reason}") from None
    if not token:
        raise UsageError(f"token file {name} is empty")
    if any(char.isspace() for char in token):
        raise UsageError(f"token file {name} must contain one token on one line")
    return token


def _tls_file(option: str, value: str | None, variable: str) -> tuple[str, str] | None:
    """Return ``(path, name)`` from the option, else its environment variable, else None.

    ``name`` is the option or the variable that set the path, for messages.
    """
    if value:
        return value, option
    from_env = os.environ.get(variable)
    if from_env:
        return from_env, variable
    return None


def client_ssl_context(
    url: str, cert_file: str | None, key_file: str | None, ca_file: str | None
) -> ssl.SSLContext | None:
    """Build the TLS context of an https ``url`` from the options or their variables.

    Returns None for an http URL without TLS files, and raises UsageError naming the option
    for a missing or invalid file, a certificate without its key or the reverse, and TLS files
    with an http URL. Without ``--ca-file`` the server is verified against the system's store.
    """
    cert = _tls_file("--cert-file", cert_file, CLIENT_CERT_FILE_ENV)
    key = _tls_file("--key-file", key_file, CLIENT_KEY_FILE_ENV)
    ca = _tls_file("--ca-file", ca_file, CA_FILE_ENV)
    if cert is not None and key is None:
        raise UsageError(f"{cert[1]} is set without --key-file ({CLIENT_KEY_FILE_ENV}): set both")
    if key is not None and cert is None:
        raise UsageError(f"{key[1]} is set without --cert-file ({CLIENT_CERT_FILE_ENV}): set both")
    https = urlsplit(url).scheme == "https"
    for item in (cert, ca):
        if item is not None and not https:
            raise UsageError(f"{item[1]} needs an https API URL, but the URL is {redact_url(url)}")
    if not https:
        return None
    try:
        for item in (cert, key, ca):
            if item is not None:
                tls.check_readable(*item)
        return tls.client_context(ca, cert, key)
    except tls.TlsConfigError as err:
        raise UsageError(str(err)) from None


def segment(value: str) -> str:
    """Quote ``value`` as one path segment, so that a name cannot reach another endpoint."""
    return quote(value, safe="")


def error_message(status: int, body: Any, text: str) -> str:
    """Return the API's error message with the fields it names, for people."""
    if not isinstance(body, dict) or "error" not in body:
        return text.strip()[:MAX_ERROR_CHARS] or "no message"
    message = str(body["error"])
    problems = [
        f"{item.get('field')}: {item.get('problem')}"
        for item in body.get("fields") or []
        if isinstance(item, dict)
    ]
    if problems:
        message += " (" + "; ".join(problems) + ")"
    elif body.get("field"):
        message += f" (field: {body['field']})"
    if body.get("leader"):
        message += f"; the leader is {body['leader']}"
    if status == 401:
        message += f"; set --token-file or {TOKEN_FILE_ENV} to a file with a valid token"
    return message


class ApiClient:
    """One session against the API at ``url``, used as an async context manager."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            # aiohttp 3.14 sets no deadline for a total of 0 or less, and a deadline of nan or
            # inf never passes, so each of these would wait forever.
            raise UsageError(f"invalid --timeout {timeout_s}: expected a number of seconds above 0")
        if token is not None and _USERINFO.match(url):
            # Both would go in the Authorization header, and aiohttp raises ValueError then.
            raise UsageError(
                "the API URL contains a user name and password and a token file is set: "
                "remove one of them, because a request carries only one Authorization header"
            )
        self.url = url
        self._ssl_context = ssl_context
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        connector = None
        if self._ssl_context is not None:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context)
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=self._timeout, connector=connector
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str) -> Any:
        """GET ``path`` and return its JSON body. Raises ClientError."""
        reply = await self.request("GET", path)
        return reply.body

    async def post(self, path: str, body: dict[str, Any]) -> Reply:
        """POST ``body`` as JSON to ``path``. Raises ClientError."""
        return await self.request("POST", path, body)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Reply:
        """Send one request and return the 2xx reply.

        Raises RejectedError for any other status, ConnectError when the API cannot be reached
        or times out, and ResponseError for a 2xx body that is not JSON.
        """
        if self._session is None:
            raise RuntimeError("ApiClient is used outside its async with block")
        url = self.url + path
        base_url = redact_url(self.url)
        try:
            async with self._session.request(method, url, json=body) as response:
                status = response.status
                text = await self._read_text(response, f"{method} {redact_url(url)}")
        except TimeoutError as err:
            raise ConnectError(
                f"no response from {base_url} within {self._timeout.total} s (--timeout)"
            ) from err
        except aiohttp.ClientError as err:
            raise ConnectError(f"cannot connect to {base_url}: {err}{self._tls_hint(err)}") from err
        decoded = _decode(text)
        if status >= 300:
            raise RejectedError(status, error_message(status, decoded, text))
        if decoded is None and text.strip():
            raise ResponseError(f"{method} {redact_url(url)} returned a body that is not JSON")
        return Reply(status, decoded)

    @staticmethod
    async def _read_text(response: aiohttp.ClientResponse, request_line: str) -> str:
        """Read the body as text in its charset, as the message of an error status if need be.

        Raises ResponseError for a 2xx body that is not valid in its charset, such as a
        proxy's page that names the wrong one. ``request_line`` is the method and redacted URL.
        """
        try:
            return await response.text()
        except UnicodeDecodeError as err:
            if response.status >= 300:
                return await response.text(errors="replace")
            raise ResponseError(
                f"{request_line} returned a body that is not JSON: "
                f"it is not valid {err.encoding} text"
            ) from err

    def _tls_hint(self, err: aiohttp.ClientError) -> str:
        """Return what to check after a failed https request, or "" when TLS is not the cause."""
        if not self.url.startswith("https://"):
            return ""
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            return (
                f". The API's certificate failed verification: set --ca-file or {CA_FILE_ENV} "
                "to the CA that signed it"
            )
        if isinstance(err, aiohttp.ServerDisconnectedError):
            # Under TLS 1.3 a server that requires a client certificate rejects its absence
            # after the handshake, so the client sees only the connection close.
            return (
                ". An API that requires mutual TLS closes the connection of a client without "
                f"a valid certificate: check --cert-file and --key-file ({CLIENT_CERT_FILE_ENV}, "
                f"{CLIENT_KEY_FILE_ENV})"
            )
        return ""


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
