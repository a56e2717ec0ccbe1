"""The node agent: probe answers, metrics, and heartbeats with sequence numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from isolator.agent.app import Agent, TokenFile
from isolator.settings import AgentSettings


def settings(url: str = "http://127.0.0.1:1", **overrides: Any) -> AgentSettings:
    return AgentSettings(
        node="r1-n01", region="r1", isolator_url=url, listen_port=9910, **overrides
    )


async def test_probe_answers_with_node_and_region() -> None:
    agent = Agent(settings())
    async with TestClient(TestServer(agent.web_app())) as client:
        response = await client.get("/probe")
        body = await response.json()

    assert response.status == 200
    assert body == {"node": "r1-n01", "region": "r1", "seq": 0}


async def test_metrics_carry_node_and_region() -> None:
    agent = Agent(settings())
    async with TestClient(TestServer(agent.web_app())) as client:
        text = await (await client.get("/metrics")).text()

    assert 'isolator_agent_info{node="r1-n01",region="r1"} 1.0' in text


async def test_heartbeats_carry_increasing_sequence() -> None:
    received: list[dict[str, Any]] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"outcome": "accepted"})

    isolator = web.Application()
    isolator.router.add_post("/v1/heartbeats", accept)
    async with TestServer(isolator) as server, aiohttp.ClientSession() as session:
        agent = Agent(settings(str(server.make_url(""))))
        url = str(server.make_url("/v1/heartbeats"))
        await agent.send_one(session, url)
        await agent.send_one(session, url)

    assert [beat["seq"] for beat in received] == [0, 1]
    assert {beat["node"] for beat in received} == {"r1-n01"}


async def test_unreachable_isolator_counted_not_raised() -> None:
    agent = Agent(settings())
    async with aiohttp.ClientSession() as session:
        await agent.send_one(session, "http://127.0.0.1:1/v1/heartbeats")

    assert agent.metrics.heartbeats.labels("error")._value.get() == 1
    assert agent.seq == 1


async def test_component_and_ingress_checks_reported() -> None:
    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    node = web.Application()
    node.router.add_get("/kubelet", healthy)
    node.router.add_get("/kube-proxy", broken)
    node.router.add_get("/ingress", broken)
    async with TestServer(node) as server, aiohttp.ClientSession() as session:
        agent = Agent(
            AgentSettings(
                node="r1-n01",
                region="r1",
                isolator_url="http://127.0.0.1:1",
                components={
                    "kubelet": str(server.make_url("/kubelet")),
                    "kube-proxy": str(server.make_url("/kube-proxy")),
                },
                ingress_check_url=str(server.make_url("/ingress")),
            )
        )
        await agent.check_once(session)

    assert {name: r.ok for name, r in agent.components.items()} == {
        "kubelet": True,
        "kube-proxy": False,
    }
    assert agent.ingress is not None
    assert agent.ingress.ok is False
    text = generate_latest(agent.metrics.registry).decode()
    assert 'isolator_agent_component_up{component="kube-proxy"} 0.0' in text
    assert "isolator_agent_ingress_check_up 0.0" in text


async def test_rotated_token_used_by_next_heartbeat(tmp_path: Path) -> None:
    tokens: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        tokens.append(request.headers.get("Authorization", ""))
        return web.json_response({"outcome": "accepted"})

    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789\n")
    isolator = web.Application()
    isolator.router.add_post("/v1/heartbeats", accept)
    async with TestServer(isolator) as server, aiohttp.ClientSession() as session:
        agent = Agent(settings(str(server.make_url("")), token_file=str(token_file)))
        url = str(server.make_url("/v1/heartbeats"))
        await agent.send_one(session, url)
        # The kubelet swaps the files behind a projected token's path; a rename does the same.
        replacement = tmp_path / "token.new"
        replacement.write_text("second-token-0123456789\n")
        replacement.replace(token_file)
        await agent.send_one(session, url)

    assert tokens == ["Bearer first-token-0123456789", "Bearer second-token-0123456789"]


def test_unreadable_token_file_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    source = TokenFile(str(token_file))

    missing = [source.current() for _ in range(3)]
    token_file.write_text("back-token-0123456789")
    back = source.current()

    assert missing == [None, None, None]
    assert back == "back-token-0123456789"
    assert [r.message for r in caplog.records].count("API token file unreadable") == 1
