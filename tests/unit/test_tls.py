"""TLS on loopback: the API on a real uvicorn server, heartbeats, probes and the TLS settings.

Certificates come from CAs made once per module, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from pydantic import ValidationError

from isolator import cli
from isolator.agent.app import Agent
from isolator.api.app import create_app
from isolator.api.commands import execute
from isolator.api.server import api_server_config
from isolator.lab.controlplane import _CertificateAuthority
from isolator.lab.monitoring import free_port
from isolator.metrics import Metrics
from isolator.settings import AgentSettings, Settings
from isolator.sources.agents import AgentProber
from tests.unit.harness import FAST, Harness

LOOPBACK = "127.0.0.1"
AGENT_NAME = "isolator-agent"


@dataclass
class Pki:
    """PEM files of a CA and the certificates it signed, and of a second, unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    named_cert: Path  # DNS name AGENT_NAME only, no IP address
    named_key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = _CertificateAuthority(), _CertificateAuthority()
    server = ca.issue_server("localhost", ["localhost"], [LOOPBACK])
    client = ca.issue_client("r1-n01", [])
    named = ca.issue_server(AGENT_NAME, [AGENT_NAME], [])
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_pem,
        "server_key": server.key_pem,
        "client_cert": client.cert_pem,
        "client_key": client.key_pem,
        "named_cert": named.cert_pem,
        "named_key": named.key_pem,
        "other_ca": other_ca.cert_pem,
    }
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
    return Pki(**{name: folder / f"{name}.pem" for name in files})


def service_settings(**tls: Any) -> Settings:
    return Settings(**FAST, listen_host=LOOPBACK, listen_port=free_port(), **tls)


def agent_settings(isolator_url: str, **tls: Any) -> AgentSettings:
    return AgentSettings(
        node="r1-n01",
        region="r1",
        isolator_url=isolator_url,
        listen_host=LOOPBACK,
        listen_port=free_port(),
        heartbeat_timeout_s=5.0,
        **tls,
    )


@asynccontextmanager
async def serving_api(settings: Settings) -> AsyncIterator[Harness]:
    """Serve the API of a controller on fakes with a real uvicorn server and the settings' TLS."""
    harness = await Harness.start(regions=2, nodes=3)
    app = create_app(harness.controller, Metrics(), harness.clock)
    server = uvicorn.Server(api_server_config(app, settings))
    # The socket listens before uvicorn runs, so a client's connection waits in the backlog
    # instead of the test polling for the server to start.
    listener = socket.create_server((settings.listen_host, settings.listen_port))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield harness
    finally:
        server.should_exit = True
        await task
        listener.close()


async def send_heartbeat(agent: Agent) -> None:
    # Above the sequence numbers that the harness's own heartbeats used.
    agent.seq = 10_000
    url = f"{agent.settings.isolator_url}/v1/heartbeats"
    async with agent.isolator_session() as session:
        await agent.send_one(session, url)


def heartbeats(agent: Agent, result: str) -> float | None:
    name = "isolator_agent_heartbeats_total"
    return agent.metrics.registry.get_sample_value(name, {"result": result})


# --- the API over TLS and heartbeats -------------------------------------------------------------


async def test_heartbeat_over_tls_verified_against_ca(pki: Pki) -> None:
    settings = service_settings(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key)
    )
    url = f"https://{LOOPBACK}:{settings.listen_port}"
    agent = Agent(agent_settings(url, isolator_ca_file=str(pki.ca)))

    async with serving_api(settings) as harness:
        await send_heartbeat(agent)

    assert heartbeats(agent, "ok") == 1
    assert heartbeats(agent, "error") == 0
    assert harness.controller.store.nodes["r1-n01"].heartbeat_seq == 10_000


async def test_heartbeat_with_wrong_ca_fails_clearly(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    settings = service_settings(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key)
    )
    url = f"https://{LOOPBACK}:{settings.listen_port}"
    agent = Agent(agent_settings(url, isolator_ca_file=str(pki.other_ca)))
    caplog.set_level(logging.WARNING, logger="isolator.agent.app")

    async with serving_api(settings) as harness:
        await send_heartbeat(agent)

    assert heartbeats(agent, "ok") == 0
    assert heartbeats(agent, "error") == 1
    assert harness.controller.store.nodes["r1-n01"].heartbeat_seq != 10_000
    [record] = [r for r in caplog.records if r.name == "isolator.agent.app"]
    assert "certificate verify failed" in record.error
    assert "ISOLATOR_AGENT_ISOLATOR_CA_FILE" in record.hint


