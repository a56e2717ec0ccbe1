"""TLS contexts for the API, the agents' heartbeats and the probes, from PEM files.

Every function takes file paths and names the setting behind each path, so that a bad file
fails at start-up with the setting's environment variable in the message. Messages name files,
never their contents.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the setting."""


def check_readable(path: str, variable: str) -> str:
    """Return ``path`` when it names a readable file, or raise naming ``variable``."""
    file = Path(path)
    if not file.is_file():
        raise TlsConfigError(f"{variable}: file {path} not found")
    try:
        with file.open("rb"):
            pass
    except OSError as err:
        raise TlsConfigError(f"{variable}: file {path} unreadable: {err.strerror}") from err
    return path


def server_context(
    cert: tuple[str, str], key: tuple[str, str], client_ca: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """Build a server context from ``(path, variable)`` pairs.

    With ``client_ca``, every client must present a certificate signed by that CA.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_pair(context, cert, key)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: tuple[str, str] | None = None,
    cert: tuple[str, str] | None = None,
    key: tuple[str, str] | None = None,
) -> ssl.SSLContext:
    """Build a client context that verifies the server against ``ca``, or the system's store.

    ``cert`` and ``key`` add a client certificate for mutual TLS; pass both or neither.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        _load_ca(context, ca)
    if cert is not None and key is not None:
        _load_pair(context, cert, key)
    return context


def _load_pair(context: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str]) -> None:
    cert_path, cert_variable = cert
    key_path, key_variable = key
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as err:
        # OpenSSL reports a key that does not match the certificate, a file that is not PEM and
        # an encrypted key alike, so the message lists all three.
        raise TlsConfigError(
            f"{cert_variable} and {key_variable}: cannot load certificate {cert_path} with key "
            f"{key_path} ({err}). Both must be PEM, and the key unencrypted and matching the "
            "certificate"
        ) from err


def _load_ca(context: ssl.SSLContext, ca: tuple[str, str]) -> None:
    path, variable = ca
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as err:
        raise TlsConfigError(
            f"{variable}: cannot load CA bundle {path} ({err}). It must contain PEM certificates"
        ) from err
