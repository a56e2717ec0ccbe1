"""Unit tests of the benchmark's own arithmetic: run with ``pytest bench``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.crash import is_isolator_write
from bench.kubeapi import difference, parse_request_counts, writes
from bench.pyspy import summarize_profile
from bench.scale import loop_figures, parse_samples, step_passed
from bench.stats import histogram_quantile, linear_fit, percentile, summarize

SAMPLE = [3.1, 2.7, 2.9, 6.8, 3.0, 2.8, 3.3, 2.6]


@pytest.mark.parametrize("q", [0, 25, 50, 75, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    assert percentile(SAMPLE, q) == pytest.approx(float(np.percentile(SAMPLE, q)))


def test_percentile_rejects_empty_and_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summary_spread() -> None:
    summary = summarize(SAMPLE)

    assert summary is not None
    assert summary.count == 8
    assert summary.min == 2.6
    assert summary.max == 6.8
    assert summary.iqr == pytest.approx(
        float(np.percentile(SAMPLE, 75) - np.percentile(SAMPLE, 25))
    )
    assert summarize([]) is None


def test_histogram_quantile_interpolates() -> None:
    # 10 observations at or under 0.1, 90 more at or under 0.5
    buckets = {0.1: 10.0, 0.5: 100.0, math.inf: 100.0}

    assert histogram_quantile(0.05, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.55, buckets) == pytest.approx(0.3)


def test_histogram_quantile_in_inf_bucket() -> None:
    buckets = {0.1: 10.0, 1.0: 50.0, math.inf: 100.0}

    assert histogram_quantile(0.99, buckets) == 1.0


def test_histogram_quantile_empty_is_none() -> None:
    assert histogram_quantile(0.99, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {}) is None


def test_linear_fit_exact_line() -> None:
    fit = linear_fit([100.0, 200.0, 400.0], [0.3, 0.5, 0.9])

    assert fit is not None
    assert fit[0] == pytest.approx(0.1)
    assert fit[1] == pytest.approx(0.002)
    assert linear_fit([1.0, 1.0], [2.0, 3.0]) is None


def _request_line(verb: str, group: str, resource: str, subresource: str, value: int) -> str:
    labels = (
        f'code="200",component="apiserver",dry_run="",group="{group}",resource="{resource}",'
        f'scope="resource",subresource="{subresource}",verb="{verb}",version="v1"'
    )
    return f"apiserver_request_total{{{labels}}} {value}"


METRICS = "\n".join(
    [
        "# TYPE apiserver_request_total counter",
        _request_line("PATCH", "", "pods", "status", 4),
        _request_line("LIST", "", "pods", "", 7),
        _request_line("POST", "events.k8s.io", "events", "", 3),
        # the same request with another code or scope is another series
        _request_line("PATCH", "", "pods", "status", 1).replace('code="200"', 'code="409"'),
        "other_metric 5",
        "",
    ]
)


def test_request_counts_summed_by_request() -> None:
    counts = parse_request_counts(METRICS)

    assert counts[("PATCH", "", "pods", "status")] == 5
    assert counts[("LIST", "", "pods", "")] == 7
    assert counts[("POST", "events.k8s.io", "events", "")] == 3


def test_writes_between_readings() -> None:
    before = parse_request_counts(METRICS)
    after = dict(before)
    after[("PATCH", "", "pods", "status")] += 2
    after[("LIST", "", "pods", "")] += 9

    grown = writes(difference(after, before))

    assert grown == {("PATCH", "", "pods", "status"): 2}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (("PATCH", "", "pods", "status"), True),
        (("PATCH", "", "pods", ""), True),
        (("POST", "events.k8s.io", "events", ""), True),
        (("PATCH", "", "nodes", "status"), False),
        (("PUT", "coordination.k8s.io", "leases", ""), False),
        (("PUT", "discovery.k8s.io", "endpointslices", ""), False),
    ],
)
def test_isolator_writes_by_resource(key: tuple[str, str, str, str], expected: bool) -> None:
    assert is_isolator_write(key) is expected


STDLIB = "/usr/lib/python3.11"
LOOP_RUN = f"run ({STDLIB}/asyncio/base_events.py:600)"


def _stack(thread: str, *frames: str, count: int) -> str:
    return ";".join([thread, *frames]) + f" {count}"


RAW_PROFILE = "\n".join(
    [
        _stack("thread (1): MainThread", LOOP_RUN, f"select ({STDLIB}/selectors.py:468)", count=50),
        _stack(
            "thread (1): MainThread",
            LOOP_RUN,
            "receive_heartbeat (/repo/isolator/api/app.py:90)",
            "record_heartbeat (/repo/isolator/engine/evidence.py:70)",
            count=30,
        ),
        _stack(
            "thread (1): MainThread",
            LOOP_RUN,
            "handle (/venv/lib/python3.11/site-packages/h11/_connection.py:10)",
            count=10,
        ),
        _stack(
            "thread (7): prometheus_0",
            f"_worker ({STDLIB}/concurrent/futures/thread.py:81)",
            count=40,
        ),
        _stack(
            "thread (8): prometheus_1",
            f"_worker ({STDLIB}/concurrent/futures/thread.py:83)",
            f"decode ({STDLIB}/json/decoder.py:337)",
            count=10,
        ),
    ]
)


def test_profile_drops_idle_samples() -> None:
    summary = summarize_profile(RAW_PROFILE, seconds=1.0, rate_hz=100)

    assert summary["busy_samples"] == 50
    assert summary["core_share_by_thread"] == [["MainThread", 0.4], ["prometheus", 0.1]]


def test_profile_shares_by_function() -> None:
    summary = summarize_profile(RAW_PROFILE, seconds=1.0, rate_hz=100)
    by_package = dict(summary["self_by_package_pct"])
    by_isolator_function = dict(summary["total_by_isolator_function_pct"])

    assert by_package["isolator.engine.evidence"] == 60.0
    assert by_package["h11"] == 20.0
    assert by_isolator_function["receive_heartbeat (isolator/api/app.py)"] == 60.0


def _step(**overrides: object) -> dict[str, object]:
    step: dict[str, object] = {
        "errors": 0,
        "statuses": {"200": 100},
        "achieved_rate": 1000.0,
        "latency_ms": {"p99": 12.0},
    }
    step.update(overrides)
    return step


@pytest.mark.parametrize(
    ("overrides", "passed"),
    [
        ({}, True),
        ({"errors": 1}, False),
        ({"achieved_rate": 940.0}, False),
        ({"latency_ms": {"p99": 50.0}}, False),
        ({"latency_ms": None}, False),
    ],
    ids=["ok", "errors", "slow-sender", "p99-at-limit", "no-latency"],
)
def test_step_judged(overrides: dict[str, object], passed: bool) -> None:
    assert step_passed(_step(**overrides), 1000.0)[0] is passed


LOOP_BEFORE = """\
# TYPE isolator_loop_duration_seconds histogram
isolator_loop_duration_seconds_bucket{le="0.1"} 10
isolator_loop_duration_seconds_bucket{le="1.0"} 10
isolator_loop_duration_seconds_bucket{le="+Inf"} 10
isolator_loop_duration_seconds_count 10
isolator_loop_duration_seconds_sum 0.5
"""
LOOP_AFTER = """\
# TYPE isolator_loop_duration_seconds histogram
isolator_loop_duration_seconds_bucket{le="0.1"} 10
isolator_loop_duration_seconds_bucket{le="1.0"} 30
isolator_loop_duration_seconds_bucket{le="+Inf"} 30
isolator_loop_duration_seconds_count 30
isolator_loop_duration_seconds_sum 10.5
"""


def test_loop_figures_between_readings() -> None:
    figures = loop_figures(parse_samples(LOOP_BEFORE), parse_samples(LOOP_AFTER))

    assert figures["passes"] == 20
    assert figures["mean_s"] == 0.5
    # every new pass fell between 0.1 and 1.0 s
    assert figures["p99_s"] == pytest.approx(0.1 + 0.9 * 0.99)
