"""The Kubernetes adapter without a server: cut records, patch bodies, EndpointSlice reading,
error mapping and retries, and the per-Pod write sequence against an in-memory client."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, cast

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from multidict import CIMultiDict, CIMultiDictProxy

from isolator.clock import ManualClock
from isolator.model import CUT_ANNOTATION, SERVING_CONDITION
from isolator.sources.errors import SourceError, SourceUnavailableError
from isolator.sources.kubernetes import (
    KubernetesError,
    KubernetesSource,
    KubernetesUnavailableError,
)
from isolator.sources.kubernetes.client import KubernetesClient
from isolator.sources.kubernetes.endpoints import endpoint_readiness, pods_not_in_state
from isolator.sources.kubernetes.errors import call_with_retry, map_error
from isolator.sources.kubernetes.events import event_body, node_reference, pod_reference
from isolator.sources.kubernetes.patches import (
    CutRecord,
    InvalidCutRecordError,
    cut_annotation_patch,
    cut_record,
    cut_status_patch,
    gate_only_restore_patch,
    is_cut_applied,
    needs_serving,
    remove_annotation_patch,
    restore_status_patch,
    rfc3339,
    selected_by_any,
    serving_patch,
)

WALL_S = 1_780_000_000.0  # 2026-05-28T20:26:40Z
WALL_RFC3339 = "2026-05-28T20:26:40Z"
EARLIER = "2026-05-01T00:00:00Z"


def condition(kind: str, status: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "lastTransitionTime": EARLIER}


def make_pod(
    name: str = "web-1",
    *,
    gated: bool = True,
    ready: str | None = "True",
    serving: str | None = "True",
    record: str | None = None,
    phase: str = "Running",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    conditions = [condition("PodScheduled", "True")]
    if ready is not None:
        conditions.append(condition("Ready", ready))
    if serving is not None:
        conditions.append(condition(SERVING_CONDITION, serving))
    pod: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "edge",
            "uid": f"uid-{name}",
            "resourceVersion": "100",
            "labels": labels if labels is not None else {"app": "web"},
            "annotations": {},
        },
        "spec": {"nodeName": "r1-n01", "readinessGates": []},
        "status": {"phase": phase, "podIP": "10.0.0.1", "conditions": conditions},
    }
    if gated:
        pod["spec"]["readinessGates"] = [{"conditionType": SERVING_CONDITION}]
    if record is not None:
        pod["metadata"]["annotations"][CUT_ANNOTATION] = record
    return pod


def conditions_by_type(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["status"]["conditions"]}


# Cut records


def test_record_round_trips_through_annotation() -> None:
    record = CutRecord("node down", "inc-7", WALL_RFC3339, "True", None)

    assert CutRecord.from_annotation(record.to_annotation()) == record


def test_record_annotation_uses_documented_keys() -> None:
    record = CutRecord("node down", "inc-7", WALL_RFC3339, "True", "False")

    assert json.loads(record.to_annotation()) == {
        "reason": "node down",
        "incident": "inc-7",
        "at": WALL_RFC3339,
        "previousReady": "True",
        "previousServing": "False",
    }


def test_record_captures_previous_statuses() -> None:
    pod = make_pod(ready="True", serving=None)

    record = cut_record(pod, reason="node down", incident="inc-7", wall_s=WALL_S)

    assert record.previous_ready == "True"
    assert record.previous_serving is None
    assert record.at == WALL_RFC3339


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"incident": "i", "at": "t", "previousReady": null, "previousServing": null}',
        '{"reason": "r", "incident": 7, "at": "t", "previousReady": null, "previousServing": null}',
        '{"reason": "r", "incident": "i", "at": "t", "previousServing": null}',
        '{"reason": "r", "incident": "i", "at": "t", "previousReady": "yes", '
        '"previousServing": null}',
    ],
    ids=["not-json", "not-object", "no-reason", "incident-not-string", "no-ready", "bad-status"],
)
def test_malformed_record_rejected(text: str) -> None:
    with pytest.raises(InvalidCutRecordError):
        CutRecord.from_annotation(text)


# Patch bodies


def test_cut_annotation_patch_carries_resource_version() -> None:
    record = CutRecord("node down", "inc-7", WALL_RFC3339, "True", "True")

    patch = cut_annotation_patch(record, "123")

    assert patch["metadata"]["resourceVersion"] == "123"
    assert patch["metadata"]["annotations"] == {CUT_ANNOTATION: record.to_annotation()}


def test_gated_pod_cut_sets_both_false() -> None:
    patch = cut_status_patch(make_pod(), incident="inc-7", wall_s=WALL_S)

    conditions = conditions_by_type(patch)
    assert set(conditions) == {"Ready", SERVING_CONDITION}
    for kind in ("Ready", SERVING_CONDITION):
        assert conditions[kind]["status"] == "False"
        assert conditions[kind]["reason"] == "IsolatorCut"
        assert "inc-7" in conditions[kind]["message"]
        assert conditions[kind]["lastTransitionTime"] == WALL_RFC3339


def test_ungated_pod_cut_sets_ready_only() -> None:
    patch = cut_status_patch(make_pod(gated=False, serving=None), incident="i", wall_s=WALL_S)

    assert list(conditions_by_type(patch)) == ["Ready"]
    assert conditions_by_type(patch)["Ready"]["status"] == "False"


def test_unchanged_status_keeps_transition_time() -> None:
    pod = make_pod(ready="False", serving="True")

    conditions = conditions_by_type(cut_status_patch(pod, incident="i", wall_s=WALL_S))

    assert conditions["Ready"]["lastTransitionTime"] == EARLIER
    assert conditions[SERVING_CONDITION]["lastTransitionTime"] == WALL_RFC3339


def test_restore_puts_back_recorded_ready() -> None:
    record = CutRecord("r", "inc-7", WALL_RFC3339, "Unknown", "False")
    pod = make_pod(ready="False", serving="False")

    conditions = conditions_by_type(restore_status_patch(pod, record, incident="i", wall_s=WALL_S))

    assert conditions["Ready"]["status"] == "Unknown"
    assert conditions["Ready"]["reason"] == "IsolatorRestore"
    assert conditions[SERVING_CONDITION]["status"] == "True"


def test_restore_deletes_ready_absent_before_cut() -> None:
    record = CutRecord("r", "inc-7", WALL_RFC3339, None, None)
    pod = make_pod(ready="False", serving="False")

    patch = restore_status_patch(pod, record, incident="i", wall_s=WALL_S)

    assert conditions_by_type(patch)["Ready"] == {"type": "Ready", "$patch": "delete"}


def test_restore_of_pod_without_gate_leaves_gate_alone() -> None:
    record = CutRecord("r", "inc-7", WALL_RFC3339, "True", None)
    pod = make_pod(gated=False, ready="False", serving=None)

    patch = restore_status_patch(pod, record, incident="i", wall_s=WALL_S)

    assert list(conditions_by_type(patch)) == ["Ready"]


def test_gate_only_restore_needs_gate() -> None:
    assert gate_only_restore_patch(make_pod(gated=False), incident="i", wall_s=WALL_S) is None
    patch = gate_only_restore_patch(make_pod(serving="False"), incident="i", wall_s=WALL_S)
    assert patch is not None
    assert list(conditions_by_type(patch)) == [SERVING_CONDITION]


def test_remove_annotation_patch_nulls_the_record() -> None:
    patch = remove_annotation_patch("55")

    assert patch == {"metadata": {"resourceVersion": "55", "annotations": {CUT_ANNOTATION: None}}}


def test_serving_patch_guarded_by_resource_version() -> None:
    patch = serving_patch(make_pod(serving=None), wall_s=WALL_S)

    assert patch["metadata"] == {"resourceVersion": "100"}
    assert conditions_by_type(patch)[SERVING_CONDITION]["status"] == "True"


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (make_pod(serving=None), True),
        (make_pod(serving="False"), True),
        (make_pod(serving="True"), False),
        (make_pod(serving=None, record="{}"), False),
        (make_pod(gated=False, serving=None), False),
        (make_pod(serving=None, phase="Succeeded"), False),
    ],
    ids=["missing", "false", "already-true", "cut", "no-gate", "finished"],
)
def test_needs_serving(pod: dict[str, Any], expected: bool) -> None:
    assert needs_serving(pod) is expected


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (make_pod(ready="False", serving="False"), True),
        (make_pod(ready="False", serving="True"), False),
        (make_pod(ready="True", serving="False"), False),
        (make_pod(gated=False, ready="False", serving=None), True),
    ],
    ids=["both-false", "gate-still-true", "ready-still-true", "no-gate"],
)
def test_is_cut_applied(pod: dict[str, Any], expected: bool) -> None:
    assert is_cut_applied(pod) is expected


@pytest.mark.parametrize(
    ("service_spec", "expected"),
    [
        ({"selector": {"app": "web"}}, True),
        ({"selector": {"app": "web", "tier": "edge"}}, False),
        ({"selector": {}}, False),
        ({}, False),
        ({"type": "ExternalName", "selector": {"app": "web"}}, False),
    ],
    ids=["matching", "extra-key", "empty", "missing", "external-name"],
)
def test_service_selection(service_spec: dict[str, Any], expected: bool) -> None:
    assert selected_by_any(make_pod(), [{"spec": service_spec}]) is expected


def test_rfc3339_formats_utc() -> None:
    assert rfc3339(WALL_S) == WALL_RFC3339
    assert rfc3339(WALL_S, micro=True) == "2026-05-28T20:26:40.000000Z"


# EndpointSlices


def endpoint(pod: str, ready: bool | None, namespace: str | None = "edge") -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    target: dict[str, Any] = {"kind": "Pod", "name": pod}
    if namespace is not None:
        target["namespace"] = namespace
    return {"addresses": ["10.0.0.1"], "conditions": conditions, "targetRef": target}


def test_endpoint_readiness_collects_every_slice() -> None:
    slices: list[dict[str, Any]] = [
        {
            "metadata": {"namespace": "edge"},
            "endpoints": [endpoint("a", True), endpoint("b", None)],
        },
        {
            "metadata": {"namespace": "edge"},
            "endpoints": [endpoint("a", False), endpoint("c", True, namespace=None)],
        },
        {"metadata": {"namespace": "edge"}, "endpoints": None},
    ]

    assert endpoint_readiness(slices) == {
        "edge/a": [True, False],
        "edge/b": [True],
        "edge/c": [True],
    }


def test_endpoint_without_pod_target_ignored() -> None:
    node_target = {"conditions": {"ready": True}, "targetRef": {"kind": "Node", "name": "n"}}
    slices = [{"metadata": {"namespace": "edge"}, "endpoints": [node_target, {"addresses": []}]}]

    assert endpoint_readiness(slices) == {}


def test_pods_not_in_state_for_cut() -> None:
    readiness = {"edge/a": [False, False], "edge/b": [False, True]}

    pending = pods_not_in_state(readiness, ["edge/a", "edge/b", "edge/gone"], ready=False)

    assert pending == ["edge/b"]


def test_pods_not_in_state_for_restore() -> None:
    readiness = {"edge/a": [True, True], "edge/b": [False, True]}

    pending = pods_not_in_state(readiness, ["edge/a", "edge/b", "edge/gone"], ready=True)

    assert pending == ["edge/b", "edge/gone"]


# Events


def test_pod_event_lives_in_pod_namespace() -> None:
    body = event_body(
        regarding=pod_reference(make_pod()),
        reason="IsolatorCut",
        action="Cut",
        note="x" * 2000,
        warning=True,
        instance="isolator-host",
        wall_s=WALL_S,
    )

    assert body["metadata"]["namespace"] == "edge"
    assert body["metadata"]["name"].startswith("web-1.")
    assert body["regarding"]["uid"] == "uid-web-1"
    assert body["reportingController"] == "isolator"
    assert body["type"] == "Warning"
    assert body["eventTime"] == "2026-05-28T20:26:40.000000Z"
    assert len(body["note"]) == 1000


def test_node_event_lives_in_default_namespace() -> None:
    body = event_body(
        regarding=node_reference("r1-n01", None),
        reason="IsolatorRestore",
        action="Restore",
        note="restored",
        warning=False,
        instance="isolator-host",
        wall_s=WALL_S,
    )

    assert body["metadata"]["namespace"] == "default"
    assert body["regarding"] == {"apiVersion": "v1", "kind": "Node", "name": "r1-n01"}
    assert body["type"] == "Normal"


# Error mapping and retries


def api_error(status: int, body: str = "", headers: dict[str, str] | None = None) -> ApiException:
    err = ApiException(status=status, reason="Reason")
    err.body = body.encode()
    err.headers = CIMultiDictProxy(CIMultiDict(headers)) if headers is not None else None
    return err


@pytest.mark.parametrize(
    ("error", "unavailable", "status"),
    [
        (api_error(500), True, 500),
        (api_error(503), True, 503),
        (api_error(429), True, 429),
        (api_error(0), True, 0),
        (api_error(404), False, 404),
        (api_error(409), False, 409),
        (api_error(422), False, 422),
        (api_error(403), False, 403),
        (aiohttp.ClientConnectionError("refused"), True, None),
        (aiohttp.ServerDisconnectedError(), True, None),
        (TimeoutError(), True, None),
    ],
    ids=[
        "500",
        "503",
        "429",
        "not-sent",
        "404",
        "409",
        "422",
        "403",
        "refused",
        "dropped",
        "timeout",
    ],
)
def test_error_mapping(error: BaseException, unavailable: bool, status: int | None) -> None:
    mapped = map_error(error, "read Pod edge/web-1")

    assert isinstance(mapped, KubernetesError)
    assert isinstance(mapped, SourceError)
    assert isinstance(mapped, KubernetesUnavailableError) is unavailable
    assert isinstance(mapped, SourceUnavailableError) is unavailable
    assert mapped.status == status
    assert "read Pod edge/web-1" in str(mapped)


def test_error_message_quotes_status_message() -> None:
    body = json.dumps({"kind": "Status", "message": 'pods "web-1" not found'})

    mapped = map_error(api_error(404, body), "read Pod edge/web-1")

    assert str(mapped) == 'read Pod edge/web-1 failed: HTTP 404 Reason: pods "web-1" not found'


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2", 2.0), ("600", 5.0), ("-1", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
    ids=["seconds", "bounded", "negative", "http-date"],
)
def test_retry_after_bounded(header: str, expected: float | None) -> None:
    mapped = map_error(api_error(429, headers={"Retry-After": header}), "list Pods")

    assert isinstance(mapped, KubernetesUnavailableError)
    assert mapped.retry_after_s == expected


class Flaky:
    """A request that raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retry_recovers_from_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    request = Flaky(api_error(503), aiohttp.ClientConnectionError("refused"))
    start = clock.monotonic()

    with caplog.at_level(logging.WARNING):
        assert await call_with_retry("list Pods", request, clock=clock) == "ok"

    assert request.calls == 3
    assert clock.monotonic() - start == pytest.approx(0.2 + 0.4)
    attempts = [getattr(r, "attempt", None) for r in caplog.records]
    assert attempts == ["1 of 3", "2 of 3"]