async def test_plain_http_agent_rejected_by_tls_api(pki: Pki) -> None:
    settings = service_settings(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key)
    )
    agent = Agent(agent_settings(f"http://{LOOPBACK}:{settings.listen_port}"))

    async with serving_api(settings) as harness:
        await send_heartbeat(agent)

    assert heartbeats(agent, "ok") == 0
    assert harness.controller.store.nodes["r1-n01"].heartbeat_seq != 10_000


async def test_mutual_tls_requires_client_certificate(pki: Pki) -> None:
    settings = service_settings(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )
    url = f"https://{LOOPBACK}:{settings.listen_port}"
    anonymous = Agent(agent_settings(url, isolator_ca_file=str(pki.ca)))
    identified = Agent(
        agent_settings(
            url,
            isolator_ca_file=str(pki.ca),
            isolator_client_cert_file=str(pki.client_cert),
            isolator_client_key_file=str(pki.client_key),
        )
    )

    async with serving_api(settings):
        await send_heartbeat(anonymous)
        await send_heartbeat(identified)

    assert heartbeats(anonymous, "ok") == 0
    assert heartbeats(anonymous, "error") == 1
    assert heartbeats(identified, "ok") == 1


def test_api_config_plain_http_by_default() -> None:
    settings = service_settings()

    config = api_server_config(FastAPI(), settings)
    config.load()

    assert settings.api_ssl_context() is None
    assert config.ssl is None


# --- the on-call commands over TLS ---------------------------------------------------------------


