"""Property tests of every parser that reads untrusted input: no crash, no surprise values."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from isolator.api.schemas import AlertmanagerWebhook, Heartbeat
from isolator.sources.alertmanager import parse_alert
from isolator.sources.kubernetes.patches import CutRecord, InvalidCutRecordError
from isolator.sources.prometheus import parse_vector

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)

heartbeat_like = st.fixed_dictionaries(
    {},
    optional={
        "node": st.one_of(st.text(max_size=300), json_values),
        "region": st.one_of(st.text(max_size=80), json_values),
        "seq": st.one_of(st.integers(), json_values),
        "sent_at": st.one_of(st.floats(allow_nan=True, allow_infinity=True), json_values),
        "components": st.one_of(st.dictionaries(st.text(max_size=70), st.booleans()), json_values),
        "ingress_ok": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(heartbeat_like)
def test_heartbeat_parses_or_rejects(body: dict[str, Any]) -> None:
    try:
        beat = Heartbeat.model_validate(body)
    except ValidationError:
        return
    assert math.isfinite(beat.sent_at)
    assert beat.seq >= 0
    assert 1 <= len(beat.node) <= 253


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "status",
                "receiver",
                "groupKey",
                "truncatedAlerts",
                "alerts",
                "commonLabels",
            ]
        ),
        json_values,
        max_size=7,
    )
)
def test_webhook_parses_or_rejects(body: dict[str, Any]) -> None:
    try:
        notification = AlertmanagerWebhook.model_validate(body)
    except ValidationError:
        return
    assert notification.version == "4"
    assert notification.truncatedAlerts >= 0


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=8), st.text(max_size=8))
def test_parse_vector_keeps_only_finite_values(result: list[Any], label: str) -> None:
    values = parse_vector(result, label or "node")  # type: ignore[arg-type]

    assert all(math.isfinite(v) for v in values.values())


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_alert_from_api_parses_or_is_dropped(item: Any) -> None:
    parsed = parse_alert(item)

    if parsed is not None:
        fingerprint, _, firing, labels = parsed
        assert isinstance(fingerprint, str)
        assert isinstance(firing, bool)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(str)))
def test_cut_record_parses_or_raises_its_own_error(text: str) -> None:
    with contextlib.suppress(InvalidCutRecordError):
        CutRecord.from_annotation(text)
