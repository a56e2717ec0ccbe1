"""Re-verification of held cuts: a cut undone after verification is applied again within the
retry budget, audited with its writer and counted, and left degraded once the budget is spent.

The controller runs on fakes and a manual clock; the adapter's pure judgement of Pods and
Ingresses is tested on literal objects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from isolator.api.manual import isolation_view
from isolator.engine.drift import held_cut
from isolator.engine.loop import Isolation
from isolator.engine.ports import TargetKind
from isolator.model import CUT_ANNOTATION, SERVING_CONDITION
from isolator.sources.errors import SourceUnavailableError
from isolator.sources.kubernetes.heldcuts import (
    changed_fields,
    ingress_problem,
    last_writer,
    pod_problem,
)
from isolator.sources.kubernetes.horizon import SPLIT_ANNOTATION
from isolator.sources.kubernetes.patches import CutScope
from tests.unit.harness import Harness

CRASHED = "r1-n01"
RECHECK_S = 2.0
RETRY_LIMIT = 2


async def cut_crashed_node(**overrides: Any) -> Harness:
    """Start a controller that rechecks every RECHECK_S and let it cut CRASHED."""
    settings = {
        "cut_recheck_interval_s": RECHECK_S,
        "action_retry_limit": RETRY_LIMIT,
        "action_retry_interval_s": 1.0,
        **overrides,
    }
    harness = await Harness.start(**settings)
    harness.silent.add(CRASHED)
    harness.site_down.add(CRASHED)
    await harness.run_for(6.0)
    await harness.controller.settle()
    assert harness.cluster.cuts == [CRASHED]
    return harness


async def run_settled(harness: Harness, seconds: float) -> None:
    for _ in range(round(seconds / harness.controller.settings.loop_interval_s)):
        await harness.step()
        await harness.controller.settle()


def drift_count(harness: Harness, kind: str, outcome: str) -> float | None:
    registry = harness.controller._metrics.registry
    labels = {"kind": kind, "outcome": outcome}
    return registry.get_sample_value("isolator_cut_drift_total", labels)


def undone_audit(harness: Harness) -> list[dict[str, Any]]:
    return [record for record in harness.controller.audit if record["action"] == "undone"]


async def test_held_cut_read_back_every_interval() -> None:
    harness = await cut_crashed_node()
    checks_before = len(harness.cluster.checks)

    await run_settled(harness, 4 * RECHECK_S)

    checks = harness.cluster.checks[checks_before:]
    assert len(checks) == 4
    assert all(targets == [CRASHED] for targets in checks)
    assert harness.cluster.cuts == [CRASHED]
    assert harness.controller.isolations[CRASHED].verified


async def test_undone_cut_applied_again_and_audited() -> None:
    harness = await cut_crashed_node()
    harness.cluster.undone[CRASHED] = "kwok"

    await run_settled(harness, RECHECK_S)
    harness.cluster.undone.clear()
    await run_settled(harness, 1.0)

    isolation = harness.controller.isolations[CRASHED]
    assert harness.cluster.cuts == [CRASHED, CRASHED]
    assert isolation.verified, isolation.detail
    assert isolation.drifts == 1
    assert isolation.degraded is False
    records = undone_audit(harness)
    assert len(records) == 1
    assert records[0]["who"] == "kwok"
    assert records[0]["result"] == "reapplied"
    assert "cut undone by kwok" in records[0]["detail"]
    assert drift_count(harness, "node", "reapplied") == 1
    assert drift_count(harness, "node", "degraded") == 0


async def test_cut_undone_again_degrades_when_budget_spent() -> None:
    harness = await cut_crashed_node()
    harness.cluster.undone[CRASHED] = None

    await run_settled(harness, 5 * RECHECK_S)

    isolation = harness.controller.isolations[CRASHED]
    # The first cut and RETRY_LIMIT further attempts; the next undo finds the budget spent.
    assert harness.cluster.cuts == [CRASHED] * (1 + RETRY_LIMIT)
    assert isolation.degraded
    assert isolation.verified is False
    assert "unknown writer" in isolation.detail
    assert "retry budget" in isolation.detail
    assert [r["result"] for r in undone_audit(harness)] == ["reapplied"] * RETRY_LIMIT + [
        "degraded"
    ]
    assert drift_count(harness, "node", "reapplied") == RETRY_LIMIT
    assert drift_count(harness, "node", "degraded") == 1
    view = isolation_view(isolation, harness.clock.wall())
    assert view["degraded"] is True
    assert view["drifts"] == 1 + RETRY_LIMIT


async def test_degraded_cut_no_longer_checked() -> None:
    harness = await cut_crashed_node(action_retry_limit=0)
    harness.cluster.undone[CRASHED] = "kubectl-edit"
    await run_settled(harness, RECHECK_S)
    assert harness.controller.isolations[CRASHED].degraded
    checks_before = len(harness.cluster.checks)

    await run_settled(harness, 3 * RECHECK_S)

    assert harness.cluster.checks[checks_before:] == []
    assert harness.cluster.cuts == [CRASHED]


async def test_failed_check_retried_next_interval(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    harness = await cut_crashed_node()
    harness.cluster.undone[CRASHED] = "kwok"

    async def unavailable(held: Any) -> list[Any]:
        raise SourceUnavailableError("kube-apiserver timed out")

    with monkeypatch.context() as patched:
        patched.setattr(harness.cluster, "check_held_cuts", unavailable)
        await run_settled(harness, RECHECK_S)
    assert "reading held cuts back failed, will retry at the next check" in caplog.messages
    assert harness.controller.isolations[CRASHED].verified
    assert harness.cluster.cuts == [CRASHED]

    await run_settled(harness, RECHECK_S)

    assert harness.controller.isolations[CRASHED].drifts == 1
    assert harness.cluster.cuts == [CRASHED, CRASHED]


async def test_recheck_off_at_zero_interval() -> None:
    harness = await cut_crashed_node(cut_recheck_interval_s=0.0)
    harness.cluster.undone[CRASHED] = "kwok"

    await run_settled(harness, 10.0)

    assert harness.cluster.checks == []
    assert harness.cluster.cuts == [CRASHED]


async def test_dry_run_isolation_not_read_back() -> None:
    harness = await cut_crashed_node(dry_run=True)
    harness.cluster.undone[CRASHED] = "kwok"

    await run_settled(harness, 3 * RECHECK_S)

    assert harness.cluster.checks == []
    assert undone_audit(harness) == []


async def test_wider_cut_clears_degraded() -> None:
    harness = await Harness.start(
        cut_recheck_interval_s=RECHECK_S, action_retry_limit=0, action_retry_interval_s=1.0
    )
    harness.failing[CRASHED] = {"kube-proxy"}
    await run_settled(harness, 4.0)
    assert harness.controller.isolations[CRASHED].scope == "component"
    harness.cluster.undone[CRASHED] = "kubelet"
    await run_settled(harness, RECHECK_S)
    assert harness.controller.isolations[CRASHED].degraded
    harness.cluster.undone.clear()

    harness.silent.add(CRASHED)
    harness.site_down.add(CRASHED)
    await run_settled(harness, 4.0)

    isolation = harness.controller.isolations[CRASHED]
    assert isolation.scope == "node"
    assert isolation.verified, isolation.detail
    assert isolation.degraded is False


def test_pod_isolation_covers_its_own_pod() -> None:
    isolation = Isolation(
        node="r1-n01",
        region="r1",
        incident="inc",
        reason="manual",
        started_at=0.0,
        kind=TargetKind.POD,
        target="shop/web-0",
        verified=True,
    )

    cut = held_cut(isolation)

    assert (cut.kind, cut.target, cut.objects) == ("pod", "shop/web-0", ("shop/web-0",))


# The adapter's judgement of single objects.


def managed(manager: str, time: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Update", "time": time, "fieldsV1": fields}


READY_FIELDS = {"f:status": {"f:conditions": {'k:{"type":"Ready"}': {"f:status": {}}}}}


def pod(ready: str, serving: str, *, gated: bool = True, **metadata: Any) -> dict[str, Any]:
    record = {
        "reason": "node down",
        "incident": "inc",
        "at": "2026-01-01T00:00:00Z",
        "previousReady": "True",
        "previousServing": "True",
    }
    gates = [{"conditionType": SERVING_CONDITION}] if gated else []
    return {
        "metadata": {
            "namespace": "shop",
            "name": "web-0",
            "annotations": {CUT_ANNOTATION: json.dumps(record)},
            **metadata,
        },
        "spec": {"nodeName": CRASHED, "readinessGates": gates},
        "status": {
            "conditions": [
                {"type": "Ready", "status": ready},
                {"type": SERVING_CONDITION, "status": serving},
            ]
        },
    }


def test_last_writer_owns_the_undone_field() -> None:
    obj = pod(
        "True",
        "False",
        managedFields=[
            managed("isolator", "2026-01-01T00:00:05Z", READY_FIELDS),
            managed("kwok", "2026-01-01T00:00:03Z", READY_FIELDS),
            managed("kubectl-label", "2026-01-01T00:00:09Z", {"f:metadata": {}}),
        ],
    )

    ready_status = ("f:status", "f:conditions", 'k:{"type":"Ready"}', "f:status")
    assert last_writer(obj, [ready_status]) == "kwok"


def test_last_writer_falls_back_to_latest_other() -> None:
    obj = pod(
        "True",
        "False",
        managedFields=[
            managed("isolator", "2026-01-01T00:00:05Z", READY_FIELDS),
            managed("kubectl-label", "2026-01-01T00:00:09Z", {"f:metadata": {}}),
            managed("helm", "2026-01-01T00:00:01Z", {"f:metadata": {}}),
        ],
    )

    assert last_writer(obj, [("f:spec",)]) == "kubectl-label"


def test_last_writer_unknown_when_only_isolator_wrote() -> None:
    obj = pod("False", "False", managedFields=[managed("isolator", "", READY_FIELDS)])

    assert last_writer(obj, [("f:status",)]) is None


@pytest.mark.parametrize(
    ("ready", "serving", "endpoint_ready", "undone"),
    [
        pytest.param("False", "False", False, False, id="cut-holds"),
        pytest.param("True", "False", False, True, id="ready-set-back"),
        pytest.param("False", "True", False, True, id="gate-set-back"),
        pytest.param("False", "False", True, True, id="endpoint-ready"),
    ],
)
def test_pod_problem_node_scope(
    ready: str, serving: str, endpoint_ready: bool, undone: bool
) -> None:
    problem = pod_problem(pod(ready, serving), CutScope.NODE, endpoint_ready)

    assert (problem is not None) == undone, problem


def test_pod_problem_without_record_uses_held_scope() -> None:
    obj = pod("True", "False")
    del obj["metadata"]["annotations"]

    assert pod_problem(obj, CutScope.COMPONENT, False) is None
    assert pod_problem(obj, CutScope.NODE, False) is not None


def ingress(spec: dict[str, Any], original: dict[str, Any] | None) -> dict[str, Any]:
    annotations = {}
    if original is not None:
        record = {
            "region": "r1",
            "incident": "inc",
            "reason": "partitioned",
            "at": "2026-01-01T00:00:00Z",
            "fallback": "fallback",
            "spec": original,
        }
        annotations[SPLIT_ANNOTATION] = json.dumps(record)
    return {
        "metadata": {"namespace": "cloud", "name": "portal", "annotations": annotations},
        "spec": spec,
    }


def backend(service: str) -> dict[str, Any]:
    return {"defaultBackend": {"service": {"name": service, "port": {"number": 80}}}}


def test_ingress_problem_by_routes_and_record() -> None:
    assert ingress_problem(ingress(backend("fallback"), backend("app"))) is None
    rerouted = ingress_problem(ingress(backend("app"), backend("app")))
    assert rerouted is not None
    assert "no longer go to the fallback" in rerouted[0]
    assert rerouted[1] == [("f:spec", "f:defaultBackend", "f:service", "f:name")]
    unrecorded = ingress_problem(ingress(backend("app"), None))
    assert unrecorded is not None
    assert "record is gone" in unrecorded[0]


def test_ingress_writer_owns_changed_route_within_same_second() -> None:
    creator = {"f:spec": {"f:defaultBackend": {"f:service": {"f:port": {}}}}}
    reverter = {"f:spec": {"f:defaultBackend": {"f:service": {"f:name": {}}}}}
    obj = ingress(backend("app"), backend("app"))
    obj["metadata"]["managedFields"] = [
        managed("kubectl-create", "2026-01-01T00:00:05Z", creator),
        managed("argocd-controller", "2026-01-01T00:00:05Z", reverter),
    ]
    found = ingress_problem(obj)
    assert found is not None

    assert last_writer(obj, found[1]) == "argocd-controller"


def test_changed_fields_stop_at_lists() -> None:
    current = {"rules": [{"host": "a"}], "defaultBackend": {"service": {"name": "app"}}}
    wanted = {"rules": [{"host": "b"}], "defaultBackend": {"service": {"name": "app"}}}

    assert changed_fields(current, wanted, ("f:spec",)) == [("f:spec", "f:rules")]
