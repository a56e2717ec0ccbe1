"""Bearer tokens and roles on every endpoint: the token file, 401 and 403, and secrecy."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from isolator.agent.app import Agent
from isolator.api.app import create_app
from isolator.api.auth import TokenFileError, parse_tokens
from isolator.metrics import Metrics
from isolator.settings import AgentSettings, Settings
from tests.unit.harness import FAST, Harness

OPERATOR = "operator-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdefgh"
ALERTMANAGER = "alertmanager-token-0123456789ab"
AGENT = "agent-r1-n01-token-0123456789ab"
UNKNOWN = "unknown-token-0123456789abcdefg"


def sha256(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def write(path: Path, text: str) -> None:
    """Write a small local file; synchronous, since the tests wait for nothing else."""
    path.write_text(text)


def token_file(path: Path) -> Path:
    path.write_text(
        f"""
"{sha256(OPERATOR)}": {{name: alice, role: operator}}
"{sha256(VIEWER)}": {{name: grafana, role: viewer}}
"{ALERTMANAGER}": {{name: alertmanager, role: alertmanager}}
"{sha256(AGENT)}": {{name: r1-n01, role: agent}}
"""
    )
    return path


@pytest.fixture
async def harness(tmp_path: Path) -> Harness:
    path = token_file(tmp_path / "tokens.yaml")
    return await Harness.start(regions=2, nodes=3, auth_disabled=False, auth_token_file=str(path))


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://isolator") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def heartbeat(node: str = "r1-n01", region: str = "r1") -> dict[str, Any]:
    return {"node": node, "region": region, "seq": 1, "sent_at": 1_780_000_000.0}


WEBHOOK = {
    "version": "4",
    "groupKey": "{}",
    "status": "firing",
    "receiver": "isolator",
    "alerts": [],
}
ISOLATE = {"reason": "maintenance"}

# (method, path, body, role that may call it)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/status", None, "reader"),
    ("GET", "/v1/nodes", None, "reader"),
    ("GET", "/v1/nodes/r1-n01", None, "reader"),
    ("GET", "/v1/regions", None, "reader"),
    ("GET", "/v1/isolations", None, "reader"),
    ("GET", "/v1/audit", None, "reader"),
    ("GET", "/metrics", None, "reader"),
    ("POST", "/v1/heartbeats", heartbeat(), "agent"),
    ("POST", "/v1/alerts/webhook", WEBHOOK, "alertmanager"),
    ("POST", "/v1/isolations/nodes/r1-n02", ISOLATE, "operator"),
    ("POST", "/v1/isolations/nodes/r1-n02/restore", ISOLATE, "operator"),
    ("POST", "/v1/isolations/pods/edge/web-1", ISOLATE, "operator"),
    ("POST", "/v1/isolations/pods/edge/web-1/restore", ISOLATE, "operator"),
    ("POST", "/v1/isolations/regions/r2", ISOLATE, "operator"),
    ("POST", "/v1/isolations/regions/r2/restore", ISOLATE, "operator"),
]
ALLOWED = {
    "reader": {OPERATOR, VIEWER},
    "agent": {AGENT},
    "alertmanager": {ALERTMANAGER},
    "operator": {OPERATOR},
}


async def call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "role"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS]
)
async def test_endpoint_needs_token(
    client: httpx.AsyncClient, method: str, path: str, body: Any, role: str
) -> None:
    missing = await call(client, method, path, body, {})
    wrong = await call(client, method, path, body, bearer(UNKNOWN))
    basic = await call(client, method, path, body, {"Authorization": f"Basic {OPERATOR}"})

    for response in (missing, wrong, basic):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path", "body", "role"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS]
)
async def test_endpoint_admits_its_roles_only(
    client: httpx.AsyncClient, method: str, path: str, body: Any, role: str
) -> None:
    for token in (OPERATOR, VIEWER, ALERTMANAGER, AGENT):
        response = await call(client, method, path, body, bearer(token))
        if token in ALLOWED[role]:
            assert response.status_code not in (401, 403), (token, response.text)
        else:
            assert response.status_code == 403, (token, response.text)


async def test_agent_beats_for_own_node_only(client: httpx.AsyncClient) -> None:
    own = await client.post("/v1/heartbeats", json=heartbeat(), headers=bearer(AGENT))
    other = await client.post("/v1/heartbeats", json=heartbeat("r1-n02"), headers=bearer(AGENT))

    assert own.status_code == 200, own.text
    assert other.status_code == 403, other.text
    assert other.json()["field"] == "node"


async def test_healthz_open_and_docs_gone(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code in (200, 503)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert (await client.get(path)).status_code == 404, path


async def test_token_never_logged_or_echoed(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    responses = [
        await client.get("/v1/status", headers=bearer(UNKNOWN)),
        await client.post("/v1/alerts/webhook", json=WEBHOOK, headers=bearer(VIEWER)),
        await client.post("/v1/heartbeats", json=heartbeat("r1-n02"), headers=bearer(AGENT)),
    ]

    for token in (UNKNOWN, VIEWER, AGENT):
        assert token not in caplog.text
        assert all(token not in response.text for response in responses)


async def test_token_file_change_takes_effect(client: httpx.AsyncClient, harness: Harness) -> None:
    path = Path(str(harness.controller.settings.auth_token_file))
    rotated = "rotated-operator-token-0123456789"
    replacement = path.with_suffix(".new")
    write(replacement, f'"{sha256(rotated)}": {{name: alice, role: operator}}\n')
    os.replace(replacement, path)

    old = await client.get("/v1/status", headers=bearer(OPERATOR))
    new = await client.get("/v1/status", headers=bearer(rotated))

    assert old.status_code == 401, old.text
    assert new.status_code == 200, new.text


async def test_broken_token_file_keeps_tokens(
    client: httpx.AsyncClient, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    path = Path(str(harness.controller.settings.auth_token_file))
    write(path, f"{OPERATOR}: [unclosed\n")

    response = await client.get("/v1/status", headers=bearer(OPERATOR))

    assert response.status_code == 200, response.text
    assert "Token file invalid" in caplog.text
    assert OPERATOR not in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "non-empty mapping"),
        ("{}\n", "non-empty mapping"),
        ('"sha256:abc": {name: a, role: viewer}\n', "64 hexadecimal digits"),
        ('"short": {name: a, role: viewer}\n', "shorter than 16"),
        (f'"{OPERATOR}": {{name: a, role: admin}}\n', "role 'admin' is not one of"),
        (f'"{OPERATOR}": {{role: viewer}}\n', "name is missing"),
        (f'"{OPERATOR}": viewer\n', "expected a mapping"),
        (
            f'"{OPERATOR}": {{name: a, role: viewer}}\n'
            f'"{sha256(OPERATOR)}": {{name: b, role: viewer}}\n',
            "appears twice",
        ),
        (f"{OPERATOR}: [unclosed\n", "not valid YAML or JSON"),
    ],
    ids=[
        "list",
        "empty",
        "short-digest",
        "short-token",
        "unknown-role",
        "no-name",
        "not-mapping",
        "duplicate",
        "not-yaml",
    ],
)
def test_invalid_token_file_rejected(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem) as info:
        parse_tokens(text)

    assert OPERATOR not in str(info.value)


def test_token_file_accepts_json() -> None:
    tokens = parse_tokens(f'{{"{sha256(VIEWER)}": {{"name": "grafana", "role": "viewer"}}}}')

    assert [caller.name for caller in tokens.values()] == ["grafana"]


def test_service_needs_token_file_or_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {k: v for k, v in FAST.items() if k != "auth_disabled"}

    with pytest.raises(ValidationError, match="ISOLATOR_AUTH_TOKEN_FILE"):
        Settings(**settings)

    monkeypatch.setenv("ISOLATOR_AUTH_DISABLED", "true")
    assert Settings(**settings).auth_disabled is True


async def test_missing_token_file_fails_start(tmp_path: Path) -> None:
    harness = await Harness.start(
        regions=1, nodes=1, auth_disabled=False, auth_token_file=str(tmp_path / "absent.yaml")
    )

    with pytest.raises(TokenFileError, match="cannot load token file"):
        create_app(harness.controller, Metrics(), harness.clock)


async def test_agent_sends_token_and_picks_up_rotation(tmp_path: Path) -> None:
    token_path = tmp_path / "agent-token"
    write(token_path, "first-token-0123456789\n")
    seen: list[str | None] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if seen[-1] != "Bearer second-token-0123456789":
            return web.json_response({"error": "invalid bearer token"}, status=401)
        return web.json_response({"outcome": "accepted"})

    isolator = web.Application()
    isolator.router.add_post("/v1/heartbeats", accept)
    async with TestServer(isolator) as server, aiohttp.ClientSession() as session:
        settings = AgentSettings(
            node="r1-n01",
            region="r1",
            isolator_url=str(server.make_url("")),
            token_file=str(token_path),
        )
        agent = Agent(settings)
        url = str(server.make_url("/v1/heartbeats"))
        await agent.send_one(session, url)
        write(token_path, "second-token-0123456789\n")  # rotated
        await agent.send_one(session, url)
        await agent.send_one(session, url)

    # The changed file is read before the next heartbeat, so no heartbeat is rejected for it.
    assert seen == [
        "Bearer first-token-0123456789",
        "Bearer second-token-0123456789",
        "Bearer second-token-0123456789",
    ]
