"""Fuzzing of every API operation with schemathesis against the app's own OpenAPI document.

The app runs in-process on a controller with fakes, without authentication so that every
operation is reached. Each generated request must get no 5xx and a response that conforms
to the document (status code, content type and body), invalid input must be rejected, and
after each request the control loop must still make a pass and ``/v1/status`` return 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.schemas import OpenApiSchema

from isolator.api.app import create_app
from isolator.clock import ManualClock
from isolator.engine.loop import Controller
from isolator.metrics import Metrics
from isolator.settings import Settings
from tests.unit.fakes import FakeCluster, FakeProber, FakeSite
from tests.unit.fakes import estate as estate_nodes
from tests.unit.harness import FAST, Harness

# With 30 examples per operation the whole file took about 16 s of CPU (measured with
# schemathesis 4.32.5). Each operation is its own test under the 60 s timeout of pyproject.toml,
# and the examples are derandomized, so a run in `make test` is repeatable.
MAX_EXAMPLES = 30

# A body over the API's size limit is rejected with 413 before it is parsed.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 413, 422]}}}
)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@dataclass
class Estate:
    """A controller on fakes, its app and a client, all on one event loop of their own.

    Hypothesis drives the test synchronously, so the test runs that loop itself instead of
    pytest-asyncio's.
    """

    loop: asyncio.AbstractEventLoop
    harness: Harness
    client: httpx.AsyncClient

    def send(self, case: schemathesis.Case[Any]) -> httpx.Response:
        kwargs = case.as_transport_kwargs(base_url=str(self.client.base_url))
        request = self.client.request(
            kwargs["method"],
            kwargs["url"],
            headers=kwargs.get("headers"),
            params=kwargs.get("params"),
            json=kwargs.get("json"),
            content=kwargs.get("data"),
        )
        return self.loop.run_until_complete(request)

    def step(self) -> None:
        self.loop.run_until_complete(self.harness.step())


@pytest.fixture
def estate() -> Iterator[Estate]:
    loop = asyncio.new_event_loop()
    harness = loop.run_until_complete(Harness.start(regions=3, nodes=4))
    app = create_app(harness.controller, Metrics(), harness.clock)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://isolator")
    yield Estate(loop, harness, client)
    loop.run_until_complete(client.aclose())
    loop.close()


def load_schema() -> OpenApiSchema:
    """Load the app's OpenAPI document, which does not depend on the controller's state."""
    clock = ManualClock()
    service_settings = Settings(**FAST)
    cluster = FakeCluster(nodes=estate_nodes(1, 1))
    controller = Controller(service_settings, cluster, FakeSite(), FakeProber(), Metrics(), clock)
    # The app serves no /openapi.json, so that every endpoint but /healthz needs a token.
    document = create_app(controller, Metrics(), clock).openapi()
    return schemathesis.openapi.from_dict(document, config=CONFIG)


# NOTE: schemathesis.pytest.from_fixture would build the document from the estate fixture,
# but with schemathesis 4.32.5 and pytest 9.2 it fails on a private pytest attribute
# (Function._nodeid), so the document is loaded when the module is imported.
schema = load_schema()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    # The estate is shared by every example of an operation on purpose: what one request
    # leaves behind must not break the next one or the control loop.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_operation_fuzzed(case: schemathesis.Case[Any], estate: Estate) -> None:
    passes = estate.harness.controller.state.passes

    response = estate.send(case)

    case.validate_response(response, checks=CHECKS)
    estate.step()
    assert estate.harness.controller.state.passes == passes + 1, "the control loop stopped"
    status = estate.loop.run_until_complete(estate.client.get("/v1/status"))
    assert status.status_code == 200, status.text
    assert status.json()["verdict"] in ("normal", "fail_safe")


# Cases the fuzzing found, kept as plain examples.

ALERT = {"status": "firing", "labels": {"node": "r1-n01"}, "startsAt": "2026-01-01T00:00:00Z"}
WEBHOOK = {
    "version": "4",
    "status": "firing",
    "receiver": "isolator",
    "groupKey": "{}",
    "alerts": [{**ALERT, "fingerprint": "f1"}],
}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param(
            "/v1/isolations/nodes/r1-n01",
            {"reason": "r", "dry_run": "false"},
            "dry_run",
            id="dry-run-text",
        ),
        pytest.param(
            "/v1/isolations/regions/r1/restore",
            {"reason": "r", "dry_run": 0},
            "dry_run",
            id="dry-run-number",
        ),
        pytest.param(
            "/v1/alerts/webhook",
            {**WEBHOOK, "truncatedAlerts": False},
            "truncatedAlerts",
            id="truncated-boolean",
        ),
        pytest.param(
            "/v1/alerts/webhook",
            {**WEBHOOK, "alerts": [{**ALERT, "fingerprint": "f1", "endsAt": 0}]},
            "alerts.0.endsAt",
            id="timestamp-number",
        ),
        pytest.param(
            "/v1/heartbeats",
            {"node": "r1-n01", "region": "r1", "seq": 1, "sent_at": 0, "ingress_ok": "yes"},
            "ingress_ok",
            id="health-text",
        ),
    ],
)
def test_loosely_typed_value_rejected(
    path: str, body: dict[str, object], field: str, estate: Estate
) -> None:
    response = estate.loop.run_until_complete(estate.client.post(path, json=body))

    assert response.status_code == 422, response.text
    assert field in [item["field"] for item in response.json()["fields"]]
    assert estate.harness.cluster.calls == []


def test_webhook_timestamp_text_accepted(estate: Estate) -> None:
    response = estate.loop.run_until_complete(
        estate.client.post("/v1/alerts/webhook", json=WEBHOOK)
    )

    assert response.status_code == 200, response.text


def test_openapi_documents_error_statuses() -> None:
    operations = schema.raw_schema["paths"]
    isolate = operations["/v1/isolations/nodes/{node}"]["post"]["responses"]
    metrics = operations["/metrics"]["get"]["responses"]

    assert {"200", "202", "400", "401", "403", "404", "409", "413", "422", "502"} <= set(isolate)
    body = isolate["422"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ErrorBody"}, "the app's own error body"
    assert list(metrics["200"]["content"]) == ["text/plain"]
