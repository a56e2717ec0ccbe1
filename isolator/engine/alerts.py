"""Alertmanager alerts as evidence: handled one alert at a time and deduplicated.

Alertmanager delivers at least once, so the same alert arrives from retries and from every HA
peer. An alert is identified by its fingerprint and ``startsAt``; a notification's top-level
status and ``commonLabels`` are never used, because they describe the group after truncation.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from isolator.engine.evidence import EvidenceStore

SEEN_ALERTS_KEPT = 10_000


class AlertOutcome(enum.StrEnum):
    """Outcome of one alert in a notification."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    STALE = "stale"  # a firing that arrives after the same alert was resolved
    UNMAPPED = "unmapped"  # no tracked node in its labels


@dataclass(frozen=True, slots=True)
class IncomingAlert:
    """The parts of one alert that the isolator uses."""

    fingerprint: str
    starts_at: datetime
    firing: bool
    alertname: str
    node: str | None


class AlertLedger:
    """Remembers which alert states were already recorded, within a bounded memory."""

    def __init__(self, store: EvidenceStore, kept: int = SEEN_ALERTS_KEPT) -> None:
        self._store = store
        self._kept = kept
        self._seen: OrderedDict[tuple[str, datetime], bool] = OrderedDict()

    def record(self, alert: IncomingAlert) -> AlertOutcome:
        """Record one alert and return what became of it."""
        key = (alert.fingerprint, alert.starts_at)
        previous = self._seen.get(key)
        if previous is not None:
            if previous == alert.firing:
                return AlertOutcome.DUPLICATE
            if alert.firing:
                return AlertOutcome.STALE
        self._remember(key, alert.firing)
        if alert.node is None or not self._store.record_alert(
            alert.node, alert.fingerprint, alert.alertname, alert.firing
        ):
            return AlertOutcome.UNMAPPED
        return AlertOutcome.RECORDED

    def _remember(self, key: tuple[str, datetime], firing: bool) -> None:
        self._seen[key] = firing
        self._seen.move_to_end(key)
        while len(self._seen) > self._kept:
            self._seen.popitem(last=False)

    def replace_active(self, alerts: list[IncomingAlert]) -> dict[str, int]:
        """Make ``alerts`` the complete set of firing alerts, as read from Alertmanager.

        Returns how many alerts were recorded and how many named no tracked node.
        """
        for evidence in self._store.nodes.values():
            evidence.firing_alerts.clear()
            evidence.firing_fingerprints.clear()
        counts = {"recorded": 0, "unmapped": 0}
        for alert in alerts:
            self._remember((alert.fingerprint, alert.starts_at), alert.firing)
            mapped = alert.node is not None and self._store.record_alert(
                alert.node, alert.fingerprint, alert.alertname, alert.firing
            )
            counts["recorded" if mapped else "unmapped"] += 1
        return counts
