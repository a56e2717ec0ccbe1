"""TLS contexts for the API, the agents' heartbeats and the probes, from PEM files, and the
reloader that loads renewed files into a running context.

Every function takes file paths and names the setting behind each path, so that a bad file
fails at start-up with the setting's environment variable in the message. Messages and logs
name files, never their contents.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from isolator.clock import Clock

logger = logging.getLogger(__name__)


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
        context.load_cert_chain(cert_path, key_path, password=reject_passphrase)
    except (ssl.SSLError, OSError, TlsConfigError) as err:
        # OpenSSL reports a key that does not match the certificate, a file that is not PEM and
        # an encrypted key alike, so the message lists all three.
        raise TlsConfigError(
            f"{cert_variable} and {key_variable}: cannot load certificate {cert_path} with key "
            f"{key_path} ({err}). Both must be PEM, and the key unencrypted and matching the "
            "certificate"
        ) from err


def reject_passphrase() -> bytes:
    """Raise TlsConfigError, for ``load_cert_chain`` to call when the key is encrypted.

    Without a password callback, OpenSSL prompts for the passphrase on the controlling
    terminal and blocks the process until someone types. Without a terminal, it writes the
    prompt to stderr.
    """
    raise TlsConfigError("the key is encrypted, but only unencrypted keys are supported")


def _load_ca(context: ssl.SSLContext, ca: tuple[str, str]) -> None:
    path, variable = ca
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as err:
        raise TlsConfigError(
            f"{variable}: cannot load CA bundle {path} ({err}). It must contain PEM certificates"
        ) from err


class CertificateReloader:
    """Loads changed PEM files into one live SSLContext, so that new handshakes use them.

    Connections already established keep the certificate they started with. Files that do not
    load together, such as a half-written file or a key that does not match the certificate,
    leave the context as it was. The failure is logged and counted, and the files are tried
    again when one of them changes.

    A CA bundle only adds certificates to the context's trust store, because ``ssl`` cannot
    remove one. A CA deleted from the bundle stays trusted until the process restarts.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        name: str,
        *,
        cert: tuple[str, str] | None = None,
        key: tuple[str, str] | None = None,
        ca: tuple[str, str] | None = None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        """Watch the ``(path, variable)`` files that ``context`` was built from.

        ``name`` labels the logs, and ``count`` is called with "ok" or "error" after each
        reload attempt. The files are taken as loaded when the reloader is created.
        """
        if (cert is None) != (key is None):
            raise ValueError("cert and key must be given together")
        self.context = context
        self.name = name
        self._cert = cert
        self._key = key
        self._ca = ca
        self._count = count
        self._files = [item for item in (cert, key, ca) if item is not None]
        self._stamps = self._current_stamps()

    @property
    def paths(self) -> list[str]:
        """Paths of the watched files: certificate, key, then CA bundle, as given."""
        return [path for path, _ in self._files]

    def _current_stamps(self) -> list[tuple[int, int, int, int] | None]:
        # Kubernetes swaps a Secret volume's files through a symlink, so the inode changes even
        # when the size and modification time happen to match. A missing file stamps as None.
        stamps: list[tuple[int, int, int, int] | None] = []
        for path, _ in self._files:
            try:
                stat = os.stat(path)
            except OSError:
                stamps.append(None)
                continue
            stamps.append((stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return stamps

    def check(self) -> bool | None:
        """Reload the files when any of them changed since the last check.

        Returns True after a reload, False when the changed files did not load (the context
        keeps its previous certificate), and None when nothing changed.
        """
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return None
        # Stamped before reading, so a write that lands during the read shows as a change
        # at the next check.
        self._stamps = stamps
        try:
            not_after = self._reload()
        except (OSError, ssl.SSLError, ValueError) as err:
            logger.warning(
                "TLS reload failed, keeping the previous files",
                extra={
                    "context": self.name,
                    "files": self.paths,
                    "settings": [variable for _, variable in self._files],
                    "error": str(err),
                },
            )
            self._record("error")
            return False
        logger.info(
            "TLS files reloaded",
            extra={"context": self.name, "files": self.paths, "not_after": not_after},
        )
        self._record("ok")
        return True

    async def run(self, clock: Clock, interval_s: float) -> None:
        """Check the files every ``interval_s`` seconds until cancelled.

        Checks run on the event loop, not in a thread, because OpenSSL does not allow changing
        a context while another thread creates connections from it. The files are small.
        """
        while True:
            await clock.sleep(interval_s)
            self.check()

    def _record(self, result: str) -> None:
        if self._count is not None:
            self._count(result)

    def _reload(self) -> str | None:
        """Load the files into a scratch context, then into the live one.

        The bytes are read once and loaded from memory files, so both loads see the same
        bytes even while a writer replaces the files. Returns the certificate's notAfter.
        """
        contents = [Path(path).read_bytes() for path, _ in self._files]
        with _memory_files(contents) as copies:
            copy_of = dict(zip(self.paths, copies, strict=True))
            self._load(ssl.SSLContext(self.context.protocol), copy_of)
            # NOTE: the same bytes just loaded into the scratch context, so only the process
            # itself (out of memory) could make this load fail, and nothing would roll back the
            # half-changed context then.
            self._load(self.context, copy_of)
        if self._cert is None:
            return None
        return certificate_not_after(contents[0])

    def _load(self, context: ssl.SSLContext, copies: dict[str, str]) -> None:
        if self._cert is not None and self._key is not None:
            context.load_cert_chain(
                copies[self._cert[0]], copies[self._key[0]], password=reject_passphrase
            )
        if self._ca is not None:
            context.load_verify_locations(cafile=copies[self._ca[0]])


@contextmanager
def _memory_files(contents: list[bytes]) -> Iterator[list[str]]:
    """Yield a path for each of ``contents``, backed by memory and removed on exit.

    Private keys never touch a disk this way. ``os.memfd_create`` exists only on Linux, where
    the services run.
    """
    descriptors: list[int] = []
    try:
        for data in contents:
            descriptor = os.memfd_create("isolator-tls", os.MFD_CLOEXEC)
            descriptors.append(descriptor)
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
        yield [f"/proc/self/fd/{descriptor}" for descriptor in descriptors]
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL
)


def certificate_not_after(pem: bytes) -> str | None:
    """Return the notAfter of the first certificate in ``pem`` as ISO 8601 UTC, or None.

    The standard library has no public parser of certificate files, so this reads the DER
    structure of RFC 5280: Certificate, then tbsCertificate, then its validity field.
    """
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        return None
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        _, start, _ = _der_element(der, 0)  # Certificate
        _, offset, _ = _der_element(der, start)  # tbsCertificate
        tag, _, end = _der_element(der, offset)
        if tag == 0xA0:  # the optional [0] version
            offset = end
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, offset = _der_element(der, offset)
        _, validity, _ = _der_element(der, offset)
        _, _, after_not_before = _der_element(der, validity)
        tag, start, end = _der_element(der, after_not_before)
        text = der[start:end].decode("ascii")
    except (ValueError, IndexError, binascii.Error):
        return None
    if tag == 0x17 and len(text) == 13 and text[:2].isdigit():
        # UTCTime is YYMMDDHHMMSSZ, and RFC 5280 reads YY below 50 as 20YY.
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime is YYYYMMDDHHMMSSZ
        return None
    if len(text) != 15 or not text[:14].isdigit() or not text.endswith("Z"):
        return None
    return f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}Z"


def _der_element(der: bytes, offset: int) -> tuple[int, int, int]:
    """Return the tag, content start and content end of the DER element at ``offset``."""
    tag = der[offset]
    length = der[offset + 1]
    start = offset + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[start : start + size], "big")
        start += size
    end = start + length
    if end > len(der):
        raise ValueError("DER element runs past the end of the certificate")
    return tag, start, end
