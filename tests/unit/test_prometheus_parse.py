"""Parsing of federated query results: absent, NaN and infinite values are unknown."""

from __future__ import annotations

import pytest

from isolator.model import SiteSample
from isolator.sources.prometheus import join_samples, parse_vector


def series(value: str, **labels: str) -> dict[str, object]:
    return {"metric": labels, "value": [1_780_000_000.0, value]}


def test_finite_values_parsed() -> None:
    result = [series("1", node="r1-n01"), series("0", node="r1-n02")]

    assert parse_vector(result, "node") == {"r1-n01": 1.0, "r1-n02": 0.0}


@pytest.mark.parametrize("raw", ["NaN", "+Inf", "-Inf", "", "up"], ids=repr)
def test_non_finite_or_invalid_value_is_unknown(raw: str) -> None:
    result = [series(raw, node="r1-n01"), series("0.02", node="r1-n03")]

    assert parse_vector(result, "node") == {"r1-n03": 0.02}


def test_series_without_label_ignored() -> None:
    assert parse_vector([series("1", instance="x")], "node") == {}


@pytest.mark.parametrize(
    "broken",
    [{"metric": {"node": "a"}}, {"metric": {"node": "a"}, "value": []}, {"value": [0, "1"]}],
    ids=["no-value", "empty-value", "no-metric"],
)
def test_malformed_series_ignored(broken: dict[str, object]) -> None:
    assert parse_vector([broken], "node") == {}


def test_empty_result_is_unknown_not_zero() -> None:
    assert parse_vector([], "node") == {}


def test_value_without_age_is_unknown() -> None:
    samples = join_samples({"r1-n01": 1.0, "r1-n02": 1.0}, {"r1-n01": 0.4})

    assert samples == {"r1-n01": SiteSample(1.0, 0.4)}


def test_negative_age_from_clock_skew_clamped() -> None:
    assert join_samples({"a": 1.0}, {"a": -0.2}) == {"a": SiteSample(1.0, 0.0)}
