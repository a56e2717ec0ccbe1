"""Certificate reload on loopback: the API on a real uvicorn server and the agent's server get
replaced certificate files without a restart, and broken replacements keep the old certificate.

Certificates come from CAs made once per module, and nothing leaves 127.0.0.1. Reload checks
are called directly, or driven by a ManualClock, so no test waits for an interval.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import ipaddress
import logging
import os
import pty
import select
import socket
import ssl
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from isolator.agent.app import Agent
from isolator.api.app import create_app
from isolator.api.server import api_server_config, tls_reloaders
from isolator.clock import ManualClock
from isolator.lab.controlplane import _CertificateAuthority
from isolator.lab.monitoring import free_port
from isolator.metrics import Metrics
from isolator.settings import AgentSettings, Settings
from isolator.sources.agents import AgentProber
from isolator.tls import CertificateReloader, certificate_not_after, server_context
from tests.unit.harness import FAST, Harness

LOOPBACK = "127.0.0.1"
REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pem:
    """The PEM bytes of one certificate and its key."""

    cert: bytes
    key: bytes


def second_ca_with_server() -> tuple[bytes, Pem]:
    """Make a CA whose subject differs from the lab CA's, and a serving certificate it signed.

    Every lab CA has the same subject, so OpenSSL would match a certificate of one to the
    other in a bundle of both, and the verification would fail on the signature.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "second-ca")])
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
    # CertificateBuilder takes the issuer's name first, then the subject's.
    ca_cert = (
        x509.CertificateBuilder(ca_name, ca_name, ca_key.public_key(), 1, *validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "server-foreign")])
    cert = (
        x509.CertificateBuilder(ca_name, name, key.public_key(), 2, *validity)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encoding = serialization.Encoding.PEM
    return ca_cert.public_bytes(encoding), Pem(cert.public_bytes(encoding), key_pem)


@dataclass(frozen=True)
class Pki:
    """Two serving certificates of one CA, one of a second CA, and both CAs."""

    ca: bytes
    other_ca: bytes
    a: Pem  # common name server-a
    b: Pem  # common name server-b
    foreign: Pem  # signed by other_ca


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = _CertificateAuthority()
    pairs = [
        ca.issue_server("server-a", ["localhost"], [LOOPBACK]),
        ca.issue_server("server-b", ["localhost"], [LOOPBACK]),
    ]
    a, b = (Pem(pair.cert_pem, pair.key_pem) for pair in pairs)
    other_ca, foreign = second_ca_with_server()
    return Pki(ca.cert_pem, other_ca, a, b, foreign)


@dataclass(frozen=True)
class Files:
    """The files a service reads, in a folder of the test."""

    cert: Path
    key: Path
    ca: Path

    def install(self, pem: Pem) -> None:
        self.cert.write_bytes(pem.cert)
        self.key.write_bytes(pem.key)


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> Files:
    files = Files(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt")
    files.install(pki.a)
    files.ca.write_bytes(pki.ca)
    return files


def trusting(ca: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(cadata=ca.decode())
    return context


async def served_name(port: int, context: ssl.SSLContext) -> str:
    """Complete a new handshake with the server and return its certificate's common name."""
    _, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    subject = x509.load_der_x509_certificate(der).subject
    [attribute] = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attribute.value)


def reloads(metrics: Metrics, context: str, result: str) -> float | None:
    labels = {"context": context, "result": result}
    return metrics.registry.get_sample_value("isolator_tls_reloads_total", labels)


@dataclass
class Api:
    """A running API server with the reloaders that ``isolator serve`` builds for it."""

    port: int
    metrics: Metrics
    reloader: CertificateReloader


@asynccontextmanager
async def serving_api(files: Files, interval_s: float = 60.0) -> AsyncIterator[Api]:
    """Serve the API over TLS from ``files`` as ``isolator serve`` does, on a real uvicorn."""
    settings = Settings(
        **FAST,
        listen_host=LOOPBACK,
        listen_port=free_port(),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
        tls_reload_interval_s=interval_s,
    )
    harness = await Harness.start(regions=1, nodes=1)
    metrics = Metrics()
    config = api_server_config(create_app(harness.controller, metrics, harness.clock), settings)
    config.load()
    [reloader] = tls_reloaders(settings, config.ssl, None, metrics)
    server = uvicorn.Server(config)
    # The socket listens before uvicorn runs, so a client's connection waits in the backlog
    # instead of the test polling for the server to start.
    listener = socket.create_server((LOOPBACK, settings.listen_port))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield Api(settings.listen_port, metrics, reloader)
    finally:
        server.should_exit = True
        await task
        listener.close()


# --- the API's serving certificate ---------------------------------------------------------------


async def test_api_serves_replaced_certificate(files: Files, pki: Pki) -> None:
    client = trusting(pki.ca)
    async with serving_api(files) as api:
        before = await served_name(api.port, client)
        files.install(pki.b)
        reloaded = api.reloader.check()
        after = await served_name(api.port, client)

    assert before == "server-a"
    assert reloaded is True
    assert after == "server-b"
    assert reloads(api.metrics, "api", "ok") == 1
    assert reloads(api.metrics, "api", "error") == 0


async def test_established_connection_survives_reload(files: Files, pki: Pki) -> None:
    async with serving_api(files) as api:
        reader, writer = await asyncio.open_connection(LOOPBACK, api.port, ssl=trusting(pki.ca))
        files.install(pki.b)
        reloaded = api.reloader.check()
        # The connection opened before the reload still serves requests.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = await reader.read()
        writer.close()
        await writer.wait_closed()

    assert reloaded is True
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


async def test_api_unchanged_files_not_reloaded(files: Files, pki: Pki) -> None:
    async with serving_api(files) as api:
        reloaded = api.reloader.check()
        name = await served_name(api.port, trusting(pki.ca))

    assert reloaded is None
    assert name == "server-a"
    assert reloads(api.metrics, "api", "ok") == 0
    assert reloads(api.metrics, "api", "error") == 0


async def test_mismatched_key_keeps_old_certificate(
    files: Files, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="isolator.tls")
    client = trusting(pki.ca)
    async with serving_api(files) as api:
        # A writer that replaced the certificate and has not written the key yet.
        files.cert.write_bytes(pki.b.cert)
        first = api.reloader.check()
        name_after_failure = await served_name(api.port, client)
        repeated = api.reloader.check()
        files.key.write_bytes(pki.b.key)
        second = api.reloader.check()
        name_after_key = await served_name(api.port, client)

    assert first is False
    assert name_after_failure == "server-a"
    assert repeated is None  # the same broken files are not tried or logged again
    assert second is True
    assert name_after_key == "server-b"
    assert reloads(api.metrics, "api", "error") == 1
    assert reloads(api.metrics, "api", "ok") == 1
    [warning] = [
        r for r in caplog.records if r.name == "isolator.tls" and r.levelno == logging.WARNING
    ]
    assert warning.context == "api"
    assert warning.files == [str(files.cert), str(files.key)]
    assert warning.settings == ["ISOLATOR_TLS_CERT_FILE", "ISOLATOR_TLS_KEY_FILE"]
    assert "KEY_VALUES_MISMATCH" in warning.error
    assert "PRIVATE KEY" not in warning.error


async def test_half_written_certificate_keeps_old(files: Files, pki: Pki) -> None:
    client = trusting(pki.ca)
    async with serving_api(files) as api:
        files.install(Pem(pki.b.cert[: len(pki.b.cert) // 2], pki.b.key))
        reloaded = api.reloader.check()
        name = await served_name(api.port, client)

    assert reloaded is False
    assert name == "server-a"
    assert reloads(api.metrics, "api", "error") == 1


async def test_deleted_key_keeps_old_certificate(files: Files, pki: Pki) -> None:
    async with serving_api(files) as api:
        files.key.unlink()
        reloaded = api.reloader.check()
        name = await served_name(api.port, trusting(pki.ca))

    assert reloaded is False
    assert name == "server-a"
    assert reloads(api.metrics, "api", "error") == 1


async def test_reload_logs_not_after(
    files: Files, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="isolator.tls")
    async with serving_api(files) as api:
        files.install(pki.b)
        api.reloader.check()

    [record] = [r for r in caplog.records if r.getMessage() == "TLS files reloaded"]
    expected = x509.load_pem_x509_certificate(pki.b.cert).not_valid_after_utc
    assert record.not_after == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert record.context == "api"


async def test_reloader_checks_on_clock_interval(files: Files, pki: Pki) -> None:
    context = server_context((str(files.cert), "CERT"), (str(files.key), "KEY"))
    results: list[str] = []
    reloader = CertificateReloader(
        context,
        "api",
        cert=(str(files.cert), "CERT"),
        key=(str(files.key), "KEY"),
        count=results.append,
    )
    clock = ManualClock()
    started = clock.monotonic()
    files.install(pki.b)

    task = asyncio.create_task(reloader.run(clock, 30.0))
    # ManualClock.sleep advances the clock and yields once, so each yield here lets the loop
    # finish one interval.
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert results == ["ok"]  # later checks found no change
    elapsed = clock.monotonic() - started
    assert elapsed >= 30.0
    assert elapsed % 30.0 == 0


def test_reload_interval_zero_builds_no_reloader(files: Files) -> None:
    settings = Settings(
        **FAST,
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
        probe_ca_file=str(files.ca),
        tls_reload_interval_s=0,
    )
    api_ssl = settings.api_ssl_context()
    probe_ssl = settings.probe_ssl_context()

    reloaders = tls_reloaders(settings, api_ssl, probe_ssl, Metrics())

    assert reloaders == []


def test_reloader_requires_cert_with_key(files: Files) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    with pytest.raises(ValueError, match="cert and key must be given together"):
        CertificateReloader(context, "api", cert=(str(files.cert), "CERT"))


# --- the probes' CA ------------------------------------------------------------------------------


async def test_probe_trusts_replaced_ca(files: Files, pki: Pki, tmp_path: Path) -> None:
    # The agent serves a certificate of the second CA, which the probe CA file lacks at first.
    agent_files = Files(tmp_path / "agent.crt", tmp_path / "agent.key", tmp_path / "unused")
    agent_files.install(pki.foreign)
    agent = Agent(agent_settings(agent_files))
    settings = Settings(**FAST, probe_ca_file=str(files.ca))
    probe_ssl = settings.probe_ssl_context()
    metrics = Metrics()
    [reloader] = tls_reloaders(settings, None, probe_ssl, metrics)
    prober = AgentProber(timeout_s=5.0, ssl_context=probe_ssl)
    runner = await agent.start_server()
    url = f"https://{LOOPBACK}:{agent.settings.listen_port}"
    try:
        before = await prober.probe("r1-n01", url)
        files.ca.write_bytes(pki.ca + pki.other_ca)
        reloaded = reloader.check()
        after = await prober.probe("r1-n01", url)
    finally:
        await prober.close()
        await runner.cleanup()

    assert before is False
    assert reloaded is True
    assert after is True
    assert reloads(metrics, "probe", "ok") == 1


# --- the agent's serving certificate -------------------------------------------------------------


def agent_settings(files: Files, **values: object) -> AgentSettings:
    return AgentSettings(
        node="r1-n01",
        region="r1",
        isolator_url=f"http://{LOOPBACK}:1",
        listen_host=LOOPBACK,
        listen_port=free_port(),
        tls_cert_file=str(files.cert),
        tls_key_file=str(files.key),
        **values,  # type: ignore[arg-type]  # pydantic validates the values
    )


def agent_reloads(agent: Agent, context: str, result: str) -> float | None:
    labels = {"context": context, "result": result}
    return agent.metrics.registry.get_sample_value("isolator_agent_tls_reloads_total", labels)


async def test_agent_serves_replaced_certificate(files: Files, pki: Pki) -> None:
    agent = Agent(agent_settings(files))
    [reloader] = agent.tls_reloaders
    client = trusting(pki.ca)
    runner = await agent.start_server()
    try:
        before = await served_name(agent.settings.listen_port, client)
        files.install(pki.b)
        reloaded = reloader.check()
        after = await served_name(agent.settings.listen_port, client)
    finally:
        await runner.cleanup()

    assert reloader.name == "serving"
    assert before == "server-a"
    assert reloaded is True
    assert after == "server-b"
    assert agent_reloads(agent, "serving", "ok") == 1


async def test_agent_mismatched_key_keeps_old(files: Files, pki: Pki) -> None:
    agent = Agent(agent_settings(files))
    [reloader] = agent.tls_reloaders
    runner = await agent.start_server()
    try:
        files.key.write_bytes(pki.b.key)
        reloaded = reloader.check()
        name = await served_name(agent.settings.listen_port, trusting(pki.ca))
    finally:
        await runner.cleanup()

    assert reloaded is False
    assert name == "server-a"
    assert agent_reloads(agent, "serving", "error") == 1


def test_agent_heartbeat_context_watched(files: Files, pki: Pki, tmp_path: Path) -> None:
    client = Files(tmp_path / "client.crt", tmp_path / "client.key", files.ca)
    client.install(pki.b)
    settings = AgentSettings(
        node="r1-n01",
        region="r1",
        isolator_url="https://isolator.invalid",
        isolator_ca_file=str(files.ca),
        isolator_client_cert_file=str(client.cert),
        isolator_client_key_file=str(client.key),
    )

    [reloader] = Agent(settings).tls_reloaders

    assert reloader.name == "heartbeat"
    assert reloader.paths == [str(client.cert), str(client.key), str(files.ca)]


def test_agent_reload_interval_zero_builds_none(files: Files) -> None:
    agent = Agent(agent_settings(files, tls_reload_interval_s=0))

    assert agent.tls_reloaders == []


# --- notAfter ------------------------------------------------------------------------------------


def test_not_after_of_first_certificate(pki: Pki) -> None:
    expected = x509.load_pem_x509_certificate(pki.a.cert).not_valid_after_utc

    chain = certificate_not_after(pki.a.cert + pki.ca)

    assert chain == expected.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"not a certificate", id="no-pem"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", id="short"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----", id="base64"),
    ],
)
def test_not_after_of_invalid_pem_is_none(pem: bytes) -> None:
    assert certificate_not_after(pem) is None


# --- encrypted keys ------------------------------------------------------------------------------
#
# The reload runs in a child process whose controlling terminal is a pseudo-terminal of the
# test, as under ``kubectl run -it`` or a shell. The child only reads files in the test's
# folder and opens no socket.

# Upper bound on the child's run, in seconds. The reload itself takes well under one.
CHILD_DEADLINE_S = 60.0

PROMPT = "pass phrase"

RELOAD_ENCRYPTED_KEY = """
import ssl
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from isolator.lab.controlplane import _CertificateAuthority
from isolator.tls import CertificateReloader

folder = Path(sys.argv[1])
ca = _CertificateAuthority()
old = ca.issue_server("server-a", ["localhost"], ["127.0.0.1"])
new = ca.issue_server("server-b", ["localhost"], ["127.0.0.1"])
cert, key = folder / "tls.crt", folder / "tls.key"
cert.write_bytes(old.cert_pem)
key.write_bytes(old.key_pem)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
reloader = CertificateReloader(context, "api", cert=(str(cert), "C"), key=(str(key), "K"))
private = serialization.load_pem_private_key(new.key_pem, None)
encrypted = private.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret"),
)
cert.write_bytes(new.cert_pem)
key.write_bytes(encrypted)
print("reloaded:", reloader.check(), flush=True)
"""


def _take_terminal() -> None:
    # Runs in the child after setsid(), so the pseudo-terminal on fd 0 becomes its
    # controlling terminal, which OpenSSL's passphrase prompt opens as /dev/tty.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_terminal(script: Path, folder: Path) -> str:
    """Run ``script`` on a new pseudo-terminal and return what it wrote there.

    The child is killed as soon as it prompts for a passphrase, since it would wait forever.
    """
    main, child_end = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        cwd=REPOSITORY,
        stdin=child_end,
        stdout=child_end,
        stderr=child_end,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(child_end)
    output = b""
    deadline = time.monotonic() + CHILD_DEADLINE_S
    try:
        while PROMPT.encode() not in output and b"reloaded:" not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([main], [], [], remaining)
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO, because the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        child.kill()
        child.wait()
        os.close(main)
    return output.decode(errors="replace")


def test_encrypted_key_reload_fails_without_prompt(tmp_path: Path) -> None:
    script = tmp_path / "reload_encrypted_key.py"
    script.write_text(RELOAD_ENCRYPTED_KEY)

    output = run_on_terminal(script, tmp_path)

    assert PROMPT not in output, output
    assert "reloaded: False" in output, output