async def test_retry_honours_retry_after() -> None:
    clock = ManualClock()
    request = Flaky(api_error(429, headers={"Retry-After": "2"}))
    start = clock.monotonic()

    assert await call_with_retry("list Pods", request, clock=clock) == "ok"

    assert clock.monotonic() - start == pytest.approx(2.0)


async def test_retry_gives_up_after_max_attempts(caplog: pytest.LogCaptureFixture) -> None:
    request = Flaky(api_error(500), api_error(502), api_error(503), api_error(504))

    with caplog.at_level(logging.WARNING), pytest.raises(KubernetesUnavailableError) as info:
        await call_with_retry("list Pods", request, clock=ManualClock())

    assert request.calls == 3
    assert info.value.status == 503
    assert isinstance(info.value.__cause__, ApiException)
    assert caplog.records[-1].getMessage() == "Kubernetes request failed, giving up"
    assert getattr(caplog.records[-1], "attempt", None) == "3 of 3"


async def test_permanent_error_not_retried() -> None:
    request = Flaky(api_error(403))

    with pytest.raises(KubernetesError) as info:
        await call_with_retry("list Pods", request, clock=ManualClock())

    assert request.calls == 1
    assert not isinstance(info.value, KubernetesUnavailableError)


# The write sequence, against an in-memory client


