"""Reads the full set of active alerts from Alertmanager's API (v2).

The receiver's ``max_alerts`` may truncate a webhook notification. The isolator then reads
every active alert, because the alerts it was sent do not show the scope.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import aiohttp

from isolator.sources.errors import SourceError, SourceUnavailableError

logger = logging.getLogger(__name__)


class AlertmanagerError(SourceError):
    """Alertmanager returned an error or a body that is not a list of alerts."""


class AlertmanagerUnavailableError(AlertmanagerError, SourceUnavailableError):
    """Alertmanager timed out or refused the connection."""


def parse_alert(item: Any) -> tuple[str, datetime, bool, dict[str, str]] | None:
    """Return fingerprint, start time, firing flag and labels of one API alert, or None."""
    if not isinstance(item, dict):
        return None
    labels = item.get("labels")
    fingerprint = item.get("fingerprint")
    state = (item.get("status") or {}).get("state")
    try:
        starts_at = datetime.fromisoformat(str(item.get("startsAt")))
    except ValueError:
        return None
    if not isinstance(labels, dict) or not isinstance(fingerprint, str):
        return None
    clean = {str(k): str(v) for k, v in labels.items()}
    return fingerprint, starts_at, state == "active", clean


class AlertmanagerSource:
    """One Alertmanager, read over HTTP."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def active_alerts(self) -> list[tuple[str, datetime, bool, dict[str, str]]]:
        """Return every active alert that is neither silenced nor inhibited."""
        url = f"{self._url}/api/v2/alerts"
        params = {"active": "true", "silenced": "false", "inhibited": "false"}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, params=params) as response,
            ):
                if response.status != 200:
                    text = (await response.text())[:200]
                    raise AlertmanagerError(
                        f"Alertmanager at {url} returned HTTP {response.status}: {text}"
                    )
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise AlertmanagerUnavailableError(
                f"Alertmanager at {url} did not respond: {err!r}"
            ) from err
        except ValueError as err:
            raise AlertmanagerError(f"Alertmanager at {url} sent invalid JSON: {err}") from err
        if not isinstance(body, list):
            raise AlertmanagerError(f"Alertmanager at {url} sent {type(body).__name__}, not a list")
        alerts = [parsed for item in body if (parsed := parse_alert(item)) is not None]
        if len(alerts) < len(body):
            logger.warning("alerts skipped", extra={"skipped": len(body) - len(alerts)})
        return alerts
