"""Counting each Service's ready endpoints from literal Services, EndpointSlices and Pods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from isolator.model import CUT_ANNOTATION, MIN_READY_ANNOTATION
from isolator.sources.kubernetes.census import count_ready, parse_min_ready


def service(name: str, minimum: str | None = None) -> dict[str, Any]:
    annotations = {} if minimum is None else {MIN_READY_ANNOTATION: minimum}
    return {"metadata": {"namespace": "shop", "name": name, "annotations": annotations}}


def pod(name: str, node: str, *, cut: bool = False) -> dict[str, Any]:
    annotations = {}
    if cut:
        record = {"reason": "r", "incident": "i", "at": "2026-01-01T00:00:00Z"}
        annotations[CUT_ANNOTATION] = json.dumps(record | {"previousReady": "True"})
    return {
        "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
        "spec": {"nodeName": node},
    }


def endpoint(pod_name: str | None, ready: bool | None = True) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    result: dict[str, Any] = {"addresses": ["10.0.0.1"], "conditions": conditions}
    if pod_name is not None:
        result["targetRef"] = {"kind": "Pod", "namespace": "shop", "name": pod_name}
    return result


def endpoint_slice(service_name: str, *endpoints: dict[str, Any]) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service_name}
    return {"metadata": {"namespace": "shop", "labels": labels}, "endpoints": list(endpoints)}


def test_pod_counted_once_across_address_families() -> None:
    slices = [endpoint_slice("web", endpoint("a")), endpoint_slice("web", endpoint("a"))]

    census = count_ready([service("web")], slices, [pod("a", "n1")], [])

    [web] = census.services
    assert web.service == "shop/web"
    assert web.ready_pods == {"shop/a": "n1"}
    assert web.other_ready == 0


def test_readiness_read_from_conditions() -> None:
    slices = [endpoint_slice("web", endpoint("a", None), endpoint("b", False), endpoint("c"))]
    pods = [pod("a", "n1"), pod("b", "n2"), pod("c", "n3")]

    [web] = count_ready([service("web")], slices, pods, []).services

    # A missing ready condition counts as ready, as the API reference states.
    assert web.ready_pods == {"shop/a": "n1", "shop/c": "n3"}


def test_cut_pod_counts_not_ready() -> None:
    slices = [endpoint_slice("web", endpoint("a"), endpoint("b"))]
    pods = [pod("a", "n1", cut=True), pod("b", "n2")]

    [web] = count_ready([service("web")], slices, pods, []).services

    assert web.ready_pods == {"shop/b": "n2"}


def test_endpoint_without_pod_counted_apart() -> None:
    slices = [endpoint_slice("db", endpoint(None), endpoint(None, False))]

    [db] = count_ready([service("db")], slices, [], []).services

    assert db.ready_pods == {}
    assert db.other_ready == 1


def test_node_taken_from_endpoint_when_pod_unlisted() -> None:
    ready = endpoint("a") | {"nodeName": "n7"}

    [web] = count_ready([service("web")], [endpoint_slice("web", ready)], [], []).services

    assert web.ready_pods == {"shop/a": "n7"}


def test_annotation_sets_minimum() -> None:
    services = [service("web", "2"), service("api")]
    slices = [endpoint_slice("web", endpoint("a")), endpoint_slice("api", endpoint("b"))]

    census = count_ready(services, slices, [pod("a", "n1"), pod("b", "n1")], [pod("b", "n1")])

    minimums = {s.service: s.min_ready for s in census.services}
    assert minimums == {"shop/api": None, "shop/web": 2}
    assert census.ingress_pods == {"shop/b"}


def test_slice_without_service_label_ignored() -> None:
    stray = {"metadata": {"namespace": "shop", "labels": {}}, "endpoints": [endpoint("a")]}

    assert count_ready([], [stray], [], []).services == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("3", 3),
        (" 2 ", 2),
        (None, None),
        ("", None),
        ("-1", None),
        ("two", None),
        ("1.5", None),
        ("\u0663", None),  # an Arabic-Indic digit three
    ],
    ids=["zero", "three", "padded", "absent", "empty", "negative", "word", "fraction", "unicode"],
)
def test_min_ready_parsed(value: str | None, expected: int | None) -> None:
    assert parse_min_ready(value) == expected