class MemoryKube:
    """Stores Pods and EndpointSlices in memory; patches apply the way the API server does for
    the subset of strategic merge patches the adapter sends."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in pods}
        self.writes: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.conflicts_left = 0  # metadata patches to reject with 409 before accepting
        self.unavailable_pods: set[str] = set()
        self.interfere: dict[str, Any] | None = None  # applied to a Pod on its first conflict

    async def list_pods(self, field_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values()]

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        pod = self.pods.get(f"{namespace}/{name}")
        return copy.deepcopy(pod) if pod else None

    async def patch_pod(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        if key in self.unavailable_pods:
            raise KubernetesUnavailableError("patch failed: HTTP 503", status=503)
        pod = self.pods[key]
        if (
            self.conflicts_left
            or body["metadata"]["resourceVersion"] != pod["metadata"]["resourceVersion"]
        ):
            self.conflicts_left = max(self.conflicts_left - 1, 0)
            if self.interfere:
                pod["metadata"]["annotations"].update(self.interfere)
                self.interfere = None
            self._bump(pod)
            raise KubernetesError("patch failed: HTTP 409", status=409)
        for annotation, value in body["metadata"]["annotations"].items():
            if value is None:
                pod["metadata"]["annotations"].pop(annotation, None)
            else:
                pod["metadata"]["annotations"][annotation] = value
        self._bump(pod)
        self.writes.append(("metadata", key))
        return copy.deepcopy(pod)

    async def patch_pod_status(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        pod = self.pods[key]
        conditions = {c["type"]: c for c in pod["status"]["conditions"]}
        for change in body["status"]["conditions"]:
            if change.get("$patch") == "delete":
                conditions.pop(change["type"], None)
            else:
                conditions[change["type"]] = change
        pod["status"]["conditions"] = list(conditions.values())
        self._bump(pod)
        self.writes.append(("status", key))
        return copy.deepcopy(pod)

    async def list_endpoint_slices(self, namespace: str) -> list[dict[str, Any]]:
        endpoints = []
        for key, pod in self.pods.items():
            ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}.get("Ready")
            endpoints.append(endpoint(key.split("/")[1], ready == "True"))
        return [{"metadata": {"namespace": namespace}, "endpoints": endpoints}]

    async def list_services(self, namespace: str) -> list[dict[str, Any]]:
        return [{"spec": {"selector": {"app": "web"}}}]

    async def read_node_uid(self, name: str) -> str | None:
        return f"uid-{name}"

    async def create_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None

    @staticmethod
    def _bump(pod: dict[str, Any]) -> None:
        pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)


def source_on(kube: MemoryKube, *, dry_run: bool = False) -> KubernetesSource:
    return KubernetesSource(
        cast(KubernetesClient, kube),  # an in-memory stand-in with the same methods
        agent_port=9910,
        dry_run=dry_run,
        clock=ManualClock(wall_start=WALL_S),
        verify_timeout_s=1.0,
        poll_interval_s=0.1,
        instance="isolator-test",
    )


def record_of(kube: MemoryKube, key: str) -> CutRecord:
    return CutRecord.from_annotation(kube.pods[key]["metadata"]["annotations"][CUT_ANNOTATION])


async def test_cut_writes_record_before_status() -> None:
    kube = MemoryKube([make_pod("a"), make_pod("b", gated=False, serving=None)])

    result = await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert result.pods == ("edge/a", "edge/b")
    assert result.verified, result.detail
    for key in ("edge/a", "edge/b"):
        assert kube.writes.index(("metadata", key)) < kube.writes.index(("status", key))
        assert record_of(kube, key).previous_ready == "True"
    reasons = sorted((e["regarding"]["kind"], e["reason"]) for e in kube.events)
    assert reasons == [("Node", "IsolatorCut"), ("Pod", "IsolatorCut"), ("Pod", "IsolatorCut")]


async def test_cut_retries_after_conflict() -> None:
    kube = MemoryKube([make_pod("a")])
    kube.conflicts_left = 2

    result = await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert result.pods == ("edge/a",)
    assert record_of(kube, "edge/a").incident == "inc-7"


async def test_cut_gives_up_after_three_conflicts() -> None:
    kube = MemoryKube([make_pod("a")])
    kube.conflicts_left = 3

    with pytest.raises(KubernetesError) as info:
        await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert info.value.status == 409
    assert ("status", "edge/a") not in kube.writes


async def test_cut_keeps_record_written_by_another_writer() -> None:
    kube = MemoryKube([make_pod("a")])
    other = CutRecord("manual", "inc-1", EARLIER, "True", "True").to_annotation()
    kube.conflicts_left = 1
    kube.interfere = {CUT_ANNOTATION: other}

    result = await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert result.pods == ("edge/a",)
    assert kube.pods["edge/a"]["metadata"]["annotations"][CUT_ANNOTATION] == other
    assert is_cut_applied(kube.pods["edge/a"])


async def test_cut_repairs_status_of_recorded_pod() -> None:
    record = CutRecord("r", "inc-1", EARLIER, "True", "True").to_annotation()
    kube = MemoryKube([make_pod("a", record=record)])

    result = await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert result.pods == ("edge/a",)
    assert ("metadata", "edge/a") not in kube.writes
    assert record_of(kube, "edge/a").incident == "inc-1"
    assert is_cut_applied(kube.pods["edge/a"])


async def test_cut_attempts_every_pod_before_raising() -> None:
    kube = MemoryKube([make_pod("a"), make_pod("b")])
    kube.unavailable_pods = {"edge/a"}

    with pytest.raises(KubernetesUnavailableError, match="1 of 2 Pods"):
        await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert is_cut_applied(kube.pods["edge/b"])


class LiveKubeletKube(MemoryKube):
    """A node whose kubelet is alive: it recomputes Ready True right after any status write."""

    async def patch_pod_status(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        patched = await super().patch_pod_status(namespace, name, body)
        for current in self.pods[f"{namespace}/{name}"]["status"]["conditions"]:
            if current["type"] == "Ready":
                current["status"] = "True"
        return patched


async def test_reverted_cut_reported_unverified() -> None:
    kube = LiveKubeletKube([make_pod("a", gated=False, serving=None)])

    result = await source_on(kube).cut_node("r1-n01", "node down", "inc-7")

    assert result.pods == ("edge/a",)
    assert not result.verified
    assert "1 of 1 Pods still ready: edge/a" in result.detail


async def test_dry_run_writes_nothing() -> None:
    kube = MemoryKube([make_pod("a"), make_pod("b", serving=None)])
    source = source_on(kube, dry_run=True)

    cut = await source.cut_node("r1-n01", "node down", "inc-7")
    served = await source.ensure_serving("r1-n01")

    assert cut.pods == ("edge/a", "edge/b")
    assert not cut.verified
    assert "dry run" in cut.detail
    assert served == 0
    assert kube.writes == []
    assert kube.events == []


async def test_restore_is_exact_and_idempotent() -> None:
    kube = MemoryKube([make_pod("a"), make_pod("b", ready="False", serving=None)])
    source = source_on(kube)
    await source.cut_node("r1-n01", "node down", "inc-7")

    first = await source.restore_node("r1-n01", "inc-7")
    writes = len(kube.writes)
    second = await source.restore_node("r1-n01", "inc-7")

    assert first.pods == ("edge/a", "edge/b")
    assert first.verified, first.detail
    statuses = {
        key: {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        for key, pod in kube.pods.items()
    }
    assert statuses["edge/a"]["Ready"] == "True"
    assert statuses["edge/b"]["Ready"] == "False"
    assert statuses["edge/b"][SERVING_CONDITION] == "True"
    assert all(CUT_ANNOTATION not in p["metadata"]["annotations"] for p in kube.pods.values())
    assert second.pods == ()
    assert len(kube.writes) == writes


async def test_restore_leaves_newer_record_in_place() -> None:
    kube = MemoryKube([make_pod("a")])
    source = source_on(kube)
    await source.cut_node("r1-n01", "node down", "inc-7")
    newer = CutRecord("again", "inc-8", WALL_RFC3339, "False", "False").to_annotation()
    kube.conflicts_left = 1
    kube.interfere = {CUT_ANNOTATION: newer}

    result = await source.restore_node("r1-n01", "inc-7")

    assert kube.pods["edge/a"]["metadata"]["annotations"][CUT_ANNOTATION] == newer
    assert result.pods == ("edge/a",)


async def test_ensure_serving_skips_cut_pods() -> None:
    record = CutRecord("r", "inc-1", EARLIER, "True", None).to_annotation()
    kube = MemoryKube([make_pod("a", serving=None), make_pod("b", serving="False", record=record)])

    assert await source_on(kube).ensure_serving("r1-n01") == 1

    assert kube.writes == [("status", "edge/a")]


async def test_verify_times_out_on_virtual_clock() -> None:
    kube = MemoryKube([make_pod("up"), make_pod("down", ready="False")])
    source = source_on(kube)

    assert not await source.verify(["edge/up"], ready=False, timeout_s=2.0)
    assert await source.verify(["edge/down", "edge/missing"], ready=False, timeout_s=2.0)
    assert not await source.verify(["edge/missing"], ready=True, timeout_s=2.0)
    assert await source.verify(["edge/up"], ready=True, timeout_s=2.0)