async def run_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await execute(cli.build_parser().parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mutual_tls_settings(pki: Pki) -> Settings:
    return service_settings(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )


async def test_cli_client_certificate_reaches_mutual_tls(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = mutual_tls_settings(pki)
    url = f"https://{LOOPBACK}:{settings.listen_port}"

    async with serving_api(settings):
        code, out, err = await run_command(
            capsys,
            "status",
            "--json",
            "--url",
            url,
            "--ca-file",
            str(pki.ca),
            "--cert-file",
            str(pki.client_cert),
            "--key-file",
            str(pki.client_key),
        )

    assert code == 0, err
    assert "regions" in json.loads(out)


async def test_cli_tls_files_from_environment(
    pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mutual_tls_settings(pki)
    monkeypatch.setenv("ISOLATOR_CA_FILE", str(pki.ca))
    monkeypatch.setenv("ISOLATOR_CLIENT_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("ISOLATOR_CLIENT_KEY_FILE", str(pki.client_key))

    async with serving_api(settings):
        code, _, err = await run_command(
            capsys, "status", "--url", f"https://{LOOPBACK}:{settings.listen_port}"
        )

    assert code == 0, err


async def test_cli_without_client_certificate_fails_clearly(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = mutual_tls_settings(pki)
    url = f"https://{LOOPBACK}:{settings.listen_port}"

    async with serving_api(settings):
        code, out, err = await run_command(capsys, "status", "--url", url, "--ca-file", str(pki.ca))

    assert code == 2
    assert out == ""
    assert err.startswith(f"isolator status: cannot connect to {url}")
    assert "requires mutual TLS" in err
    assert "--cert-file and --key-file" in err


async def test_cli_wrong_ca_names_ca_option(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    settings = service_settings(
        tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key)
    )
    url = f"https://{LOOPBACK}:{settings.listen_port}"

    async with serving_api(settings):
        code, _, err = await run_command(
            capsys, "status", "--url", url, "--ca-file", str(pki.other_ca)
        )

    assert code == 2
    assert "certificate verify failed" in err
    assert "set --ca-file or ISOLATOR_CA_FILE" in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            ["--cert-file", "{client_cert}"],
            "--cert-file is set without --key-file (ISOLATOR_CLIENT_KEY_FILE): set both",
            id="cert-without-key",
        ),
        pytest.param(
            ["--key-file", "{client_key}"],
            "--key-file is set without --cert-file (ISOLATOR_CLIENT_CERT_FILE): set both",
            id="key-without-cert",
        ),
        pytest.param(
            ["--cert-file", "{missing}", "--key-file", "{client_key}"],
            "--cert-file: file {missing} not found",
            id="missing-cert",
        ),
        pytest.param(
            ["--ca-file", "{missing}"],
            "--ca-file: file {missing} not found",
            id="missing-ca",
        ),
        pytest.param(
            ["--cert-file", "{client_cert}", "--key-file", "{server_key}"],
            "--cert-file and --key-file: cannot load certificate {client_cert}",
            id="mismatched-key",
        ),
        pytest.param(
            ["--ca-file", "{client_key}"],
            "--ca-file: cannot load CA bundle {client_key}",
            id="ca-not-pem",
        ),
    ],
)
async def test_cli_invalid_tls_files_are_usage_errors(
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    paths = {
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
        "server_key": pki.server_key,
        "missing": tmp_path / "absent.pem",
    }
    argv = [option.format(**paths) for option in options]

    # Port 9 on loopback: the command must stop before it connects anywhere.
    code, _, err = await run_command(capsys, "status", "--url", f"https://{LOOPBACK}:9", *argv)

    assert code == 2
    assert message.format(**paths) in err
    assert "PRIVATE KEY" not in err


async def test_cli_env_missing_cert_names_variable(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "absent.pem"
    monkeypatch.setenv("ISOLATOR_CLIENT_CERT_FILE", str(missing))
    monkeypatch.setenv("ISOLATOR_CLIENT_KEY_FILE", str(pki.client_key))

    code, _, err = await run_command(capsys, "status", "--url", f"https://{LOOPBACK}:9")

    assert code == 2
    assert f"ISOLATOR_CLIENT_CERT_FILE: file {missing} not found" in err


async def test_cli_client_certificate_needs_https(
    pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_command(
        capsys,
        "status",
        "--url",
        f"http://{LOOPBACK}:9",
        "--cert-file",
        str(pki.client_cert),
        "--key-file",
        str(pki.client_key),
    )

    assert code == 2
    assert f"--cert-file needs an https API URL, but the URL is http://{LOOPBACK}:9" in err


# --- probes of an agent served over TLS ----------------------------------------------------------


@asynccontextmanager
async def serving_agent(cert: Path, key: Path) -> AsyncIterator[str]:
    """Serve a real agent's endpoints over TLS; yield the address that probes use."""
    settings = agent_settings(
        f"http://{LOOPBACK}:1", tls_cert_file=str(cert), tls_key_file=str(key)
    )
    runner = await Agent(settings).start_server()
    try:
        yield f"https://{LOOPBACK}:{settings.listen_port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def prober_for(ca: Path, server_name: str | None = None) -> AsyncIterator[AgentProber]:
    """Build the prober as ``isolator serve`` does, from the probe settings."""
    settings = service_settings(probe_ca_file=str(ca), probe_tls_server_name=server_name)
    prober = AgentProber(
        timeout_s=5.0,
        ssl_context=settings.probe_ssl_context(),
        server_name=settings.probe_tls_server_name,
    )
    try:
        yield prober
    finally:
        await prober.close()


async def test_probe_over_tls_verified_against_ca(pki: Pki) -> None:
    async with (
        prober_for(pki.ca) as prober,
        serving_agent(pki.server_cert, pki.server_key) as url,
    ):
        answered = await prober.probe("r1-n01", url)

    assert answered is True


async def test_probe_checks_configured_server_name(pki: Pki) -> None:
    async with (
        prober_for(pki.ca, server_name=AGENT_NAME) as named,
        prober_for(pki.ca) as by_ip,
        serving_agent(pki.named_cert, pki.named_key) as url,
    ):
        named_answered = await named.probe("r1-n01", url)
        by_ip_answered = await by_ip.probe("r1-n01", url)

    assert named_answered is True
    assert by_ip_answered is False  # the certificate has no IP SAN for 127.0.0.1


async def test_probe_with_wrong_ca_fails_and_warns_once(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="isolator.sources.agents")
    async with (
        prober_for(pki.other_ca) as prober,
        serving_agent(pki.server_cert, pki.server_key) as url,
    ):
        first = await prober.probe("r1-n01", url)
        second = await prober.probe("r1-n01", url)

    assert first is False
    assert second is False
    [record] = [r for r in caplog.records if r.name == "isolator.sources.agents"]
    assert record.node == "r1-n01"
    assert "certificate verify failed" in record.error
    assert "ISOLATOR_PROBE_CA_FILE" in record.getMessage()


# --- settings ------------------------------------------------------------------------------------


def service_error(**values: Any) -> str:
    with pytest.raises(ValidationError) as err:
        Settings(**FAST, **values)
    return str(err.value)


def agent_error(isolator_url: str = "https://isolator.invalid", **values: Any) -> str:
    with pytest.raises(ValidationError) as err:
        AgentSettings(node="r1-n01", region="r1", isolator_url=isolator_url, **values)
    return str(err.value)


def test_service_settings_plain_http_by_default() -> None:
    settings = Settings(**FAST)

    assert settings.api_ssl_context() is None
    assert settings.probe_ssl_context() is None


def test_agent_settings_plain_http_by_default() -> None:
    settings = AgentSettings(node="r1-n01", region="r1", isolator_url="http://isolator:8080")

    assert settings.isolator_ssl_context() is None
    assert settings.serving_ssl_context() is None


def test_agent_https_url_uses_system_trust_without_ca() -> None:
    settings = AgentSettings(node="r1-n01", region="r1", isolator_url="https://isolator.invalid")

    assert settings.isolator_ssl_context() is not None


def test_service_cert_without_key_rejected(pki: Pki) -> None:
    message = service_error(tls_cert_file=str(pki.server_cert))

    assert "ISOLATOR_TLS_CERT_FILE is set without ISOLATOR_TLS_KEY_FILE" in message


def test_service_key_without_cert_rejected(pki: Pki) -> None:
    message = service_error(tls_key_file=str(pki.server_key))

    assert "ISOLATOR_TLS_KEY_FILE is set without ISOLATOR_TLS_CERT_FILE" in message


def test_service_missing_cert_file_rejected(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"

    message = service_error(tls_cert_file=str(missing), tls_key_file=str(pki.server_key))

    assert f"ISOLATOR_TLS_CERT_FILE: file {missing} not found" in message


def test_service_mismatched_key_rejected(pki: Pki) -> None:
    message = service_error(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.client_key))

    assert "ISOLATOR_TLS_CERT_FILE and ISOLATOR_TLS_KEY_FILE: cannot load certificate" in message


def test_service_encrypted_key_rejected(pki: Pki, tmp_path: Path) -> None:
    private = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )

    message = service_error(tls_cert_file=str(pki.server_cert), tls_key_file=str(encrypted))

    assert "ISOLATOR_TLS_CERT_FILE and ISOLATOR_TLS_KEY_FILE: cannot load certificate" in message
    assert "the key is encrypted" in message


def test_service_client_ca_without_cert_rejected(pki: Pki) -> None:
    message = service_error(tls_client_ca_file=str(pki.ca))

    assert "ISOLATOR_TLS_CLIENT_CA_FILE is set without ISOLATOR_TLS_CERT_FILE" in message


def test_probe_server_name_without_ca_rejected() -> None:
    message = service_error(probe_tls_server_name=AGENT_NAME)

    assert "ISOLATOR_PROBE_TLS_SERVER_NAME is set without ISOLATOR_PROBE_CA_FILE" in message


def test_probe_ca_not_pem_rejected_without_key_material(pki: Pki) -> None:
    # A key file given as the CA bundle: the message names the file, never its contents.
    message = service_error(probe_ca_file=str(pki.server_key))

    assert "ISOLATOR_PROBE_CA_FILE: cannot load CA bundle" in message
    assert "PRIVATE KEY" not in message
    assert pki.server_key.read_text().splitlines()[1] not in message


def test_agent_ca_with_http_url_rejected(pki: Pki) -> None:
    message = agent_error("http://isolator:8080", isolator_ca_file=str(pki.ca))

    assert "ISOLATOR_AGENT_ISOLATOR_CA_FILE needs an https ISOLATOR_AGENT_ISOLATOR_URL" in message


def test_agent_client_cert_with_http_url_rejected(pki: Pki) -> None:
    message = agent_error(
        "http://isolator:8080",
        isolator_client_cert_file=str(pki.client_cert),
        isolator_client_key_file=str(pki.client_key),
    )

    assert "ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE needs an https" in message


def test_agent_client_cert_without_key_rejected(pki: Pki) -> None:
    message = agent_error(isolator_client_cert_file=str(pki.client_cert))

    assert (
        "ISOLATOR_AGENT_ISOLATOR_CLIENT_CERT_FILE is set without "
        "ISOLATOR_AGENT_ISOLATOR_CLIENT_KEY_FILE" in message
    )


def test_agent_serving_key_without_cert_rejected(pki: Pki) -> None:
    message = agent_error(tls_key_file=str(pki.server_key))

    assert "ISOLATOR_AGENT_TLS_KEY_FILE is set without ISOLATOR_AGENT_TLS_CERT_FILE" in message


def test_agent_missing_ca_file_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"

    message = agent_error(isolator_ca_file=str(missing))

    assert f"ISOLATOR_AGENT_ISOLATOR_CA_FILE: file {missing} not found" in message


def test_agent_mismatched_serving_key_rejected(pki: Pki) -> None:
    message = agent_error(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.named_key))

    assert "ISOLATOR_AGENT_TLS_CERT_FILE and ISOLATOR_AGENT_TLS_KEY_FILE" in message
