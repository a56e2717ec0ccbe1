"""The on-call commands against the real app, served over loopback by an aiohttp test server
that hands every request to the ASGI app: status, explain, isolate and restore, the API's
errors, an unreachable URL and bad token files."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import FastAPI

from isolator import cli
from isolator.api.app import create_app
from isolator.api.client import ApiClient, UsageError
from isolator.api.commands import execute
from isolator.metrics import Metrics
from tests.unit.harness import Harness

OPERATOR_TOKEN = "operator-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"


def bridge(app: FastAPI) -> web.Application:
    """Build an aiohttp app that forwards every request to ``app`` in-process."""
    asgi = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://isolator")

    async def forward(request: web.Request) -> web.Response:
        response = await asgi.request(
            request.method,
            request.raw_path,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            content=await request.read(),
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return web.Response(status=response.status_code, body=response.content, headers=headers)

    async def close(_: web.Application) -> None:
        await asgi.aclose()

    server = web.Application()
    server.router.add_route("*", "/{path:.*}", forward)
    server.on_cleanup.append(close)
    return server


async def serve(harness: Harness) -> TestServer:
    server = TestServer(bridge(create_app(harness.controller, Metrics(), harness.clock)))
    await server.start_server()
    return server


@pytest.fixture
async def harness() -> Harness:
    return await Harness.start(regions=3, nodes=4)


@pytest.fixture
async def url(harness: Harness) -> AsyncIterator[str]:
    server = await serve(harness)
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """Return the URL of a loopback port that is bound but not listening, so that every
    connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(argv)
    code = await execute(args)
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_shows_verdict_regions_isolations(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    await run(capsys, "isolate", "node", "r2-n03", "--reason", "disk swap", "--url", url)

    code, out, err = await run(capsys, "status", "--url", url)

    assert code == 0, err
    assert "verdict  normal: regions independent" in out
    assert "REGION  VERDICT" in out
    for region in ("r1", "r2", "r3"):
        assert f"\n{region}  " in out
    assert "r2-n03" in out
    assert "disk swap" in out
    assert "anonymous" in out


async def test_status_json_has_api_responses(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "status", "--json", "--url", url)

    assert code == 0, err
    body = json.loads(out)
    assert body["status"]["verdict"] == "normal"
    assert [r["region"] for r in body["regions"]] == ["r1", "r2", "r3"]
    assert body["isolations"] == []


async def test_explain_node_shows_evidence_rule_checks(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(capsys, "explain", "r1-n02", "--url", url)

    assert code == 0, err
    assert "node r1-n02 in region r1" in out
    assert "verdict: healthy (heartbeats on time)" in out
    assert "rule: heartbeats arrive on time" in out
    assert "last heartbeat" in out
    assert "in-site up" in out
    assert "global normal" in out
    assert "region r1 normal" in out
    assert "no cut held by a safety check" in out
    assert "no actions recorded" in out


async def test_explain_failed_node_names_hold(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two failed nodes of four exceed the region's budget of one, so both cuts are held.
    harness.silent |= {"r1-n01", "r1-n02"}
    harness.site_down |= {"r1-n01", "r1-n02"}
    await harness.run_for(6.0)

    code, out, err = await run(capsys, "explain", "r1-n01", "--url", url)

    assert code == 0, err
    assert "verdict: failed (silent, and the edge Prometheus scrapes it down)" in out
    assert "rule: confirmed down from inside the site" in out
    assert "held: region budget exceeded" in out
    assert out.count("held:") == 1, "only this node's hold, not its neighbour's"
    assert harness.cluster.cuts == []


async def test_explain_region_lists_its_nodes(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "explain", "r3", "--url", url)

    assert code == 0, err
    assert "region r3" in out
    assert "verdict: normal (all nodes accounted for)" in out
    assert "federation up" in out
    for node in ("r3-n01", "r3-n02", "r3-n03", "r3-n04"):
        assert node in out
    assert "r1-n01" not in out


async def test_explain_unknown_name_exits_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, "explain", "r9-n99", "--url", url)

    assert code == 1
    assert out == ""
    assert "no node or region named 'r9-n99'" in err


async def test_isolate_node_sends_reason_ttl_scope(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    wall = harness.clock.wall()

    code, out, err = await run(
        capsys,
        "isolate", "node", "r1-n03", "--reason", "kernel panic", "--ttl", "600",
        "--scope", "component", "--url", url,
    )  # fmt: skip

    assert code == 0, err
    assert "isolate node r1-n03: verified (HTTP 200)" in out
    [(method, target, options)] = harness.cluster.calls
    assert (method, target) == ("cut_node", "r1-n03")
    assert options["expires_at"] == pytest.approx(wall + 600)
    isolation = harness.controller.isolations["r1-n03"]
    assert isolation.scope == "component"
    assert isolation.reason == "kernel panic"


async def test_isolate_last_replica_needs_force(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.cluster.services["shop/checkout"] = ["r1-n01"]
    argv = ("isolate", "node", "r1-n01", "--reason", "disk", "--url", url)

    refused, _, refused_err = await run(capsys, *argv)
    forced, forced_out, forced_err = await run(capsys, *argv, "--force")

    assert refused == 1
    assert "HTTP 409" in refused_err
    assert "Service shop/checkout would keep 0 ready endpoints" in refused_err
    assert forced == 0, forced_err
    assert "verified" in forced_out
    assert harness.cluster.cuts == ["r1-n01"]


def test_force_only_for_node_and_pod(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["isolate", "region", "r1", "--reason", "r", "--force"])

    assert exit_info.value.code == 2
    assert "unrecognized arguments: --force" in capsys.readouterr().err


async def test_isolate_unverified_still_exits_0(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.cluster.unverified.add("r1-n03")

    code, out, err = await run(capsys, "isolate", "node", "r1-n03", "--reason", "r", "--url", url)

    assert code == 0, err
    assert "unverified (HTTP 202)" in out
    assert "the control loop retries" in out


async def test_isolate_and_restore_pod_and_region(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [
        ("isolate", "pod", "shop/web-0"),
        ("restore", "pod", "shop/web-0"),
        ("isolate", "region", "r2"),
        ("restore", "region", "r2"),
    ]
    for action, kind, name in commands:
        code, out, err = await run(capsys, action, kind, name, "--reason", "drill", "--url", url)
        assert code == 0, err
        assert f"{action} {kind} {name}: verified" in out

    called = [(method, target) for method, target, _ in harness.cluster.calls]
    assert called == [
        ("cut_pod", "shop/web-0"),
        ("restore_pod", "shop/web-0"),
        ("split_region", "r2"),
        ("restore_region", "r2"),
    ]


async def test_restore_node_after_isolate(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    await run(capsys, "isolate", "node", "r1-n02", "--reason", "r", "--url", url)

    code, out, err = await run(
        capsys, "restore", "node", "r1-n02", "--reason", "fixed", "--json", "--url", url
    )

    assert code == 0, err
    assert json.loads(out)["result"] == "verified"
    assert harness.cluster.restores == ["r1-n02"]
    assert "r1-n02" not in harness.controller.isolations


async def test_dry_run_reaches_cluster_as_plan(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(
        capsys, "isolate", "region", "r3", "--reason", "plan", "--dry-run", "--url", url
    )

    assert code == 0, err
    assert "dry_run" in out
    [(method, target, options)] = harness.cluster.calls
    assert (method, target) == ("split_region", "r3")
    assert options["dry_run"] is True


async def test_invalid_ttl_shows_field_exits_1(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(
        capsys, "isolate", "node", "r1-n02", "--reason", "r", "--ttl", "-5", "--url", url
    )

    assert code == 1
    assert out == ""
    assert "HTTP 422" in err
    assert "ttl_s: Input should be greater than 0" in err
    assert harness.cluster.calls == []


async def test_restore_without_isolation_exits_1(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, "restore", "node", "r1-n01", "--reason", "r", "--url", url)

    assert code == 1
    assert "HTTP 404" in err
    assert "r1-n01" in err


async def test_invalid_node_name_shows_field(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await run(capsys, "isolate", "node", "R1_N01", "--reason", "r", "--url", url)

    assert code == 1
    assert "HTTP 422" in err
    assert "node:" in err


async def test_pod_without_namespace_exits_2(
    url: str, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, "isolate", "pod", "web-0", "--reason", "r", "--url", url)

    assert code == 2
    assert "invalid Pod 'web-0': expected NAMESPACE/NAME" in err
    assert harness.cluster.calls == []


async def test_connection_refused_names_url(
    refused_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(capsys, "status", "--url", refused_url)

    assert code == 2
    assert out == ""
    assert f"cannot connect to {refused_url}" in err


def test_main_exits_2_when_refused(
    refused_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ISOLATOR_URL", refused_url)

    code = cli.main(["explain", "r1"])

    assert code == 2
    assert refused_url in capsys.readouterr().err


def test_missing_reason_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["isolate", "node", "r1-n01"])

    assert exit_info.value.code == 2
    assert "--reason" in capsys.readouterr().err


def test_invalid_url_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["status", "--url", "127.0.0.1:8080"])

    assert code == 2
    assert "invalid API URL '127.0.0.1:8080'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["explain", "r1"], id="explain"),
        pytest.param(["isolate", "node", "r1-n01", "--reason", "r"], id="isolate"),
        pytest.param(["restore", "region", "r1", "--reason", "r"], id="restore"),
    ],
)
def test_token_option_is_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Without allow_abbrev=False argparse would take --token for --token-file and print the
    # token in the error about a missing file.
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--token", OPERATOR_TOKEN])

    assert exit_info.value.code == 2
    assert "unrecognized arguments: --token" in capsys.readouterr().err


@pytest.fixture
async def authenticated(tmp_path: Path) -> AsyncIterator[tuple[str, Harness]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"{OPERATOR_TOKEN}: {{name: alice, role: operator}}\n"
        f"{VIEWER_TOKEN}: {{name: grafana, role: viewer}}\n"
    )
    harness = await Harness.start(
        regions=2, nodes=3, auth_disabled=False, auth_token_file=str(tokens)
    )
    server = await serve(harness)
    yield str(server.make_url("")).rstrip("/"), harness
    await server.close()


def write_token(path: Path, token: str) -> str:
    path.write_text(token + "\n")
    return str(path)


async def test_token_file_authenticates_caller(
    authenticated: tuple[str, Harness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, harness = authenticated
    token_file = write_token(tmp_path / "token", OPERATOR_TOKEN)

    code, out, err = await run(
        capsys, "isolate", "node", "r1-n01", "--reason", "r", "--url", url,
        "--token-file", token_file,
    )  # fmt: skip

    assert code == 0, err
    assert harness.controller.isolations["r1-n01"].who == "alice"
    assert OPERATOR_TOKEN not in out + err


async def test_token_file_from_environment(
    authenticated: tuple[str, Harness],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = authenticated
    monkeypatch.setenv("ISOLATOR_URL", url)
    monkeypatch.setenv("ISOLATOR_TOKEN_FILE", write_token(tmp_path / "token", VIEWER_TOKEN))

    code, out, err = await run(capsys, "status")

    assert code == 0, err
    assert "r1" in out


async def test_viewer_token_cannot_isolate(
    authenticated: tuple[str, Harness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, harness = authenticated
    token_file = write_token(tmp_path / "token", VIEWER_TOKEN)

    code, _, err = await run(
        capsys, "isolate", "node", "r1-n01", "--reason", "r", "--url", url,
        "--token-file", token_file,
    )  # fmt: skip

    assert code == 1
    assert "HTTP 403" in err
    assert "grafana has role viewer" in err
    assert harness.cluster.calls == []


async def test_missing_token_gets_401_with_hint(
    authenticated: tuple[str, Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = authenticated

    code, _, err = await run(capsys, "status", "--url", url)

    assert code == 1
    assert "HTTP 401: missing bearer token" in err
    assert "--token-file" in err


async def test_wrong_token_gets_401_not_echoed(
    authenticated: tuple[str, Harness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = authenticated
    wrong = "wrong-token-0123456789abcdef"
    token_file = write_token(tmp_path / "token", wrong)

    code, out, err = await run(capsys, "status", "--url", url, "--token-file", token_file)

    assert code == 1
    assert "HTTP 401: invalid bearer token" in err
    assert wrong not in out + err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "cannot read token file", id="missing"),
        pytest.param("", "is empty", id="empty"),
        pytest.param("  \n\n", "is empty", id="blank"),
        pytest.param(f"{OPERATOR_TOKEN}\n{VIEWER_TOKEN}\n", "one token on one line", id="two"),
    ],
)
async def test_bad_token_file_exits_2(
    content: str | None,
    problem: str,
    authenticated: tuple[str, Harness],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, harness = authenticated
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)

    code, out, err = await run(
        capsys, "isolate", "node", "r1-n01", "--reason", "r", "--url", url,
        "--token-file", str(path),
    )  # fmt: skip

    assert code == 2
    assert out == ""
    assert f"token file {path}" in err
    assert problem in err
    assert OPERATOR_TOKEN not in err
    assert harness.cluster.calls == []


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_not_positive_is_usage_error(
    value: str, refused_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # aiohttp reads each of these as no timeout, so the command would wait forever for an
    # API that accepts the connection and never responds.
    try:
        code = cli.main(["status", "--url", refused_url, "--timeout", value])
    except SystemExit as exited:
        code = exited.code

    assert code == 2
    assert "--timeout" in capsys.readouterr().err


# --- responses the command cannot use --------------------------------------------------------
# The servers are HTTP fakes on 127.0.0.1 that stand in for a proxy or a wrong URL.

READ_PATHS = ("/v1/status", "/v1/regions", "/v1/isolations")


async def serve_body(body: bytes, content_type: str) -> TestServer:
    async def respond(_: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    for path in READ_PATHS:
        app.router.add_get(path, respond)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def undecodable_url() -> AsyncIterator[str]:
    """Return the URL of a server whose 200 body is not valid in the charset it names."""
    server = await serve_body(b"\xff\xfe<html>gateway</html>", "text/html; charset=utf-8")
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def foreign_json_url() -> AsyncIterator[str]:
    """Return the URL of a JSON service that is not the isolator, such as a wrong port."""
    server = await serve_body(b'{"name": "some-other-service"}', "application/json")
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_undecodable_body_exits_2(
    undecodable_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.build_parser().parse_args(["status", "--url", undecodable_url])

    code = await execute(args)

    assert code == 2
    assert "not JSON" in capsys.readouterr().err


async def test_foreign_json_service_exits_2(
    foreign_json_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.build_parser().parse_args(["status", "--url", foreign_json_url])

    code = await execute(args)

    assert code == 2
    assert foreign_json_url in capsys.readouterr().err


async def test_foreign_json_names_missing_field(
    foreign_json_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(capsys, "status", "--url", foreign_json_url)

    assert code == 2
    assert out == ""
    assert "field 'verdict' is missing" in err
    assert "Traceback" not in err


async def test_error_url_hides_userinfo(
    foreign_json_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with_password = foreign_json_url.replace("http://", "http://oncall:hunter2@")

    code, _, err = await run(capsys, "status", "--url", with_password)

    assert code == 2
    assert foreign_json_url in err
    assert "hunter2" not in err
    assert "oncall" not in err


async def test_refused_url_hides_userinfo(
    refused_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with_password = refused_url.replace("http://", "http://oncall:hunter2@")

    code, _, err = await run(capsys, "status", "--url", with_password)

    assert code == 2
    assert f"cannot connect to {refused_url}" in err
    assert "hunter2" not in err


def test_invalid_url_hides_userinfo(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["status", "--url", "ftp://oncall:hunter2@127.0.0.1:8080"])

    assert code == 2
    err = capsys.readouterr().err
    assert "invalid API URL 'ftp://127.0.0.1:8080'" in err
    assert "hunter2" not in err


def test_unparsable_url_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["status", "--url", "http://[::1:8080"])

    assert code == 2
    assert "invalid API URL 'http://[::1:8080'" in capsys.readouterr().err


async def test_userinfo_with_token_is_usage_error(
    foreign_json_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_password = foreign_json_url.replace("http://", "http://oncall:hunter2@")
    token_file = write_token(tmp_path / "token", OPERATOR_TOKEN)

    code, out, err = await run(capsys, "status", "--url", with_password, "--token-file", token_file)

    assert code == 2
    assert out == ""
    assert "contains a user name and password and a token file is set" in err
    assert "hunter2" not in err
    assert OPERATOR_TOKEN not in err


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_client_rejects_unbounded_timeout(seconds: float) -> None:
    with pytest.raises(UsageError, match="invalid --timeout"):
        ApiClient("http://127.0.0.1:9", None, seconds)
